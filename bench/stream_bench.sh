#!/bin/sh
# stream_bench.sh: the SepLLM cache's speed on the CPU. A benchmark, not a
# test; run from a built tree.
#   bench/stream_bench.sh chunked   chunked vs --per-token tokens/s, sepllm
#                                   a=4 s=32 w=224 c=324, books-llama-16m
#   bench/stream_bench.sh million   1M tokens (the three texts, repeated):
#                                   ppl, avg_kv, peak RSS, tokens/s
set -eu
cd "$(dirname "$0")/.."
S=${SEP_SHARED:-../shared}
cache="--method sepllm --init 4 --seps 32 --window 224 --capacity 324"
case "${1:-chunked}" in
chunked)
    for mode in "" --per-token; do
        out=$(ctl/sepctl eval --json $cache $mode --max-tokens 4000 <books/persuasion.txt)
        echo "sepllm a4 s32 w224 c324 ${mode:-chunked}: $out"
    done
    ;;
million)
    text=$(mktemp)
    trap 'rm -f "$text"' EXIT
    for i in 1 2; do cat "$S/texts/persuasion.txt" "$S/texts/jack_sheppard.txt" "$S/texts/wikitext2_test.txt"; done >"$text"
    echo "sepllm a4 s32 w224 c324, 1M tokens: $(ctl/sepctl eval --json $cache --max-tokens 1000000 <"$text")"
    ;;
*)
    echo "usage: bench/stream_bench.sh chunked|million" >&2
    exit 2
    ;;
esac
