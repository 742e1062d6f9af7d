"""Peer for scripts/bench-train: the same Pairwise Cringe optimizer step as `training fit`, written
in plain PyTorch eager on transformers' model, plus the pairs file both sides train on.

Usage (the bash driver calls these):
  train_peer.py pairs OUT.jsonl --tokenizer HF_DIR --text-dir data/sotu [--pairs 4] [--seq-len 128]
      Write pairs whose every sequence (prompt + response + EOS, DATA.md's rule) is exactly
      --seq-len tokens: prompt and response strings are cut from the text at token boundaries and
      kept only when they re-tokenize to the very same ids, so `training fit` (Rust tokenizers) and
      this peer (Python tokenizers, same tokenizer.json) train on identical token ids.
  train_peer.py maxrss OUT_FILE -- COMMAND ...
      Run COMMAND and write its peak resident set size (KiB, getrusage of the child) to OUT_FILE;
      both sides are measured this way.
  train_peer.py run --model HF_DIR --pairs FILE --steps N --threads K [loss/optimizer flags]
                    [--precision fp32|bf16] [--gradient-checkpointing] [--lora-r R --lora-alpha A]
      Train N steps on all pairs of FILE (one optimizer batch, one forward for the 2 x pairs rows)
      and print one JSON line per step and a summary line:
      {"peer", "steps", "tokens_per_step", "step_seconds": [...], "losses": [...],
       "first": {step-1 statistics}}.
      --precision bf16 runs the forward and the loss under torch.autocast("cpu", torch.bfloat16)
      (fp32 weights and optimizer, as `training fit --precision bf16`); --gradient-checkpointing
      is transformers' model.gradient_checkpointing_enable() (torch.utils.checkpoint per layer);
      --lora-r R wraps the model with PEFT's get_peft_model (LoraConfig r R, lora_alpha A, no
      dropout, the attention and MLP projections, as `training fit --lora-r`): only the adapters
      train and have AdamW state.

The step follows ../shared/spec/LOSSES.md (Pairwise Cringe, soft gate with gradient, sum margin,
cringe draw from the top k with the target removed), AdamW as torch.optim.AdamW with decay on
tensors of rank >= 2 only, and global-norm clipping, which is what `training fit` does.
"""

import argparse
import glob
import json
import os
import sys
import time


def tokenizer_of(hf_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))


