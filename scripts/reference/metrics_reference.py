#!/usr/bin/env python3
"""Independent Python implementation of /work/shared/spec/METRICS.md (Repeat@n and F1), written with
the standard library's `re` only, and the source of the engine's metric fixtures.

    python scripts/reference/metrics_reference.py            # rewrite both fixtures
    python scripts/reference/metrics_reference.py --check    # compare with the stored fixtures

Writes
* engine/tests/fixtures/metrics_reference.json: ~30 (context, generation, reference) cases with
  Repeat@n for n = 1..4 and F1, plus the corpus means.
* engine/tests/fixtures/python_unicode_classes.json: which code points Python's `re` treats as `\\w`
  and as `\\s`, which are unassigned in Python's Unicode database, and every code point whose
  `str.lower()` differs from itself, so the Rust tokenizer can be checked against Python for the
  whole code space, not only for the sample texts.
"""
import argparse
import json
import re
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "engine" / "tests" / "fixtures"

TOKEN = re.compile(r"\w+|[^\w\s]")
WORD = re.compile(r"\w")
ARTICLES = {"a", "an", "the"}


def words(text):
    """METRICS.md word normalisation: lowercase, then `\\w+|[^\\w\\s]`."""
    return TOKEN.findall(text.lower())


def content_words(text):
    """F1's words: drop punctuation tokens (those that are not `\\w+`) and the articles."""
    return [w for w in words(text) if WORD.match(w) and w not in ARTICLES]


def repeat_at_n(context, generation, n):
    """Positions i of the generation's n-grams that occur in the context or earlier in the generation."""
    c, g = words(context), words(generation)
    ctx = {tuple(c[i : i + n]) for i in range(len(c) - n + 1)}
    count = 0
    for i in range(len(g) - n + 1):
        gram = tuple(g[i : i + n])
        earlier = any(tuple(g[j : j + n]) == gram for j in range(i))
        if gram in ctx or earlier:
            count += 1
    return count


def f1(generation, reference):
    g, r = content_words(generation), content_words(reference)
    overlap = 0
    remaining = list(r)
    for w in g:
        if w in remaining:
            remaining.remove(w)
            overlap += 1
    if overlap == 0:
        return 0.0
    p, rec = overlap / len(g), overlap / len(r)
    return 2 * p * rec / (p + rec)


