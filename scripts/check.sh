#!/bin/sh
# check.sh: install, build and run every test (make check), then the whole
# suite again under ASan and UBSan (scripts/check-sanitizers.sh, in
# build-asan/), then every fuzzer for 30 s (scripts/fuzz.sh, in
# build-fuzz/); ends with one line "N passed, N failed" over all of it:
# the TAP cases of both passes, the sanitizer pass's check that no process
# wrote a report, and one case per fuzzer. SEP_FUZZ_SECONDS sets the
# fuzzing time (at least 30 in CI).
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
rm -f test-suite.log build-asan/test-suite.log build-asan/sanitizer.tap build-fuzz/fuzz.tap
status=0
make -j"$(nproc)" check || status=$?
scripts/check-sanitizers.sh || status=$?
mkdir -p build-fuzz
scripts/fuzz.sh "${SEP_FUZZ_SECONDS:-30}" 2 >build-fuzz/fuzz.tap || status=$?
cat build-fuzz/fuzz.tap
count() { sed -n "s/^# $1: *\([0-9]*\).*/\1/p" "$2" 2>/dev/null | head -n 1; }
pass=0
fail=0
for log in test-suite.log build-asan/test-suite.log; do
    if [ ! -f "$log" ]; then
        echo "$log: missing (the suite did not run)"
        fail=$((fail + 1))
        continue
    fi
    p=$(count PASS "$log")
    f=$(( $(count FAIL "$log") + $(count ERROR "$log") + $(count XPASS "$log") ))
    pass=$((pass + ${p:-0}))
    fail=$((fail + f))
done
# the TAP of the sanitizer reports and of the fuzzers; a missing or empty
# one counts as a failure
for tap in build-asan/sanitizer.tap build-fuzz/fuzz.tap; do
    p=$(grep -c '^ok ' "$tap" 2>/dev/null || true)
    f=$(grep -c '^not ok ' "$tap" 2>/dev/null || true)
    p=${p:-0} f=${f:-0}
    [ $((p + f)) -gt 0 ] || { echo "$tap: no results"; f=1; }
    pass=$((pass + p))
    fail=$((fail + f))
done
# each failed case with the diagnostics its test printed after it (the
# '#' lines: the command's stderr, the end of sepd's log), named by log
[ "$fail" -eq 0 ] || awk '
    FNR == 1 { keep = 0 }
    /^not ok|^ERROR|^FAIL/ { print FILENAME ": " $0; keep = /^not ok/ ? 12 : 0; next }
    keep > 0 && /^#/ { print "    " $0; keep--; next }
    { keep = 0 }' tests/*.log build-asan/tests/*.log build-asan/sanitizer.tap \
    build-fuzz/fuzz.tap 2>/dev/null | grep -v '^[^:]*: FAIL: ' | head -n 120
echo "${pass} passed, ${fail} failed"
[ "$status" -eq 0 ] && [ "$fail" -eq 0 ]
