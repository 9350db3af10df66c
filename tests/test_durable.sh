#!/bin/sh
# test_durable: sessions on LMDB survive suspend, restarts and crashes (TAP).
# Suspend/restart/resume, kill -9 of sepd or of a worker mid-feed and the
# feed that completes the stream (--from-committed, --retry), the
# separator archive, export/import, and what a bad store gets: another
# model, a full map, a damaged file, record or snapshot. Needs SEPCTL,
# SEPD, ZSTORE, MPIRUN and SEP_SHARED, set by make check.
. "$(dirname "$0")/daemon_lib.sh"
: "${ZSTORE:?}"
echo "1..50"

# checkpoints every second, small uncommitted bounds: crashes land between them
conf=$tmp/sepd.conf
printf 'checkpoint_seconds = 1\ncheckpoint_bytes = 65536\ncheckpoint_budget = 100\n' >"$conf"

# eval_of FILE OPTS...: eval's NLLs in FILE.eval, its figures in FILE.json
eval_of() {
    f=$1
    shift
    "$SEPCTL" eval --threads 1 "$@" --nll-out "$f.eval" --json <"$f" >"$f.json" 2>/dev/null
}

# state_is NAME STATE: the session's state is STATE
state_is() { "$SEPCTL" info "$1" --json | grep -q "\"state\": *\"$2\""; }


# SEP_TEST_SCALE k (the sanitizer pass): a book of 150000 / k bytes, k
# at most 4 (a shorter book would be all fed before the kills below)
scale=${SEP_TEST_SCALE:-1}
[ "$scale" -le 4 ] || scale=4
book_len=$((150000 / scale))
first_len=$((60000 / scale))
head -c $book_len "$T/persuasion.txt" >"$tmp/book.txt"
head -c 20000 "$T/jack_sheppard.txt" >"$tmp/short.txt"
eval_of "$tmp/book.txt"
eval_of "$tmp/short.txt" --capacity 200 --window 64 --seps 32

# ---- suspend, restart, resume -------------------------------------------
ok "sepd starts on a new store" 'start_daemon'
ok "the store is private (0700, 0600)" \
    'test "$(stat -c %a "$tmp/store/db")" = 700 && test "$(stat -c %a "$tmp/store/db/data.mdb")" = 600'
run "$SEPD" --foreground --socket "ipc://$tmp/other.sock" --store "$tmp/store"
ok "a second sepd on the same store is refused" 'test $rc = 1 && grep -q "another sepd uses the store" "$tmp/err"'

"$SEPCTL" open u --capacity 200 --window 64 --seps 32 >/dev/null
feed_head u "$tmp/short.txt" 7000
run "$SEPCTL" suspend u --json
ok "suspend writes the session to the store" 'test $rc = 0 && test "$(json_num state_bytes)" -gt 0'
"$SEPCTL" open a >/dev/null
head -c 9000 "$tmp/book.txt" | "$SEPCTL" feed a >/dev/null
"$SEPCTL" info a --json >"$tmp/a.before"
stop_daemon
ok "SIGTERM: sepd checkpoints every session and exits 0" 'test $stop_rc = 0'
ok "sepd restarts on the store" 'start_daemon'
run "$SEPCTL" ls --json
ok "ls shows every session with its state" \
    'grep -q "\"name\": *\"u\"" "$tmp/out" && state_is u suspended && wait_for 20 "state_is a active"'
run "$SEPCTL" info a --json
ok "the active session is back at the same token" \
    'test "$(json_num tokens)" = "$(grep -o "\"tokens\": *[0-9]*" "$tmp/a.before" | sed "s/.*: *//")" && test "$(json_num bytes_committed)" = 9000'
run "$SEPCTL" resume u
ok "resume after a restart" 'test $rc = 0'
feed_rest u "$tmp/short.txt" 7000
ok "suspend, restart, resume: the NLLs are bitwise those of one eval" \
    'stream_is u "$tmp/short.txt.eval"'

