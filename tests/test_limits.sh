#!/bin/sh
# test_limits: every limit of sepd.conf refuses with a clear error to the
# client that crossed it, naming the key and its value, and never costs
# the daemon or the other sessions anything (TAP): session names, sessions
# in the store, sessions with caches, cache memory per stage, text pending
# per session, the feed window, message sizes, clients at once. Needs
# SEPCTL, SEPD, ZCLIENT, MPIRUN and SEP_SHARED, set by make check.
. "$(dirname "$0")/daemon_lib.sh"
: "${ZCLIENT:?}"
echo "1..45"

zc() { "$ZCLIENT" "$sock"; }

# books-llama-16m: 8 layers, kv_dim 128; a cache with shift on costs
# 2 (c + 1) rows x (8 x 128 x 4 x 3 + 12) bytes: 19704600 at c = 800,
# 7404600 at c = 300, 22164600 at c = 900. 48 MiB hold two of 800 and one
# of 300.
cat >"$tmp/limits.conf" <<EOF
max_sessions = 4
max_active_sessions = 3
cache_memory_mib = 48
max_pending_bytes = 65536
EOF
conf="$tmp/limits.conf"

# ---- the settings themselves ---------------------------------------------
printf 'max_pending_bytes = 1000\n' >"$tmp/bad.conf"
run "$SEPD" --foreground --socket "$sock" --store "$tmp/store" --config "$tmp/bad.conf"
ok "max_pending_bytes below one piece: sepd exits 2 naming the key and the line" \
    'test $rc = 2 && grep -q "bad.conf:1: max_pending_bytes" "$tmp/err"'
printf 'cache_memory_mib = lots\n' >"$tmp/bad.conf"
run "$SEPD" --foreground --socket "$sock" --store "$tmp/store" --config "$tmp/bad.conf"
ok "cache_memory_mib that is not auto or MiB: exit 2 naming it" \
    'test $rc = 2 && grep -q "cache_memory_mib: .lots.: expected auto" "$tmp/err"'

ok "sepd starts with the limits" 'start_daemon'

# p0 takes a second or more to score: pieces sent after it arrive meanwhile
head -c 8000 "$T/persuasion.txt" >"$tmp/p0.txt"
tail -c +8001 "$T/persuasion.txt" | head -c 4000 >"$tmp/p1.txt"
cat "$tmp/p0.txt" "$tmp/p1.txt" >"$tmp/s1.txt"
"$SEPCTL" eval --threads 1 --json <"$tmp/s1.txt" >"$tmp/s1.eval" 2>/dev/null

# ---- names ---------------------------------------------------------------
run "$SEPCTL" open .hidden
ok "sepctl open of a name starting with '.': a usage error naming the rule" \
    'test $rc = 2 && grep -q "name .\.hidden.: it starts with .\.." "$tmp/err" &&
     grep -q "1 to 64 bytes of A-Z a-z 0-9 . _ -, not starting with" "$tmp/err"'
printf 'send {"v":2,"op":"open","session":".hidden"}\nrecv\n' | zc >"$tmp/out"
ok "sepd refuses it too (raw), naming the rule" \
    'grep -q "\"code\":\"bad_request\".*it starts with .\..; a name is 1 to 64 bytes" "$tmp/out"'
printf 'send {"v":2,"op":"open","session":"-x"}\nrecv\n' | zc >"$tmp/out"
ok "a name starting with '-' (raw): bad_request" \
    'grep -q "\"code\":\"bad_request\".*starts with .-." "$tmp/out"'
long=$(printf '%065d' 0)
run "$SEPCTL" open "$long"
ok "a name of 65 bytes: refused" 'test $rc != 0 && ! "$SEPCTL" info "$long" >/dev/null 2>&1'
printf 'send {"v":2,"op":"open","session":"a/b"}\nrecv\n' | zc >"$tmp/out"
ok "a name with '/': bad_request naming the byte" \
    'grep -q "\"code\":\"bad_request\".*byte 1 is 0x2F" "$tmp/out"'
