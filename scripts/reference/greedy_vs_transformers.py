"""Greedy responses of `engine generate` against Hugging Face transformers' `generate` on the same
model, token for token (compared as decoded text of the new tokens, special tokens skipped).

Usage: .venv/bin/python scripts/reference/greedy_vs_transformers.py HF_DIR ONNX_DIR
           [--prompts FILE] [--max-new-tokens 32] [--engine target/release/engine] [--need 7]
FILE holds prompt records with `messages` (chat) or `prompt`; the default is 8 built-in chat prompts.
Exits non-zero when fewer than --need prompts match.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DEFAULT = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis to a child.",
    "Give me three tips for learning to cook.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What are the benefits of regular exercise?",
    "How do I make a cup of tea?",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("onnx_dir")
    ap.add_argument("--prompts")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--engine", default="target/release/engine")
    ap.add_argument("--need", type=int, default=7)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        prompts = a.prompts
        if prompts is None:
            prompts = os.path.join(tmp, "prompts.jsonl")
            with open(prompts, "w") as f:
                for i, p in enumerate(DEFAULT):
                    f.write(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": p}]}) + "\n")
        records = [json.loads(l) for l in open(prompts) if l.strip()]
        out = os.path.join(tmp, "gen.jsonl")
        subprocess.run([a.engine, "generate", "--model", a.onnx_dir, "--prompts", prompts, "--out", out,
                        "--decoding", "greedy", "--max-new-tokens", str(a.max_new_tokens)], check=True)
        ours = {r["id"]: r["responses"][0]["text"] for r in map(json.loads, open(out))}

    tok = AutoTokenizer.from_pretrained(a.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(a.hf_dir, dtype=torch.float32).eval()
    matches = 0
    for r in records:
        if "messages" in r:
            text = tok.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = tok(r["prompt"], return_tensors="pt").input_ids
        with torch.no_grad():
            g = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=a.max_new_tokens, pad_token_id=tok.eos_token_id)
        theirs = tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True)
        same = theirs == ours[r["id"]]
        matches += same
        print(f"{'same' if same else 'DIFF'} {r['id']}: {ours[r['id']]!r}" + ("" if same else f"\n     transformers: {theirs!r}"))
    print(f"{matches}/{len(records)} prompts identical ({a.max_new_tokens} new tokens, greedy)")
    sys.exit(0 if matches >= a.need else 1)


if __name__ == "__main__":
    main()
