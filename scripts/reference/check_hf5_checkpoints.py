#!/usr/bin/env python3
"""Issue 11's must-show, rerunnable: checkpoints as transformers 5 saves them, end to end.

Folders (all written by transformers' own `save_pretrained`, fp32):
  * smollm2 — models/smollm2-135m-instruct loaded and saved again by transformers (what a user of
    transformers 5 has);
  * tiny random Qwen3 (tied; untied with biases; a reward model), Llama 3.2-style (llama3 rope
    scaling, tied), Qwen2 and Mistral (the config classes' own context lengths; Mistral's default
    window 4096, and one with a window of 4 that the 9-token rows use),
    built by scripts/reference/hf5_reference.py's builders with exports init's tiny tokenizer.
For each: `training eval --objective pairwise-cringe --cringe-k 1` against losses_reference.py
(transformers; relative 1e-4), `exports onnx` in both flavors against transformers' logits
(max |Δ| ≤ 1e-3, rows of lengths 9, 6, 5 each run alone), and the `ort` folder's greedy tokens
under onnxruntime-genai against transformers' (onnx_genai_check.py).
Then a one-step `training fit` of the tiny Qwen3 (with an unknown key added to its config):
`final/` must carry the unknown key, load in transformers, and its ONNX export (both flavors) must
give transformers' logits of that checkpoint within 1e-3.

Usage: .venv/bin/python scripts/reference/check_hf5_checkpoints.py [--skip-smollm2] [--keep DIR]
Exits 1 if any check fails; prints one line per check.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf5_reference as ref  # noqa: E402

ROOT = ref.ROOT
SMOL = ROOT / "models" / "smollm2-135m-instruct"
PY = sys.executable
FAILED = []


def report(ok: bool, what: str) -> None:
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        FAILED.append(what)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def check_eval(folder: Path, data: Path, objective: str = "pairwise-cringe") -> None:
    ours = run([ROOT / "target/release/training", "eval", "--model", folder, "--data", data,
                "--objective", objective, "--cringe-k", "1", "--json"])
    theirs = run([PY, ROOT / "scripts/reference/losses_reference.py", "--model", folder, "--data", data,
                  "--objective", objective])
    if ours.returncode or theirs.returncode:
        report(False, f"{folder.name}: training eval / losses_reference failed:\n{ours.stderr[-2000:]}{theirs.stderr[-2000:]}")
        return
    got = json.loads(ours.stdout.strip().splitlines()[-1])
    want = json.loads(theirs.stdout.strip().splitlines()[-1])
    worst = max(abs(got[k] - w) / max(abs(w), 0.1) for k, w in want.items())
    report(worst <= 1e-4, f"{folder.name}: training eval --objective {objective} loss {got['loss']:.6f} vs transformers {want['loss']:.6f} "
                          f"(worst relative difference over {sorted(want)} {worst:.1e})")


def rows(vocab: int, low: int):
    rng = np.random.default_rng(7)
    return [rng.integers(low, vocab, size=n).astype(np.int64) for n in (9, 6, 5)]


def hf_row_logits(folder: Path, prompts):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(input_ids=torch.from_numpy(p)[None]).logits[0].numpy() for p in prompts]


def ort_row_logits(onnx_dir: Path, prompts):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    out = []
    for p in prompts:
        feeds = {"input_ids": p[None], "attention_mask": np.ones((1, len(p)), dtype=np.int64)}
        if "position_ids" in names:
            feeds["position_ids"] = np.arange(len(p), dtype=np.int64)[None]
        for i in sess.get_inputs():
            if i.name.startswith("past_key_values"):
                feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32)
        out.append(sess.run(["logits"], feeds)[0][0])
    return out


def check_onnx(folder: Path, work: Path, low: int, genai: bool = True) -> None:
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    prompts = rows(vocab, low)
    want = hf_row_logits(folder, prompts)
    for flavor in ("ort", "portable"):
        out = work / f"{folder.name}-{flavor}"
        r = run([ROOT / "target/release/exports", "onnx", "--model", folder, "--out", out, "--flavor", flavor])
        if r.returncode:
            report(False, f"{folder.name}: exports onnx --flavor {flavor}: {r.stderr[-2000:]}")
            continue
        got = ort_row_logits(out, prompts)
        d = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
        report(d <= 1e-3, f"{folder.name}: exports onnx --flavor {flavor}: max |logits - transformers| = {d:.2e}")
        if flavor == "ort" and genai:
            g = run([PY, ROOT / "scripts/reference/onnx_genai_check.py", folder, out, "--new", "8"])
            report(g.returncode == 0, f"{folder.name}: onnxruntime-genai greedy on the ort folder equals transformers"
                                      + ("" if g.returncode == 0 else f"\n{g.stdout[-1500:]}{g.stderr[-1500:]}"))
        shutil.rmtree(out, ignore_errors=True)


def check_onnx_reward(folder: Path, work: Path) -> None:
    """The reward head (`exports onnx --head reward`) in both flavors: each row's score against
    transformers' *ForSequenceClassification."""
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification

    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    prompts = rows(vocab, 3)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = [float(model(input_ids=torch.from_numpy(p)[None]).logits[0, 0]) for p in prompts]
    for flavor in ("ort", "portable"):
        out = work / f"{folder.name}-{flavor}"
        r = run([ROOT / "target/release/exports", "onnx", "--model", folder, "--out", out, "--flavor", flavor,
                 "--head", "reward"])
        if r.returncode:
            report(False, f"{folder.name}: exports onnx --head reward --flavor {flavor}: {r.stderr[-2000:]}")
            continue
        sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        got = []
        for p in prompts:
            feeds = {"input_ids": p[None], "attention_mask": np.ones((1, len(p)), dtype=np.int64)}
            if "position_ids" in names:
                feeds["position_ids"] = np.arange(len(p), dtype=np.int64)[None]
            for i in sess.get_inputs():
                if i.name.startswith("past_key_values"):
                    feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32)
            got.append(float(sess.run(["score"], feeds)[0][0]))
        d = max(abs(g - w) for g, w in zip(got, want))
        report(d <= 1e-3, f"{folder.name}: exports onnx --head reward --flavor {flavor}: max |score - transformers| = {d:.2e}")
        shutil.rmtree(out, ignore_errors=True)


