#!/bin/sh
# evict_bench.sh: the cost of eviction (issue 17). tokens/s of `sepctl
# eval` on stories15m, CPU, 120 KB of Persuasion, every token scored:
# StreamingLLM c=256 (a=4, w=252) against full attention over 512 tokens
# (the same average span), SepLLM a=4 s=16 w=32 c=64 against full over
# 128. Eviction at dense speed is a ratio of at least 0.9. Best of RUNS
# runs each (the machine is shared: run it when `uptime` shows it quiet).
# A benchmark, not a test.
#   bench/evict_bench.sh [RUNS] [THREADS]     (run from a built tree)
set -eu
cd "$(dirname "$0")/.."
runs=${1:-3}
threads=${2:-$(nproc)}
model=${SEPD_BENCH_MODEL:-../shared/models/stories15m}
text=${SEPD_BENCH_TEXT:-../shared/texts/persuasion.txt}
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
head -c 122880 "$text" >"$tmp"
echo "machine: $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1)"
echo "load before: $(uptime | sed 's/.*load average: //')"

# best NAME ARGS...: the best tokens/s of runs runs, into $best
best() {
    name=$1
    shift
    best=0
    for run in $(seq "$runs"); do
        out=$(ctl/sepctl eval --json --model "$model" --threads "$threads" "$@" <"$tmp")
        tps=$(echo "$out" | sed -n 's/.*"tokens_per_s": *\([0-9.]*\).*/\1/p')
        tokens=$(echo "$out" | sed -n 's/.*"tokens": *\([0-9]*\).*/\1/p')
        ppl=$(echo "$out" | sed -n 's/.*"ppl": *\([0-9.e+-]*\).*/\1/p')
        echo "  $name run $run: $tokens tokens, ppl $ppl, $tps tokens/s"
        best=$(awk -v a="$best" -v b="$tps" 'BEGIN { print (b > a) ? b : a }')
    done
    echo "$name: best $best tokens/s"
}

best "full 512" --method full --max-tokens 512
full512=$best
best "streaming c=256" --method streaming --init 4 --window 252 --capacity 256
stream=$best
best "full 128" --method full --max-tokens 128
full128=$best
best "sepllm a=4 s=16 w=32 c=64" --method sepllm --init 4 --seps 16 --window 32 --capacity 64
sep=$best
echo "load after: $(uptime | sed 's/.*load average: //')"
awk -v s="$stream" -v f="$full512" -v p="$sep" -v g="$full128" 'BEGIN {
    printf "streaming c=256 / full 512: %.3f (target >= 0.9)\n", s / f
    printf "sepllm c=64 / full 128:     %.3f (target >= 0.9)\n", p / g }'
