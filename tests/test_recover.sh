#!/bin/sh
# test_recover: worker faults and signals (TAP). A worker killed, one that
# fails a batch, one that hangs past worker_timeout, with one stage and
# with two under mpirun: sepd stays up, kills and restarts the pool,
# reloads every session from its last checkpoint, tells the client of the
# piece in flight where it is back at, backs off when faults repeat, and
# serves ls, info and stats all along; feed --retry ends bitwise equal to
# one eval. SIGTERM checkpoints every session (a restart resumes exactly),
# SIGHUP reopens the log, a second sepd on the store or socket is refused.
# Needs SEPCTL, SEPD, MPIRUN and SEP_SHARED, set by make check.
. "$(dirname "$0")/daemon_lib.sh"
echo "1..40"

conf=$tmp/sepd.conf
crash=$tmp/crash
export SEPD_WORKER_CRASH="$crash"
cat >"$conf" <<EOF
checkpoint_seconds = 1
checkpoint_bytes = 16384
checkpoint_budget = 100
restart_backoff_max = 2
max_batch = 512
EOF

# eval_of FILE: eval's NLLs in FILE.eval, its figures in FILE.json
eval_of() { "$SEPCTL" eval --threads 1 --nll-out "$1.eval" --json <"$1" >"$1.json" 2>/dev/null; }
# gated FILE AT GATE [SECONDS]: FILE's first AT bytes, then, once the file
# GATE exists (SECONDS at most, 60 by default), the rest
gated() {
    head -c "$2" "$1"
    g=0
    while [ ! -e "$3" ] && [ $g -lt $((${4:-60} * 10)) ]; do sleep 0.1; g=$((g + 1)); done
    tail -c +$(($2 + 1)) "$1"
}
# retry_feed NAME FILE AT [SECONDS]: open NAME, feed it FILE with --retry,
# gated at AT by $tmp/NAME.go, in the background (pid in feeder_NAME)
retry_feed() {
    "$SEPCTL" open "$1" >/dev/null
    gated "$2" "$3" "$tmp/$1.go" "${4:-60}" | "$SEPCTL" feed "$1" --retry --nll-out "$tmp/$1.nll" \
        >/dev/null 2>"$tmp/$1.err" &
    eval "feeder_$1=\$!"
    bg="$bg $!"
}
# exact NAME FILE: wait for NAME's feeder, close NAME; whether its
# figures and NLLs (fed, then at close) are FILE's eval, bitwise
exact() {
    eval "wait \$feeder_$1" &&
        "$SEPCTL" close "$1" --json --nll-out "$tmp/$1.close" >"$tmp/$1.json" &&
        same_figures "$tmp/$1.json" "$2.json" && cat "$tmp/$1.nll" "$tmp/$1.close" | cmp -s - "$2.eval"
}
# restarts_are N: sepd has restarted its workers at least N times (a
# machine so loaded that a batch outlasts worker_timeout adds some)
restarts_are() { test "$(stats_num restarts)" -ge "$1" 2>/dev/null; }
# hangs_are N: the log names N hangs of a stopped stage
hangs_are() {
    test "$(grep -c "have not answered for [0-9]* s (worker_timeout): .*stage [01] (pid [0-9]*) is stopped" \
        "$tmp/sepd.log")" = "$1"
}

head -c 24000 "$T/persuasion.txt" >"$tmp/book.txt"
head -c 16000 "$T/jack_sheppard.txt" >"$tmp/short.txt"
eval_of "$tmp/book.txt"
eval_of "$tmp/short.txt"

# ---- a worker killed (one stage) --------------------------------------------
ok "sepd starts" 'start_daemon'
retry_feed a "$tmp/book.txt" 12000
wait_for 120 'test "$(info_num a tokens_committed)" -gt 0 2>/dev/null'
wpid=$(pgrep -P "$daemon")
kill -9 $wpid
ok "a worker killed: sepd stays up and starts the workers again" \
    'wait_for 120 "restarts_are 1" && kill -0 $daemon && test "$(pgrep -P "$daemon")" != "$wpid"'
ok "the log names the fault" 'grep -q "worker fault: the workers killed by signal 9" "$tmp/sepd.log"'
touch "$tmp/a.go"
ok "feed --retry resends from the checkpoint: NLLs and figures are eval's, bitwise" \
    'exact a "$tmp/book.txt"'
ok "the feeder was told the workers failed" 'grep -q "workers failed" "$tmp/a.err"'

# ---- the piece in flight gets an error with the committed offset -----------
"$SEPCTL" open b >/dev/null
head -c 5000 "$tmp/short.txt" | "$SEPCTL" feed b >/dev/null
committed=$(info_num b bytes_committed)
echo kill >"$crash"
run "$SEPCTL" feed b <"$tmp/short.txt"
ok "a worker that dies under a piece: the feed fails with worker_fault and the offset" \
    'test $rc = 1 && grep -q "last checkpoint: $committed bytes" "$tmp/err" && test "$committed" = 5000'
ok "the session comes back at its checkpoint" \
    'wait_for 120 "restarts_are 2 && test \"\$(info_state b)\" = active" && test "$(info_num b bytes_in)" = 5000'