def eos_id(hf_dir):
    with open(os.path.join(hf_dir, "config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    return eos[0] if isinstance(eos, list) else eos


def encode(tok, text, special):
    return tok.encode(text, add_special_tokens=special).ids


def cut(tok, ids, start, length, special):
    """The text of ids[start:start+length] if it re-tokenizes to exactly those ids, else None."""
    want = ids[start : start + length]
    if len(want) != length:
        return None
    text = tok.decode(want, skip_special_tokens=False)
    return text if encode(tok, text, special) == want else None


def make_pairs(a):
    tok = tokenizer_of(a.tokenizer)
    files = sorted(glob.glob(os.path.join(a.text_dir, "*.txt")))
    if not files:
        sys.exit(f"no .txt files in {a.text_dir}")
    prompt_lens = [40, 56, 64, 72]
    pairs = []
    # Late addresses are long; take one window per document, newest first.
    for path in reversed(files):
        if len(pairs) == a.pairs:
            break
        with open(path) as f:
            ids = encode(tok, f.read(), False)
        p_len = prompt_lens[len(pairs) % len(prompt_lens)]
        r_len = a.seq_len - p_len - 1  # the EOS token closes every response
        for start in range(200, len(ids) - 2 * (p_len + r_len), 17):
            prompt = cut(tok, ids, start, p_len, True)
            chosen = cut(tok, ids, start + p_len, r_len, False)
            # The rejected response is a continuation from elsewhere in the same address.
            rejected = cut(tok, ids, start + p_len + r_len + 50, r_len, False)
            if prompt and chosen and rejected:
                pairs.append({"id": f"bench{len(pairs)}", "prompt": prompt, "chosen": chosen, "rejected": rejected})
                break
    if len(pairs) != a.pairs:
        sys.exit(f"found only {len(pairs)} pairs that re-tokenize exactly")
    with open(a.out, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")


def batch_of(a, tok, eos):
    """Rows [rejected of each pair | chosen of each pair], as `training fit` lays them out."""
    import torch

    with open(a.pairs) as f:
        pairs = [json.loads(l) for l in f if l.strip()]
    rows, masks = [], []
    for side in ("rejected", "chosen"):
        for p in pairs:
            prompt = encode(tok, p["prompt"], True)
            resp = encode(tok, p[side], False) + [eos]
            rows.append(prompt + resp)
            masks.append([0] * len(prompt) + [1] * len(resp))
    if len({len(r) for r in rows}) != 1:
        sys.exit(f"sequences differ in length: {sorted({len(r) for r in rows})}")
    return len(pairs), torch.tensor(rows), torch.tensor(masks, dtype=torch.float32)


def pairwise_cringe(logits, ids, mask, pairs, a, gen):
    """LOSSES.md Pairwise Cringe over [2P, T, V] logits; returns the loss and statistics."""
    import torch
    import torch.nn.functional as F

    lg = logits[:, :-1]
    tgt = ids[:, 1:]
    m = mask[:, 1:]
    n_tok = m.sum(1)
    # Target log-probs through cross_entropy (log-softmax + gather, the usual eager idiom).
    logp = -F.cross_entropy(lg.reshape(-1, lg.size(-1)), tgt.reshape(-1), reduction="none").view_as(m)
    logp_sum = (logp * m).sum(1)
    lw, ll = logp_sum[pairs:], logp_sum[:pairs]
    ce_w = -lw / n_tok[pairs:]
    margin = lw - ll
    gate = torch.sigmoid((a.b - margin) / a.tau)

    # Cringe on the rejected rows: k candidates = top k+1 without the target.
    neg = lg[:pairs]
    neg_t = tgt[:pairs]
    s_minus = neg.gather(-1, neg_t.unsqueeze(-1)).squeeze(-1)
    top_v, top_i = neg.topk(a.k + 1, dim=-1)
    is_t = top_i.eq(neg_t.unsqueeze(-1))
    drop = torch.where(is_t.any(-1, keepdim=True), is_t.long().argmax(-1, keepdim=True), torch.full_like(neg_t.unsqueeze(-1), a.k))
    slots = torch.arange(a.k)
    keep = slots + (slots >= drop).long()
    cand = top_v.gather(-1, keep)
    u = torch.rand(neg_t.shape, generator=gen)
    cdf = cand.detach().softmax(-1).cumsum(-1)
    j = (cdf < u.unsqueeze(-1)).sum(-1, keepdim=True).clamp_max(a.k - 1)
    s_plus = cand.gather(-1, j).squeeze(-1)
    cr = F.softplus(s_minus - s_plus)
    cringe = (cr * m[:pairs]).sum(1) / n_tok[:pairs]

    loss = (ce_w + a.alpha * gate * cringe).mean()
    stats = {
        "loss": loss.item(),
        "ce": ce_w.mean().item(),
        "cringe": cringe.mean().item(),
        "gate": gate.mean().item(),
        "margin": margin.mean().item(),
        "chosen_logp": lw.mean().item(),
        "rejected_logp": ll.mean().item(),
    }
    return loss, stats


def run(a):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tok = tokenizer_of(a.model)
    pairs, ids, mask = batch_of(a, tok, eos_id(a.model))
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.train()
    model.config.use_cache = False
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if a.lora_r:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=0.0,
                                                 target_modules=targets, bias="none"))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": a.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps)
    gen = torch.Generator().manual_seed(a.seed)
    seconds, losses, first = [], [], None
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16")
    attention = torch.ones_like(ids)
    for step in range(a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            # transformers casts the logits to fp32 before any loss (as `training fit` does).
            logits = model(input_ids=ids, attention_mask=attention).logits.float()
            loss, stats = pairwise_cringe(logits, ids, mask, pairs, a, gen)
        del logits
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, a.grad_clip).item()
        opt.step()
        dt = time.perf_counter() - t0
        seconds.append(dt)
        losses.append(stats["loss"])
        stats.update(step=step + 1, grad_norm=grad_norm, seconds=dt, tokens_per_s=ids.numel() / dt)
        first = first or stats
        print(json.dumps(stats), file=sys.stderr, flush=True)
    print(json.dumps({"peer": "pytorch", "steps": a.steps, "tokens_per_step": ids.numel(), "step_seconds": seconds, "losses": losses, "first": first}))


def maxrss(out, cmd):
    import resource
    import subprocess

    rc = subprocess.run(cmd).returncode
    with open(out, "w") as f:
        f.write(f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\n")
    sys.exit(rc)


def main():
    if len(sys.argv) > 3 and sys.argv[1] == "maxrss" and sys.argv[3] == "--":
        return maxrss(sys.argv[2], sys.argv[4:])
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pairs")
    p.add_argument("out")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--text-dir", required=True)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--pairs", required=True)
    r.add_argument("--steps", type=int, default=4)
    r.add_argument("--threads", type=int, default=os.cpu_count())
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--alpha", type=float, default=0.01)
    r.add_argument("--b", type=float, default=0.0)
    r.add_argument("--tau", type=float, default=1.0)
    r.add_argument("--k", type=int, default=5)
    r.add_argument("--lr", type=float, default=1e-5)
    r.add_argument("--beta1", type=float, default=0.9)
    r.add_argument("--beta2", type=float, default=0.98)
    r.add_argument("--eps", type=float, default=1e-8)
    r.add_argument("--weight-decay", type=float, default=0.01)
    r.add_argument("--grad-clip", type=float, default=1.0)
    r.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    r.add_argument("--gradient-checkpointing", action="store_true")
    r.add_argument("--lora-r", type=int, default=0)
    r.add_argument("--lora-alpha", type=float, default=8.0)
    a = ap.parse_args()
    make_pairs(a) if a.cmd == "pairs" else run(a)


if __name__ == "__main__":
    main()
