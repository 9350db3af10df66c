# daemon_lib.sh: what the shell tests of sepd share (sourced; TAP helpers).
#
# Sets tmp (a scratch folder, removed at exit), sock and SEPD_SOCKET (an
# ipc socket in it), T (the shared texts), conf (the config start_daemon
# passes: /dev/null unless the test sets it). The test prints its plan.
set -u
: "${SEPCTL:?}" "${SEPD:?}" "${MPIRUN:?}" "${SEP_SHARED:?}"
T=$SEP_SHARED/texts
tmp=$(mktemp -d) || exit 1
sock="ipc://$tmp/sepd.sock"
export SEPD_SOCKET="$sock"
export OMP_NUM_THREADS=1
conf=/dev/null
daemon=
n=0
failed=0

# killall_daemon: kill -9 of sepd and its workers (mpirun's ranks too)
killall_daemon() {
    [ -n "$daemon" ] || return 0
    workers=$(pgrep -P "$daemon")
    kill -9 "$daemon" $workers 2>/dev/null
    wait "$daemon" 2>/dev/null
    for w in $workers; do pkill -9 -P "$w" 2>/dev/null; done
    daemon=
}
# bg: pids of background clients (a feed --retry waits for sepd forever),
# killed at exit too
bg=
trap 'kill $bg 2>/dev/null; killall_daemon; rm -rf "$tmp"' EXIT
# SIGTERM: the suite's time limit (timeout(1) in Makefile.am) ran out, a
# hung sepd or client most likely: one failed case saying so, and the log
trap 'echo "not ok $((n + 1)) - the test ran past its time limit (SEP_TEST_TIMEOUT): killed"
      tail -20 "$tmp/sepd.log" 2>/dev/null | sed "s/^/# log: /"; exit 124' TERM

# ok NAME TEST: one TAP line; a failure shows the last command's stderr
# and the end of sepd's log
ok() {
    n=$((n + 1))
    if eval "$2"; then
        echo "ok $n - $1"
    else
        echo "not ok $n - $1"
        sed 's/^/# /' "$tmp/err" 2>/dev/null | head -20
        tail -5 "$tmp/sepd.log" 2>/dev/null | sed 's/^/# log: /'
        failed=$((failed + 1))
    fi
}

# run CMD...: its output in $tmp/out and $tmp/err, its status in rc
run() {
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}

# figures FILE: tokens, ppl, avg_kv and max_kv of a JSON reply, a line each;
# same_figures A B: the two agree exactly (and A has them)
figures() { for k in tokens ppl avg_kv max_kv; do grep -o "\"$k\": *[0-9.e+-]*" "$1" | head -1 | sed 's/.*: *//'; done; }
same_figures() { test "$(figures "$1")" = "$(figures "$2")" && test -n "$(figures "$1")"; }
# info_num NAME KEY, info_state NAME, stats_num KEY: what sepd reports now
info_num() { "$SEPCTL" info "$1" --json 2>/dev/null | grep -o "\"$2\": *[0-9.e+-]*" | head -1 | sed 's/.*: *//'; }
info_state() { "$SEPCTL" info "$1" --json 2>/dev/null | grep -o '"state": *"[a-z]*"' | sed 's/.*: *"//; s/"$//'; }
stats_num() { "$SEPCTL" stats --json 2>/dev/null | grep -o "\"$1\": *[0-9]*" | head -1 | sed 's/.*: *//'; }

# json_num KEY, json_str KEY: the value after "KEY": in $tmp/out
json_num() { grep -o "\"$1\": *[0-9.e+-]*" "$tmp/out" | head -1 | sed 's/.*: *//'; }
json_str() { grep -o "\"$1\": *\"[^\"]*\"" "$tmp/out" | head -1 | sed 's/.*: *"//; s/"$//'; }

# start_daemon ARGS...: sepd on $tmp/store in the background (the last
# --config wins), until it answers
start_daemon() {
    rm -f "$tmp/sepd.sock"
    "$SEPD" --foreground --socket "$sock" --store "$tmp/store" --threads 1 --config "$conf" \
        "$@" >>"$tmp/sepd.log" 2>&1 &
    daemon=$!
    i=0
    while [ $i -lt 600 ]; do
        "$SEPCTL" ls >/dev/null 2>&1 && return 0
        kill -0 "$daemon" 2>/dev/null || { daemon=; return 1; }
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# wait_pid SECS PID: wait for the child PID to end, its status returned;
# past SECS seconds PID and its children are killed (-9) and the status
# is 124, with a TAP comment: no wait of a test is unbounded, a hung sepd
# or client is a failed check
wait_pid() {
    rm -f "$tmp/wait.$2"
    (
        sleep "$1" || exit 0
        : >"$tmp/wait.$2"
        kill -9 $(pgrep -P "$2") "$2" 2>/dev/null
    ) </dev/null >/dev/null 2>&1 &
    wd=$!
    wait "$2"
    wrc=$?
    # the watchdog, then its sleep, with -9 (a subshell of dash may not
    # act on a TERM: it holds the signals its parent traps)
    kill -9 $wd $(pgrep -P $wd) 2>/dev/null
    wait $wd 2>/dev/null
    if [ -e "$tmp/wait.$2" ]; then
        rm -f "$tmp/wait.$2"
        echo "# pid $2 ran past $1 s: killed"
        return 124
    fi
    return $wrc
}

# wait_pids SECS PID...: wait_pid for each; 124 if any ran past SECS,
# else the last one's status
wait_pids() {
    wsecs=$1
    shift
    wst=0
    for p in "$@"; do
        wait_pid "$wsecs" "$p"
        r=$?
        [ $wst = 124 ] || wst=$r
    done
    return $wst
}

# stop_daemon: SIGTERM, its status in stop_rc (124: still running after
# 120 s, then killed with its workers)
stop_daemon() {
    kill "$daemon" 2>/dev/null
    wait_pid 120 "$daemon"
    stop_rc=$?
    daemon=
}

# A stream fed in two parts: feed_head NAME FILE AT sends FILE's first AT
# bytes (NLLs in NAME.a); feed_rest NAME FILE AT the rest (NAME.b) and
# closes NAME (NAME.c); stream_is NAME EVAL: whether the three are EVAL
feed_head() { head -c "$3" "$2" | "$SEPCTL" feed "$1" --nll-out "$tmp/$1.a" >/dev/null; }
feed_rest() {
    tail -c +$(($3 + 1)) "$2" | "$SEPCTL" feed "$1" --nll-out "$tmp/$1.b" >/dev/null &&
        "$SEPCTL" close "$1" --nll-out "$tmp/$1.c" >/dev/null
}
stream_is() { cat "$tmp/$1.a" "$tmp/$1.b" "$tmp/$1.c" | cmp -s - "$2"; }

# wait_for SECONDS COMMAND: until COMMAND succeeds (polls every 0.2 s)
wait_for() {
    limit=$(($1 * 5))
    shift
    i=0
    while [ $i -lt $limit ]; do
        eval "$1" && return 0
        sleep 0.2
        i=$((i + 1))
    done
    return 1
}
