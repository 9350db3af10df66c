/* fastmath.c: the row kernels of fastmath.h, cloned per instruction set. */
#include "fastmath.h"

#include <math.h>
#include <stddef.h>

/* clang 14 (the fuzzing build's compiler) emits no symbol for a C
 * function's clones: there the kernels are built once, for the baseline */
#if defined(__clang__) && __clang_major__ < 15
#define SEP_CLONES
#else
#define SEP_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif

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
_Static_assert(ATTN_ROWS == SEP_ATTN_RUN_ROWS, "fastmath.h's rows of run weights");

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

/* ---- runs (sep_attn_head_run) -------------------------------------------
 * Query r's keys are a virtual sequence: key j < np[r] is row
 * keys[r][0] + j of pk/pv, key j >= np[r] row keys[r][2] + j - np[r] of
 * k/v; its score j sits in column j of its row of sc. A segment (rows
 * with the same prefix and window start, their windows ending one after
 * another) of ATTN_ROWS rows or more runs exactly as sep_attn_head runs
 * its rows, over tiles of that sequence. Shorter segments (StreamingLLM's
 * one-token ones) share key tiles over the rows their windows cover
 * between them instead, each query taking its own lanes of each; their
 * value sums weigh by zero the rows a query does not see, as
 * sep_attn_head's rows weigh the keys past their last. Every score and
 * every output is so the same chain of operations as sep_attn_head's. */

/* kt (d, ATTN_LANES) := keys [j0, j0 + ATTN_LANES) of the sequence of np
 * rows of pk from pre, then rows of k from lo, transposed; zero from key
 * n on. */
static inline __attribute__((always_inline))
void attn_key_tile_run(float *kt, const float *pk, int pre, int np, const float *k, int lo,
                       int kv_stride, int j0, int n, int d)
{
    static const float zero[SEP_ATTN_MAX_HEAD_DIM];
    const float *rows[ATTN_LANES];
    for (int jj = 0; jj < ATTN_LANES; jj++) {
        int j = j0 + jj;
        rows[jj] = j >= n ? zero
                   : j < np ? pk + (size_t)(pre + j) * kv_stride
                            : k + (size_t)(lo + j - np) * kv_stride;
    }
    for (int t = 0; t < d; t++)
        for (int jj = 0; jj < ATTN_LANES; jj++)
            kt[t * ATTN_LANES + jj] = rows[jj][t];
}

/* acc rows += keys [0, n) weighted by w[i][0..n) times value rows vr[i]
 * + j rows (j < own[i]; with SEL past it, weight 0, vw + j rows), dims
 * [t0, t0 + ATTN_LANES): attn_value_tile's sum, row by row. */
static inline __attribute__((always_inline))
void attn_value_span(float *a0, float *a1, float *a2, float *a3, const float *const w[ATTN_ROWS],
                     const float *const vr[ATTN_ROWS], const int own[ATTN_ROWS], const float *vw,
                     int kv_stride, int n, const int sel)
{
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
    for (int j = 0; j < n; j++) {
        size_t at = (size_t)j * kv_stride;
        const float *v0 = vr[0] + at, *v1 = vr[1] + at, *v2 = vr[2] + at, *v3 = vr[3] + at;
        if (sel) {
            v0 = j < own[0] ? v0 : vw + at;
            v1 = j < own[1] ? v1 : vw + at;
            v2 = j < own[2] ? v2 : vw + at;
            v3 = j < own[3] ? v3 : vw + at;
        }
        float x0 = w0[j], x1 = w1[j], x2 = w2[j], x3 = w3[j];
        #pragma omp simd
        for (int tt = 0; tt < ATTN_LANES; tt++) {
            a0[tt] += x0 * v0[tt];
            a1[tt] += x1 * v1[tt];
            a2[tt] += x2 * v2[tt];
            a3[tt] += x3 * v3[tt];
        }
    }
}

