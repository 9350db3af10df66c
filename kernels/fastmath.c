/* fastmath.c: the row kernels of fastmath.h, cloned per instruction set. */
#include "fastmath.h"

#include <math.h>
#include <stddef.h>

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

/* Keys per score tile and queries per register block. Every score is
 * a sum over the head dimension in order and every output a sum over the
 * keys in order, vectorised across keys and across the head dimension
 * respectively, so a query's result never depends on its neighbours. */
#define ATTN_LANES 16
#define ATTN_ROWS 4

/* sc[r][j0 + jj] for jj < ATTN_LANES: rows [r0, r0 + nr) against a
 * transposed key tile kt (d, ATTN_LANES). Missing rows of a short block
 * repeat the last one and are not stored. */
static inline __attribute__((always_inline))
void attn_score_tile(float *sc, int ld, const float *q, int q_stride, const float *kt,
                     int r0, int nr, int j0, int d, float scale)
{
    const float *q0 = q + (size_t)r0 * q_stride;
    const float *q1 = q0 + (size_t)(nr > 1) * q_stride;
    const float *q2 = q0 + (size_t)(nr > 2 ? 2 : nr - 1) * q_stride;
    const float *q3 = q0 + (size_t)(nr - 1 < 3 ? nr - 1 : 3) * q_stride;
    float a0[ATTN_LANES] = { 0 }, a1[ATTN_LANES] = { 0 }, a2[ATTN_LANES] = { 0 },
          a3[ATTN_LANES] = { 0 };
    for (int t = 0; t < d; t++) {
        const float *kr = kt + t * ATTN_LANES;
        float x0 = q0[t], x1 = q1[t], x2 = q2[t], x3 = q3[t];
        #pragma omp simd
        for (int jj = 0; jj < ATTN_LANES; jj++) {
            a0[jj] += x0 * kr[jj];
            a1[jj] += x1 * kr[jj];
            a2[jj] += x2 * kr[jj];
            a3[jj] += x3 * kr[jj];
        }
    }
    float *acc[ATTN_ROWS] = { a0, a1, a2, a3 };
    for (int i = 0; i < nr; i++)
        for (int jj = 0; jj < ATTN_LANES; jj++)
            sc[(size_t)(r0 + i) * ld + j0 + jj] = acc[i][jj] * scale;
}

/* out[r][t0 + tt] for tt < ATTN_LANES, rows [r0, r0 + nr): the sum over
 * keys j < n of p[r][j] * v[j] (p is zero past a row's last key) */
static inline __attribute__((always_inline))
void attn_value_tile(float *out, int out_stride, const float *p, int ld, const float *v,
                     int kv_stride, int r0, int nr, int n, int t0)
{
    const float *p0 = p + (size_t)r0 * ld;
    const float *p1 = p0 + (size_t)(nr > 1) * ld;
    const float *p2 = p0 + (size_t)(nr > 2 ? 2 : nr - 1) * ld;
    const float *p3 = p0 + (size_t)(nr - 1 < 3 ? nr - 1 : 3) * ld;
    float a0[ATTN_LANES] = { 0 }, a1[ATTN_LANES] = { 0 }, a2[ATTN_LANES] = { 0 },
          a3[ATTN_LANES] = { 0 };
    for (int j = 0; j < n; j++) {
        const float *vj = v + (size_t)j * kv_stride + t0;
        float x0 = p0[j], x1 = p1[j], x2 = p2[j], x3 = p3[j];
        #pragma omp simd
        for (int tt = 0; tt < ATTN_LANES; tt++) {
            a0[tt] += x0 * vj[tt];
            a1[tt] += x1 * vj[tt];
            a2[tt] += x2 * vj[tt];
            a3[tt] += x3 * vj[tt];
        }
    }
    float *acc[ATTN_ROWS] = { a0, a1, a2, a3 };
    for (int i = 0; i < nr; i++)
        for (int tt = 0; tt < ATTN_LANES; tt++)
            out[(size_t)(r0 + i) * out_stride + t0 + tt] = acc[i][tt];
}

