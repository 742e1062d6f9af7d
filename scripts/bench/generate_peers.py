"""Peers for scripts/bench-generate: onnxruntime-genai and Hugging Face transformers `generate` on
the same prompts and options as `engine generate`, plus the machine's measured sgemm peak.

Usage (the bash driver calls these):
  generate_peers.py prompts OUT.jsonl COUNT             # write COUNT chat prompts (DATA.md records)
  generate_peers.py genai GENAI_DIR PROMPTS HF_DIR --batch B --n N --new T --threads K [--device cuda]
  generate_peers.py hf HF_DIR PROMPTS --batch B --n N --new T --threads K
  generate_peers.py sgemm --threads K
  generate_peers.py genai-job GENAI_DIR PROMPTS HF_DIR --batch ROWS --n N --new T --threads K
  generate_peers.py hf-job HF_DIR PROMPTS --batch PROMPTS_PER_CALL --n N --new T --threads K
  generate_peers.py gemm-peaks --threads K              # fp32 and int8 GEMM, 1024x576x1536
  generate_peers.py raw-prompts HF_DIR SOTU_DIR OUT.jsonl COUNT TOKENS   # text prompts of ~TOKENS
Each timing subcommand prints one JSON line: {"peer", "tokens", "seconds", "tokens_per_s"}.
Sampling: T = 0.7, top-k 50, every response exactly T new tokens (EOS suppressed, as --ignore-eos).
The *-job commands are the real job of `scripts/bench-generate --job`: EOS ends a response, and
generated tokens count up to and including it (as `engine generate` counts them).
"""

import argparse
import json
import os
import sys
import time

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis simply.",
    "Give three tips for learning a language.", "What is a prime number?", "Describe a cat to a child.",
    "Why is the sky blue?", "Suggest a name for a bakery.", "How do vaccines work?",
    "What is the Pythagorean theorem?", "List four kinds of clouds.", "How do I boil an egg?",
    "What causes the seasons?", "Write a short poem about rain.", "What does a compiler do?",
    "Tell me a fun fact about octopuses.",
]


def write_prompts(out, count):
    with open(out, "w") as f:
        for i in range(count):
            q = QUESTIONS[i % len(QUESTIONS)]
            f.write(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": q}]}) + "\n")


def load_prompts(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def rendered(hf_dir, prompts):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(hf_dir)
    return tok, [tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True) for p in prompts]


def report(peer, tokens, seconds):
    print(json.dumps({"peer": peer, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}))


def genai(a):
    import onnxruntime_genai as og
    prompts = load_prompts(a.prompts)
    # Same thread count as the others: genai reads it from its config's session options.
    path = os.path.join(a.model, "genai_config.json")
    with open(path) as f:
        conf = json.load(f)
    conf["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = a.threads
    with open(path, "w") as f:
        json.dump(conf, f, indent=2)
    cfg = og.Config(a.model)
    cfg.clear_providers()
    if a.device == "cuda":
        cfg.append_provider("cuda")
    model = og.Model(cfg)
    tok = og.Tokenizer(model)
    # The chat template rendered by transformers (the same string every peer tokenizes).
    _, texts = rendered(a.hf, prompts)
    texts = [t for t in texts for _ in range(a.n)]
    total, seconds = 0, 0.0
    for start in range(0, len(texts), a.batch):
        chunk = texts[start:start + a.batch]
        t0 = time.perf_counter()
        enc = tok.encode_batch(chunk)
        longest = max(len(tok.encode(t)) for t in chunk)
        params = og.GeneratorParams(model)
        # min_length = max_length suppresses EOS, so every row gets exactly `new` tokens.
        params.set_search_options(do_sample=True, temperature=0.7, top_k=50, top_p=1.0,
                                  max_length=longest + a.new, min_length=longest + a.new,
                                  batch_size=len(chunk), random_seed=0)
        gen = og.Generator(model, params)
        gen.append_tokens(enc)
        while not gen.is_done():
            gen.generate_next_token()
        seconds += time.perf_counter() - t0
        total += len(chunk) * a.new
    report("onnxruntime-genai", total, seconds)


def hf(a):
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    prompts = load_prompts(a.prompts)
    tok, texts = rendered(a.model, prompts)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    torch.manual_seed(0)
    total, seconds = 0, 0.0
    for start in range(0, len(texts), a.batch):
        chunk = texts[start:start + a.batch]
        t0 = time.perf_counter()
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=0.7, top_k=50, max_new_tokens=a.new,
                                 min_new_tokens=a.new, num_return_sequences=a.n, pad_token_id=tok.pad_token_id)
        seconds += time.perf_counter() - t0
        total += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    report("transformers", total, seconds)


def sgemm(a):
    # Threads must be set before numpy loads its BLAS.
    import numpy as np
    n = 1024
    x = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(4):
            x @ x
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t0))
    print(json.dumps({"sgemm_gflops": best / 1e9}))


def eos_ids(hf_dir):
    """EOS ids of the model (config and generation config), as the engine's token policy."""
    ids = set()
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(hf_dir, name)
        if os.path.exists(path):
            e = json.load(open(path)).get("eos_token_id")
            ids.update(e if isinstance(e, list) else [] if e is None else [e])
    return ids