CASES = [
    # (name, context, generation, reference)
    ("plain", "The cat sat on the mat.", "A dog ran in the park.", "The dog ran in a park."),
    ("self_repeat", "", "i like it i like it i like it", "i like it"),
    ("context_repeat", "we will build a wall", "and we will build a wall again", "and then we left"),
    ("punctuation_tokens", "Hello, world!", "Hello, world! Hello, world!", "hello world"),
    ("articles_only", "", "the a an the", "an a the"),
    ("empty_generation", "some context here", "", "a reference"),
    ("empty_reference", "ctx", "some words here", ""),
    ("both_empty", "", "", ""),
    ("n_larger_than_text", "one two", "one two", "one two"),
    ("case_folding", "THE QUICK BROWN FOX", "the Quick brown fox jumps", "The quick brown fox"),
    ("multiset_overlap", "", "yes yes yes no", "yes no no no"),
    ("numbers_and_underscore", "x_1 = 42", "x_1 = 42 and y_2 = 42", "x_1 equals 42"),
    ("apostrophes", "It's a dog's life.", "it's a dog's life, isn't it?", "It is a dog's life"),
    ("accents_precomposed", "Café au lait", "café au lait, café au lait", "café noir"),
    ("accents_combining", "Cafe\u0301 au lait", "cafe\u0301 cafe\u0301 cafe\u0301", "cafe\u0301"),
    ("german_sharp_s", "Straße und STRASSE", "straße straße und strasse", "Straße"),
    ("greek_final_sigma", "ΟΔΟΣ ΣΑΣ", "οδος σας οδος σας", "ΟΔΟΣ"),
    ("dotted_capital_i", "İstanbul İstanbul", "istanbul i̇stanbul", "İSTANBUL"),
    ("cjk", "我爱北京天安门", "我爱北京 天安门 我爱北京", "天安门"),
    ("emoji_punct", "good 👍", "good 👍 good 👍 good 👍", "good"),
    ("superscripts_fractions", "x² + y² = z²", "x² ½ x² ½ x²", "x²"),
    ("circled_letters", "Ⓐ Ⓑ", "Ⓐ Ⓑ Ⓐ Ⓑ", "Ⓐ"),
    ("zero_width_joiner", "a\u200db c", "a\u200db a\u200db", "a\u200db"),
    ("undertie_connector", "a\u203fb", "a\u203fb a\u203fb", "a b"),
    ("file_separator_whitespace", "x\x1cy", "x\x1cy x\x1cy", "x y"),
    ("nbsp_and_ideographic_space", "a\u00a0b\u3000c", "a\u00a0b\u3000c a b c", "a b c"),
    ("tabs_newlines", "line one\nline two", "line one\tline two\r\nline one", "line two"),
    ("long_repetition", "The nation is strong.",
     "The nation is strong. The nation is strong. The nation is strong. We are strong.",
     "We must remain vigilant and strong."),
    ("hyphens_dashes", "well-known — fact", "well-known fact — well-known — fact", "a well known fact"),
    ("arabic_devanagari", "مرحبا بالعالم नमस्ते दुनिया", "नमस्ते नमस्ते मरहबा", "नमस्ते दुनिया"),
    ("roman_numerals", "Chapter Ⅻ", "chapter ⅻ chapter ⅻ", "Ⅻ"),
    ("sotu_like", "Fellow-Citizens of the Senate and House of Representatives:",
     "I have the honor to inform you that the Senate and House of Representatives have the honor to",
     "The situation of our affairs is highly favorable."),
]

NS = [1, 2, 3, 4]


def make_metrics():
    cases = []
    for name, c, g, r in CASES:
        cases.append({
            "name": name,
            "context": c,
            "generation": g,
            "reference": r,
            "repeat": {str(n): repeat_at_n(c, g, n) for n in NS},
            "f1": f1(g, r),
            "words": words(g),
        })
    means = {f"repeat@{n}": sum(x["repeat"][str(n)] for x in cases) / len(cases) for n in NS}
    means["f1"] = sum(x["f1"] for x in cases) / len(cases)
    return {"generated_by": "scripts/reference/metrics_reference.py", "python": sys.version.split()[0],
            "cases": cases, "means": means}


def ranges(pred):
    out, start = [], None
    for cp in range(sys.maxunicode + 1):
        if pred(cp):
            if start is None:
                start = cp
        elif start is not None:
            out.append([start, cp - 1])
            start = None
    if start is not None:
        out.append([start, sys.maxunicode])
    return out


def make_unicode():
    word = re.compile(r"\w")
    space = re.compile(r"\s")
    lower = []
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        low = ch.lower()
        if low != ch:
            lower.append([cp, [ord(x) for x in low]])
    return {
        "generated_by": "scripts/reference/metrics_reference.py",
        "python": sys.version.split()[0],
        "unicode": unicodedata.unidata_version,
        "word_ranges": ranges(lambda cp: word.match(chr(cp)) is not None),
        "space_ranges": ranges(lambda cp: space.match(chr(cp)) is not None),
        "unassigned_ranges": ranges(lambda cp: unicodedata.category(chr(cp)) in ("Cn", "Cs")),
        "lower": lower,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the stored fixtures instead of writing")
    args = ap.parse_args()
    outputs = {
        FIXTURES / "metrics_reference.json": make_metrics(),
        FIXTURES / "python_unicode_classes.json": make_unicode(),
    }
    bad = False
    for path, data in outputs.items():
        text = json.dumps(data, ensure_ascii=True, separators=(",", ":")) + "\n"
        if args.check:
            same = path.exists() and json.loads(path.read_text()) == data
            print(f"{path.relative_to(ROOT)}: {'same' if same else 'DIFFERENT'}")
            bad |= not same
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)} ({len(text)} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
