#!/bin/sh
# check.sh: install, build and run every test, then the whole suite again
# under ASan and UBSan (scripts/check-sanitizers.sh, in build-asan/), then
# every fuzzer for 30 s (scripts/fuzz.sh, in build-fuzz/); ends with the
# line "N passed, N failed" counting the TAP cases of both passes and one
# case per fuzzer. SEP_FUZZ_SECONDS sets the fuzzing time.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
status=0
make -j"$(nproc)" check || status=$?
scripts/check-sanitizers.sh || status=$?
scripts/fuzz.sh "${SEP_FUZZ_SECONDS:-30}" 2 >fuzz.tap || status=$?
cat fuzz.tap
count() { sed -n "s/^# $1: *\([0-9]*\).*/\1/p" "$2" 2>/dev/null | head -n 1; }
pass=0
fail=0
for log in test-suite.log build-asan/test-suite.log; do
    if [ ! -f "$log" ]; then
        echo "$log: missing"
        fail=$((fail + 1))
        continue
    fi
    p=$(count PASS "$log")
    f=$(( $(count FAIL "$log") + $(count ERROR "$log") + $(count XPASS "$log") ))
    pass=$((pass + ${p:-0}))
    fail=$((fail + f))
done
fpass=$(grep -c '^ok ' fuzz.tap || true)
ffail=$(grep -c '^not ok ' fuzz.tap || true)
[ $((fpass + ffail)) -gt 0 ] || ffail=1
pass=$((pass + fpass))
fail=$((fail + ffail))
[ "$fail" -eq 0 ] || sed -n '/^FAIL\|^ERROR\|^not ok/p' tests/*.log build-asan/tests/*.log fuzz.tap 2>/dev/null | head -n 40
echo "${pass} passed, ${fail} failed"
[ "$status" -eq 0 ] && [ "$fail" -eq 0 ]
