#!/usr/bin/env python3
"""grpcurl (a generic gRPC client that knows no Glimpse type: it reads them from the server's
reflection service) against a running `glimpse serve`.

    check.py --grpcurl PATH --endpoint 127.0.0.1:50051 --golden models/stories260K/golden.json

Lists the services, describes `glimpse.v1.Generation`, calls `GetModelInfo`, streams one greedy
`Generate` and compares it with the bundled model's golden continuation, and sends an invalid
request, which must fail with InvalidArgument naming the field. Exits non-zero on any mismatch.
"""

import argparse
import json
import subprocess
import sys


def grpcurl(args, endpoint, *call, data=None):
    """Runs `grpcurl -plaintext [-d DATA] ENDPOINT CALL...`; returns (exit code, stdout+stderr)."""
    cmd = [args.grpcurl, "-plaintext", "-max-time", "30"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    done = subprocess.run(cmd + [endpoint, *call], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def json_stream(text):
    """The JSON objects grpcurl prints one after another."""
    decoder, objects, text, i = json.JSONDecoder(), [], text.strip(), 0
    while i < len(text):
        obj, i = decoder.raw_decode(text, i)
        objects.append(obj)
        while i < len(text) and text[i].isspace():
            i += 1
    return objects


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grpcurl", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--golden", required=True)
    args = ap.parse_args()
    golden = json.load(open(args.golden))["generation_cases"][1]
    new_ids = golden["greedy_new_ids"]
    run = lambda *call, data=None: grpcurl(args, args.endpoint, *call, data=data)

    rc_list, services = run("list")
    rc_describe, described = run("describe", "glimpse.v1.Generation")
    rc_info, info = run("glimpse.v1.Generation/GetModelInfo", data={})
    request = {"text": golden["prompt"], "sampling": {"temperature": 0}, "maxTokens": len(new_ids)}
    rc_gen, generated = run("glimpse.v1.Generation/Generate", data=request)
    rc_bad, refused = run("glimpse.v1.Generation/Generate", data={"text": "x", "sampling": {"topP": 2}})

    info = json.loads(info) if rc_info == 0 else {}
    messages = json_stream(generated) if rc_gen == 0 else []
    chunks = [m["chunk"] for m in messages if "chunk" in m]
    text = "".join(c.get("text", "") for c in chunks)
    token_ids = [t for c in chunks for t in c.get("tokenIds", [])]
    final = messages[-1].get("final") if messages else None
    checks = [
        (rc_list == 0 and {"glimpse.v1.Generation", "grpc.health.v1.Health"} <= set(services.split()),
         f"list: {services}"),
        (rc_describe == 0 and "rpc Generate ( .glimpse.v1.GenerateRequest ) returns ( stream" in described,
         f"describe: {described}"),
        (info.get("vocabSize") == 512 and info.get("modelName") == "stories260K", f"GetModelInfo: {info}"),
        (golden["prompt"] + text == golden["greedy_text"], f"Generate text differs: {generated}"),
        (token_ids == new_ids, "Generate token ids differ from the golden ids"),
        (final is not None and final.get("finishReason") == "FINISH_REASON_LENGTH", f"final: {final}"),
        (rc_bad != 0 and "InvalidArgument" in refused and "top_p" in refused, f"invalid request: {refused}"),
    ]
    failed = [msg for ok, msg in checks if not ok]
    for msg in failed:
        print(f"grpcurl: FAIL: {msg}", file=sys.stderr)
    print(f"grpcurl: {len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
