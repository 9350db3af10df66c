#!/bin/sh
# gpu_evict.sh: eviction at full size on the GPU machine (issue 17).
#
#   bench/gpu_evict.sh BIN_DIR OUT_DIR [CHUNK]
#
# BIN_DIR holds gpu_bench and sepd-cuda.so (built here with CUDA) and
# make-8b-folder.py (../shared/tools); gpu_lib.sh writes the
# Llama-3.1-8B-shaped folder (random bf16 weights) to /tmp/m8b unless it
# is there. Then `gpu_bench --evict` on it, CUDA, bf16: StreamingLLM c=800
# (a=4) and SepLLM at the defaults (a=4 s=64 w=256 c=800), each timed once
# its cache is full, against full attention at the same average span
# (1600 and 1124 tokens from an empty cache), for one stream and for 64,
# chunks of CHUNK (512) tokens a stream. A benchmark, not a test.
set -u
bin=$1
out=$2
chunk=${3:-512}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/gpu_lib.sh"
"$bin/gpu_bench" --model "$m8b" --device cuda --precision bf16 --evict --streams 1 \
    --streams 64 --chunk "$chunk" 2>&1 | tee "$out/gpu_evict.txt"
