#!/bin/sh
# test_fuzz_corpus.sh: every fuzz harness (tests/fuzz) replays its corpus
# (tests/fuzz/corpus/NAME: the seeds and every input that ever crashed it)
# built without libFuzzer: one TAP case per harness. Under
# --enable-sanitizers the replay runs under ASan and UBSan too.
set -u
: "${FUZZ_BIN:?}" "${FUZZ_CORPUS:?}" "${FUZZ_NAMES:?}"
n=0
for name in $FUZZ_NAMES; do n=$((n + 1)); done
echo "1..$n"
i=0
log=${TMPDIR:-/tmp}/sepd-replay.$$
for name in $FUZZ_NAMES; do
    i=$((i + 1))
    dir=$FUZZ_CORPUS/$name
    if [ ! -d "$dir" ] || [ -z "$(ls "$dir")" ]; then
        echo "not ok $i - $name: no corpus in $dir"
        continue
    fi
    if "$FUZZ_BIN/replay_$name" "$dir" > "$log" 2>&1; then
        echo "ok $i - $name: $(tail -n 1 "$log") from tests/fuzz/corpus/$name, clean"
    else
        echo "not ok $i - $name: the replay failed:"
        tail -n 30 "$log" | sed 's/^/# /'
    fi
done
rm -f "$log"
