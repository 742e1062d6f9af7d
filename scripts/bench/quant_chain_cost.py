#!/usr/bin/env python3
"""What the int8 graph's per-row activation quantization costs in ONNX Runtime, alone.

`exports onnx --weights int8` quantizes each projection's input per row (Abs, ReduceMax, Div, Max,
Shape, Expand, blocked QuantizeLinear: exports/src/onnx/layers.rs `quantize_rows`). This times 121
such chains in sequence (each fed the previous one's bytes through a Cast, so that ONNX Runtime
can neither merge nor drop them) on a decode step's shape, [64, 1, K], 2 threads, against the same
sequence without the quantization (Abs + Casts). Usage: quant_chain_cost.py [ROWS]
"""
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h

N = h.make_node


def per_link_us(mk, k, rows, n=121, reps=200):
    inits = [
        h.make_tensor("ax", T.INT64, [1], [-1]),
        h.make_tensor("qmax", T.FLOAT, [], [127.0]),
        h.make_tensor("tiny", T.FLOAT, [], [1.1754944e-38]),
        h.make_tensor("zp", T.UINT8, [], [128]),
    ]
    nodes, x = [], "x"
    for i in range(n):
        ns, x = mk(f"c{i}_", x, k)
        nodes += ns
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [rows, 1, k])],
                     [onnx.ValueInfoProto(name=x)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    o.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    xv = np.random.default_rng(0).standard_normal((rows, 1, k)).astype(np.float32)
    for _ in range(20):
        s.run(None, {"x": xv})
    t = time.perf_counter()
    for _ in range(reps):
        s.run(None, {"x": xv})
    return (time.perf_counter() - t) / reps / n * 1e6


def quantized(p, x, k):
    return [
        N("Abs", [x], [p + "a"]),
        N("ReduceMax", [p + "a", "ax"], [p + "m"], keepdims=1),
        N("Div", [p + "m", "qmax"], [p + "s0"]),
        N("Max", [p + "s0", "tiny"], [p + "s"]),
        N("Shape", [p + "s"], [p + "sh"]),
        N("Expand", ["zp", p + "sh"], [p + "z"]),
        N("QuantizeLinear", [x, p + "s", p + "z"], [p + "q"], axis=-1, block_size=k),
        N("Cast", [p + "q"], [p + "y"], to=T.FLOAT),
    ], p + "y"


def plain(p, x, k):
    return [
        N("Abs", [x], [p + "a"]),
        N("Cast", [p + "a"], [p + "c"], to=T.UINT8),
        N("Cast", [p + "c"], [p + "y"], to=T.FLOAT),
    ], p + "y"


rows = int(sys.argv[1]) if len(sys.argv) > 1 else 64
for k in (576, 1536):
    q, b = per_link_us(quantized, k, rows), per_link_us(plain, k, rows)
    print(f"K {k:5d}, {rows} rows: quantization chain {q:6.1f} us, without it {b:6.1f} us, "
          f"the quantization {q - b:6.1f} us")
