#!/usr/bin/env python3
"""RULER-style long-context retrieval tasks on a Paul Graham essay haystack.

Deterministic and seeded: instance `i` of a (task, context length, split) triple is a pure function of
(seed, task, context_tokens, split, i, depth), so any subset can be regenerated.

Tasks (RULER's retrieval family):
  niah_single      one needle "One of the special magic numbers for KEY is: VALUE."; ask KEY.
  niah_multikey    4 needles with different keys (3 distractors); ask one key.
  niah_multivalue  3 needles with the same key and different values; answer all values, comma-separated,
                   in order of appearance in the text.
  niah_multiquery  3 needles with different keys; ask all 3 keys; answer the values comma-separated in the
                   order the keys are asked.
  vt               variable tracking: a chain "VAR A = 482719." "VAR B = VAR A." "VAR C = VAR B." plus one
                   distractor chain; ask the value of the last variable. The prompt ends with
                   "Answer: VAR C = " and the answer is the chain walked back to the number,
                   "VAR B = VAR A = 482719" (--vt-answer trace, default: one lookup per step, like RULER's
                   answer that lists the chain) or just "482719" (--vt-answer value: all hops at once).

--template compact: needles "The magic number for KEY is: VALUE.", no instruction line and no question
sentence; the prompt ends with a new line holding the answer prefix alone ("The magic number for KEY is: ",
"VAR C = ", ...), so retrieval is a content match of the prompt's end against a needle. Same answers.

Tokeniser: byte level (`ByteTokenizer`): <pad>=0, <s>=1, </s>=2, byte b -> 3 + b (vocabulary 259).
`context_tokens` is the prompt length in tokens including <s>; the generator fills the haystack up to
the requested length and cuts it at a word boundary, so the actual length is at most the requested one
(and within a few tokens of it). The question comes at the end of the prompt, followed, as in RULER, by
an answer prefix that restates the query ("Answer: The special magic number for KEY is: "); the model
answers with `answer` followed by </s>.

Output: JSONL lines {"prompt", "answer", "answers", "task", "context_tokens", "depth", "needle_depths",
"context_tokens_target", "id"} (`context_tokens` = actual prompt tokens, `context_tokens_target` = requested;
`answers` = the strings a right answer contains, as RULER scores: for multi-value and multi-query every value
in any order, otherwise `answer` itself).
`depth` is the depth percent (0 = start of the haystack, 100 = end) of the needle that holds the answer
(the asked needle; for multi-value a random one of the values; for multi-query the first asked key;
for vt the statement holding the number); `needle_depths` lists the depth of every inserted needle.

Usage:
  generate_tasks.py --context-tokens 2048 --num 100 --depths 0,25,50,75,100 --seed 1 --split test \
      --tasks all --out tasks.jsonl
  generate_tasks.py --lm-samples 100 --context-tokens 2048 --out haystack.jsonl   # plain text {"text"}
  generate_tasks.py --write-tokenizer DIR                                          # tokenizer.json etc.
"""

import argparse
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_ESSAYS = os.path.join(REPO, "data", "niah-paul-graham-essays")

TASKS = ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt"]

# --------------------------------------------------------------------------------------------------
# Byte-level tokenizer


def _bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character map (what the HF ByteLevel pre-tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class ByteTokenizer:
    PAD, BOS, EOS = 0, 1, 2
    OFFSET = 3
    SPECIALS = ["<pad>", "<s>", "</s>"]
    vocab_size = 259

    def encode(self, text, bos=True):
        ids = [b + self.OFFSET for b in text.encode("utf-8")]
        return [self.BOS] + ids if bos else ids

    def decode(self, ids, skip_special=True):
        out = bytearray()
        for i in ids:
            i = int(i)
            if i >= self.OFFSET:
                out.append(i - self.OFFSET)
            elif not skip_special:
                out.extend(self.SPECIALS[i].encode())
        return out.decode("utf-8", errors="replace")

    def hf_tokenizer_json(self):
        b2u = _bytes_to_unicode()
        vocab = {s: i for i, s in enumerate(self.SPECIALS)}
        for b in range(256):
            vocab[b2u[b]] = b + self.OFFSET
        added = [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, s in enumerate(self.SPECIALS)
        ]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                              "use_regex": True},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [self.BOS], "tokens": ["<s>"]}},
            },
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": []},
        }

    def write(self, out_dir, model_max_length=4096):
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(self.hf_tokenizer_json(), f, ensure_ascii=False, indent=1)
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": None,
            "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "model_max_length": model_max_length, "padding_side": "left",
        }
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=1)


