#!/usr/bin/env python3
"""Peer side of the engine benchmarks: Hugging Face transformers on CPU.

Subcommands:

  make-model OUT_DIR [--tokenizer DIR]
      Write a seeded random Llama with SmolLM-135M's shape (hidden 576, 30
      layers, 9 heads / 3 KV heads, intermediate 1536, vocab 49152, tied
      embeddings, rope_theta 10000, 8192 positions, float32) in Hugging Face
      layout: config.json, model.safetensors, generation_config.json.
      About 540 MB; never commit it. With --tokenizer (a folder holding a
      byte-level BPE tokenizer.json, e.g. scripts/bench/tokenizers/gpt2) the
      vocabulary takes that tokenizer's size and its end-of-text id, and the
      tokenizer is written beside the weights, which llama.cpp's GGUF
      converter needs.

  run MODEL_DIR --json OUT.json
      Prefill tokens/s for 512- and 4096-token prompts, greedy decode tokens/s
      at batch 1 and 16.

  offline-throughput MODEL_DIR --json OUT.json
      64 requests of 256 random prompt tokens and 128 output tokens through
      static-batch generate(); output tokens/s.

All timings: CPU, torch.inference_mode(), sdpa attention, random token ids
(seeded), one warm-up before timing; --dtype float32 (default) or bfloat16
(the weights cast once after loading; torch runs bf16 matmuls natively). Progress goes to stderr; the
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

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

SMOLLM_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    hidden_act="silu",
    bos_token_id=0,
    eos_token_id=0,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)


def log(msg: str) -> None:
    print(f"[peer_transformers] {msg}", file=sys.stderr, flush=True)


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- make-model

def bpe_tokenizer(tokenizer_dir: str) -> tuple[dict, int]:
    """The tokenizer.json of `tokenizer_dir` with its model section's `"type": "BPE"` spelt out
    (the legacy GPT-2 file leaves it implicit; llama.cpp's converter reads it), and the id of its
    end-of-text token (the last special added token)."""
    tok = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text())
    tok["model"] = {"type": "BPE", **tok["model"]}
    specials = [t["id"] for t in tok.get("added_tokens", []) if t.get("special")]
    if not specials:
        raise SystemExit(f"{tokenizer_dir}/tokenizer.json has no special end-of-text token")
    return tok, max(specials)


def cmd_make_model(args: argparse.Namespace) -> int:
    cfg = dict(SMOLLM_135M)
    if args.layers is not None:
        cfg["num_hidden_layers"] = args.layers
    tokenizer = None
    if args.tokenizer is not None:
        tokenizer, eos = bpe_tokenizer(args.tokenizer)
        cfg["vocab_size"] = len(tokenizer["model"]["vocab"])
        cfg["bos_token_id"] = cfg["eos_token_id"] = eos
    config = LlamaConfig(**cfg)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config).eval()
    # Explicit seeded init (independent of transformers' own init code):
    # N(0, initializer_range) for matrices and embeddings, ones for norms.
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, config.initializer_range, generator=gen)
    model.generation_config.bos_token_id = cfg["bos_token_id"]
    model.generation_config.eos_token_id = cfg["eos_token_id"]
    n_params = sum(p.numel() for p in model.parameters())
    log(f"saving {n_params / 1e6:.1f}M parameters ({cfg['num_hidden_layers']} layers) to {args.out_dir}")
    model.save_pretrained(args.out_dir)
    if tokenizer is not None:
        out = Path(args.out_dir)
        (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
        eos_text = next(t["content"] for t in tokenizer["added_tokens"] if t["id"] == eos)
        (out / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "GPT2Tokenizer", "add_bos_token": False,
            "bos_token": eos_text, "eos_token": eos_text, "model_max_length": 8192}, indent=2))
    log("done")
    return 0


# --------------------------------------------------------------------------- utilities

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_model(model_dir: str, dtype: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=DTYPES[dtype], attn_implementation="sdpa").eval()
    model.generation_config.pad_token_id = model.generation_config.eos_token_id
    return model


def random_ids(gen: torch.Generator, vocab: int, batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=gen, dtype=torch.long)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def repeat(fn, repeats: int, what: str) -> list[float]:
    log(f"{what}: warm-up")
    fn()
    times = []
    for i in range(repeats):
        t = timed(fn)
        times.append(t)
        log(f"{what}: repeat {i + 1}/{repeats}: {t:.3f} s")
    return times


def prefill_fn(model, ids: torch.Tensor):
    def fn():
        # A full forward that fills a fresh KV cache and produces last-token logits.
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                    logits_to_keep=1)
        assert out.logits.shape[1] == 1
    return fn


def generate_fn(model, ids: torch.Tensor, new_tokens: int):
    def fn():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        assert out.shape[1] == ids.shape[1] + new_tokens
    return fn


def model_info(model) -> dict:
    c = model.config
    return {
        "architecture": type(model).__name__,
        "num_hidden_layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "intermediate_size": c.intermediate_size,
        "vocab_size": c.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def common_header(args, model) -> dict:
    return {
        "peer": "transformers",
        "device": "cpu",
        "dtype": args.dtype,
        "attn_implementation": "sdpa",
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "model_dir": os.path.basename(os.path.normpath(args.model_dir)),
        "model": model_info(model),
        "versions": versions(),
        "seed": args.seed,
    }


def setup(args) -> None:
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    log(f"threads={torch.get_num_threads()} torch={torch.__version__} "
        f"transformers={transformers.__version__}")


def write_json(path: str, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    log(f"wrote {path}")


# --------------------------------------------------------------------------- run

@torch.inference_mode()
def cmd_run(args: argparse.Namespace) -> int:
    setup(args)
    model = load_model(args.model_dir, args.dtype)
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    result = common_header(args, model)
    result["repeats"] = args.repeats

    prefill = []
    for length in args.prefill_lens:
        ids = random_ids(gen, vocab, 1, length)
        times = repeat(prefill_fn(model, ids), args.repeats, f"prefill {length}")
        med = statistics.median(times)
        prefill.append({"prompt_tokens": length, "median_s": med, "times_s": times,
                        "tokens_per_s": length / med})
        log(f"prefill {length}: {length / med:.1f} tok/s")
    result["prefill"] = prefill

    decode = []
    for batch in args.decode_batches:
        ids = random_ids(gen, vocab, batch, args.decode_prompt_len)
        t_pre = repeat(prefill_fn(model, ids), args.repeats, f"decode b={batch} prefill")
        t_gen = repeat(generate_fn(model, ids, args.decode_new_tokens), args.repeats,
                       f"decode b={batch} generate")
        pre, gen_s = statistics.median(t_pre), statistics.median(t_gen)
        decode_s = gen_s - pre
        rate = args.decode_new_tokens * batch / decode_s if decode_s > 0 else float("nan")
        decode.append({
            "batch": batch,
            "prompt_tokens": args.decode_prompt_len,
            "new_tokens": args.decode_new_tokens,
            "prefill_median_s": pre,
            "generate_median_s": gen_s,
            "prefill_times_s": t_pre,
            "generate_times_s": t_gen,
            "tokens_per_s": rate,
        })
        log(f"decode b={batch}: {rate:.1f} tok/s")
    result["decode"] = decode
    result["decode_formula"] = ("tokens_per_s = new_tokens * batch / "
                                "(median generate time - median prefill time)")
    write_json(args.json, result)
    return 0


# --------------------------------------------------------------------------- offline-throughput

@torch.inference_mode()
def cmd_offline(args: argparse.Namespace) -> int:
    setup(args)
    model = load_model(args.model_dir, args.dtype)
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    prompts = random_ids(gen, vocab, args.requests, args.prompt_len)

    log("warm-up")
    generate_fn(model, prompts[:1], 2)()

    batches = []
    t0 = time.perf_counter()
    for start in range(0, args.requests, args.batch_size):
        chunk = prompts[start:start + args.batch_size]
        t = timed(generate_fn(model, chunk, args.output_len))
        batches.append({"requests": chunk.shape[0], "seconds": t})
        log(f"batch {start // args.batch_size + 1}: {chunk.shape[0]} requests in {t:.2f} s")
    total = time.perf_counter() - t0

    out_tokens = args.requests * args.output_len
    result = common_header(args, model)
    result["offline_throughput"] = {
        "requests": args.requests,
        "prompt_tokens": args.prompt_len,
        "output_tokens": args.output_len,
        "batch_size": args.batch_size,
        "total_s": total,
        "batches": batches,
        "output_tokens_per_s": out_tokens / total,
        "total_tokens_per_s": args.requests * (args.prompt_len + args.output_len) / total,
        "requests_per_s": args.requests / total,
    }
    log(f"offline: {out_tokens / total:.1f} output tok/s")
    write_json(args.json, result)
    return 0


# --------------------------------------------------------------------------- CLI

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="cmd", required=True)

    mm = sub.add_parser("make-model", help="write a random SmolLM-135M-shaped Llama")
    mm.add_argument("out_dir", metavar="OUT_DIR")
    mm.add_argument("--layers", type=int, help="override num_hidden_layers (for quick tests)")
    mm.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    mm.add_argument("--tokenizer", metavar="DIR",
                    help="folder with a byte-level BPE tokenizer.json: its vocabulary size and "
                         "end-of-text id are used and it is written beside the weights")
    mm.set_defaults(func=cmd_make_model)

    def common(p):
        p.add_argument("model_dir", metavar="MODEL_DIR")
        p.add_argument("--json", required=True, metavar="OUT.json", help="where to write results")
        p.add_argument("--threads", type=int, default=default_threads(),
                       help="torch.set_num_threads (default: usable cores, %(default)s here)")
        p.add_argument("--seed", type=int, default=0, help="seed for the random prompts")
        p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                       help="weights and activations (default float32)")

    run = sub.add_parser("run", help="prefill and decode tokens/s")
    common(run)
    run.add_argument("--repeats", type=int, default=3,
                     help="timed repeats per measurement, median reported (default 3)")
    run.add_argument("--prefill-lens", type=int, nargs="+", default=[512, 4096],
                     help="prompt lengths for prefill (default 512 4096)")
    run.add_argument("--decode-batches", type=int, nargs="+", default=[1, 16],
                     help="batch sizes for greedy decode (default 1 16)")
    run.add_argument("--decode-prompt-len", type=int, default=128,
                     help="prompt length for decode runs (default 128)")
    run.add_argument("--decode-new-tokens", type=int, default=64,
                     help="tokens generated per sequence in decode runs (default 64)")
    run.set_defaults(func=cmd_run)

    off = sub.add_parser("offline-throughput", help="static-batch generate() throughput")
    common(off)
    off.add_argument("--requests", type=int, default=64, help="number of requests (default 64)")
    off.add_argument("--prompt-len", type=int, default=256, help="prompt tokens (default 256)")
    off.add_argument("--output-len", type=int, default=128, help="output tokens (default 128)")
    off.add_argument("--batch-size", type=int, default=64,
                     help="requests per generate() call (default 64)")
    off.set_defaults(func=cmd_offline)

    args = ap.parse_args()
    for name in ("repeats", "batch_size", "requests", "threads"):
        if getattr(args, name, 1) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
