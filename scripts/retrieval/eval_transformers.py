#!/usr/bin/env python3
"""Greedy exact-answer accuracy of a Hugging Face model directory on a task JSONL file, per task x context
length (and per depth), with `transformers` — the reference the serving engine's eviction runs are
compared with.

  python scripts/retrieval/generate_tasks.py --context-tokens 1024,2048 --num 100 --seed 1000 \
      --depths 0,10,20,30,40,50,60,70,80,90,100 --out tasks.jsonl
  python scripts/retrieval/eval_transformers.py --model models/retrieval-byte-6l --data tasks.jsonl \
      --out results.json [--predictions preds.jsonl]

Prompts are tokenised with the byte-level tokenizer of generate_tasks.py (identical to the model's
tokenizer.json; --hf-tokenizer uses AutoTokenizer on the model directory instead). Decoding is greedy
(transformers' generate, left padding, float32 unless --dtype), stopping at </s>; an answer is correct
when the decoded text equals the reference exactly (--match set: same comma-separated items in any order;
--match contains: the text contains every string of the line's `answers`, RULER's string_match_all without
partial credit and the rule `glimpse eval` applies, so that its full-cache table can be compared line by line).
"""

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_tasks as gt  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default=None, help="write the summary JSON here")
    p.add_argument("--predictions", default=None, help="write one JSON line per instance here")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=0, help="0 = longest reference answer + 4")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--match", default="exact", choices=["exact", "set", "contains"])
    p.add_argument("--hf-tokenizer", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)

    from transformers import AutoModelForCausalLM

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    try:
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype))
    except TypeError:  # older transformers
        model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=getattr(torch, a.dtype))
    model = model.to(device).eval()
    eos = model.generation_config.eos_token_id or gt.TOKENIZER.EOS
    pad = model.generation_config.pad_token_id
    pad = gt.TOKENIZER.PAD if pad is None else pad
    if a.hf_tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(a.model)
        encode = lambda s: tok(s)["input_ids"]  # noqa: E731
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    else:
        encode, decode = gt.TOKENIZER.encode, gt.TOKENIZER.decode

    rows = [json.loads(line) for line in open(a.data, encoding="utf-8") if line.strip()]
    if a.limit:
        rows = rows[: a.limit]
    # batch prompts of similar length together
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["context_tokens"], rows[i]["task"]))
    preds = [None] * len(rows)
    t0 = time.time()
    with torch.no_grad():
        for s in range(0, len(order), a.batch_size):
            idx = order[s:s + a.batch_size]
            enc = [encode(rows[i]["prompt"]) for i in idx]
            L = max(len(e) for e in enc)
            ids = torch.full((len(enc), L), pad, dtype=torch.long)
            att = torch.zeros((len(enc), L), dtype=torch.long)
            for r, e in enumerate(enc):
                ids[r, L - len(e):] = torch.tensor(e)
                att[r, L - len(e):] = 1
            mn = a.max_new_tokens or max(len(encode(rows[i]["answer"])) for i in idx) + 4
            g = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), max_new_tokens=mn,
                               do_sample=False, eos_token_id=eos, pad_token_id=pad)
            for r, i in enumerate(idx):
                toks = g[r, L:].tolist()
                if eos in toks:
                    toks = toks[: toks.index(eos)]
                preds[i] = decode(toks)

    def correct(pred, row):
        ans = row["answer"]
        if a.match == "set":
            return sorted(x.strip() for x in pred.split(",")) == sorted(x.strip() for x in ans.split(","))
        if a.match == "contains":
            return all(x in pred for x in row.get("answers", [ans]))
        return pred == ans

    acc = defaultdict(list)
    by_depth = defaultdict(list)
    for r, pr in zip(rows, preds):
        ok = correct(pr, r)
        acc[(r["task"], r.get("context_tokens_target", r["context_tokens"]))].append(ok)
        by_depth[(r["task"], round(float(r["depth"]), -1))].append(ok)
    summary = {"model": os.path.basename(os.path.normpath(a.model)), "data": os.path.basename(a.data),
               "match": a.match, "dtype": a.dtype, "n": len(rows), "seconds": round(time.time() - t0, 1),
               "accuracy": {}, "accuracy_by_depth": {}}
    for (task, ctx), v in sorted(acc.items()):
        summary["accuracy"].setdefault(str(ctx), {})[task] = {"acc": sum(v) / len(v), "n": len(v)}
        print(f"ctx {ctx:6} {task:16s} exact {sum(v) / len(v):.3f} (n={len(v)})", flush=True)
    for (task, d), v in sorted(by_depth.items()):
        summary["accuracy_by_depth"].setdefault(task, {})[str(int(d))] = sum(v) / len(v)
    allv = [o for v in acc.values() for o in v]
    summary["overall"] = sum(allv) / max(1, len(allv))
    print(f"overall {summary['overall']:.3f} over {len(allv)} instances in {summary['seconds']}s", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)
    if a.predictions:
        with open(a.predictions, "w", encoding="utf-8") as f:
            for r, pr in zip(rows, preds):
                f.write(json.dumps({"id": r.get("id"), "task": r["task"], "context_tokens": r["context_tokens"],
                                    "depth": r["depth"], "answer": r["answer"], "prediction": pr,
                                    "correct": correct(pr, r)}, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
