#!/bin/sh
# gpu_load.sh: how fast sepd loads a full-size checkpoint, on the GPU machine.
#
#   bench/gpu_load.sh OUT_DIR BIN_DIR...
#
# Each BIN_DIR holds sepd, sepd-worker and sepd-cuda.so (built here with
# CUDA); the first also make-8b-folder.py (../shared/tools). Writes a
# Llama-3.1-8B-shaped folder (random bf16 weights, the books tokenizer
# padded to the vocabulary) to /tmp/m8b unless it is there, reads it once
# (the page cache is warm from then on: cat's rate is printed), then
# starts sepd of each BIN_DIR in turn, REPS times (default 2), each until
# it logs "serving on", and prints its log's start-up lines and the time
# from its start to serving. The logs go to OUT_DIR/NAME-REP.log, NAME the
# BIN_DIR's last component.
set -u
out=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)
m8b=/tmp/m8b
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
if [ ! -f "$m8b/config.json" ]; then
    t0=$(now)
    python3 "$1/make-8b-folder.py" "$m8b" "$here/models/books-llama-16m" --pad-tokenizer \
        >"$out/make8b.log" 2>&1 || { tail "$out/make8b.log"; exit 1; }
    echo "8B folder: $(du -sh "$m8b" | cut -f1) in $(since "$t0") s"
fi
bytes=$(stat -c %s "$m8b"/*.safetensors | awk '{ s += $1 } END { print s }')
t0=$(now)
cat "$m8b"/*.safetensors >/dev/null
s=$(since "$t0")
echo "page cache: cat of $bytes bytes in $s s: $(awk -v b="$bytes" -v s="$s" 'BEGIN { printf "%.1f", b / s / 1e9 }') GB/s"
for rep in $(seq "${REPS:-2}"); do
    for bin in "$@"; do
        name=$(basename "$bin")
        tmp=$(mktemp -d)
        log="$out/$name-$rep.log"
        t0=$(now)
        SEPD_CUDA_MODULE=$bin/sepd-cuda.so "$bin/sepd" --foreground \
            --socket "ipc://$tmp/sepd.sock" --store "$tmp/store" --model "$m8b" \
            --device cuda --config /dev/null >"$log" 2>&1 &
        d=$!
        until grep -q "serving on" "$log"; do
            kill -0 $d 2>/dev/null || { echo "$name: sepd exited"; tail "$log"; break; }
            [ "$(since "$t0" | cut -d. -f1)" -ge 180 ] && { echo "$name: no start"; break; }
            sleep 0.05
        done
        echo "== $name, run $rep: serving after $(since "$t0") s"
        grep -E "starting|started|backend up|model loaded|stage 0|store |serving" "$log"
        kill $d 2>/dev/null
        wait $d
        rm -rf "$tmp"
    done
done