TOKENIZER = ByteTokenizer()

# --------------------------------------------------------------------------------------------------
# Haystack


class Haystack:
    """Concatenated essays of one split, with the offsets where sentences start."""

    def __init__(self, essays_dir=DEFAULT_ESSAYS, split="train"):
        names = sorted(n for n in os.listdir(essays_dir) if n.endswith(".txt"))
        if not names:
            raise SystemExit(f"no .txt essays in {essays_dir}")
        if split == "train":
            names = [n for i, n in enumerate(names) if i % 10 != 9]
        elif split == "test":
            names = [n for i, n in enumerate(names) if i % 10 == 9]
        elif split != "all":
            raise ValueError(f"unknown split {split!r}")
        texts = []
        for n in names:
            with open(os.path.join(essays_dir, n), encoding="utf-8") as f:
                t = " ".join(f.read().split())  # one line per essay, single spaces
            texts.append(t)
        self.text = "\n".join(texts) + "\n"
        self.data = self.text.encode("utf-8")
        # sentence starts: byte offsets right after ". ", "? ", "! " or a newline
        starts = [0]
        d = self.data
        for i in range(1, len(d) - 1):
            if (d[i - 1] in b".?!" and d[i] == 0x20) or d[i] == 0x0A:
                starts.append(i + 1)
        self.starts = starts

    def chunk(self, rng, nbytes, cut="word"):
        """A contiguous piece of at most `nbytes` bytes starting at a sentence start (wrapping around),
        cut at a word boundary (cut="word") or exactly (cut="bytes", may split a character)."""
        if nbytes <= 0:
            return b""
        s = self.starts[rng.randrange(len(self.starts))]
        d = self.data
        buf = d[s:s + nbytes]
        while len(buf) < nbytes:
            buf += d[: nbytes - len(buf)]
        if cut == "bytes":
            return buf
        j = max(buf.rfind(b" "), buf.rfind(b"\n"))
        if j > 0:
            buf = buf[:j]
        return buf.decode("utf-8", "ignore").encode("utf-8")  # never end inside a UTF-8 sequence


def _sentence_boundaries(text):
    """Character offsets where a needle may be inserted: 0 and after each sentence end."""
    b = [0]
    for i in range(1, len(text)):
        if text[i] in " \n" and text[i - 1] in ".?!":
            b.append(i)
    if text and text[-1] in ".?!":
        b.append(len(text))
    return b


def _insert_needles(text, needles):
    """needles: list of (depth_percent, sentence). Inserted at the sentence boundary nearest each depth.
    Returns (new text, actual depth percent of each needle in the given order)."""
    bounds = _sentence_boundaries(text)
    n = len(text)
    placed = []
    for k, (depth, sent) in enumerate(needles):
        target = depth / 100.0 * n
        pos = min(bounds, key=lambda p: (abs(p - target), p))
        placed.append((pos, k, sent))
    out = []
    prev = 0
    depths = [0.0] * len(needles)
    for pos, k, sent in sorted(placed):
        out.append(text[prev:pos])
        depths[k] = round(100.0 * pos / max(n, 1), 2)
        if pos == 0:
            out.append(sent + " ")
        else:
            out.append(" " + sent)
        prev = pos
    out.append(text[prev:])
    return "".join(out), depths