/* out rows [r0, r0 + nr) of a run block, every dim of whole tiles. One
 * segment's rows (same: zeros past each row's keys up to the group's
 * most): its prefix values, then its window rows, the weights straight
 * from sc. Rows of several: each row's prefix values (a row with fewer
 * weighs the widest row's by 0), then the group's window rows [g_lo,
 * g_hi), each row weighing by 0 the rows it does not see; the weights
 * staged in wt (ATTN_ROWS rows of wl floats) a span of wl keys at a time. */
static inline __attribute__((always_inline))
void attn_value_group_run(float *out, int out_stride, const float *sc, int ld, const float *pv,
                          const float *v, int kv_stride, const int32_t (*keys)[4], int r0,
                          int nr, int d, int same, float *wt, int wl)
{
    int ri[ATTN_ROWS], np[ATTN_ROWS], lo[ATTN_ROWS], hi[ATTN_ROWS], max_np = 0, widest = 0;
    int g_lo = keys[r0][2], g_hi = keys[r0][3];
    const float *row[ATTN_ROWS];
    for (int i = 0; i < ATTN_ROWS; i++) {
        ri[i] = r0 + (i < nr ? i : nr - 1); /* a short group repeats its last row */
        row[i] = sc + (size_t)ri[i] * ld;
        np[i] = keys[ri[i]][1] - keys[ri[i]][0];
        lo[i] = keys[ri[i]][2];
        hi[i] = keys[ri[i]][3];
        g_lo = lo[i] < g_lo ? lo[i] : g_lo;
        g_hi = hi[i] > g_hi ? hi[i] : g_hi;
        if (np[i] > max_np) {
            max_np = np[i];
            widest = i;
        }
    }
    int full = d - d % ATTN_LANES;
    for (int t0 = 0; t0 < full; t0 += ATTN_LANES) {
        float a0[ATTN_LANES] = { 0 }, a1[ATTN_LANES] = { 0 }, a2[ATTN_LANES] = { 0 },
              a3[ATTN_LANES] = { 0 };
        if (same) {
            const float *vp = pv + (size_t)keys[r0][0] * kv_stride + t0;
            const float *vq = v + (size_t)g_lo * kv_stride + t0;
            const float *vr[ATTN_ROWS] = { vp, vp, vp, vp }, *vs[ATTN_ROWS] = { vq, vq, vq, vq };
            const float *wq[ATTN_ROWS] = { row[0] + max_np, row[1] + max_np, row[2] + max_np,
                                           row[3] + max_np };
            const int own[ATTN_ROWS] = { 0, 0, 0, 0 };
            attn_value_span(a0, a1, a2, a3, row, vr, own, vp, kv_stride, max_np, 0);
            attn_value_span(a0, a1, a2, a3, wq, vs, own, vq, kv_stride, g_hi - g_lo, 0);
        } else {
            const float *w[ATTN_ROWS] = { wt, wt + wl, wt + 2 * wl, wt + 3 * wl };
            for (int j0 = 0; j0 < max_np; j0 += wl) {
                int n = max_np - j0 < wl ? max_np - j0 : wl, all = 1;
                const float *vr[ATTN_ROWS];
                int own[ATTN_ROWS];
                for (int i = 0; i < ATTN_ROWS; i++) {
                    float *wi = wt + (size_t)i * wl;
                    own[i] = np[i] - j0 < 0 ? 0 : np[i] - j0 < n ? np[i] - j0 : n;
                    all &= own[i] == n;
                    for (int j = 0; j < own[i]; j++)
                        wi[j] = row[i][j0 + j];
                    for (int j = own[i]; j < n; j++)
                        wi[j] = 0.0f;
                    vr[i] = pv + (size_t)(keys[ri[i]][0] + j0) * kv_stride + t0;
                }
                const float *vw = pv + (size_t)(keys[ri[widest]][0] + j0) * kv_stride + t0;
                if (all)
                    attn_value_span(a0, a1, a2, a3, w, vr, own, vw, kv_stride, n, 0);
                else
                    attn_value_span(a0, a1, a2, a3, w, vr, own, vw, kv_stride, n, 1);
            }
            /* key row g of row i is its column np[i] + g - lo[i] */
            for (int g0 = g_lo; g0 < g_hi; g0 += wl) {
                int n = g_hi - g0 < wl ? g_hi - g0 : wl;
                for (int i = 0; i < ATTN_ROWS; i++) {
                    const float *p = row[i] + np[i] - lo[i];
                    float *wi = wt + (size_t)i * wl;
                    int a = lo[i] - g0 < 0 ? 0 : lo[i] - g0 < n ? lo[i] - g0 : n;
                    int b = hi[i] - g0 < a ? a : hi[i] - g0 < n ? hi[i] - g0 : n;
                    for (int j = 0; j < a; j++)
                        wi[j] = 0.0f;
                    for (int j = a; j < b; j++)
                        wi[j] = p[g0 + j];
                    for (int j = b; j < n; j++)
                        wi[j] = 0.0f;
                }
                const float *vg = v + (size_t)g0 * kv_stride + t0;
                const float *vr[ATTN_ROWS] = { vg, vg, vg, vg };
                const int own[ATTN_ROWS] = { n, n, n, n };
                attn_value_span(a0, a1, a2, a3, w, vr, own, vg, kv_stride, n, 0);
            }
        }
        float *acc[ATTN_ROWS] = { a0, a1, a2, a3 };
        for (int i = 0; i < nr; i++)
            for (int tt = 0; tt < ATTN_LANES; tt++)
                out[(size_t)(r0 + i) * out_stride + t0 + tt] = acc[i][tt];
    }
}

