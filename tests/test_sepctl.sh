#!/bin/sh
# test_sepctl: the command line as users and scripts meet it (TAP).
# Needs SEPCTL (the binary), PADVOCAB (tests/padvocab) and SEP_SHARED (the
# fixtures), set by make check.
set -u
: "${SEPCTL:?}" "${PADVOCAB:?}" "${SEP_SHARED:?}"
G=$SEP_SHARED/golden
T=$SEP_SHARED/texts
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
n=0
failed=0
echo "1..51"

# ok NAME CONDITION: one TAP line for a shell condition evaluated here;
# on failure show stderr of the last run
ok() {
    n=$((n + 1))
    name=$1
    if eval "$2"; then
        echo "ok $n - $name"
    else
        echo "not ok $n - $name"
        sed 's/^/# /' "$tmp/err" 2>/dev/null
        failed=$((failed + 1))
    fi
}

# run CMD...: stdout to $tmp/out, stderr to $tmp/err, status in $rc
run() {
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}

# near A B TOL: |A - B| <= TOL * |B|
near() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; if (b < 0) b = -b; exit !(d <= t * b) }'; }

# json_num KEY: the number after "KEY": in $tmp/out
json_num() { sed -n "s/.*\"$1\": *\([0-9.e+-]*\).*/\1/p" "$tmp/out"; }

# digits X: how many significant digits the number X is written with
digits() { printf '%s' "$1" | sed 's/[eE].*//; s/[^0-9]//g; s/^0*//' | tr -d '\n' | wc -c; }

# f32: each line's number as the fp32 value it names (exact in a double),
# so sums over --nll-out are the sums eval makes of its floats
F32='function f32(x,   s, m) {
    if (x == 0) return 0
    s = 2 ^ (23 - int(log(x) / log(2)))
    while ((m = x * s) >= 16777216) s /= 2
    while ((m = x * s) < 8388608) s *= 2
    return int(m + 0.5) / s
}'

run "$SEPCTL"
ok "no command: usage error (2)" 'test $rc -eq 2 && test -s "$tmp/err"'

run "$SEPCTL" frobnicate
ok "unknown command: usage error naming it" 'test $rc -eq 2 && grep -q frobnicate "$tmp/err"'

run "$SEPCTL" eval --max-tokens abc
ok "bad --max-tokens: usage error naming the option" 'test $rc -eq 2 && grep -q -- --max-tokens "$tmp/err"'

run "$SEPCTL" eval --model "$tmp/nowhere" --ids "$G/ids.books-llama-16m.persuasion.txt"
ok "missing model folder: runtime error (1) naming it" 'test $rc -eq 1 && grep -q "$tmp/nowhere" "$tmp/err"'

run "$SEPCTL" tokenize --model "$SEP_SHARED/models/books-llama-16m" <"$T/persuasion.txt"
ok "tokenize: the golden ids of a whole book" 'test $rc -eq 0 && cmp -s "$tmp/out" "$G/ids.books-llama-16m.persuasion.txt"'

run "$SEPCTL" tokenize --model "$SEP_SHARED/models/stories15m" <"$T/jack_sheppard.txt"
ok "tokenize: SentencePiece golden ids" 'test $rc -eq 0 && cmp -s "$tmp/out" "$G/ids.stories15m.jack_sheppard.txt"'

printf 'abc\377def' >"$tmp/bad.txt"
run "$SEPCTL" tokenize <"$tmp/bad.txt"
ok "invalid UTF-8: runtime error naming the byte" 'test $rc -eq 1 && grep -qi "utf-8" "$tmp/err" && grep -q 3 "$tmp/err"'

run "$SEPCTL" eval --method full --json --max-tokens 1024 --ids "$G/ids.books-llama-16m.persuasion.txt" \
    --nll-out "$tmp/nll"
ok "eval --json: all keys" 'test $rc -eq 0 && (for k in tokens ppl avg_kv max_kv seconds tokens_per_s; do grep -q "\"$k\":" "$tmp/out" || exit 1; done)'
ok "eval --json: golden counts and perplexity" \
    'test "$(json_num tokens)" = 1024 && test "$(json_num max_kv)" = 1024 && near "$(json_num ppl)" 191.05301874331573 1e-3 && near "$(json_num avg_kv)" 512.5 1e-9'
ok "eval --nll-out: golden NLLs within 2e-3" \
    'paste "$tmp/nll" "$G/llama.full.1024.nll" | awk "{ d = \$1 - \$2; if (d < 0) d = -d; if (d > 2e-3) bad = 1; n++ } END { exit bad || n != 1024 }"'