run "$SEPCTL" open "$(printf '%064d' 7)"
ok "a name of 64 bytes is fine" 'test $rc = 0 && "$SEPCTL" close "$(printf "%064d" 7)" >/dev/null'

# ---- sessions, caches, cache memory --------------------------------------
"$SEPCTL" open s1 >/dev/null && "$SEPCTL" open s2 >/dev/null
run "$SEPCTL" open s3
ok "a third cache of c=800 does not fit 48 MiB: limit, naming the bytes and the key" \
    'test $rc = 1 && grep -q "needs 19704600 bytes on stage 0 (layers 0..7)" "$tmp/err" &&
     grep -q "cache_memory_mib = 48" "$tmp/err"'
ok "the refused open left nothing" '! "$SEPCTL" info s3 >/dev/null 2>&1'
run "$SEPCTL" open s3 --capacity 300 --window 200
ok "a smaller one (c=300) fits" 'test $rc = 0'
run "$SEPCTL" open s4 --capacity 300 --window 200
ok "a fourth active session: limit naming max_active_sessions = 3" \
    'test $rc = 1 && grep -q "max_active_sessions = 3" "$tmp/err"'
"$SEPCTL" suspend s3 >/dev/null
run "$SEPCTL" open s4 --capacity 300 --window 200
ok "with one suspended, it opens" 'test $rc = 0'
run "$SEPCTL" open s5 --capacity 300 --window 200
ok "a fifth session, suspended ones counted: limit naming max_sessions = 4" \
    'test $rc = 1 && grep -q "sepd holds 4 sessions, active and suspended (max_sessions = 4)" "$tmp/err"'
run "$SEPCTL" resume s3
ok "resume of a fourth active session: limit" \
    'test $rc = 1 && grep -q "max_active_sessions = 3" "$tmp/err"'
run "$SEPCTL" info s3 --json
ok "... and it stays suspended" 'test "$(json_str state)" = suspended'
"$SEPCTL" close s4 >/dev/null
"$SEPCTL" suspend s2 >/dev/null
run "$SEPCTL" open s5 --capacity 900 --window 600
ok "a cache of c=900 fits beside the one of 800" 'test $rc = 0'
run "$SEPCTL" resume s2
ok "resume of a cache that would not fit: limit naming cache_memory_mib" \
    'test $rc = 1 && grep -q "resume .s2.: its cache needs 19704600 bytes" "$tmp/err" &&
     grep -q "cache_memory_mib = 48" "$tmp/err"'
"$SEPCTL" close s5 >/dev/null
run "$SEPCTL" resume s2
ok "once there is room, it resumes" 'test $rc = 0'
run "$SEPCTL" stats --json
ok "stats reports each stage's cache budget" 'grep -q "\"cache_budget\": *50331648" "$tmp/out"'

# ---- text pending per session --------------------------------------------
# more than one piece of text that is cheap to score (runs of 200 spaces)
pad=$(printf '%200s' '')
{ head -c 3000 "$T/wikitext2_test.txt"; i=0
  while [ $i -lt 340 ]; do printf '%sword%d.\n' "$pad" $i; i=$((i + 1)); done; } >"$tmp/big.txt"
head -c 60000 "$tmp/big.txt" >"$tmp/piece.txt"
printf '%s\n' 'send {"v":2,"op":"feed","session":"s1","seq":0} @'"$tmp/p0.txt" \
    'send {"v":2,"op":"feed","session":"s1","seq":1} @'"$tmp/piece.txt" \
    'send {"v":2,"op":"feed","session":"s1","seq":2} =more' 'recv 3 60000' | zc >"$tmp/out"
ok "a piece past max_pending_bytes: limit naming it and its value" \
    'grep -q "\"seq\":1.*max_pending_bytes = 65536" "$tmp/out" ||
     grep -q "max_pending_bytes = 65536.*\"seq\":1" "$tmp/out"'
