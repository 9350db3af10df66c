#!/bin/sh
# test_ahead: generation steps run ahead on a lone stage (decode_ahead,
# docs/protocol.md "Runs ahead") give what one round trip a step gives
# (TAP): the same tokens, NLLs and session figures greedy and sampled with
# penalties, the same eos stop in the middle of a run and the same
# generator after it, another session's feed served in the middle of a
# run with both results as alone, a cancel in the middle of a run that
# leaves the session where its stages are, a checkpoint taken in the
# middle of runs (kill -9, restart) from which the generation goes on
# with the same tokens, suspend and resume between generations, and
# --stop, which runs one step a round trip.
# Needs SEPCTL, SEPD, ZCLIENT, MPIRUN and SEP_SHARED, set by make check.
. "$(dirname "$0")/daemon_lib.sh"
: "${ZCLIENT:?}"
echo "1..26"
M0=$SEP_SHARED/models/books-llama-16m
head -c 1500 "$T/persuasion.txt" >"$tmp/prompt"
head -c 3000 "$T/jack_sheppard.txt" >"$tmp/other.txt"
# no checkpoint by the clock: the figures of two runs compare whole
printf 'decode_ahead = 1\ncheckpoint_seconds = 86400\n' >"$tmp/one.conf"
printf 'checkpoint_seconds = 86400\n' >"$tmp/def.conf"
# one run for a whole generation of 400 (a window of 400), another
# session's feed in batches of 16
printf 'decode_ahead = 1000\nchunk = 16\ncheckpoint_seconds = 86400\n' >"$tmp/long.conf"
# a checkpoint every 8 tokens, whatever it costs: runs are cut by them
printf 'checkpoint_tokens = 8\ncheckpoint_budget = 100\ncheckpoint_seconds = 86400\n' >"$tmp/ck.conf"
SAMPLE="--temperature 0.9 --top-k 50 --top-p 0.95 --repetition-penalty 1.3 --presence-penalty 0.2 --frequency-penalty 0.1 --penalty-window 16"

