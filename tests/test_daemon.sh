#!/bin/sh
# test_daemon: sepd, its workers and the sepctl session verbs (TAP).
# Needs SEPCTL, SEPD, ZCLIENT, PADVOCAB, MPIRUN and SEP_SHARED, set by make check.
. "$(dirname "$0")/daemon_lib.sh"
: "${ZCLIENT:?}" "${PADVOCAB:?}"
echo "1..53"
# the first daemon's workers and loop poll awake around generation steps
# as they do on a GPU (poll_spin_us), so that path runs here too
printf 'checkpoint_seconds = 1\ncheckpoint_budget = 100\npoll_spin_us = 300\n' >"$tmp/one.conf"
# (an allow-list, unused on ipc but read at start: its one key has a
# comment of 6000 bytes, one line however long)
printf 'allowed_keys = %s\n' "$tmp/allowed.keys" >>"$tmp/one.conf"

# zsend FRAME...: one raw message (zclient's frame syntax), its reply
zsend() { printf 'send %s\nrecv\n' "$*" | "$ZCLIENT" "$sock"; }

# slice NAME OFFSET BYTES: a piece of persuasion.txt
slice() { tail -c +"$2" "$T/persuasion.txt" | head -c "$3" >"$tmp/$1.txt"; }

# The eight sessions: text, then cache options.
set_session() {
    case $1 in
    1) opts="" ;;
    2) opts="--method sepllm --init 2 --seps 16 --window 32 --capacity 64" ;;
    3) opts="--method streaming --capacity 100 --init 4" ;;
    4) opts="--method full" ;;
    5) opts="--no-shift --capacity 120 --window 40 --seps 20" ;;
    6) opts="--separators rule --capacity 90 --window 30 --seps 20" ;;
    7) opts="--method streaming --capacity 50 --init 0 --no-shift" ;;
    8) opts="--init 1 --seps 8 --window 16 --capacity 40" ;;
    esac
}

# ---- one worker ----------------------------------------------------------
run "$SEPCTL" ls
ok "no daemon: exit 3 naming the socket" 'test $rc = 3 && grep -q "not running" "$tmp/err"'

printf 'poll_spin_us = soon\n' >"$tmp/bad.conf"
run "$SEPD" --foreground --socket "$sock" --store "$tmp/store" --config "$tmp/bad.conf"
ok "a bad poll_spin_us is refused, naming the key and what it takes" \
    'test $rc = 2 && grep -q "poll_spin_us: .soon.: expected auto or a whole number" "$tmp/err"'
bad=0
for kv in "batches_ahead = 0" "checkpoint_budget = 0" "checkpoint_budget = 101"; do
    printf '%s\n' "$kv" >"$tmp/bad.conf"
    run "$SEPD" --foreground --socket "$sock" --store "$tmp/store" --config "$tmp/bad.conf"
    test $rc = 2 && grep -q "${kv%% *}: '[0-9]*' is not a whole number in" "$tmp/err" || bad=$((bad + 1))
done
ok "batches_ahead and checkpoint_budget out of range are refused" 'test $bad = 0'
# settings files are read a line at a time, however long: a long comment
# is one line (a fixed buffer read its tail as a line of its own), and a
# file with a NUL byte is not text, refused rather than read up to it
long=$(head -c 6000 /dev/zero | tr '\0' x)
z85="rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
{ echo "# $long"; echo "allowed_keys = $tmp/allowed.keys"; echo "store_sync = nosuch"; } >"$tmp/bad.conf"
printf '%s   # a key of %s\n' "$z85" "$long" >"$tmp/allowed.keys"
run "$SEPD" --foreground --socket "$sock" --store "$tmp/store" --config "$tmp/bad.conf"
ok "a 6000-byte comment is one line of sepd.conf" \
    'test $rc = 2 && grep -q "bad.conf:3: store_sync" "$tmp/err"'
