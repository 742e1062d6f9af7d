#!/usr/bin/env python3
"""Reference values for exports/src/gguf/dequant.rs: random blocks of each supported ggml type and
their values from gguf-py's numpy `gguf.quants.dequantize` (what transformers' GGUF loader uses),
as exact f32 bit patterns.

    .venv/bin/python scripts/reference/gguf_dequant_reference.py > exports/tests/fixtures/gguf_dequant.json
"""

import json

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize


def finite_f16(rng, n):
    """Random f16 bit patterns, normal and subnormal, excluding inf/NaN (exponent 31)."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    exp = (bits >> 10) & 0x1F
    bits = np.where(exp == 31, bits & ~np.uint16(0x4000), bits).astype(np.uint16)
    return bits


def main():
    rng = np.random.default_rng(20240607)
    cases = []
    for ty in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1):
        block_elems, block_bytes = GGML_QUANT_SIZES[ty]
        n_blocks = 3 if block_elems > 1 else 40
        raw = rng.integers(0, 256, size=n_blocks * block_bytes, dtype=np.uint8)
        if ty == T.F32:
            raw = rng.standard_normal(n_blocks, dtype=np.float32).view(np.uint8)
        elif ty == T.F16:
            raw = finite_f16(rng, n_blocks).view(np.uint8)
        elif ty == T.BF16:
            # The upper halves of random f32 values.
            raw = (rng.standard_normal(n_blocks, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        else:
            # Overwrite the f16 scale (and Q4_1's min) of each block with finite values.
            blocks = raw.reshape(n_blocks, block_bytes)
            n_halves = 2 if ty == T.Q4_1 else 1
            blocks[:, : 2 * n_halves] = finite_f16(rng, n_blocks * n_halves).view(np.uint8).reshape(n_blocks, -1)
            raw = blocks.reshape(-1)
        values = dequantize(raw, ty).astype(np.float32).reshape(-1)
        cases.append({
            "type": ty.name,
            "numel": int(values.size),
            "bytes_hex": raw.tobytes().hex(),
            "f32_bits": [int(b) for b in values.view(np.uint32)],
        })
    print(json.dumps({"source": "gguf-py gguf.quants.dequantize", "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