head -c 20000 "$T/persuasion.txt" >"$tmp/text"
run "$SEPCTL" eval --max-tokens 300 --threads 1 <"$tmp/text"
ok "eval of text on stdin with the bundled model" 'test $rc -eq 0 && grep -q "tokens 300 " "$tmp/out"'

printf '12 34 x5\n' >"$tmp/ids"
run "$SEPCTL" eval --ids "$tmp/ids"
ok "eval --ids with a bad id: error naming file and byte" 'test $rc -eq 1 && grep -q "$tmp/ids: byte 6" "$tmp/err"'

printf '12 99999\n' >"$tmp/ids"
run "$SEPCTL" eval --ids "$tmp/ids"
ok "eval of an id outside the vocabulary: error naming it" 'test $rc -eq 1 && grep -q 99999 "$tmp/err"'

printf 'a' | "$SEPCTL" eval >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "eval of a one-token text: error saying so" 'test $rc -eq 1 && grep -q "at least 2" "$tmp/err"'

L=$SEP_SHARED/models/books-llama-16m
run "$SEPCTL" separators --model "$L"
ok "separators: the rule's ids for a byte-level BPE vocabulary" \
    'test $rc -eq 0 && test "$(cat "$tmp/out")" = "1 12 14 26 27 31 198 199 221 360 1679"'

run "$SEPCTL" separators --model "$L" --separators '.,\,,\n,3000'
ok "separators: a list of strings and ids" 'test $rc -eq 0 && test "$(cat "$tmp/out")" = "12 14 199 3000"'

run "$SEPCTL" separators --model "$L" --separators gpt_neox
ok "separators: a preset that does not fit the vocabulary" 'test $rc -eq 1 && grep -q 50276 "$tmp/err"'

run "$SEPCTL" separators --model "$L" --separators 'zzqqxj'
ok "separators: a string no token matches" 'test $rc -eq 1 && grep -q zzqqxj "$tmp/err"'

run "$SEPCTL" eval --method streaming --window 10 --capacity 64 --ids "$G/ids.books-llama-16m.persuasion.txt"
ok "eval: a streaming window other than c - a is refused" 'test $rc -eq 2 && grep -q "c - a = 60" "$tmp/err"'

run "$SEPCTL" eval --seps 64 --window 256 --capacity 300 --ids "$G/ids.books-llama-16m.persuasion.txt"
ok "eval: sepllm with a + s + w >= c is refused" 'test $rc -eq 2 && grep -q "must be below c = 300" "$tmp/err"'

run "$SEPCTL" eval --json --init 4 --seps 16 --window 32 --capacity 64 --max-tokens 2000 \
    --ids "$G/ids.books-llama-16m.persuasion.txt" --nll-out "$tmp/chunked" --kv-out "$tmp/chunked.kv"
ok "eval sepllm: golden perplexity and cache sizes" \
    'test $rc -eq 0 && test "$(json_num max_kv)" = 65 && near "$(json_num ppl)" 163.71552532827863 1e-3 && near "$(json_num avg_kv)" 58.1385 1e-9'

# what scripts read back is what eval computed, to the last bit: ppl is
# exp of the mean of the --nll-out floats (summed in double, in order)
ok "eval --json ppl: exp(mean of the --nll-out floats), every digit" \
    'test "$(json_num ppl)" = "$(awk "$F32"'"'"' { s += f32($1); n++ } END { printf "%.17g", exp(s / n) }'"'"' "$tmp/chunked")"'
ok "eval --json avg_kv: the mean of --kv-out, every digit" \
    'test "$(json_num avg_kv)" = "$(awk "{ s += \$1; n++ } END { printf \"%.17g\", s / n }" "$tmp/chunked.kv")"'
ok "eval --json seconds: a double's digits (%.17g)" 'test "$(digits "$(json_num seconds)")" -gt 10'

run "$SEPCTL" eval --per-token --init 4 --seps 16 --window 32 --capacity 64 --max-tokens 300 \
    --ids "$G/ids.books-llama-16m.persuasion.txt" --nll-out "$tmp/one"
ok "eval --per-token: the chunked NLLs within 1e-4" \
    'test $rc -eq 0 && head -n 300 "$tmp/chunked" | paste "$tmp/one" - | awk "{ d = \$1 - \$2; if (d < 0) d = -d; if (d > 1e-4) bad = 1; n++ } END { exit bad || n != 300 }"'

