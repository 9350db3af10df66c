#!/bin/sh
# check.sh: install, build and run every test; ends with the line
# "N passed, N failed" (automake's counts over all TAP cases).
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
status=0
make -j"$(nproc)" check || status=$?
log=test-suite.log
if [ ! -f "$log" ]; then
    echo "0 passed, 1 failed"
    exit 1
fi
count() { sed -n "s/^# $1: *\([0-9]*\).*/\1/p" "$log" | head -n 1; }
pass=$(count PASS)
fail=$(( $(count FAIL) + $(count ERROR) + $(count XPASS) ))
[ "$fail" -eq 0 ] || sed -n '/^FAIL\|^ERROR\|^not ok/p' tests/*.log | head -n 40
echo "${pass:-0} passed, ${fail} failed"
[ "$status" -eq 0 ] && [ "$fail" -eq 0 ]
