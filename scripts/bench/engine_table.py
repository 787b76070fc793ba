#!/usr/bin/env python3
"""Prints the tables of docs/benchmarks.md's engine section from the JSON files that
scripts/bench/run_engine_benchmarks.sh writes into OUT, with Glimpse's ratios to each peer at the
same precision and the decode roofline fractions (weight bytes read per token × tokens/s over the
read bandwidth the Glimpse bench measured on the same machine; llama.cpp's bytes per token are its
GGUF file's size).

    engine_table.py OUT
"""

import json
import sys
from pathlib import Path


def load(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


def by(rows: list, key: str, field: str) -> dict:
    return {r[key]: r[field] for r in rows}


def fmt(x) -> str:
    return "—" if x is None else f"{x:,.1f}"


def ratio(ours, peer) -> str:
    return f"{ours / peer:.2f}×" if ours and peer else "—"


def main() -> int:
    out = Path(sys.argv[1])
    glimpse = {d: load(out, f"glimpse-forward-{d}.json") for d in ("f32", "bf16", "int8")}
    tf = {d: load(out, f"transformers-forward-{d}.json") for d in ("float32", "bfloat16")}
    llama = {t: load(out, f"llamacpp-forward-{t}.json") for t in ("bf16", "q8_0")}
    read_bw = glimpse["f32"]["read_bandwidth_bytes_per_second"]

    rows = []  # (name, prefill {len: tok/s}, decode {batch: tok/s}, bytes per decoded token)
    for d, r in glimpse.items():
        rows.append((f"Glimpse {d}", by(r["prefill"], "prompt_tokens", "tokens_per_second"),
                     by(r["decode"], "batch", "tokens_per_second"), r["weight_bytes"]))
    for d, r in tf.items():
        rows.append((f"transformers {d}", by(r["prefill"], "prompt_tokens", "tokens_per_s"),
                     by(r["decode"], "batch", "tokens_per_s"), None))
    for t, r in llama.items():
        rows.append((f"llama.cpp {t.upper()}", by(r["prefill"], "prompt_tokens", "tokens_per_s"),
                     by(r["decode"], "batch", "tokens_per_s"), r["model_bytes"]))
    lens = sorted({n for _, p, _, _ in rows for n in p})
    batches = sorted({b for _, _, d, _ in rows for b in d})
    print("| engine | " + " | ".join(f"prefill {n} tok/s" for n in lens) + " | "
          + " | ".join(f"decode b{b} tok/s" for b in batches) + " | decode b1 read roofline |")
    print("|---|" + "---:|" * (len(lens) + len(batches) + 1))
    for name, p, d, nbytes in rows:
        roof = f"{nbytes * d[1] / read_bw:.0%}" if nbytes and 1 in d else "—"
        print(f"| {name} | " + " | ".join(fmt(p.get(n)) for n in lens) + " | "
              + " | ".join(fmt(d.get(b)) for b in batches) + f" | {roof} |")

    named = {name: (p, d) for name, p, d, _ in rows}
    print()
    print("| Glimpse ÷ peer | " + " | ".join(f"prefill {n}" for n in lens) + " | "
          + " | ".join(f"decode b{b}" for b in batches) + " |")
    print("|---|" + "---:|" * (len(lens) + len(batches)))
    for ours, peer in (("Glimpse f32", "transformers float32"),
                       ("Glimpse bf16", "transformers bfloat16"),
                       ("Glimpse bf16", "llama.cpp BF16"),
                       ("Glimpse bf16", "llama.cpp Q8_0"),
                       ("Glimpse int8", "llama.cpp Q8_0")):
        (p, d), (pp, pd) = named[ours], named[peer]
        print(f"| {ours} ÷ {peer} | " + " | ".join(ratio(p.get(n), pp.get(n)) for n in lens)
              + " | " + " | ".join(ratio(d.get(b), pd.get(b)) for b in batches) + " |")

    shape = load(out, "glimpse-offline-f32.json")
    print()
    print(f"| offline {shape['requests']} × {shape['prompt_len']} in / {shape['output_len']} out "
          "| output tok/s | ÷ transformers same dtype |")
    print("|---|---:|---:|")
    for ours, peer in (("f32", "float32"), ("bf16", "bfloat16")):
        g = load(out, f"glimpse-offline-{ours}.json")["batched"]["output_tokens_per_second"]
        t = load(out, f"transformers-offline-{peer}.json")["offline_throughput"]["output_tokens_per_s"]
        print(f"| Glimpse {ours} (engine loop, batched) | {g:,.1f} | {g / t:.2f}× |")
        print(f"| transformers {peer} (static batch) | {t:,.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
