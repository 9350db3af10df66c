#!/bin/sh
# gpu_durable.sh: durable sessions at full size, on the GPU machine.
#
#   bench/gpu_durable.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds sepd, sepd-worker, sepctl and sepd-cuda.so (built here
# with CUDA), and make-8b-folder.py (../shared/tools). Writes a
# Llama-3.1-8B-shaped folder (random bf16 weights, the books tokenizer
# padded to the vocabulary) to /tmp/m8b, then runs durable_bench.sh on it
# with the CUDA backend (suspend/resume GB/s at c=800 beside the page
# cache's and the disk's rates; checkpoint cost; the archive's MB/s and
# slowdown), and checks that a seps --export of the 8B archive opens in
# Python's safetensors with the shapes it should have.
set -u
bin=$1
out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/gpu_lib.sh"
"$here/bench/durable_bench.sh" --model "$m8b" --device cuda --cycles "${CYCLES:-20}" \
    --tokens "${TOKENS:-100000}" --store /tmp/durable-store 2>&1 | tee "$out/durable_8b.txt"
"$here/bench/durable_bench.sh" --model "$m8b" --device cuda --cycles 10 --no-sync \
    --suspend-only --store /tmp/durable-store 2>&1 | tee "$out/durable_8b_nosync.txt"

# the archive of the 8B shape as safetensors, read back by Python
tmp=$(mktemp -d)
export SEPD_SOCKET="ipc://$tmp/sepd.sock"
"$SEPD" --foreground --socket "$SEPD_SOCKET" --store "$tmp/store" --model "$m8b" \
    --device cuda --config /dev/null >"$tmp/log" 2>&1 &
d=$!
until "$SEPCTL" ls >/dev/null 2>&1; do kill -0 $d || { tail "$tmp/log"; exit 1; }; sleep 0.5; done
"$SEPCTL" open x >/dev/null
head -c 20000 "$here/books/persuasion.txt" | "$SEPCTL" feed x >/dev/null
"$SEPCTL" seps x | head -3
n=$("$SEPCTL" seps x | wc -l)
"$SEPCTL" seps x --export "$tmp/x.safetensors"
python3 - "$tmp/x.safetensors" "$n" <<'EOF'
import sys
from safetensors.torch import load_file
t = load_file(sys.argv[1])
n = int(sys.argv[2])
k0, v31 = t["layers.0.k"], t["layers.31.v"]
ok = (t["positions"].shape == (n,) and t["ids"].shape == (n,) and k0.shape == (n, 1024)
      and v31.shape == (n, 1024) and len([k for k in t if k.startswith("layers.")]) == 64
      and bool((t["positions"][1:] > t["positions"][:-1]).all()))
print("safetensors:", len(t), "tensors;", n, "separators; layers.0.k", tuple(k0.shape), k0.dtype,
      "positions ascending" if ok else "WRONG")
sys.exit(0 if ok else 1)
EOF
echo "safetensors check: $?"
kill $d
wait $d
rm -rf "$tmp"
