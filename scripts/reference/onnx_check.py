"""Check exported ONNX folders: onnx.checker, IR version, and ORT logits vs transformers.

Usage: .venv/bin/python scripts/reference/onnx_check.py HF_DIR ONNX_DIR [--padding left|right]

Development aid (not used by the Rust tests): prints max |logits_ort - logits_hf| over real
positions for a padded batch, and the prefill+decode vs full-forward difference.
"""

import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers


def load_hf(hf_dir):
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    arch = cfg["architectures"][0]
    cls = getattr(transformers, arch)
    return cls.from_pretrained(hf_dir, torch_dtype=torch.float32).eval(), cfg


def run_ort(sess, ids, mask, cfg_onnx):
    names = [i.name for i in sess.get_inputs()]
    b = ids.shape[0]
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in names:
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        feeds["position_ids"] = pos[:, -ids.shape[1]:].astype(np.int64)
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            feeds[i.name] = np.zeros((b, i.shape[1], 0, i.shape[3]), dtype=np.float32)
    out = sess.run(None, feeds)
    return dict(zip([o.name for o in sess.get_outputs()], out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf")
    ap.add_argument("onnx_dir")
    ap.add_argument("--padding", default="left")
    a = ap.parse_args()
    path = os.path.join(a.onnx_dir, "model.onnx")
    m = onnx.load(path, load_external_data=False)
    print("ir_version", m.ir_version, "opsets", [(o.domain, o.version) for o in m.opset_import])
    onnx.checker.check_model(path, full_check=False)
    print("onnx.checker: ok")
    model, cfg = load_hf(a.hf)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    V = cfg["vocab_size"]
    lens = [7, 4]
    T = max(lens)
    ids = np.full((2, T), 2, dtype=np.int64)
    mask = np.zeros((2, T), dtype=np.int64)
    for r, n in enumerate(lens):
        toks = rng.integers(3, V, size=n)
        if a.padding == "left":
            ids[r, T - n:] = toks
            mask[r, T - n:] = 1
        else:
            ids[r, :n] = toks
            mask[r, :n] = 1
    out = run_ort(sess, ids, mask, None)
    with torch.no_grad():
        pos = torch.clamp(torch.tensor(mask).cumsum(1) - 1, min=0)
        hf = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=pos)
    if "logits" in out:
        ref = hf.logits.numpy()
        got = out["logits"]
        if got.shape[1] == 1:
            last = [T - 1 if a.padding == "left" else n - 1 for n in lens]
            ref = np.stack([ref[r, last[r]] for r in range(2)])[:, None]
            d = np.abs(got - ref).max()
        else:
            d = np.abs(got - ref)[mask == 1].max()
        print("max |logits diff| over real positions:", d)
    else:
        print("score ort", out["score"], "hf", hf.logits[:, 0].numpy(), "diff", np.abs(out["score"] - hf.logits[:, 0].numpy()).max())


if __name__ == "__main__":
    main()
