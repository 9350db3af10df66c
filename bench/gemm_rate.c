/* gemm_rate: the fp32 matrix-product rate OpenBLAS reaches here, on the
 * shapes of a chunked forward (tokens x dim times dim x out), to compare
 * the engine's tokens/s with what the machine allows.
 *   gemm_rate [TOKENS DIM OUT]      default 512 384 1024 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    int m = argc > 3 ? atoi(argv[1]) : 512;
    int k = argc > 3 ? atoi(argv[2]) : 384;
    int n = argc > 3 ? atoi(argv[3]) : 1024;
    if (m < 1 || k < 1 || n < 1) {
        fprintf(stderr, "usage: gemm_rate [TOKENS DIM OUT]\n");
        return 2;
    }
    float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * n * k);
    float *c = malloc(sizeof(float) * m * n);
    if (!a || !b || !c) {
        fprintf(stderr, "gemm_rate: out of memory\n");
        return 1;
    }
    for (long i = 0; i < (long)m * k; i++)
        a[i] = (float)(i % 17) * 0.01f;
    for (long i = 0; i < (long)n * k; i++)
        b[i] = (float)(i % 13) * 0.01f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1, a, k, b, k, 0, c, n);
    int iters = 0;
    double t0 = now(), dt;
    do {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1, a, k, b, k, 0, c, n);
        iters++;
    } while ((dt = now() - t0) < 1.0);
    printf("gemm %dx%dx%d: %.1f GFLOP/s (openblas, all cores)\n", m, k, n,
           2.0 * m * n * k * iters / dt / 1e9);
    free(a);
    free(b);
    free(c);
    return 0;
}