# more than one 64 KiB read of text: ids cut at piece boundaries must
# equal the whole text's (the golden ids)
run "$SEPCTL" eval --json --max-tokens 20000 --nll-out "$tmp/stream" <"$T/persuasion.txt"
run2() { "$SEPCTL" eval --json --max-tokens 20000 --ids "$G/ids.books-llama-16m.persuasion.txt" --nll-out "$tmp/byids" >/dev/null 2>&1; }
ok "eval of streamed text: the NLLs of the golden ids" \
    'test $rc -eq 0 && run2 && paste "$tmp/stream" "$tmp/byids" | awk "{ d = \$1 - \$2; if (d < 0) d = -d; if (d > 1e-4) bad = 1; n++ } END { exit bad || n != 20000 }"'

# a bad byte in the second 64 KiB read: named by its place in the whole
# input, not in the tail the tokenizer held back
{ head -c 3000 "$T/persuasion.txt"; head -c 70000 /dev/zero | tr '\0' ' '; printf 'caf\303(more'; } >"$tmp/bad_far"
run "$SEPCTL" eval --threads 1 <"$tmp/bad_far"
ok "eval: invalid UTF-8 past the first read: one message naming its byte in the whole input" \
    'test $rc -eq 1 && test "$(cat "$tmp/err")" = "sepctl: stdin: invalid UTF-8 at byte 73003 (0xC3 is not followed by a continuation byte)"'

# a text that ends inside a character: that character is not scored
printf 'Hello there, caf\303' >"$tmp/cut1"
printf 'Hello there, caf\360\237\230' >"$tmp/cut3"
printf 'Hello there, caf' >"$tmp/whole"
run "$SEPCTL" eval --threads 1 --nll-out "$tmp/cut1.nll" <"$tmp/cut1"
ok "eval of a text ending inside a UTF-8 character: a note, exit 0" \
    'test $rc -eq 0 && grep -q "^tokens " "$tmp/out" && test "$(cat "$tmp/err")" = "sepctl: note: the text ends inside a UTF-8 character; its last 1 byte(s) were not scored"'
run "$SEPCTL" eval --threads 1 <"$tmp/cut3"
ok "eval of a text ending in 3 bytes of a 4-byte character: they are the note's" \
    'test $rc -eq 0 && test "$(cat "$tmp/err")" = "sepctl: note: the text ends inside a UTF-8 character; its last 3 byte(s) were not scored"'
run "$SEPCTL" eval --threads 1 --nll-out "$tmp/whole.nll" <"$tmp/whole"
ok "eval of a text ending in half of an é: the NLLs of the text without that byte" \
    'test $rc -eq 0 && test -s "$tmp/whole.nll" && cmp -s "$tmp/cut1.nll" "$tmp/whole.nll"'

# --seps-out: the separators the compactions evict, "POSITION ID" a line
IDS=$G/ids.books-llama-16m.persuasion.txt
tr ' ' '\n' <"$IDS" | head -n 2000 >"$tmp/ids.col"
"$SEPCTL" separators --model "$L" | tr ' ' '\n' >"$tmp/sepset"
SMALL="--init 2 --seps 8 --window 16 --capacity 40 --max-tokens 2000 --ids $IDS"
run "$SEPCTL" eval $SMALL --json --nll-out "$tmp/arch.nll" --seps-out "$tmp/seps"
sed 's/"seconds".*//' "$tmp/out" >"$tmp/arch.json"
ok "eval --seps-out: positions ascend past the initial 2, each line's id the text's token there, a separator" \
    'test $rc -eq 0 && test -s "$tmp/seps" && awk "FILENAME == ARGV[1] { sep[\$1] = 1; next }
        FILENAME == ARGV[2] { tok[FNR - 1] = \$1; next }
        { if (\$1 <= last || \$1 < 2 || tok[\$1] != \$2 || !sep[\$2] || NF != 2) bad = 1; last = \$1 }
        END { exit bad }" "$tmp/sepset" "$tmp/ids.col" "$tmp/seps"'
# every separator run is evicted or still in the cache, which holds at most c = 40
ok "eval --seps-out: all separators run but at most the 40 the cache still holds" \
    'total=$(awk "FILENAME == ARGV[1] { sep[\$1] = 1; next } sep[\$1] { n++ } END { print n }" "$tmp/sepset" "$tmp/ids.col")
     got=$(wc -l <"$tmp/seps")
     test "$got" -le "$total" && test "$got" -ge $((total - 40))'
run "$SEPCTL" eval $SMALL --json --nll-out "$tmp/plain.nll"
ok "eval --seps-out: the NLLs, perplexity and cache sizes of a run without it, bitwise" \
    'test $rc -eq 0 && cmp -s "$tmp/arch.nll" "$tmp/plain.nll" && sed "s/\"seconds\".*//" "$tmp/out" | cmp -s - "$tmp/arch.json"'
