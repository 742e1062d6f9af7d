"""Reference outputs for the ONNX export tests (engine/tests/onnx_export.rs).

Builds each tiny model with `exports init` (deterministic from its seed), runs it with
transformers in fp32, and writes engine/tests/fixtures/onnx/<case>.safetensors in the probe
format: input_ids [3, 10] i64, attention_mask [3, 10] i64, and logits [3, 10, V] f32 (or
scores [3] f32 for reward heads). Row 0 has 10 real tokens, row 1 is left-padded by 3, row 2
right-padded by 4; pads hold the pad id 2. Positions are cumsum(mask) - 1 clamped at 0 (what
`generate` uses and what the training crate computes).

Run from the repository root: .venv/bin/python scripts/reference/onnx_reference.py
The init arguments of each case must match CASES in engine/tests/onnx_export.rs.
"""

import json
import os
import subprocess
import tempfile

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file

CASES = {
    "llama_gqa": ["--arch", "llama", "--hidden-size", "64", "--seed", "11"],
    "llama_bias_untied": ["--arch", "llama", "--hidden-size", "64", "--attention-bias", "--untied", "--seed", "12"],
    "qwen2": ["--arch", "qwen2", "--hidden-size", "64", "--seed", "13"],
    "llama_hd8": ["--arch", "llama", "--seed", "14"],
    "gpt2": ["--arch", "gpt2", "--seed", "15"],
    "llama_reward": ["--arch", "llama", "--hidden-size", "64", "--head", "reward", "--seed", "16"],
    "gpt2_reward": ["--arch", "gpt2", "--head", "reward", "--seed", "17"],
}

T = 10
ROWS = [(0, 10), (3, 7), (0, 6)]  # (left pads, real tokens)
PAD = 2


def inputs(vocab):
    rng = np.random.default_rng(1234)
    ids = np.full((len(ROWS), T), PAD, dtype=np.int64)
    mask = np.zeros((len(ROWS), T), dtype=np.int64)
    for r, (left, n) in enumerate(ROWS):
        ids[r, left:left + n] = rng.integers(3, vocab, size=n)
        mask[r, left:left + n] = 1
    return ids, mask


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out_dir = os.path.join(root, "engine", "tests", "fixtures", "onnx")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for case, args in CASES.items():
            folder = os.path.join(tmp, case)
            subprocess.run(
                ["cargo", "run", "-q", "-p", "exports", "--", "init", *args, "--out", folder],
                check=True, cwd=root,
            )
            cfg = json.load(open(os.path.join(folder, "config.json")))
            cls = getattr(transformers, cfg["architectures"][0])
            model = cls.from_pretrained(folder, dtype=torch.float32).eval()
            ids, mask = inputs(cfg["vocab_size"])
            pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
            with torch.no_grad():
                out = model(
                    input_ids=torch.tensor(ids),
                    attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos),
                )
            tensors = {"input_ids": ids, "attention_mask": mask}
            if "ForSequenceClassification" in cfg["architectures"][0]:
                tensors["scores"] = out.logits[:, 0].numpy().astype(np.float32)
            else:
                tensors["logits"] = out.logits.numpy().astype(np.float32)
            save_file(tensors, os.path.join(out_dir, f"{case}.safetensors"))
            print(case, {k: v.shape for k, v in tensors.items()})


if __name__ == "__main__":
    main()
