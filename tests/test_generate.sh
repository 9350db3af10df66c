#!/bin/sh
# test_generate: where generate ends (TAP): the model's eos ids (from
# config.json, or generation_config.json over it; an id or a list;
# --ignore-eos) and --stop strings (across token boundaries, inside a
# token, never matching, several), the reason in the last line and in
# --json, and the session afterwards (its tokens as generated, through
# checkpoints taken mid-generate and a suspend and resume).
# Needs SEPCTL, SEPD, ZCLIENT, MPIRUN and SEP_SHARED, set by make check.
. "$(dirname "$0")/daemon_lib.sh"
: "${ZCLIENT:?}"
echo "1..30"
M0=$SEP_SHARED/models/books-llama-16m
N=24
head -c 1500 "$T/persuasion.txt" >"$tmp/prompt"
# a checkpoint every 4 tokens: generations run through several
printf 'checkpoint_tokens = 4\ncheckpoint_budget = 100\n' >"$tmp/ck.conf" # a checkpoint every few tokens, whatever they cost
conf=$tmp/ck.conf

zsend() { printf 'send %s\nrecv\n' "$*" | "$ZCLIENT" "$sock"; }
# fresh NAME: a new session holding the prompt
fresh() { "$SEPCTL" open "$1" >/dev/null && "$SEPCTL" feed "$1" <"$tmp/prompt" >/dev/null; }
# gen NAME ARGS...: greedy generation of up to N tokens on a fresh session
gen() {
    name=$1
    shift
    fresh "$name"
    run "$SEPCTL" generate "$name" -n $N --temperature 0 "$@"
}
# is WANT: stdout is file WANT's bytes and a newline
is() { { cat "$1"; echo; } | cmp -s - "$tmp/out"; }
# model_copy DIR EOS [GENERATION_CONFIG]: books-llama-16m in DIR, its files
# linked, config.json's eos_token_id EOS, generation_config.json when given
model_copy() {
    mkdir "$1" && ln -s "$M0"/* "$1/" && rm "$1/config.json" &&
        sed "s/\"eos_token_id\": 0,/\"eos_token_id\": $2,/" "$M0/config.json" >"$1/config.json" &&
        grep -q "\"eos_token_id\": $2," "$1/config.json" || return 1
    [ $# -lt 3 ] || printf '%s\n' "$3" >"$1/generation_config.json"
}
# restart DIR: sepd on model DIR with a new store
restart() {
    stop_daemon
    rm -rf "$tmp/store"
    start_daemon --model "$1"
}

ok "sepd starts on books-llama-16m" 'start_daemon --model "$M0"'
gen g0
cp "$tmp/out" "$tmp/G"
ok "greedy generation without stops runs its n tokens" \
    'test $rc = 0 && grep -q "$N tokens, stop: length" "$tmp/err"'
gen g1 --json
cp "$tmp/out" "$tmp/J"
ok "--json: the last line says stop length" \
    'test $rc = 0 && test "$(grep -c "\"token\"" "$tmp/J")" = $N && tail -1 "$tmp/J" | grep -q "\"stop\": *\"length\""'

# From the tokens' texts (--json): the first id after the second not seen
# before (the eos the model copies name); a stop string of the last two
# bytes of one token and the first two of the next, found first there; a
# token found first where it stands, past it; three bytes inside a token.
# Each *.want is the text that must come out.
LC_ALL=C awk -v dir="$tmp" '
function unesc(s,   o, i, c) {
    o = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\") {
            c = substr(s, ++i, 1)
            if (c == "n") c = "\n"
            else if (c == "t") c = "\t"
            else if (c != "\"" && c != "\\" && c != "/") bad = 1
        }
        o = o c
    }
    return o
}
BEGIN { n = 0 }
function plain(s) { return s ~ /^[A-Za-z ,.]+$/ }
function upto(k,   i, o) { o = ""; for (i = 0; i < k; i++) o = o t[i]; return o }
/"token":/ {
    match($0, /"token":[0-9]+/)
    id[n] = substr($0, RSTART + 8, RLENGTH - 8)
    if (match($0, /"text":"([^"\\]|\\.)*"/)) t[n] = unesc(substr($0, RSTART + 8, RLENGTH - 9))
    else bad = 1
    n++
}
END {
    G = upto(n)
    printf "%s", G >(dir "/G.json")
    for (k = 2; k < n; k++) {
        for (i = 0; i < k && id[i] != id[k]; i++) ;
        if (i == k) break
    }
    printf "%s", upto(k) >(dir "/eos.want")
    printf "eos_k=%d eos_id=%s id1=%s\n", k, id[k], id[1]
    for (k = 2; k + 1 < n; k++) {
        a = length(t[k]) > 2 ? substr(t[k], length(t[k]) - 1) : t[k]
        S = a substr(t[k + 1], 1, 2)
        if (plain(t[k]) && plain(t[k + 1]) && index(G, S) == length(upto(k + 1)) - length(a) + 1)
            break
    }
    if (k + 1 >= n) bad = 1
    printf "%s", substr(G, 1, index(G, S) - 1) >(dir "/stop.want")
    printf "stop_S=\"%s\" stop_n=%d\n", S, k + 2
    for (j = k + 2; j < n; j++)
        if (plain(t[j]) && length(t[j]) >= 3 && index(G, t[j]) == length(upto(j)) + 1) break
    if (j >= n) bad = 1
    printf "%s", upto(j) >(dir "/later.want")
    printf "later_L=\"%s\" later_n=%d\n", t[j], j + 1
    for (j = 0; j < n; j++)
        if (plain(t[j]) && length(t[j]) >= 5 && index(G, substr(t[j], 2, 3)) == length(upto(j)) + 2) break
    if (j >= n) bad = 1
    printf "%s", upto(j) substr(t[j], 1, 1) >(dir "/mid.want")
    printf "mid_M=\"%s\" mid_n=%d\n", substr(t[j], 2, 3), j + 1
    exit bad
}' "$tmp/J" >"$tmp/pick.sh"
pick_rc=$?
. "$tmp/pick.sh"
ok "the tokens' texts make the text output (and give the cases)" \
    'test $pick_rc = 0 && { cat "$tmp/G.json"; echo; } | cmp -s - "$tmp/G"'

# ---- stop strings --------------------------------------------------------
gen s1 --stop "$stop_S"
ok "a stop string across a token boundary: the text before it, then a newline" 'is "$tmp/stop.want"'
ok "the last line says which stop string" \
    'grep -q "$stop_n tokens, stop: stop (string 0, \"$stop_S\")" "$tmp/err"'
gen s2 --stop "$stop_S" --json
ok "--json: stop, stop_string, stop_index, generated" \
    'tail -1 "$tmp/out" | grep "\"stop\": *\"stop\"" | grep "\"stop_string\": *\"$stop_S\"" | grep "\"stop_index\": *0" | grep -q "\"generated\": *$stop_n"'
ok "--json: the token lines hold the text before the stop string" \
    'test "$(grep -c "\"token\"" "$tmp/out")" = $stop_n'
gen s3 --stop "$mid_M"
ok "a stop string inside a token: the rest of the token is not sent" \
    'is "$tmp/mid.want" && grep -q "$mid_n tokens, stop: stop" "$tmp/err"'
gen s4 --stop "never such a string"
ok "a stop string that never matches: all N tokens, stop length" \
    'cmp -s "$tmp/out" "$tmp/G" && grep -q "$N tokens, stop: length" "$tmp/err"'
gen s5 --stop "$later_L"
ok "a stop string further on stops there" 'is "$tmp/later.want" && grep -q "$later_n tokens" "$tmp/err"'
gen s6 --stop "never such a string" --stop "$later_L" --stop "$stop_S" --json
ok "several: the first to complete ends the text" \
    'tail -1 "$tmp/out" | grep "\"stop_index\": *2" | grep -q "\"generated\": *$stop_n"'
run "$SEPCTL" generate s6 -n 3 --stop ""
ok "an empty stop string: a usage error naming it" 'test $rc = 2 && grep -q "stop string of 0 bytes" "$tmp/err"'
run "$SEPCTL" generate s6 -n 3 --stop "$(printf "%0257d" 0)"
ok "a stop string over 256 bytes: a usage error" 'test $rc = 2 && grep -q "257 bytes (1 to 256)" "$tmp/err"'
run "$SEPCTL" generate s6 -n 3 $(i=0; while [ $i -lt 17 ]; do printf -- '--stop x%d ' $i; i=$((i + 1)); done)
ok "17 stop strings: a usage error" 'test $rc = 2 && grep -q "at most 16 stop strings" "$tmp/err"'
run zsend '{"v":2,"op":"generate","session":"s6","n":3,"stop":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]}'
ok "sepd refuses 17 stop strings" 'grep -q "bad_request" "$tmp/out" && grep -q "at most 16 strings" "$tmp/out"'
run zsend '{"v":2,"op":"generate","session":"s6","n":3,"stop":["a",""]}'
ok "sepd refuses an empty stop string, naming it" 'grep -q "stop\[1\]: a stop string of 0 bytes" "$tmp/out"'
run zsend '{"v":2,"op":"generate","session":"s6","n":3,"stop":[7]}'
ok "sepd refuses a stop string that is not a string" 'grep -q "stop\[0\]: not a string" "$tmp/out"'
run zsend '{"v":2,"op":"generate","session":"s6","n":3,"ignore_eos":1}'
ok "sepd refuses an ignore_eos that is not true or false" 'grep -q "ignore_eos: true or false" "$tmp/out"'

# ---- the session after a stop --------------------------------------------
# it holds every token generated, the stop string's too: it goes on as one
# that generated as many tokens without a stop
gen a1 --stop "$stop_S"
"$SEPCTL" generate a1 -n 5 --temperature 0 >"$tmp/a1.next" 2>/dev/null
fresh a2
"$SEPCTL" generate a2 -n $stop_n --temperature 0 >/dev/null 2>&1
"$SEPCTL" generate a2 -n 5 --temperature 0 >"$tmp/a2.next" 2>/dev/null
ok "after a stop the session holds the tokens as generated" \
    'cmp -s "$tmp/a1.next" "$tmp/a2.next" && test "$("$SEPCTL" info a1 --json | grep -o "\"tokens\": *[0-9]*")" = "$("$SEPCTL" info a2 --json | grep -o "\"tokens\": *[0-9]*")"'
fresh a3
run "$SEPCTL" info a3 --json
ck0=$(json_num checkpoints)
run "$SEPCTL" generate a3 -n $N --temperature 0 --stop "$later_L"
is "$tmp/later.want"
same=$?
run "$SEPCTL" info a3 --json
ok "checkpoints taken mid-generate leave the stop where it was" \
    'test $same = 0 && test "$(json_num checkpoints)" -gt "$ck0"'
"$SEPCTL" suspend a3 >/dev/null && "$SEPCTL" resume a3 >/dev/null
"$SEPCTL" generate a3 -n 5 --temperature 0 >"$tmp/a3.next" 2>/dev/null
fresh a4
"$SEPCTL" generate a4 -n $later_n --temperature 0 >/dev/null 2>&1
"$SEPCTL" generate a4 -n 5 --temperature 0 >"$tmp/a4.next" 2>/dev/null
ok "suspend and resume after a stop: the session goes on the same" 'cmp -s "$tmp/a3.next" "$tmp/a4.next"'

# ---- eos -----------------------------------------------------------------
# config.json names the eos (an id); generation_config.json without one
model_copy "$tmp/m1" "$eos_id" '{"do_sample": false}'
ok "sepd starts on a copy whose config.json names token $eos_id eos" 'restart "$tmp/m1"'
gen e1
ok "greedy generation stops at the eos; its text is not printed" \
    'is "$tmp/eos.want" && grep -q "$((eos_k + 1)) tokens, stop: eos (token $eos_id)" "$tmp/err"'
gen e2 --json
ok "--json: stop eos, stop_token, generated; the eos line has no text" \
    'tail -1 "$tmp/out" | grep "\"stop\": *\"eos\"" | grep "\"stop_token\": *$eos_id" | grep -q "\"generated\": *$((eos_k + 1))" && grep -q "\"token\":$eos_id,\"text\":\"\"" "$tmp/out"'
gen e3 --ignore-eos
ok "--ignore-eos: the eos is a token like any other" \
    'cmp -s "$tmp/out" "$tmp/G" && grep -q "$N tokens, stop: length" "$tmp/err"'
gen e4 --stop "$stop_S"
ok "the eos and a stop string: the first one ends it" \
    'if [ $eos_k -lt $stop_n ]; then is "$tmp/eos.want"; else is "$tmp/stop.want"; fi'

# generation_config.json's list over config.json's id (which would stop at 1)
model_copy "$tmp/m2" "$id1" "{\"eos_token_id\": [0, $eos_id]}"
ok "sepd starts on a copy whose generation_config.json lists [0, $eos_id]" 'restart "$tmp/m2"'
gen e5 --json
ok "generation_config.json's list is taken over config.json" \
    'tail -1 "$tmp/out" | grep "\"stop_token\": *$eos_id" | grep -q "\"generated\": *$((eos_k + 1))"'

model_copy "$tmp/m3" 0 '{"eos_token_id": "</s>"}'
stop_daemon
run timeout 60 "$SEPD" --foreground --socket "$sock" --store "$tmp/store3" --model "$tmp/m3" \
    --config /dev/null
ok "an eos_token_id that is no id: sepd refuses to start, naming the file" \
    'test $rc = 1 && grep -q "generation_config.json: eos_token_id: not an id" "$tmp/err"'

exit $((failed > 0))
