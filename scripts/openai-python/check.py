#!/usr/bin/env python3
"""The official `openai` Python package (pinned in requirements.txt) against a running
`glimpse serve`'s OpenAI-compatible HTTP API, and `curl -N` on a streamed request.

    check.py --base-url http://127.0.0.1:8000/v1 --metrics http://127.0.0.1:9400/metrics \
             --golden models/stories260K/golden.json

The server must run the bundled stories260K with scripts/openai-python/chat_template.jinja, its
lookahead module, `--max-num-seqs 2 --max-waiting 0` (two requests in flight at most) and no other
client. Checks completions and chat, streamed and whole, n=2, log-probabilities, stop strings, seed
reproducibility, the `kv_cache` extension through `extra_body` (lookahead; blocks freed reported),
a client leaving mid-stream (its blocks come back), each error class with its status, and
well-formed SSE. Exits non-zero with a message on the first mismatch.
"""

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request

import openai

DEADLINE_SECS = 30


def check(condition, what):
    if not condition:
        sys.exit(f"openai-check: FAILED: {what}")


def metric(url, name, **labels):
    """The value of the series `name` carrying `labels` (others, such as model_name, ignored)."""
    for line in urllib.request.urlopen(url).read().decode().splitlines():
        series, _, value = line.rpartition(" ")
        series_name, _, label_text = series.partition("{")
        if series_name != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def wait_for(what, condition):
    deadline = time.monotonic() + DEADLINE_SECS
    while not condition():
        check(time.monotonic() < deadline, f"{what} within {DEADLINE_SECS} s")
        time.sleep(0.05)


def greedy(**kw):
    return dict(temperature=0, **kw)


def completions(client, golden):
    prompt = golden["prompt"]
    expected = golden["greedy_text"][len(prompt):]
    whole = client.completions.create(model=MODEL, prompt=prompt, **greedy(max_tokens=16))
    text = whole.choices[0].text
    check(expected.startswith(text) and len(text) > 10, f"greedy text {text!r} vs golden {expected!r}")
    check(whole.choices[0].finish_reason == "length", "finish_reason length")
    check(whole.usage.prompt_tokens == 5 and whole.usage.completion_tokens == 16, f"usage {whole.usage}")
    chunks = list(client.completions.create(
        model=MODEL, prompt=prompt, stream=True, stream_options={"include_usage": True}, **greedy(max_tokens=16)))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    check(streamed == text, f"streamed {streamed!r} == whole {text!r}")
    check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16, "include_usage chunk")
    stopped = client.completions.create(model=MODEL, prompt=prompt, stop=[" girl"], **greedy(max_tokens=32))
    check(stopped.choices[0].text == ", there was a little", f"stop: {stopped.choices[0].text!r}")
    check(stopped.choices[0].finish_reason == "stop", "stop: finish_reason stop")
    print("completions: whole, streamed, stop: ok")


def chat(client):
    messages = [{"role": "user", "content": "Tell me a story"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, **greedy(max_completion_tokens=16))
    text = whole.choices[0].message.content
    check(whole.choices[0].message.role == "assistant" and text, f"chat reply {whole.choices[0]}")
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, **greedy(max_tokens=16)))
    check(chunks[0].choices[0].delta.role == "assistant", "first chunk names the role")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(streamed == text, f"chat streamed {streamed!r} == whole {text!r}")
    print("chat: whole, streamed: ok")


def n_seed_and_logprobs(client):
    sample = dict(model=MODEL, prompt="Lily", max_tokens=24, temperature=1, seed=42)
    first = [c.text for c in client.completions.create(n=2, **sample).choices]
    again = [c.text for c in client.completions.create(n=2, **sample).choices]
    check(len(first) == 2 and first == again, f"n=2 with a seed reproduces: {first} vs {again}")
    check(first[0] != first[1], f"the two choices differ: {first}")
    other = client.completions.create(**{**sample, "seed": 1234}).choices[0].text
    check(other != first[0], "another seed samples another text")
    lp = client.completions.create(model=MODEL, prompt="Lily", logprobs=2, **greedy(max_tokens=8)).choices[0].logprobs
    check(len(lp.tokens) == 8 and len(lp.token_logprobs) == 8, f"completion logprobs {lp}")
    check(all(x <= 0 for x in lp.token_logprobs) and all(len(t) <= 2 for t in lp.top_logprobs), "logprob values")
    check(lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset), "text offsets")
    content = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], logprobs=True, top_logprobs=3,
        **greedy(max_tokens=8)).choices[0].logprobs.content
    check(len(content) == 8 and all(len(t.top_logprobs) == 3 for t in content), f"chat top_logprobs {content}")
    check(all(t.bytes == list(t.token.encode()) for t in content), "chat logprob bytes")
    print("n=2, seed, logprobs: ok")


