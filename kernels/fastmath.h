/* fastmath.h: vectorised exp and the row kernels built on it (softmax,
 * log-sum-exp, SiLU) for the CPU backend. sep_expf is accurate to about
 * 2 ulp, far inside the 2e-3 NLL tolerance, and compiles to SIMD code
 * where libm's expf would be a call per element. The row kernels are
 * compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time,
 * so one binary runs everywhere and fast where it can. */
#ifndef SEP_FASTMATH_H
#define SEP_FASTMATH_H

#include <stdint.h>

#pragma omp declare simd
static inline float sep_expf(float x)
{
    /* e^x = 2^k * e^r, k = round(x / ln2), |r| <= ln2/2 (Cephes' split).
     * Rounding by adding 1.5 * 2^23 avoids floorf, which baseline x86-64
     * cannot vectorise. */
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* a NaN x gives a NaN p: k is taken as 0 there (converting NaN to an
     * int, and shifting the negative result, would be undefined) */
    int32_t ki = (int32_t)(k == k ? k : 0.0f);
    int32_t bits = (ki + 127) << 23;
    float scale; /* the bits as a float (clang rejects a union in a declare simd function) */
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* row[0..n) := softmax(row[0..n)) */
void sep_softmax_inplace(float *row, int n);

/* log(sum(exp(row[0..n)))) */
float sep_logsumexp(const float *row, int n);

/* Causal attention of one head for m queries whose first sees n0 + 1
 * keys: sc (m rows of stride ld) gets the softmaxed scores, out the
 * weighted values; d is at most SEP_ATTN_MAX_HEAD_DIM. Each output is summed key by key in a fixed order, so
 * a query's result does not depend on the other queries of the call. */
#define SEP_ATTN_MAX_HEAD_DIM 512
void sep_attn_head(float *out, int out_stride, const float *q, int q_stride,
                   const float *k, const float *v, int kv_stride, int m, int n0, int d,
                   float scale, float *sc, int ld);

/* The same for m queries that each see their own keys: query r sees rows
 * [keys[r][0], keys[r][1]) of pk/pv, then rows [keys[r][2], keys[r][3])
 * of k/v (at least one key in all), and its scores sit in sc's row r in
 * that order (ld at least every row's keys, rounded up to 16). Each
 * score, softmax and output is computed as sep_attn_head computes it for
 * a query whose keys are those rows one after another, so the results
 * are the same bits. wt is scratch of SEP_ATTN_RUN_ROWS rows of wl floats
 * (wl a multiple of 16). */
#define SEP_ATTN_RUN_ROWS 4
void sep_attn_head_run(float *out, int out_stride, const float *q, int q_stride,
                       const float *pk, const float *pv, const float *k, const float *v,
                       int kv_stride, const int32_t (*keys)[4], int m, int d, float scale,
                       float *sc, int ld, float *wt, int wl);

/* A weight packed for products: column panels of SEP_MM_COLS outputs,
 * panel p holding W^T's columns [p * SEP_MM_COLS, ...) as (d, SEP_MM_COLS)
 * rows, zero past the weight's last output. */
#define SEP_MM_COLS 32
#define SEP_MM_ROWS 6

/* y (nr, nc), row stride ldy, := x (nr, d), row stride ldx, times the
 * panel [+ bias (nc)]; nr <= SEP_MM_ROWS, nc <= SEP_MM_COLS. Each output
 * is one multiply-add per k, k in order from zero, so a row's result does
 * not depend on the rows, columns or threads of its call. */
void sep_matmul_tile(float *y, int ldy, const float *x, int ldx, const float *panel, int d,
                     int nr, int nc, const float *bias);

/* y[j] := silu(g[j]) * u[j] for j < n */
void sep_silu_mul_row(float *y, const float *g, const float *u, int n);

#endif
