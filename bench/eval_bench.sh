#!/bin/sh
# eval_bench.sh: tokens/s of `sepctl eval` (full attention) on the bundled
# books-llama-16m for 4000 tokens of Persuasion, next to the fp32 GEMM
# rate OpenBLAS reaches on this machine. A benchmark, not a test.
#   bench/eval_bench.sh [THREADS]     (run from a built tree)
set -eu
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
echo "machine: $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)"
bench/gemm_rate 512 384 1024
bench/gemm_rate 512 384 8192
best=
for run in 1 2 3; do
    out=$(ctl/sepctl eval --json --method full --threads "$threads" --max-tokens 4000 <books/persuasion.txt)
    echo "run $run: $out"
    tps=$(echo "$out" | sed -n 's/.*"tokens_per_s": *\([0-9.]*\).*/\1/p')
    best=$(awk -v a="${best:-0}" -v b="$tps" 'BEGIN { print (b > a) ? b : a }')
done
echo "sepctl eval full, 4000 tokens, $threads threads: best $best tokens/s"
