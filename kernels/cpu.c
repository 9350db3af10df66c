/* cpu.c: the CPU backend. OpenMP splits every operation across cores;
 * matrix products and attention run on fastmath.c's fixed-order kernels,
 * so every row of a forward is bitwise independent of the chunking and of
 * the other streams of its batch. */
#include "backend.h"
#include "err.h"
#include "fastmath.h"
#include "pick.h"

#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Queries per attention task: small enough to balance threads, large
 * enough that the score and value products are real matrix products. */
#define ATTN_QBLOCK 64
#define ATTN_ROW_STRIDE(n) (((n) + 15) & ~15)
/* Keys of a run's value weights staged at a time (fastmath.h) */
#define ATTN_RUN_SPAN 256

/* The CPU backend with its per-thread attention scratch. */
typedef struct {
    sep_backend_t base;
    float **scratch;   /* (n_threads) score blocks of scratch_len floats */
    size_t scratch_len;
    void *stage;       /* (stage_cap bytes) raw weight data being loaded */
    size_t stage_cap;
} cpu_backend_t;

/* The most a stage buffer holds: fills convert it at once. */
#define CPU_STAGE_MAX ((size_t)16 << 20)

static void *cpu_alloc(sep_backend_t *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    /* 64-byte alignment for AVX-512 loads; posix_memalign(0) may return NULL */
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0)
        return NULL;
    return p;
}

static void cpu_free(sep_backend_t *be, void *p)
{
    (void)be;
    free(p);
}

static void *cpu_host_alloc(sep_backend_t *be, size_t bytes)
{
    (void)be;
    return malloc(bytes ? bytes : 1);
}

static void cpu_host_free(sep_backend_t *be, void *p)
{
    (void)be;
    free(p);
}

static void cpu_copy(sep_backend_t *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    memmove(dst, src, bytes);
}

#ifndef NDEBUG
/* Bytes [lo, hi) a block of a call writes or reads, first to last ({NULL,
 * NULL}: none). */
typedef struct {
    const char *lo, *hi;
} span_t;

static int spans_meet(span_t a, span_t b)
{
    return a.lo < b.hi && b.lo < a.hi;
}

/* The contract of gather_rows and copy_rows (backend.h), which a GPU
 * relies on: their blocks run at once there, in order here, where a
 * breach would go unseen. No block writes what another reads or writes;
 * own: whether a block may write what it reads itself (a gather in
 * place). w and r: what each of the n blocks writes and reads. */
static void spans_check(const char *call, const span_t *w, const span_t *r, int n, int own)
{
    for (int a = 0; a < n; a++)
        for (int b = 0; b < n; b++)
            if (b == a ? !own && spans_meet(w[a], r[a])
                       : spans_meet(w[a], r[b]) || spans_meet(w[a], w[b])) {
                fprintf(stderr, "%s: block %d of %d writes rows that block %d reads or "
                        "writes (backend.h)\n", call, a, n, b);
                abort();
            }
}

static void gathers_check(const sep_gather_t *g, int n)
{
    if (n <= 0)
        return;
    span_t *w = malloc(2 * (size_t)n * sizeof *w);
    if (!w)
        return; /* a check only: the gathers run as they would without it */
    span_t *r = w + n;
    for (int i = 0; i < n; i++) {
        w[i] = r[i] = (span_t){ NULL, NULL };
        if (g[i].n <= 0)
            continue;
        int lo = g[i].idx[0], hi = g[i].idx[0];
        for (int k = 1; k < g[i].n; k++) {
            lo = g[i].idx[k] < lo ? g[i].idx[k] : lo;
            hi = g[i].idx[k] > hi ? g[i].idx[k] : hi;
        }
        w[i] = (span_t){ (const char *)g[i].dst,
                         (const char *)(g[i].dst + (size_t)g[i].n * g[i].width) };
        r[i] = (span_t){ (const char *)(g[i].src + (size_t)lo * g[i].width),
                         (const char *)(g[i].src + ((size_t)hi + 1) * g[i].width) };
    }
    spans_check("gather_rows", w, r, n, 1);
    free(w);
}

