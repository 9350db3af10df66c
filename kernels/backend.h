/* backend.h: the compute interface the model and cache code run on.
 *
 * A backend owns a memory space (host memory for the CPU backend, device
 * memory for CUDA) and the operations of a transformer forward pass over
 * fp32 activations in that space. Model and cache code hold only pointers
 * returned by be->alloc and call through this table, so they do not know
 * which backend runs them. Every matrix is row-major.
 *
 * Shapes use: n rows (tokens), d features. Operations cannot fail once
 * their buffers are allocated and reserve succeeded: alloc returns NULL
 * and reserve SEP_ENOMEM when memory runs out, before anything is
 * computed. A backend may queue work: sync waits for it.
 */
#ifndef SEP_BACKEND_H
#define SEP_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct sep_backend sep_backend_t;

/* A weight matrix (rows, cols) in the backend's own format (fp32 on the
 * CPU; bf16 or fp32 on CUDA, as its precision says). Opaque. */
typedef struct sep_weight sep_weight_t;

/* Element formats of weights as checkpoints store them, little-endian. */
typedef enum {
    SEP_ELEM_F32 = 1,
    SEP_ELEM_F16,
    SEP_ELEM_BF16,
} sep_elem_t;

/* Bytes of one element of format e. */
size_t sep_elem_size(sep_elem_t e);

/* dst[i] := element i of src (format e) as fp32, i < n: exact, every f16
 * and bf16 value is an fp32 one (a NaN keeps its sign and payload). */
void sep_elem_to_f32(float *dst, const void *src, size_t n, sep_elem_t e);

/* One attention problem: the queries of a chunk against a stream's cache.
 * Query i (0 <= i < n_q) sees key rows 0 .. n_past + i (causal over the
 * chunk, whose own keys sit at rows n_past .. n_past + n_q - 1). */
typedef struct {
    float *out;        /* (n_q, n_heads * head_dim), row stride out_stride */
    const float *q;    /* (n_q, n_heads * head_dim) rotated, stride q_stride */
    const float *k;    /* (n_past + n_q, n_kv_heads * head_dim) rotated keys */
    const float *v;    /* (n_past + n_q, n_kv_heads * head_dim) */
    int n_q, n_past;
    int out_stride, q_stride;
} sep_attn_t;

/* The keys of one query of a run (sep_attn_run_t): rows [pre_lo, pre_hi)
 * of the run's prefix rows, then rows [win_lo, win_hi) of its window rows,
 * in this order (at least one key in all). */
typedef struct {
    int32_t pre_lo, pre_hi, win_lo, win_hi;
} sep_attn_keys_t;

/* One attention problem whose queries each see their own keys: a run of a
 * chunk's segments, each segment's queries with its prefix (initial and
 * separator entries, rotated for it, copied out to pk/pv) ahead of its
 * window of the recent region (the rows of the cache, causal). Query i
 * (0 <= i < n_q) sees keys[i]. Every bound of keys ascends with i (not
 * strictly), which keeps the keys of neighbouring queries together. */
typedef struct {
    float *out;        /* (n_q, n_heads * head_dim), row stride out_stride */
    const float *q;    /* (n_q, n_heads * head_dim) rotated, stride q_stride */
    const float *pk, *pv;   /* prefix rows, n_kv_heads * head_dim floats each */
    const float *k, *v;     /* window rows, as wide */
    const sep_attn_keys_t *keys; /* (n_q) in backend memory */
    int n_q;
    int out_stride, q_stride;
} sep_attn_run_t;

/* One gather: row i of dst := row idx[i] of src, n rows of `width`
 * floats; idx in host memory. dst may lie inside src (in-place
 * compaction) when idx ascends and either each dst row i sits at or
 * before src row idx[i], or each at or after it. */
typedef struct {
    float *dst;
    const float *src;
    const int32_t *idx;
    int n, width;
} sep_gather_t;

