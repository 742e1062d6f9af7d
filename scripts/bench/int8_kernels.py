"""Single-kernel timings behind `exports onnx --weights int8`'s form (issue 14), ONNX Runtime CPU:

1. one 64 x 576 x 1536 product (SmolLM2's decode step at batch 64, gate/up shape) as fp32 MatMul
   and as MatMulInteger with each operand type pair (u8/s8 x u8/s8), with a check that the integer
   product is exact (on AVX2-only CPUs u8 x s8 with full-range s8 is not: vpmaddubsw saturates);
2. per-row activation quantization to u8 (zero point 128) as Div -> Round -> Add -> Clip -> Cast
   against one opset-21 blocked QuantizeLinear, with a check that both give the same bytes;
3. the product with its scales as the export writes it (MatMulInteger u8 x s8 -> Cast -> Mul by
   the column scales -> Mul by the row scales) against com.microsoft MatMulIntegerToFloat (a_scale
   1, b_scale the column scales: Cast and the first Mul inside the kernel) -> Mul by the row
   scales, with a check that both give the same floats.
Python is a measuring tool here; the graph is written in Rust (exports/src/onnx/layers.rs).
Usage: int8_kernels.py [--threads 2] [--reps 200]   Prints one line per kernel (microseconds).
"""

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper, numpy_helper


def session(nodes, inputs, inits, outputs, threads, contrib=False):
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, t, None) for o, t in outputs], inits)
    ops = [helper.make_opsetid("", 21)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = 10
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


def bench(s, feed, reps):
    for _ in range(10):
        s.run(None, feed)
    t = time.perf_counter()
    for _ in range(reps):
        s.run(None, feed)
    return (time.perf_counter() - t) / reps * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    M, K, N = 64, 576, 1536
    w = rng.standard_normal((K, N)).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    s = session([helper.make_node("MatMul", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", T.FLOAT, [None, K])],
                [numpy_helper.from_array(w, "w")], [("y", T.FLOAT)], a.threads)
    print(f"MatMul fp32 {M}x{K}x{N}: {bench(s, {'x': x}, a.reps):.1f} us")
    ty = {"u8": T.UINT8, "s8": T.INT8}
    for at, bt in [("u8", "u8"), ("u8", "s8"), ("s8", "s8"), ("s8", "u8")]:
        A = rng.integers(0, 256, (M, K)).astype(np.uint8) if at == "u8" else rng.integers(-128, 128, (M, K)).astype(np.int8)
        B = rng.integers(0, 256, (K, N)).astype(np.uint8) if bt == "u8" else rng.integers(-128, 128, (K, N)).astype(np.int8)
        s = session([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], [helper.make_tensor_value_info("a", ty[at], [None, K])],
                    [numpy_helper.from_array(B, "b")], [("y", T.INT32)], a.threads)
        exact = np.array_equal(s.run(None, {"a": A})[0], A.astype(np.int64) @ B.astype(np.int64))
        print(f"MatMulInteger {at} x {bt}: {bench(s, {'a': A}, a.reps):.1f} us, exact {exact}")
    C = [numpy_helper.from_array(np.array([-1], np.int64), "axes"), numpy_helper.from_array(np.array(127.0, np.float32), "c127"),
         numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, np.float32), "tiny"),
         numpy_helper.from_array(np.array(128.0, np.float32), "c128"), numpy_helper.from_array(np.array(1.0, np.float32), "c1"),
         numpy_helper.from_array(np.array(255.0, np.float32), "c255"), numpy_helper.from_array(np.array(128, np.uint8), "zp")]
    head = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("ReduceMax", ["a", "axes"], ["m"], keepdims=1),
            helper.make_node("Div", ["m", "c127"], ["s0"]), helper.make_node("Max", ["s0", "tiny"], ["s"])]
    xin = [helper.make_tensor_value_info("x", T.FLOAT, [None, None, K])]
    chain = session(head + [helper.make_node("Div", ["x", "s"], ["d"]), helper.make_node("Round", ["d"], ["r"]),
                            helper.make_node("Add", ["r", "c128"], ["r1"]), helper.make_node("Clip", ["r1", "c1", "c255"], ["c"]),
                            helper.make_node("Cast", ["c"], ["q"], to=T.UINT8)], xin, C[:6], [("q", T.UINT8)], a.threads)
    blocked = session(head + [helper.make_node("Shape", ["s"], ["ss"]), helper.make_node("Expand", ["zp", "ss"], ["z"]),
                              helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=-1, block_size=K)],
                      xin, C[:3] + C[6:], [("q", T.UINT8)], a.threads)
    for shape in [(64, 1, K), (16, 128, K)]:
        xv = (rng.standard_normal(shape) * 3).astype(np.float32)
        same = np.array_equal(chain.run(None, {"x": xv})[0], blocked.run(None, {"x": xv})[0])
        print(f"row quantization {list(shape)}: chain {bench(chain, {'x': xv}, a.reps):.1f} us, "
              f"blocked QuantizeLinear {bench(blocked, {'x': xv}, a.reps):.1f} us, same bytes {same}")
    Bq = rng.integers(-63, 64, (K, N)).astype(np.int8)
    inits = [numpy_helper.from_array(Bq, "b"), numpy_helper.from_array((rng.random(N) * 0.01).astype(np.float32), "cs"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp"), numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    tin = [helper.make_tensor_value_info("q", T.UINT8, [None, 1, K]), helper.make_tensor_value_info("rs", T.FLOAT, [None, 1, 1])]
    plain = session([helper.make_node("MatMulInteger", ["q", "b", "zp"], ["i"]), helper.make_node("Cast", ["i"], ["f"], to=T.FLOAT),
                     helper.make_node("Mul", ["f", "cs"], ["c"]), helper.make_node("Mul", ["c", "rs"], ["y"])],
                    tin, inits[:3], [("y", T.FLOAT)], a.threads)
    fused = session([helper.make_node("MatMulIntegerToFloat", ["q", "b", "one", "cs", "zp"], ["c"], domain="com.microsoft"),
                     helper.make_node("Mul", ["c", "rs"], ["y"])], tin, inits, [("y", T.FLOAT)], a.threads, contrib=True)
    alone = session([helper.make_node("MatMulInteger", ["q", "b", "zp"], ["i"])], tin[:1], [inits[0], inits[2]], [("i", T.INT32)], a.threads)
    for m in (16, 64):
        feed = {"q": rng.integers(0, 256, (m, 1, K)).astype(np.uint8), "rs": rng.random((m, 1, 1)).astype(np.float32)}
        same = np.array_equal(plain.run(None, feed)[0], fused.run(None, feed)[0])
        print(f"product with scales {m}x{K}x{N}: MatMulInteger alone {bench(alone, {'q': feed['q']}, a.reps):.1f} us, "
              f"MatMulInteger + Cast + 2 Mul {bench(plain, feed, a.reps):.1f} us, MatMulIntegerToFloat + Mul "
              f"{bench(fused, feed, a.reps):.1f} us, same floats {same}")


if __name__ == "__main__":
    main()
