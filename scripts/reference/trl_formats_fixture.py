"""Fixtures for the record formats of TRL and the Hugging Face Hub: exports/tests/fixtures/formats/.

Writes the same small preference data set in four forms — our string form (conversational prompt,
string responses), TRL's explicit-prompt conversational form, TRL's implicit-prompt form, and the
explicit form as Parquet (pyarrow, snappy, two rows per row group) — plus TRL's unpaired (KTO)
form of it (JSON Lines and Parquet, zstd), pairs whose responses are several messages,
a prompt file in Parquet whose records carry extra
fields (as benchmark files do), and a Parquet file with a bad row.

`expected_ids.json` holds the token ids of every record, computed independently of the Rust code:
TRL's own `maybe_extract_prompt` and `maybe_apply_chat_template` render each record with the tiny
model's tokenizer (`exports init`; loaded by transformers), the Hugging Face `tokenizers` library
tokenizes the rendered prompt and completion without adding special tokens, and a completion's ids
end at the first EOS (an EOS is appended if the rendered text has none) — the rule of the README's
"Record formats". The script asserts that all forms give the same ids before writing.

Run from the repository root: .venv/bin/python scripts/reference/trl_formats_fixture.py
"""

import json
import os
import subprocess
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import transformers
from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "exports", "tests", "fixtures", "formats")


def user(text, **extra):
    return {"role": "user", "content": text, **extra}


def assistant(text):
    return {"role": "assistant", "content": text}


# (prompt messages, chosen response, rejected response, extra columns). Responses are strings;
# a list is a response of several messages.
DATA = [
    ([user("What colour is the sky?", name="ann")], "It is blue.", "It is green.",
     {"score_chosen": 8.0, "score_rejected": 2.5, "source": "hand"}),
    ([{"role": "system", "content": "Be brief."}, user("Name a prime.")], "Seven.", "Nine, and then some.",
     {"score_chosen": 9.0, "score_rejected": 1.0, "source": "hand"}),
    ([user("Say hello."), assistant("Hello."), user("Again, louder.")], "HELLO!", "hello",
     {"score_chosen": 7.5, "score_rejected": 3.0, "source": "multi-turn"}),
    ([user("Count to three.")], "One, two, three.", "one two",
     {"score_chosen": 6.0, "score_rejected": 5.0, "source": "hand"}),
]

# Responses of several messages (TRL conversational only): rendered with the prompt, cut after the
# first EOS.
SEVERAL = [
    ([user("Count to three.")], [assistant("One, two, three."), user("Thanks"), assistant("You are welcome.")],
     "one two", {"source": "several messages"}),
    ([user("Hi")], [assistant("Hello!"), user("Bye")], [assistant("Go away."), user("Bye")], {}),
]


def as_messages(response):
    return response if isinstance(response, list) else [assistant(response)]


def string_form(prompt, chosen, rejected, extra):
    # Our form: responses as strings (only where a response is one message).
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def explicit(prompt, chosen, rejected, extra):
    return {"prompt": prompt, "chosen": as_messages(chosen), "rejected": as_messages(rejected), **extra}


def implicit(prompt, chosen, rejected, extra):
    return {"chosen": prompt + as_messages(chosen), "rejected": prompt + as_messages(rejected), **extra}


def kto(rows):
    # TRL's unpair_preference_dataset: every chosen (label true), then every rejected (false).
    out = [{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in rows]
    out += [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in rows]
    return out


def write_jsonl(name, rows):
    with open(os.path.join(OUT, name), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "tiny")
        subprocess.run(["cargo", "run", "-q", "--release", "-p", "exports", "--", "init", "--arch", "llama",
                        "--seed", "1", "--out", folder], check=True, cwd=ROOT)
        tok = transformers.AutoTokenizer.from_pretrained(folder)
    eos = tok.convert_tokens_to_ids(tok.eos_token)

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    def completion_ids(text):
        got = ids(text)
        return got[: got.index(eos) + 1] if eos in got else got + [eos]

    def trl_ids(example):
        example = maybe_extract_prompt(example)
        text = maybe_apply_chat_template(example, tok)
        out = {"prompt": ids(text["prompt"])}
        for key in ("chosen", "rejected", "completion"):
            if key in text:
                out[key] = completion_ids(text[key])
        return out

    explicit_rows = [explicit(*d) for d in DATA]
    implicit_rows = [implicit(*d) for d in DATA]
    string_rows = [string_form(*d) for d in DATA]
    several_rows = [explicit(*d) for d in SEVERAL]

    expected = [trl_ids(r) for r in explicit_rows]
    assert [trl_ids(r) for r in implicit_rows] == expected, "implicit and explicit prompts disagree"
    for r, want in zip(string_rows, expected):
        # Our string rule: ids(response) ++ [eos], the prompt rendered with the generation prompt.
        prompt = ids(tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True))
        got = {"prompt": prompt, "chosen": ids(r["chosen"]) + [eos], "rejected": ids(r["rejected"]) + [eos]}
        assert got == want, (got, want)
    kto_rows = kto(explicit_rows)
    kto_expected = [trl_ids(r) for r in kto_rows]
    several_expected = [trl_ids(r) for r in several_rows]
    assert [trl_ids(implicit(*d)) for d in SEVERAL] == several_expected

    write_jsonl("pairs_string.jsonl", string_rows)
    write_jsonl("pairs_trl_explicit.jsonl", explicit_rows)
    write_jsonl("pairs_trl_implicit.jsonl", implicit_rows)
    write_jsonl("pairs_trl_several_messages.jsonl", several_rows)
    pq.write_table(pa.Table.from_pylist(explicit_rows), os.path.join(OUT, "pairs_trl_explicit.parquet"),
                   row_group_size=2, compression="snappy")
    # KTO over the string form, as JSONL and Parquet.
    kto_string = kto(string_rows)
    write_jsonl("kto_string.jsonl", kto_string)
    pq.write_table(pa.Table.from_pylist(kto_string), os.path.join(OUT, "kto_string.parquet"),
                   compression="zstd")
    write_jsonl("kto_trl.jsonl", kto_rows)

    prompts = [
        {"id": f"q{i}", "messages": d[0], "category": ["writing", "math", "chat", "counting"][i],
         "source": "bench", "meta": {"turn": i + 1, "tags": ["a", "b"][: i % 2 + 1]}}
        for i, d in enumerate(DATA)
    ]
    pq.write_table(pa.Table.from_pylist(prompts), os.path.join(OUT, "prompts_extra.parquet"),
                   row_group_size=3, compression="snappy")
    write_jsonl("prompts_extra.jsonl", prompts)

    # Row 3 (row group 1, row 1) lacks its rejected response.
    bad = [dict(r) for r in explicit_rows]
    bad[3]["rejected"] = None
    pq.write_table(pa.Table.from_pylist(bad), os.path.join(OUT, "pairs_bad_row.parquet"), row_group_size=2)

    with open(os.path.join(OUT, "expected_ids.json"), "w") as f:
        json.dump({"eos": eos, "pairs": expected, "kto": kto_expected, "several_messages": several_expected,
                   "versions": {"trl": __import__("trl").__version__, "transformers": transformers.__version__,
                                "pyarrow": pa.__version__}}, f)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