SEP_CLONES
void sep_attn_head(float *out, int out_stride, const float *q, int q_stride,
                   const float *k, const float *v, int kv_stride, int m, int n0, int d,
                   float scale, float *sc, int ld)
{
    float kt[ATTN_LANES * d]; /* d <= SEP_ATTN_MAX_HEAD_DIM: at most 32 KiB */
    int n = n0 + m; /* keys of the last query */
    for (int j0 = 0; j0 < n; j0 += ATTN_LANES) {
        int nk = n - j0 < ATTN_LANES ? n - j0 : ATTN_LANES;
        for (int t = 0; t < d; t++)
            for (int jj = 0; jj < ATTN_LANES; jj++)
                kt[t * ATTN_LANES + jj] = jj < nk ? k[(size_t)(j0 + jj) * kv_stride + t] : 0.0f;
        /* queries that see key j0 or later */
        for (int r0 = j0 - n0 > 0 ? j0 - n0 : 0; r0 < m; r0 += ATTN_ROWS)
            attn_score_tile(sc, ld, q, q_stride, kt, r0, m - r0 < ATTN_ROWS ? m - r0 : ATTN_ROWS,
                            j0, d, scale);
    }
    /* rows are softmaxed over their keys and zeroed past them */
    for (int r = 0; r < m; r++) {
        float *row = sc + (size_t)r * ld;
        sep_softmax_inplace(row, n0 + r + 1);
        for (int j = n0 + r + 1; j < n; j++)
            row[j] = 0.0f;
    }
    int full = d - d % ATTN_LANES;
    for (int r0 = 0; r0 < m; r0 += ATTN_ROWS) {
        int nr = m - r0 < ATTN_ROWS ? m - r0 : ATTN_ROWS;
        for (int t0 = 0; t0 < full; t0 += ATTN_LANES)
            attn_value_tile(out, out_stride, sc, ld, v, kv_stride, r0, nr, n0 + r0 + nr, t0);
    }
    /* a head size that is not a multiple of the tile: the rest, plainly */
    for (int r = 0; r < m && full < d; r++)
        for (int t = full; t < d; t++) {
            float acc = 0.0f;
            for (int j = 0; j <= n0 + r; j++)
                acc += sc[(size_t)r * ld + j] * v[(size_t)j * kv_stride + t];
            out[(size_t)r * out_stride + t] = acc;
        }
}

/* kt (d, ATTN_LANES) := rows [j0, j0 + nk) of k transposed, zero past nk */
static inline __attribute__((always_inline))
void attn_key_tile(float *kt, const float *k, int kv_stride, int j0, int nk, int d)
{
    for (int t = 0; t < d; t++)
        for (int jj = 0; jj < ATTN_LANES; jj++)
            kt[t * ATTN_LANES + jj] = jj < nk ? k[(size_t)(j0 + jj) * kv_stride + t] : 0.0f;
}

/* out rows [r0, r0 + nr) at dims [t0, t0 + ATTN_LANES) of a run block:
 * each row's prefix values in order (pv rows keys[r][0] ..), then the
 * group's window rows [g_lo, g_hi) in order, a row taking a zero weight
 * for those outside its window (as sep_attn_head's rows do past their
 * last key). The sum of each output is sep_attn_head's, key by key. */