/* Rows to rotate: n rows at x, each with its row of the rotary table
 * (cos[rot/2] then sin[rot/2]) at cs, in backend memory. When raw is not
 * NULL, the heads from raw_head on of each row are first copied as they
 * are (whole heads) to raw, row stride raw_stride: a layer's keys kept
 * unrotated for caches that re-rotate them, without a launch of its own. */
typedef struct {
    float *x;
    const float *cs;
    int n;
    float *raw;
    int raw_head, raw_stride;
} sep_rope_t;

/* One block of rows to copy: n rows of `width` floats from src (row
 * stride src_stride) to dst (row stride dst_stride), in backend memory. */
typedef struct {
    float *dst;
    const float *src;
    int dst_stride, src_stride, n, width;
} sep_rows_t;

/* The most recent ids a pick's penalties count (sep_pick_t.n_recent),
 * and the penalties' bounds, which keep a penalised logit finite. */
#define SEP_PICK_MAX_RECENT 4096
#define SEP_PICK_MIN_REPETITION 0.01
#define SEP_PICK_MAX_PENALTY 100.0

/* The choice of one row's next token (the pick op), in this order:
 *   1. penalties, each distinct id of recent once with its count c there
 *      (repeats included): the repetition penalty (Hugging Face's: a
 *      positive logit is divided by `repetition`, any other multiplied),
 *      then presence and frequency (OpenAI's: the logit less presence +
 *      frequency * c); 1, 0 and 0 are off;
 *   2. only ids below limit and not in holes may be chosen;
 *   3. temperature <= 0: the largest logit (the lowest id on ties), else:
 *   4. each id's weight w = exp((logit - max) / temperature), max the
 *      largest logit it may take, in fixed point (w * 2^40 rounded down:
 *      an id below 2^-40 of the best weighs nothing); ids ranked by logit,
 *      highest first, the lowest id first on ties; the ranks cut by top_k
 *      (the first top_k; 0: all), then top_p (the fewest first ranks whose
 *      weight reaches top_p of what top_k left; 1: all), then min_p (the
 *      ids with w >= min_p; 0: all);
 *   5. the draw: u = draw * 2^-53 in [0, 1); the token is the kept id, in
 *      id order, at which the running sum of weights first exceeds u times
 *      the kept total.
 * All in host memory; recent and holes are ids below the row's vocab,
 * holes below limit. */
typedef struct {
    float temperature, top_p, min_p;     /* top_p in (0, 1], min_p in [0, 1] */
    float repetition, presence, frequency; /* [0.01, 100], [-100, 100], [-100, 100] */
    int top_k;                           /* >= 0 */
    int limit;                           /* 1..vocab: ids at or past it are never chosen */
    const int32_t *holes;                /* (n_holes) ids below limit never chosen */
    int n_holes;
    const int32_t *recent;               /* (n_recent) ids the penalties count */
    int n_recent;                        /* 0..SEP_PICK_MAX_RECENT */
    uint64_t draw;                       /* 53 random bits */
} sep_pick_t;

struct sep_backend {
    const char *name;
    int n_threads;
    int max_head_dim;   /* the largest head_dim its attention handles */
    int max_dim;        /* the widest row its norms handle */
    int max_group;      /* the most query heads it lets share a KV head */

    void *(*alloc)(sep_backend_t *be, size_t bytes);
    void (*free)(sep_backend_t *be, void *p);
    void (*upload)(sep_backend_t *be, void *dst, const void *src, size_t bytes);
    void (*download)(sep_backend_t *be, void *dst, const void *src, size_t bytes);
    /* Host memory that download and upload reach at full speed (page-locked
     * on a GPU, whose driver otherwise copies through its own staging;
     * plain memory on the CPU); NULL without memory. host_free may wait for
     * the device: keep such buffers and reuse them. */
    void *(*host_alloc)(sep_backend_t *be, size_t bytes);
    void (*host_free)(sep_backend_t *be, void *p);
    /* Every gather done (the compactions of many caches at once; one
     * launch pair on a GPU); no gather's rows overlap another's. */
    void (*gather_rows)(sep_backend_t *be, const sep_gather_t *g, int n_gathers);
    /* Every block of rows copied (one launch on a GPU); no destination
     * overlaps a source or another destination. */
    void (*copy_rows)(sep_backend_t *be, const sep_rows_t *blocks, int n_blocks);