/* The end of the segment that starts at row r (rows with its prefix and
 * window start). */
static inline int attn_segment_end(const int32_t (*keys)[4], int r, int m)
{
    int e = r + 1;
    while (e < m && keys[e][0] == keys[r][0] && keys[e][1] == keys[r][1] &&
           keys[e][2] == keys[r][2])
        e++;
    return e;
}

/* Keys of row r. */
static inline int attn_run_keys(const int32_t *kr)
{
    return kr[1] - kr[0] + kr[3] - kr[2];
}

SEP_CLONES
void sep_attn_head_run(float *out, int out_stride, const float *q, int q_stride,
                       const float *pk, const float *pv, const float *k, const float *v,
                       int kv_stride, const int32_t (*keys)[4], int m, int d, float scale,
                       float *sc, int ld, float *wt, int wl)
{
    float kt[ATTN_LANES * d]; /* d <= SEP_ATTN_MAX_HEAD_DIM: at most 32 KiB */
    float tile[ATTN_ROWS * ATTN_LANES];
    for (int r0 = 0; r0 < m;) {
        int r1 = attn_segment_end(keys, r0, m);
        int pre = keys[r0][0], np = keys[r0][1] - pre, lo = keys[r0][2];
        if (r1 - r0 >= ATTN_ROWS) {
            /* a long segment: sep_attn_head's tiles, over its sequence */
            int n = attn_run_keys(keys[r1 - 1]);
            for (int j0 = 0; j0 < n; j0 += ATTN_LANES) {
                attn_key_tile_run(kt, pk, pre, np, k, lo, kv_stride, j0, n, d);
                int r = r0;
                while (attn_run_keys(keys[r]) <= j0) /* queries that see key j0 or later */
                    r++;
                for (; r < r1; r += ATTN_ROWS)
                    attn_score_tile(sc, ld, q, q_stride, kt, r,
                                    r1 - r < ATTN_ROWS ? r1 - r : ATTN_ROWS, j0, d, scale);
            }
            r0 = r1;
            continue;
        }
        /* short segments up to the next long one: their prefixes, tiles
         * shared by the rows with the same one (a tile stores whole lanes,
         * past a short prefix into the columns its window's scores then
         * take) */
        int u1 = r1;
        while (u1 < m) {
            int e = attn_segment_end(keys, u1, m);
            if (e - u1 >= ATTN_ROWS)
                break;
            u1 = e;
        }
        for (int s0 = r0; s0 < u1;) {
            int s1 = s0 + 1, plo = keys[s0][0], phi = keys[s0][1];
            while (s1 < u1 && keys[s1][0] == plo && keys[s1][1] == phi)
                s1++;
            for (int j0 = plo; j0 < phi; j0 += ATTN_LANES) {
                attn_key_tile_run(kt, pk, j0, phi - j0, k, 0, kv_stride, 0, phi - j0, d);
                for (int r = s0; r < s1; r += ATTN_ROWS)
                    attn_score_tile(sc, ld, q, q_stride, kt, r,
                                    s1 - r < ATTN_ROWS ? s1 - r : ATTN_ROWS, j0 - plo, d, scale);
            }
            s0 = s1;
        }
        /* then key tiles over the rows their windows cover, each scored
         * for the groups of four that see one of its keys and stored at
         * each query's own column of each key it sees */
        int w_lo = keys[r0][2], w_hi = keys[r0][3];
        for (int r = r0 + 1; r < u1; r++) {
            w_lo = keys[r][2] < w_lo ? keys[r][2] : w_lo;
            w_hi = keys[r][3] > w_hi ? keys[r][3] : w_hi;
        }
        for (int g0 = w_lo; g0 < w_hi; g0 += ATTN_LANES) {
            int nk = w_hi - g0 < ATTN_LANES ? w_hi - g0 : ATTN_LANES;
            attn_key_tile_run(kt, pk, 0, 0, k, g0, kv_stride, 0, nk, d);
            for (int g = r0; g < u1; g += ATTN_ROWS) {
                int nr = u1 - g < ATTN_ROWS ? u1 - g : ATTN_ROWS, sees = 0;
                for (int i = 0; i < nr; i++)
                    sees |= keys[g + i][2] < g0 + nk && keys[g + i][3] > g0;
                if (!sees)
                    continue;
                attn_score_tile(tile, ATTN_LANES, q + (size_t)g * q_stride, q_stride, kt, 0, nr,
                                0, d, scale);
                for (int i = 0; i < nr; i++) {
                    const int32_t *kr = keys[g + i];
                    /* key row g0 + jj is column (prefix) + g0 + jj - kr[2] */
                    float *row = sc + (size_t)(g + i) * ld + (kr[1] - kr[0]);
                    int a = kr[2] > g0 ? kr[2] - g0 : 0, b = kr[3] < g0 + nk ? kr[3] - g0 : nk;
                    for (int jj = a; jj < b; jj++)
                        row[g0 + jj - kr[2]] = tile[i * ATTN_LANES + jj];
                }
            }
        }
        r0 = u1;
    }
    /* rows are softmaxed over their keys and zeroed past them, to the
     * most keys of their group of ATTN_ROWS */
    for (int r0 = 0; r0 < m; r0 += ATTN_ROWS) {
        int r1 = r0 + ATTN_ROWS < m ? r0 + ATTN_ROWS : m, most = 0;
        for (int r = r0; r < r1; r++)
            most = attn_run_keys(keys[r]) > most ? attn_run_keys(keys[r]) : most;
        for (int r = r0; r < r1; r++) {
            float *row = sc + (size_t)r * ld;
            int n = attn_run_keys(keys[r]);
            sep_softmax_inplace(row, n);
            for (int j = n; j < most; j++)
                row[j] = 0.0f;
        }
    }
    int full = d - d % ATTN_LANES;
    for (int r0 = 0; r0 < m && full; r0 += ATTN_ROWS) {
        int nr = m - r0 < ATTN_ROWS ? m - r0 : ATTN_ROWS;
        int same = attn_segment_end(keys, r0, m) >= r0 + nr;
        attn_value_group_run(out, out_stride, sc, ld, pv, v, kv_stride, keys, r0, nr, d, same,
                             wt, wl);
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
