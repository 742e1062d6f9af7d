# One com.microsoft GroupQueryAttention node (one decode step: B 64, 9/3 heads, head 64, shared
# past/present buffers of 256) on the CPU in fp32 and fp16, alternating: is an fp16 KV cache faster here?
# Usage: .venv/bin/python scripts/bench/gqa_fp16.py [CACHED_POSITIONS]
import numpy as np, onnxruntime as ort, time, sys
from onnx import helper, TensorProto as TP
B, H, KV, D, MAXL = 64, 9, 3, 64, 256
L = int(sys.argv[1]) if len(sys.argv) > 1 else 150
def model(dt):
    T = TP.FLOAT16 if dt == np.float16 else TP.FLOAT
    inp = [helper.make_tensor_value_info('q', T, [B, 1, H*D]),
           helper.make_tensor_value_info('k', T, [B, 1, KV*D]),
           helper.make_tensor_value_info('v', T, [B, 1, KV*D]),
           helper.make_tensor_value_info('pk', T, [B, KV, MAXL, D]),
           helper.make_tensor_value_info('pv', T, [B, KV, MAXL, D]),
           helper.make_tensor_value_info('sk', TP.INT32, [B]),
           helper.make_tensor_value_info('tot', TP.INT32, []),
           helper.make_tensor_value_info('cos', T, [MAXL, D//2]),
           helper.make_tensor_value_info('sin', T, [MAXL, D//2])]
    out = [helper.make_tensor_value_info('o', T, [B, 1, H*D]),
           helper.make_tensor_value_info('yk', T, [B, KV, MAXL, D]),
           helper.make_tensor_value_info('yv', T, [B, KV, MAXL, D])]
    n = helper.make_node('GroupQueryAttention', ['q','k','v','pk','pv','sk','tot','cos','sin'], ['o','yk','yv'],
        domain='com.microsoft', num_heads=H, kv_num_heads=KV, scale=1/8.0, do_rotary=1, local_window_size=-1)
    g = helper.make_graph([n], 'g', inp, out)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17), helper.make_opsetid('com.microsoft', 1)])
    m.ir_version = 9
    o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), o, providers=['CPUExecutionProvider'])
rng = np.random.default_rng(0)
res = {}
for rep in range(3):
  for dt in (np.float32, np.float16):
    s = model(dt)
    pk = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((B,KV,MAXL,D)).astype(dt))
    pv = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((B,KV,MAXL,D)).astype(dt))
    io = s.io_binding()
    for nm, a in [('q',(B,1,H*D)),('k',(B,1,KV*D)),('v',(B,1,KV*D))]:
        io.bind_cpu_input(nm, rng.standard_normal(a).astype(dt))
    io.bind_ortvalue_input('pk', pk); io.bind_ortvalue_input('pv', pv)
    io.bind_cpu_input('sk', np.full(B, L-1, np.int32)); io.bind_cpu_input('tot', np.array(MAXL, np.int32))
    ang = np.arange(MAXL)[:,None] * (1e4 ** (-np.arange(D//2)/(D//2)))[None]
    io.bind_cpu_input('cos', np.cos(ang).astype(dt)); io.bind_cpu_input('sin', np.sin(ang).astype(dt))
    io.bind_output('o'); io.bind_ortvalue_output('yk', pk); io.bind_ortvalue_output('yv', pv)
    for _ in range(5): s.run_with_iobinding(io)
    N = 50; t = time.perf_counter()
    for _ in range(N): s.run_with_iobinding(io)
    dtm = (time.perf_counter() - t) / N * 1e3
    res.setdefault(dt.__name__, []).append(dtm)
    print(dt.__name__, f'{dtm:.3f} ms/call (one layer, B {B}, L {L})', flush=True)
print({k: min(v) for k, v in res.items()})
