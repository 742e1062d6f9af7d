"""An int8 KV cache under the int8 export? (issue 14: attention over the fp32 cache is 43 % of the
int8 graph's kernel time). A measuring tool, not the product: it rewrites an `exports onnx --weights
int8 --last-logits-only` folder so that every GroupQueryAttention keeps its cache in int8 (ONNX
Runtime's quantized cache: k/v_quant_type PER_CHANNEL, kv_cache_bit_width 8), with static scales
calibrated on the fp32 export's own present K/V (max |x| / 127 per kv head and channel over the
calibration prompts), then
  * quality: fp32 greedy tokens on test contexts, teacher-forced through int8 and int8 + int8 cache:
    mean |Δ log p| of fp32's token, argmax agreement;
  * speed: the decode step at batch B with P cached positions, shared past/present buffers bound in
    place (the engine's form), the three graphs alternating.
Usage: kv8_cache.py FP32_DIR INT8_DIR CONTEXTS.jsonl [--calib 16] [--test 8] [--tokens 32]
       [--batch 64] [--past 200] [--rounds 5] [--steps 5] [--threads 2] [--save DIR]
       [--quant PER_CHANNEL:PER_CHANNEL] (K:V, each PER_CHANNEL or PER_TENSOR)
--save DIR also writes the rewritten graph as a model folder (INT8_DIR's other files copied) that
`engine generate` runs, for the real job; --skip-quality / --skip-speed leave those parts out.
"""
import argparse, json, os, statistics, sys, tempfile, time
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto as TP
from tokenizers import Tokenizer

def session(path, threads):
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])

def kv_inputs(sess):
    return [i for i in sess.get_inputs() if i.name.startswith("past_key_values")]

def run(sess, ids, past, cache_dtype):
    """Concat form: past [1, kv, T, hd] in, present out; returns (last logits, presents)."""
    T = past[0].shape[2] if past else 0
    f = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, T + len(ids)), np.int64)}
    names = [i.name for i in kv_inputs(sess)]
    for j, n in enumerate(names):
        f[n] = past[j] if past else np.zeros((1, sess.get_inputs()[2].shape[1], 0, 64), cache_dtype)
    outs = sess.run(None, f)
    return outs[0][0, -1], outs[1:]

def calibrate(fp32, prompts):
    mx = None
    for ids in prompts:
        _, pres = run(fp32, ids, None, np.float32)
        m = [np.abs(p[0]).max(axis=1) for p in pres]  # [kv, hd] per present
        mx = m if mx is None else [np.maximum(a, b) for a, b in zip(mx, m)]
    names = [o.name for o in fp32.get_outputs()][1:]
    return {n: np.maximum(a, 1e-6) / 127.0 for n, a in zip(names, mx)}

def rewrite(src_dir, scales, out, quant=("PER_CHANNEL", "PER_CHANNEL")):
    m = onnx.load(os.path.join(src_dir, "model.onnx"))
    import re
    for v in list(m.graph.input) + list(m.graph.output):
        if v.name.startswith(("past_key_values", "present")):
            v.type.tensor_type.elem_type = TP.INT8
    for n in m.graph.node:
        if n.op_type != "GroupQueryAttention":
            continue
        layer = re.search(r"layers\.(\d+)/", n.name).group(1)
        k, v = scales[f"present.{layer}.key"], scales[f"present.{layer}.value"]
        # PER_TENSOR: one scale for the layer's whole cache, the largest channel's.
        k, v = [x[:, None, :] if q == "PER_CHANNEL" else np.array([x.max()])
                for x, q in zip((k, v), quant)]
        ks, vs = n.output[1] + ".k_scale", n.output[2] + ".v_scale"
        m.graph.initializer.extend([numpy_helper.from_array(k.astype(np.float32), ks),
                                    numpy_helper.from_array(v.astype(np.float32), vs)])
        ins = list(n.input) + [""] * (9 - len(n.input)) + ["", "", "", ks, vs]
        del n.input[:]; n.input.extend(ins)
        n.attribute.extend([helper.make_attribute("k_quant_type", quant[0]),
                            helper.make_attribute("v_quant_type", quant[1]),
                            helper.make_attribute("kv_cache_bit_width", 8)])
    onnx.save(m, out, save_as_external_data=True, location=os.path.basename(out) + ".data")
    return out

