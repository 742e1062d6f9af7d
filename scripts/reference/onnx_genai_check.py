"""Run an exported folder under onnxruntime-genai and compare its greedy tokens with transformers'.

Usage: .venv/bin/python scripts/reference/onnx_genai_check.py HF_DIR ONNX_DIR [--new 24]

Prompts are token ids (so no tokenizer differences enter); batch of two prompts of different
lengths, which onnxruntime-genai right-pads. Prints both continuations and exits 1 on mismatch.
"""

import argparse
import sys

import numpy as np
import onnxruntime_genai as og
import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf")
    ap.add_argument("onnx_dir")
    ap.add_argument("--new", type=int, default=24)
    a = ap.parse_args()
    hf = transformers.AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32).eval()
    vocab = hf.config.vocab_size
    rng = np.random.default_rng(0)
    # Real tokens avoid the special ids (< 3 in the tiny tokenizer; SmolLM2's specials are < 17).
    prompts = [rng.integers(17, vocab, size=n).tolist() for n in (9, 5)]
    model = og.Model(a.onnx_dir)
    ok = True
    for p in prompts:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(p) + a.new, min_length=len(p) + a.new)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([p], dtype=np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        got = [int(t) for t in gen.get_sequence(0)][len(p):]
        with torch.no_grad():
            out = hf.generate(torch.tensor([p]), max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False,
                              pad_token_id=hf.config.pad_token_id or 0)
        want = out[0, len(p):].tolist()
        same = got == want
        ok &= same
        print("genai ", got, "\nhf    ", want, "\n", "same" if same else "DIFFERENT")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
