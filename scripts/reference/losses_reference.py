"""Independent PyTorch implementation of LOSSES.md, for checking `training eval`.

    .venv/bin/python scripts/reference/losses_reference.py --model DIR --data FILE \
        --objective pairwise-cringe [--alpha A --b B --tau T --gate soft|hard|none \
        --margin-reduction sum|mean --beta BETA --reference DIR --max-length N]

Prints the JSON object `training eval --json --cringe-k 1` prints:
{"examples", "loss", "ce", "cringe", "gate", "margin", "accuracy"} (fields the objective lacks
are omitted). Records are encoded by DATA.md's rule with the folder's own tokenizer
(transformers' AutoTokenizer), each sequence is run through transformers *alone* (no padding,
no batching), and every per-token quantity is computed with an explicit loop over positions using
log_softmax — so nothing is shared with the Rust code but the definitions. With k = 1 the cringe
positive is the highest-scoring non-target token.
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F


def encode(tok, eos_id, prompt, response, max_length):
    if isinstance(prompt, str):
        p = tok(prompt, add_special_tokens=True)["input_ids"]
    else:
        text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        p = tok(text, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [eos_id]
    if max_length is not None and len(p) + len(r) > max_length:
        if not p or len(r) + 1 > max_length:
            return None
        p = p[len(p) + len(r) - max_length:]
    return p + r, len(p)


def seq_stats(model, seq, start):
    """(sum log p, n tokens, sum cr_t with k = 1) over response tokens."""
    ids = torch.tensor([seq])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp, cr, n = 0.0, 0.0, 0
    for t in range(start, len(seq)):
        scores = logits[t - 1]
        y = seq[t]
        logp += F.log_softmax(scores, dim=-1)[y].item()
        masked = scores.clone()
        masked[y] = -math.inf
        s_plus = masked.max().item()  # k = 1: the best non-target token
        cr += F.softplus(scores[y] - s_plus).item()
        n += 1
    return logp, n, cr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--objective", required=True,
                    choices=["sft", "binary-cringe", "pairwise-cringe", "dpo", "reward"])
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--b", type=float, default=0.0)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--gate", default="soft", choices=["soft", "hard", "none"])
    ap.add_argument("--margin-reduction", default="sum", choices=["sum", "mean"])
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--reference")
    ap.add_argument("--max-length", type=int)
    a = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    eos_id = tok.convert_tokens_to_ids(tok.eos_token)
    cfg = json.load(open(f"{a.model}/config.json"))
    max_length = a.max_length or min(cfg.get("max_position_embeddings", cfg.get("n_positions", 2048)), 2048)
    cls = AutoModelForSequenceClassification if a.objective == "reward" else AutoModelForCausalLM
    load = lambda d: cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    model = load(a.model)
    ref = load(a.reference) if a.objective == "dpo" and a.reference else model

    pairs, pos, neg = [], [], []
    for line in open(a.data):
        if not line.strip():
            continue
        rec = json.loads(line)
        prompt = rec["prompt"]
        if "chosen" in rec:
            if a.objective == "sft":
                e = encode(tok, eos_id, prompt, rec["chosen"], max_length)
                if e:
                    pos.append(e)
                continue
            w = encode(tok, eos_id, prompt, rec["chosen"], max_length)
            l = encode(tok, eos_id, prompt, rec["rejected"], max_length)
            if w and l:
                pairs.append((w, l))
        else:
            assert a.objective not in ("dpo", "reward"), "pairs only"
            e = encode(tok, eos_id, prompt, rec["response"], max_length)
            if e and rec["label"]:
                pos.append(e)
            elif e and a.objective != "sft":
                neg.append(e)

    out = {"examples": len(pairs) + len(pos) + len(neg)}
    if a.objective == "reward":
        def score(e):
            # The score head on the hidden state of the sequence's last token (LOSSES.md). Not
            # `model(...).logits`: transformers pools at the last token that differs from the pad
            # id, which skips the final EOS when pad == eos (as in SmolLM2 and the tiny models).
            with torch.no_grad():
                h = model.base_model(input_ids=torch.tensor([e[0]])).last_hidden_state[0, -1]
                return model.score(h)[0].double().item()
        diffs = [score(w) - score(l) for w, l in pairs]
        out["loss"] = sum(-F.logsigmoid(torch.tensor(d, dtype=torch.float64)).item() for d in diffs) / len(diffs)
        out["margin"] = sum(diffs) / len(diffs)
        out["accuracy"] = sum(d > 0 for d in diffs) / len(diffs)
        print(json.dumps(out))
        return

    st = lambda m, e: seq_stats(m, e[0], e[1])
    P = [(st(model, w), st(model, l)) for w, l in pairs]
    POS = [st(model, e) for e in pos]
    NEG = [st(model, e) for e in neg]
    ce = lambda s: -s[0] / s[1]
    cr = lambda s: s[2] / s[1]
    red = (lambda s: s[0]) if a.margin_reduction == "sum" else (lambda s: s[0] / s[1])
    margins = [red(w) - red(l) for w, l in P]

    if a.objective == "sft":
        out["loss"] = out["ce"] = sum(ce(s) for s in POS) / len(POS)
    elif a.objective == "dpo":
        R = [(st(ref, w)[0], st(ref, l)[0]) for w, l in pairs]
        m = [(w[0] - rw) - (l[0] - rl) for (w, l), (rw, rl) in zip(P, R)]
        out["loss"] = sum(-F.logsigmoid(torch.tensor(a.beta * x, dtype=torch.float64)).item() for x in m) / len(m)
        out["margin"] = sum(m) / len(m)
        out["accuracy"] = sum(x > 0 for x in m) / len(m)
    else:
        ce_rows = [w for w, _ in P] + POS
        cr_rows = [l for _, l in P] + NEG
        out["ce"] = sum(ce(s) for s in ce_rows) / len(ce_rows)
        out["cringe"] = sum(cr(s) for s in cr_rows) / len(cr_rows) if cr_rows else 0.0
        if a.objective == "binary-cringe":
            out["loss"] = sum(ce(s) for s in ce_rows) / max(len(ce_rows), 1) + a.alpha * sum(
                cr(s) for s in cr_rows) / max(len(cr_rows), 1)
        else:
            def gate(m):
                if a.gate == "soft":
                    return 1 / (1 + math.exp(-(a.b - m) / a.tau))
                return float(m < a.b) if a.gate == "hard" else 1.0
            g = [gate(m) for m in margins]
            total = sum(ce(w) + a.alpha * gi * cr(l) for (w, l), gi in zip(P, g))
            total += sum(ce(s) for s in POS) + a.alpha * sum(cr(s) for s in NEG)
            out["loss"] = total / out["examples"]
            if P:
                out["gate"] = sum(g) / len(g)
        if P:
            out["margin"] = sum(margins) / len(margins)
            out["accuracy"] = sum(m > 0 for m in margins) / len(margins)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
