#!/bin/sh
# gpu_check.sh: the tests of the CUDA backend, on the GPU machine (CI has
# no GPU). Every kernel against its CPU twin's test in fp32 and bf16, the
# samplers of the pick op against their distributions, and the golden
# runs through the CUDA backend in fp32. Run from a tree built
# with CUDA, with the shared fixtures at $SEP_SHARED (default ../shared);
# SEP_TEST_RUNS limits the golden runs to the models carried there. The
# CUDA module (kernels/sepd-cuda.so, built here, ignored by git) must be
# carried along with the test binaries.
set -u
cd "$(dirname "$0")/.."
export SEPD_CUDA_MODULE=${SEPD_CUDA_MODULE:-$PWD/kernels/sepd-cuda.so}
export SEP_SHARED=${SEP_SHARED:-../shared} CMOCKA_MESSAGE_OUTPUT=stdout SEP_TEST_DEVICE=cuda
status=0
echo "== kernels, fp32"
tests/test_kernels || status=1
echo "== kernels, bf16"
SEP_TEST_PRECISION=bf16 tests/test_kernels || status=1
echo "== the pick's samplers, statistically"
tests/test_sample cuda || status=1
echo "== golden runs, fp32"
tests/test_forward || status=1
exit $status
