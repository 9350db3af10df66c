#!/bin/sh
# vs_hf.sh: the engine against Hugging Face transformers on the same GPU,
# in one call, both on the Llama-3-8B shape with random bf16 weights:
# sepd's ingestion (one stream, 512-token chunks; 64 streams, 64-token
# chunks; sepllm a=4 s=64 w=256 c=800) and greedy decode against HF's
# full-attention prefill of 4096 tokens and its one-token-per-step loop
# with a KV cache; prints each figure and the ratios. A benchmark, not a
# test: run from a tree built with CUDA, on the GPU machine (python3 with
# torch and transformers).
#   bench/vs_hf.sh
set -eu
cd "$(dirname "$0")/.."
one=$(bench/gpu_bench --synthetic llama3-8b --streams 1 --tokens 8192 --chunk 512 --steps 512)
many=$(bench/gpu_bench --synthetic llama3-8b --streams 64 --tokens 1024 --chunk 64 --steps 0)
hf=$(python3 bench/hf_bench.py --prefill 4096 --steps 32 2>/dev/null | tail -n 1)
printf '%s\n%s\n%s\n' "$one" "$many" "$hf"
rate() { sed -n "s/$1 \([0-9.]*\) tokens\/s.*/\1/p"; }
ing1=$(echo "$one" | rate '^ingestion:.*chunks of [0-9]*:')
dec=$(echo "$one" | rate '^greedy decode[^:]*:')
ing64=$(echo "$many" | rate '^ingestion:.*chunks of [0-9]*:')
pre=$(echo "$hf" | rate '.*prefill [0-9]* tokens')
step=$(echo "$hf" | rate '.*one token per step')
awk -v a="$ing1" -v b="$ing64" -v c="$dec" -v p="$pre" -v s="$step" 'BEGIN {
    printf "ratios against HF: one stream %.2fx its prefill, 64 streams %.2fx, decode %.1fx its one-token steps\n", a / p, b / p, c / s }'
