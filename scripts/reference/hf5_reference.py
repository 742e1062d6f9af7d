#!/usr/bin/env python3
"""Checkpoints as transformers 5 writes them: tiny random Qwen3, Llama 3.2-style, Qwen2, Mistral and SmolLM3
models built and saved by transformers itself (not by `exports init`), with reference outputs.

Each case is a folder written by `save_pretrained` of transformers (5.24 when these fixtures were
made), so its config.json is a real transformers 5 config with every bookkeeping key
(`dtype`, `rope_parameters`, `layer_types`, `use_sliding_window`, `initializer_range`, …). The tokenizer
is `exports init`'s tiny byte-level BPE, loaded and saved again by transformers. Weights are stored
in bf16 (as released checkpoints are) and every reference is computed in fp32 from those weights.

Written to training/tests/fixtures/hf5/ (read by training/tests/hf_parity.rs and
engine/tests/onnx_export.rs; CI does not need transformers):
  <case>/                  the folder (config.json, generation_config.json, model.safetensors,
                           tokenizer.json, tokenizer_config.json, chat_template.jinja)
  <case>.safetensors       input_ids [3,9], attention_mask [3,9] (full, left-padded, right-padded
                           rows), vocab_index [K], logits [3,9,K] (every 3rd vocabulary entry,
                           padding positions zeroed), positions clamp(cumsum(mask) - 1, 0); or
                           scores [3] for the reward model
  pairs.jsonl              the preference pairs of the reference loss
  cases.json               per case: the head, the transformers version, and the output of
                           losses_reference.py (--objective pairwise-cringe, or reward) on pairs.jsonl

Usage: .venv/bin/python scripts/reference/hf5_reference.py
The builders are also used by check_hf5_checkpoints.py (with fp32 weights and default sizes).
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "training" / "tests" / "fixtures" / "hf5"
LOSSES = ROOT / "scripts" / "reference" / "losses_reference.py"
PAD = 2
VOCAB_STRIDE = 3

PAIRS = [
    {"prompt": "The state of the union is", "chosen": " strong and the people are free.",
     "rejected": " the the the the the the."},
    {"prompt": [{"role": "user", "content": "Say something about taxes."}],
     "chosen": "Taxes pay for roads and schools.", "rejected": "Taxes taxes taxes taxes."},
    {"prompt": "In 2024 we", "chosen": " built new bridges.", "rejected": " went on and on and on."},
]


def common(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                initializer_range=0.08)


def case_configs(vocab: int, small_context: bool = True):
    """(name, config) of each case. `small_context=False` keeps the config classes' own context
    lengths (and Mistral's default sliding window of 4096), as a user's tiny model would have."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config, SmolLM3Config

    ctx = dict(max_position_embeddings=256) if small_context else {}
    c = common(vocab)
    return [
        # head_dim 16 differs from hidden / heads = 8, as in the released Qwen3 sizes.
        ("qwen3_tied", Qwen3Config(**c, **ctx, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   tie_word_embeddings=True,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
        ("qwen3_untied_bias", Qwen3Config(**c, **ctx, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                          tie_word_embeddings=False, attention_bias=True)),
        # Llama 3.2 style: llama3 rope scaling, tied embeddings. original_max_position_embeddings is
        # small so that the tiny head's frequencies fall in all three bands of the rule.
        ("llama32_tied", LlamaConfig(**c, **ctx, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                     tie_word_embeddings=True,
                                     rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 64})),
        ("qwen2_tied", Qwen2Config(**c, **ctx, num_attention_heads=2, num_key_value_heads=1,
                                   tie_word_embeddings=True)),
        ("mistral_untied", MistralConfig(**c, **ctx, num_attention_heads=2, num_key_value_heads=1,
                                         tie_word_embeddings=False)),
        # A sliding window shorter than the reference rows (9 tokens), so that it is used.
        ("mistral_window4", MistralConfig(**c, **ctx, num_attention_heads=2, num_key_value_heads=1,
                                          tie_word_embeddings=True, sliding_window=4)),
        # SmolLM3: 4 layers, the 4th without rotary embedding (no_rope_layers derived by its config).
        ("smollm3_tied", SmolLM3Config(**{**c, "num_hidden_layers": 4}, **ctx, num_attention_heads=2,
                                       num_key_value_heads=1, tie_word_embeddings=True)),
        # A reward model (Qwen3ForSequenceClassification, one label).
        ("qwen3_reward", Qwen3Config(**c, **ctx, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                     num_labels=1, architectures=["Qwen3ForSequenceClassification"])),
    ]


def is_reward(config) -> bool:
    return (config.architectures or [""])[0].endswith("ForSequenceClassification")


def exports_bin() -> Path:
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "exports", "--bin", "exports"], cwd=ROOT, check=True)
    return ROOT / "target" / "release" / "exports"


