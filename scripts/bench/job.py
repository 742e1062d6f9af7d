"""The real-job generation benchmark (`scripts/bench-generate --job`), run by that driver once
everything is built: `engine generate` at its default batch size (and --batch-size 16, the old
default) on the 80-prompt chat file, n 4, up to 128 new tokens with EOS, T 0.7, top-k 50; the
peers on the same prompts (onnxruntime-genai at static batches of 16 and 32 rows, transformers);
llama.cpp's `llama-batched-bench` (F32, Q8_0) with `engine generate` on the same fixed shape
(64-token raw prompts, 128 new tokens, EOS ignored). Each command runs under /usr/bin/time for its
peak RSS, with the 1-minute load average read after it. Writes the "Real job" section of
BENCHMARKS.md and prints it.

Usage: job.py --threads K --engine BIN --ours DIR [--int8 DIR] --hf DIR --genai DIR
              --prompts FILE --raw-prompts FILE [--llama-bin DIR --gguf-f32 F --gguf-q8 F]
              --work DIR [--skip-peers] [--skip-hf]
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys

PY = sys.executable
PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "generate_peers.py")
SAMPLING = ["--temperature", "0.7", "--top-k", "50"]


def loadavg():
    return float(open("/proc/loadavg").read().split()[0])


def timed(cmd, env=None):
    """Run `cmd` under /usr/bin/time; returns (stdout, stderr, peak RSS in MiB, load average)."""
    p = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M"] + cmd, capture_output=True, text=True,
                       env=env)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    rss = int(re.findall(r"MAXRSS_KB (\d+)", p.stderr)[-1]) / 1024
    return p.stdout, p.stderr, rss, loadavg()


def ours(a, name, model, prompts, extra, n, new, work):
    out = os.path.join(work, f"out-{name}.jsonl")
    if os.path.exists(out):
        os.remove(out)
    cmd = [a.engine, "generate", "--model", model, "--prompts", prompts, "--out", out, "--n", str(n),
           "--max-new-tokens", str(new), "--threads", str(a.threads), "--no-timings"] + SAMPLING + extra
    _, err, rss, load = timed(cmd)
    line = [l for l in err.splitlines() if l.startswith("generated ")][-1]
    tps = float(re.search(r"\(([0-9.]+) tokens/s\)", line).group(1))
    batch = re.search(r"batch size (\d+( \(auto\))?)", line).group(1)
    r = {"name": name, "tokens_per_s": tps, "batch": batch, "rss_mib": rss, "load": load, "out": out,
         "summary": line}
    print(json.dumps(r), file=sys.stderr)
    return r


def peer(a, kind, model, prompts, batch, n, new, extra=()):
    cmd = [PY, PEERS, kind, model, prompts, *extra, "--batch", str(batch), "--n", str(n), "--new", str(new),
           "--threads", str(a.threads)]
    out, _, rss, load = timed(cmd)
    r = json.loads(out.strip().splitlines()[-1])
    r.update({"rss_mib": rss, "load": load, "batch": batch})
    print(json.dumps(r), file=sys.stderr)
    return r


def llama(a, gguf, npl, npp, ntg):
    """llama-batched-bench rows: {B: (decode tokens/s, generated tokens/s with prefill)}."""
    env = dict(os.environ, LD_LIBRARY_PATH=a.llama_bin)
    cmd = [os.path.join(a.llama_bin, "llama-batched-bench"), "-m", gguf, "-c", "16384", "-b", "2048",
           "-ub", "512", "-npp", str(npp), "-ntg", str(ntg), "-npl", ",".join(map(str, npl)),
           "-t", str(a.threads), "-tb", str(a.threads)]
    out, err, rss, load = timed(cmd, env)
    rows = {}
    for line in (out + err).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            pp, tg, b = int(cells[0]), int(cells[1]), int(cells[2])
            s_tg, t = float(cells[7]), float(cells[8])
            rows[b] = {"decode": s_tg, "with_prefill": b * tg / t}
    r = {"rows": rows, "rss_mib": rss, "load": load}
    print(json.dumps({"llama": gguf, **r}), file=sys.stderr)
    return r


def params(hf):
    c = json.load(open(os.path.join(hf, "config.json")))
    h, l, f, v = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    return l * (2 * h * h + 2 * h * kv + 3 * h * f) + h * v


def main():
    ap = argparse.ArgumentParser()
    for k in ("engine", "ours", "hf", "genai", "prompts", "raw-prompts", "work"):
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--int8")
    ap.add_argument("--llama-bin")
    ap.add_argument("--gguf-f32")
    ap.add_argument("--gguf-q8")
    ap.add_argument("--skip-peers", action="store_true")
    # transformers is the slowest peer by far (minutes on this job) and no target is set against it.
    ap.add_argument("--skip-hf", action="store_true")
    # A smoke run (checks the benchmark end to end on a loaded machine, not a result): the first
    # LIMIT prompts, NEW tokens, and the fixed shape at NPL sequences of NTG tokens.
    ap.add_argument("--limit", type=int)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--npl", default="16,64")
    ap.add_argument("--ntg", type=int, default=128)
    a = ap.parse_args()
    npl = [int(x) for x in a.npl.split(",")]
    if a.limit:
        lines = open(a.prompts).read().splitlines()[:a.limit]
        a.prompts = os.path.join(a.work, f"job-prompts-{a.limit}.jsonl")
        open(a.prompts, "w").write("\n".join(lines) + "\n")
        raw = open(a.raw_prompts).read().splitlines()[:max(npl)]
        a.raw_prompts = os.path.join(a.work, f"raw-{max(npl)}.jsonl")
        open(a.raw_prompts, "w").write("\n".join(raw) + "\n")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    start_load = loadavg()
    peaks = json.loads(subprocess.run([PY, PEERS, "gemm-peaks", "--threads", str(a.threads)],
                                      capture_output=True, text=True, check=True).stdout)
    print(json.dumps(peaks), file=sys.stderr)
    P = params(a.hf)
    n, new = 4, a.new
    count = sum(1 for l in open(a.prompts) if l.strip())
    R = {}
    R["auto"] = ours(a, "auto", a.ours, a.prompts, [], n, new, a.work)
    R["b16"] = ours(a, "b16", a.ours, a.prompts, ["--batch-size", "16"], n, new, a.work)
    same = open(R["auto"]["out"], "rb").read() == open(R["b16"]["out"], "rb").read()
    if a.int8:
        R["int8"] = ours(a, "int8", a.int8, a.prompts, [], n, new, a.work)
        R["int8-b16"] = ours(a, "int8-b16", a.int8, a.prompts, ["--batch-size", "16"], n, new, a.work)
        same8 = open(R["int8"]["out"], "rb").read() == open(R["int8-b16"]["out"], "rb").read()
    if not a.skip_peers:
        R["genai16"] = peer(a, "genai-job", a.genai, a.prompts, 16, n, new, [a.hf])
        R["genai32"] = peer(a, "genai-job", a.genai, a.prompts, 32, n, new, [a.hf])
        if not a.skip_hf:
            R["hf"] = peer(a, "hf-job", a.hf, a.prompts, 16, n, new)
    # The fixed shape of llama-batched-bench: 64 prompts of 64 tokens, 128 new tokens, no EOS.
    L = {}
    if a.llama_bin and a.gguf_f32:
        L["f32"] = llama(a, a.gguf_f32, npl, 64, a.ntg)
    if a.llama_bin and a.gguf_q8:
        L["q8"] = llama(a, a.gguf_q8, npl, 64, a.ntg)
    S = {}
    for b in npl if L else []:
        S[b] = ours(a, f"shape-b{b}", a.ours, a.raw_prompts, ["--batch-size", str(b), "--ignore-eos"], 1, a.ntg,
                    a.work)
        if a.int8:
            S[f"int8-{b}"] = ours(a, f"shape-int8-b{b}", a.int8, a.raw_prompts,
                                  ["--batch-size", str(b), "--ignore-eos"], 1, a.ntg, a.work)

    fp32 = peaks["sgemm_gflops"]
    int8 = peaks.get("int8_gops")
    frac = lambda tps, peak: f"{100 * tps * 2 * P / (peak * 1e9):.0f} %" if peak else "–"
    row = lambda label, r, peak=fp32: (f"| {label} | {r['batch']} | {r['tokens_per_s']:.0f} | "
                                       f"{frac(r['tokens_per_s'], peak)} | {r['rss_mib']:.0f} | {r['load']:.1f} |")
    best_genai = max((R[k] for k in ("genai16", "genai32") if k in R), key=lambda r: r["tokens_per_s"],
                     default=None)
    lines = [
        "<!-- generation-job:begin -->",
        "## Real job (`scripts/bench-generate --job`)",
        "",
        ("**Smoke run (a subset on a loaded machine: checks the benchmark, not a result).** " if a.limit else "")
        + f"SmolLM2-135M-Instruct (imported), CPU, {a.threads} threads, {datetime.date.today()}; {count} chat prompts of "
        f"`scripts/bench/job-prompts.jsonl` (mixed lengths), `--n {n}`, up to {new} new tokens, EOS ends a "
        "response, sampling T 0.7, top-k 50. Generated tokens (EOS included) per second of generation, "
        "prefill included, model loading excluded. Peak RSS of the whole process; load average (1 min) "
        f"read after each run (it was {start_load:.1f} at the start). Measured in this run with torch, "
        f"{a.threads} threads, 1024×576×1536: fp32 {fp32:.0f} GFLOP/s"
        + (f", int8 {int8:.0f} GOP/s" if int8 else "")
        + f"; \"of peak\" = tokens/s × 2 × {P} / peak (fp32 peak for fp32 rows, int8 for int8 rows).",
        "",
        "| run | batch (rows) | tokens/s | of peak | peak RSS MiB | load |",
        "|---|---|---|---|---|---|",
        row("engine generate, default", R["auto"]),
        row("engine generate `--batch-size 16`", R["b16"]),
    ]
    if a.int8:
        lines += [row("engine generate int8, default", R["int8"], int8),
                  row("engine generate int8 `--batch-size 16`", R["int8-b16"], int8)]
    for k, label in (("genai16", "onnxruntime-genai 0.18, static"), ("genai32", "onnxruntime-genai 0.18, static"),
                     ("hf", "transformers generate (16 prompts × n per call)")):
        if k in R:
            lines.append(row(label, R[k]))
    lines.append("")
    lines.append(f"Outputs of the default and `--batch-size 16` runs are byte-identical: {'yes' if same else 'NO'}"
                 + (f"; int8: {'yes' if same8 else 'NO'}" if a.int8 else "") + ".")
    if best_genai:
        lines.append(f"Default vs onnxruntime-genai's best static batch ({best_genai['batch']} rows): "
                     f"{R['auto']['tokens_per_s'] / best_genai['tokens_per_s']:.2f}×"
                     + (f"; int8 vs our fp32: {R['int8']['tokens_per_s'] / R['auto']['tokens_per_s']:.2f}×"
                        if a.int8 else "") + ".")
    if L:
        lines += ["", f"Fixed shape of `llama-batched-bench` (64-token prompts, {a.ntg} new tokens, EOS ignored; "
                  "llama.cpp on random tokens, ours on 64 raw-text prompts of about 64 tokens). Generated "
                  "tokens/s with prefill (llama.cpp's decode-only S_TG in brackets):", "",
                  "| parallel sequences | engine fp32 | llama.cpp F32 | engine int8 | llama.cpp Q8_0 |",
                  "|---|---|---|---|---|"]
        for b in npl:
            cell = lambda k: (f"{L[k]['rows'][b]['with_prefill']:.0f} ({L[k]['rows'][b]['decode']:.0f})"
                              if k in L and b in L[k]["rows"] else "–")
            i8 = f"{S[f'int8-{b}']['tokens_per_s']:.0f}" if f"int8-{b}" in S else "–"
            lines.append(f"| {b} | {S[b]['tokens_per_s']:.0f} | {cell('f32')} | {i8} | {cell('q8')} |")
        lines.append("")
        lines.append("Peak RSS MiB: " + ", ".join(
            [f"llama.cpp {k} {v['rss_mib']:.0f}" for k, v in L.items()]
            + [f"engine shape b{b} {S[b]['rss_mib']:.0f}" for b in npl]) + "; load after: "
            + ", ".join(f"{k} {v['load']:.1f}" for k, v in L.items()) + ".")
    lines.append("<!-- generation-job:end -->")
    section = "\n".join(lines)
    path = "BENCHMARKS.md"
    text = open(path).read() if os.path.exists(path) else ""
    pat = re.compile(r"<!-- generation-job:begin -->.*?<!-- generation-job:end -->", re.S)
    text = pat.sub(lambda _: section, text) if pat.search(text) else text.rstrip() + "\n\n" + section + "\n"
    open(path, "w").write(text)
    json.dump({"peaks": peaks, "runs": R, "llama": L, "shape": S}, open(os.path.join(a.work, "job.json"), "w"),
              indent=1)
    print(section)


if __name__ == "__main__":
    main()