sed -i '$d' "$tmp/bad.conf"
printf 'threads = 1\0garbage\n' >>"$tmp/bad.conf"
run "$SEPD" --foreground --socket "$sock" --store "$tmp/store" --config "$tmp/bad.conf"
ok "a NUL byte in sepd.conf is refused, naming the line" \
    'test $rc = 2 && grep -q "bad.conf:3: a NUL byte (not a text file?)" "$tmp/err"'
ok "sepd starts with one worker (an allow-list with a 6000-byte comment read)" \
    'start_daemon --config "$tmp/one.conf"'
ok "the socket is private (0600)" 'test "$(stat -c %a "$tmp/sepd.sock")" = 600'

run "$SEPD" --foreground --socket "$sock" --store "$tmp/store2"
ok "a second sepd on the same socket is refused" 'test $rc = 1 && grep -q "another sepd" "$tmp/err"'

for i in 1 2 3 4 5 6 7 8; do
    slice s$i $((i * 3001)) $((4000 + i * 1500))
    set_session $i
    "$SEPCTL" eval --threads 1 $opts --nll-out "$tmp/s$i.eval" <"$tmp/s$i.txt" >/dev/null 2>&1
    "$SEPCTL" open s$i $opts >/dev/null 2>"$tmp/err" || echo "open s$i failed" >>"$tmp/err"
done
ok "eight sessions open" 'test "$("$SEPCTL" ls --json | grep -o "\"name\"" | wc -l)" = 8'

# feed all eight at once, each in two feeds, then close
pids=
for i in 1 2 3 4 5 6 7 8; do
    ( head -c 3333 "$tmp/s$i.txt" | "$SEPCTL" feed s$i --nll-out "$tmp/s$i.a" >/dev/null &&
      tail -c +3334 "$tmp/s$i.txt" | "$SEPCTL" feed s$i --nll-out "$tmp/s$i.b" >/dev/null &&
      "$SEPCTL" close s$i --nll-out "$tmp/s$i.c" >/dev/null ) 2>>"$tmp/err" &
    pids="$pids $!"
done
wait_pids 600 $pids
same=0
for i in 1 2 3 4 5 6 7 8; do
    cat "$tmp/s$i.a" "$tmp/s$i.b" "$tmp/s$i.c" | cmp -s - "$tmp/s$i.eval" && same=$((same + 1))
done
ok "8 sessions fed at once: NLLs identical to sepctl eval of each" 'test $same = 8'
ok "closed sessions are gone" 'test "$("$SEPCTL" ls --json)" = "[]"'

# info, flush and the counters
slice t 1 9000
"$SEPCTL" open t >/dev/null
printf 'It was a truth universally acknowledged' | "$SEPCTL" feed t >/dev/null
run "$SEPCTL" info t --json
ok "info --json reports tokens, ppl, avg_kv, max_kv, bytes_committed" \
    'for k in tokens ppl avg_kv max_kv bytes_committed; do grep -q "\"$k\"" "$tmp/out" || exit 1; done'
held=$(json_num held_bytes)
ok "an unfinished tail is held back" 'test "$held" -gt 0'
run "$SEPCTL" flush t --json
ok "flush processes the held tail" 'test $rc = 0 && test "$(json_num held_bytes)" = 0 && test "$(json_num bytes_committed)" = 39'
"$SEPCTL" feed t <"$tmp/t.txt" >/dev/null
run "$SEPCTL" info t --json
ok "bytes_committed counts the text whose tokens are scored" 'test "$(json_num bytes_committed)" -ge 8000'

