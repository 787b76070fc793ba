#!/usr/bin/env python3
"""Peer side of the engine benchmarks: llama.cpp (llama-cpp-python) on CPU.

    peer_llamacpp.py MODEL.gguf --json OUT.json [--repeats 3] [--prefill-lens 512 4096]
                     [--decode-prompt-len 128] [--decode-new-tokens 64] [--threads N]

Measures what scripts/bench/peer_transformers.py `run` measures, on a GGUF file converted from
the same Hugging Face folder (bf16 or Q8_0, by llama.cpp's own convert_hf_to_gguf.py):

  prefill    a fresh KV cache fills with N random token ids; logits of the last one only
             (llama.cpp evaluates in batches of n_batch = n_ubatch = 512, its default).
  decode b1  after a 128-token prompt, 64 greedy steps, one token each (argmax of the last
             logits row, as the engines' greedy decode); tokens/s = 64 / time of the steps.

llama.cpp's batched multi-sequence decode is not reached from llama-cpp-python's high-level
API, so decode runs at batch 1 only. Threads: all usable cores for both the prompt and the
single-token paths (llama-cpp-python would default to half the cores). KV cache in llama.cpp's
default type (f16). One warm-up before timing; medians of --repeats. Progress goes to stderr; the
JSON holds every number, the raw timings, settings and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np


def log(msg: str) -> None:
    print(f"[peer_llamacpp] {msg}", file=sys.stderr, flush=True)


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def repeat(fn, repeats: int, what: str) -> list[float]:
    """Runs `fn` once to warm up, then `repeats` times; `fn` returns the seconds it timed."""
    log(f"{what}: warm-up")
    fn()
    times = []
    for i in range(repeats):
        times.append(fn())
        log(f"{what}: repeat {i + 1}/{repeats}: {times[-1]:.3f} s")
    return times


def prefill_fn(llm: llama_cpp.Llama, ids: list[int]):
    def fn() -> float:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        return time.perf_counter() - t0
    return fn


def last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))


def decode_fn(llm: llama_cpp.Llama, prompt: list[int], new_tokens: int):
    def fn() -> float:
        llm.reset()
        llm.eval(prompt)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([int(np.argmax(last_logits(llm)))])
        return time.perf_counter() - t0
    return fn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("model", metavar="MODEL.gguf")
    ap.add_argument("--json", required=True, metavar="OUT.json", help="where to write results")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats, median reported")
    ap.add_argument("--prefill-lens", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--decode-prompt-len", type=int, default=128)
    ap.add_argument("--decode-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="llama.cpp threads for prompt and generation (default: usable cores)")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp's flash attention")
    ap.add_argument("--seed", type=int, default=0, help="seed for the random prompts")
    args = ap.parse_args()
    for name in ("repeats", "threads", "decode_new_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")

    n_ctx = max(args.prefill_lens + [args.decode_prompt_len + args.decode_new_tokens])
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=n_ctx, n_threads=args.threads,
                          n_threads_batch=args.threads, flash_attn=args.flash_attn,
                          verbose=False)
    vocab = llm.n_vocab()
    rng = np.random.default_rng(args.seed)
    log(f"threads={args.threads} n_ctx={n_ctx} flash_attn={args.flash_attn} "
        f"llama-cpp-python={llama_cpp.__version__}")

    prefill = []
    for length in args.prefill_lens:
        ids = rng.integers(0, vocab, length).tolist()
        times = repeat(prefill_fn(llm, ids), args.repeats, f"prefill {length}")
        med = statistics.median(times)
        prefill.append({"prompt_tokens": length, "median_s": med, "times_s": times,
                        "tokens_per_s": length / med})
        log(f"prefill {length}: {length / med:.1f} tok/s")

    prompt = rng.integers(0, vocab, args.decode_prompt_len).tolist()
    times = repeat(decode_fn(llm, prompt, args.decode_new_tokens), args.repeats, "decode b=1")
    med = statistics.median(times)
    decode = [{"batch": 1, "prompt_tokens": args.decode_prompt_len,
               "new_tokens": args.decode_new_tokens, "median_s": med, "times_s": times,
               "tokens_per_s": args.decode_new_tokens / med}]
    log(f"decode b=1: {args.decode_new_tokens / med:.1f} tok/s")

    result = {
        "peer": "llama.cpp",
        "device": "cpu",
        "model_file": os.path.basename(args.model),
        "model_bytes": Path(args.model).stat().st_size,
        "threads": args.threads,
        "n_batch": llm.n_batch,
        "n_ctx": n_ctx,
        "flash_attn": args.flash_attn,
        "kv_cache_type": "f16",
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "versions": {"python": platform.python_version(),
                     "llama_cpp_python": llama_cpp.__version__},
        "seed": args.seed,
        "repeats": args.repeats,
        "prefill": prefill,
        "decode": decode,
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