/* A block's rows at x, stride floats apart, and what lies between. */
static span_t rows_span(const float *x, const sep_rows_t *b, int stride)
{
    if (b->n <= 0)
        return (span_t){ NULL, NULL };
    return (span_t){ (const char *)x,
                     (const char *)(x + (size_t)(b->n - 1) * stride + b->width) };
}

static void rows_check(const sep_rows_t *blocks, int n)
{
    if (n <= 0)
        return;
    span_t *w = malloc(2 * (size_t)n * sizeof *w);
    if (!w)
        return; /* a check only */
    span_t *r = w + n;
    for (int i = 0; i < n; i++) {
        w[i] = rows_span(blocks[i].dst, &blocks[i], blocks[i].dst_stride);
        r[i] = rows_span(blocks[i].src, &blocks[i], blocks[i].src_stride);
    }
    spans_check("copy_rows", w, r, n, 0);
    free(w);
}
#endif

static void cpu_gather_rows(sep_backend_t *be, const sep_gather_t *g, int n_gathers)
{
    (void)be;
#ifndef NDEBUG
    gathers_check(g, n_gathers);
#endif
    /* in place, rows are read at or after where they are written (in
     * order, no row is overwritten before it is read) or all at or before
     * (the same from the last down) */
    for (int b = 0; b < n_gathers; b++) {
        int up = g[b].n > 0 && g[b].dst > g[b].src + (size_t)g[b].idx[0] * g[b].width;
        for (int k = 0; k < g[b].n; k++) {
            int i = up ? g[b].n - 1 - k : k;
            float *d = g[b].dst + (size_t)i * g[b].width;
            const float *s = g[b].src + (size_t)g[b].idx[i] * g[b].width;
            if (d != s)
                memmove(d, s, (size_t)g[b].width * sizeof(float));
        }
    }
}

static void cpu_copy_rows(sep_backend_t *be, const sep_rows_t *blocks, int n_blocks)
{
    (void)be;
#ifndef NDEBUG
    rows_check(blocks, n_blocks);
#endif
    for (int b = 0; b < n_blocks; b++) {
        const sep_rows_t *r = &blocks[b];
        for (int i = 0; i < r->n; i++)
            memcpy(r->dst + (size_t)i * r->dst_stride, r->src + (size_t)i * r->src_stride,
                   (size_t)r->width * sizeof(float));
    }
}

/* Products do not go through OpenBLAS: its kernels round a row by where
 * it sits in the call (0.3.21's Haswell sgemm, also chosen on Zen, sums
 * the first 6 rows of each 12 in another order than the other 6 for some
 * outputs, and a last, partial group in others again) and take other
 * kernels for one row and for small products. Here each output is one
 * chain of multiply-adds over k in order, whatever rows, tile or thread
 * are around it. */
struct sep_weight {
    float *panels; /* (ceil(rows / SEP_MM_COLS), cols, SEP_MM_COLS): see fastmath.h */
    int rows, cols;
};

/* A weight of undefined contents but for the zero outputs past its last
 * row, which the products read. */
static sep_weight_t *cpu_weight_alloc(sep_backend_t *be, int rows, int cols)
{
    int n_panels = (rows + SEP_MM_COLS - 1) / SEP_MM_COLS;
    size_t panel = (size_t)cols * SEP_MM_COLS;
    sep_weight_t *w = malloc(sizeof *w);
    float *panels = cpu_alloc(be, (size_t)n_panels * panel * sizeof(float));
    if (!w || !panels) {
        free(w);
        free(panels);
        return NULL;
    }
    if (n_panels)
        memset(panels + (size_t)(n_panels - 1) * panel, 0, panel * sizeof(float));
    *w = (sep_weight_t){ .panels = panels, .rows = rows, .cols = cols };
    return w;
}