static inline __attribute__((always_inline))
void attn_value_tile_run(float *out, int out_stride, const float *sc, int ld, const float *pv,
                         const float *v, int kv_stride, const int32_t (*keys)[4], int r0, int nr,
                         int g_lo, int g_hi, int t0)
{
    int ri[ATTN_ROWS], np[ATTN_ROWS], max_np = 0, widest = 0;
    for (int i = 0; i < ATTN_ROWS; i++) {
        ri[i] = r0 + (i < nr ? i : nr - 1);
        np[i] = keys[ri[i]][1] - keys[ri[i]][0];
        if (np[i] > max_np) {
            max_np = np[i];
            widest = i;
        }
    }
    const float *p0 = sc + (size_t)ri[0] * ld, *p1 = sc + (size_t)ri[1] * ld;
    const float *p2 = sc + (size_t)ri[2] * ld, *p3 = sc + (size_t)ri[3] * ld;
    float a0[ATTN_LANES] = { 0 }, a1[ATTN_LANES] = { 0 }, a2[ATTN_LANES] = { 0 },
          a3[ATTN_LANES] = { 0 };
    for (int j = 0; j < max_np; j++) {
        /* a row whose prefix is shorter weighs the widest row's value by 0 */
        const float *vw = pv + (size_t)(keys[ri[widest]][0] + j) * kv_stride + t0;
        const float *v0 = j < np[0] ? pv + (size_t)(keys[ri[0]][0] + j) * kv_stride + t0 : vw;
        const float *v1 = j < np[1] ? pv + (size_t)(keys[ri[1]][0] + j) * kv_stride + t0 : vw;
        const float *v2 = j < np[2] ? pv + (size_t)(keys[ri[2]][0] + j) * kv_stride + t0 : vw;
        const float *v3 = j < np[3] ? pv + (size_t)(keys[ri[3]][0] + j) * kv_stride + t0 : vw;
        float x0 = j < np[0] ? p0[j] : 0.0f, x1 = j < np[1] ? p1[j] : 0.0f;
        float x2 = j < np[2] ? p2[j] : 0.0f, x3 = j < np[3] ? p3[j] : 0.0f;
        #pragma omp simd
        for (int tt = 0; tt < ATTN_LANES; tt++) {
            a0[tt] += x0 * v0[tt];
            a1[tt] += x1 * v1[tt];
            a2[tt] += x2 * v2[tt];
            a3[tt] += x3 * v3[tt];
        }
    }
    /* the window's scores start after the row's prefix: key row g of row
     * i is its column g + off[i] */
    int lo[ATTN_ROWS], hi[ATTN_ROWS], off[ATTN_ROWS];
    for (int i = 0; i < ATTN_ROWS; i++) {
        lo[i] = keys[ri[i]][2];
        hi[i] = keys[ri[i]][3];
        off[i] = np[i] - lo[i];
    }
    for (int g = g_lo; g < g_hi; g++) {
        const float *vj = v + (size_t)g * kv_stride + t0;
        float x0 = g >= lo[0] && g < hi[0] ? p0[g + off[0]] : 0.0f;
        float x1 = g >= lo[1] && g < hi[1] ? p1[g + off[1]] : 0.0f;
        float x2 = g >= lo[2] && g < hi[2] ? p2[g + off[2]] : 0.0f;
        float x3 = g >= lo[3] && g < hi[3] ? p3[g + off[3]] : 0.0f;
        #pragma omp simd
        for (int tt = 0; tt < ATTN_LANES; tt++) {
            a0[tt] += x0 * vj[tt];
            a1[tt] += x1 * vj[tt];
            a2[tt] += x2 * vj[tt];
            a3[tt] += x3 * vj[tt];
        }
    }
    float *acc[ATTN_ROWS] = { a0, a1, a2, a3 };
    for (int i = 0; i < nr; i++)
        for (int tt = 0; tt < ATTN_LANES; tt++)
            out[(size_t)(r0 + i) * out_stride + t0 + tt] = acc[i][tt];
}