tail -c +5001 "$tmp/short.txt" | "$SEPCTL" feed b >/dev/null
"$SEPCTL" close b --json >"$tmp/b.json"
ok "the stream goes on from there: eval's figures" 'same_figures "$tmp/b.json" "$tmp/short.txt.json"'

# ---- a failed batch (out of device memory), repeated: the backoff ------------
echo "fail always" >"$crash"
touch "$tmp/c.go"
retry_feed c "$tmp/short.txt" 16000
ok "a batch that fails again and again: sepd backs off, logging each fault" \
    'wait_for 120 "grep -q \"in a row): the workers start again in 2 s\" \"\$tmp/sepd.log\""'
served() {
    test "$(info_state c)" = recovering && "$SEPCTL" ls | grep -q "^c .*recovering" &&
        "$SEPCTL" stats --json | grep -q '"last_fault": *"batch [0-9]* failed in a stage'
}
ok "meanwhile ls, info and stats are served: the session is recovering" 'wait_for 20 served'
refused() { ! "$SEPCTL" close nosuch 2>"$tmp/err" && grep -q "workers are restarting" "$tmp/err"; }
ok "other verbs are refused while the workers restart (unavailable)" 'wait_for 20 refused'
rm -f "$crash"
ok "once the faults stop, the --retry feed completes exactly" 'exact c "$tmp/short.txt"'

# ---- a hang past worker_timeout ------------------------------------------------
stop_daemon
ok "sepd restarts with a short worker timeout" 'start_daemon --worker-timeout 5'
echo stop >"$crash"
touch "$tmp/d.go"
retry_feed d "$tmp/short.txt" 16000
ok "a stopped worker: the hang is detected and the workers start again" \
    'wait_for 120 "hangs_are 1 && restarts_are 1"'
ok "and the --retry feed completes exactly" 'exact d "$tmp/short.txt"'
stop_daemon
ok "SIGTERM after the faults: exit 0" 'test $stop_rc = 0'

# ---- workers that fail to start: each start waits longer -------------------------
# (sepd's worker is a wrapper that exits 1 while $tmp/noworker exists)
cat >"$tmp/worker.sh" <<EOF
#!/bin/sh
[ -e "$tmp/noworker" ] && exit 1
exec "$(dirname "$SEPD")/../workers/sepd-worker" "\$@"
EOF
chmod +x "$tmp/worker.sh"
{ cat "$conf"; echo "worker = $tmp/worker.sh"; } >"$tmp/wrap.conf"
from=$(($(cat "$tmp/sepd.log" 2>/dev/null | wc -l) + 1))
newlog() { tail -n +$from "$tmp/sepd.log"; }
ok "sepd restarts, its worker a wrapper" 'start_daemon --config "$tmp/wrap.conf"'
touch "$tmp/noworker"
kill -9 $(pgrep -P "$daemon")
ok "a worker killed whose restarts fail: each start that fails waits longer than the last" \
    'wait_for 60 "newlog | grep -q \"(3 in a row): the workers start again in 2 s\"" &&
     newlog | grep -q "worker fault while restarting: workers: sepd-worker exited with status 1"'
rm -f "$tmp/noworker"
ok "once a start succeeds, sepd serves again" \
    'wait_for 60 "restarts_are 1" && "$SEPCTL" open w >/dev/null && "$SEPCTL" close w >/dev/null'
stop_daemon

# ---- a --retry feeder with nothing to send again takes its feed back ----------
# One piece of 4000 bytes (one write, so one read), a checkpoint due at once
# (checkpoint_bytes = 2048) whose cut comes before the first batch, and that
# batch fails: the session comes back with all the text and none of its
# tokens scored, every id queued. sepd runs such a session for a client
# only; the feeder has nothing to resend and its stdin waits for the gate,
# yet it takes the feed again at once: the queued ids are scored now.
{ cat "$conf"; echo "checkpoint_bytes = 2048"; } >"$tmp/small.conf"
ok "sepd restarts (checkpoint_bytes = 2048)" 'start_daemon --config "$tmp/small.conf"'
echo fail >"$crash"
retry_feed r "$tmp/short.txt" 4000 600
# caught_up: r's queued ids are scored while it still holds the first piece
# alone (the gate holds the rest back for 600 s, past every wait here)
caught_up() {
    test "$(info_state r)" = active && test "$(info_num r queued_ids)" -le 1 2>/dev/null &&
        test "$(info_num r tokens)" -gt 0 2>/dev/null && test "$(info_num r bytes_in)" = 4000
}
ok "the session is back with the whole piece and no token scored" \
    'wait_for 120 "restarts_are 1 && test \"\$(info_num r bytes_committed)\" = 4000" &&
     grep -q "session .r. back at 0 tokens" "$tmp/sepd.log"'
ok "the feeder, with nothing to send again, takes the feed back: the queued ids are scored" \
    'wait_for 120 caught_up && grep -q "at 4000 bytes; sending 0 again" "$tmp/r.err"'
touch "$tmp/r.go"
ok "and the --retry feed completes exactly" 'exact r "$tmp/short.txt"'
stop_daemon