/* Each row's part of [at, at + n) converted to fp32, then written down
 * its panel's column. */
static int cpu_weight_fill(sep_backend_t *be, sep_weight_t *w, size_t at, const void *src,
                           size_t n, sep_elem_t elem)
{
    size_t cols = (size_t)w->cols, total = (size_t)w->rows * cols, esz = sep_elem_size(elem);
    if (at > total || n > total - at)
        return sep_fail(SEP_EINVAL, "weight_fill: elements [%zu, %zu) of a %dx%d weight", at,
                        at + n, w->rows, w->cols);
    if (!n)
        return SEP_OK;
    long r0 = (long)(at / cols), r1 = (long)((at + n - 1) / cols) + 1;
    int no_mem = 0;
    #pragma omp parallel num_threads(be->n_threads)
    {
        float *row = malloc(cols * sizeof *row);
        if (!row) {
            #pragma omp atomic write
            no_mem = 1;
        }
        #pragma omp for schedule(static)
        for (long r = r0; r < r1; r++) {
            if (!row)
                continue;
            size_t first = (size_t)r * cols;
            size_t lo = first < at ? at - first : 0;
            size_t hi = first + cols > at + n ? at + n - first : cols;
            sep_elem_to_f32(row + lo, (const uint8_t *)src + (first + lo - at) * esz, hi - lo,
                            elem);
            float *dst = w->panels + (size_t)(r / SEP_MM_COLS) * cols * SEP_MM_COLS +
                         r % SEP_MM_COLS;
            for (size_t k = lo; k < hi; k++)
                dst[k * SEP_MM_COLS] = row[k];
        }
        free(row);
    }
    if (no_mem)
        return sep_fail(SEP_ENOMEM, "weight_fill: no memory for a row of %zu floats", cols);
    return SEP_OK;
}

static sep_weight_t *cpu_weight_new(sep_backend_t *be, const float *host, int rows, int cols)
{
    sep_weight_t *w = cpu_weight_alloc(be, rows, cols);
    if (w && cpu_weight_fill(be, w, 0, host, (size_t)rows * cols, SEP_ELEM_F32)) {
        free(w->panels);
        free(w);
        return NULL;
    }
    return w;
}

/* One buffer, reused: a fill converts it before it returns. */
static void *cpu_stage(sep_backend_t *be, size_t *bytes)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    size_t want = *bytes < CPU_STAGE_MAX ? *bytes : CPU_STAGE_MAX;
    if (want > cb->stage_cap) {
        free(cb->stage);
        cb->stage_cap = 0;
        if (!(cb->stage = cpu_alloc(be, want)))
            return NULL;
        cb->stage_cap = want;
    }
    *bytes = want;
    return cb->stage;
}

static int cpu_load_end(sep_backend_t *be)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    free(cb->stage);
    cb->stage = NULL;
    cb->stage_cap = 0;
    return SEP_OK;
}

static void cpu_weight_free(sep_backend_t *be, sep_weight_t *w)
{
    (void)be;
    if (w)
        free(w->panels);
    free(w);
}

/* Row ids[i] of W, read down its panel's column. */
static void cpu_weight_rows(sep_backend_t *be, float *y, const sep_weight_t *w,
                            const int32_t *ids, int n)
{
    #pragma omp parallel for num_threads(be->n_threads) schedule(static)
    for (int i = 0; i < n; i++) {
        const float *col = w->panels + (size_t)(ids[i] / SEP_MM_COLS) * w->cols * SEP_MM_COLS +
                           ids[i] % SEP_MM_COLS;
        for (int k = 0; k < w->cols; k++)
            y[(size_t)i * w->cols + k] = col[(size_t)k * SEP_MM_COLS];
    }
}

/* y (n, d_out) = x (n, d_in) W^T + bias: threads take tiles of
 * SEP_MM_ROWS rows by one panel, a panel's tiles in a row so that it
 * stays in cache. */