run "$SEPCTL" eval $SMALL --per-token --seps-out "$tmp/seps.one"
ok "eval --seps-out: --per-token writes the same file" 'test $rc -eq 0 && cmp -s "$tmp/seps" "$tmp/seps.one"'
run "$SEPCTL" eval --method streaming --init 2 --capacity 40 --max-tokens 2000 --ids "$IDS" --seps-out "$tmp/seps.st"
ok "eval --seps-out under streaming: an empty file" 'test $rc -eq 0 && test -f "$tmp/seps.st" && ! test -s "$tmp/seps.st"'
# text read in 64 KiB pieces: the id held back between pieces runs in the next
"$SEPCTL" eval --max-tokens 20000 --nll-out "$tmp/stream.arch" --seps-out "$tmp/seps.stream" \
    <"$T/persuasion.txt" >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "eval --seps-out of streamed text: the NLLs of the run without it" \
    'test $rc -eq 0 && cmp -s "$tmp/stream.arch" "$tmp/stream"'
run "$SEPCTL" eval --max-tokens 20000 --ids "$IDS" --seps-out "$tmp/seps.byids"
ok "eval --seps-out of streamed text: the file of the golden ids" \
    'test $rc -eq 0 && test -s "$tmp/seps.byids" && cmp -s "$tmp/seps.stream" "$tmp/seps.byids"'

