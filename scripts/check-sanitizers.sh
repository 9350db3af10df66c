#!/bin/sh
# check-sanitizers.sh: the whole suite again under AddressSanitizer and
# UndefinedBehaviorSanitizer, in build-asan/ (a copy of the tree
# configured --enable-sanitizers; CUDA off: CI has no GPU). Any report
# fails its test. Results in build-asan/test-suite.log and tests/*.log.
# SEP_TEST_SCALE (default 4 here) makes the heavy tests run on smaller
# inputs (tests/README.md); every test runs.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
SEP_SHARED=${SEP_SHARED:-$root/../shared}
SEP_TEST_SCALE=${SEP_TEST_SCALE:-4}
export SEP_SHARED SEP_TEST_SCALE
scripts/tree-copy.sh build-asan
cd build-asan
[ -x configure ] && [ configure -nt configure.ac ] || autoreconf -fi
[ -f Makefile ] || ./configure --enable-sanitizers --without-cuda >configure.out 2>&1 ||
    { tail -n 20 configure.out; exit 1; }
make -j"$(nproc)"
# leaks count too; abort at the first report with its stack
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=0}
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export ASAN_OPTIONS UBSAN_OPTIONS
make -j"$(nproc)" check
