"""Reference numbers for training/src/objectives/tests.rs, computed token by token with explicit
loops (independent of the vectorised Rust code) straight from LOSSES.md.

    .venv/bin/python scripts/reference/objective_values.py

The hand-made inputs use only integer arithmetic so that Rust rebuilds them exactly:
  logits[r, t, v] = ((r*T*V + t*V + v) * 37 % 17) / 4 - 2
  ids[r, t]       = (r*3 + t*5 + 1) % V
  row r: prompt length 1 + r % 2, length T - (1 if r % 3 == 2 else 0); the rest is the response
  uniforms[r, t]  = ((r*5 + t) * 0.137) % 1      (for the draw predicting token t + 1)
Rows follow the Layout of objectives/mod.rs: [rejected x P | negatives | chosen x P | positives].
"""
import json
import math

import torch

R, T, V = 6, 5, 6
P, NEG, POS = 2, 1, 1


def inputs():
    logits = torch.tensor(
        [[[((r * T * V + t * V + v) * 37 % 17) / 4 - 2 for v in range(V)] for t in range(T)] for r in range(R)],
        dtype=torch.float64,
    )
    ids = [[(r * 3 + t * 5 + 1) % V for t in range(T)] for r in range(R)]
    mask = [[1 if (1 + r % 2) <= t < T - (1 if r % 3 == 2 else 0) else 0 for t in range(T)] for r in range(R)]
    uni = [[((r * 5 + t) * 0.137) % 1 for t in range(T - 1)] for r in range(R)]
    return logits, ids, mask, uni


def cringe_token(scores, y, k, u):
    """One cr_t: candidates = top k of scores with y removed, inverse-CDF draw with u."""
    order = sorted(range(len(scores)), key=lambda v: -scores[v])[: k + 1]
    cands = [v for v in order if v != y][:k]
    z = [math.exp(scores[v]) for v in cands]
    total = sum(z)
    acc, j = 0.0, k - 1
    for i, zi in enumerate(z):
        acc += zi / total
        if acc > u:  # first i with cdf > u, i.e. count of cdf entries < u
            j = i
            break
    s_plus, s_minus = scores[cands[j]], scores[y]
    return math.log1p(math.exp(s_minus - s_plus)), cands[j]


def seq_terms(logits, ids, mask, uni, k, cringe_rows):
    out = []
    for r in range(R):
        lp, n, cr = 0.0, 0, 0.0
        for t in range(T - 1):
            if not mask[r][t + 1]:
                continue
            row = logits[r, t].tolist()
            y = ids[r][t + 1]
            lse = math.log(sum(math.exp(s) for s in row))
            lp += row[y] - lse
            n += 1
            if r < cringe_rows:
                cr += cringe_token(row, y, k, uni[r][t])[0]
        out.append((lp, n, cr))
    return out


def losses(terms, alpha, b, tau, gate):
    ce = [-lp / n for lp, n, _ in terms]
    cr = [c / n for _, n, c in terms]
    ch = P + NEG
    pair = []
    for i in range(P):
        m = terms[ch + i][0] - terms[i][0]
        g = {"soft": 1 / (1 + math.exp(-(b - m) / tau)), "none": 1.0}[gate]
        pair.append(ce[ch + i] + alpha * g * cr[i])
    pos = [ce[2 * P + NEG + j] for j in range(POS)]
    neg = [cr[P + j] for j in range(NEG)]
    pairwise = (sum(pair) + sum(pos) + alpha * sum(neg)) / (P + NEG + POS)
    binary = (sum(ce[ch + i] for i in range(P)) + sum(pos)) / (P + POS) + alpha * (
        sum(cr[i] for i in range(P)) + sum(neg)
    ) / (P + NEG)
    return pairwise, binary


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta):
    """TRL-style: -logsigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l))), mean over pairs."""
    h = beta * ((torch.tensor(chosen) - torch.tensor(ref_chosen)) - (torch.tensor(rejected) - torch.tensor(ref_rejected)))
    return (-torch.nn.functional.logsigmoid(h)).mean().item()


def main():
    logits, ids, mask, uni = inputs()
    res = {}
    for k in (1, 2):
        t = seq_terms(logits, ids, mask, uni, k, P + NEG)
        res[f"k{k}"] = {
            "logp_sum": [x[0] for x in t],
            "n_tokens": [x[1] for x in t],
            "cringe_sum": [x[2] for x in t[: P + NEG]],
        }
    t1 = seq_terms(logits, ids, mask, uni, 1, P + NEG)
    res["pairwise_soft_a0.5_b1_tau2"], _ = losses(t1, 0.5, 1.0, 2.0, "soft")
    res["pairwise_none_a0.5"], res["binary_a0.5"] = losses(t1, 0.5, 0.0, 1.0, "none")
    res["dpo_beta0.5"] = dpo_loss([-3.0, -1.0], [-2.0, -4.0], [-2.5, -1.5], [-2.0, -3.0], 0.5)
    rw, rl = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([0.5, -2.0, 1.0])
    res["reward_bt"] = (-torch.nn.functional.logsigmoid(rw - rl)).mean().item()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
