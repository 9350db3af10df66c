#!/bin/sh
# plot_fig7.sh: running perplexity and cache size against tokens for full
# attention, StreamingLLM and SepLLM on Jack Sheppard with books-llama-16m
# (the shape of the paper's Figure 7 and Table 5). Writes docs/fig7.png
# and prints each method's summary. Needs gnuplot; run from a built tree.
#   bench/plot_fig7.sh [TOKENS]      default 20000
set -eu
cd "$(dirname "$0")/.."
S=${SEP_SHARED:-../shared}
n=${1:-20000}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { # NAME OPTIONS...
    name=$1
    shift
    echo "$name: $(ctl/sepctl eval --json "$@" --max-tokens "$n" \
        --nll-out "$out/$name.nll" --kv-out "$out/$name.kv" <"$S/texts/jack_sheppard.txt")"
    # token, running perplexity, cache size
    paste "$out/$name.nll" "$out/$name.kv" |
        awk '{ s += $1; if (NR % 50 == 0) printf "%d %.4f %d\n", NR, exp(s / NR), $2 }' >"$out/$name.dat"
}
run full --method full
run streaming --method streaming --init 4 --capacity 324
run sepllm --method sepllm --init 4 --seps 32 --window 224 --capacity 324
mkdir -p docs
gnuplot <<GP
set terminal pngcairo size 1100,420 font ",10"
set output "docs/fig7.png"
set multiplot layout 1,2 title "books-llama-16m on Jack Sheppard ($n tokens): full attention, StreamingLLM (a=4, c=324), SepLLM (a=4, s=32, w=224, c=324)"
set xlabel "tokens"
set ylabel "running perplexity"
set logscale y
set key top left
plot "$out/full.dat" using 1:2 with lines lw 2 title "full", \
     "$out/streaming.dat" using 1:2 with lines lw 2 title "StreamingLLM", \
     "$out/sepllm.dat" using 1:2 with lines lw 2 title "SepLLM"
unset logscale y
set ylabel "KV cache entries"
set logscale y
plot "$out/full.dat" using 1:3 with lines lw 2 title "full", \
     "$out/streaming.dat" using 1:3 with lines lw 2 title "StreamingLLM", \
     "$out/sepllm.dat" using 1:3 with points pt 7 ps 0.2 title "SepLLM"
unset multiplot
GP
echo "wrote docs/fig7.png"