# ---- checkpoints transformers scored (tests/golden: README there) ------
HG=$(dirname "$0")/golden
# hf_near NLLS GOLDEN: 1024 NLLs, each within 2e-3 of the golden's, and
# eval's perplexity (in $tmp/out) within 0.1% of the golden's
hf_near() {
    paste "$1" "$2" | awk -v ppl="$(json_num ppl)" '{ d = $1 - $2; if (d < 0) d = -d; if (d > 2e-3) bad = 1; s += $2; n++ }
        END { g = exp(s / n); d = ppl - g; if (d < 0) d = -d; exit bad || n != 1024 || !(d <= 1e-3 * g) }'
}
# copy_model SRC DST SED: DST links SRC's files but for config.json, SRC's through sed SED
copy_model() {
    mkdir "$2" && for f in "$1"/*; do ln -s "$f" "$2/"; done &&
        rm "$2/config.json" && sed "$3" "$1/config.json" >"$2/config.json"
}

# a padded vocabulary: 8192 token ids, 8250 embedding rows (new rows of
# the real ones' scale, so the softmax over all of them differs)
P=$tmp/books-llama-16m-padded
run "$PADVOCAB" "$L" "$P" 8250
ok "padvocab: a padded copy of books-llama-16m" 'test $rc -eq 0 && grep -q "\"vocab_size\": 8250" "$P/config.json"'
run "$SEPCTL" eval --model "$P" --method full --json --max-tokens 1024 --ids "$IDS" --nll-out "$tmp/pad.nll"
ok "eval on a padded vocabulary: transformers' NLLs (softmax over all 8250 rows)" \
    'test $rc -eq 0 && hf_near "$tmp/pad.nll" "$HG/hf_full.books-llama-16m-padded.persuasion.1024.nll"'
run "$SEPCTL" eval --model "$P" --json --max-tokens 1024 --ids "$IDS"
ok "eval sepllm on a padded vocabulary runs" 'test $rc -eq 0 && test "$(json_num tokens)" = 1024'
run "$SEPCTL" separators --model "$P"
ok "separators of a padded vocabulary: the tokenizer's" \
    'test $rc -eq 0 && test "$(cat "$tmp/out")" = "1 12 14 26 27 31 198 199 221 360 1679"'
# an added token at id 8192: one id beyond the model's 8192 rows
B=$tmp/books-llama-16m-bigtok
mkdir "$B" && for f in "$L"/*; do ln -s "$f" "$B/"; done && rm "$B/tokenizer.json" &&
    sed 's/^  "added_tokens": \[$/&{"id": 8192, "content": "<|pad|>", "special": true},/' \
        "$L/tokenizer.json" >"$B/tokenizer.json"
run "$SEPCTL" eval --model "$B" --method full --ids "$IDS" --max-tokens 10
ok "eval refuses a tokenizer with an id beyond the model's vocabulary, naming both sizes" \
    'test $rc -eq 1 && grep -q "the tokenizer has 8193 ids" "$tmp/err" && grep -q "the model 8192" "$tmp/err" && grep -q "$B" "$tmp/err"'
run "$SEPCTL" separators --model "$B"
ok "separators refuses it too" 'test $rc -eq 1 && grep -q "the tokenizer has 8193 ids" "$tmp/err"'

# sliding windows: every layer (Mistral sliding_window; Qwen2 from
# max_window_layers 0 on, or every layer_types entry sliding)
A=$SEP_SHARED/models/arch
copy_model "$A/tiny-mistral" "$tmp/mw" 's/"sliding_window": null/"sliding_window": 100/'
copy_model "$A/tiny-qwen2" "$tmp/qw" 's/"sliding_window": null/"sliding_window": 100/; s/"use_sliding_window": false/"use_sliding_window": true/; s/"full_attention"/"sliding_attention"/'
copy_model "$A/tiny-qwen2" "$tmp/qm" 's/"sliding_window": null/"sliding_window": 100/; s/"use_sliding_window": false/"use_sliding_window": true/; s/"max_window_layers": 28/"max_window_layers": 0/; /"layer_types"/,/\]/d'
copy_model "$A/tiny-qwen2" "$tmp/qh" 's/"sliding_window": null/"sliding_window": 100/; s/"use_sliding_window": false/"use_sliding_window": true/; s/"max_window_layers": 28/"max_window_layers": 1/; /"layer_types"/,/\]/d'
run "$SEPCTL" eval --model "$tmp/mw" --method full --json --max-tokens 1024 --ids "$IDS" --nll-out "$tmp/mw.nll"
ok "eval full, Mistral sliding_window 100: transformers' NLLs; a query sees 100 keys at most" \
    'test $rc -eq 0 && hf_near "$tmp/mw.nll" "$HG/hf_full.tiny-mistral-window.persuasion.1024.nll" && test "$(json_num max_kv)" = 100'
run "$SEPCTL" eval --model "$tmp/mw" --method full --per-token --max-tokens 300 --ids "$IDS" --nll-out "$tmp/mw.one"
ok "eval full --per-token under the window: the chunked NLLs within 1e-4" \
    'test $rc -eq 0 && head -n 300 "$tmp/mw.nll" | paste "$tmp/mw.one" - | awk "{ d = \$1 - \$2; if (d < 0) d = -d; if (d > 1e-4) bad = 1; n++ } END { exit bad || n != 300 }"'
for q in qw qm; do
    run "$SEPCTL" eval --model "$tmp/$q" --method full --json --max-tokens 1024 --ids "$IDS" --nll-out "$tmp/$q.nll"
    ok "eval full, Qwen2 sliding on every layer ($q): transformers' NLLs" \
        'test $rc -eq 0 && hf_near "$tmp/$q.nll" "$HG/hf_full.tiny-qwen2-window.persuasion.1024.nll"'
done
run "$SEPCTL" eval --model "$tmp/qh" --method full --ids "$IDS" --max-tokens 10
ok "eval full refuses a window on some layers only, naming the keys" \
    'test $rc -eq 1 && grep -q "2 of the 3 layers" "$tmp/err" && grep -q max_window_layers "$tmp/err"'
# SepLLM and StreamingLLM below the window: a query sees c + 1 <= 100
# keys, so the window changes nothing
SL="--init 4 --seps 16 --window 32 --capacity 99 --max-tokens 1024 --ids $IDS"
run "$SEPCTL" eval --model "$tmp/mw" $SL --nll-out "$tmp/mw.sep"
"$SEPCTL" eval --model "$A/tiny-mistral" $SL --nll-out "$tmp/m.sep" >/dev/null 2>&1
ok "eval sepllm with c below the window: the NLLs without a window, bitwise" 'test $rc -eq 0 && cmp -s "$tmp/mw.sep" "$tmp/m.sep"'
run "$SEPCTL" eval --model "$tmp/qh" --method streaming --capacity 99 --max-tokens 1024 --ids "$IDS" --nll-out "$tmp/qh.st"
"$SEPCTL" eval --model "$A/tiny-qwen2" --method streaming --capacity 99 --max-tokens 1024 --ids "$IDS" --nll-out "$tmp/q.st" >/dev/null 2>&1
ok "eval streaming with c below a window on some layers: the NLLs without a window, bitwise" 'test $rc -eq 0 && cmp -s "$tmp/qh.st" "$tmp/q.st"'
run "$SEPCTL" eval --model "$tmp/mw" --init 4 --seps 16 --window 32 --capacity 100 --ids "$IDS" --max-tokens 10
ok "eval sepllm with c at the window is refused, naming it" \
    'test $rc -eq 1 && grep -q "capacity c=100" "$tmp/err" && grep -q "sliding_window" "$tmp/err"'

exit 0