# a producer that sends the first 60000 bytes (/ k), waits, then the rest: a
# crash in the pause finds some of the text fed and checkpointed
slow_book() { head -c $first_len "$tmp/book.txt"; sleep "$1"; tail -c +$((first_len + 1)) "$tmp/book.txt"; }
# retry_feed NAME PAUSE: open NAME and feed it slow_book with --retry in
# the background (its pid in feeder, NLLs in NAME.nll, stderr in NAME.err)
retry_feed() {
    "$SEPCTL" open "$1" >/dev/null
    slow_book "$2" | "$SEPCTL" feed "$1" --retry --nll-out "$tmp/$1.nll" >/dev/null 2>"$tmp/$1.err" &
    feeder=$!
}
# crash_mid_feed NAME: open NAME, feed it slow_book and kill -9 sepd and
# its workers in the pause (the feeder fails; the daemon is down)
crash_mid_feed() {
    "$SEPCTL" open "$1" >/dev/null
    rm -f "$tmp/slow.fifo"
    mkfifo "$tmp/slow.fifo"
    slow_book 30 >"$tmp/slow.fifo" &
    slow=$!
    "$SEPCTL" feed "$1" <"$tmp/slow.fifo" >/dev/null 2>&1 &
    feeder=$!
    sleep 5
    killall_daemon
    wait_pid 60 $feeder 2>/dev/null
    kill $(pgrep -P $slow) $slow 2>/dev/null # the writer and its sleep
    wait $slow 2>/dev/null
    rm -f "$tmp/slow.fifo"
}
# book_exact NAME: close NAME; whether its figures and NLLs (fed, then at
# close) are one eval's of the book
book_exact() {
    "$SEPCTL" close "$1" --json --nll-out "$tmp/$1.close" >"$tmp/$1.json" &&
        same_figures "$tmp/$1.json" "$tmp/book.txt.json" &&
        cat "$tmp/$1.nll" "$tmp/$1.close" | cmp -s - "$tmp/book.txt.eval"
}

# ---- kill -9 of sepd mid-feed, then --from-committed -------------------
crash_mid_feed k
ok "after kill -9 of sepd and its workers, sepd restarts" 'start_daemon'
run "$SEPCTL" info k --json
committed=$(json_num bytes_committed)
ok "the session is back at its last checkpoint" \
    'test "$committed" -gt 0 && test "$committed" -lt $book_len && test "$(json_num bytes_in)" = "$committed"'
run "$SEPCTL" feed k --from-committed <"$tmp/book.txt"
ok "feed --from-committed completes the stream" 'test $rc = 0'
"$SEPCTL" close k --json >"$tmp/k.json"
ok "tokens, ppl, avg_kv and max_kv equal one eval of the text" \
    'same_figures "$tmp/k.json" "$tmp/book.txt.json"'

# ---- --retry through two restarts ---------------------------------------
# both kills fall in the producer's pause (at 3 s and 9 s plus a start):
# a book cut short by SEP_TEST_SCALE would otherwise be all fed before the
# second one
retry_feed r 20
sleep 3
killall_daemon
sleep 1
start_daemon
sleep 5
killall_daemon
sleep 1
start_daemon
wait_pid 600 $feeder
feed_rc=$?
cp "$tmp/r.err" "$tmp/err"
ok "feed --retry outlives two kill -9 of sepd" \
    'test $feed_rc = 0 && test "$(grep -c "sepd is back" "$tmp/r.err")" = 2'
ok "its NLL file is eval's, bitwise: no gap, no duplicate" 'book_exact r'

# ---- kill -9 of a worker -------------------------------------------------
retry_feed w 8
sleep 3
kill -9 $(pgrep -P "$daemon")
ok "a worker killed: sepd stays up and starts its workers again, naming the fault" \
    'wait_for 60 "grep -q \"workers restarted\" \"\$tmp/sepd.log\"" && grep -q "killed by signal 9" "$tmp/sepd.log"'
ok "sepd serves on" 'kill -0 "$daemon" && "$SEPCTL" ls >/dev/null'
wait_pid 600 $feeder
feed_rc=$?
ok "the --retry feed completes exactly from the last checkpoint" \
    'test $feed_rc = 0 && book_exact w'

