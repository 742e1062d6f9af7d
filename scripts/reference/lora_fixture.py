"""Write training/tests/fixtures/lora/: LoRA adapters made and saved by PEFT itself on tiny models
that `exports init` rebuilds, and PEFT's outputs with them, so training/tests/lora.rs checks our
adapter forward, our merge (exports::lora) and our adapter files against PEFT without Python at
test time.

    cargo build --release -p exports && .venv/bin/python scripts/reference/lora_fixture.py

* lm/: a CAUSAL_LM adapter (r 4, alpha 8, every projection, lora_B random so that it matters).
* rm/: a SEQ_CLS adapter (r 2, alpha 3, rsLoRA, q_proj and v_proj, gaussian init, the `score`
  head saved whole as PEFT's modules_to_save).
* lora_reference.safetensors: `input_ids` [2, 8], PeftModel's `lm_logits` [2, 8, V], the
  merge_and_unload model's `lm_merged_logits`, and the reward model's `rm_scores` [2].
"""
import json
import subprocess
import tempfile
from pathlib import Path

import peft
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "training" / "tests" / "fixtures" / "lora"
LM_SEED, RM_SEED = 21, 22
IDS = [[5, 17, 42, 9, 33, 101, 7, 250], [200, 31, 88, 14, 14, 61, 120, 77]]


def exports_bin():
    for kind in ("release", "debug"):
        p = ROOT / "target" / kind / "exports"
        if p.exists():
            return p
    raise SystemExit("build exports first: cargo build --release -p exports")


def randomize_b(model, std):
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor(IDS)
    mask = torch.ones_like(ids)
    out = {"input_ids": ids}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for key, seed, head in [("lm", LM_SEED, "lm"), ("rm", RM_SEED, "reward")]:
            subprocess.run([exports_bin(), "init", "--arch", "llama", "--seed", str(seed), "--head", head,
                            "--out", tmp / key], check=True, capture_output=True)

        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tmp / "lm", dtype=torch.float32)
        cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        pm = get_peft_model(base, cfg)
        randomize_b(pm, 0.5)
        pm.save_pretrained(OUT / "lm")
        # What a user does: load the saved adapter onto a fresh base.
        fresh = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp / "lm", dtype=torch.float32), OUT / "lm").eval()
        with torch.no_grad():
            out["lm_logits"] = fresh(input_ids=ids, attention_mask=mask).logits.contiguous()
            out["lm_merged_logits"] = fresh.merge_and_unload()(input_ids=ids, attention_mask=mask).logits.contiguous()

        torch.manual_seed(0)
        rbase = AutoModelForSequenceClassification.from_pretrained(tmp / "rm", dtype=torch.float32, num_labels=1)
        rcfg = LoraConfig(r=2, lora_alpha=3, use_rslora=True, init_lora_weights="gaussian", task_type="SEQ_CLS",
                          target_modules=["q_proj", "v_proj"])
        rpm = get_peft_model(rbase, rcfg)
        randomize_b(rpm, 0.5)
        rpm.save_pretrained(OUT / "rm")
        rfresh = PeftModel.from_pretrained(
            AutoModelForSequenceClassification.from_pretrained(tmp / "rm", dtype=torch.float32, num_labels=1), OUT / "rm").eval()
        with torch.no_grad():
            out["rm_scores"] = rfresh(input_ids=ids, attention_mask=mask).logits[:, 0].contiguous()
    for key in ("lm", "rm"):
        (OUT / key / "README.md").unlink(missing_ok=True)
        # A temporary folder is no base to record.
        p = OUT / key / "adapter_config.json"
        c = json.loads(p.read_text())
        c["base_model_name_or_path"] = None
        p.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
    save_file(out, str(OUT / "lora_reference.safetensors"), metadata={"peft": peft.__version__, "torch": torch.__version__})
    print(f"wrote {OUT} (peft {peft.__version__})")


if __name__ == "__main__":
    main()