static void cpu_matmul(sep_backend_t *be, float *y, const float *x, const sep_weight_t *wt,
                       const float *bias, int n)
{
    int d_in = wt->cols, d_out = wt->rows;
    int n_panels = (d_out + SEP_MM_COLS - 1) / SEP_MM_COLS;
    int n_tiles = (n + SEP_MM_ROWS - 1) / SEP_MM_ROWS;
    #pragma omp parallel for collapse(2) num_threads(be->n_threads) schedule(static)
    for (int p = 0; p < n_panels; p++)
        for (int t = 0; t < n_tiles; t++) {
            int r0 = t * SEP_MM_ROWS, c0 = p * SEP_MM_COLS;
            int nr = n - r0 < SEP_MM_ROWS ? n - r0 : SEP_MM_ROWS;
            int nc = d_out - c0 < SEP_MM_COLS ? d_out - c0 : SEP_MM_COLS;
            sep_matmul_tile(y + (size_t)r0 * d_out + c0, d_out, x + (size_t)r0 * d_in, d_in,
                            wt->panels + (size_t)p * d_in * SEP_MM_COLS, d_in, nr, nc,
                            bias ? bias + c0 : NULL);
        }
}

/* Row i of x += row i of res, when there is one. */
static void cpu_residual(float *xi, const float *res, size_t i, int d)
{
    if (!res)
        return;
    const float *ri = res + i * d;
    #pragma omp simd
    for (int j = 0; j < d; j++)
        xi[j] += ri[j];
}

static void cpu_rmsnorm(sep_backend_t *be, float *y, float *x, const float *res,
                        const float *w, int n, int d, float eps)
{
    #pragma omp parallel for num_threads(be->n_threads) schedule(static)
    for (int i = 0; i < n; i++) {
        float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        cpu_residual(xi, res, (size_t)i, d);
        float ss = 0.0f;
        #pragma omp simd reduction(+:ss)
        for (int j = 0; j < d; j++)
            ss += xi[j] * xi[j];
        float r = 1.0f / sqrtf(ss / d + eps);
        #pragma omp simd
        for (int j = 0; j < d; j++)
            yi[j] = xi[j] * r * w[j];
    }
}

static void cpu_layernorm(sep_backend_t *be, float *y, float *x, const float *res,
                          const float *w, const float *b, int n, int d, float eps)
{
    #pragma omp parallel for num_threads(be->n_threads) schedule(static)
    for (int i = 0; i < n; i++) {
        float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        cpu_residual(xi, res, (size_t)i, d);
        float s = 0.0f, ss = 0.0f;
        #pragma omp simd reduction(+:s)
        for (int j = 0; j < d; j++)
            s += xi[j];
        float mean = s / d;
        #pragma omp simd reduction(+:ss)
        for (int j = 0; j < d; j++)
            ss += (xi[j] - mean) * (xi[j] - mean);
        float r = 1.0f / sqrtf(ss / d + eps);
        #pragma omp simd
        for (int j = 0; j < d; j++)
            yi[j] = (xi[j] - mean) * r * w[j] + b[j];
    }
}

static void cpu_rope(sep_backend_t *be, const sep_rope_t *blocks, int n_blocks, int stride,
                     int n_heads, int head_dim, int rot_dim)
{
    int half = rot_dim / 2;
    for (int b = 0; b < n_blocks; b++) {
        float *x = blocks[b].x;
        const float *cs = blocks[b].cs;
        /* a compaction's few prefix rows are not worth waking threads */
        #pragma omp parallel for num_threads(be->n_threads) schedule(static) \
            if ((long)blocks[b].n * n_heads * rot_dim >= 4096)
        for (int i = 0; i < blocks[b].n; i++) {
            const float *c = cs + (size_t)i * rot_dim, *s = c + half;
            for (int h = 0; h < n_heads; h++) {
                float *v = x + (size_t)i * stride + (size_t)h * head_dim;
                if (blocks[b].raw && h >= blocks[b].raw_head)
                    memcpy(blocks[b].raw + (size_t)i * blocks[b].raw_stride +
                               (size_t)(h - blocks[b].raw_head) * head_dim,
                           v, (size_t)head_dim * sizeof *v);
                #pragma omp simd
                for (int j = 0; j < half; j++) {
                    float a = v[j], bb = v[j + half];
                    v[j] = a * c[j] - bb * s[j];
                    v[j + half] = bb * c[j] + a * s[j];
                }
            }
        }
    }
}