# ---- the separator archive -----------------------------------------------
"$SEPCTL" eval --threads 1 --seps-out "$tmp/short.seps" <"$tmp/short.txt" >/dev/null
"$SEPCTL" open s >/dev/null
"$SEPCTL" feed s <"$tmp/short.txt" >/dev/null
run "$SEPCTL" seps s
awk -F'\t' '{ print $1, $2 }' "$tmp/out" >"$tmp/s.seps"
ok "seps lists every separator the cache evicted: positions and ids" \
    'test -s "$tmp/s.seps" && cmp -s "$tmp/s.seps" "$tmp/short.seps"'
ok "with its text" 'cut -f3 "$tmp/out" | grep -q "^\\\\n$\|^,$\|^\.$"'
run "$SEPCTL" seps s --from 5000 --to 9000 --json
ok "seps --from --to: the positions in range" \
    'test "$(grep -c "\"pos\"" "$tmp/out")" = "$(awk "\$1 >= 5000 && \$1 < 9000" "$tmp/short.seps" | wc -l)"'
run "$SEPCTL" seps s --export "$tmp/s.safetensors"
n_seps=$(wc -l <"$tmp/short.seps")
# 8 layers of K and V, 128 floats each, then positions and ids
want=$((n_seps * (8 * 2 * 128 * 4 + 8 + 4)))
hlen=$(od -An -tu8 -N8 "$tmp/s.safetensors" | tr -d ' ')
ok "seps --export writes a safetensors file of every row" \
    'test $rc = 0 && test $(($(stat -c %s "$tmp/s.safetensors") - 8 - hlen)) = $want && head -c $((8 + hlen)) "$tmp/s.safetensors" | grep -q "layers.7.v"'
"$SEPCTL" open s16 --archive bf16 >/dev/null
"$SEPCTL" feed s16 <"$tmp/short.txt" >/dev/null
"$SEPCTL" seps s16 --export "$tmp/s16.safetensors" 2>/dev/null
hlen=$(od -An -tu8 -N8 "$tmp/s16.safetensors" | tr -d ' ')
ok "--archive bf16 keeps the rows in half the bytes" \
    'test $(($(stat -c %s "$tmp/s16.safetensors") - 8 - hlen)) = $((n_seps * (8 * 2 * 128 * 2 + 8 + 4)))'
"$SEPCTL" open s0 --archive off >/dev/null
"$SEPCTL" feed s0 <"$tmp/short.txt" >/dev/null
run "$SEPCTL" seps s0
ok "--archive off keeps none" 'test $rc = 0 && ! test -s "$tmp/out"'

# ---- export and import ----------------------------------------------------
"$SEPCTL" open x --capacity 200 --window 64 --seps 32 >/dev/null
feed_head x "$tmp/short.txt" 7000
run "$SEPCTL" export x "$tmp/x.exp"
ok "export of an active session is refused" 'test $rc = 1 && grep -q "active" "$tmp/err"'
"$SEPCTL" suspend x >/dev/null
run "$SEPCTL" export x "$tmp/x.exp"
ok "export writes a suspended session to one file" 'test $rc = 0 && test -s "$tmp/x.exp"'
"$SEPCTL" seps x >"$tmp/x.seps.before"
"$SEPCTL" close x >/dev/null
cp "$tmp/x.exp" "$tmp/x.bad"
printf '\377' | dd of="$tmp/x.bad" bs=1 seek=5000 conv=notrunc 2>/dev/null
run "$SEPCTL" import "$tmp/x.bad" x
ok "a damaged export is refused and creates nothing" \
    'test $rc = 1 && ! "$SEPCTL" info x >/dev/null 2>&1'
run "$SEPCTL" import "$tmp/x.exp"
ok "import brings it back under its name, suspended" \
    'test $rc = 0 && "$SEPCTL" info x --json | grep -q "\"state\": *\"suspended\""'
