/* fastmath.c: the row kernels of fastmath.h, cloned per instruction set. */
#include "fastmath.h"

#include <math.h>

#define SEP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

/* max(row[0..n)), inlined into each clone */
static inline float fastmath_row_max(const float *row, int n)
{
    float mx = row[0];
    #pragma omp simd reduction(max:mx)
    for (int j = 1; j < n; j++)
        mx = row[j] > mx ? row[j] : mx;
    return mx;
}

SEP_CLONES
void sep_softmax_inplace(float *row, int n)
{
    float mx = fastmath_row_max(row, n);
    float sum = 0.0f;
    #pragma omp simd reduction(+:sum)
    for (int j = 0; j < n; j++) {
        row[j] = sep_expf(row[j] - mx);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    #pragma omp simd
    for (int j = 0; j < n; j++)
        row[j] *= inv;
}

SEP_CLONES
float sep_logsumexp(const float *row, int n)
{
    float mx = fastmath_row_max(row, n);
    float sum = 0.0f;
    #pragma omp simd reduction(+:sum)
    for (int j = 0; j < n; j++)
        sum += sep_expf(row[j] - mx);
    return mx + logf(sum);
}

SEP_CLONES
void sep_silu_mul_row(float *y, const float *g, const float *u, int n)
{
    #pragma omp simd
    for (int j = 0; j < n; j++)
        y[j] = g[j] / (1.0f + sep_expf(-g[j])) * u[j];
}
