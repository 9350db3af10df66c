#!/bin/sh
# durable_bench.sh: what durability costs (BENCHMARKS.md, "Durable sessions").
#
#   bench/durable_bench.sh [--model DIR] [--device cpu|cuda] [--cycles N]
#                          [--tokens N] [--store DIR] [--threads T]
#                          [--no-sync] [--suspend-only]
#
# 1. suspend/resume: N cycles (200) of one session whose cache is full
#    (c=800): each suspend's and resume's wall time (sepctl's), the state's
#    bytes, GB/s, and data.mdb's size after cycles 1, 10, 50, 100, 200 (it
#    must level off) and the times of the first and last tens (no slowdown);
#    beside it, the page cache's rate (dd of the same bytes, no sync) and
#    the disk's (with fdatasync).
# 2. checkpoints: tokens/s of one feed with a checkpoint every second
#    against one with none, and what each checkpoint took in the store.
# 3. the separator archive: a stream of --tokens tokens (1,000,000) fed
#    with the archive off, f32 and bf16: tokens/s, the archive's entries,
#    MB, MB/s on the store thread and the store's size per million tokens.
# Prints a report on stdout; nothing is kept.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
SEPCTL=${SEPCTL:-$here/ctl/sepctl}
SEPD=${SEPD:-$here/daemon/sepd}
model=$here/models/books-llama-16m
device=cpu
cycles=200
tokens=1000000
threads=2
store=
sync=yes
only=
while [ $# -gt 0 ]; do
    case $1 in
    --model) model=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --cycles) cycles=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --no-sync) sync=no; shift ;;
    --suspend-only) only=1; shift ;;
    *) echo "usage: durable_bench.sh [--model DIR] [--device D] [--cycles N] [--tokens N] [--store DIR] [--threads T]" >&2; exit 2 ;;
    esac
done
tmp=$(mktemp -d)
[ -n "$store" ] || store=$tmp/store
sock="ipc://$tmp/sepd.sock"
export SEPD_SOCKET=$sock
daemon=
cleanup() {
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    rm -rf "$tmp"
    [ "$store" = "$tmp/store" ] || rm -rf "$store"
}
trap cleanup EXIT

start() {
    rm -rf "$store"
    echo "store_sync = $sync" >>"$tmp/sepd.conf"
    GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1} \
    "$SEPD" --foreground --socket "$sock" --store "$store" --model "$model" --device "$device" \
        --threads "$threads" --config "$tmp/sepd.conf" >>"$tmp/sepd.log" 2>&1 &
    daemon=$!
    until "$SEPCTL" ls >/dev/null 2>&1; do
        kill -0 "$daemon" 2>/dev/null || { tail "$tmp/sepd.log" >&2; exit 1; }
        sleep 0.2
    done
}
stop() { kill "$daemon"; wait "$daemon" || true; daemon=; }
now() { date +%s.%N; }
num() { grep -o "\"$1\": *[0-9.e+-]*" | head -1 | sed 's/.*: *//'; }
mdb_bytes() { stat -c %s "$store/db/data.mdb"; }

text=$tmp/text.txt
book=$here/books/persuasion.txt
# a long stream: the book again and again (its tokens, about 121k a copy)
i=0
while [ $i -lt $(( (tokens + 100000) / 100000 )) ]; do cat "$book"; i=$((i + 1)); done >"$text"

echo "# durable_bench: model $model, device $device, $(nproc) cores, store_sync $sync, $(date -u +%Y-%m-%d)"

# ---- 1. suspend and resume ------------------------------------------------
: >"$tmp/sepd.conf"
start
"$SEPCTL" open s >/dev/null
head -c 20000 "$book" | "$SEPCTL" feed s >/dev/null
"$SEPCTL" suspend s --json >"$tmp/out"
state=$(num state_bytes <"$tmp/out")
"$SEPCTL" resume s >/dev/null
echo "## suspend/resume: one session, state $state bytes, $cycles cycles"
echo "cycle suspend_s resume_s suspend_GBps resume_GBps data.mdb_bytes"
c=1
: >"$tmp/times"
while [ $c -le "$cycles" ]; do
    t0=$(now)
    "$SEPCTL" suspend s >/dev/null
    t1=$(now)
    "$SEPCTL" resume s >/dev/null
    t2=$(now)
    echo "$c $t0 $t1 $t2" >>"$tmp/times"
    case $c in 1|10|50|100|200|"$cycles")
        awk -v s="$state" -v f="$(mdb_bytes)" '{ su = $3 - $2; re = $4 - $3;
            printf "%d %.4f %.4f %.2f %.2f %d\n", $1, su, re, s / su / 1e9, s / re / 1e9, f }' \
            "$tmp/times" | tail -1 ;;
    esac
    c=$((c + 1))
