#!/usr/bin/env bash
# The real generation job over three exports of SmolLM2-135M-Instruct, alternated in rounds on one
# machine: fp32, `--weights int8`, and `--weights int8 --kv-cache int8` (decode attention by the engine's own
# operator, the export's default; scales from `engine kv-scales`
# on CALIB, 16 prompt records). Prints tokens/s, peak RSS and load per run, and whether the int8-cache
# output at --batch-size 16 equals the default batch's (BENCHMARKS.md "An int8 KV cache").
# Usage: scripts/bench/int8_job.sh [ROUNDS] [CALIB.jsonl]
#   (the BENCHMARKS table: 2 rounds, CALIB = the first 16 lines of a run's data/test.jsonl)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-2}
B=target/bench-int8-job
M=models/smollm2-135m-instruct
JOB=scripts/bench/job-prompts.jsonl
mkdir -p "$B"
CALIB=${2:-}
if [ -z "$CALIB" ]; then CALIB="$B/calib.jsonl"; head -16 "$JOB" > "$CALIB"; fi
E=target/release/engine
X=target/release/exports
[ -f "$B/fp32/model.onnx" ] || $X onnx --model $M --out "$B/fp32" --last-logits-only
[ -f "$B/int8/model.onnx" ] || $X onnx --model $M --out "$B/int8" --last-logits-only --weights int8
$E kv-scales --model "$B/fp32" --prompts "$CALIB" --out "$B/kv-scales.safetensors" --limit 16 --threads 2
$X onnx --model $M --out "$B/int8-kv8" --last-logits-only --weights int8 --kv-cache int8 \
    --kv-scales "$B/kv-scales.safetensors"
gen() { # MODEL OUT [flags…]
    local m=$1 o=$2; shift 2
    rm -f "$o"  # engine generate refuses to overwrite a finished output (it resumes with --resume)
    /usr/bin/time -f "%M" -o "$o.rss" $E generate --model "$m" --prompts $JOB --out "$o" --n 4 \
        --max-new-tokens 128 --threads 2 --no-timings --temperature 0.7 --top-k 50 "$@" 2> "$o.log"
    echo "$(basename "$m") $(grep -o '([0-9.]* tokens/s)' "$o.log") peak RSS $(( $(cat "$o.rss") / 1024 )) MiB, load $(cut -d' ' -f1 /proc/loadavg)"
}
for r in $(seq "$ROUNDS"); do
    echo "round $r"
    for m in fp32 int8 int8-kv8; do gen "$B/$m" "$B/$m-$r.jsonl"; done
done
gen "$B/int8-kv8" "$B/int8-kv8-b16.jsonl" --batch-size 16
cmp -s "$B/int8-kv8-b16.jsonl" "$B/int8-kv8-1.jsonl" && echo "int8 cache: --batch-size 16 output = default batch's" \
    || { echo "int8 cache: --batch-size 16 output DIFFERS from the default batch's"; exit 1; }