static void cpu_rope_table(sep_backend_t *be, float *cs, const int64_t *pos, int n,
                           const double *inv_freq, int rot_dim)
{
    int half = rot_dim / 2;
    #pragma omp parallel for num_threads(be->n_threads) schedule(static)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < half; j++) {
            double a = (double)pos[i] * inv_freq[j];
            cs[(size_t)i * rot_dim + j] = (float)cos(a);
            cs[(size_t)i * rot_dim + half + j] = (float)sin(a);
        }
}

/* One task: query head h, queries [i0, i1) of problem p. */
static void cpu_attention_block(const sep_attn_t *p, int h, int i0, int i1,
                                int group, int head_dim, int kv_dim, float *sc)
{
    int kvh = h / group;
    sep_attn_head(p->out + (size_t)i0 * p->out_stride + (size_t)h * head_dim, p->out_stride,
                  p->q + (size_t)i0 * p->q_stride + (size_t)h * head_dim, p->q_stride,
                  p->k + (size_t)kvh * head_dim, p->v + (size_t)kvh * head_dim, kv_dim,
                  i1 - i0, p->n_past + i0, head_dim, 1.0f / sqrtf((float)head_dim), sc,
                  ATTN_ROW_STRIDE(p->n_past + i1));
}


static int cpu_reserve(sep_backend_t *be, int max_keys, int max_rows, int max_width)
{
    (void)max_rows; /* gathers and NLLs need no scratch here */
    (void)max_width;
    cpu_backend_t *cb = (cpu_backend_t *)be;
    size_t len = (size_t)ATTN_QBLOCK * (size_t)ATTN_ROW_STRIDE(max_keys > 0 ? max_keys : 1);
    if (len <= cb->scratch_len)
        return SEP_OK;
    for (int t = 0; t < be->n_threads; t++) {
        float *p = realloc(cb->scratch[t], len * sizeof(float));
        if (!p)
            return sep_fail(SEP_ENOMEM, "cpu attention: no memory for %zu scores", len);
        cb->scratch[t] = p;
    }
    cb->scratch_len = len;
    return SEP_OK;
}

static void cpu_attention(sep_backend_t *be, const sep_attn_t *probs, int n_probs,
                          int n_heads, int n_kv_heads, int head_dim)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    int group = n_heads / n_kv_heads, kv_dim = n_kv_heads * head_dim;
    int n_tasks = 0;
    for (int p = 0; p < n_probs; p++)
        n_tasks += n_heads * ((probs[p].n_q + ATTN_QBLOCK - 1) / ATTN_QBLOCK);
    #pragma omp parallel for num_threads(be->n_threads) schedule(dynamic)
    for (int t = 0; t < n_tasks; t++) {
        int p = 0, rest = t, nb;
        while (rest >= (nb = n_heads * ((probs[p].n_q + ATTN_QBLOCK - 1) / ATTN_QBLOCK))) {
            rest -= nb;
            p++;
        }
        int h = rest % n_heads, i0 = rest / n_heads * ATTN_QBLOCK;
        int i1 = i0 + ATTN_QBLOCK < probs[p].n_q ? i0 + ATTN_QBLOCK : probs[p].n_q;
        cpu_attention_block(&probs[p], h, i0, i1, group, head_dim, kv_dim,
                            cb->scratch[omp_get_thread_num()]);
    }
}

