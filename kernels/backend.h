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

struct sep_backend {
    const char *name;
    int n_threads;
    int max_head_dim;   /* the largest head_dim its attention handles */
    int max_group;      /* the most query heads it lets share a KV head */

    void *(*alloc)(sep_backend_t *be, size_t bytes);
    void (*free)(sep_backend_t *be, void *p);
    void (*upload)(sep_backend_t *be, void *dst, const void *src, size_t bytes);
    void (*download)(sep_backend_t *be, void *dst, const void *src, size_t bytes);
    /* Row i of dst := row src_idx[i] of src, rows of `width` floats (token
     * embedding lookup, cache compaction). src_idx is in host memory. dst
     * may lie inside src (in-place compaction) when src_idx ascends and
     * each dst row i sits at or before src row src_idx[i]. */
    void (*gather_rows)(sep_backend_t *be, float *dst, const float *src,
                        const int32_t *src_idx, int n, int width);
    /* n rows of `width` floats from src (row stride src_stride) to dst
     * (row stride dst_stride); both in backend memory, not overlapping. */
    void (*copy_rows)(sep_backend_t *be, float *dst, int dst_stride,
                      const float *src, int src_stride, int n, int width);

    /* A weight from a (rows, cols) fp32 host matrix; NULL without memory. */
    sep_weight_t *(*weight_new)(sep_backend_t *be, const float *host, int rows, int cols);
    void (*weight_free)(sep_backend_t *be, sep_weight_t *w);
    /* Row i of y := row ids[i] of w, in fp32 (embedding lookup; ids host). */
    void (*weight_rows)(sep_backend_t *be, float *y, const sep_weight_t *w,
                        const int32_t *ids, int n);
    /* y(n, rows) = x(n, cols) * w(rows, cols)^T [+ bias(rows)], fp32
     * accumulation whatever w's format */
    void (*matmul)(sep_backend_t *be, float *y, const float *x, const sep_weight_t *w,
                   const float *bias, int n);
    /* y = x / rms(x) * w, per row */
    void (*rmsnorm)(sep_backend_t *be, float *y, const float *x, const float *w,
                    int n, int d, float eps);
    /* y = (x - mean) / sqrt(var + eps) * w + b, per row */
    void (*layernorm)(sep_backend_t *be, float *y, const float *x, const float *w,
                      const float *b, int n, int d, float eps);
    /* Rotate-half rotary embedding in place on the first rot_dim dims of
     * each of n_heads heads of n rows (row stride `stride` floats).
     * cs: (n, rot_dim) host-computed table, row i = cos[rot/2] then sin[rot/2]
     * at row i's position, in backend memory. */
    void (*rope)(sep_backend_t *be, float *x, int n, int stride, int n_heads,
                 int head_dim, int rot_dim, const float *cs);
    /* Make the operations ready for attention over up to max_keys keys,
     * gathers of up to max_rows rows of up to max_width floats, and NLLs
     * of up to max_rows rows (scratch memory): the one call besides alloc
     * that can fail for memory (SEP_ENOMEM). */
    int (*reserve)(sep_backend_t *be, int max_keys, int max_rows, int max_width);
    /* Wait for queued work; a device fault since the last sync is
     * reported here (SEP_EIO, naming it). */
    int (*sync)(sep_backend_t *be);
    /* Causal attention for a batch of problems sharing head geometry,
     * none longer than the last reserve allowed. */
    void (*attention)(sep_backend_t *be, const sep_attn_t *probs, int n_probs,
                      int n_heads, int n_kv_heads, int head_dim);
    /* x += y, n*d elements */
    void (*add)(sep_backend_t *be, float *x, const float *y, size_t n);
    /* y(n, d) := silu(gu[:, :d]) * gu[:, d:], gu being (n, 2d) */
    void (*silu_mul)(sep_backend_t *be, float *y, const float *gu, int n, int d);
    /* x := gelu(x); tanh_approx selects the tanh form */
    void (*gelu)(sep_backend_t *be, float *x, size_t n, int tanh_approx);
    /* nll[i] = logsumexp(logits row i) - logits[i, target[i]] (n rows of
     * vocab); target[i] < 0 skips row i. targets and nll in host memory. */
    void (*nll)(sep_backend_t *be, float *nll, const float *logits,
                const int32_t *target, int n, int vocab);

    void (*destroy)(sep_backend_t *be);
};

/* The CPU backend: OpenBLAS for matrix products, OpenMP threads for the
 * rest; n_threads <= 0 means $OMP_NUM_THREADS, else one per core. */
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
