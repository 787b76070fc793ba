#!/usr/bin/env python3
"""Check that a model directory's tokenizer.json (loaded with the `tokenizers` package, and with
transformers' AutoTokenizer) encodes and decodes exactly like the pure-Python byte-level tokenizer of
generate_tasks.py, on the whole essay corpus, on generated prompts and on non-ASCII text.

  python scripts/retrieval/check_tokenizer.py DIR      # DIR holds tokenizer.json (and tokenizer_config.json)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_tasks as gt  # noqa: E402


def main(argv):
    if len(argv) != 1:
        print(__doc__)
        return 2
    d = argv[0]
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok = gt.TOKENIZER
    texts = [gt.Haystack(split="all").text,
             "héllo — “quotes” ‘single’ naïve café 日本語 🚀 tabs\tand\nnewlines  double  spaces\r\n",
             "", " leading space", "trailing space ", "\x00\x01 control \x7f"]
    texts += [x["prompt"] + x["answer"] for x in gt.generate(7, gt.TASKS, 1024, 3, "test")]
    for s in texts:
        a = hf.encode(s).ids
        b = tok.encode(s)
        assert a == b, f"ids differ on {s[:40]!r}: {a[:12]} vs {b[:12]}"
        assert hf.decode(a, skip_special_tokens=True) == s == tok.decode(b), f"decode differs on {s[:40]!r}"
    assert hf.get_vocab_size(with_added_tokens=True) == tok.vocab_size
    print(f"tokenizers: OK on {len(texts)} texts ({sum(len(t.encode()) for t in texts):,} bytes)")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return 0
    at = AutoTokenizer.from_pretrained(d)
    for s in texts[1:]:
        assert at(s)["input_ids"] == tok.encode(s), f"AutoTokenizer ids differ on {s[:40]!r}"
        assert at.decode(at(s)["input_ids"], skip_special_tokens=True) == s
    assert (at.bos_token_id, at.eos_token_id, at.pad_token_id) == (tok.BOS, tok.EOS, tok.PAD)
    print("transformers AutoTokenizer: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