zc() { "$ZCLIENT" "$sock"; }
# fresh NAME: a new session holding the prompt
fresh() { "$SEPCTL" open "$1" >/dev/null && "$SEPCTL" feed "$1" <"$tmp/prompt" >/dev/null; }
# toks FILE: the token ids of generate's replies in FILE, one a line
toks() { grep -o '"token": *[0-9]*' "$1" | sed 's/.*: *//'; }
# lines FILE: the token lines of generate --json (id, text, NLL)
lines() { grep '^{"token"' "$1"; }
# model_copy DIR EOS: books-llama-16m in DIR, its files linked, eos_token_id EOS
model_copy() {
    mkdir "$1" && ln -s "$M0"/* "$1/" && rm "$1/config.json" &&
        sed "s/\"eos_token_id\": 0,/\"eos_token_id\": $2,/" "$M0/config.json" >"$1/config.json" &&
        grep -q "\"eos_token_id\": $2," "$1/config.json"
}
# fresh_store: the next start_daemon on an empty store
fresh_store() { rm -rf "$tmp/store"; }

# scenario TAG MODEL: on a new sepd with $conf, greedy and sampled
# generations (a seed, penalties, then on without a seed), their --json
# in TAG.*, the sessions' figures, the run counters
scenario() {
    fresh_store
    start_daemon --model "$2" || return 1
    fresh g && "$SEPCTL" generate g -n 80 --temperature 0 --json >"$tmp/$1.greedy" 2>&1
    fresh s && "$SEPCTL" generate s -n 80 $SAMPLE --seed 11 --json >"$tmp/$1.sampled" 2>&1
    "$SEPCTL" generate s -n 40 $SAMPLE --json >"$tmp/$1.sampled2" 2>&1
    { "$SEPCTL" info g --json && "$SEPCTL" info s --json; } >"$tmp/$1.info"
    runs=$(stats_num ahead_runs)
    steps=$(stats_num ahead_steps)
    stop_daemon
}

# ---- the same generations, one round trip a step and run ahead ------------
conf=$tmp/one.conf
scenario one "$M0"
one_runs=$runs
conf=$tmp/def.conf
scenario def "$M0"
ok "decode_ahead = 1 runs nothing ahead; the default does" \
    'test "$one_runs" = 0 && test "$runs" -gt 0 && test "$steps" -gt "$runs"'
ok "greedy: the same tokens and NLLs (--json, byte for byte)" \
    'test "$(lines "$tmp/one.greedy" | wc -l)" = 80 && cmp -s "$tmp/one.greedy" "$tmp/def.greedy"'
ok "sampled with a seed and penalties: the same tokens and NLLs" \
    'test "$(lines "$tmp/one.sampled" | wc -l)" = 80 && cmp -s "$tmp/one.sampled" "$tmp/def.sampled"'
ok "a generation without a seed after it: the same (the generator went on alike)" \
    'test "$(lines "$tmp/one.sampled2" | wc -l)" = 40 && cmp -s "$tmp/one.sampled2" "$tmp/def.sampled2"'
ok "the sessions' figures after them are the same" \
    'grep -q "\"ppl\"" "$tmp/one.info" && cmp -s "$tmp/one.info" "$tmp/def.info"'

# ---- an eos in the middle of a run -----------------------------------------
# the eos: the first id of the sampled generation not seen before it from
# token 40 on, where no run of 32 begins or ends (runs of 32 from 0)
set -- $(lines "$tmp/one.sampled" | toks /dev/stdin | awk '
    { seen[NR - 1] = $1 }
    END { for (k = 40; k < NR; k++) { if (k % 32 == 0 || k % 32 == 31) continue
            for (i = 0; i < k && seen[i] != seen[k]; i++) ;
            if (i == k) { print k, seen[k]; exit } } }')
eos_k=${1:-0}
eos_id=${2:-none}
ok "a sampled token past 40 to make the eos of a model copy (token $eos_id at $eos_k)" \
    'test "$eos_k" -gt 0 && model_copy "$tmp/m1" "$eos_id"'
conf=$tmp/one.conf
scenario one_eos "$tmp/m1"
conf=$tmp/def.conf
scenario def_eos "$tmp/m1"
lines "$tmp/one.sampled" | head -$eos_k >"$tmp/eos.want"
lines "$tmp/one.sampled" | sed -n "$((eos_k + 1))s/.*,\"nll\"/{\"token\":$eos_id,\"text\":\"\",\"nll\"/p" >>"$tmp/eos.want"
ok "at the eos: the tokens and NLLs as without one, the eos last (its text not sent)" \
    'test "$(wc -l <"$tmp/eos.want")" = $((eos_k + 1)) && lines "$tmp/def_eos.sampled" | cmp -s - "$tmp/eos.want" && grep -q "\"stop\": *\"eos\"" "$tmp/def_eos.sampled"'
ok "the eos mid-run: the same stop, tokens and NLLs as one round trip a step" \
    'grep -q "\"generated\": *$((eos_k + 1))" "$tmp/one_eos.sampled" && cmp -s "$tmp/one_eos.sampled" "$tmp/def_eos.sampled"'
ok "after the eos the generator goes on as one round trip a step leaves it" \
    'test "$(lines "$tmp/one_eos.sampled2" | wc -l)" -gt 0 && cmp -s "$tmp/one_eos.sampled2" "$tmp/def_eos.sampled2" && cmp -s "$tmp/one_eos.info" "$tmp/def_eos.info"'

# ---- another session's feed in the middle of a run --------------------------
conf=$tmp/long.conf
fresh_store
ok "sepd starts with decode_ahead = 1000, chunk = 16" 'start_daemon --model "$M0"'
fresh g1
printf 'send {"v":2,"op":"generate","session":"g1","n":400,"window":400,"temperature":0}\ndrain 3000\n' |
    zc >"$tmp/g1.out"
t_text=$(($(info_num g1 tokens) - 400))
toks "$tmp/g1.out" >"$tmp/g1.t"
ok "alone, a generation of 400 in a window of 400 is one run of 400 steps" \
    'test "$(wc -l <"$tmp/g1.t")" = 400 && test "$(stats_num ahead_runs)" = 1 && test "$(stats_num ahead_steps)" = 399'
"$SEPCTL" eval --threads 1 --nll-out "$tmp/other.eval" <"$tmp/other.txt" >/dev/null 2>&1
fresh g2
"$SEPCTL" open f >/dev/null
printf 'send {"v":2,"op":"generate","session":"g2","n":400,"window":400,"temperature":0}\ndrain 3000\n' |
    zc >"$tmp/g2.out" &
zpid=$!
wait_for 60 'test "$(info_num g2 tokens)" -ge $((t_text + 20))'
"$SEPCTL" feed f --nll-out "$tmp/f.nll" <"$tmp/other.txt" >/dev/null
"$SEPCTL" close f --nll-out "$tmp/f.close" >/dev/null
running=$("$SEPCTL" info g2 --json | grep -o '"running": *"[a-z]*"')
wait_pid 120 $zpid
ok "a feed in the middle of the run is served then: the run yields to its batches" \
    'echo "$running" | grep -q generate && test "$(stats_num ahead_runs)" -gt 2'
ok "the generation meanwhile makes the tokens it makes alone" \
    'toks "$tmp/g2.out" | cmp -s - "$tmp/g1.t"'
ok "the feed meanwhile scores the NLLs of eval" \
    'cat "$tmp/f.nll" "$tmp/f.close" | cmp -s - "$tmp/other.eval"'

# ---- a cancel in the middle of a run -----------------------------------------
fresh c
y0=$(stats_num ahead_yields)
printf 'send {"v":2,"op":"generate","session":"c","n":400,"window":400,"temperature":0}\nrecv 20\nsend {"v":2,"op":"cancel","session":"c"}\ndrain 2000\n' |
    zc >"$tmp/c.out"
made=$(($(info_num c tokens) - t_text))
ok "cancel mid-run: sepd sends w_yield, the generation says cancelled" \
    'test "$(stats_num ahead_yields)" -gt "$y0" && grep -q "\"stop\": *\"cancelled\"" "$tmp/c.out" && test $made -lt 380'
"$SEPCTL" generate c -n 20 --temperature 0 --json >"$tmp/c.next" 2>/dev/null
sed -n "$((made + 1)),$((made + 20))p" "$tmp/g1.t" >"$tmp/c.want"
ok "every step the stage ran after the cancel is the session's: it goes on from there ($made made)" \
    'test $made -ge 20 && toks "$tmp/c.next" | cmp -s - "$tmp/c.want"'
stop_daemon

# ---- checkpoints in the middle of runs, kill -9, restart -------------------
conf=$tmp/ck.conf
fresh_store
ok "sepd starts with a checkpoint every 8 tokens" 'start_daemon --model "$M0"'
fresh r
"$SEPCTL" generate r -n 300 $SAMPLE --seed 11 --json >"$tmp/r.json" 2>/dev/null
lines "$tmp/r.json" >"$tmp/r.l"
t_text=$(($(info_num r tokens) - 300))
lines "$tmp/one.sampled" >"$tmp/o.l"
ok "runs cut by checkpoints (w_yield) give the tokens and NLLs of one round trip a step" \
    'test "$(stats_num ahead_yields)" -gt 0 && head -80 "$tmp/r.l" | cmp -s - "$tmp/o.l"'
fresh k
ck0=$(info_num k checkpoints)
"$SEPCTL" generate k -n 300 $SAMPLE --seed 11 --json >/dev/null 2>&1 &
gpid=$!
wait_for 60 'test "$(info_num k checkpoints)" -ge $((ck0 + 4))'
killall_daemon
wait_pid 120 $gpid 2>/dev/null
ok "sepd restarts after kill -9 in the middle of the generation" 'start_daemon --model "$M0"'
wait_for 20 '"$SEPCTL" info k --json | grep -q "\"state\": *\"active\""'
at=$(($(info_num k tokens) - t_text))
"$SEPCTL" generate k -n $((300 - at)) $SAMPLE --json >"$tmp/k.json" 2>/dev/null
tail -n +$((at + 1)) "$tmp/r.l" >"$tmp/k.want"
ok "from its checkpoint ($at tokens in) the generation goes on with the tokens and NLLs of one that ran through" \
    'test $at -gt 0 && test $at -lt 300 && lines "$tmp/k.json" | cmp -s - "$tmp/k.want"'
stop_daemon

# ---- suspend and resume between generations; --stop -------------------------
conf=$tmp/def.conf
fresh_store
ok "sepd starts at the defaults" 'start_daemon --model "$M0"'
fresh u
"$SEPCTL" generate u -n 50 $SAMPLE --seed 11 --json >"$tmp/u1" 2>/dev/null
"$SEPCTL" suspend u >/dev/null && "$SEPCTL" resume u >/dev/null
"$SEPCTL" generate u -n 30 $SAMPLE --json >"$tmp/u2" 2>/dev/null
ok "suspend and resume after 50: the next 30 are those of one generation of 80" \
    '{ lines "$tmp/u1"; lines "$tmp/u2"; } | cmp -s - "$tmp/o.l"'
fresh p
r0=$(stats_num ahead_runs)
"$SEPCTL" generate p -n 80 --temperature 0 --stop "never such a string" --json >"$tmp/p.json" 2>/dev/null
ok "--stop: one step a round trip, nothing run ahead" 'test "$(stats_num ahead_runs)" = "$r0"'
lines "$tmp/one.greedy" >"$tmp/g.l"
ok "--stop: the tokens and NLLs of the generation without it" \
    'lines "$tmp/p.json" | cmp -s - "$tmp/g.l"'
ok "sepctl stats has the run counters" \
    'run "$SEPCTL" stats --json && grep -q "\"ahead_yields\"" "$tmp/out" && grep -q "\"ahead_steps\"" "$tmp/out"'
stop_daemon
ok "sepd stops cleanly" 'test $stop_rc = 0'

exit $((failed > 0))