done
awk -v s="$state" -v n="$cycles" '{ su[$1] = $3 - $2; re[$1] = $4 - $3 }
    END { for (i = 1; i <= 10; i++) { a += su[i]; b += re[i] }
          for (i = n - 9; i <= n; i++) { x += su[i]; y += re[i] }
          printf "first ten: suspend %.4f s resume %.4f s; last ten: suspend %.4f s resume %.4f s\n",
                 a / 10, b / 10, x / 10, y / 10 }' "$tmp/times"
stop
mb=$(( (state + 1048575) / 1048576 ))
dd if=/dev/zero of="$store.dd" bs=1M count=$((mb * 4)) 2>"$tmp/dd" && rm -f "$store.dd"
echo "page cache write (dd, no sync, 4x the state): $(tail -1 "$tmp/dd" | sed 's/.*, //')"
dd if=/dev/zero of="$store.dd" bs=1M count=$((mb * 4)) conv=fdatasync 2>"$tmp/dd" && rm -f "$store.dd"
echo "disk write (dd, fdatasync): $(tail -1 "$tmp/dd" | sed 's/.*, //')"
grep -E "checkpoint of|snapshot read|loaded it" "$tmp/sepd.log" | tail -3 | sed 's/^.*info  /last cycle: /'
[ -z "$only" ] || exit 0

# ---- 2. the cost of checkpoints ---------------------------------------------
feed_rate() { # CONF-LINE: tokens/s of a feed of 200 kB, and the store's checkpoint figures
    printf '%s\n' "$1" >"$tmp/sepd.conf"
    start
    "$SEPCTL" open c >/dev/null
    t0=$(now)
    head -c 200000 "$text" | "$SEPCTL" feed c >/dev/null
    t1=$(now)
    "$SEPCTL" info c --json >"$tmp/out"
    "$SEPCTL" stats --json >"$tmp/stats"
    stop
    awk -v t="$(num tokens <"$tmp/out")" -v a="$t0" -v b="$t1" \
        -v n="$(num checkpoints <"$tmp/stats")" -v s="$(num checkpoint_s <"$tmp/stats")" \
        -v by="$(num checkpoint_bytes <"$tmp/stats")" \
        'BEGIN { printf "%d tokens/s; %d checkpoints, %.1f ms each in the store (%.2f GB/s)\n",
                 t / (b - a), n, n ? s / n * 1e3 : 0, s ? by / s / 1e9 : 0 }'
}
echo "## checkpoints: one feed of 200 kB"
printf 'checkpoint_seconds = 1      : '; feed_rate "checkpoint_seconds = 1"
printf 'checkpoint_seconds = 86400  : '; feed_rate "checkpoint_seconds = 86400
checkpoint_tokens = 1099511627776
checkpoint_bytes = 1099511627776"

# ---- 3. the separator archive --------------------------------------------------
echo "## the separator archive: $tokens tokens"
bytes=$(( tokens * 4 ))
for mode in off f32 bf16; do
    : >"$tmp/sepd.conf"
    start
    "$SEPCTL" open a --archive "$mode" >/dev/null
    (while kill -0 "$daemon" 2>/dev/null; do awk '/RssAnon/ { print $2 }' /proc/"$daemon"/status
                                              sleep 0.5; done) >"$tmp/rss.log" 2>/dev/null &
    sampler=$!
    t0=$(now)
    head -c "$bytes" "$text" | "$SEPCTL" feed a >/dev/null
    t1=$(now)
    kill $sampler 2>/dev/null || true; wait $sampler 2>/dev/null || true
    sort -n "$tmp/rss.log" | tail -1 | awk '{ printf "%.0f", $1 / 1024 }' >"$tmp/rss"
    "$SEPCTL" info a --json >"$tmp/out"
    "$SEPCTL" stats --json >"$tmp/stats"
    stop
    awk -v m="$mode" -v t="$(num tokens <"$tmp/out")" -v a="$t0" -v b="$t1" \
        -v e="$(num archive_entries <"$tmp/stats")" -v mb="$(num archive_bytes <"$tmp/stats")" \
        -v s="$(num archive_s <"$tmp/stats")" -v f="$(num file_bytes <"$tmp/stats")" \
        -v rss="$(cat "$tmp/rss" 2>/dev/null)" \
        'BEGIN { printf "archive %-4s: %d tokens, %.0f tokens/s; %d entries (separator x layer), %.1f MB, %.0f MB/s on the store thread; data.mdb %.0f MB; sepd anonymous memory at most %s MB\n",
                 m, t, t / (b - a), e, mb / 1e6, s ? mb / s / 1e6 : 0, f / 1e6, rss }'
done