# --------------------------------------------------------------------------------------------------
# Keys and values

ADJECTIVES = (
    "able acid agile amber angry bald bitter blue bold brave brief bright broad brown busy calm cheap "
    "clean clear cold cool coral crisp cruel curly damp dark deep dense dry dull eager early empty fair "
    "fancy fast fierce flat fond frail free fresh full fuzzy giant glad gold grand gray green grim happy "
    "harsh heavy hollow huge humble icy idle jolly keen kind large late lazy lean light little livid lone "
    "long loud lucky mad merry mild misty modest muddy narrow neat new nice noble odd old pale plain "
    "polite poor proud quick quiet rapid rare raw red rich rigid ripe rough round royal rude rusty sad "
    "safe salty sharp shiny short shy silent silly slim slow small smart smooth soft sour spare stale "
    "steep stiff still stout strange strong sunny swift tall tame tender thick thin tidy tiny tough "
    "true ugly vast vivid warm weak wet white wide wild wise witty young zany"
).split()
NOUNS = (
    "anchor apple arrow badge bagel banjo barn basket beacon bell bench berry blade blanket bottle "
    "bridge brook bucket button cabin camera candle canyon carpet castle cedar chair cherry circle "
    "cliff clock cloud comet copper cotton crane crown cup dagger desert dolphin donkey dragon drum "
    "eagle engine falcon feather fence fiddle flute forest fossil fountain garden garlic ginger glacier "
    "glove goat harbor hammer helmet hill honey island jacket jungle kettle kite ladder lantern lemon "
    "lizard magnet mango maple marble meadow mirror monkey mountain needle oak ocean olive orchid otter "
    "owl oyster paddle panda parrot pebble pepper piano pillow pine planet pocket pony puzzle quarry "
    "rabbit raven ribbon river rocket saddle salmon sandal shadow shell shovel silver spider spoon "
    "squirrel statue stone sugar summit tiger timber tomato tower tractor trumpet tulip turtle valley "
    "velvet violin wagon walnut whale willow window wizard wolf yacht zebra"
).split()


def random_key(rng, used):
    while True:
        k = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
        if k not in used:
            used.add(k)
            return k


def random_value(rng, used, digits=6):
    while True:
        v = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
        if v not in used:
            used.add(v)
            return v


def random_var(rng, used):
    while True:
        v = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if v not in used:
            used.add(v)
            return v


# --------------------------------------------------------------------------------------------------
# Instances

NIAH_PREFIX = "Some special magic numbers are hidden within the following text. Memorize them.\n"
TEMPLATES = ["ruler", "compact"]
VT_PREFIX = "Track the chains of variable assignments hidden in the following text.\n"


def _needle(key, value, template="ruler"):
    if template == "compact":
        return f"The magic number for {key} is: {value}."
    return f"One of the special magic numbers for {key} is: {value}."


def _join_keys(keys):
    return ", ".join(keys[:-1]) + " and " + keys[-1] if len(keys) > 1 else keys[0]