    /* A weight from a (rows, cols) fp32 host matrix; NULL without memory. */
    sep_weight_t *(*weight_new)(sep_backend_t *be, const float *host, int rows, int cols);
    void (*weight_free)(sep_backend_t *be, sep_weight_t *w);
    /* Loading weights as the checkpoint stores them, streamed to the
     * backend while they are read.
     * weight_alloc: a (rows, cols) weight whose elements weight_fill then
     * sets (NULL without memory).
     * weight_fill: elements [at, at + n) of w, in row-major order, := the
     * n values of format elem at src (host memory), each exactly what
     * weight_new makes of its fp32 value (sep_elem_to_f32). src in the
     * buffer stage gave last is read from there, any number of fills,
     * until the next stage call or a fill from other memory; other memory
     * may be reused on return. Fails only for memory (SEP_ENOMEM) or a
     * range outside w (SEP_EINVAL), each naming it.
     * stage: host memory to read raw weight data into for weight_fill, of
     * *bytes bytes (asked in *bytes; given up to that and at least
     * min(asked, 1 MiB)), once the fills before no longer read it: a
     * GPU's pinned buffers in turn, so that the host reads into one while
     * the copies and conversions (on the device) of the others run. NULL
     * without memory.
     * load_end: waits for every fill, after which the weights are ready,
     * and releases the stage buffers; a device fault is SEP_EIO, naming
     * it. */
    sep_weight_t *(*weight_alloc)(sep_backend_t *be, int rows, int cols);
    int (*weight_fill)(sep_backend_t *be, sep_weight_t *w, size_t at, const void *src,
                       size_t n, sep_elem_t elem);
    void *(*stage)(sep_backend_t *be, size_t *bytes);
    int (*load_end)(sep_backend_t *be);
    /* Row i of y := row ids[i] of w, in fp32 (embedding lookup; ids host). */
    void (*weight_rows)(sep_backend_t *be, float *y, const sep_weight_t *w,
                        const int32_t *ids, int n);
    /* y(n, rows) = x(n, cols) * w(rows, cols)^T [+ bias(rows)], fp32
     * accumulation whatever w's format */
    void (*matmul)(sep_backend_t *be, float *y, const float *x, const sep_weight_t *w,
                   const float *bias, int n);
    /* x += res first when res is not NULL (the residual add fused with the
     * norm after it), then y = x / rms(x) * w, per row */
    void (*rmsnorm)(sep_backend_t *be, float *y, float *x, const float *res, const float *w,
                    int n, int d, float eps);
    /* x += res as for rmsnorm, then y = (x - mean) / sqrt(var + eps) * w + b */
    void (*layernorm)(sep_backend_t *be, float *y, float *x, const float *res, const float *w,
                      const float *b, int n, int d, float eps);
    /* Rotate-half rotary embedding in place on the first rot_dim dims of
     * each of n_heads heads of every block's rows (row stride `stride`
     * floats), each row by its row of the block's table. */
    void (*rope)(sep_backend_t *be, const sep_rope_t *blocks, int n_blocks, int stride,
                 int n_heads, int head_dim, int rot_dim);
    /* cs (n, rot_dim) := the rotary table at positions pos (host, n of
     * them): row i = cos(pos[i] * inv_freq[j]) for j < rot_dim / 2, then
     * the sines; the angles in double, so positions in the millions stay
     * exact. inv_freq (rot_dim / 2) is in host memory. */
    void (*rope_table)(sep_backend_t *be, float *cs, const int64_t *pos, int n,
                       const double *inv_freq, int rot_dim);
    /* Make the operations ready for attention over up to max_keys keys,
     * gathers of up to max_rows rows of up to max_width floats, and NLLs
     * and picks of up to max_rows rows (scratch memory): the one call
     * besides alloc that can fail for memory (SEP_ENOMEM). */
    int (*reserve)(sep_backend_t *be, int max_keys, int max_rows, int max_width);
    /* Wait for queued work; a device fault since the last sync is
     * reported here (SEP_EIO, naming it). */
    int (*sync)(sep_backend_t *be);
    /* Causal attention for a batch of problems sharing head geometry,
     * none longer than the last reserve allowed. */
    void (*attention)(sep_backend_t *be, const sep_attn_t *probs, int n_probs,
                      int n_heads, int n_kv_heads, int head_dim);
    /* Attention for a batch of runs (sep_attn_run_t), none with a query
     * of more keys than the last reserve allowed. On the CPU a query's
     * result is the bits attention gives it over the same keys in one
     * problem (its prefix rows then its window rows, one after another). */
    void (*attention_runs)(sep_backend_t *be, const sep_attn_run_t *runs, int n_runs,
                           int n_heads, int n_kv_heads, int head_dim);
    /* x += y, n*d elements */
    void (*add)(sep_backend_t *be, float *x, const float *y, size_t n);
    /* The SwiGLU MLP: y(n, w_down->rows) := (silu(g) * u) w_down^T
     * [+ b_down], where [g u] (n, 2f) = x w_up^T [+ b_up] and w_down is
     * (dim, f). gu (n, 2f) and act (n, f) are scratch, their contents
     * undefined afterwards (a backend may keep them in another format). */
    void (*swiglu)(sep_backend_t *be, float *y, const float *x, const sep_weight_t *w_up,
                   const float *b_up, const sep_weight_t *w_down, const float *b_down, int n,
                   float *gu, float *act);
    /* x := gelu(x); tanh_approx selects the tanh form */
    void (*gelu)(sep_backend_t *be, float *x, size_t n, int tanh_approx);
    /* nll[i] = logsumexp(logits row i) - logits[i, target[i]] (n rows of
     * vocab); target[i] < 0 skips row i. targets and nll in host memory. */
    void (*nll)(sep_backend_t *be, float *nll, const float *logits,
                const int32_t *target, int n, int vocab);
    /* The next token where the logits are (decoding, greedy or sampled):
     * token[i] chosen from row i as picks[i] says (sep_pick_t), nll[i] =
     * -log p(token[i]) under the softmax of row i as it came (every id,
     * no penalty). A row holding a NaN or +inf, or whose ids that may be
     * chosen are all -inf, gets token -1 and nll NaN. n rows of vocab;
     * the rows are scratch (left undefined); token, nll and picks in host
     * memory. The same picks on the same rows give the same tokens. */
    void (*pick)(sep_backend_t *be, int32_t *token, float *nll, float *logits, int n, int vocab,
                 const sep_pick_t *picks);

