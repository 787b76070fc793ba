#!/usr/bin/env python3
"""The `glimpse-client` package (clients/python: committed stubs generated from
`proto/glimpse/v1/generation.proto`, and a thin helper) calling a running `glimpse serve`.

    client.py --endpoint 127.0.0.1:50051 --golden models/stories260K/golden.json

Streams one greedy `Generate` for "Once upon a time" and checks the text against the bundled model's
golden continuation, the finish reason and the usage counts; calls `GetModelInfo` and `Tokenize`;
runs a request under a KV eviction policy and checks the policy applied. Exits non-zero with a
message on any mismatch.
"""

import argparse
import json
import sys

from glimpse_client import Client, KvCache, pb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--golden", required=True)
    args = ap.parse_args()

    golden = json.load(open(args.golden))["generation_cases"][1]
    new_ids = golden["greedy_new_ids"]
    with Client(args.endpoint, timeout=30) as client:
        info = client.model_info()
        ids = client.tokenize(golden["prompt"])
        streamed = list(client.stream(golden["prompt"], max_tokens=len(new_ids), temperature=0.0))
        done = client.generate(golden["prompt"], max_tokens=len(new_ids), temperature=0.0)
        evicted = client.generate(
            golden["greedy_text"], max_tokens=4, temperature=0.0,
            kv_cache=KvCache(policy="streaming_llm", budget=16, sinks=4),
        )
    chunks = [m.chunk for m in streamed if m.HasField("chunk")]
    finals = [m.final for m in streamed if m.HasField("final")]
    text = "".join(c.text for c in chunks)
    token_ids = [t for c in chunks for t in c.token_ids]
    final = finals[0] if len(finals) == 1 and streamed[-1].HasField("final") else None
    applied = evicted.final.applied_policy if evicted.final else None
    checks = [
        (ids == golden["prompt_ids"], f"Tokenize gave {ids}, expected {golden['prompt_ids']}"),
        (info.vocab_size == 512, f"GetModelInfo vocab_size {info.vocab_size}"),
        (info.kv_cache_dtype == "f32", f"GetModelInfo kv_cache_dtype {info.kv_cache_dtype!r}"),
        (golden["prompt"] + text == golden["greedy_text"], f"streamed text differs: {text!r}"),
        (token_ids == new_ids, "streamed token ids differ from the golden ids"),
        (final is not None and final.finish_reason == pb.FINISH_REASON_LENGTH, f"final message: {final}"),
        (final is not None and final.usage.completion_tokens == len(new_ids), "usage"),
        ((done.text, done.token_ids) == (text, token_ids), "generate() differs from the stream"),
        (applied is not None and applied.policy == pb.KV_POLICY_STREAMING_LLM and applied.budget == 16
         and applied.sinks == 4, f"applied policy: {applied}"),
        (evicted.final is not None and evicted.final.usage.kv_entries_kept == 16,
         f"KV entries kept under a budget of 16: {evicted.final and evicted.final.usage}"),
    ]
    failed = [msg for ok, msg in checks if not ok]
    for msg in failed:
        print(f"glimpse-client: FAIL: {msg}", file=sys.stderr)
    print(f"glimpse-client: {len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