run "$SEPCTL" import "$tmp/x.exp" x
ok "an import over a session in use is refused" 'test $rc = 1 && grep -q "exists" "$tmp/err"'
"$SEPCTL" seps x >"$tmp/x.seps.after"
"$SEPCTL" resume x >/dev/null
feed_rest x "$tmp/short.txt" 7000
ok "export, import, resume: the stream and its archive go on exactly" \
    'cmp -s "$tmp/x.seps.before" "$tmp/x.seps.after" && stream_is x "$tmp/short.txt.eval"'

# ---- another model ----------------------------------------------------------
"$SEPCTL" open m >/dev/null
head -c 5000 "$tmp/short.txt" | "$SEPCTL" feed m >/dev/null
stop_daemon
ok "sepd starts with another model on the store" 'start_daemon --model "$SEP_SHARED/models/books-neox-9m"'
run "$SEPCTL" resume m
ok "a session made with another model: resume refuses, naming why" \
    'test $rc = 1 && grep -q "another model" "$tmp/err"'
run "$SEPCTL" ls
ok "and it is still listed" 'grep -q "^m " "$tmp/out"'
stop_daemon
start_daemon
# sessions come back in the background: wait for its resume
ok "back on its own model, it is active again" 'wait_for 20 "state_is m active"'

# ---- damaged snapshots and records ------------------------------------------
"$SEPCTL" open d1 >/dev/null
"$SEPCTL" open d2 >/dev/null
head -c 20000 "$tmp/book.txt" | "$SEPCTL" feed d1 >/dev/null
head -c 20000 "$tmp/book.txt" | "$SEPCTL" feed d2 >/dev/null
"$SEPCTL" suspend d1 >/dev/null
"$SEPCTL" suspend d2 >/dev/null
stop_daemon
"$ZSTORE" "$tmp/store/db" cut-block d1 0 2
"$ZSTORE" "$tmp/store/db" flip-record d2
start_daemon
run "$SEPCTL" resume d1
ok "a truncated snapshot block: resume fails naming it, the session stays" \
    'test $rc = 1 && grep -q "block 2" "$tmp/err" && "$SEPCTL" info d1 >/dev/null'
run "$SEPCTL" info d2 --json
ok "a damaged record: listed as failed, with the reason" \
    'grep -q "\"state\": *\"failed\"" "$tmp/out" && grep -q "damaged" "$tmp/out"'
run "$SEPCTL" info a
ok "the other sessions are unaffected" 'test $rc = 0'
"$SEPCTL" close d1 >/dev/null 2>&1
"$SEPCTL" close d2 >/dev/null 2>&1
ok "both can be closed" '! "$SEPCTL" info d1 >/dev/null 2>&1 && ! "$SEPCTL" info d2 >/dev/null 2>&1'

# ---- a full map ----------------------------------------------------------------
stop_daemon
mv "$tmp/store" "$tmp/store.main"
printf 'store_map_mib = 2\nstore_max_mib = 4\n' >>"$tmp/sepd.conf"
start_daemon
"$SEPCTL" open f >/dev/null
run "$SEPCTL" feed f <"$tmp/short.txt"
ok "a checkpoint beyond store_max_mib: feed says the text is scored, not saved" \
    'test $rc = 1 && grep -q "not saved" "$tmp/err" && grep -qi "map\|no space" "$tmp/err"'
run "$SEPCTL" info f --json
ok "the session keeps running, the error in info" \
    'grep -q "checkpoint_error" "$tmp/out" && printf "More.\n" | "$SEPCTL" feed f >/dev/null 2>&1; "$SEPCTL" info f >/dev/null'
stop_daemon
sed -i '/store_m/d' "$tmp/sepd.conf"
start_daemon
run "$SEPCTL" info f --json
ok "after a restart it is back at the checkpoint before" 'test "$(json_num tokens)" = 0'
stop_daemon
rm -rf "$tmp/store"
mv "$tmp/store.main" "$tmp/store"

# ---- a damaged store file ------------------------------------------------------
cp "$tmp/store/db/data.mdb" "$tmp/data.good"
head -c 1000000 /dev/urandom >"$tmp/store/db/data.mdb"
run "$SEPD" --foreground --socket "$sock" --store "$tmp/store" --threads 1 --config "$tmp/sepd.conf"
ok "a foreign data.mdb: sepd refuses to start, naming it" \
    'test $rc = 1 && grep -q "data.mdb" "$tmp/err"'