def check_fit(qwen3: Path, data: Path, work: Path) -> None:
    src = work / "qwen3_fit_src"
    shutil.copytree(qwen3, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["my_unknown_key"] = {"kept": [1, 2, 3]}
    (src / "config.json").write_text(json.dumps(cfg, indent=2))
    out = work / "qwen3_fit"
    r = run([ROOT / "target/release/training", "fit", "--model", src, "--data", data,
             "--objective", "pairwise-cringe", "--out", out, "--max-steps", "1", "--batch-size", "3"])
    if r.returncode:
        report(False, f"training fit of qwen3: {r.stderr[-3000:]}")
        return
    final = out / "final"
    written = json.loads((final / "config.json").read_text())
    carried = [k for k in ("my_unknown_key", "layer_types", "use_sliding_window", "max_window_layers",
                           "initializer_range") if written.get(k) == cfg.get(k)]
    report(len(carried) == 5 and "rope_parameters" in written and "dtype" in written,
           f"qwen3 fit: final/config.json carries {carried} in the transformers 5 layout")
    from safetensors.torch import load_file
    before, after = load_file(str(src / "model.safetensors")), load_file(str(final / "model.safetensors"))
    moved = max(float((after[k].float() - before[k].float()).abs().max()) for k in before)
    report(moved > 0, f"qwen3 fit: one step changed the weights (max |Δw| = {moved:.2e})")
    from transformers import AutoModelForCausalLM
    try:
        AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
        report(True, "qwen3 fit: transformers loads final/")
    except Exception as e:  # noqa: BLE001
        report(False, f"qwen3 fit: transformers cannot load final/: {e}")
        return
    check_onnx(final, work, low=3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--keep", help="write the folders here instead of a temporary directory")
    a = ap.parse_args()
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"transformers {transformers.__version__}", flush=True)
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "exports", "-p", "training"], cwd=ROOT, check=True)
    tmp = tempfile.TemporaryDirectory()
    work = Path(a.keep) if a.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "pairs.jsonl"
    ref.write_pairs(data)
    folders = []  # (folder, lowest real token id, reward model?)
    if not a.skip_smollm2:
        if not SMOL.exists():
            report(False, f"{SMOL} is missing (run scripts/setup.sh)")
        else:
            out = work / "smollm2"
            AutoModelForCausalLM.from_pretrained(SMOL).save_pretrained(out)
            AutoTokenizer.from_pretrained(SMOL).save_pretrained(out)
            folders.append((out, 17, False))
    tok = ref.tiny_tokenizer(work)
    for i, (name, config) in enumerate(ref.case_configs(len(tok), small_context=False)):
        out = work / name
        ref.build(name, config, tok, out, seed=200 + i, dtype=torch.float32)
        folders.append((out, 3, ref.is_reward(config)))
    for folder, low, reward in folders:
        if reward:
            check_eval(folder, data, "reward")
            check_onnx_reward(folder, work)
        else:
            check_eval(folder, data)
            check_onnx(folder, work, low)
    check_fit(work / "qwen3_tied", data, work)
    print(f"{len(FAILED)} check(s) failed" if FAILED else "all checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