def tiny_tokenizer(tmp: Path):
    """`exports init`'s tokenizer, as transformers loads it."""
    from transformers import AutoTokenizer

    src = tmp / "tokenizer_src"
    subprocess.run([str(exports_bin()), "init", "--arch", "llama", "--out", str(src)], check=True,
                   stdout=subprocess.DEVNULL)
    return AutoTokenizer.from_pretrained(src)


def build(name: str, config, tok, out: Path, seed: int, dtype=torch.bfloat16) -> None:
    """A random model of `config` saved by transformers, with the tokenizer, into `out`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cls = AutoModelForSequenceClassification if is_reward(config) else AutoModelForCausalLM
    model = cls.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            # Norm weights (and biases) away from 1 (and 0): a model that forgets one differs.
            if pname.endswith("norm.weight"):
                p.add_(0.2 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    model = model.to(dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def batch(vocab: int, seed: int):
    """B=3, T=9: a full row, a left-padded row (3 pads) and a right-padded row (4 pads)."""
    rng = np.random.default_rng(seed)
    layout = [(0, 9), (3, 6), (0, 5)]
    ids = np.full((3, 9), PAD, dtype=np.int64)
    mask = np.zeros((3, 9), dtype=np.int64)
    for r, (left, real) in enumerate(layout):
        ids[r, left:left + real] = rng.integers(3, vocab, size=real)
        mask[r, left:left + real] = 1
    return ids, mask


def hf_logits(folder: Path, ids: np.ndarray, mask: np.ndarray, reward: bool = False) -> torch.Tensor:
    """Causal-LM logits [B,T,V], or reward scores [B,1] (pooled at the last non-pad token)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    model = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    pos = (mask_t.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return model(input_ids=ids_t, attention_mask=mask_t, position_ids=pos).logits.float()


def reference_loss(folder: Path, data: Path, objective: str = "pairwise-cringe") -> dict:
    out = subprocess.run([sys.executable, str(LOSSES), "--model", str(folder), "--data", str(data),
                          "--objective", objective], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_pairs(path: Path) -> None:
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))


def main() -> int:
    import transformers
    from safetensors.numpy import save_file

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    write_pairs(OUT / "pairs.jsonl")
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        tok = tiny_tokenizer(Path(tmp))
        vocab = len(tok)
        for i, (name, config) in enumerate(case_configs(vocab)):
            folder = OUT / name
            build(name, config, tok, folder, seed=100 + i)
            ids, mask = batch(vocab, 100 + i)
            reward = is_reward(config)
            out = hf_logits(folder, ids, mask, reward)
            tensors = {"input_ids": ids, "attention_mask": mask}
            if reward:
                tensors["scores"] = out[:, 0].numpy().copy()
            else:
                index = np.arange(0, vocab, VOCAB_STRIDE, dtype=np.int64)
                tensors["vocab_index"] = index
                tensors["logits"] = (out[:, :, torch.from_numpy(index)]
                                     * torch.from_numpy(mask)[:, :, None]).numpy().copy()
            save_file(tensors, str(OUT / f"{name}.safetensors"))
            objective = "reward" if reward else "pairwise-cringe"
            loss = reference_loss(folder, OUT / "pairs.jsonl", objective)
            cases.append({"name": name, "model_type": config.model_type, "head": "reward" if reward else "lm",
                          "transformers_version": transformers.__version__,
                          "objective": objective, "loss": loss})
            print(name, loss)
    (OUT / "cases.json").write_text(json.dumps({"cases": cases}, indent=2) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
