"""Write training/tests/fixtures/losses_reference.json: `losses_reference.py` outputs for tiny
models and data that training/tests/fit.rs rebuilds, so that `training eval` is checked against an
independent PyTorch implementation without running Python at test time.

    cargo build -p exports && .venv/bin/python scripts/reference/losses_fixture.py
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPORTS = ROOT / "target" / "debug" / "exports"
SCRIPT = ROOT / "scripts" / "reference" / "losses_reference.py"

PROMPTS = ["Tell me about the cat.", "Where is the sun?", "Name a bird.", "What is 2024?"]
PAIRS = [
    {"prompt": p, "chosen": c, "rejected": r}
    for p, c, r in zip(
        PROMPTS,
        [" It sleeps.", " It is up in the sky and warm.", " A robin.", " A year."],
        [" the cat the cat the cat", " sun sun", " the the the the bird", " 2024 2024 2024"],
    )
] + [{"prompt": [{"role": "user", "content": "hi there"}], "chosen": " Hello! How are you?", "rejected": " hi hi hi"}]
BINARY = [
    {"prompt": "Say something nice.", "response": " You are kind.", "label": True},
    {"prompt": "Say something nice.", "response": " nice nice nice nice", "label": False},
    {"prompt": "Count.", "response": " 1 2 3", "label": True},
]
# (model key, data key, args)
CASES = [
    ("lm", "mixed", {"objective": "pairwise-cringe", "alpha": 0.5, "b": 3.0, "tau": 2.0}),
    ("lm", "mixed", {"objective": "pairwise-cringe", "gate": "hard", "b": 0.5, "alpha": 0.2, "margin_reduction": "mean"}),
    ("lm", "mixed", {"objective": "binary-cringe", "alpha": 0.3}),
    ("lm", "mixed", {"objective": "sft"}),
    ("lm", "pairs", {"objective": "dpo", "beta": 0.4, "reference": "ref"}),
    ("rm", "pairs", {"objective": "reward"}),
]
SEEDS = {"lm": (11, "lm"), "ref": (13, "lm"), "rm": (12, "reward")}


def main():
    lines = lambda recs: "".join(json.dumps(r) + "\n" for r in recs)
    data = {"pairs": lines(PAIRS), "mixed": lines(PAIRS + BINARY)}
    out = {"models": {k: {"arch": "llama", "seed": s, "head": h} for k, (s, h) in SEEDS.items()}, "data": data, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for key, (seed, head) in SEEDS.items():
            subprocess.run([EXPORTS, "init", "--arch", "llama", "--seed", str(seed), "--head", head,
                            "--out", tmp / key], check=True, capture_output=True)
        for name, text in data.items():
            (tmp / f"{name}.jsonl").write_text(text)
        for model, d, args in CASES:
            cmd = [sys.executable, SCRIPT, "--model", tmp / model, "--data", tmp / f"{d}.jsonl"]
            for k, v in args.items():
                cmd += [f"--{k.replace('_', '-')}", str(tmp / v) if k == "reference" else str(v)]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            out["cases"].append({"model": model, "data": d, "args": args, "expected": json.loads(res.stdout)})
    dest = ROOT / "training" / "tests" / "fixtures" / "losses_reference.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