def count_new(tokens, eos):
    """New tokens up to and including the first EOS (all of them when there is none)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return i + 1
    return len(tokens)


def genai_job(a):
    """onnxruntime-genai, static batches of `batch` rows (each prompt repeated n times: its
    num_return_sequences serves beam search only); a batch runs until its longest row ends."""
    import onnxruntime_genai as og
    prompts = load_prompts(a.prompts)
    path = os.path.join(a.model, "genai_config.json")
    with open(path) as f:
        conf = json.load(f)
    conf["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = a.threads
    with open(path, "w") as f:
        json.dump(conf, f, indent=2)
    cfg = og.Config(a.model)
    cfg.clear_providers()
    model = og.Model(cfg)
    tok = og.Tokenizer(model)
    eos = eos_ids(a.hf)
    _, texts = rendered(a.hf, prompts)
    texts = [t for t in texts for _ in range(a.n)]
    total, seconds = 0, 0.0
    for start in range(0, len(texts), a.batch):
        chunk = texts[start:start + a.batch]
        t0 = time.perf_counter()
        enc = tok.encode_batch(chunk)
        lengths = [len(tok.encode(t)) for t in chunk]
        longest = max(lengths)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=True, temperature=0.7, top_k=50, top_p=1.0,
                                  max_length=longest + a.new, batch_size=len(chunk), random_seed=0)
        gen = og.Generator(model, params)
        gen.append_tokens(enc)
        while not gen.is_done():
            gen.generate_next_token()
        seconds += time.perf_counter() - t0
        for i in range(len(chunk)):
            seq = list(gen.get_sequence(i))
            total += count_new(seq[longest:], eos)
    report("onnxruntime-genai", total, seconds)


def hf_job(a):
    """transformers generate: `batch` prompts per call, each with num_return_sequences = n."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    prompts = load_prompts(a.prompts)
    tok, texts = rendered(a.model, prompts)
    tok.padding_side = "left"
    eos = eos_ids(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    torch.manual_seed(0)
    total, seconds = 0, 0.0
    for start in range(0, len(texts), a.batch):
        chunk = texts[start:start + a.batch]
        t0 = time.perf_counter()
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=0.7, top_k=50, max_new_tokens=a.new,
                                 num_return_sequences=a.n, pad_token_id=tok.pad_token_id)
        seconds += time.perf_counter() - t0
        p = enc["input_ids"].shape[1]
        total += sum(count_new(row[p:].tolist(), eos) for row in out)
    report("transformers", total, seconds)


def gemm_peaks(a):
    """fp32 and int8 matmul peaks with torch at `threads` threads, on the decode step's shape
    class (1024 x 576 @ 576 x 1536): the best of several timed rounds. int8 is fbgemm's quantized
    linear (u8 activations x s8 weights, the VNNI kernel); `torch._int_mm` has no fast CPU kernel
    (14 s a call here)."""
    import warnings
    import torch
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    m, k, n = 1024, 576, 1536
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    wt = w.t().contiguous()

    def best(f, reps=4, rounds=4):
        f()
        top = 0.0
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            top = max(top, reps * 2 * m * k * n / (time.perf_counter() - t0))
        return top / 1e9

    out = {"sgemm_gflops": best(lambda: x @ wt)}
    try:
        xq = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)
        packed = torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(w, 0.05, 0, torch.qint8), None)
        out["int8_gops"] = best(lambda: torch.ops.quantized.linear(xq, packed, 0.1, 128))
    except Exception as e:  # no fbgemm in this torch build
        out["int8_error"] = str(e)
    print(json.dumps(out))


def raw_prompts(a):
    """COUNT raw-text prompts of about TOKENS tokens each (State of the Union windows), for the
    fixed-shape comparison with llama-batched-bench."""
    from transformers import AutoTokenizer
    import glob
    hf_dir, sotu, out, count, tokens = a.args[0], a.args[1], a.args[2], int(a.args[3]), int(a.args[4])
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = []
    for f in sorted(glob.glob(os.path.join(sotu, "*.txt")))[:40]:
        ids += tok(open(f).read(), add_special_tokens=False)["input_ids"]
    with open(out, "w") as f:
        for i in range(count):
            text = tok.decode(ids[i * 997: i * 997 + tokens])
            f.write(json.dumps({"id": f"raw{i}", "prompt": text}) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("args", nargs="*")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(a.threads))
    if a.cmd == "prompts":
        write_prompts(a.args[0], int(a.args[1]))
    elif a.cmd == "genai":
        a.model, a.prompts, a.hf = a.args
        genai(a)
    elif a.cmd == "hf":
        a.model, a.prompts = a.args
        hf(a)
    elif a.cmd == "sgemm":
        sgemm(a)
    elif a.cmd == "genai-job":
        a.model, a.prompts, a.hf = a.args
        genai_job(a)
    elif a.cmd == "hf-job":
        a.model, a.prompts = a.args
        hf_job(a)
    elif a.cmd == "gemm-peaks":
        gemm_peaks(a)
    elif a.cmd == "raw-prompts":
        raw_prompts(a)
    else:
        sys.exit(f"unknown command {a.cmd}")


if __name__ == "__main__":
    main()