def kv_cache_lookahead(client):
    long_prompt = " ".join(["Once upon a time, there was a little girl named Lily."] * 25)
    response = client.completions.create(
        model=MODEL, prompt=long_prompt, max_tokens=8, temperature=0,
        extra_body={"kv_cache": {"policy": "lookahead", "budget": 64}})
    kv = response.model_dump()["usage"]["kv_cache"]
    check(response.usage.prompt_tokens > 64, f"the prompt is longer than the budget: {response.usage}")
    check(kv["policy"] == "lookahead" and kv["budget"] == 64, f"applied policy {kv}")
    check(kv["blocks_freed"] > 0 and kv["entries_kept"] <= 64, f"lookahead freed blocks: {kv}")
    print(f"kv_cache lookahead via extra_body: ok ({kv})")


def disconnect(client, metrics):
    def aborted():
        return metric(metrics, "glimpse_request_success_total", finished_reason="abort")

    before = aborted() or 0
    stream = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=400, stream=True, temperature=0,
        extra_body={"ignore_eos": True})
    next(iter(stream))
    wait_for("the streaming request holds blocks", lambda: (metric(metrics, "glimpse_kv_blocks_used") or 0) > 0)
    stream.close()
    wait_for("blocks freed after the client left",
             lambda: metric(metrics, "glimpse_kv_blocks_used") == 0 and aborted() == before + 1)
    print("disconnect mid-stream frees blocks: ok")


def errors(client):
    def refused(kind, status, **kw):
        try:
            client.completions.create(**{"model": MODEL, "prompt": "Hi", "max_tokens": 4, **kw})
        except kind as e:
            check(e.status_code == status, f"{kind.__name__}: status {e.status_code}")
            return e.body
        sys.exit(f"openai-check: FAILED: {kw} was not refused with {status}")

    body = refused(openai.BadRequestError, 400, temperature=-1.0)
    check(body["param"] == "temperature" and "temperature" in body["message"], f"400 names the param: {body}")
    body = refused(openai.BadRequestError, 400, max_tokens=10_000)
    check("512" in body["message"], f"400 too long names the limit: {body}")
    body = refused(openai.NotFoundError, 404, model="gpt-4")
    check(body["code"] == "model_not_found", f"404 model_not_found: {body}")
    # Two requests in flight at most (--max-num-seqs 2 --max-waiting 0): a stream of two choices
    # holds both slots until it is closed.
    holder = client.completions.create(
        model=MODEL, prompt="Once", max_tokens=400, n=2, stream=True, extra_body={"ignore_eos": True})
    next(iter(holder))
    body = refused(openai.RateLimitError, 429)
    check("limit of 2 requests" in body["message"], f"429 names the limit: {body}")
    holder.close()
    print("errors 400 / 404 / 429: ok")


def raw_sse(base_url):
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 8, "stream": True, "temperature": 0})
    raw = subprocess.run(
        ["curl", "-sN", "--max-time", str(DEADLINE_SECS), "-H", "Content-Type: application/json",
         "-d", body, f"{base_url}/completions"], check=True, capture_output=True, text=True).stdout
    events = [e for e in raw.split("\n\n") if e]
    check(raw.endswith("\n\n") and events[-1] == "data: [DONE]", f"SSE ends with [DONE]: {raw[-80:]!r}")
    for event in events[:-1]:
        check(event.startswith("data: ") and "\n" not in event, f"an SSE data line: {event!r}")
        json.loads(event[len("data: "):])
    print(f"curl -N: {len(events)} well-formed SSE events ending in [DONE]: ok")


MODEL = "stories260K"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--golden", required=True)
    args = ap.parse_args()
    golden = json.load(open(args.golden))["generation_cases"][1]
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=DEADLINE_SECS)
    check([m.id for m in client.models.list().data] == [MODEL], "models lists the served model")
    completions(client, golden)
    chat(client)
    n_seed_and_logprobs(client)
    kv_cache_lookahead(client)
    disconnect(client, args.metrics)
    errors(client)
    raw_sse(args.base_url)
    print("openai-check: all passed")


if __name__ == "__main__":
    main()
