#!/bin/sh
# fuzz.sh [SECONDS [JOBS]]: build the libFuzzer harnesses of tests/fuzz in
# build-fuzz/ (a copy of the tree configured CC=clang --enable-fuzzers) and
# run each for SECONDS (default 30), JOBS at a time (default 2), from its
# corpus tests/fuzz/corpus/NAME. Inputs that add coverage land in
# build-fuzz/corpus/NAME; an input that crashes one lands in
# build-fuzz/crashes/NAME/ (copy it into tests/fuzz/corpus/NAME with the
# fix: the suite replays it from then on). Prints TAP ("ok 1 - fuzz
# config: ...") and exits 1 when any harness crashed.
set -eu
cd "$(dirname "$0")/.."
secs=${1:-30}
jobs=${2:-2}
root=$(pwd)
shared=${SEP_SHARED:-$root/../shared}
scripts/tree-copy.sh build-fuzz
(
    cd build-fuzz
    [ -x configure ] && [ configure -nt configure.ac ] || autoreconf -fi >autoreconf.out 2>&1 ||
        { tail -n 20 autoreconf.out; exit 1; }
    if [ ! -f Makefile ]; then
        ./configure CC="${FUZZ_CC:-clang-14}" --enable-fuzzers --without-cuda >configure.out 2>&1 ||
            { tail -n 20 configure.out; exit 1; }
    fi
    make -j"$(nproc)" fuzzers >make.out 2>&1 || { tail -n 40 make.out; exit 1; }
)
names=$(sed -n 's/^FUZZ_NAMES = //p' Makefile.am)
mkdir -p build-fuzz/logs
echo "1..$(echo $names | wc -w)"
run_one() {
    name=$1
    mkdir -p "build-fuzz/corpus/$name" "build-fuzz/crashes/$name"
    max=4096
    [ "$name" = tokenize ] && max=8192
    [ "$name" = tok_load ] && max=16384
    # -rss_limit_mb: the harnesses stay small; a parser that allocates what
    # an input claims is a bug found
    SEP_SHARED=$shared SEP_SOURCE_ROOT=$root \
    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
        "build-fuzz/tests/fuzz/fuzz_$name" -max_total_time="$secs" -max_len=$max \
        -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
        -artifact_prefix="build-fuzz/crashes/$name/" \
        "build-fuzz/corpus/$name" "tests/fuzz/corpus/$name" \
        >"build-fuzz/logs/$name.log" 2>&1
}
i=0
for name in $names; do
    run_one "$name" &
    i=$((i + 1))
    if [ $((i % jobs)) -eq 0 ]; then wait; fi
done
wait
i=0
bad=0
for name in $names; do
    i=$((i + 1))
    log=build-fuzz/logs/$name.log
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if grep -q '^Done [0-9]* runs' "$log" && ! grep -q 'ERROR: \|==ERROR\|runtime error' "$log"; then
        echo "ok $i - fuzz $name: ${runs:-?} runs in ${secs} s, clean"
    else
        bad=1
        echo "not ok $i - fuzz $name: crashed (input in build-fuzz/crashes/$name/)"
        grep -m 5 'ERROR\|runtime error\|property failed\|^SUMMARY' "$log" | sed 's/^/# /'
    fi
done
exit $bad