# suspend and resume keep the stream exact
slice u 5000 12000
"$SEPCTL" eval --threads 1 --capacity 200 --window 64 --seps 32 --nll-out "$tmp/u.eval" <"$tmp/u.txt" >/dev/null
"$SEPCTL" open u --capacity 200 --window 64 --seps 32 >/dev/null
feed_head u "$tmp/u.txt" 5000
run "$SEPCTL" suspend u --json
ok "suspend" 'test $rc = 0 && grep -q "\"state\": *\"suspended\"" "$tmp/out"'
run "$SEPCTL" feed u </dev/null
ok "a suspended session refuses text" 'test $rc = 1 && grep -q "suspended" "$tmp/err"'
run "$SEPCTL" stats --json
ok "stats: sessions, suspended, workers" 'test "$(json_num sessions)" = 2 && test "$(json_num suspended)" = 1 && grep -q "rss_kib" "$tmp/out"'
ok "stats: where the worker's time went; its rows are the tokens scored" \
    'test "$(json_num rows)" = "$(json_num tokens)" && test "$(json_num batches)" -gt 0 &&
     grep -q "\"batch_seconds\"" "$tmp/out" && grep -q "\"idle_seconds\"" "$tmp/out" &&
     grep -q "\"answers_s\"" "$tmp/out"'
run "$SEPCTL" resume u
ok "resume" 'test $rc = 0'
feed_rest u "$tmp/u.txt" 5000
ok "suspend/resume keeps the stream exact" 'stream_is u "$tmp/u.eval"'

# generation
"$SEPCTL" open g1 >/dev/null
"$SEPCTL" open g2 >/dev/null
head -c 3000 "$tmp/t.txt" | "$SEPCTL" feed g1 >/dev/null
head -c 3000 "$tmp/t.txt" | "$SEPCTL" feed g2 >/dev/null
run "$SEPCTL" generate g1 -n 20 --temperature 0
cp "$tmp/out" "$tmp/g1.out"
run "$SEPCTL" generate g2 -n 20 --temperature 0
ok "greedy generation is deterministic and gives text" 'test $rc = 0 && cmp -s "$tmp/out" "$tmp/g1.out" && test "$(wc -c <"$tmp/out")" -gt 20'
"$SEPCTL" open g3 >/dev/null
head -c 3000 "$tmp/t.txt" | "$SEPCTL" feed g3 >/dev/null
run "$SEPCTL" generate g3 -n 20 --temperature 1e-6
ok "greedy (the worker's argmax) gives what sampling at a vanishing temperature gives" 'test $rc = 0 && cmp -s "$tmp/out" "$tmp/g1.out"'
run "$SEPCTL" info g1 --json
g1tok=$(json_num tokens)
run "$SEPCTL" generate g1 -n 5 --seed 7 --json
ok "generate --json: one line per token, then the session" 'test $rc = 0 && test "$(grep -c "\"token\"" "$tmp/out")" = 5 && grep -q "\"tokens\": *$((g1tok + 5))" "$tmp/out"'
run "$SEPCTL" generate g1
ok "generate without -n is a usage error" 'test $rc = 2'
"$SEPCTL" open empty >/dev/null
run "$SEPCTL" generate empty -n 3
ok "generate on an empty session is refused" 'test $rc = 1 && grep -q "no text" "$tmp/err"'

