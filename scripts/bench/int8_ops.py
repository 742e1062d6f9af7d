"""Which quantized MatMul form does ONNX Runtime run fastest on this CPU? (issue 14, item 3)

Takes an fp32 `exports onnx` folder (ort flavor, `--last-logits-only`) and rewrites every MatMul
whose right operand is a 2-D weight into one quantized form, then times the decode step (one new
token per row, `--past` cached positions) of every variant in one process, round-robin, so that the
machine's load hits all of them alike. Python here is a measuring tool only; the product writes
its graphs in Rust (`exports onnx --weights int8`).

Variants:
  fp32        the graph as exported
  dqmm        com.microsoft DynamicQuantizeMatMul, int8 weights, one scale per output column
  dqmm-tensor the same with one scale per weight matrix
  qdyn        onnxruntime.quantization.quantize_dynamic (MatMulInteger + DynamicQuantizeLinear,
              per-tensor, fused back by ONNX Runtime at load)
  nbits8-B    MatMulNBits, 8-bit blocks of B along K, accuracy_level 4 (int8 activations)
  nbits4-B    the same with 4 bits
  rowq        MatMulInteger (u8 x s8) on activations quantized per row with standard ops, 8-bit
              per-column weights (exact on VNNI CPUs only; the first pass's numerics)
  rowql7      7-bit per-column weights, rows quantized by one QuantizeLinear (per-axis over
              [N, K]; the export writes the blocked form, same bytes): the numerics of
              `exports onnx --weights int8` (rowqlN: N-bit weights)
Each line also says whether row 0's logits at batch B equal those of the same row run alone
(`row0_same_at_batch1`): the invariant that generation output does not depend on the batch size.
Usage: int8_ops.py ONNX_DIR [--batch 16 64] [--past 100] [--rounds 5] [--steps 10] [--threads 2]
       [--variants ...] [--skip-head]
Prints one JSON line per (variant, batch): median ms per decode step.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS = "com.microsoft"


def weight_matmuls(model, skip_head):
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            if skip_head and n.input[1].startswith("lm_head"):
                continue
            yield n, inits[n.input[1]]


def replace_init(model, name, tensors):
    """Queue `name`'s replacement; `commit` applies all at once (one copy of the weights)."""
    PENDING[name] = tensors


PENDING = {}


def commit(model):
    pending = PENDING
    keep = [t for t in model.graph.initializer if t.name not in pending]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + [t for ts in pending.values() for t in ts])
    pending.clear()


def dqmm(model, per_column, skip_head):
    for n, t in list(weight_matmuls(model, skip_head)):
        w = numpy_helper.to_array(t).astype(np.float32)  # [K, N]
        amax = np.abs(w).max(axis=0) if per_column else np.array(np.abs(w).max())
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        replace_init(model, t.name, [numpy_helper.from_array(q, t.name + ".q"),
                                     numpy_helper.from_array(scale, t.name + ".scale")])
        n.op_type, n.domain = "DynamicQuantizeMatMul", MS
        n.input[:] = [n.input[0], t.name + ".q", t.name + ".scale"]
    return model


def quantize_columns(t, qmax):
    """Queue `t`'s replacement by `{name}.q` (int8, per output column, |q| <= qmax, round half to
    even) and `{name}.scale`; returns the fp32 weight's shape [K, N]."""
    w = numpy_helper.to_array(t).astype(np.float32)
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8)
    replace_init(None, t.name, [numpy_helper.from_array(q, t.name + ".q"),
                                numpy_helper.from_array(scale, t.name + ".scale")])
    return w.shape


def rewrite_products(model, skip_head, qmax, consts, emit):
    """Replace every weight MatMul by the nodes `emit(node, weight, (K, N))` returns and its weight
    by int8 columns (`quantize_columns(weight, qmax)`); every other node is kept, in order. `emit`
    may add initializers to `consts` (added to the graph afterwards)."""
    g = model.graph
    targets = {n.name: t for n, t in weight_matmuls(model, skip_head)}
    new_nodes = []
    for n in g.node:
        if n.name not in targets:
            new_nodes.append(n)
            continue
        t = targets[n.name]
        new_nodes += emit(n, t, quantize_columns(t, qmax))
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(consts)
    return model


