#!/usr/bin/env python3
"""A gRPC client nobody on the project wrote by hand: Python `grpcio` stubs generated from
`proto/glimpse/v1/generation.proto` by `grpcio-tools`, calling a running `glimpse serve`.

    client.py --endpoint 127.0.0.1:50051 --stubs DIR --golden models/stories260K/golden.json

Streams one greedy `Generate` for "Once upon a time" and checks the text against the bundled model's
golden continuation, the finish reason and the usage counts; also calls `GetModelInfo` and
`Tokenize`. Exits non-zero with a message on any mismatch.
"""

import argparse
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--stubs", required=True, help="directory with the generated generation_pb2*.py")
    ap.add_argument("--golden", required=True)
    args = ap.parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    from glimpse.v1 import generation_pb2 as pb
    from glimpse.v1 import generation_pb2_grpc as pb_grpc

    golden = json.load(open(args.golden))["generation_cases"][1]
    with grpc.insecure_channel(args.endpoint) as channel:
        stub = pb_grpc.GenerationStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        ids = stub.Tokenize(pb.TokenizeRequest(text=golden["prompt"]), timeout=10).token_ids
        request = pb.GenerateRequest(
            text=golden["prompt"],
            sampling=pb.SamplingParameters(temperature=0.0),
            max_tokens=len(golden["greedy_new_ids"]),
        )
        text, final, token_ids = "", None, []
        for message in stub.Generate(request, timeout=30):
            if message.HasField("chunk"):
                text += message.chunk.text
                token_ids.extend(message.chunk.token_ids)
            else:
                final = message.final
    checks = [
        (list(ids) == golden["prompt_ids"], f"Tokenize gave {list(ids)}, expected {golden['prompt_ids']}"),
        (info.vocab_size == 512, f"GetModelInfo vocab_size {info.vocab_size}"),
        (golden["prompt"] + text == golden["greedy_text"], f"streamed text differs: {text!r}"),
        (token_ids == golden["greedy_new_ids"], "streamed token ids differ from the golden ids"),
        (final is not None and final.finish_reason == pb.FINISH_REASON_LENGTH, f"final message: {final}"),
        (final is not None and final.usage.completion_tokens == len(golden["greedy_new_ids"]), "usage"),
    ]
    failed = [msg for ok, msg in checks if not ok]
    for msg in failed:
        print(f"grpcio client: FAIL: {msg}", file=sys.stderr)
    print(f"grpcio client: {len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
