"""Time exported ONNX folders on CPU: one prefill of [batch, prompt] and `steps` single-token decode
steps (KV cache fed back, non-shared buffers, as engine::session does); the fastest of `repeats`
runs (the machine is shared, so the minimum is the least disturbed measurement). Folders are
visited round-robin so that a slow period does not hit one folder only.

Usage: .venv/bin/python scripts/bench/onnx_flavors.py DIR [DIR ...] [--batch 4 --prompt 64
       --steps 32 --threads 2 --repeats 3]
Also reports max |logits diff| of each folder's prefill against the first folder's (the padding is
right-sided so every flavor runs the same batch).
"""

import argparse
import time

import numpy as np
import onnxruntime as ort


def feeds_for(sess, ids, mask, past):
    names = {i.name for i in sess.get_inputs()}
    f = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in names:
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        f["position_ids"] = pos[:, -ids.shape[1]:].astype(np.int64)
    f.update(past)
    return f


def run(sess, batch, prompt, steps, vocab):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, size=(batch, prompt)).astype(np.int64)
    mask = np.ones((batch, prompt), dtype=np.int64)
    past = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            dt = np.float16 if "float16" in i.type else np.float32
            past[i.name] = np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=dt)
    out_names = [o.name for o in sess.get_outputs()]
    t0 = time.perf_counter()
    outs = dict(zip(out_names, sess.run(None, feeds_for(sess, ids, mask, past))))
    t1 = time.perf_counter()
    first = outs["logits"]
    for _ in range(steps):
        past = {n.replace("present.", "past_key_values."): v for n, v in outs.items() if n.startswith("present.")}
        nxt = outs["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        outs = dict(zip(out_names, sess.run(None, feeds_for(sess, nxt, mask, past))))
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / max(steps, 1), first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    sessions = []
    for d in a.dirs:
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        sess = ort.InferenceSession(f"{d}/model.onnx", so, providers=["CPUExecutionProvider"])
        sessions.append((d, sess, sess.get_outputs()[0].shape[-1], [], [], []))
    for _ in range(a.repeats):
        for d, sess, vocab, pre, dec, first in sessions:
            p, s, f = run(sess, a.batch, a.prompt, a.steps, vocab)
            pre.append(p)
            dec.append(s)
            first[:] = [f]
    ref = sessions[0][5][0]
    for d, sess, vocab, pre, dec, first in sessions:
        diff = np.abs(first[0] - ref).max()
        print(f"{d}: prefill [{a.batch}x{a.prompt}] {min(pre) * 1e3:8.1f} ms   "
              f"decode step [{a.batch}x1] {min(dec) * 1e3:7.2f} ms   max|Δ prefill logits| vs first = {diff:.2e}")


if __name__ == "__main__":
    main()
