#!/usr/bin/env python3
"""Train the long-context retrieval test model from scratch (Llama architecture, byte-level vocabulary).

Data is generated on the fly by `generate_tasks.py` (training essays, training seeds) and mixed with plain
essay text; batch `step` is a pure function of (--seed, step, context length, batch size), so the run is
reproducible whatever the number of loader workers. Loss = cross-entropy on the answer tokens (+ </s>)
+ --lm-weight x cross-entropy on all other tokens (the model stays a byte-level language model).

The context-length curriculum (--curriculum "256:0.1,512:0.1,...") gives the share of steps spent at
each length, in order; after the first phase a share --mix-shorter of the steps uses a shorter length
of the ladder so that short prompts keep working. Every step holds about --tokens-per-step tokens.

Steps: --steps N fixes the schedule (cosine learning rate over N steps). With --steps 0 the trainer times
a few throw-away steps at every context length (on a copy of the model) and picks the N that fits
--time-budget-seconds; the chosen N is written to train_meta.json together with the command that
reproduces the run without timing (same weights up to nondeterministic GPU kernels). The time budget
also stops the loop early as a safety net (then the schedule is cut short; train_meta.json says so).

Writes into --out: config.json, model.safetensors, generation_config.json, tokenizer.json,
tokenizer_config.json, train_meta.json, eval.json (held-out accuracy per task x
context length, exact answer match; computed teacher-forced, which equals greedy decoding's exact match,
and cross-checked with real greedy generation on a subset).

Needs only torch, numpy, safetensors and transformers.
"""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse
import copy
import json
import math
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_tasks as gt  # noqa: E402

TOK = gt.TOKENIZER
ANS_PAD = 40  # room for answer + </s> after a prompt of `ctx` tokens (longest answer: 31 tokens)


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------
# data

_HAY = {}


def haystack(split):
    if split not in _HAY:
        _HAY[split] = gt.Haystack(gt.DEFAULT_ESSAYS, split)
    return _HAY[split]


def parse_curriculum(s):
    phases = []
    for part in s.split(","):
        c, f = part.split(":")
        phases.append((int(c), float(f)))
    tot = sum(f for _, f in phases)
    return [(c, f / tot) for c, f in phases]


def ctx_for_step(step, total, phases, mix_shorter, seed):
    """(context length, phase index) of a step."""
    frac = step / max(total, 1)
    acc = 0.0
    k = len(phases) - 1
    for i, (_, f) in enumerate(phases):
        acc += f
        if frac < acc - 1e-12:
            k = i
            break
    ctx = phases[k][0]
    if k > 0 and mix_shorter > 0:
        r = random.Random(f"ctx/{seed}/{step}")
        if r.random() < mix_shorter:
            ctx = r.choice([c for c, _ in phases[:k]])
    return ctx, k


def encode_row(inst):
    p = TOK.encode(inst["prompt"])
    a = TOK.encode(inst["answer"], bos=False) + [TOK.EOS]
    return p, a


def make_batch(seed, step, ctx, bs, tasks, lm_rows, split="train", gen_kw=None, weights=None, lm_scope="all"):
    """Returns dict of numpy arrays: inp [bs,T], tgt [bs,T] (-100 = ignore), amask [bs,T] (answer targets),
    task [bs] (index into tasks, -1 = plain text row)."""
    gen_kw = gen_kw or {}
    rng = random.Random(f"train/{seed}/{step}/{ctx}/{bs}")
    hay = haystack(split)
    T = ctx + ANS_PAD
    inp = np.zeros((bs, T), dtype=np.int64)
    tgt = np.full((bs, T), -100, dtype=np.int64)
    amask = np.zeros((bs, T), dtype=bool)
    task_ix = np.full((bs,), -1, dtype=np.int64)
    for r in range(bs):
        if rng.random() < lm_rows:
            buf = hay.chunk(rng, T, cut="bytes")
            seq = np.concatenate([[TOK.BOS], np.frombuffer(buf, dtype=np.uint8).astype(np.int64) + TOK.OFFSET])
            inp[r] = seq[:-1]
            tgt[r] = seq[1:]
            continue
        ti = rng.choices(range(len(tasks)), weights)[0] if weights else rng.randrange(len(tasks))
        inst = gt.make_instance(rng, hay, tasks[ti], ctx, None, **gen_kw)
        p, a = encode_row(inst)
        seq = p + a
        n = len(seq) - 1
        assert n <= T, (n, T)
        inp[r, :n] = seq[:-1]
        tgt[r, :n] = seq[1:]
        if lm_scope == "needles":  # LM targets only inside the needles and the question, never essay text
            keep = np.zeros(len(seq), dtype=bool)
            pb = inst["prompt"].encode("utf-8")
            for sent in inst["needles"]:
                o = pb.find(sent.encode("utf-8"))
                keep[1 + o:1 + o + len(sent.encode("utf-8"))] = True
            keep[1 + len(pb) - len(inst["prompt"].rsplit("\n", 1)[-1].encode("utf-8")) - 1:] = True
            tgt[r, :n][~keep[1:n + 1]] = -100
        amask[r, len(p) - 1:n] = True
        task_ix[r] = ti
    return {"inp": inp, "tgt": tgt, "amask": amask, "task": task_ix}