# ---- two stages under mpirun ----------------------------------------------------
cat >"$tmp/two.conf" <<EOF
stages = 2
mpirun_args = --allow-run-as-root --oversubscribe -x SEPD_WORKER_CRASH
worker_timeout = 5
EOF
cat "$conf" >>"$tmp/two.conf"
mv "$tmp/store" "$tmp/store.one" # its one-stage sessions would not load on two
ok "two stages start" 'start_daemon --config "$tmp/two.conf"'
retry_feed e "$tmp/book.txt" 12000
wait_for 120 'test "$(info_num e tokens_committed)" -gt 0 2>/dev/null'
echo kill@1 >"$crash"
touch "$tmp/e.go"
ok "stage 1 killed: sepd starts both stages again" \
    'wait_for 120 "restarts_are 1" && grep -q "worker fault: " "$tmp/sepd.log" && kill -0 $daemon'
ok "two stages: the --retry feed completes exactly" 'exact e "$tmp/book.txt"'
touch "$tmp/f.go"
retry_feed f "$tmp/short.txt" 16000
rank=$(pgrep -P "$(pgrep -P "$daemon")" | tail -1)
kill -STOP "$rank"
ok "a rank stopped: the hang is detected, mpirun's ranks start again" \
    'wait_for 120 "hangs_are 2 && restarts_are 2"'
ok "two stages: the stream after the hang is exact" 'exact f "$tmp/short.txt"'
kill -9 "$rank" 2>/dev/null

# ---- SIGTERM: every session checkpointed, the restart resumes exactly ---------
retry_feed g "$tmp/book.txt" 12000
wait_for 120 'test "$(info_num g tokens)" -gt 0 2>/dev/null && test "$(info_num g bytes_in)" = 12000 &&
             test "$(info_num g queued_ids)" -le 1'
tokens=$(info_num g tokens)
stop_daemon
ok "SIGTERM mid-feed: exit 0" 'test $stop_rc = 0 && grep -q "checkpointing every session" "$tmp/sepd.log"'
ok "sepd restarts" 'start_daemon --config "$tmp/two.conf"'
ok "the session is back with everything it had: nothing past the checkpoint" \
    'test "$(info_num g tokens_committed)" = "$tokens" && test "$(info_num g bytes_committed)" = 12000'
touch "$tmp/g.go"
ok "the --retry feed across SIGTERM and restart is exact" 'exact g "$tmp/book.txt"'
printf 'shutdown_timeout = 2\n' >>"$tmp/two.conf"
stop_daemon
ok "sepd restarts with shutdown_timeout = 2" 'start_daemon --config "$tmp/two.conf"'
"$SEPCTL" open h >/dev/null
head -c 3000 "$tmp/short.txt" | "$SEPCTL" feed h >/dev/null
m=$(pgrep -P "$daemon")
for r in $(pgrep -P "$m"); do kill -STOP "$r"; done
printf 'More text.' | "$SEPCTL" feed h >/dev/null 2>&1 &
wait_for 20 'test "$(info_num h bytes_in)" = 3010'
kill "$daemon"
wait_pid 40 "$daemon"
stop_rc=$?
daemon=
ok "SIGTERM with hung workers: the shutdown is bounded and exits 0" 'test $stop_rc = 0'
ok "... by shutdown_timeout, which the log names with the session it left" \
    'grep -q "shutdown_timeout (2 s) passed: not checkpointed: .h." "$tmp/sepd.log"'

# ---- one sepd per store and per socket ------------------------------------------
ok "sepd starts" 'start_daemon --config "$tmp/two.conf"'
ok "the session left by the timeout is back at its last checkpoint" \
    'wait_for 60 "test \"\$(info_state h)\" = active" && test "$(info_num h bytes_in)" = 3000'
run "$SEPD" --foreground --socket "ipc://$tmp/other.sock" --store "$tmp/store" --threads 1
ok "a second sepd on the same store is refused, naming it" \
    'test $rc = 1 && grep -q "another sepd uses the store" "$tmp/err"'
run "$SEPD" --foreground --socket "$sock" --store "$tmp/store2" --threads 1
ok "a second sepd on the same socket is refused, naming it" \
    'test $rc = 1 && grep -q "another sepd serves" "$tmp/err" && "$SEPCTL" ls >/dev/null'
stop_daemon

# ---- SIGHUP reopens the log of a detached sepd -----------------------------------
hsock="ipc://$tmp/h.sock"
run "$SEPD" --socket "$hsock" --store "$tmp/hstore" --threads 1
hpid=$(pgrep -f -- "--store $tmp/hstore")
bg="$bg $hpid"
mv "$tmp/hstore/sepd.log" "$tmp/hstore/sepd.log.1"
kill -HUP $hpid
ok "SIGHUP: a detached sepd writes a new sepd.log" \
    'test $rc = 0 && wait_for 20 "grep -q \"log reopened\" \"$tmp/hstore/sepd.log\" 2>/dev/null" &&
     ! grep -q "log reopened" "$tmp/hstore/sepd.log.1"'
kill $hpid
wait_for 30 "! kill -0 $hpid 2>/dev/null"

exit $((failed > 0))