# errors: the daemon answers them and keeps serving
run "$SEPCTL" info nosuch
ok "unknown session: exit 1 naming it" 'test $rc = 1 && grep -q "no session .nosuch." "$tmp/err"'
run "$SEPCTL" open g1
ok "a second open of the same name is refused" 'test $rc = 1 && grep -q "exists" "$tmp/err"'
run "$SEPCTL" open bad --capacity 10 --window 20
ok "a bad policy is a usage error, as for eval" 'test $rc = 2 && grep -q "a + s + w" "$tmp/err"'
run "$SEPCTL" open 'bad/name'
ok "a bad session name is a usage error" 'test $rc = 2'
printf 'abc\377def' | "$SEPCTL" feed g1 >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "invalid UTF-8: exit 1 naming it" 'test $rc = 1 && grep -q "UTF-8" "$tmp/err"'
run zsend '=this_is_not_json'
ok "malformed message: an error reply" 'grep -q "\"ok\":false" "$tmp/out"'
run zsend '{"v":2}'
ok "message without op: an error reply" 'grep -q "no \\\\\"op\\\\\"" "$tmp/out"'
run zsend '{"v":99,"op":"ls"}'
ok "other protocol version: an error reply" 'grep -q "protocol version" "$tmp/out"'
run zsend '{"v":2,"op":"frobnicate"}'
ok "unknown op: an error reply" 'grep -q "unknown op" "$tmp/out"'
run zsend '{"v":2,"op":"feed","session":"g1"}'
ok "feed without its text frame: an error reply" 'grep -q "expected one frame" "$tmp/out"'
run zsend '{"v":2,"op":"open","session":"x","a":"four"}' 
ok "mistyped fields fall back or fail cleanly" 'grep -q "\"ok\"" "$tmp/out"'
run zsend '{"v":2,"op":"ls"}' =a =b =c =d =e =f =g =h =i
ok "too many frames: an error reply" 'grep -q "frames" "$tmp/out"'

# a client that disappears mid-feed
"$SEPCTL" open k >/dev/null
head -c 40000 "$T/persuasion.txt" | "$SEPCTL" feed k >/dev/null 2>&1 &
feeder=$!
sleep 1
kill -9 $feeder
wait_pid 60 $feeder 2>/dev/null
# what it sent is still scored, and the next checkpoint (checkpoint_seconds
# = 1) holds all of it
i=0
while [ $i -lt 120 ]; do
    run "$SEPCTL" info k --json
    [ "$(json_num queued_ids)" = 1 ] && [ "$(json_num bytes_committed)" = "$(json_num bytes_in)" ] && break
    sleep 0.5
    i=$((i + 1))
done
committed=$(json_num bytes_committed)
ok "a vanished feeder: the daemon scores and commits all it received" 'test $rc = 0 && test "$committed" -gt 0 && test "$committed" = "$(json_num bytes_in)"'
sleep 6
printf 'More text.\n' | "$SEPCTL" feed k >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "after the feeder's lease, another client feeds the session" 'test $rc = 0'
ok "the daemon is alive after all of it" 'kill -0 $daemon && "$SEPCTL" ls >/dev/null'
stop_daemon
ok "SIGTERM stops sepd cleanly" 'test $stop_rc = 0 && ! test -e "$tmp/sepd.sock"'

# ---- two workers under mpirun -------------------------------------------
cat >"$tmp/two.conf" <<EOF
# two pipeline stages
stages = 2
mpirun_args = --allow-run-as-root --oversubscribe
EOF
rm -rf "$tmp/store" # the one-stage sessions would not fit two stages
ok "sepd starts two stages under mpirun" 'start_daemon --config "$tmp/two.conf"'
run "$SEPCTL" stats --json
ok "stats shows two workers with half the layers each" 'grep -q "\"layer1\": *4" "$tmp/out" && grep -q "\"layer0\": *4" "$tmp/out"'
pids=
for i in 2 3 5; do
    set_session $i
    "$SEPCTL" open m$i $opts >/dev/null
    ( "$SEPCTL" feed m$i --nll-out "$tmp/m$i.a" <"$tmp/s$i.txt" >/dev/null &&
      "$SEPCTL" close m$i --nll-out "$tmp/m$i.b" >/dev/null ) &
    pids="$pids $!"
done
wait_pids 600 $pids
same=0
for i in 2 3 5; do
    cat "$tmp/m$i.a" "$tmp/m$i.b" | cmp -s - "$tmp/s$i.eval" && same=$((same + 1))
