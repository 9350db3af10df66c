#!/bin/sh
# run-long.sh [HOURS [JOBS]]: every fuzzer of tests/fuzz for HOURS (default
# 4) each, JOBS at a time (default: the cores), through scripts/fuzz.sh.
# New coverage accumulates in build-fuzz/corpus/NAME across runs; crashes
# land in build-fuzz/crashes/NAME/. To keep a crash as a regression test,
# fix the parser, then copy the input into tests/fuzz/corpus/NAME/ (the
# suite replays it: tests/test_fuzz_corpus.sh). To grow the seeds, merge
# the accumulated corpus into the repo's, minimised:
#   build-fuzz/tests/fuzz/fuzz_NAME -merge=1 tests/fuzz/corpus/NAME build-fuzz/corpus/NAME
set -eu
cd "$(dirname "$0")/../.."
hours=${1:-4}
jobs=${2:-$(nproc)}
secs=$(awk -v h="$hours" 'BEGIN { printf "%d", h * 3600 }')
exec scripts/fuzz.sh "$secs" "$jobs"