SEP_CLONES
void sep_attn_head_run(float *out, int out_stride, const float *q, int q_stride,
                       const float *pk, const float *pv, const float *k, const float *v,
                       int kv_stride, const int32_t (*keys)[4], int m, int d, float scale,
                       float *sc, int ld)
{
    float kt[ATTN_LANES * d]; /* d <= SEP_ATTN_MAX_HEAD_DIM: at most 32 KiB */
    float tile[ATTN_ROWS * ATTN_LANES];
    /* prefix scores first (a tile stores whole lanes, past a short prefix
     * into the columns its window's scores then take): the rows that share
     * a prefix share its key tiles */
    for (int r0 = 0; r0 < m;) {
        int lo = keys[r0][0], hi = keys[r0][1], r1 = r0 + 1;
        while (r1 < m && keys[r1][0] == lo && keys[r1][1] == hi)
            r1++;
        for (int j0 = lo; j0 < hi; j0 += ATTN_LANES) {
            attn_key_tile(kt, pk, kv_stride, j0, hi - j0 < ATTN_LANES ? hi - j0 : ATTN_LANES, d);
            for (int r = r0; r < r1; r += ATTN_ROWS)
                attn_score_tile(sc, ld, q, q_stride, kt, r, r1 - r < ATTN_ROWS ? r1 - r : ATTN_ROWS,
                                j0 - lo, d, scale);
        }
        r0 = r1;
    }
    /* window scores: key tiles over the rows any query's window holds,
     * each scored for the groups of four queries that see one of its keys
     * and stored at each query's column of the key */
    int w_lo = keys[0][2], w_hi = keys[0][3];
    for (int r = 1; r < m; r++) {
        w_lo = keys[r][2] < w_lo ? keys[r][2] : w_lo;
        w_hi = keys[r][3] > w_hi ? keys[r][3] : w_hi;
    }
    for (int g0 = w_lo; g0 < w_hi; g0 += ATTN_LANES) {
        int nk = w_hi - g0 < ATTN_LANES ? w_hi - g0 : ATTN_LANES;
        attn_key_tile(kt, k, kv_stride, g0, nk, d);
        for (int r0 = 0; r0 < m; r0 += ATTN_ROWS) {
            int nr = m - r0 < ATTN_ROWS ? m - r0 : ATTN_ROWS, sees = 0;
            for (int i = 0; i < nr; i++)
                sees |= keys[r0 + i][2] < g0 + nk && keys[r0 + i][3] > g0;
            if (!sees)
                continue;
            attn_score_tile(tile, ATTN_LANES, q + (size_t)r0 * q_stride, q_stride, kt, 0, nr, 0,
                            d, scale);
            for (int i = 0; i < nr; i++) {
                const int32_t *kr = keys[r0 + i];
                /* key row g0 + jj is column (prefix) + g0 + jj - kr[2] */
                float *row = sc + (size_t)(r0 + i) * ld + (kr[1] - kr[0]);
                int a = kr[2] > g0 ? kr[2] - g0 : 0, b = kr[3] < g0 + nk ? kr[3] - g0 : nk;
                for (int jj = a; jj < b; jj++)
                    row[g0 + jj - kr[2]] = tile[i * ATTN_LANES + jj];
            }
        }
    }
    for (int r = 0; r < m; r++)
        sep_softmax_inplace(sc + (size_t)r * ld,
                            keys[r][1] - keys[r][0] + keys[r][3] - keys[r][2]);
    int full = d - d % ATTN_LANES;
    for (int r0 = 0; r0 < m; r0 += ATTN_ROWS) {
        int nr = m - r0 < ATTN_ROWS ? m - r0 : ATTN_ROWS;
        int g_lo = keys[r0][2], g_hi = keys[r0][3];
        for (int i = 1; i < nr; i++) {
            g_lo = keys[r0 + i][2] < g_lo ? keys[r0 + i][2] : g_lo;
            g_hi = keys[r0 + i][3] > g_hi ? keys[r0 + i][3] : g_hi;
        }
        for (int t0 = 0; t0 < full; t0 += ATTN_LANES)
            attn_value_tile_run(out, out_stride, sc, ld, pv, v, kv_stride, keys, r0, nr, g_lo,
                                g_hi, t0);
    }
    /* a head size that is not a multiple of the tile: the rest, plainly */
    for (int r = 0; r < m && full < d; r++) {
        const int32_t *kr = keys[r];
        const float *row = sc + (size_t)r * ld;
        int np = kr[1] - kr[0];
        for (int t = full; t < d; t++) {
            float acc = 0.0f;
            for (int j = 0; j < np; j++)
                acc += row[j] * pv[(size_t)(kr[0] + j) * kv_stride + t];
            for (int g = kr[2]; g < kr[3]; g++)
                acc += row[np + g - kr[2]] * v[(size_t)g * kv_stride + t];
            out[(size_t)r * out_stride + t] = acc;
        }
    }
}

/* Vectorised across the panel's columns, SEP_MM_ROWS rows per k (the
 * accumulators fill the vector registers: 12 of AVX-512's). A short tile
 * repeats its last row and does not store it. */
SEP_CLONES
void sep_matmul_tile(float *y, int ldy, const float *x, int ldx, const float *panel, int d,
                     int nr, int nc, const float *bias)
{
    const float *xr[SEP_MM_ROWS];
    for (int i = 0; i < SEP_MM_ROWS; i++)
        xr[i] = x + (size_t)(i < nr ? i : nr - 1) * ldx;
    float acc[SEP_MM_ROWS][SEP_MM_COLS] = { { 0 } };
    _Static_assert(SEP_MM_ROWS == 6, "the unroll pragma takes no macro: keep it in step");
    for (int k = 0; k < d; k++) {
        const float *wk = panel + (size_t)k * SEP_MM_COLS;
        #pragma GCC unroll 6
        for (int i = 0; i < SEP_MM_ROWS; i++) {
            float v = xr[i][k];
            #pragma omp simd
            for (int j = 0; j < SEP_MM_COLS; j++)
                acc[i][j] += v * wk[j];
        }
    }
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nc; j++)
            y[(size_t)i * ldy + j] = bias ? acc[i][j] + bias[j] : acc[i][j];
}