done
ok "two stages: NLLs identical to one process" 'test $same = 3'
slice v 20000 8000
"$SEPCTL" eval --threads 1 --nll-out "$tmp/v.eval" <"$tmp/v.txt" >/dev/null
"$SEPCTL" open v >/dev/null
feed_head v "$tmp/v.txt" 3000
"$SEPCTL" suspend v >/dev/null && "$SEPCTL" resume v >/dev/null
feed_rest v "$tmp/v.txt" 3000
ok "two stages: suspend/resume keeps the stream exact" 'stream_is v "$tmp/v.eval"'
stop_daemon
ok "two stages stop cleanly" 'test $stop_rc = 0'

# ---- the model's vocabulary and sliding window ---------------------------
# a model with more ids than its tokenizer (8250 rows, 8192 ids): sessions
# score as sepctl eval does, the softmax over every row
rm -rf "$tmp/store"
L=$SEP_SHARED/models/books-llama-16m
"$PADVOCAB" "$L" "$tmp/padded" 8250
ok "sepd starts on a padded vocabulary" 'start_daemon --config "$tmp/one.conf" --model "$tmp/padded"'
slice p 9000 4000
same=0
for k in 1 2; do
    opts="--method full"
    [ $k = 1 ] || opts="--init 2 --seps 16 --window 32 --capacity 64"
    "$SEPCTL" eval --threads 1 --model "$tmp/padded" $opts --nll-out "$tmp/p$k.eval" <"$tmp/p.txt" >/dev/null
    "$SEPCTL" open p$k $opts >/dev/null && feed_head p$k "$tmp/p.txt" 1500 &&
        feed_rest p$k "$tmp/p.txt" 1500 && stream_is p$k "$tmp/p$k.eval" && same=$((same + 1))
done
ok "padded vocabulary: full and sepllm sessions score as sepctl eval" 'test $same = 2'
stop_daemon
# a tokenizer with an id (8192) beyond the model's 8192 rows
mkdir "$tmp/bigtok" && for f in "$L"/*; do ln -s "$f" "$tmp/bigtok/"; done && rm "$tmp/bigtok/tokenizer.json" &&
    sed 's/^  "added_tokens": \[$/&{"id": 8192, "content": "<|pad|>", "special": true},/' \
        "$L/tokenizer.json" >"$tmp/bigtok/tokenizer.json"
rm -rf "$tmp/store"
ok "sepd refuses a tokenizer with ids beyond the model's vocabulary, naming both" \
    '! start_daemon --config "$tmp/one.conf" --model "$tmp/bigtok" && grep -q "bigtok: the tokenizer has 8193 ids (0 to 8192), the model 8192" "$tmp/sepd.log"'
# every layer slides over 100 keys: full sessions keep the window, as eval
A=$SEP_SHARED/models/arch/tiny-mistral
mkdir "$tmp/mw" && for f in "$A"/*; do ln -s "$f" "$tmp/mw/"; done && rm "$tmp/mw/config.json" &&
    sed 's/"sliding_window": null/"sliding_window": 100/' "$A/config.json" >"$tmp/mw/config.json"
rm -rf "$tmp/store"
ok "sepd starts on a model with a sliding window" 'start_daemon --config "$tmp/one.conf" --model "$tmp/mw"'
"$SEPCTL" eval --threads 1 --model "$tmp/mw" --method full --nll-out "$tmp/w.eval" <"$tmp/p.txt" >/dev/null
"$SEPCTL" open w --method full >/dev/null
feed_head w "$tmp/p.txt" 2500
"$SEPCTL" suspend w >/dev/null && "$SEPCTL" resume w >/dev/null
feed_rest w "$tmp/p.txt" 2500
ok "sliding window: a full session (suspended and resumed) scores as sepctl eval" 'stream_is w "$tmp/w.eval"'
run "$SEPCTL" open w2 --init 2 --seps 16 --window 32 --capacity 100
ok "sliding window: open refuses a capacity at the window, naming it" \
    'test $rc != 0 && grep -q "capacity c=100" "$tmp/err" && grep -q sliding_window "$tmp/err"'
stop_daemon

exit $((failed > 0))
