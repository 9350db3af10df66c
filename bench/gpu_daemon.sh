#!/bin/sh
# gpu_daemon.sh: the daemon's overhead at full size, on the GPU machine.
#
#   bench/gpu_daemon.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds sepd, sepd-worker, sepctl, sepd-cuda.so and gpu_bench
# (built here with CUDA) and make-8b-folder.py (../shared/tools). Makes the
# Llama-3.1-8B-shaped folder at /tmp/m8b (random bf16 weights, the books
# tokenizer padded to the vocabulary) unless it is there, then, in one
# call: gpu_bench on that folder (one stream in 512-token chunks, 64
# streams in 64-token chunks, greedy decode), and the same work through
# sepd and sepctl (1 session fed, 64 sessions fed at once, greedy and
# sampled generate, run ahead at the defaults and one round trip a step
# with decode_ahead = 1), with each run's worker and loop times from `sepctl
# stats --json` (where the time goes). sepllm a=4 s=64 w=256 c=800, bf16.
# Sessions run with archive = off (gpu_bench keeps no archive; the
# archive's own cost is in BENCHMARKS.md, "Durable sessions"); extra
# sepd.conf lines: $SEPD_CONF. A benchmark, not a test.
set -u
bin=$1
out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/gpu_lib.sh"
dev=${DEVICE:-cuda}
cat "$m8b"/*.safetensors >/dev/null # a warm page cache
now() { date +%s.%N; }

echo "== gpu_bench, the same folder"
"$bin/gpu_bench" --model "$m8b" --device "$dev" --streams 1 --chunk 512 --tokens 65536 \
    --steps 512 2>&1 | grep -v '^$'
"$bin/gpu_bench" --model "$m8b" --device "$dev" --streams 64 --chunk 64 --tokens 2048 \
    --steps 0 2>&1 | grep -v '^$'

work=$(mktemp -d)
export SEPD_SOCKET="ipc://$work/sepd.sock"
ctl=$bin/sepctl
# text: the books, again and again, different slices for each session
for i in 1 2 3 4 5 6; do cat "$here/books/persuasion.txt"; done >"$work/text"

# start sepd with the conf lines given; wait until it serves
sepd_start() {
    { echo "model = $m8b"; echo "device = $dev"; echo "store = $work/store"
      echo "socket = $SEPD_SOCKET"; echo "archive = off"; printf '%b\n' "${SEPD_CONF:-}"; printf '%b\n' "$1"; } \
        >"$work/sepd.conf"
    rm -rf "$work/store" "$work/prev.json"
    t0=$(now)
    "$bin/sepd" --foreground --config "$work/sepd.conf" 2>"$work/sepd.log" &
    sepd_pid=$!
    until "$ctl" ls >/dev/null 2>&1; do
        kill -0 $sepd_pid 2>/dev/null || { tail "$work/sepd.log"; exit 1; }
        sleep 0.2
    done
    echo "sepd serves after $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s"
    grep -i "loaded" "$work/sepd.log" | tail -n 2
}
sepd_stop() {
    kill $sepd_pid
    wait $sepd_pid
    # with log_level = debug in SEPD_CONF: what the checkpoints took
    grep -E "state of|checkpoint of" "$work/sepd.log" | tail -n 4
}
# where the time went since the last call: the worker's batches and idle
# time, the loop's (from `sepctl stats --json`, differences)
where() {
    "$ctl" stats --json | python3 -c '
import json, os, sys
s = json.load(sys.stdin)
cur = dict(s["workers"][-1]); cur.update(s["loop"])
prev_path = sys.argv[1]
prev = json.load(open(prev_path)) if os.path.exists(prev_path) else {}
json.dump(cur, open(prev_path, "w"))
d = {k: cur.get(k, 0) - prev.get(k, 0) for k in ("batches", "rows", "batch_seconds", "idle_seconds",
                                          "answers_s", "schedule_s", "ahead_runs",
                                          "ahead_steps", "ahead_yields")}
b = max(d["batches"], 1)
print("  worker: %d batches, %d rows, %.3f s in batches (%.3f ms each), %.3f s idle (%.3f ms a batch);"
      " loop: %.3f s on answers, %.3f s building batches; runs ahead: %d, %d steps past their"
      " first, %d yielded"
      % (d["batches"], d["rows"], d["batch_seconds"], 1e3 * d["batch_seconds"] / b,
         d["idle_seconds"], 1e3 * d["idle_seconds"] / b, d["answers_s"], d["schedule_s"],
         d["ahead_runs"], d["ahead_steps"], d["ahead_yields"]))' \
        "$work/prev.json"
}
# N sessions, each fed BYTES bytes at once; tokens/s from the first feed to the
# last close, and over WINDOW seconds while all of them run
feed_n() {
    n=$1 bytes=$2
    i=0
    while [ $i -lt $n ]; do "$ctl" open s$i >/dev/null; i=$((i + 1)); done
    t0=$(now)
    i=0
    pids=
    while [ $i -lt $n ]; do
        (tail -c +$((1 + i * 9973)) "$work/text" | head -c "$bytes" | "$ctl" feed s$i >/dev/null &&
            "$ctl" close s$i >"$work/c$i") &
        pids="$pids $!"
        i=$((i + 1))
    done
    # the rate between checkpoints: tokens scored from 2 s in to 2 s before the end
    # (stats' counter, sampled twice while every feed runs)
    sleep 2
    ta=$(now); ka=$("$ctl" stats --json | sed -n 's/.*"tokens": *\([0-9]*\).*/\1/p')
    sleep "$3"
    tb=$(now); kb=$("$ctl" stats --json | sed -n 's/.*"tokens": *\([0-9]*\).*/\1/p')
    wait $pids
    t1=$(now)
    tok=$(cat "$work"/c* | sed -n 's/.*tokens \([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s }')
    rm -f "$work"/c*
    awk -v n="$n" -v t="$tok" -v a="$t0" -v b="$t1" -v ta="$ta" -v tb="$tb" -v ka="$ka" -v kb="$kb" \
        'BEGIN { printf "sepd, %d sessions fed: %d tokens in %.2f s, %.0f tokens/s (checkpoints included); %.0f tokens/s over %.1f s in the middle\n", n, t, b - a, t / (b - a), (kb - ka) / (tb - ta), tb - ta }'
}
# 512 tokens of generate after 4000 bytes of text (past any eos, as
# gpu_bench's steps); greedy unless told
gen() {
    "$ctl" open g >/dev/null
    head -c 4000 "$work/text" | "$ctl" feed g >/dev/null
    "$ctl" generate g -n 16 "$@" >/dev/null # warm
    t0=$(now)
    "$ctl" generate g -n 512 --ignore-eos "$@" >/dev/null
    t1=$(now)
    "$ctl" close g >/dev/null
    awk -v a="$t0" -v b="$t1" -v o="$*" \
        'BEGIN { printf "sepd generate -n 512 %s: %.1f tokens/s\n", o, 512 / (b - a) }'
}

echo "== sepd, chunk 512"
sepd_start "chunk = 512"
feed_n 1 2800000 20
where
gen --temperature 0
where
gen --temperature 0.8 --top-p 0.95
where
sepd_stop
echo "== sepd, chunk 512, decode_ahead = 1 (one round trip a generation step)"
sepd_start "chunk = 512\ndecode_ahead = 1"
gen --temperature 0
where
gen --temperature 0.8 --top-p 0.95
where
sepd_stop
echo "== sepd, chunk 512, poll_spin_us = 0 (every thread sleeps between steps)"
sepd_start "chunk = 512\npoll_spin_us = 0"
gen --temperature 0
where
sepd_stop
echo "== sepd, chunk 64, max_batch 4096 (gpu_bench's batches at 64 streams)"
sepd_start "chunk = 64\nmax_batch = 4096"
feed_n 64 32768 8
where
sepd_stop
echo "== sepd, defaults (max_batch 2048, chunk 512: 64 sessions share each batch)"
sepd_start ""
feed_n 64 32768 8
where
sepd_stop
rm -rf "$work"