def quality(fp32, others, prompts, tokens):
    stats = {k: [[], []] for k in others}
    for ids in prompts:
        lg, past = run(fp32, ids, None, np.float32)
        seq = []
        ref = []
        for _ in range(tokens):
            t = int(lg.argmax()); seq.append(t)
            ref.append((lg - np.logaddexp.reduce(lg))[t])
            lg, past = run(fp32, [t], past, np.float32)
        for name, (s, dt) in others.items():
            lg, past = run(s, ids, None, dt)
            for i, t in enumerate(seq):
                lp = lg - np.logaddexp.reduce(lg)
                stats[name][0].append(abs(lp[t] - ref[i])); stats[name][1].append(int(lg.argmax()) == t)
                lg, past = run(s, [t], past, dt)
    return {k: {"mean_abs_dlogp": round(float(np.mean(a)), 4), "p99": round(float(np.quantile(a, 0.99)), 3),
                "argmax_agreement": round(float(np.mean(b)), 4), "positions": len(a)} for k, (a, b) in stats.items()}

def speed(sessions, batch, past, rounds, steps):
    bound = {}
    rng = np.random.default_rng(0)
    for name, (s, dt) in sessions.items():
        io = s.io_binding()
        kv = kv_inputs(s)
        cap = past + steps * (rounds + 1) + 8
        io.bind_cpu_input("input_ids", np.full((batch, 1), 42, np.int64))
        io.bind_cpu_input("attention_mask", np.ones((batch, past + 1), np.int64))
        keep = []
        for i in kv:
            a = rng.standard_normal((batch, i.shape[1], cap, i.shape[3])).astype(np.float32) * 0.1
            a = (np.clip(np.round(a / 0.01), -127, 127).astype(np.int8) if dt == np.int8 else a)
            ov = ort.OrtValue.ortvalue_from_numpy(a); keep.append(ov)
            io.bind_ortvalue_input(i.name, ov)
            io.bind_ortvalue_output(i.name.replace("past_key_values", "present"), ov)
        io.bind_output("logits")
        bound[name] = (s, io, keep)
    times = {n: [] for n in sessions}
    for name, (s, io, _) in bound.items():
        s.run_with_iobinding(io)
    for _ in range(rounds):
        for name, (s, io, _) in bound.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                s.run_with_iobinding(io)
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    return times

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fp32"); ap.add_argument("int8"); ap.add_argument("contexts")
    ap.add_argument("--calib", type=int, default=16); ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32); ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--past", type=int, default=200); ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save"); ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--quant", default="PER_CHANNEL:PER_CHANNEL",
                    help="K:V quantization of the int8 cache, each PER_CHANNEL or PER_TENSOR")
    a = ap.parse_args()
    quant = tuple(a.quant.split(":"))
    tok = Tokenizer.from_file(os.path.join(a.fp32, "tokenizer.json"))
    rows = [json.loads(l) for l in open(a.contexts)]
    text = [r.get("prompt") or r["messages"][-1]["content"] for r in rows]
    ids = [tok.encode(t).ids[-256:] for t in text]
    calib, test = ids[:a.calib], ids[a.calib:a.calib + a.test]  # disjoint
    fp32 = session(os.path.join(a.fp32, "model.onnx"), a.threads)
    int8 = session(os.path.join(a.int8, "model.onnx"), a.threads)
    scales = calibrate(fp32, calib)
    dest = a.save or tempfile.mkdtemp(prefix="kv8.")
    if a.save:
        import shutil
        os.makedirs(dest, exist_ok=True)
        for f in os.listdir(a.int8):
            if not f.startswith("model.onnx"):
                shutil.copy(os.path.join(a.int8, f), dest)
    out = rewrite(a.int8, scales, os.path.join(dest, "model.onnx"), quant)
    kv8 = session(out, a.threads)
    if a.skip_quality and a.skip_speed:
        return
    q = {} if a.skip_quality else quality(fp32, {"int8": (int8, np.float32), "int8 + int8 cache": (kv8, np.int8)}, test, a.tokens)
    print(json.dumps({"quality": q}), flush=True)
    if a.skip_speed:
        return
    t = speed({"fp32": (fp32, np.float32), "int8": (int8, np.float32), "int8 + int8 cache": (kv8, np.int8)},
              a.batch, a.past, a.rounds, a.steps)
    base = statistics.median(t["fp32"])
    for n, v in t.items():
        print(json.dumps({"graph": n, "batch": a.batch, "past": a.past, "ms_per_step_median": round(statistics.median(v), 2),
                          "per_round": [round(x, 1) for x in v], "x_fp32": round(base / statistics.median(v), 2),
                          "load": os.getloadavg()[0]}), flush=True)

if __name__ == "__main__":
    main()
