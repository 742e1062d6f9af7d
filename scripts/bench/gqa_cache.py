# One com.microsoft GroupQueryAttention node (one decode step: B 64, 9/3 heads, head 64, rotary, shared
# past/present buffers of 256) on the CPU with the KV cache in fp32, fp16 and int8 (ONNX Runtime's
# quantized cache: k/v_quant_type, kv_cache_bit_width 8, fixed scales), the variants alternating in one
# process: which cache makes attention, the part int8 weights do not shrink, faster here?
# Usage: .venv/bin/python scripts/bench/gqa_cache.py [CACHED_POSITIONS] [ROUNDS] [BUFFER_POSITIONS (256)]
import numpy as np, onnxruntime as ort, time, sys, statistics
from onnx import helper, TensorProto as TP
B, H, KV, D = 64, 9, 3, 64
MAXL = int(sys.argv[3]) if len(sys.argv) > 3 else 256
L = int(sys.argv[1]) if len(sys.argv) > 1 else 150
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
# name: (activation dtype, cache dtype, quant type or None)
VARIANTS = {
    'fp32': (np.float32, np.float32, None),
    'fp16': (np.float16, np.float16, None),
    'int8 per tensor': (np.float32, np.int8, 'PER_TENSOR'),
    'int8 per channel': (np.float32, np.int8, 'PER_CHANNEL'),
}
ONNX_T = {np.float32: TP.FLOAT, np.float16: TP.FLOAT16, np.int8: TP.INT8}

def session(act, cache, quant):
    T, C = ONNX_T[act], ONNX_T[cache]
    inp = [helper.make_tensor_value_info('q', T, [B, 1, H*D]),
           helper.make_tensor_value_info('k', T, [B, 1, KV*D]),
           helper.make_tensor_value_info('v', T, [B, 1, KV*D]),
           helper.make_tensor_value_info('pk', C, [B, KV, MAXL, D]),
           helper.make_tensor_value_info('pv', C, [B, KV, MAXL, D]),
           helper.make_tensor_value_info('sk', TP.INT32, [B]),
           helper.make_tensor_value_info('tot', TP.INT32, []),
           helper.make_tensor_value_info('cos', T, [MAXL, D//2]),
           helper.make_tensor_value_info('sin', T, [MAXL, D//2])]
    names = ['q', 'k', 'v', 'pk', 'pv', 'sk', 'tot', 'cos', 'sin']
    attrs = dict(num_heads=H, kv_num_heads=KV, scale=1/8.0, do_rotary=1, local_window_size=-1)
    if quant:
        shape = [1] if quant == 'PER_TENSOR' else [KV, 1, D]
        inp += [helper.make_tensor_value_info('ks', TP.FLOAT, shape),
                helper.make_tensor_value_info('vs', TP.FLOAT, shape)]
        names += ['', '', '', 'ks', 'vs']  # position_ids, attention_bias, head_sink unused
        attrs.update(k_quant_type=quant, v_quant_type=quant, kv_cache_bit_width=8)
    out = [helper.make_tensor_value_info('o', T, [B, 1, H*D]),
           helper.make_tensor_value_info('yk', C, [B, KV, MAXL, D]),
           helper.make_tensor_value_info('yv', C, [B, KV, MAXL, D])]
    n = helper.make_node('GroupQueryAttention', names, ['o', 'yk', 'yv'], domain='com.microsoft', **attrs)
    m = helper.make_model(helper.make_graph([n], 'g', inp, out),
                          opset_imports=[helper.make_opsetid('', 17), helper.make_opsetid('com.microsoft', 1)])
    m.ir_version = 9
    o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), o, providers=['CPUExecutionProvider'])

rng = np.random.default_rng(0)
bound = {}
for name, (act, cache, quant) in VARIANTS.items():
    s = session(act, cache, quant)
    f = rng.standard_normal((2, B, KV, MAXL, D)).astype(np.float32)
    scale = 4.0 / 127
    c = np.clip(np.round(f / scale), -127, 127).astype(np.int8) if quant else f.astype(cache)
    pk, pv = (ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(c[i])) for i in (0, 1))
    io = s.io_binding()
    for nm, a in [('q', (B, 1, H*D)), ('k', (B, 1, KV*D)), ('v', (B, 1, KV*D))]:
        io.bind_cpu_input(nm, rng.standard_normal(a).astype(act))
    io.bind_ortvalue_input('pk', pk); io.bind_ortvalue_input('pv', pv)
    io.bind_cpu_input('sk', np.full(B, L-1, np.int32)); io.bind_cpu_input('tot', np.array(MAXL, np.int32))
    ang = np.arange(MAXL)[:, None] * (1e4 ** (-np.arange(D//2)/(D//2)))[None]
    io.bind_cpu_input('cos', np.cos(ang).astype(act)); io.bind_cpu_input('sin', np.sin(ang).astype(act))
    if quant:
        shape = (1,) if quant == 'PER_TENSOR' else (KV, 1, D)
        io.bind_cpu_input('ks', np.full(shape, scale, np.float32)); io.bind_cpu_input('vs', np.full(shape, scale, np.float32))
    io.bind_output('o'); io.bind_ortvalue_output('yk', pk); io.bind_ortvalue_output('yv', pv)
    bound[name] = (s, io, (pk, pv))
res = {n: [] for n in VARIANTS}
for rep in range(ROUNDS):
    for name, (s, io, _) in bound.items():
        for _ in range(3): s.run_with_iobinding(io)
        N = 30; t = time.perf_counter()
        for _ in range(N): s.run_with_iobinding(io)
        res[name].append((time.perf_counter() - t) / N * 1e3)
print(f'ms per call (one layer, B {B}, {L} cached positions, shared {MAXL}-position buffers, {ROUNDS} alternating rounds); load {open("/proc/loadavg").read().split()[0]}')
for name, v in res.items():
    print(f'{name:18s} median {statistics.median(v):.3f}  min {min(v):.3f}  ({" ".join(f"{x:.2f}" for x in v)})')
