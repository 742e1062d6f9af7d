"""int8 vs fp32 graphs on the same prompts: how far apart are the next-token distributions?

For each prompt, the fp32 graph decodes greedily (batch 1, KV cache, stop at EOS or --new tokens);
then both graphs score that same token sequence teacher-forced. Reported over all greedy tokens:
mean and max |Δ log p| of the greedy token (log-softmax at f64 of each graph's logits), mean
total-variation distance of the two next-token distributions, and the share of steps where the
int8 graph's argmax is the fp32 greedy token. Both folders must be `exports onnx --last-logits-only`
graphs of the same model (ort flavor); the prompts are DATA.md records (`prompt` or `messages`).

Usage: int8_quality.py --fp32 DIR --int8 DIR --prompts FILE [--new 32] [--limit N] [--threads 2]
Prints one JSON line.
"""

import argparse
import json

import numpy as np


def session(path, threads):
    import onnxruntime as ort
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    return ort.InferenceSession(f"{path}/model.onnx", o, providers=["CPUExecutionProvider"])


class Decoder:
    def __init__(self, sess):
        self.s = sess
        self.kv = [i for i in sess.get_inputs() if i.name.startswith("past_key_values")]

    def start(self):
        self.past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in self.kv}
        self.len = 0

    def step(self, ids):
        """Feed `ids` (one row); returns the f64 log-softmax at the last one."""
        self.len += len(ids)
        feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, self.len), np.int64), **self.past}
        out = self.s.run(None, feed)
        names = [o.name for o in self.s.get_outputs()]
        res = dict(zip(names, out))
        for i in self.kv:
            self.past[i.name] = res[i.name.replace("past_key_values", "present")]
        z = res["logits"][0, -1].astype(np.float64)
        z -= z.max()
        return z - np.log(np.exp(z).sum())


def prompt_ids(tok, rec):
    if "messages" in rec:
        return tok.apply_chat_template(rec["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
    return tok(rec["prompt"])["input_ids"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--int8", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(a.fp32)
    eos = set()
    for f in ("config.json", "generation_config.json"):
        try:
            e = json.load(open(f"{a.fp32}/{f}")).get("eos_token_id")
        except FileNotFoundError:
            continue
        eos.update(e if isinstance(e, list) else [e] if e is not None else [])
    if tok.eos_token_id is not None:
        eos.add(tok.eos_token_id)
    recs = [json.loads(l) for l in open(a.prompts) if l.strip()]
    if a.limit:
        recs = recs[: a.limit]
    ref, q = Decoder(session(a.fp32, a.threads)), Decoder(session(a.int8, a.threads))
    dlp, tv, agree = [], [], 0
    for rec in recs:
        ids = prompt_ids(tok, rec)
        ref.start()
        q.start()
        lp_r, lp_q = ref.step(ids), q.step(ids)
        for _ in range(a.new):
            t = int(np.argmax(lp_r))
            dlp.append(abs(lp_r[t] - lp_q[t]))
            tv.append(0.5 * np.abs(np.exp(lp_r) - np.exp(lp_q)).sum())
            agree += int(np.argmax(lp_q) == t)
            if t in eos:
                break
            lp_r, lp_q = ref.step([t]), q.step([t])
    n = len(dlp)
    print(json.dumps({
        "prompts": len(recs), "tokens": n,
        "mean_abs_dlogp": float(np.mean(dlp)), "p99_abs_dlogp": float(np.quantile(dlp, 0.99)),
        "max_abs_dlogp": float(np.max(dlp)), "mean_tv": float(np.mean(tv)),
        "argmax_agreement": agree / n,
    }))


if __name__ == "__main__":
    main()