ok "a piece after it is refused too (the stream is broken there)" \
    'grep -q "feed: piece 2 after a piece that was refused" "$tmp/out"'
ok "the piece before it is acknowledged" \
    'grep "\"op\":\"feed\"" "$tmp/out" | grep "\"ok\":true" | grep -q "\"seq\":0"'
run "$SEPCTL" info s1 --json
ok "the session holds exactly the acknowledged text" 'test "$(json_num bytes_in)" = 8000'
run "$SEPCTL" feed s1 <"$tmp/p1.txt"
ok "it goes on from there" 'test $rc = 0'
"$SEPCTL" close s1 --json >"$tmp/out"
ok "nothing acknowledged was lost: tokens and ppl equal eval of the text" \
    'test "$(json_num tokens)" = "$(grep -o "\"tokens\": *[0-9]*" "$tmp/s1.eval" | grep -o "[0-9]*$")" &&
     test "$(json_num ppl)" = "$(grep -o "\"ppl\": *[0-9.e+-]*" "$tmp/s1.eval" | sed "s/.*: *//")"'

# sepctl keeps its pieces within max_pending_bytes (64 KiB here: one piece)
"$SEPCTL" open s6 --capacity 300 --window 200 >/dev/null
"$SEPCTL" eval --threads 1 --capacity 300 --window 200 --nll-out "$tmp/s6.eval" \
    <"$tmp/big.txt" >/dev/null 2>&1
run "$SEPCTL" feed s6 --nll-out "$tmp/s6.a" <"$tmp/big.txt"
"$SEPCTL" close s6 --nll-out "$tmp/s6.b" >/dev/null
ok "sepctl feed stays within max_pending_bytes: NLLs equal eval's" \
    'test $rc = 0 && cat "$tmp/s6.a" "$tmp/s6.b" | cmp -s - "$tmp/s6.eval"'

# the feed window: at most 8 pieces unacknowledged
"$SEPCTL" open s7 --capacity 300 --window 200 >/dev/null
{ echo 'send {"v":2,"op":"feed","session":"s7","seq":0} @'"$tmp/p0.txt"
  for i in 1 2 3 4 5 6 7 8 9; do echo "send {\"v\":2,\"op\":\"feed\",\"session\":\"s7\",\"seq\":$i} a:100"; done
  echo 'recv 10 60000'; } | zc >"$tmp/out"
ok "a 9th piece unacknowledged: limit" \
    'grep -q "\"code\":\"limit\".*more than 8 pieces unacknowledged" "$tmp/out"'
ok "the 8 before it are acknowledged, the 10th refused" \
    'test "$(grep "\"op\":\"feed\"" "$tmp/out" | grep -c "\"ok\":true")" = 8 &&
     grep -q "piece 9 after a piece that was refused" "$tmp/out"'
run "$SEPCTL" info s7 --json
ok "and the session holds exactly those 8" 'test "$(json_num bytes_in)" = 8700'

# ---- message sizes --------------------------------------------------------
pad=$(head -c 70000 /dev/zero | tr '\0' 'x')
printf 'send {"v":2,"op":"ping","pad":"%s"}\nrecv\n' "$pad" | zc >"$tmp/out"
ok "a header over 65536 bytes: bad_request naming the limit" \
    'grep -q "\"code\":\"bad_request\".*header" "$tmp/out" && grep -q "65536" "$tmp/out"'
