#!/bin/sh
# check-sanitizers.sh: the whole suite again under AddressSanitizer (leaks
# included) and UndefinedBehaviorSanitizer, in build-asan/ (a copy of the
# tree configured --enable-sanitizers; CUDA off: CI has no GPU).
#
# Every process the tests start (sepd, its workers under mpirun, sepctl,
# the test programs) writes a report, if it has one, to
# build-asan/sanitizer/{asan,ubsan}.PID rather than to its stderr: a
# worker's report at exit would otherwise end up in a log the test has
# removed, unseen. Such a report fails its test where the test notices
# the exit status, and always fails the last case this script adds to
# the suite's counts (build-asan/sanitizer.tap): "no sanitizer report
# from any process", which prints the start of each report.
#
# Leaks: tests/lsan.supp names the libraries of Open MPI, whose MPI_Init
# and progress thread leave allocations at exit (nothing else is
# suppressed). Their stacks need the slow unwinder (Open MPI is built
# without frame pointers) and MCA components kept mapped until exit.
#
# SEP_TEST_SCALE (default 8 here) makes the heavy tests run on shorter
# streams (tests/golden.h); every test runs. Results in
# build-asan/test-suite.log and build-asan/tests/*.log.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
SEP_SHARED=${SEP_SHARED:-$root/../shared}
SEP_TEST_SCALE=${SEP_TEST_SCALE:-8}
export SEP_SHARED SEP_TEST_SCALE
scripts/tree-copy.sh build-asan
cd build-asan
[ -x configure ] && [ configure -nt configure.ac ] || autoreconf -fi >autoreconf.out 2>&1 ||
    { tail -n 20 autoreconf.out; exit 1; }
[ -f Makefile ] || ./configure --enable-sanitizers --without-cuda >configure.out 2>&1 ||
    { tail -n 20 configure.out; exit 1; }
make -j"$(nproc)" >make.out 2>&1 || { tail -n 40 make.out; exit 1; }
reports=$(pwd)/sanitizer
rm -rf "$reports"
mkdir -p "$reports"
ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0:malloc_context_size=24:detect_stack_use_after_return=0:log_path=$reports/asan
LSAN_OPTIONS=suppressions=$root/tests/lsan.supp:print_suppressions=0
UBSAN_OPTIONS=print_stacktrace=1:log_path=$reports/ubsan
OMPI_MCA_mca_base_component_disable_dlclose=1
export ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS OMPI_MCA_mca_base_component_disable_dlclose
status=0
make -j"$(nproc)" check || status=$?
{
    echo "1..1"
    n=$(find "$reports" -type f | wc -l)
    if [ "$n" -eq 0 ]; then
        echo "ok 1 - no sanitizer report from any process of the suite"
    else
        echo "not ok 1 - $n process(es) wrote a sanitizer report ($reports):"
        for f in $(find "$reports" -type f | sort | head -n 5); do
            echo "# $f:"
            grep -m 12 -E 'ERROR|runtime error|SUMMARY|^ +#[0-9]' "$f" | sed 's/^/#   /'
        done
        status=1
    fi
} >sanitizer.tap
cat sanitizer.tap
exit $status