def make_instance(rng, haystack, task, context_tokens, depth=None, *, num_keys=4, num_values=3,
                  num_queries=3, vt_hops=2, vt_chains=2, vt_answer="trace", digits=6, template="ruler"):
    """One instance as a dict. `depth` (percent) places the answer needle; None = uniform random."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose from {TEMPLATES}")
    compact = template == "compact"
    d0 = rng.uniform(0, 100) if depth is None else float(depth)
    used_k, used_v = set(), set()
    needles = []  # (depth, sentence); needles[0] holds the answer
    if task in ("niah_single", "niah_multikey"):
        n = 1 if task == "niah_single" else num_keys
        keys = [random_key(rng, used_k) for _ in range(n)]
        vals = [random_value(rng, used_v, digits) for _ in range(n)]
        needles = [(d0 if i == 0 else rng.uniform(0, 100), _needle(k, v, template)) for i, (k, v) in enumerate(zip(keys, vals))]
        question = f"What is the special magic number for {keys[0]} mentioned in the provided text?"
        answer_prefix = f"The special magic number for {keys[0]} is: "
        answer = vals[0]
        prefix = NIAH_PREFIX
    elif task == "niah_multivalue":
        key = random_key(rng, used_k)
        vals = [random_value(rng, used_v, digits) for _ in range(num_values)]
        depths = [d0] + [rng.uniform(0, 100) for _ in range(num_values - 1)]
        needles = [(dp, _needle(key, v, template)) for dp, v in zip(depths, vals)]
        question = f"What are all the special magic numbers for {key} mentioned in the provided text?"
        answer_prefix = f"The special magic numbers for {key} are: "
        answer = None  # order of appearance, known after insertion
        prefix = NIAH_PREFIX
    elif task == "niah_multiquery":
        keys = [random_key(rng, used_k) for _ in range(num_queries)]
        vals = [random_value(rng, used_v, digits) for _ in range(num_queries)]
        needles = [(d0 if i == 0 else rng.uniform(0, 100), _needle(k, v, template)) for i, (k, v) in enumerate(zip(keys, vals))]
        question = f"What are all the special magic numbers for {_join_keys(keys)} mentioned in the provided text?"
        answer_prefix = f"The special magic numbers for {_join_keys(keys)} are: "
        answer = ", ".join(vals)
        prefix = NIAH_PREFIX
    else:  # vt
        used_n = set()
        chains = []
        for c in range(vt_chains):
            names = [random_var(rng, used_n) for _ in range(vt_hops + 1)]
            value = random_value(rng, used_v, digits)
            stmts = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, len(names))]
            chains.append((names, value, stmts))
        for c, (names, value, stmts) in enumerate(chains):
            for i, s in enumerate(stmts):
                needles.append((d0 if (c == 0 and i == 0) else rng.uniform(0, 100), s))
        names, value, _ = chains[0]
        question = f"What is the value of VAR {names[-1]}?"
        answer_prefix = f"VAR {names[-1]} = "
        if vt_answer == "trace":
            question += " Follow the chain of assignments back to the number."
            answer = " = ".join([f"VAR {n}" for n in reversed(names[:-1])] + [value])
        else:
            answer = value
        prefix = VT_PREFIX
    if compact:  # no instruction line; the question is the answer prefix itself
        prefix = ""
        suffix = "\n" + (answer_prefix.replace("special magic", "magic") if task != "vt" else answer_prefix)
    else:
        suffix = f"\n{question}\nAnswer: {answer_prefix}"
    fixed = 1 + len(prefix.encode()) + len(suffix.encode()) + sum(len(s.encode()) + 1 for _, s in needles)
    budget = context_tokens - fixed
    if budget < 0:
        raise ValueError(f"context_tokens={context_tokens} is too small for task {task} (needs > {fixed})")
    hay = haystack.chunk(rng, budget).decode("utf-8")
    text, depths = _insert_needles(hay, needles)
    if answer is None:  # multivalue: order of appearance
        order = sorted(range(len(vals)), key=lambda i: (depths[i], i))
        answer = ", ".join(vals[i] for i in order)
    prompt = prefix + text + suffix
    n_tok = len(prompt.encode("utf-8")) + 1
    # RULER scores the multi-value and multi-query tasks by string_match_all: every value present,
    # in any order; `answers` lists what a right answer must contain
    answers = answer.split(", ") if task in ("niah_multivalue", "niah_multiquery") else [answer]
    return {"prompt": prompt, "answer": answer, "answers": answers, "task": task, "context_tokens": n_tok,
            "depth": depths[0], "needle_depths": depths, "context_tokens_target": context_tokens,
            "needles": [sent for _, sent in needles]}


def instance_rng(seed, task, context_tokens, split, index):
    return random.Random(f"retrieval/{seed}/{split}/{task}/{context_tokens}/{index}")


def generate(seed, tasks, context_tokens, num, split="test", depths=None, essays_dir=DEFAULT_ESSAYS, **kw):
    """Yields `num` instances per task (and per context length if a list is given). With `depths`, instance
    i uses depths[i % len(depths)] (a sweep); otherwise the depth is uniform random."""
    hay = Haystack(essays_dir, split)
    ctxs = context_tokens if isinstance(context_tokens, (list, tuple)) else [context_tokens]
    for ctx in ctxs:
        for task in tasks:
            for i in range(num):
                rng = instance_rng(seed, task, ctx, split, i)
                d = None if not depths else depths[i % len(depths)]
                inst = make_instance(rng, hay, task, ctx, d, **kw)
                inst["id"] = f"{split}-{seed}-{task}-{ctx}-{i}"
                yield inst


def lm_samples(seed, context_tokens, num, split="train", essays_dir=DEFAULT_ESSAYS):
    hay = Haystack(essays_dir, split)
    for i in range(num):
        rng = random.Random(f"retrieval-lm/{seed}/{split}/{context_tokens}/{i}")
        yield {"text": hay.chunk(rng, context_tokens - 1).decode("utf-8"), "task": "lm", "id": f"lm-{split}-{seed}-{i}"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="all", help=f"comma-separated subset of {TASKS} or 'all'")
    p.add_argument("--context-tokens", default="2048", help="prompt length(s) in tokens, comma-separated")
    p.add_argument("--depth", type=float, default=None, help="depth percent of the answer needle (default random)")
    p.add_argument("--depths", default=None, help="depth sweep, comma-separated percents (instance i uses i mod n)")
    p.add_argument("--num", type=int, default=100, help="instances per task and context length")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--split", default="test", choices=["train", "test", "all"], help="which essays form the haystack")
    p.add_argument("--essays", default=DEFAULT_ESSAYS)
    p.add_argument("--num-keys", type=int, default=4)
    p.add_argument("--num-values", type=int, default=3)
    p.add_argument("--num-queries", type=int, default=3)
    p.add_argument("--vt-hops", type=int, default=2)
    p.add_argument("--vt-chains", type=int, default=2)
    p.add_argument("--vt-answer", default="trace", choices=["trace", "value"])
    p.add_argument("--digits", type=int, default=6)
    p.add_argument("--template", default="ruler", choices=TEMPLATES,
                   help="ruler: RULER's long needles, question and answer prefix; compact: short needles, "
                        "the prompt ends with the answer prefix alone")
    p.add_argument("--lm-samples", type=int, default=0, help="write this many plain haystack samples instead of tasks")
    p.add_argument("--write-tokenizer", default=None, metavar="DIR", help="write tokenizer.json/tokenizer_config.json to DIR and exit")
    p.add_argument("--out", default="-")
    a = p.parse_args(argv)
    if a.write_tokenizer:
        TOKENIZER.write(a.write_tokenizer)
        return 0
    ctxs = [int(x) for x in a.context_tokens.split(",")]
    out = sys.stdout if a.out == "-" else open(a.out, "w", encoding="utf-8")
    if a.lm_samples:
        rows = (r for c in ctxs for r in lm_samples(a.seed, c, a.lm_samples, a.split, a.essays))
    else:
        tasks = TASKS if a.tasks == "all" else a.tasks.split(",")
        depths = [float(x) for x in a.depths.split(",")] if a.depths else ([a.depth] if a.depth is not None else None)
        rows = generate(a.seed, tasks, ctxs, a.num, a.split, depths, a.essays, num_keys=a.num_keys,
                        num_values=a.num_values, num_queries=a.num_queries, vt_hops=a.vt_hops,
                        vt_chains=a.vt_chains, vt_answer=a.vt_answer, digits=a.digits,
                        template=a.template)
    for r in rows:
        out.write(json.dumps(r, ensure_ascii=False) + "\n")
    if out is not sys.stdout:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