printf 'send {"v":2,"op":"feed","session":"s7","seq":0} a:70000\nrecv\n' | zc >"$tmp/out"
ok "a feed piece over 64 KiB: too_large" 'grep -q "\"code\":\"too_large\".*at most 65536" "$tmp/out"'
printf 'send {"v":2,"op":"ping"} - - - - - - - - -\nrecv\n' | zc >"$tmp/out"
ok "more than 8 frames: bad_request" 'grep -q "\"code\":\"bad_request\".*frames" "$tmp/out"'
printf 'send {"v":2,"op":"feed","session":"s7","seq":0} a:200000\nrecv 1 1500\n' | zc >"$tmp/out" 2>"$tmp/err"
zrc=$?
ok "a frame over 128 KiB: the connection is closed, no reply, nothing held" \
    'test $zrc = 1 && ! test -s "$tmp/out"'
run "$SEPCTL" info s7 --json
ok "after every refusal sepd serves, the session unchanged" \
    'test $rc = 0 && test "$(json_num bytes_in)" = 8700 && test "$(json_str state)" = active'
"$SEPCTL" close s7 >/dev/null
"$SEPCTL" close s2 >/dev/null
"$SEPCTL" close s3 >/dev/null

# ---- a full cache grows with its text --------------------------------------
# shift does not matter to full: (8 x 128 x 4 x 2 + 12) = 8204 bytes an
# entry, 256 doubling: 4096 entries fit 48 MiB, 8192 do not
"$SEPCTL" open f --method full >/dev/null
head -c 1500 "$T/persuasion.txt" >"$tmp/f0.txt"
tail -c +1501 "$T/persuasion.txt" | head -c 6000 >"$tmp/f1.txt"
run "$SEPCTL" feed f <"$tmp/f0.txt"
ok "a full session takes text while its cache fits" 'test $rc = 0'
run "$SEPCTL" feed f <"$tmp/f1.txt"
ok "a piece that could take it past cache_memory_mib: limit, naming the key" \
    'test $rc = 1 && grep -q "a full cache grows with its text: 6000 more tokens" "$tmp/err" &&
     grep -q "cache_memory_mib = 48" "$tmp/err"'
run "$SEPCTL" generate f -n 5000 --ignore-eos
ok "so is a generation that could" 'test $rc = 1 && grep -q "5000 more tokens" "$tmp/err"'
run "$SEPCTL" info f --json
ok "neither took anything" 'test "$(json_num bytes_in)" = 1500 && test "$(json_str running)" = none'
run "$SEPCTL" generate f -n 4 --ignore-eos --temperature 0
ok "what fits runs" 'test $rc = 0'
"$SEPCTL" close f >/dev/null
stop_daemon

# ---- clients at once -------------------------------------------------------
printf 'max_clients = 2\n' >"$tmp/clients.conf"
conf="$tmp/clients.conf"
start_daemon
sleep 0.5 # the clients of start_daemon have gone
printf 'send {"v":2,"op":"ping"}\nrecv\nsleep 3000\nsend {"v":2,"op":"ls"}\nrecv 1\ndrain 200\n' | zc >"$tmp/c1" &
c1=$!
printf 'send {"v":2,"op":"ping"}\nrecv\nsleep 3000\nsend {"v":2,"op":"ls"}\nrecv 1\ndrain 200\n' | zc >"$tmp/c2" &
c2=$!
wait_for 10 'grep -q pong "$tmp/c1" && grep -q pong "$tmp/c2"'
run "$SEPCTL" ls
ok "a third client: limit naming max_clients = 2" \
    'test $rc = 1 && grep -q "sepd serves 2 clients at once (max_clients = 2)" "$tmp/err"'
wait_pid 120 $c1
c1_rc=$?
wait_pid 120 $c2
c2_rc=$?
ok "the two clients are served throughout" \
    'test $c1_rc = 0 && test $c2_rc = 0 && grep -q "\"op\":\"ls\"" "$tmp/c1" && grep -q "\"op\":\"ls\"" "$tmp/c2"'
ok "once they have gone, a new client is served" 'wait_for 10 "\"\$SEPCTL\" ls >/dev/null 2>&1"'
stop_daemon
ok "sepd stops cleanly" 'test $stop_rc = 0'

exit $((failed > 0))
