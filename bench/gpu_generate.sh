#!/bin/sh
# gpu_generate.sh: decode speed through sepd at full size, greedy against
# sampled, on the GPU machine. A benchmark, not a test.
#
#   bench/gpu_generate.sh BIN_DIR OUT_DIR [TOKENS]
#
# BIN_DIR holds sepd, sepd-worker, sepctl and sepd-cuda.so (built here
# with CUDA), and make-8b-folder.py (../shared/tools). Writes a
# Llama-3.1-8B-shaped folder (random bf16 weights, the books tokenizer
# padded to the vocabulary of 128,256) to /tmp/m8b unless it is there,
# starts sepd on it (CUDA, bf16, one stage), feeds 4,000 bytes of
# Persuasion to a session and times `sepctl generate -n TOKENS` (default
# 512) in each mode below, the modes taking turns, three rounds; the best
# round of each is reported, with its share of greedy's tokens/s. Every
# token is picked on the GPU in every mode; the cache is at its capacity
# (c = 800) before the first round, so each step costs the same.
set -u
bin=$1
out=$2
n=${3:-512}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/gpu_lib.sh"
tmp=$(mktemp -d)
export SEPD_SOCKET="ipc://$tmp/sepd.sock"
t0=$(date +%s)
"$SEPD" --foreground --socket "$SEPD_SOCKET" --store "$tmp/store" --model "$m8b" \
    --device cuda --precision bf16 --config /dev/null >"$tmp/log" 2>&1 &
d=$!
trap 'kill $d 2>/dev/null; wait $d; cp "$tmp/log" "$out/sepd_generate.log"; rm -rf "$tmp"' EXIT
until "$SEPCTL" ls >/dev/null 2>&1; do kill -0 $d || { tail "$tmp/log"; exit 1; }; sleep 0.5; done
echo "sepd serves the 8B folder after $(( $(date +%s) - t0 )) s"
"$SEPCTL" open g >/dev/null
head -c 4000 "$here/books/persuasion.txt" | "$SEPCTL" feed g >/dev/null
"$SEPCTL" flush g >/dev/null
"$SEPCTL" generate g -n 64 --temperature 0 >/dev/null # warm up

now() { date +%s.%N; }
modes="greedy sampled topk_penalties min_p"
opts() {
    case $1 in
    greedy) echo "--temperature 0" ;;
    sampled) echo "--temperature 0.8 --top-p 0.95" ;;
    topk_penalties) echo "--temperature 0.8 --top-k 40 --top-p 0.95 --repetition-penalty 1.1 \
        --presence-penalty 0.3 --frequency-penalty 0.2 --penalty-window 256" ;;
    min_p) echo "--temperature 0.8 --min-p 0.05" ;;
    esac
}
for round in 1 2 3; do
    for m in $modes; do
        t0=$(now)
        "$SEPCTL" generate g -n "$n" $(opts $m) --json >"$tmp/$m.json" || exit 1
        t1=$(now)
        got=$(grep -c '"token"' "$tmp/$m.json")
        [ "$got" = "$n" ] || { echo "$m: $got tokens of $n"; exit 1; }
        awk -v m="$m" -v t0="$t0" -v t1="$t1" -v n="$n" \
            'BEGIN { printf "%s %.2f\n", m, n / (t1 - t0) }' >>"$tmp/rates"
    done
done
echo "generate -n $n through sepd, 8B shape, bf16, one H200 stage (best of 3 rounds):"
for m in $modes; do
    best=$(awk -v m="$m" '$1 == m && $2 > b { b = $2 } END { print b }' "$tmp/rates")
    [ $m = greedy ] && greedy=$best
    awk -v m="$m" -v b="$best" -v g="$greedy" -v o="$(opts $m | tr -s ' ')" \
        'BEGIN { printf "  %-15s %7.1f tokens/s  %5.1f%% of greedy   (%s)\n", m, b, 100 * b / g, o }'
done
echo "all rounds:"
sed 's/^/  /' "$tmp/rates"
