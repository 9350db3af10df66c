#!/bin/sh
# daemon_bench.sh: tokens/s of N concurrent sessions fed through sepd
# against the same work done by `sepctl eval`, one text after another,
# and the daemon's overhead. A benchmark, not a test.
#   bench/daemon_bench.sh [THREADS] [TOTAL_BYTES] [N...]  (from a built tree)
# Each of the N sessions gets TOTAL_BYTES / N bytes of the bundled book
# (different slices), so every N does the same amount of work. eval's
# time is its own "seconds" (the model load excluded); the daemon's runs
# from the first feed to the last close. Extra sepd options: $SEPD_ARGS.
set -eu
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
total=${2:-262144}
shift 2 2>/dev/null || shift $#
counts=${*:-1 8 64}
export OMP_NUM_THREADS=$threads
work=$(mktemp -d)
export SEPD_SOCKET="ipc://$work/sepd.sock"
sepd_pid=
trap '[ -n "$sepd_pid" ] && kill $sepd_pid 2>/dev/null; rm -rf "$work"' EXIT
now() { date +%s.%N; }
echo "machine: $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n 1); threads $threads"
for n in $counts; do
    per=$((total / n))
    i=0
    while [ $i -lt $n ]; do
        tail -c +$((1 + (i * 7919) % 200000)) books/persuasion.txt | head -c $per >"$work/t$i.txt"
        i=$((i + 1))
    done
    # eval, one text after another
    etok=0 esec=0
    i=0
    while [ $i -lt $n ]; do
        out=$(ctl/sepctl eval --json --threads "$threads" <"$work/t$i.txt")
        etok=$((etok + $(echo "$out" | sed -n 's/.*"tokens": *\([0-9]*\).*/\1/p')))
        esec=$(awk -v a="$esec" -v b="$(echo "$out" | sed -n 's/.*"seconds": *\([0-9.]*\).*/\1/p')" 'BEGIN { print a + b }')
        i=$((i + 1))
    done
    # the daemon, all sessions at once
    daemon/sepd --foreground --store "$work/store" --threads "$threads" ${SEPD_ARGS:-} \
        2>"$work/sepd.log" &
    sepd_pid=$!
    until ctl/sepctl ls >/dev/null 2>&1; do sleep 0.1; done
    i=0
    while [ $i -lt $n ]; do ctl/sepctl open s$i >/dev/null; i=$((i + 1)); done
    t0=$(now)
    pids=
    i=0
    while [ $i -lt $n ]; do
        (ctl/sepctl feed s$i <"$work/t$i.txt" >/dev/null && ctl/sepctl close s$i >"$work/c$i") &
        pids="$pids $!"
        i=$((i + 1))
    done
    wait $pids
    t1=$(now)
    dtok=$(cat "$work"/c* | sed -n 's/.*tokens \([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s }')
    kill $sepd_pid
    wait $sepd_pid || true
    sepd_pid=
    rm -f "$work"/c*
    awk -v n="$n" -v et="$etok" -v es="$esec" -v dt="$dtok" -v t0="$t0" -v t1="$t1" 'BEGIN {
        er = et / es; dr = dt / (t1 - t0)
        printf "%3d sessions: eval %d tokens %.2f s %.0f tokens/s | sepd %d tokens %.2f s %.0f tokens/s | overhead %.1f%%\n",
               n, et, es, er, dt, t1 - t0, dr, 100 * (1 - dr / er) }'
done