head -c 100000 "$tmp/data.good" >"$tmp/store/db/data.mdb"
run "$SEPD" --foreground --socket "$sock" --store "$tmp/store" --threads 1 --config "$tmp/sepd.conf"
ok "a truncated data.mdb: sepd refuses to start" 'test $rc = 1 && grep -q "truncated\|data.mdb" "$tmp/err"'
cp "$tmp/data.good" "$tmp/store/db/data.mdb"

# ---- two stages under mpirun ---------------------------------------------------
rm -rf "$tmp/store"
cat >>"$tmp/sepd.conf" <<EOF
stages = 2
mpirun_args = --allow-run-as-root --oversubscribe
EOF
ok "two stages start" 'start_daemon'
"$SEPCTL" open v --capacity 200 --window 64 --seps 32 >/dev/null
feed_head v "$tmp/short.txt" 7000
"$SEPCTL" suspend v >/dev/null
stop_daemon
start_daemon
"$SEPCTL" resume v >/dev/null
tail -c +7001 "$tmp/short.txt" | "$SEPCTL" feed v --nll-out "$tmp/v.b" >/dev/null
"$SEPCTL" seps v >"$tmp/v.seps"
"$SEPCTL" close v --nll-out "$tmp/v.c" >/dev/null
ok "two stages: suspend, restart, resume are exact" \
    'stream_is v "$tmp/short.txt.eval"'
"$SEPCTL" eval --threads 1 --capacity 200 --window 64 --seps 32 --seps-out "$tmp/v.want" <"$tmp/short.txt" >/dev/null
ok "two stages: the archive holds every layer of every separator" \
    'awk -F"\t" "{ print \$1, \$2 }" "$tmp/v.seps" | cmp -s - "$tmp/v.want"'
crash_mid_feed k2
start_daemon
run "$SEPCTL" feed k2 --from-committed <"$tmp/book.txt"
"$SEPCTL" close k2 --json >"$tmp/k2.json"
ok "two stages: kill -9, restart, --from-committed: eval's figures" \
    'test $rc = 0 && same_figures "$tmp/k2.json" "$tmp/book.txt.json"'
stop_daemon

# ---- sampled generation goes on exactly across suspend and crashes --------
# every sampling setting on, the penalties' window reaching into the text
gen="--temperature 0.9 --top-k 50 --top-p 0.95 --min-p 0.02 --repetition-penalty 1.3
     --presence-penalty 0.2 --frequency-penalty 0.1 --penalty-window 40"
toks() { grep -o '"token": *[0-9]*' "$1" | sed 's/.*: *//' | tr '\n' ' '; }
start_daemon
for s in g0 g1 g2; do
    "$SEPCTL" open $s >/dev/null
    head -c 3000 "$tmp/short.txt" | "$SEPCTL" feed $s >/dev/null
done
"$SEPCTL" generate g0 -n 30 --seed 11 $gen --json >"$tmp/g0.json"
"$SEPCTL" generate g1 -n 12 --seed 11 $gen --json >"$tmp/g1.json"
"$SEPCTL" suspend g1 >/dev/null
"$SEPCTL" resume g1 >/dev/null
"$SEPCTL" generate g1 -n 18 $gen --json >>"$tmp/g1.json"
ok "a sampled generate suspended, resumed and generated on: the uninterrupted tokens" \
    'test "$(toks "$tmp/g1.json")" = "$(toks "$tmp/g0.json")" && test $(toks "$tmp/g0.json" | wc -w) = 30'
"$SEPCTL" generate g2 -n 12 --seed 11 $gen --json >"$tmp/g2.json"
"$SEPCTL" flush g2 >/dev/null
killall_daemon
start_daemon
wait_for 20 "state_is g2 active"
"$SEPCTL" generate g2 -n 18 $gen --json >>"$tmp/g2.json"
ok "... and after kill -9 of sepd and a restart" \
    'test "$(toks "$tmp/g2.json")" = "$(toks "$tmp/g0.json")"'
stop_daemon

exit $((failed > 0))
