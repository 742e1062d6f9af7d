"""Check a `training fit --lora-r` adapter folder with the current PEFT release: load it with
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER)` and compare its
logits with ours — the probe our training wrote (unmerged adapters, libtorch), the merged folder of
`training merge` (run in transformers), and the merged ONNX export (`exports onnx --adapter`, run in
ONNX Runtime) when given.

    .venv/bin/python scripts/reference/peft_check.py --base models/smollm2-135m-instruct \
        --adapter RUN/final [--merged MERGED_DIR] [--onnx ONNX_DIR]

Prints one JSON object of max |Δ logit| over real positions and exits 1 when any exceeds 1e-3.
Development and review aid (the Rust tests use the committed fixture of lora_fixture.py).
"""
import argparse
import json
import sys

import numpy as np
import peft
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

TOL = 1e-3


def masked_max(a, b, mask):
    d = (a.double() - b.double()).abs() * mask.unsqueeze(-1).double()
    return float(d.max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--merged")
    ap.add_argument("--onnx")
    a = ap.parse_args()
    probe = load_file(f"{a.adapter}/probe.safetensors")
    ids, mask = probe["input_ids"], probe["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32), a.adapter).eval()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        base = model.get_base_model()
        with model.disable_adapter():
            off = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    out = {
        "peft": peft.__version__,
        "adapted_modules": sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A")),
        "peft_vs_probe": masked_max(ref, probe["logits"], mask),
        "adapter_effect": masked_max(ref, off, mask),
    }
    del base
    if a.merged:
        merged = AutoModelForCausalLM.from_pretrained(a.merged, dtype=torch.float32).eval()
        with torch.no_grad():
            out["peft_vs_merged_hf"] = masked_max(ref, merged(input_ids=ids, attention_mask=mask, position_ids=pos).logits, mask)
    if a.onnx:
        import onnxruntime as ort

        sess = ort.InferenceSession(f"{a.onnx}/model.onnx", providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        worst = 0.0
        # The ort flavor wants right padding: run each row alone, unpadded.
        for r in range(ids.shape[0]):
            keep = mask[r].bool()
            rid = ids[r][keep].unsqueeze(0).numpy()
            feeds = {"input_ids": rid, "attention_mask": np.ones_like(rid)}
            if "position_ids" in names:
                feeds["position_ids"] = np.arange(rid.shape[1], dtype=np.int64)[None]
            for i in sess.get_inputs():
                if i.name.startswith("past_key_values"):
                    feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32)
            logits = torch.from_numpy(sess.run(["logits"], feeds)[0][0])
            worst = max(worst, float((logits.double() - ref[r][keep].double()).abs().max()))
        out["peft_vs_onnx"] = worst
    print(json.dumps(out))
    bad = [k for k, v in out.items() if k.startswith("peft_vs") and v > TOL]
    if bad or out["adapter_effect"] <= TOL:
        print(f"FAILED: {bad or 'the adapter changes nothing'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
