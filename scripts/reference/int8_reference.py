"""Reference values for `exports onnx --weights int8` (issue 14), computed without our exporter.

For the tiny `llama_gqa` model of onnx_reference.py (`exports init --arch llama --hidden-size 64
--seed 11`):
* numpy quantizes every projection and the (tied) LM head per output column, symmetric, round
  half to even, to 7-bit values: s = max|w| / 63, q = clip(rint(w / s), -63, 63); written in the
  exporter's ONNX layout ([in, out] int8 bytes, and [out] f32 scales) to exports/tests/fixtures/int8/llama_gqa.safetensors,
  one entry per module (`model.layers.{l}.attn.q_proj.MatMul.weight.q`, `.scales`, ...), which the
  exporter's test compares byte for byte;
* transformers runs the model with those Linear layers replaced by the int8 arithmetic the graph
  does (activations quantized per row: s_a = max|x| / 127, x_q = clip(rint(x / s_a), -127, 127);
  y = (x_q · q) · s_col · s_a with an exact integer product), on onnx_reference.py's inputs, and
  writes engine/tests/fixtures/onnx/llama_gqa_int8.safetensors (probe format: input_ids,
  attention_mask, logits) plus `fp32_gap`, max |logit(int8 simulation) − logit(fp32)|, the
  quantization error the engine test bounds the ONNX int8 logits against fp32 with.

Run from the repository root: .venv/bin/python scripts/reference/int8_reference.py
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_reference import CASES, inputs  # noqa: E402

CASE = "llama_gqa"
MODULES = [  # HF module → ONNX name of its separate (portable-flavor) projection
    ("self_attn.q_proj", "attn.q_proj"),
    ("self_attn.k_proj", "attn.k_proj"),
    ("self_attn.v_proj", "attn.v_proj"),
    ("self_attn.o_proj", "attn.o_proj"),
    ("mlp.gate_proj", "mlp.gate_proj"),
    ("mlp.up_proj", "mlp.up_proj"),
    ("mlp.down_proj", "mlp.down_proj"),
]


def quantize_columns(w_t):
    """w_t: PyTorch Linear weight [out, in] → (q [in, out] int8, scales [out] f32)."""
    w = np.ascontiguousarray(w_t.T.astype(np.float32))  # [in, out]
    amax = np.abs(w).max(axis=0)
    scales = np.where(amax > 0, amax / np.float32(63.0), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w / scales), -63, 63).astype(np.int8)
    return q, scales


class Int8Linear(torch.nn.Module):
    def __init__(self, q, scales):
        super().__init__()
        self.q = torch.tensor(q.astype(np.int64))
        self.scales = torch.tensor(scales)

    def forward(self, x):
        amax = x.abs().amax(dim=-1, keepdim=True)
        s = torch.clamp(amax / 127.0, min=torch.finfo(torch.float32).tiny)
        xq = torch.clamp(torch.round(x / s), -127, 127).to(torch.int64)
        acc = (xq @ self.q).to(torch.float32)  # exact: |acc| < 2^24 for these sizes
        return acc * self.scales * s


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, CASE)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "exports"], check=True, cwd=root)
        subprocess.run([os.path.join(root, "target", "release", "exports"), "init", *CASES[CASE], "--out", folder],
                       check=True, cwd=root)
        cfg = json.load(open(os.path.join(folder, "config.json")))
        sd = load_file(os.path.join(folder, "model.safetensors"))
        model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ids, mask = inputs(cfg["vocab_size"])
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        feed = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos))
        with torch.no_grad():
            fp32 = model(**feed).logits.numpy()
        weights = {}
        for l in range(cfg["num_hidden_layers"]):
            layer = model.model.layers[l]
            for hf, onnx_name in MODULES:
                q, s = quantize_columns(sd[f"model.layers.{l}.{hf}.weight"])
                name = f"model.layers.{l}.{onnx_name}.MatMul.weight"
                weights[name + ".q"], weights[name + ".scales"] = q.view(np.uint8), s
                parent, attr = hf.split(".")
                setattr(getattr(layer, parent), attr, Int8Linear(q, s))
        head = "model.embed_tokens.weight" if cfg.get("tie_word_embeddings", True) else "lm_head.weight"
        q, s = quantize_columns(sd[head])
        weights["lm_head.MatMul.weight.q"], weights["lm_head.MatMul.weight.scales"] = q.view(np.uint8), s
        model.lm_head = Int8Linear(q, s)
        with torch.no_grad():
            int8 = model(**feed).logits.numpy().astype(np.float32)
    real = mask.astype(bool)
    gap = float(np.abs(int8 - fp32)[real].max())
    wdir = os.path.join(root, "exports", "tests", "fixtures", "int8")
    os.makedirs(wdir, exist_ok=True)
    save_file(weights, os.path.join(wdir, f"{CASE}.safetensors"))
    save_file({"input_ids": ids, "attention_mask": mask, "logits": int8,
               "fp32_gap": np.array([gap], np.float32)},
              os.path.join(root, "engine", "tests", "fixtures", "onnx", f"{CASE}_int8.safetensors"))
    print(f"{CASE}: {len(weights) // 2} quantized matrices; max |int8 − fp32| logit over real positions {gap:.5f}"
          f" (logit range {np.abs(fp32[real]).max():.3f})")


if __name__ == "__main__":
    main()
