"""Peer for scripts/bench-label: Hugging Face transformers `AutoModelForSequenceClassification`
scoring the same prompt + response sequences as `engine label --reward-model`, plus the inputs.

Usage (the bash driver calls these):
  label_peer.py generations DATASET.jsonl OUT.jsonl
      `engine generate`-style records from a continuation dataset (prompt + reference): each
      prompt gets two responses, its own reference and the next prompt's (so labeling makes pairs).
  label_peer.py pairs DATASET.jsonl OUT.jsonl
      A few reward-model training pairs (chosen = own reference, rejected = another's).
  label_peer.py run --model RM_DIR --generations FILE --batch B --threads K [--order sorted|input]
      Score every response; print one JSON line
      {"peer", "sequences", "tokens", "seconds", "scores": [[...] per record]}.

Sequences follow DATA.md: ids(prompt) ++ ids(response) ++ [eos], tokenized with the folder's
tokenizer.json. transformers' sequence-classification head reads the last token that is not
`pad_token_id`; our sequences end with EOS, which is also SmolLM2's pad id, so the config's pad id is
set to an id that occurs in no sequence and batches are right-padded with it (attention mask 0):
the head then reads each row's last real token, as LOSSES.md and the engine do.
"""

import argparse
import json
import os
import sys
import time


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def generations(a):
    ds = read_jsonl(a.dataset)
    out = []
    for i, r in enumerate(ds):
        other = ds[(i + 1) % len(ds)]["reference"]
        resp = [{"text": " " + t, "tokens": 0, "finish_reason": "eos"} for t in (r["reference"], other)]
        out.append({"id": r["id"], "prompt": r["prompt"], "reference": r["reference"], "responses": resp, "seconds": 0.0})
    write_jsonl(a.out, out)


def pairs(a):
    ds = read_jsonl(a.dataset)
    out = [
        {"prompt": r["prompt"], "chosen": " " + r["reference"], "rejected": " " + ds[(i + 1) % len(ds)]["reference"]}
        for i, r in enumerate(ds)
    ]
    write_jsonl(a.out, out)


def run(a):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(a.threads)
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    with open(os.path.join(a.model, "config.json")) as f:
        conf = json.load(f)
    eos = conf["eos_token_id"]
    eos = eos[0] if isinstance(eos, list) else eos
    records = read_jsonl(a.generations)
    seqs, where = [], []
    for ri, r in enumerate(records):
        prompt = tok.encode(r["prompt"], add_special_tokens=True).ids
        for k, resp in enumerate(r["responses"]):
            seqs.append(prompt + tok.encode(resp["text"], add_special_tokens=False).ids + [eos])
            where.append((ri, k))
    used = {t for s in seqs for t in s}
    pad = next(t for t in range(conf["vocab_size"] - 1, -1, -1) if t not in used)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = pad
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i])) if a.order == "sorted" else list(range(len(seqs)))
    scores = [0.0] * len(seqs)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), a.batch):
            idx = order[s : s + a.batch]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.tensor([seqs[i] + [pad] * (width - len(seqs[i])) for i in idx])
            mask = torch.tensor([[1] * len(seqs[i]) + [0] * (width - len(seqs[i])) for i in idx])
            out = model(input_ids=ids, attention_mask=mask).logits[:, 0]
            for i, v in zip(idx, out.tolist()):
                scores[i] = v
    seconds = time.perf_counter() - t0
    per_record = [[] for _ in records]
    for (ri, _), v in zip(where, scores):
        per_record[ri].append(v)
    print(json.dumps({"peer": f"transformers-{a.order}", "sequences": len(seqs), "tokens": sum(map(len, seqs)),
                      "seconds": seconds, "scores": per_record}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("generations", "pairs"):
        p = sub.add_parser(name)
        p.add_argument("dataset")
        p.add_argument("out")
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--generations", required=True)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--threads", type=int, default=os.cpu_count())
    r.add_argument("--order", choices=["sorted", "input"], default="sorted")
    a = ap.parse_args()
    {"generations": generations, "pairs": pairs, "run": run}[a.cmd](a)


if __name__ == "__main__":
    main()
