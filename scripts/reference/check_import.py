#!/usr/bin/env python3
"""Check a model folder written by `exports import --gguf FILE --out DIR` against transformers'
own GGUF loader for the same file.

    .venv/bin/python scripts/reference/check_import.py DIR FILE.gguf

(a) logits of AutoModelForCausalLM.from_pretrained(DIR) vs from_pretrained(gguf_dir, gguf_file=...)
    on several prompts: max |delta| must be <= 1e-4;
(b) token ids of AutoTokenizer.from_pretrained(DIR) vs the GGUF tokenizer on hand-picked tricky
    strings and seeded random ones, with and without special tokens, plus decode and chat-template
    rendering.

Also reports (informational, never a failure) how many strings a digit-splitting pre-tokenizer
(llama.cpp's `smollm`, the original SmolLM2 tokenizer.json) would tokenize differently from
transformers' GGUF tokenizer, which is the reason the importer does not split digits.

Prints max |delta| and every mismatch; exits 1 on any failure.
"""

import argparse
import json
import os
import random
import sys

import torch
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

TOLERANCE = 1e-4

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 12 * 34?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a land far, far away, there lived a dragon who   loved\n\npoetry.",
    "Mr. President, Members of Congress, 1,234,567 citizens — naïve café “quotes” ✓ 日本語 🤖",
]

TRICKY = [
    "",
    " ",
    "Hello world",
    " Hello  world ",
    "The year 2024 had 366 days; pi ≈ 3.14159, e=2.71828.",
    "1,000,000 and 12345678901234567890",
    "a  1",
    "x   42   y",
    "  12",
    "\t\t9\n\n10",
    "phone: +1 (555) 010-9999 ext.12",
    "Mixed4digits5in6words and v1.2.3-rc4",
    "line one\nline two\r\nline three\n\n\n  indented\n\tTabbed",
    "    leading spaces and trailing   ",
    "don't I'll we've they're she'd it's O'Neil's",
    "naïve café résumé façade coöperate",
    "“Smart quotes” — em dash – en dash … ellipsis",
    "日本語のテキスト and 中文 and 한국어",
    "Ελληνικά кириллица עברית العربية",
    "emoji: 🤖🚀👍🏽 👨‍👩‍👧 ✓✗",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>after end",
    "inline<|im_start|>special<|im_end|>tokens",
    "<repo_name>foo<file_sep>bar<filename>baz.py",
    "<|im_start|> spaced <|im_end|>",
    "<|im_star|> not quite special",
    "```python\nfor i in range(10):\n    print(i ** 2)  # squares\n```",
    "{\"key\": [1, 2.5, -3e10, null, true]}",
    "https://example.com/path?query=1&b=2#frag",
    "$100.00 + €50 = ¥?   100%!!!",
    "ALLCAPS lowercase CamelCase snake_case kebab-case",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
    "zero\u200bwidth\u200djoiner",
    "a" * 200,
    "1" * 50,
    " " * 17 + "x",
    "\n" * 7,
]

POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "     \t\n\r",
    ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
    "éèêëàâäôöûüçñßøåæœ—–…“”‘’€£¥©®™°±×÷",
    "日本語中文한국어ΑΒΓαβγкирилл",
    "🤖🚀👍✓✗",
]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>"]
WORDS = ["the", " the", "of", " and", "State", " Union", "people", " 1990", "  ", "\n\n", " don't", "'s"]


def random_strings(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 25)):
            r = rng.random()
            if r < 0.05:
                parts.append(rng.choice(SPECIALS))
            elif r < 0.35:
                parts.append(rng.choice(WORDS))
            else:
                pool = rng.choice(POOLS)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 6))))
        out.append("".join(parts))
    return out


def ids(tok, text, special):
    return tok(text, add_special_tokens=special)["input_ids"]


def check_tokenizers(model_dir, gguf_dir, gguf_name, n_random):
    mine = AutoTokenizer.from_pretrained(model_dir)
    ref = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    failures = []
    strings = TRICKY + random_strings(n_random)
    for text in strings:
        for special in (True, False):
            a, b = ids(mine, text, special), ids(ref, text, special)
            if a != b:
                failures.append(f"ids differ (add_special_tokens={special}) on {text!r}:\n  dir:  {a}\n  gguf: {b}")
        a = ids(ref, text, False)
        da, db = mine.decode(a), ref.decode(a)
        if da != db:
            failures.append(f"decode differs on {text!r}: {da!r} vs {db!r}")
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if getattr(mine, attr) != getattr(ref, attr):
            failures.append(f"{attr}: dir {getattr(mine, attr)!r} vs gguf {getattr(ref, attr)!r}")
    chats = [
        [{"role": "user", "content": "Hi there 123"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?\n\nBecause."}],
    ]
    for msgs in chats:
        a = mine.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        b = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        if a != b:
            failures.append(f"chat template renders differ:\n  dir:  {a!r}\n  gguf: {b!r}")
        elif ids(mine, a, False) != ids(ref, b, False):
            failures.append(f"chat ids differ on {a!r}")

    # Informational: what llama.cpp's `smollm` digit split would change.
    digits = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    digits.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    differ = [t for t in strings if digits.encode(t, add_special_tokens=False).ids != ids(ref, t, False)]
    print(f"tokenizer: {len(strings)} strings x 2 settings, {len(failures)} mismatches")
    print(f"  (informational) a digit-splitting pre-tokenizer would differ from transformers on "
          f"{len(differ)} of {len(strings)} strings, e.g. {differ[:3]!r}")
    return failures


@torch.no_grad()
def check_logits(model_dir, gguf_dir, gguf_name):
    mine = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32).eval()
    failures = []
    if type(mine).__name__ != "LlamaForCausalLM":
        failures.append(f"{model_dir} loads as {type(mine).__name__}, expected LlamaForCausalLM")
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    mine_sd, ref_sd = mine.state_dict(), ref.state_dict()
    weight_delta = max((mine_sd[k] - ref_sd[k]).abs().max().item() for k in ref_sd)
    print(f"weights: max |delta| over {len(ref_sd)} tensors = {weight_delta:.3g}")
    worst = 0.0
    for prompt in PROMPTS:
        input_ids = torch.tensor([tok(prompt, add_special_tokens=True)["input_ids"]])
        a = mine(input_ids).logits
        b = ref(input_ids).logits
        delta = (a - b).abs().max().item()
        worst = max(worst, delta)
        same_argmax = bool((a.argmax(-1) == b.argmax(-1)).all())
        print(f"logits: {input_ids.shape[1]:3d} tokens, max |delta| = {delta:.3g}, same argmax: {same_argmax}  {prompt[:40]!r}")
        if not delta <= TOLERANCE:
            failures.append(f"logits differ by {delta} > {TOLERANCE} on {prompt!r}")
    print(f"logits: max |delta| over {len(PROMPTS)} prompts = {worst:.3g} (tolerance {TOLERANCE})")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("gguf")
    ap.add_argument("--random-strings", type=int, default=400)
    ap.add_argument("--skip-logits", action="store_true")
    args = ap.parse_args()
    gguf_dir, gguf_name = os.path.split(os.path.abspath(args.gguf))
    with open(os.path.join(args.model_dir, "config.json")) as f:
        print(f"config: {json.load(f)['architectures']}")
    failures = check_tokenizers(args.model_dir, gguf_dir, gguf_name, args.random_strings)
    if not args.skip_logits:
        failures += check_logits(args.model_dir, gguf_dir, gguf_name)
    for f in failures:
        print("FAIL:", f)
    print("OK" if not failures else f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