/* The keys of a run's query, as fastmath's kernel reads them. */
_Static_assert(sizeof(sep_attn_keys_t) == 4 * sizeof(int32_t) &&
               offsetof(sep_attn_keys_t, pre_lo) == 0 && offsetof(sep_attn_keys_t, pre_hi) == 4 &&
               offsetof(sep_attn_keys_t, win_lo) == 8 && offsetof(sep_attn_keys_t, win_hi) == 12,
               "sep_attn_keys_t is four int32 in order");

/* One task of a run: query head h, queries [i0, i1). */
static void cpu_attention_run_block(const sep_attn_run_t *p, int h, int i0, int i1, int group,
                                    int head_dim, int kv_dim, float *sc)
{
    int kvh = h / group, most = 1;
    const int32_t(*keys)[4] = (const int32_t(*)[4])(p->keys + i0);
    for (int i = 0; i < i1 - i0; i++) {
        int n = keys[i][1] - keys[i][0] + keys[i][3] - keys[i][2];
        most = n > most ? n : most;
    }
    size_t kh = (size_t)kvh * head_dim;
    float wt[SEP_ATTN_RUN_ROWS * ATTN_RUN_SPAN]; /* value weights, a span at a time */
    sep_attn_head_run(p->out + (size_t)i0 * p->out_stride + (size_t)h * head_dim, p->out_stride,
                      p->q + (size_t)i0 * p->q_stride + (size_t)h * head_dim, p->q_stride,
                      p->pk + kh, p->pv + kh, p->k + kh, p->v + kh, kv_dim, keys, i1 - i0,
                      head_dim, 1.0f / sqrtf((float)head_dim), sc, ATTN_ROW_STRIDE(most), wt,
                      ATTN_RUN_SPAN);
}

/* As cpu_attention: tasks of ATTN_QBLOCK queries of one head. */
static void cpu_attention_runs(sep_backend_t *be, const sep_attn_run_t *runs, int n_runs,
                               int n_heads, int n_kv_heads, int head_dim)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    int group = n_heads / n_kv_heads, kv_dim = n_kv_heads * head_dim;
    int n_tasks = 0;
    for (int p = 0; p < n_runs; p++)
        n_tasks += n_heads * ((runs[p].n_q + ATTN_QBLOCK - 1) / ATTN_QBLOCK);
    #pragma omp parallel for num_threads(be->n_threads) schedule(dynamic)
    for (int t = 0; t < n_tasks; t++) {
        int p = 0, rest = t, nb;
        while (rest >= (nb = n_heads * ((runs[p].n_q + ATTN_QBLOCK - 1) / ATTN_QBLOCK))) {
            rest -= nb;
            p++;
        }
        int h = rest % n_heads, i0 = rest / n_heads * ATTN_QBLOCK;
        int i1 = i0 + ATTN_QBLOCK < runs[p].n_q ? i0 + ATTN_QBLOCK : runs[p].n_q;
        cpu_attention_run_block(&runs[p], h, i0, i1, group, head_dim, kv_dim,
                                cb->scratch[omp_get_thread_num()]);
    }
}