def rowq(model, skip_head):
    """Per-row dynamic activation quantization with standard ops (row-independent, unlike
    DynamicQuantizeLinear's one range per tensor): s = max|a|/127 per row, a_q = round(a/s) + 128
    as uint8 (zero point 128), MatMulInteger with int8 per-column weights, then × s × s_col."""
    consts = [numpy_helper.from_array(np.array([-1], np.int64), "rowq.axes"),
              numpy_helper.from_array(np.array(127.0, np.float32), "rowq.127"),
              numpy_helper.from_array(np.array(1e-30, np.float32), "rowq.tiny"),
              numpy_helper.from_array(np.array(128.0, np.float32), "rowq.128"),
              numpy_helper.from_array(np.array(0.0, np.float32), "rowq.0"),
              numpy_helper.from_array(np.array(255.0, np.float32), "rowq.255"),
              numpy_helper.from_array(np.array(128, np.uint8), "rowq.zp")]
    quantized = {}

    def emit(n, t, _shape):
        nodes = []
        a = n.input[0]
        p = n.name + "/rq"
        if a not in quantized:
            nodes += [
                helper.make_node("Abs", [a], [p + "abs"]),
                helper.make_node("ReduceMax", [p + "abs", "rowq.axes"], [p + "amax"], keepdims=1),
                helper.make_node("Div", [p + "amax", "rowq.127"], [p + "s0"]),
                helper.make_node("Max", [p + "s0", "rowq.tiny"], [p + "s"]),
                helper.make_node("Div", [a, p + "s"], [p + "x"]),
                helper.make_node("Round", [p + "x"], [p + "r"]),
                helper.make_node("Add", [p + "r", "rowq.128"], [p + "r1"]),
                helper.make_node("Clip", [p + "r1", "rowq.0", "rowq.255"], [p + "c"]),
                helper.make_node("Cast", [p + "c"], [p + "q"], to=onnx.TensorProto.UINT8),
            ]
            quantized[a] = (p + "q", p + "s")
        aq, s = quantized[a]
        return nodes + [
            helper.make_node("MatMulInteger", [aq, t.name + ".q", "rowq.zp"], [p + "i"]),
            helper.make_node("Cast", [p + "i"], [p + "f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [p + "f", t.name + ".scale"], [p + "f1"]),
            helper.make_node("Mul", [p + "f1", s], [n.output[0]]),
        ]

    return rewrite_products(model, skip_head, 127, consts, emit)


def rowql(model, skip_head, wbits=7):
    """What `exports onnx --weights int8` writes since issue 14's second pass: `wbits`-bit signed
    per-column weights (7: the u8 x s8 pair sums of AVX2's `vpmaddubsw` cannot saturate, so the
    product is exact on every x86 CPU, not only VNNI ones), activations quantized per row by one
    QuantizeLinear over rows `[N, K]` (per-axis, axis 0, zero point 128), MatMulInteger u8 x s8,
    then x column scale x row scale."""
    consts = [numpy_helper.from_array(np.array([-1], np.int64), "rql.axes"),
              numpy_helper.from_array(np.array(127.0, np.float32), "rql.127"),
              numpy_helper.from_array(np.array(1e-30, np.float32), "rql.tiny"),
              numpy_helper.from_array(np.array([128], np.uint8), "rql.zp1"),
              numpy_helper.from_array(np.array([0], np.int64), "rql.zero1"),
              numpy_helper.from_array(np.array([-1], np.int64), "rql.minus1")]
    quantized = {}

    def emit(n, t, shape):
        kdim, cols = shape
        nodes = []
        a = n.input[0]
        p = n.name + "/rql"
        if a not in quantized:
            shp = p + "kshape"
            consts.append(numpy_helper.from_array(np.array([-1, kdim], np.int64), shp))
            nodes += [
                helper.make_node("Shape", [a], [p + "ashape"]),
                helper.make_node("Reshape", [a, shp], [p + "a2"]),
                helper.make_node("Abs", [p + "a2"], [p + "abs"]),
                helper.make_node("ReduceMax", [p + "abs", "rql.axes"], [p + "amax"], keepdims=0),
                helper.make_node("Div", [p + "amax", "rql.127"], [p + "s0"]),
                helper.make_node("Max", [p + "s0", "rql.tiny"], [p + "s"]),
                helper.make_node("Shape", [p + "s"], [p + "sshape"]),
                helper.make_node("Expand", ["rql.zp1", p + "sshape"], [p + "zp"]),
                helper.make_node("QuantizeLinear", [p + "a2", p + "s", p + "zp"], [p + "q"], axis=0),
                helper.make_node("Unsqueeze", [p + "s", "rql.axes"], [p + "s2"]),
            ]
            quantized[a] = (p + "q", p + "s2", p + "ashape")
        aq, s2, ashape = quantized[a]
        outshape = p + "oshape"
        consts.append(numpy_helper.from_array(np.array([cols], np.int64), p + "cols"))
        return nodes + [
            helper.make_node("MatMulInteger", [aq, t.name + ".q", "rql.zp1"], [p + "i"]),
            helper.make_node("Cast", [p + "i"], [p + "f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [p + "f", t.name + ".scale"], [p + "f1"]),
            helper.make_node("Mul", [p + "f1", s2], [p + "f2"]),
            helper.make_node("Slice", [ashape, "rql.zero1", "rql.minus1"], [p + "lead"]),
            helper.make_node("Concat", [p + "lead", p + "cols"], [outshape], axis=0),
            helper.make_node("Reshape", [p + "f2", outshape], [n.output[0]]),
        ]

    return rewrite_products(model, skip_head, 2 ** (wbits - 1) - 1, consts, emit)


def nbits(model, bits, block, skip_head):
    for n, t in list(weight_matmuls(model, skip_head)):
        w = numpy_helper.to_array(t).astype(np.float32)  # [K, N]
        k, cols = w.shape
        kb = (k + block - 1) // block
        wt = np.zeros((cols, kb * block), np.float32)
        wt[:, :k] = w.T
        wt = wt.reshape(cols, kb, block)
        qmax = 2 ** (bits - 1) - 1
        amax = np.abs(wt).max(axis=2)
        scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
        q = np.clip(np.rint(wt / scale[:, :, None]), -qmax - 1, qmax).astype(np.int32) + 2 ** (bits - 1)
        q = q.astype(np.uint8)
        if bits == 4:
            q = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
        replace_init(model, t.name, [numpy_helper.from_array(q, t.name + ".q"),
                                     numpy_helper.from_array(scale, t.name + ".scales")])
        n.op_type, n.domain = "MatMulNBits", MS
        n.input[:] = [n.input[0], t.name + ".q", t.name + ".scales"]
        del n.attribute[:]
        n.attribute.extend([helper.make_attribute("K", k), helper.make_attribute("N", cols),
                            helper.make_attribute("bits", bits), helper.make_attribute("block_size", block),
                            helper.make_attribute("accuracy_level", 4)])
    return model


def build(src, variant, out, skip_head):
    if variant == "qdyn":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(src, out, weight_type=QuantType.QInt8, use_external_data_format=True,
                         op_types_to_quantize=["MatMul"], extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                         nodes_to_exclude=[n.name for n in onnx.load(src, load_external_data=False).graph.node
                                           if skip_head and n.input[1:2] == ["lm_head.MatMul.weight"]])
        return out
    m = onnx.load(src)
    if variant == "dqmm":
        dqmm(m, True, skip_head)
    elif variant == "dqmm-tensor":
        dqmm(m, False, skip_head)
    elif variant == "rowq":
        rowq(m, skip_head)
    elif variant.startswith("rowql"):
        rowql(m, skip_head, int(variant[5:] or 7))
    elif variant.startswith("nbits"):
        bits, block = variant[5:].split("-")
        nbits(m, int(bits), int(block), skip_head)
    elif variant != "fp32":
        raise SystemExit(f"unknown variant {variant}")
    commit(m)
    onnx.save(m, out, save_as_external_data=True, location=os.path.basename(out) + ".data")
    return out


def feeds(sess, batch, past):
    f = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            f[i.name] = np.full((batch, 1), 42, np.int64)
        elif i.name == "attention_mask":
            f[i.name] = np.ones((batch, past + 1), np.int64)
        elif i.name.startswith("past_key_values"):
            shape = [batch, i.shape[1], past, i.shape[3]]
            f[i.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.1
        else:
            raise SystemExit(f"unexpected input {i.name}")
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx_dir")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--past", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-head", action="store_true", help="keep the lm head fp32")
    ap.add_argument("--variants", nargs="+",
                    default=["fp32", "rowq", "dqmm", "dqmm-tensor", "qdyn", "nbits8-32", "nbits8-128", "nbits4-32"])
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=DIR",
                    help="also time these exported folders (e.g. ours=target/bench-int8/int8)")
    a = ap.parse_args()
    import onnxruntime as ort
    src = os.path.join(a.onnx_dir, "model.onnx")
    tmp = tempfile.mkdtemp(prefix="int8_ops.")
    sessions = {}
    extra = dict(e.split("=", 1) for e in a.extra)
    a.variants += list(extra)
    for v in a.variants:
        if v in extra:
            path = os.path.join(extra[v], "model.onnx")
        else:
            path = build(src, v, os.path.join(tmp, f"{v}.onnx"), a.skip_head)
        o = ort.SessionOptions()
        o.intra_op_num_threads = a.threads
        o.inter_op_num_threads = 1
        o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions[v] = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
        print(f"built {v}", file=sys.stderr)
    for b in a.batch:
        f = feeds(sessions[a.variants[0]], b, a.past)
        ref = sessions[a.variants[0]].run(["logits"], f)[0]
        times = {v: [] for v in a.variants}
        for v in a.variants:
            sessions[v].run(["logits"], f)
        for _ in range(a.rounds):
            for v in a.variants:
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    sessions[v].run(None, f)
                times[v].append((time.perf_counter() - t0) / a.steps * 1e3)
        base = statistics.median(times[a.variants[0]])
        for v in a.variants:
            out = sessions[v].run(["logits"], f)[0]
            med = statistics.median(times[v])
            one = {k: x[:1] for k, x in f.items()}
            alone = sessions[v].run(["logits"], one)[0]
            invariant = bool(np.array_equal(alone[0], out[0]))
            print(json.dumps({"variant": v, "batch": b, "past": a.past, "ms_per_step": round(med, 2),
                              "speedup": round(base / med, 2), "tokens_per_s": round(b / med * 1e3, 1),
                              "max_abs_dlogit": float(np.abs(out - ref).max()),
                              "row0_same_at_batch1": invariant,
                              "load": os.getloadavg()[0]}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
