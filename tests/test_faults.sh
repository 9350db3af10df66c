#!/bin/sh
# test_faults: fault injection during a multi-session feed (TAP). Three
# sessions are fed at once by `sepctl feed --retry`, each text in five
# parts; between the parts: the store filled (as root where mounts are
# allowed, a tmpfs of 24 MiB: a full disk; otherwise an LMDB map that may
# not grow past 24 MiB, store_max_mib; then sepd restarted with room), a
# worker killed (kill -9), sepd and its workers killed (kill -9). After
# each fault no acknowledged token is lost (a session is back with at
# least the tokens its last acknowledged checkpoint held), and at the end
# every session's totals (tokens, ppl, avg_kv, max_kv: the NLL sum) and
# NLLs equal `sepctl eval` of its text, bitwise. Needs SEPCTL, SEPD,
# MPIRUN and SEP_SHARED, set by make check.
. "$(dirname "$0")/daemon_lib.sh"
echo "1..17"

conf=$tmp/sepd.conf
cat >"$conf" <<EOF
checkpoint_seconds = 1
checkpoint_bytes = 8192
checkpoint_budget = 100
restart_backoff_max = 2
max_batch = 512
EOF
S="s1 s2 s3"
head -c 24000 "$T/persuasion.txt" >"$tmp/s1.txt"
head -c 24000 "$T/jack_sheppard.txt" >"$tmp/s2.txt"
tail -c 24000 "$T/persuasion.txt" >"$tmp/s3.txt"
for s in $S; do
    "$SEPCTL" eval --threads 1 --nll-out "$tmp/$s.eval" --json <"$tmp/$s.txt" >"$tmp/$s.ej" 2>/dev/null
done


# parts FILE NAME: FILE in five parts of 4800 bytes; part k+1 goes once
# the file NAME.gK exists (120 s at most each)
parts() {
    for k in 1 2 3 4 5; do
        if [ $k -gt 1 ]; then
            g=0
            while [ ! -e "$tmp/$2.g$((k - 1))" ] && [ $g -lt 1200 ]; do sleep 0.1; g=$((g + 1)); done
        fi
        tail -c +$(((k - 1) * 4800 + 1)) "$1" | head -c 4800
    done
}
gate() { for s in $S; do touch "$tmp/$s.g$1"; done; }
# all_in N: every session holds N bytes and has scored them (but a held tail)
all_in() {
    for s in $S; do
        test "$(info_num $s bytes_in)" = "$1" && test "$(info_state $s)" = active &&
            test "$(info_num $s queued_ids)" -le 1 2>/dev/null || return 1
    done
}
# acked: each session's tokens_committed now (what sepd acknowledged as saved)
acked() { for s in $S; do printf '%s=%s ' $s "$(info_num $s tokens_committed)"; done; }
# none_lost ACKED: every session is active again, back with at least those tokens
none_lost() {
    for kv in $1; do
        s=${kv%=*}
        a=${kv#*=}
        test "$(info_state $s)" = active && test -n "$a" && test "$(info_num $s tokens)" -ge "$a" 2>/dev/null ||
            return 1
    done
}
full() { grep -Eq "$nospace" "$tmp/sepd.log"; }
ckpt_failed() {
    for s in $S; do
        "$SEPCTL" info $s --json | grep -o '"checkpoint_error": *"[^"]*"' | grep -Eq "$nospace" && return 0
    done
    return 1
}

# ---- the store full: 24 MiB -------------------------------------------------------
# (three sessions' caches and archives need about 40 MiB by the second part)
mkdir "$tmp/store"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=24m,mode=0700 sepd-faults "$tmp/store" 2>/dev/null; then
    where="a tmpfs of 24 MiB"
    nospace="disk is full|No space left on device"
    trap 'kill $bg 2>/dev/null; killall_daemon; umount "$tmp/store"; rm -rf "$tmp"' EXIT
else
    where="an LMDB map that may not grow past 24 MiB"
    nospace="map is full at its limit"
    printf 'store_map_mib = 24\nstore_max_mib = 24\n' >>"$conf"
fi
ok "sepd starts on a store of 24 MiB: $where" 'start_daemon'
for s in $S; do
    "$SEPCTL" open $s >/dev/null
    parts "$tmp/$s.txt" $s | "$SEPCTL" feed $s --retry --nll-out "$tmp/$s.nll" >/dev/null 2>"$tmp/$s.err" &
    eval "feeder_$s=\$!"
    bg="$bg $!"
done
wait_for 240 'all_in 4800'
a=$(acked)
gate 1
ok "the store fills up under the feeds: checkpoints fail, naming what is full" \
    'wait_for 240 "all_in 9600 && full && ckpt_failed"'
ok "sepd goes on serving: the sessions are scored, and say why they are not saved" \
    'test "$(info_state s1)" = active && "$SEPCTL" ls >/dev/null'
ok "no acknowledged token is lost ($a)" 'none_lost "$a"'
a=$(acked)
stop_daemon
ok "SIGTERM with a full store: exit 0" 'test $stop_rc = 0'
if [ "$nospace" = "map is full at its limit" ]; then
    sed -i '/store_m/d' "$conf"
else
    mount -o remount,size=1g "$tmp/store"
fi
ok "sepd restarts with room in the store" 'start_daemon'
ok "each session is back at its last saved checkpoint ($a)" 'wait_for 60 "none_lost \"$a\""'
ok "every --retry feed comes back and goes on" 'wait_for 240 "all_in 9600"'

# ---- a worker killed, mid-feed --------------------------------------------------
gate 2
wait_for 120 'test "$(info_num s1 bytes_in)" -gt 9600 2>/dev/null'
a=$(acked)
kill -9 $(pgrep -P "$daemon")
ok "a worker killed: sepd restarts the workers and stays up" \
    'wait_for 120 "test \"\$(stats_num restarts)\" -ge 1 2>/dev/null" && kill -0 $daemon'
ok "no acknowledged token is lost ($a)" 'wait_for 60 "none_lost \"$a\""'
ok "every feed goes on" 'wait_for 240 "all_in 14400"'

# ---- sepd killed (kill -9 of sepd and its workers), mid-feed --------------------
gate 3
wait_for 120 'test "$(info_num s2 bytes_in)" -gt 14400 2>/dev/null'
a=$(acked)
killall_daemon
ok "sepd restarts after kill -9" 'start_daemon'
ok "no acknowledged token is lost ($a)" 'wait_for 60 "none_lost \"$a\""'
ok "every --retry feed comes back and goes on" 'wait_for 240 "all_in 19200"'

# ---- the streams end ---------------------------------------------------------------
gate 4
rcs=0
for s in $S; do eval "wait \$feeder_$s" || rcs=$((rcs + 1)); done
ok "every --retry feed ends with exit 0" 'test $rcs = 0'
for s in $S; do "$SEPCTL" close $s --json --nll-out "$tmp/$s.close" >"$tmp/$s.json"; done
exact() {
    for s in $S; do
        same_figures "$tmp/$s.json" "$tmp/$s.ej" && cat "$tmp/$s.nll" "$tmp/$s.close" | cmp -s - "$tmp/$s.eval" ||
            return 1
    done
}
ok "every session's totals and NLLs equal sepctl eval of its text, bitwise" 'exact'
stop_daemon
ok "sepd exits 0" 'test $stop_rc = 0'

exit $((failed > 0))
