#!/bin/sh
# test_faults: fault injection during a multi-session feed (TAP). Three
# sessions are fed at once by `sepctl feed --retry`, each text in four
# parts; between the parts: a worker killed (kill -9), sepd and its
# workers killed (kill -9), the store filled (an LMDB map that may not
# grow: store_max_mib). After each fault no acknowledged token is lost
# (a session is back with at least the tokens its last acknowledged
# checkpoint held), and at the end every session's totals (tokens, ppl,
# avg_kv, max_kv: the NLL sum) and NLLs equal `sepctl eval` of its text,
# bitwise. Needs SEPCTL, SEPD, MPIRUN and SEP_SHARED, set by make check.
. "$(dirname "$0")/daemon_lib.sh"
echo "1..16"

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

figures() { for k in tokens ppl avg_kv max_kv; do grep -o "\"$k\": *[0-9.e+-]*" "$1" | head -1 | sed 's/.*: *//'; done; }
same_figures() { test "$(figures "$1")" = "$(figures "$2")" && test -n "$(figures "$1")"; }
info_num() { "$SEPCTL" info "$1" --json 2>/dev/null | grep -o "\"$2\": *[0-9.e+-]*" | head -1 | sed 's/.*: *//'; }
info_state() { "$SEPCTL" info "$1" --json 2>/dev/null | grep -o '"state": *"[a-z]*"' | sed 's/.*: *"//; s/"$//'; }
stats_num() { "$SEPCTL" stats --json 2>/dev/null | grep -o "\"$1\": *[0-9]*" | head -1 | sed 's/.*: *//'; }

# parts FILE NAME: FILE in four parts of 6000 bytes; part k+1 goes once
# the file NAME.gK exists (60 s at most each)
parts() {
    for k in 1 2 3 4; do
        if [ $k -gt 1 ]; then
            g=0
            while [ ! -e "$tmp/$2.g$((k - 1))" ] && [ $g -lt 600 ]; do sleep 0.1; g=$((g + 1)); done
        fi
        tail -c +$(((k - 1) * 6000 + 1)) "$1" | head -c 6000
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

ok "sepd starts" 'start_daemon'
for s in $S; do
    "$SEPCTL" open $s >/dev/null
    parts "$tmp/$s.txt" $s | "$SEPCTL" feed $s --retry --nll-out "$tmp/$s.nll" >/dev/null 2>"$tmp/$s.err" &
    eval "feeder_$s=\$!"
done

# ---- a worker killed, mid-feed --------------------------------------------------
wait_for 60 'all_in 6000'
gate 1
wait_for 60 'test "$(info_num s1 bytes_in)" -gt 6000 2>/dev/null'
a=$(acked)
kill -9 $(pgrep -P "$daemon")
ok "a worker killed: sepd restarts the workers and stays up" \
    'wait_for 60 "test \"\$(stats_num restarts)\" = 1" && kill -0 $daemon'
ok "no acknowledged token is lost ($a)" 'wait_for 30 "none_lost \"$a\""'
ok "every feed goes on" 'wait_for 90 "all_in 12000"'

# ---- sepd killed (kill -9 of sepd and its workers), mid-feed --------------------
gate 2
wait_for 60 'test "$(info_num s2 bytes_in)" -gt 12000 2>/dev/null'
a=$(acked)
killall_daemon
ok "sepd restarts after kill -9" 'start_daemon'
ok "no acknowledged token is lost ($a)" 'wait_for 30 "none_lost \"$a\""'
ok "every --retry feed comes back and goes on" 'wait_for 90 "all_in 18000"'

# ---- the store full: a map that may not grow -------------------------------------
stop_daemon
ok "SIGTERM: every session checkpointed, exit 0" 'test $stop_rc = 0'
mib=$(($(stat -c %s "$tmp/store/db/data.mdb") >> 20))
printf 'store_map_mib = %s\nstore_max_mib = %s\n' $mib $mib >>"$conf"
ok "sepd restarts on a store that may not grow ($mib MiB)" 'start_daemon'
a=$(acked)
gate 3
for s in $S; do eval "wait \$feeder_$s"; eval "rc_$s=\$?"; done
ok "the store fills up: checkpoints fail" \
    'grep -q "MDB_MAP_FULL\|map.*full\|No space" "$tmp/sepd.log"'
ok "a feed whose text is scored but not saved says so" \
    'grep -l "scored but not saved" "$tmp"/s?.err | grep -q . && test $((rc_s1 + rc_s2 + rc_s3)) -gt 0'
ok "no acknowledged token is lost ($a)" 'none_lost "$a"'
a=$(acked)
stop_daemon
sed -i '/store_m/d' "$conf"
ok "sepd restarts with room in the store" 'start_daemon'
ok "each session is back at its last saved checkpoint ($a)" 'wait_for 30 "none_lost \"$a\""'

# ---- the streams completed from their checkpoints --------------------------------
for s in $S; do
    "$SEPCTL" feed $s --from-committed --nll-out "$tmp/$s.nll" <"$tmp/$s.txt" >/dev/null 2>>"$tmp/$s.err"
    "$SEPCTL" close $s --json --nll-out "$tmp/$s.close" >"$tmp/$s.json"
done
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