    void (*destroy)(sep_backend_t *be);
};

/* The CPU backend: its own fixed-order kernels (fastmath.h) on OpenMP
 * threads; n_threads <= 0 means $OMP_NUM_THREADS, else one per core. */
int sep_backend_cpu_new(sep_backend_t **out, int n_threads);

/* The CUDA backend on GPU `device` (cuBLAS and sepd's kernels), when the
 * build has CUDA; SEP_ENOTFOUND without a GPU, SEP_EUNSUPPORTED in a
 * build without CUDA or when its module (sepd-cuda.so: $SEPD_CUDA_MODULE,
 * else the installed one, else the build tree's) cannot be loaded. The
 * module is loaded on the first call and exports sep_backend_cuda_open
 * with this signature; it takes sep_fail from the program, which is
 * linked with its symbols exported. bf16: weights in bf16 and matrix products on bf16
 * inputs with fp32 accumulation; else all fp32 (exactness checks). */
int sep_backend_cuda_new(sep_backend_t **out, int device, int bf16);

/* By name: "cpu", "cuda" (GPU 0) or "auto" / NULL (cuda when a GPU is
 * there, else cpu); precision "fp32" or "bf16" (NULL: bf16 on CUDA; the
 * CPU runs fp32 only). n_threads as for the CPU backend. */
int sep_backend_new(sep_backend_t **out, const char *device, const char *precision,
                    int n_threads);
void sep_backend_destroy(sep_backend_t **self_p);

#endif
