# gpu_lib.sh: what the GPU benchmarks share; sourced after setting bin
# (sepd, sepd-worker, sepctl, sepd-cuda.so and make-8b-folder.py), out
# and here (the source tree).
#
# The binaries' environment, and m8b: the Llama-3.1-8B-shaped folder
# (random bf16 weights, the books tokenizer padded to the vocabulary) at
# $MODEL or /tmp/m8b, written unless it is there.
export SEPCTL=$bin/sepctl SEPD=$bin/sepd SEPD_WORKER=$bin/sepd-worker
export SEPD_CUDA_MODULE=$bin/sepd-cuda.so
m8b=${MODEL:-/tmp/m8b}
if [ ! -f "$m8b/config.json" ]; then
    t0=$(date +%s)
    python3 "$bin/make-8b-folder.py" "$m8b" "$here/models/books-llama-16m" --pad-tokenizer \
        >"$out/make8b.log" 2>&1 || { tail "$out/make8b.log"; exit 1; }
    echo "8B folder: $(du -sh "$m8b" | cut -f1) in $(( $(date +%s) - t0 )) s"
fi