static void cpu_add(sep_backend_t *be, float *x, const float *y, size_t n)
{
    #pragma omp parallel for simd num_threads(be->n_threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

static void cpu_swiglu(sep_backend_t *be, float *y, const float *x, const sep_weight_t *w_up,
                       const float *b_up, const sep_weight_t *w_down, const float *b_down,
                       int n, float *gu, float *act)
{
    int d = w_up->rows / 2;
    cpu_matmul(be, gu, x, w_up, b_up, n);
    #pragma omp parallel for num_threads(be->n_threads) schedule(static)
    for (int i = 0; i < n; i++) {
        const float *g = gu + (size_t)i * 2 * d;
        sep_silu_mul_row(act + (size_t)i * d, g, g + d, d);
    }
    cpu_matmul(be, y, act, w_down, b_down, n);
}

static void cpu_gelu(sep_backend_t *be, float *x, size_t n, int tanh_approx)
{
    if (tanh_approx) {
        #pragma omp parallel for num_threads(be->n_threads) schedule(static)
        for (size_t i = 0; i < n; i++) {
            float v = x[i];
            x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        }
    } else {
        #pragma omp parallel for num_threads(be->n_threads) schedule(static)
        for (size_t i = 0; i < n; i++)
            x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
    }
}

static void cpu_nll(sep_backend_t *be, float *nll, const float *logits,
                    const int32_t *target, int n, int vocab)
{
    #pragma omp parallel for num_threads(be->n_threads) schedule(static)
    for (int i = 0; i < n; i++) {
        if (target[i] < 0)
            continue;
        const float *row = logits + (size_t)i * vocab;
        nll[i] = sep_logsumexp(row, vocab) - row[target[i]];
    }
}

static void cpu_pick(sep_backend_t *be, int32_t *token, float *nll, float *logits, int n,
                     int vocab, const sep_pick_t *picks)
{
    #pragma omp parallel for num_threads(be->n_threads) schedule(static)
    for (int i = 0; i < n; i++)
        sep_pick_row(&token[i], &nll[i], logits + (size_t)i * vocab, vocab, &picks[i]);
}

static int cpu_sync(sep_backend_t *be)
{
    (void)be; /* every call ran to completion */
    return SEP_OK;
}

static void cpu_destroy(sep_backend_t *be)
{
    cpu_backend_t *cb = (cpu_backend_t *)be;
    if (cb->scratch)
        for (int t = 0; t < be->n_threads; t++)
            free(cb->scratch[t]);
    free(cb->scratch);
    free(cb->stage);
    free(cb);
}

int sep_backend_cpu_new(sep_backend_t **out, int n_threads)
{
    *out = NULL;
    if (n_threads <= 0)
        n_threads = omp_get_max_threads(); /* OMP_NUM_THREADS, else one per core */
    cpu_backend_t *cb = calloc(1, sizeof *cb);
    float **scratch = calloc((size_t)n_threads, sizeof *scratch);
    if (!cb || !scratch) {
        free(cb);
        free(scratch);
        return sep_fail(SEP_ENOMEM, "cpu backend: out of memory");
    }
    sep_backend_t *be = &cb->base;
    cb->scratch = scratch;
    be->name = "cpu";
    be->n_threads = n_threads;
    be->max_head_dim = SEP_ATTN_MAX_HEAD_DIM;
    be->max_dim = INT32_MAX;
    be->max_group = 1 << 20;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_copy;
    be->download = cpu_copy;
    be->host_alloc = cpu_host_alloc;
    be->host_free = cpu_host_free;
    be->gather_rows = cpu_gather_rows;
    be->copy_rows = cpu_copy_rows;
    be->weight_new = cpu_weight_new;
    be->weight_free = cpu_weight_free;
    be->weight_alloc = cpu_weight_alloc;
    be->weight_fill = cpu_weight_fill;
    be->stage = cpu_stage;
    be->load_end = cpu_load_end;
    be->weight_rows = cpu_weight_rows;
    be->matmul = cpu_matmul;
    be->rmsnorm = cpu_rmsnorm;
    be->layernorm = cpu_layernorm;
    be->rope = cpu_rope;
    be->rope_table = cpu_rope_table;
    be->reserve = cpu_reserve;
    be->sync = cpu_sync;
    be->attention = cpu_attention;
    be->attention_runs = cpu_attention_runs;
    be->add = cpu_add;
    be->swiglu = cpu_swiglu;
    be->gelu = cpu_gelu;
    be->nll = cpu_nll;
    be->pick = cpu_pick;
    be->destroy = cpu_destroy;
    *out = be;
    return SEP_OK;
}

void sep_backend_destroy(sep_backend_t **self_p)
{
    if (*self_p) {
        (*self_p)->destroy(*self_p);
        *self_p = NULL;
    }
}