class StepData(torch.utils.data.Dataset):
    def __init__(self, plan, seed, tasks, lm_rows, gen_kw, weights=None, first_weights=None, first_steps=0,
                 lm_scope="all"):
        self.lm_scope = lm_scope
        self.plan, self.seed, self.tasks, self.lm_rows, self.gen_kw = plan, seed, tasks, lm_rows, gen_kw
        self.weights, self.first_weights, self.first_steps = weights, first_weights, first_steps

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, step):
        ctx, bs = self.plan[step]
        w = self.first_weights if (self.first_weights and step < self.first_steps) else self.weights
        b = make_batch(self.seed, step, ctx, bs, self.tasks, self.lm_rows, "train", self.gen_kw, w, self.lm_scope)
        return {k: torch.from_numpy(v) for k, v in b.items()}


# --------------------------------------------------------------------------------------------------
# model


def build_model(a):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=TOK.vocab_size,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        head_dim=a.hidden // a.heads,
        hidden_act="silu",
        max_position_embeddings=a.max_pos,
        rms_norm_eps=1e-5,
        rope_theta=a.rope_theta,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=TOK.BOS,
        eos_token_id=TOK.EOS,
        pad_token_id=TOK.PAD,
        initializer_range=0.02,
        use_cache=True,
    )
    # make sure the rope base is recorded whichever way this transformers version stores it
    if getattr(cfg, "rope_parameters", None) is not None and isinstance(cfg.rope_parameters, dict):
        cfg.rope_parameters["rope_theta"] = float(a.rope_theta)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(cfg)
    return model


def lr_at(step, total, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    prog = (step - a.warmup) / max(1, total - a.warmup)
    prog = min(max(prog, 0.0), 1.0)
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog)))


def make_optimizer(model, a, device):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in n else no_decay).append(p)
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **kw)


def forward_losses(model, batch, device, autocast_dtype):
    inp = batch["inp"].to(device, non_blocking=True)
    tgt = batch["tgt"].to(device, non_blocking=True)
    amask = batch["amask"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(input_ids=inp, use_cache=False).logits
    logits = logits.float()
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.view(-1, V), tgt.view(-1), ignore_index=-100, reduction="none").view(tgt.shape)
    valid = tgt != -100
    lmask = valid & ~amask
    n_ans = amask.sum().clamp_min(1)
    n_lm = lmask.sum().clamp_min(1)
    ans_loss = (ce * amask).sum() / n_ans
    lm_loss = (ce * lmask).sum() / n_lm
    pred = logits.argmax(-1)
    row_ok = ((pred == tgt) | ~amask).all(-1)
    return ans_loss, lm_loss, row_ok


