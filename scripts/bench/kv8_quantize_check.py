"""Does the engine quantize a prompt's keys and values as ONNX Runtime's int8 GroupQueryAttention does?
Layer 0 of a float-cache graph and of its int8-cache twin see the same inputs, so their present K/V must
agree through `clip(round_half_even(x / scale), -128, 127)` (the rule in engine/src/generate/float_prefill.rs).
Random-token prompts saturate some values, which checks the clipping too.
Usage: kv8_quantize_check.py INT8_KV8_DIR [PROMPTS] [LENGTH]   (INT8_KV8_DIR from exports onnx --kv-cache int8)
"""
import sys

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file

d = sys.argv[1]
prompts = int(sys.argv[2]) if len(sys.argv) > 2 else 3
P = int(sys.argv[3]) if len(sys.argv) > 3 else 64


def sess(f):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    return ort.InferenceSession(f"{d}/{f}", o, providers=["CPUExecutionProvider"])


s8, s32 = sess("model.onnx"), sess("prefill.onnx")
scales = load_file(f"{d}/kv_scales.safetensors")
names = [o.name for o in s8.get_outputs()]
shape = s8.get_inputs()[2].shape
kvh, hd = shape[1], shape[3]
sat = mism = total = 0
for seed in range(prompts):
    ids = np.random.default_rng(seed).integers(100, 40000, (1, P)).astype(np.int64)

    def feeds(s, dt):
        f = {"input_ids": ids, "attention_mask": np.ones((1, P), np.int64)}
        for i in s.get_inputs():
            if i.name.startswith("past"):
                f[i.name] = np.zeros((1, kvh, P, hd), dt)
        return f

    o8, o32 = s8.run(None, feeds(s8, np.int8)), s32.run(None, feeds(s32, np.float32))
    for kind in ["key", "value"]:
        j = names.index(f"present.0.{kind}")
        q, x = o8[j][0, :, :P].astype(int), o32[j][0, :, :P]
        r = np.rint(x / scales[f"layers.0.{kind}"][:, None, :])
        sat += int((np.abs(r) > 127).sum())
        mism += int((np.clip(r, -128, 127) != q).sum())
        total += q.size
print(f"layer 0, {prompts} prompts x {P} positions: {mism} of {total} values differ from the rule ({sat} saturated)")
sys.exit(1 if mism else 0)