def train_step(model, opt, batch, lr, a, device, autocast_dtype):
    for g in opt.param_groups:
        g["lr"] = lr
    ans_loss, lm_loss, row_ok = forward_losses(model, batch, device, autocast_dtype)
    loss = ans_loss + a.lm_weight * lm_loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
    opt.step()
    return loss.detach(), ans_loss.detach(), lm_loss.detach(), row_ok.detach()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def calibrate(model, a, phases, tasks, gen_kw, device, autocast_dtype):
    """Seconds per step at each context length, measured on a throw-away copy of the model."""
    m = copy.deepcopy(model)
    opt = make_optimizer(m, a, device)
    times = {}
    for ctx, _ in phases:
        bs = max(1, a.tokens_per_step // ctx)
        b = make_batch(a.seed + 99991, 0, ctx, bs, tasks, a.lm_rows, "train", gen_kw, a.weights, a.lm_scope)
        b = {k: torch.from_numpy(v) for k, v in b.items()}
        ts = []
        for i in range(2 + a.calib_steps):
            sync(device)
            t0 = time.perf_counter()
            train_step(m, opt, b, 1e-4, a, device, autocast_dtype)
            sync(device)
            if i >= 2:
                ts.append(time.perf_counter() - t0)
        times[ctx] = float(np.median(ts))
    del m, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times


def expected_step_time(phases, times, mix):
    tot = 0.0
    for k, (ctx, f) in enumerate(phases):
        e = times[ctx]
        if k > 0 and mix > 0:
            e = (1 - mix) * e + mix * float(np.mean([times[c] for c, _ in phases[:k]]))
        tot += f * e
    return tot


# --------------------------------------------------------------------------------------------------
# saving and evaluation


def save_model(model, out, a, save_dtype):
    from transformers import GenerationConfig

    os.makedirs(out, exist_ok=True)
    m = model
    if save_dtype != torch.float32:
        m = copy.deepcopy(model).to(save_dtype)
    m.save_pretrained(out, safe_serialization=True)
    # also record the rope base and dtype in the flat (pre-v5) form that other loaders read
    cp = os.path.join(out, "config.json")
    with open(cp) as f:
        cfg = json.load(f)
    cfg["rope_theta"] = float(a.rope_theta)
    cfg.setdefault("rope_scaling", None)
    cfg["torch_dtype"] = a.save_dtype
    with open(cp, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    GenerationConfig(bos_token_id=TOK.BOS, eos_token_id=TOK.EOS, pad_token_id=TOK.PAD, do_sample=False,
                     max_new_tokens=32).save_pretrained(out)
    TOK.write(out, model_max_length=a.max_pos)


@torch.no_grad()
def teacher_forced_exact(model, insts, device, tokens_per_batch):
    """Exact-answer correctness per instance: every answer token and </s> is the argmax given the prompt
    and the correct answer prefix (identical to greedy decoding producing exactly answer + </s>)."""
    out = []
    rows = [encode_row(x) for x in insts]
    T = max(len(p) + len(ans) - 1 for p, ans in rows)
    bs = max(1, tokens_per_batch // T)
    for i in range(0, len(rows), bs):
        chunk = rows[i:i + bs]
        inp = torch.zeros((len(chunk), T), dtype=torch.long)
        tgt = torch.full((len(chunk), T), -100, dtype=torch.long)
        am = torch.zeros((len(chunk), T), dtype=torch.bool)
        for r, (p, ans) in enumerate(chunk):
            seq = p + ans
            n = len(seq) - 1
            inp[r, :n] = torch.tensor(seq[:-1])
            tgt[r, :n] = torch.tensor(seq[1:])
            am[r, len(p) - 1:n] = True
        logits = model(input_ids=inp.to(device), use_cache=False).logits
        pred = logits.argmax(-1).cpu()
        out.extend((((pred == tgt) | ~am).all(-1)).tolist())
    return out


@torch.no_grad()
def greedy_generate(model, insts, device, max_new=None, batch=32):
    """Real greedy decoding with transformers' generate (left padding). Returns decoded answers."""
    res = []
    for i in range(0, len(insts), batch):
        chunk = insts[i:i + batch]
        enc = [TOK.encode(x["prompt"]) for x in chunk]
        L = max(len(e) for e in enc)
        ids = torch.full((len(enc), L), TOK.PAD, dtype=torch.long)
        att = torch.zeros((len(enc), L), dtype=torch.long)
        for r, e in enumerate(enc):
            ids[r, L - len(e):] = torch.tensor(e)
            att[r, L - len(e):] = 1
        mn = max_new or (max(len(x["answer"].encode()) for x in chunk) + 4)
        g = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), max_new_tokens=mn,
                           do_sample=False, eos_token_id=TOK.EOS, pad_token_id=TOK.PAD)
        for r in range(len(enc)):
            toks = g[r, L:].tolist()
            if TOK.EOS in toks:
                toks = toks[:toks.index(TOK.EOS)]
            res.append(TOK.decode(toks))
    return res


def evaluate(model, a, tasks, device, gen_kw, deadline):
    model.eval()
    ctxs = [int(x) for x in a.eval_ctx.split(",") if x]
    depths = [float(x) for x in range(0, 101, 10)]
    results = {}
    t0 = time.time()
    for ctx in ctxs:
        results[str(ctx)] = {}
        for task in tasks:
            if deadline and time.time() > deadline:
                log(f"eval: time budget reached, skipping ctx {ctx} task {task}")
                continue
            try:
                insts = list(gt.generate(a.eval_seed, [task], ctx, a.eval_num, "test", depths, **gen_kw))
            except ValueError as e:  # length too short for this task's needles
                log(f"eval: skipping ctx {ctx} task {task}: {e}")
                continue
            ok = teacher_forced_exact(model, insts, device, a.eval_tokens_per_batch)
            by_depth = {}
            for x, o in zip(insts, ok):
                d = str(int(depths[int(x["id"].rsplit("-", 1)[1]) % len(depths)]))
                by_depth.setdefault(d, []).append(o)
            results[str(ctx)][task] = {
                "acc": sum(ok) / len(ok), "n": len(ok),
                "acc_by_depth": {d: sum(v) / len(v) for d, v in by_depth.items()},
            }
            log(f"eval ctx {ctx:5d} {task:16s} exact {sum(ok) / len(ok):.3f} (n={len(ok)})")
    # cross-check: real greedy generation on a subset at the longest trained context
    check = {}
    if a.eval_generate_num > 0 and not (deadline and time.time() > deadline):
        ctx = max(c for c, _ in parse_curriculum(a.curriculum))
        agree = tot = 0
        for task in tasks:
            insts = list(gt.generate(a.eval_seed, [task], ctx, a.eval_generate_num, "test", depths, **gen_kw))
            tf = teacher_forced_exact(model, insts, device, a.eval_tokens_per_batch)
            gen = greedy_generate(model, insts, device)
            gok = [g == x["answer"] for g, x in zip(gen, insts)]
            sok = [sorted(g.split(", ")) == sorted(x["answer"].split(", ")) for g, x in zip(gen, insts)]
            check[task] = {"generate_exact": sum(gok) / len(gok), "teacher_forced_exact": sum(tf) / len(tf),
                           "generate_set_match": sum(sok) / len(sok),
                           "agreement": sum(int(p == q) for p, q in zip(gok, tf)) / len(tf),
                           "examples": [{"answer": x["answer"], "output": g} for x, g in list(zip(insts, gen))[:3]]}
            agree += sum(int(p == q) for p, q in zip(gok, tf))
            tot += len(tf)
        log(f"eval: greedy generate vs teacher-forced exact agreement at ctx {ctx}: {agree}/{tot}")
    log(f"eval took {time.time() - t0:.1f}s")
    return results, check


# --------------------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave)")
    # model
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--max-pos", type=int, default=4096)
    # data
    p.add_argument("--tasks", default="all")
    p.add_argument("--task-weights", default="", help="sampling weights of the tasks, comma-separated (default uniform)")
    p.add_argument("--first-task-weights", default="",
                   help="task sampling weights during the first curriculum phase (default: --task-weights)")
    p.add_argument("--curriculum", default="768:0.2,1280:0.2,2048:0.6",
                   help="ctx:share of steps, in order")
    p.add_argument("--mix-shorter", type=float, default=0.2)
    p.add_argument("--tokens-per-step", type=int, default=65536)
    p.add_argument("--lm-rows", type=float, default=0.1, help="share of rows that are plain essay text")
    p.add_argument("--lm-weight", type=float, default=0.2)
    p.add_argument("--lm-scope", default="all", choices=["all", "needles"],
                   help="task-row tokens under the --lm-weight loss: all non-answer tokens, or only the needles "
                        "and the final question line (the keys' second occurrence is a copying target)")
    p.add_argument("--template", default="ruler", choices=gt.TEMPLATES,
                   help="task text: RULER's long needles and question, or compact needles ending in the answer prefix")
    # optimisation
    p.add_argument("--steps", type=int, default=0, help="total steps (0 = fit --time-budget-seconds by timing)")
    p.add_argument("--stop-at-step", type=int, default=0, help="stop after this many steps (schedule unchanged)")
    p.add_argument("--time-budget-seconds", type=float, default=0, help="training loop wall-clock budget (0 = none)")
    p.add_argument("--budget-safety", type=float, default=0.93, help="share of the budget planned with --steps 0")
    p.add_argument("--calib-steps", type=int, default=3)
    p.add_argument("--min-steps", type=int, default=0,
                   help="with --steps 0: halve --tokens-per-step while the budget buys fewer steps than this")
    p.add_argument("--min-tokens-per-step", type=int, default=16384)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--save-every-seconds", type=float, default=90)
    p.add_argument("--save-dtype", default="bfloat16", choices=["float32", "bfloat16"],
                   help="dtype of model.safetensors; evaluation runs on the saved (rounded) weights")
    p.add_argument("--deterministic", type=int, default=1, choices=[0, 1])
    # eval
    p.add_argument("--eval-ctx", default="1024,2048,3968")
    p.add_argument("--eval-num", type=int, default=200)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--eval-generate-num", type=int, default=16)
    p.add_argument("--eval-tokens-per-batch", type=int, default=131072)
    p.add_argument("--eval-time-budget", type=float, default=0)
    a = p.parse_args(argv)

    t_start = time.time()
    try:  # keep the log to progress lines
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    prec = a.precision if a.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    autocast_dtype = torch.bfloat16 if prec == "bf16" else None
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    if a.deterministic:
        # deterministic kernels where PyTorch has them (warn, do not fail, where it has none)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if hasattr(torch.utils, "deterministic"):
            torch.utils.deterministic.fill_uninitialized_memory = False  # no NaN-filling of torch.empty: slow
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    tasks = gt.TASKS if a.tasks == "all" else a.tasks.split(",")
    a.weights = [float(x) for x in a.task_weights.split(",")] if a.task_weights else None
    if a.weights and len(a.weights) != len(tasks):
        raise SystemExit(f"--task-weights needs {len(tasks)} values for {tasks}")
    a.first_weights = [float(x) for x in a.first_task_weights.split(",")] if a.first_task_weights else None
    if a.first_weights and len(a.first_weights) != len(tasks):
        raise SystemExit(f"--first-task-weights needs {len(tasks)} values for {tasks}")
    gen_kw = {"template": a.template}
    phases = parse_curriculum(a.curriculum)
    if max(c for c, _ in phases) + ANS_PAD > a.max_pos:
        raise SystemExit(f"curriculum lengths + {ANS_PAD} answer tokens must fit --max-pos {a.max_pos}")

    model = build_model(a).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}), precision {prec}, "
        f"torch {torch.__version__}, params {n_params:,}")
    log(f"curriculum {phases}, tokens/step {a.tokens_per_step}, tasks {tasks}")

    total = a.steps
    calib = None
    if total <= 0:
        if a.time_budget_seconds <= 0:
            raise SystemExit("--steps 0 needs --time-budget-seconds")
        while True:
            calib = calibrate(model, a, phases, tasks, gen_kw, device, autocast_dtype)
            per = expected_step_time(phases, calib, a.mix_shorter)
            total = max(50, int(a.time_budget_seconds * a.budget_safety / per))
            log(f"calibration at {a.tokens_per_step} tokens/step, s/step: "
                + ", ".join(f"{c}: {t * 1000:.1f}ms" for c, t in calib.items())
                + f" -> expected {per * 1000:.1f} ms/step, {total} steps")
            # the retrieval transition needs optimizer steps more than tokens: if the budget buys too few
            # steps, use smaller steps (recorded in the reproduction command)
            if total >= a.min_steps or a.tokens_per_step // 2 < a.min_tokens_per_step:
                break
            a.tokens_per_step //= 2
        log(f"planning {total} steps of {a.tokens_per_step} tokens")
    plan = []
    for s in range(total):
        ctx, _ = ctx_for_step(s, total, phases, a.mix_shorter, a.seed)
        plan.append((ctx, max(1, a.tokens_per_step // ctx)))
    run_steps = min(total, a.stop_at_step) if a.stop_at_step > 0 else total

    first_steps = sum(1 for s in range(total) if ctx_for_step(s, total, phases, 0.0, a.seed)[1] == 0)
    ds = StepData(plan, a.seed, tasks, a.lm_rows, gen_kw, a.weights, a.first_weights, first_steps, a.lm_scope)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, range(run_steps)), batch_size=None, shuffle=False, num_workers=a.workers,
        pin_memory=device.type == "cuda", prefetch_factor=8 if a.workers > 0 else None,
        persistent_workers=False)
    opt = make_optimizer(model, a, device)
    model.train()

    t_train = time.time()
    last_save = t_train
    win = {"loss": 0.0, "ans": 0.0, "lm": 0.0, "n": 0, "tok": 0}
    task_ok = torch.zeros(len(tasks), device=device)
    task_n = torch.zeros(len(tasks), device=device)
    t_win = time.time()
    done = 0
    stopped_by_time = False
    phase_prev = None
    for step, batch in enumerate(loader):
        ctx, bs = plan[step]
        _, ph = ctx_for_step(step, total, phases, 0.0, a.seed)
        if ph != phase_prev:
            log(f"--- phase {ph}: ctx {phases[ph][0]} from step {step}")
            phase_prev = ph
        lr = lr_at(step, total, a)
        loss, al, ll, row_ok = train_step(model, opt, batch, lr, a, device, autocast_dtype)
        onehot = F.one_hot(batch["task"].clamp_min(-1) + 1, len(tasks) + 1)[:, 1:].float().to(device)
        task_ok += onehot.T @ row_ok.float()  # (one-hot products: deterministic, unlike index_add_)
        task_n += onehot.sum(0)
        win["loss"] += loss
        win["ans"] += al
        win["lm"] += ll
        win["n"] += 1
        win["tok"] += batch["inp"].numel()
        done = step + 1
        if done % a.log_every == 0 or done == run_steps:
            n = win["n"]
            accs = (task_ok / task_n.clamp_min(1)).tolist()
            tot_acc = (task_ok.sum() / task_n.sum().clamp_min(1)).item()
            dt = time.time() - t_win
            log(f"step {done:5d}/{total} ctx {ctx:4d} bs {bs:3d} lr {lr:.2e} loss {float(win['loss']) / n:.4f} "
                f"ans {float(win['ans']) / n:.4f} lm {float(win['lm']) / n:.4f} acc {tot_acc:.3f} ["
                + " ".join(f"{t.split('_')[-1]}:{x:.2f}" for t, x in zip(tasks, accs))
                + f"] tok/s {win['tok'] / dt:,.0f} t {time.time() - t_train:.0f}s")
            win = {"loss": 0.0, "ans": 0.0, "lm": 0.0, "n": 0, "tok": 0}
            task_ok.zero_()
            task_n.zero_()
            t_win = time.time()
        if a.save_every_seconds > 0 and time.time() - last_save > a.save_every_seconds:
            save_model(model, a.out, a, getattr(torch, a.save_dtype))
            last_save = time.time()
        if a.time_budget_seconds > 0 and time.time() - t_train > a.time_budget_seconds:
            stopped_by_time = done < run_steps
            if stopped_by_time:
                log(f"time budget reached after {done} of {run_steps} steps; stopping")
            break
    train_secs = time.time() - t_train
    del loader
    model.eval()
    save_model(model, a.out, a, getattr(torch, a.save_dtype))
    if a.save_dtype != "float32":  # evaluate exactly the weights that were saved
        with torch.no_grad():
            for prm in model.parameters():
                prm.copy_(prm.to(getattr(torch, a.save_dtype)).float())
    log(f"trained {done} steps in {train_secs:.1f}s; saved to {a.out}")

    # the command that reproduces these weights without timing
    repro = ["python", "scripts/retrieval/train.py"]
    for k, v in vars(a).items():
        if k in ("steps", "time_budget_seconds", "stop_at_step", "out", "weights", "first_weights", "min_steps",
                 "min_tokens_per_step") or v == "":
            continue
        repro += [f"--{k.replace('_', '-')}", str(v)]
    repro += ["--steps", str(total), "--out", "OUT"]
    if done < total:
        repro += ["--stop-at-step", str(done)]
    meta = {
        "args": vars(a), "planned_steps": total, "steps_done": done, "stopped_by_time_budget": stopped_by_time,
        "train_seconds": round(train_secs, 1), "calibration_seconds_per_step": calib,
        "params": n_params, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "reproduce": " ".join(repro),
        "tokens_seen": int(sum(ctx_bs[0] * ctx_bs[1] for ctx_bs in plan[:done])),
    }
    with open(os.path.join(a.out, "train_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)

    # held-out evaluation in float32, no autocast
    deadline = time.time() + a.eval_time_budget if a.eval_time_budget > 0 else None
    results, check = evaluate(model, a, tasks, device, gen_kw, deadline)
    max_ctx = str(max(c for c, _ in phases))
    at_max = results.get(max_ctx, {})
    ev = {"metric": "exact answer match (teacher-forced == greedy), held-out essays and seeds",
          "longest_trained_context": int(max_ctx), "results": results, "generate_check": check,
          "min_acc_at_longest_trained_context": min((v["acc"] for v in at_max.values()), default=None),
          "eval_seed": a.eval_seed, "depths_percent": list(range(0, 101, 10))}
    with open(os.path.join(a.out, "eval.json"), "w") as f:
        json.dump(ev, f, indent=1)
    log(f"min exact accuracy at ctx {max_ctx}: {ev['min_acc_at_longest_trained_context']}")
    log(f"total wall time {time.time() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
