/* cuda.cu: the CUDA backend, built as the module sepd-cuda.so that
 * sep_backend_cuda_new() loads on first use (so CPU-only runs never map
 * the CUDA libraries). cuBLAS does the matrix products of many rows; the
 * kernels below do the rest on the device. Activations are fp32 between
 * operations, but for the SwiGLU MLP's, which stay bf16. In bf16 mode
 * weights are bf16 and a product rounds its input to bf16 too,
 * accumulating in fp32 on the tensor cores (the norms and attention that
 * feed products write that bf16 copy as they go); attention runs on the
 * tensor cores too. In fp32 mode everything is fp32 (TF32 stays off),
 * exact against the goldens. */
extern "C" {
#include "backend.h"
#include "err.h"
#include "pick.h"
}

#include <cooperative_groups.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

namespace cg = cooperative_groups;

/* A one-token product not yet launched (see cuda_norm); w NULL: none. */
typedef struct {
    float *y;
    const void *x;        /* fp32 or (x_bf16) bf16 rows */
    int x_bf16;
    const sep_weight_t *w;
    const float *bias;
    int n;
} gemv_pending_t;

/* Offsets [lo, hi) from the mirror's anchor (below). */
typedef struct {
    size_t lo, hi;
} xb_span_t;

/* Loading: a checkpoint's raw tensors go to the device through
 * LOAD_SLOTS pinned buffers in turn; the host reads into one while the
 * copies (and conversions) of the others run, an event marking each
 * slot's last use. */
#define LOAD_SLOTS 4
#define LOAD_SLOT_BYTES ((size_t)64 << 20)

typedef struct {
    unsigned char *host;  /* (cap bytes) pinned */
    void *dev;            /* (dev_cap bytes) device copy of a fill that converts */
    size_t cap, dev_cap;
    cudaEvent_t done;     /* recorded after the last fill that read the slot */
    int pending;          /* done recorded, not waited for yet */
} load_slot_t;

/* The CUDA backend: a stream, a cuBLAS handle and device scratch. */
typedef struct {
    sep_backend_t base;
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    unsigned char *d_ring; /* (ring_len bytes) indices, positions, targets staged;
                              NLLs and picked tokens on their way back */
    unsigned char *h_ring; /* (ring_len bytes) the same, pinned host memory */
    size_t ring_len, ring_at;
    load_slot_t load[LOAD_SLOTS]; /* stage buffers of a load, allocated as it asks */
    int load_next;        /* the slot stage hands out next */
    int load_given;       /* 1 + the slot stage handed out last, 0: none */
    float *d_tmp;         /* (max_rows, max_width) rows of an in-place gather */
    size_t tmp_cap;
    __nv_bfloat16 *d_xb;  /* (max_rows, max_width) a product's input in bf16 */
    size_t xb_cap;
    const float *xb_of;   /* the mirror's anchor: d_xb[i] holds xb_of[i] in bf16 ... */
    xb_span_t *xb_spans;  /* (spans_cap) ... for i in these spans, sorted, disjoint */
    int n_spans, spans_cap;
    int xb_rounds;        /* the spans are attention rounds' outputs (more may follow) */
    float *d_part;        /* (part_cap) split attention's partial rows */
    size_t part_cap;
    unsigned *d_count;    /* (FA_PART_BLOCKS + 1) finished splits of each row tile, zeroed */
    unsigned *d_done;     /* its last: finished blocks of a GEMV with a norm, zeroed */
    int n_sm;             /* multiprocessors: how many blocks fill the GPU */
    int max_keys;         /* the most keys a query sees (reserve): runs' key splits */
    int pick_cluster;     /* blocks a row of the pick (k_pick): 16 or 8 */
    gemv_pending_t pending; /* a product held back for the norm after it */
    int bf16;             /* weights and product inputs in bf16 */
} cuda_backend_t;

struct sep_weight {
    void *data;           /* (rows, cols) fp32 or bf16 */
    int rows, cols;
    int bf16;
};

#define CB(be) ((cuda_backend_t *)(be))

/* Launches the product held back for a fused norm, if any (below): every
 * entry point but the norms calls it first. */
static void cuda_flush(cuda_backend_t *cb);

/* ---- launches ------------------------------------------------------------ *
 * Every kernel goes out with programmatic dependent launch (Hopper): it
 * may be scheduled while the kernel before it drains, and its blocks wait
 * (griddep_wait) before they touch anything earlier work wrote; each
 * kernel lets the next one launch (griddep_launch) once it runs. A
 * one-token step is some 300 small kernels: the gaps between them would
 * cost as much as many of the kernels. */
__device__ __forceinline__ void griddep_wait(void)
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
}

__device__ __forceinline__ void griddep_launch(void)
{
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

/* kernel<<<grid, block, shared, stream>>>(args), as above; a launch error
 * is left for cuda_sync to report (cudaGetLastError) */
template <typename... Params, typename... Args>
static void cuda_launch_cluster(cudaStream_t stream, void (*kernel)(Params...), int cluster,
                                dim3 grid, dim3 block, size_t shared, Args... args)
{
    cudaLaunchAttribute attr[2];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    attr[1].id = cudaLaunchAttributeClusterDimension;
    attr[1].val.clusterDim.x = (unsigned)cluster;
    attr[1].val.clusterDim.y = 1;
    attr[1].val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg;
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = shared;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = cluster > 1 ? 2 : 1;
    cudaLaunchKernelEx(&cfg, kernel, (Params)args...);
}

template <typename... Params, typename... Args>
static void cuda_launch(cudaStream_t stream, void (*kernel)(Params...), dim3 grid, dim3 block,
                        size_t shared, Args... args)
{
    cuda_launch_cluster(stream, kernel, 1, grid, block, shared, args...);
}

/* Grow a device scratch buffer (from reserve, before work is queued). */
static int cuda_grow(cuda_backend_t *cb, void **buf, size_t *cap, size_t bytes)
{
    if (bytes <= *cap)
        return 0;
    void *nb = NULL;
    if (cudaMalloc(&nb, bytes) != cudaSuccess)
        return -1;
    cudaStreamSynchronize(cb->stream); /* the old one may still be in use */
    cudaFree(*buf);
    *buf = nb;
    *cap = bytes;
    return 0;
}

/* Host data for the device without waiting: taken room in the pinned
 * ring, filled, and sent asynchronously; room is reused only after a full
 * wrap, which first waits for the stream (every earlier copy has then
 * landed). reserve sizes the ring for several calls' worth. */
static size_t cuda_ring_take(cuda_backend_t *cb, size_t bytes)
{
    size_t at = (cb->ring_at + 15) & ~(size_t)15;
    if (at + bytes > cb->ring_len) {
        cudaStreamSynchronize(cb->stream);
        at = 0;
    }
    cb->ring_at = at + bytes;
    return at;
}

static void cuda_ring_send(cuda_backend_t *cb, size_t at, size_t bytes)
{
    if (bytes)
        cudaMemcpyAsync(cb->d_ring + at, cb->h_ring + at, bytes, cudaMemcpyHostToDevice,
                        cb->stream);
}

static const void *cuda_stage(cuda_backend_t *cb, const void *src, size_t bytes)
{
    size_t at = cuda_ring_take(cb, bytes);
    memcpy(cb->h_ring + at, src, bytes);
    cuda_ring_send(cb, at, bytes);
    return cb->d_ring + at;
}

static const int32_t *cuda_stage_ids(cuda_backend_t *cb, const int32_t *ids, int n)
{
    return (const int32_t *)cuda_stage(cb, ids, (size_t)n * sizeof *ids);
}

/* Results the stream wrote to the ring's bytes [at, at + bytes), on the
 * host: waits for the stream. */
static const unsigned char *cuda_ring_fetch(cuda_backend_t *cb, size_t at, size_t bytes)
{
    cudaMemcpyAsync(cb->h_ring + at, cb->d_ring + at, bytes, cudaMemcpyDeviceToHost, cb->stream);
    cudaStreamSynchronize(cb->stream);
    return cb->h_ring + at;
}

/* ---- the bf16 mirror ------------------------------------------------------ *
 * d_xb holds the bf16 copy of fp32 values that a product reads next, so it
 * need not convert them: a producer (norm, activation) writes it as a
 * twin of its output, attention adds each round's rows, a product that
 * had to convert its input leaves it there. Any write to mirrored values
 * drops the mirror. */

static void cuda_written(cuda_backend_t *cb)
{
    cb->xb_of = NULL;
    cb->n_spans = 0;
    cb->xb_rounds = 0;
}

/* Forget the mirror if the n floats at y overwrite what it mirrors. */
static void cuda_overwrites(cuda_backend_t *cb, const float *y, size_t n)
{
    if (!cb->n_spans)
        return;
    uintptr_t a = (uintptr_t)y, b = (uintptr_t)(y + n);
    uintptr_t lo = (uintptr_t)(cb->xb_of + cb->xb_spans[0].lo);
    uintptr_t hi = (uintptr_t)(cb->xb_of + cb->xb_spans[cb->n_spans - 1].hi);
    if (a < hi && lo < b)
        cuda_written(cb);
}

/* The mirror's span set gains the len values at p (at or after the
 * anchor, inside d_xb), merged with the spans it touches; -1 without
 * memory for another span. */
static int cuda_mirror_add(cuda_backend_t *cb, const float *p, size_t len)
{
    size_t lo = (size_t)(p - cb->xb_of), hi = lo + len;
    int i = 0, j;
    while (i < cb->n_spans && cb->xb_spans[i].hi < lo)
        i++;
    for (j = i; j < cb->n_spans && cb->xb_spans[j].lo <= hi; j++) {
        lo = cb->xb_spans[j].lo < lo ? cb->xb_spans[j].lo : lo;
        hi = cb->xb_spans[j].hi > hi ? cb->xb_spans[j].hi : hi;
    }
    if (j == i) {
        if (cb->n_spans == cb->spans_cap) {
            int cap = cb->spans_cap ? 2 * cb->spans_cap : 64;
            xb_span_t *ns = (xb_span_t *)realloc(cb->xb_spans, cap * sizeof *ns);
            if (!ns)
                return -1;
            cb->xb_spans = ns;
            cb->spans_cap = cap;
        }
        memmove(cb->xb_spans + i + 1, cb->xb_spans + i, (cb->n_spans - i) * sizeof *cb->xb_spans);
        cb->n_spans++;
    } else if (j > i + 1) {
        memmove(cb->xb_spans + i + 1, cb->xb_spans + j, (cb->n_spans - j) * sizeof *cb->xb_spans);
        cb->n_spans -= j - i - 1;
    }
    cb->xb_spans[i].lo = lo;
    cb->xb_spans[i].hi = hi;
    return 0;
}

/* Where a producer of the len values y may also write them in bf16, for
 * the product that reads them next; NULL when d_xb is too small. */
static __nv_bfloat16 *cuda_twin(cuda_backend_t *cb, const float *y, size_t len)
{
    cuda_written(cb);
    if (!cb->bf16 || len * sizeof(__nv_bfloat16) > cb->xb_cap)
        return NULL;
    cb->xb_of = y;
    if (cuda_mirror_add(cb, y, len))
        return NULL;
    return cb->d_xb;
}

/* The len values x in bf16 if the mirror holds them all, else NULL. */
static const __nv_bfloat16 *cuda_mirror(const cuda_backend_t *cb, const float *x, size_t len)
{
    if (!cb->n_spans || x < cb->xb_of)
        return NULL;
    size_t lo = (size_t)(x - cb->xb_of);
    for (int i = 0; i < cb->n_spans; i++)
        if (cb->xb_spans[i].lo <= lo && lo + len <= cb->xb_spans[i].hi)
            return cb->d_xb + lo;
    return NULL;
}

static void *cuda_alloc(sep_backend_t *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    return cudaMalloc(&p, bytes ? bytes : 16) == cudaSuccess ? p : NULL;
}

static void cuda_free(sep_backend_t *be, void *p)
{
    cuda_flush(CB(be));
    if (p)
        cudaFree(p);
}

static void cuda_upload(sep_backend_t *be, void *dst, const void *src, size_t bytes)
{
    cuda_flush(CB(be));
    cuda_overwrites(CB(be), (const float *)dst, (bytes + sizeof(float) - 1) / sizeof(float));
    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, CB(be)->stream);
    cudaStreamSynchronize(CB(be)->stream); /* src may be reused at once */
}

static void cuda_download(sep_backend_t *be, void *dst, const void *src, size_t bytes)
{
    cuda_flush(CB(be));
    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, CB(be)->stream);
    cudaStreamSynchronize(CB(be)->stream);
}

static void *cuda_host_alloc(sep_backend_t *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    return cudaHostAlloc(&p, bytes ? bytes : 16, cudaHostAllocDefault) == cudaSuccess ? p : NULL;
}

static void cuda_host_free(sep_backend_t *be, void *p)
{
    cuda_flush(CB(be));
    if (p)
        cudaFreeHost(p);
}

/* ---- rows ---------------------------------------------------------------- */

/* Gathers a launch takes, by value in the launch parameters; each with
 * its staged indices and, done in place, its rows' offset in d_tmp. */
#define GATHER_MAX 64

typedef struct {
    float *dst;
    const float *src;
    const int32_t *idx; /* device */
    int n, width;
    long long tmp;      /* offset in d_tmp, or -1: straight to dst */
} gather_desc_t;

typedef struct {
    gather_desc_t g[GATHER_MAX];
} gather_batch_t;

/* blockIdx.y the gather, blockIdx.x strides its rows. Pass 0 reads the
 * sources (into d_tmp for in-place gathers, whose blocks would otherwise
 * overwrite rows other blocks still read); pass 1 copies d_tmp back. */
__global__ void k_gather(const gather_batch_t batch, float *tmp, int pass)
{
    griddep_wait();
    griddep_launch();
    const gather_desc_t *g = &batch.g[blockIdx.y];
    if (pass == 1 && g->tmp < 0)
        return;
    for (int i = blockIdx.x; i < g->n; i += gridDim.x) {
        const float *s = pass == 0 ? g->src + (size_t)g->idx[i] * g->width
                                   : tmp + g->tmp + (size_t)i * g->width;
        float *d = pass == 0 && g->tmp >= 0 ? tmp + g->tmp + (size_t)i * g->width
                                            : g->dst + (size_t)i * g->width;
        for (int j = threadIdx.x; j < g->width; j += blockDim.x)
            d[j] = s[j];
    }
}

/* Gathers in launches of up to GATHER_MAX whose indices fit half the
 * staging ring and whose in-place rows fit d_tmp (reserve sized both for
 * any single gather). */
static void cuda_gather_rows(sep_backend_t *be, const sep_gather_t *g, int n_gathers)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    for (int i = 0; i < n_gathers; i++)
        cuda_overwrites(cb, g[i].dst, (size_t)g[i].n * g[i].width);
    for (int at = 0; at < n_gathers;) {
        gather_batch_t batch;
        size_t ids = 0, tmp = 0;
        int nb = 0, rows = 0, in_place = 0;
        for (; at + nb < n_gathers && nb < GATHER_MAX; nb++) {
            const sep_gather_t *x = &g[at + nb];
            int overlap = x->n > 0 && x->dst < x->src + (size_t)(x->idx[x->n - 1] + 1) * x->width &&
                          x->src < x->dst + (size_t)x->n * x->width;
            size_t need = overlap ? (size_t)x->n * x->width : 0;
            if (nb > 0 && ((ids + x->n) * sizeof(int32_t) > cb->ring_len / 2 ||
                           (tmp + need) * sizeof(float) > cb->tmp_cap))
                break;
            batch.g[nb] = (gather_desc_t){ x->dst, x->src, NULL, x->n, x->width,
                                           overlap ? (long long)tmp : -1 };
            ids += x->n;
            tmp += need;
            in_place |= overlap;
            rows = x->n > rows ? x->n : rows;
        }
        /* every gather's indices in one staged copy */
        size_t off = cuda_ring_take(cb, ids * sizeof(int32_t));
        int32_t *h = (int32_t *)(cb->h_ring + off);
        const int32_t *d = (const int32_t *)(cb->d_ring + off);
        for (int b = 0, k = 0; b < nb; k += batch.g[b].n, b++) {
            memcpy(h + k, g[at + b].idx, (size_t)batch.g[b].n * sizeof(int32_t));
            batch.g[b].idx = d + k;
        }
        cuda_ring_send(cb, off, ids * sizeof(int32_t));
        at += nb;
        if (rows == 0)
            continue;
        dim3 grid(rows < 1024 ? rows : 1024, nb);
        cuda_launch(cb->stream, k_gather, grid, 128, 0, batch, cb->d_tmp, 0);
        if (in_place)
            cuda_launch(cb->stream, k_gather, grid, 128, 0, batch, cb->d_tmp, 1);
    }
}

/* Blocks of rows a launch copies or rotates, by value in the launch
 * parameters (no copy to the device, no host wait). */
#define BATCH_MAX 64

template <typename T>
struct batch_of {
    T b[BATCH_MAX];
};

/* launch(batch, nb, rows) for the blocks, BATCH_MAX at a time; rows is
 * the longest block's row count (nothing runs when it is 0). */
template <typename T, typename Launch>
static void cuda_in_batches(const T *blocks, int n_blocks, Launch launch)
{
    for (int at = 0; at < n_blocks; at += BATCH_MAX) {
        batch_of<T> batch;
        int nb = n_blocks - at < BATCH_MAX ? n_blocks - at : BATCH_MAX, rows = 0;
        for (int b = 0; b < nb; b++) {
            batch.b[b] = blocks[at + b];
            rows = blocks[at + b].n > rows ? blocks[at + b].n : rows;
        }
        if (rows > 0)
            launch(batch, nb, rows);
    }
}

/* blockIdx.y picks the block of rows; blockIdx.x strides its rows */
__global__ void k_copy_rows(const batch_of<sep_rows_t> batch)
{
    griddep_wait();
    griddep_launch();
    const sep_rows_t *r = &batch.b[blockIdx.y];
    for (int i = blockIdx.x; i < r->n; i += gridDim.x)
        for (int j = threadIdx.x; j < r->width; j += blockDim.x)
            r->dst[(size_t)i * r->dst_stride + j] = r->src[(size_t)i * r->src_stride + j];
}

static void cuda_copy_rows(sep_backend_t *be, const sep_rows_t *blocks, int n_blocks)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    for (int i = 0; i < n_blocks; i++)
        cuda_overwrites(cb, blocks[i].dst, (size_t)blocks[i].n * blocks[i].dst_stride);
    cuda_in_batches(blocks, n_blocks, [cb](const batch_of<sep_rows_t> &batch, int nb, int rows) {
        cuda_launch(cb->stream, k_copy_rows, dim3(rows < 1024 ? rows : 1024, nb), 256, 0, batch);
    });
}

/* ---- weights and matmul ------------------------------------------------- */

__global__ void k_to_bf16(__nv_bfloat16 *y, const float *x, size_t n)
{
    griddep_wait();
    griddep_launch();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = __float2bfloat16(x[i]);
}

__global__ void k_rows_bf16(float *y, const __nv_bfloat16 *w, const int32_t *ids, int cols)
{
    griddep_wait();
    griddep_launch();
    const __nv_bfloat16 *row = w + (size_t)ids[blockIdx.x] * cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        y[(size_t)blockIdx.x * cols + j] = __bfloat162float(row[j]);
}

/* y[i] := element i of x (format elem) in Out's format, i < n: exact to
 * fp32, then rounded to nearest even for bf16 (as k_to_bf16). */
template <typename Out>
__global__ void k_load(Out *y, const void *x, size_t n, sep_elem_t elem)
{
    griddep_wait();
    griddep_launch();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = elem == SEP_ELEM_F32   ? ((const float *)x)[i]
                  : elem == SEP_ELEM_F16 ? __half2float(((const __half *)x)[i])
                                         : __bfloat162float(((const __nv_bfloat16 *)x)[i]);
        if constexpr (sizeof(Out) == 2)
            y[i] = __float2bfloat16(v);
        else
            y[i] = v;
    }
}

static int cuda_sync(sep_backend_t *be);

static sep_weight_t *cuda_weight_alloc(sep_backend_t *be, int rows, int cols)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    size_t n = (size_t)rows * cols;
    sep_weight_t *w = (sep_weight_t *)calloc(1, sizeof *w);
    if (!w || cudaMalloc(&w->data, (n ? n : 1) * (cb->bf16 ? 2 : 4)) != cudaSuccess) {
        free(w);
        return NULL;
    }
    w->rows = rows;
    w->cols = cols;
    w->bf16 = cb->bf16;
    return w;
}

/* The next slot, once the fills that read it are done, holding at least
 * min(*bytes, LOAD_SLOT_BYTES) bytes; *bytes := that. */
static void *cuda_stage(sep_backend_t *be, size_t *bytes)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    load_slot_t *s = &cb->load[cb->load_next];
    size_t want = *bytes < LOAD_SLOT_BYTES ? *bytes : LOAD_SLOT_BYTES;
    want = want ? want : 1;
    if (s->pending)
        cudaEventSynchronize(s->done); /* a fault shows in load_end's sync */
    s->pending = 0;
    if (!s->done && cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming) != cudaSuccess) {
        s->done = NULL;
        return NULL;
    }
    if (want > s->cap) {
        cudaFreeHost(s->host);
        s->cap = 0;
        if (cudaHostAlloc((void **)&s->host, want, cudaHostAllocDefault) != cudaSuccess) {
            s->host = NULL;
            return NULL;
        }
        s->cap = want;
    }
    cb->load_given = cb->load_next + 1;
    cb->load_next = (cb->load_next + 1) % LOAD_SLOTS;
    *bytes = want;
    return s->host;
}

/* Elements [at, at + n) of w from src, inside slot s: copied to the
 * weight, or to the slot's device buffer and converted there. */
static int cuda_fill_slot(cuda_backend_t *cb, load_slot_t *s, sep_weight_t *w, size_t at,
                          const unsigned char *src, size_t n, sep_elem_t elem)
{
    size_t bytes = n * sep_elem_size(elem);
    unsigned char *dst = (unsigned char *)w->data + at * (w->bf16 ? 2 : 4);
    if (elem == (w->bf16 ? SEP_ELEM_BF16 : SEP_ELEM_F32)) {
        cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cb->stream);
    } else {
        if (bytes > s->dev_cap) {
            cudaFree(s->dev); /* waits for the device */
            s->dev_cap = 0;
            if (cudaMalloc(&s->dev, s->cap) != cudaSuccess) {
                s->dev = NULL;
                return sep_fail(SEP_ENOMEM, "cuda: no device memory for a %zu-byte load buffer",
                                s->cap);
            }
            s->dev_cap = s->cap;
        }
        cudaMemcpyAsync(s->dev, src, bytes, cudaMemcpyHostToDevice, cb->stream);
        unsigned grid = (unsigned)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096);
        if (w->bf16)
            cuda_launch(cb->stream, k_load<__nv_bfloat16>, grid, 256, 0, (__nv_bfloat16 *)dst,
                        (const void *)s->dev, n, elem);
        else
            cuda_launch(cb->stream, k_load<float>, grid, 256, 0, (float *)dst,
                        (const void *)s->dev, n, elem);
    }
    cudaEventRecord(s->done, cb->stream);
    s->pending = 1;
    return SEP_OK;
}

/* From the slot stage gave, without a copy; from other memory through
 * the slots, a memcpy each. */
static int cuda_weight_fill(sep_backend_t *be, sep_weight_t *w, size_t at, const void *src,
                            size_t n, sep_elem_t elem)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    size_t total = (size_t)w->rows * w->cols, esz = sep_elem_size(elem);
    const unsigned char *p = (const unsigned char *)src;
    int given = cb->load_given;
    cb->load_given = 0;
    if (at > total || n > total - at)
        return sep_fail(SEP_EINVAL, "weight_fill: elements [%zu, %zu) of a %dx%d weight", at,
                        at + n, w->rows, w->cols);
    if (given) {
        load_slot_t *s = &cb->load[given - 1];
        if (p >= s->host && n * esz <= s->cap && (size_t)(p - s->host) <= s->cap - n * esz)
            return cuda_fill_slot(cb, s, w, at, p, n, elem);
    }
    while (n) {
        size_t bytes = n * esz;
        unsigned char *buf = (unsigned char *)cuda_stage(be, &bytes);
        if (!buf)
            return sep_fail(SEP_ENOMEM, "cuda: no pinned memory for a %zu-byte load buffer",
                            bytes);
        load_slot_t *s = &cb->load[cb->load_given - 1];
        cb->load_given = 0;
        size_t k = bytes / esz;
        memcpy(buf, p, k * esz);
        int rc = cuda_fill_slot(cb, s, w, at, buf, k, elem);
        if (rc)
            return rc;
        p += k * esz;
        at += k;
        n -= k;
    }
    return SEP_OK;
}

static void cuda_load_free(cuda_backend_t *cb)
{
    for (int i = 0; i < LOAD_SLOTS; i++) {
        load_slot_t *s = &cb->load[i];
        cudaFreeHost(s->host);
        cudaFree(s->dev);
        if (s->done)
            cudaEventDestroy(s->done);
        memset(s, 0, sizeof *s);
    }
    cb->load_next = cb->load_given = 0;
}

static int cuda_load_end(sep_backend_t *be)
{
    int rc = cuda_sync(be);
    cuda_load_free(CB(be));
    return rc;
}

/* The fill path from fp32; the stage buffers stay for the next. */
static sep_weight_t *cuda_weight_new(sep_backend_t *be, const float *host, int rows, int cols)
{
    sep_weight_t *w = cuda_weight_alloc(be, rows, cols);
    if (w && cuda_weight_fill(be, w, 0, host, (size_t)rows * cols, SEP_ELEM_F32)) {
        cudaFree(w->data);
        free(w);
        return NULL;
    }
    return w;
}

static void cuda_weight_free(sep_backend_t *be, sep_weight_t *w)
{
    cuda_flush(CB(be));
    if (w)
        cudaFree(w->data);
    free(w);
}

__global__ void k_bias_rows(float *y, const float *bias, int n, int d)
{
    griddep_wait();
    griddep_launch();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)n * d)
        y[i] = bias[i % d];
}

/* y (n, d) := the bias in every row, when there is one: the beta with
 * which a cuBLAS product then adds itself to y. */
static float cuda_bias_first(cuda_backend_t *cb, float *y, const float *bias, int n, int d)
{
    if (!bias)
        return 0.0f;
    size_t total = (size_t)n * d;
    cuda_launch(cb->stream, k_bias_rows, (unsigned)((total + 255) / 256), 256, 0, y, bias, n, d);
    return 1.0f;
}

/* ---- device helpers ------------------------------------------------------ */

struct op_sum {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct op_max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct op_min {
    __device__ float operator()(float a, float b) const { return fminf(a, b); }
};

/* Reduce v over the block with op, whose identity is id (blockDim.x a
 * multiple of 32, at most 1024); every thread gets the result. */
template <typename Op>
__device__ float block_reduce(float v, Op op, float id)
{
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? part[lane] : id;
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ float block_sum(float v)
{
    return block_reduce(v, op_sum(), 0.0f);
}

__device__ float block_max(float v)
{
    return block_reduce(v, op_max(), -INFINITY);
}

/* y[t] = v, and its bf16 copy where there is one */
__device__ __forceinline__ void put(float *y, __nv_bfloat16 *yb, size_t t, float v)
{
    y[t] = v;
    if (yb)
        yb[t] = __float2bfloat16(v);
}

/* SwiGLU's activation of a gate g and up value u */
__device__ __forceinline__ float silu_mul(float g, float u)
{
    return g / (1.0f + __expf(-g)) * u;
}

/* y[t], y[t + 1] = a, b likewise, t even: one store each */
__device__ __forceinline__ void put2(float *y, __nv_bfloat16 *yb, size_t t, float a, float b)
{
    *(float2 *)(y + t) = make_float2(a, b);
    if (yb)
        *(__nv_bfloat162 *)(yb + t) = __floats2bfloat162_rn(a, b);
}

/* Products of a few rows (one-token steps) read the weight once at full
 * bandwidth: a warp per output column, 16-byte loads of its bf16 weight
 * row, the GEMV_ROWS rows' dot products reduced across the warp. cuBLAS
 * takes split-K kernels for these and reads the weights at half speed.
 * The input is fp32 or bf16 (XT); SWIGLU makes each warp score columns o
 * and o + d_out of a gate-up weight and write silu(g) * u in bf16 to yb,
 * instead of the column to y. */
#define GEMV_ROWS 4
#define GEMV_WARPS 8

/* eight values from 16-byte aligned x, as floats */
__device__ __forceinline__ void load8(float *f, const float *x)
{
    float4 a = ((const float4 *)x)[0], b = ((const float4 *)x)[1];
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
    f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

__device__ __forceinline__ void load8(float *f, const __nv_bfloat16 *x)
{
    uint4 v = *(const uint4 *)x;
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&v;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 p = __bfloat1622float2(h[k]);
        f[2 * k] = p.x;
        f[2 * k + 1] = p.y;
    }
}

/* acc += the products of one 16-byte vector of weights (wv, a row each
 * for SWIGLU's gate and up) with the N rows of x at vector c */
template <int N, int SWIGLU, typename XT>
__device__ __forceinline__ void gemv_step(float (&acc)[1 + SWIGLU][N], const uint4 *wv,
                                          const XT *x, int d_in, int c)
{
    float f[1 + SWIGLU][8];
#pragma unroll
    for (int h = 0; h <= SWIGLU; h++)
        load8(f[h], (const __nv_bfloat16 *)&wv[h]);
#pragma unroll
    for (int i = 0; i < N; i++) {
        float a[8];
        load8(a, x + (size_t)i * d_in + 8 * c);
#pragma unroll
        for (int h = 0; h <= SWIGLU; h++)
#pragma unroll
            for (int k = 0; k < 8; k++)
                acc[h][i] += f[h][k] * a[k];
    }
}

/* vectors of weights a lane loads before it waits for x (the weights do
 * not depend on earlier kernels: their reads overlap the kernel before) */
#define GEMV_EARLY 4

/* The residual add and norm that follow a product of few rows, done by
 * its last block (see cuda_norm): x += y, then h = norm(x) * w [+ b]
 * (LayerNorm when b is set), h's bf16 twin to hb when set. */
typedef struct {
    float *h;
    __nv_bfloat16 *hb;
    float *x;
    const float *w, *b;
    float eps;
    unsigned *count;  /* blocks done, zero between launches */
} gemv_norm_t;

/* Loads of a tail pass a thread keeps in flight (registers it adds to the
 * GEMV, which must not lose occupancy to its tail). */
#define TAIL_PER 8

/* The last block of the grid to finish (its writes of y, d wide, and
 * every other block's, visible) adds and norms the N rows; TAIL_PER
 * values a thread at a time, loads first. */
template <int N>
__device__ void gemv_norm_tail(const float *y, int d, const gemv_norm_t &nm)
{
    __shared__ unsigned ticket;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0)
        ticket = atomicAdd(nm.count, 1u);
    __syncthreads();
    if (ticket != gridDim.x - 1)
        return;
    __threadfence();
    int step = TAIL_PER * blockDim.x;
    for (int i = 0; i < N; i++) {
        float *x = nm.x + (size_t)i * d, s = 0.0f, ss = 0.0f, mean = 0.0f;
        const float *yr = y + (size_t)i * d;
        for (int j0 = threadIdx.x; j0 < d; j0 += step) {
            float v[TAIL_PER];
#pragma unroll
            for (int k = 0; k < TAIL_PER; k++) {
                int j = j0 + k * blockDim.x;
                v[k] = j < d ? x[j] + __ldcg(yr + j) : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < TAIL_PER; k++)
                if (j0 + k * blockDim.x < d) {
                    x[j0 + k * blockDim.x] = v[k];
                    s += v[k];
                    ss += v[k] * v[k];
                }
        }
        if (nm.b) { /* LayerNorm: the variance about the mean, a second pass */
            mean = block_sum(s) / d;
            ss = 0.0f;
            for (int j0 = threadIdx.x; j0 < d; j0 += step) {
                float v[TAIL_PER];
#pragma unroll
                for (int k = 0; k < TAIL_PER; k++) {
                    int j = j0 + k * blockDim.x;
                    v[k] = j < d ? x[j] - mean : 0.0f;
                }
#pragma unroll
                for (int k = 0; k < TAIL_PER; k++)
                    ss += v[k] * v[k];
            }
        }
        float r = rsqrtf(block_sum(ss) / d + nm.eps);
        for (int j0 = threadIdx.x; j0 < d; j0 += step) {
            float v[TAIL_PER], wv[TAIL_PER];
#pragma unroll
            for (int k = 0; k < TAIL_PER; k++) {
                int j = j0 + k * blockDim.x;
                v[k] = j < d ? x[j] : 0.0f;
                wv[k] = j < d ? nm.w[j] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < TAIL_PER; k++) {
                int j = j0 + k * blockDim.x;
                if (j < d)
                    put(nm.h, nm.hb, (size_t)i * d + j,
                        (v[k] - mean) * r * wv[k] + (nm.b ? nm.b[j] : 0.0f));
            }
        }
    }
    if (threadIdx.x == 0)
        *nm.count = 0;
}

/* Each block asks L2 for a 128-byte line of the tail's rows of x and of
 * its weights (the weights do not change; x's last writer finished long
 * before), so the last block finds them there. */
template <int N>
__device__ void gemv_norm_prefetch(int d, const gemv_norm_t &nm)
{
    int lines = (d + 31) / 32, t = threadIdx.x;
    for (int k = blockIdx.x * 2 + t; t < 2 && k < (N + 1) * lines; k += 2 * gridDim.x) {
        const float *p = k < lines ? nm.w + 32 * k : nm.x + 32 * (k - lines);
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
    }
}

template <int N, int SWIGLU, typename XT, int NORM>
__global__ void __launch_bounds__(32 * GEMV_WARPS)
    k_gemv(float *y, __nv_bfloat16 *yb, const XT *x, const __nv_bfloat16 *w, const float *bias,
           int d_in, int d_out, gemv_norm_t nm)
{
    int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    int n8 = d_in / 8;
    if (NORM)
        gemv_norm_prefetch<N>(d_out, nm);
    if (o >= d_out) { /* a warp past the last column: only the tail's syncs */
        griddep_wait();
        griddep_launch();
        if (NORM)
            gemv_norm_tail<N>(y, d_out, nm);
        return;
    }
    const uint4 *wr[1 + SWIGLU];
    float acc[1 + SWIGLU][N];
    uint4 early[GEMV_EARLY][1 + SWIGLU];
#pragma unroll
    for (int h = 0; h <= SWIGLU; h++) {
        wr[h] = (const uint4 *)(w + (size_t)(o + h * d_out) * d_in);
#pragma unroll
        for (int i = 0; i < N; i++)
            acc[h][i] = 0.0f;
#pragma unroll
        for (int p = 0; p < GEMV_EARLY; p++)
            if (lane + 32 * p < n8)
                early[p][h] = wr[h][lane + 32 * p];
    }
    griddep_wait();
    griddep_launch();
#pragma unroll
    for (int p = 0; p < GEMV_EARLY; p++)
        if (lane + 32 * p < n8)
            gemv_step<N, SWIGLU>(acc, early[p], x, d_in, lane + 32 * p);
#pragma unroll 4
    for (int c = lane + 32 * GEMV_EARLY; c < n8; c += 32) {
        uint4 wv[1 + SWIGLU];
#pragma unroll
        for (int h = 0; h <= SWIGLU; h++)
            wv[h] = wr[h][c];
        gemv_step<N, SWIGLU>(acc, wv, x, d_in, c);
    }
#pragma unroll
    for (int i = 0; i < N; i++) {
        float v[1 + SWIGLU];
#pragma unroll
        for (int h = 0; h <= SWIGLU; h++) {
            v[h] = acc[h][i];
            for (int off = 16; off > 0; off >>= 1)
                v[h] += __shfl_xor_sync(0xffffffffu, v[h], off);
            v[h] += bias ? bias[o + h * d_out] : 0.0f;
        }
        if (lane != 0)
            continue;
        if (SWIGLU)
            yb[(size_t)i * d_out + o] = __float2bfloat16(silu_mul(v[0], v[SWIGLU]));
        else
            y[(size_t)i * d_out + o] = v[0];
    }
    if (NORM)
        gemv_norm_tail<N>(y, d_out, nm);
}

/* Whether a product of n rows of x (d_in wide) takes the GEMV: bf16
 * weights, rows of whole 16-byte vectors. */
static int cuda_gemv_fits(const sep_weight_t *w, const void *x, int n)
{
    return w->bf16 && n <= GEMV_ROWS && w->cols % 8 == 0 && ((uintptr_t)x & 15) == 0;
}

/* y (or yb, SWIGLU: d_out = w->rows / 2) from n <= GEMV_ROWS rows of x,
 * then nm's add and norm (NORM) */
template <int SWIGLU, typename XT, int NORM>
static void cuda_gemv_launch(cuda_backend_t *cb, float *y, __nv_bfloat16 *yb, const XT *x,
                             const sep_weight_t *w, const float *bias, int n, gemv_norm_t nm)
{
    int d_out = SWIGLU ? w->rows / 2 : w->rows;
    dim3 grid((d_out + GEMV_WARPS - 1) / GEMV_WARPS), block(32 * GEMV_WARPS);
    const __nv_bfloat16 *wd = (const __nv_bfloat16 *)w->data;
    switch (n) {
    case 1:
        cuda_launch(cb->stream, k_gemv<1, SWIGLU, XT, NORM>, grid, block, 0, y, yb, x, wd, bias,
                    w->cols, d_out, nm);
        break;
    case 2:
        cuda_launch(cb->stream, k_gemv<2, SWIGLU, XT, NORM>, grid, block, 0, y, yb, x, wd, bias,
                    w->cols, d_out, nm);
        break;
    case 3:
        cuda_launch(cb->stream, k_gemv<3, SWIGLU, XT, NORM>, grid, block, 0, y, yb, x, wd, bias,
                    w->cols, d_out, nm);
        break;
    default:
        cuda_launch(cb->stream, k_gemv<4, SWIGLU, XT, NORM>, grid, block, 0, y, yb, x, wd, bias,
                    w->cols, d_out, nm);
        break;
    }
}

/* So work stays in the order it was asked for. */
static void cuda_flush(cuda_backend_t *cb)
{
    gemv_pending_t *p = &cb->pending;
    gemv_norm_t none = {};
    if (!p->w)
        return;
    if (p->x_bf16)
        cuda_gemv_launch<0, __nv_bfloat16, 0>(cb, p->y, NULL, (const __nv_bfloat16 *)p->x, p->w,
                                             p->bias, p->n, none);
    else
        cuda_gemv_launch<0, float, 0>(cb, p->y, NULL, (const float *)p->x, p->w, p->bias, p->n,
                                     none);
    p->w = NULL;
}

/* A GEMV: its launch waits for the next call when the add and norm after
 * a product may fuse with it (a plain product of bf16 weights, and the
 * counter the tail needs). */
template <int SWIGLU, typename XT>
static void cuda_gemv(cuda_backend_t *cb, float *y, __nv_bfloat16 *yb, const XT *x,
                      const sep_weight_t *w, const float *bias, int n)
{
    gemv_norm_t none = {};
    cuda_flush(cb);
    if (!SWIGLU && cb->d_done) {
        cb->pending = gemv_pending_t{ y, x, sizeof(XT) == 2, w, bias, n };
        return;
    }
    cuda_gemv_launch<SWIGLU, XT, 0>(cb, y, yb, x, w, bias, n, none);
}

/* The n rows of x in bf16: d_xb's mirror of them, or converted into d_xb. */
static const __nv_bfloat16 *cuda_bf16_input(cuda_backend_t *cb, const float *x, size_t n)
{
    const __nv_bfloat16 *xb = cuda_mirror(cb, x, n);
    if (xb)
        return xb;
    cuda_launch(cb->stream, k_to_bf16, (unsigned)((n + 255) / 256), 256, 0, cb->d_xb, x, n);
    cuda_twin(cb, x, n); /* d_xb holds x now: a second product on it reads that */
    return cb->d_xb;
}

/* y(n, w->rows) = xb w^T [+ bias] on the tensor cores, y in fp32 or (yt
 * CUDA_R_16BF, no bias) bf16; row-major y = x w^T is column-major
 * y^T = w x^T. */
static void cuda_gemm_bf16(cuda_backend_t *cb, void *y, cudaDataType yt,
                           const __nv_bfloat16 *xb, const sep_weight_t *w, const float *bias,
                           int n)
{
    float one = 1.0f, beta = cuda_bias_first(cb, (float *)y, bias, n, w->rows);
    cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, n, w->cols, &one, w->data,
                 CUDA_R_16BF, w->cols, xb, CUDA_R_16BF, w->cols, &beta, y, yt, w->rows,
                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

static void cuda_matmul(sep_backend_t *be, float *y, const float *x, const sep_weight_t *w,
                        const float *bias, int n)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    if (n <= 0)
        return;
    cuda_overwrites(cb, y, (size_t)n * w->rows);
    if (cuda_gemv_fits(w, x, n)) {
        cuda_gemv<0, float>(cb, y, NULL, x, w, bias, n);
        return;
    }
    if (w->bf16) {
        cuda_gemm_bf16(cb, y, CUDA_R_32F, cuda_bf16_input(cb, x, (size_t)n * w->cols), w,
                       bias, n);
        return;
    }
    float one = 1.0f, beta = cuda_bias_first(cb, y, bias, n, w->rows);
    cublasSgemm(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, n, w->cols, &one,
                (const float *)w->data, w->cols, x, w->cols, &beta, y, w->rows);
}

static void cuda_weight_rows(sep_backend_t *be, float *y, const sep_weight_t *w,
                             const int32_t *ids, int n)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    cuda_overwrites(cb, y, (size_t)n * w->cols);
    if (n <= 0)
        return;
    if (!w->bf16) {
        sep_gather_t g = { y, (const float *)w->data, ids, n, w->cols };
        cuda_gather_rows(be, &g, 1);
        return;
    }
    cuda_launch(cb->stream, k_rows_bf16, n, 256, 0, y, (const __nv_bfloat16 *)w->data,
                cuda_stage_ids(cb, ids, n), w->cols);
}

/* ---- norms, rope, elementwise -------------------------------------------- */

/* The norms: a block per row, its values held in registers (PER a
 * thread, loads all in flight at once), so a row costs one read and one
 * write. Rows up to 1024 * PER wide. */
#define NORM_PER 8
#define NORM_PER_WIDE 32

template <int PER>
__global__ void k_norm(float *y, __nv_bfloat16 *yb, float *x, const float *res, const float *w,
                       const float *b, int d, float eps)
{
    /* the weights first: they do not wait for the kernel before */
    float wv[PER], bv[PER];
#pragma unroll
    for (int k = 0; k < PER; k++) {
        int j = threadIdx.x + k * blockDim.x;
        wv[k] = j < d ? w[j] : 0.0f;
        bv[k] = j < d && b ? b[j] : 0.0f;
    }
    griddep_wait();
    griddep_launch();
    size_t row = (size_t)blockIdx.x * d;
    float v[PER], s = 0.0f;
#pragma unroll
    for (int k = 0; k < PER; k++) {
        int j = threadIdx.x + k * blockDim.x;
        v[k] = j < d ? x[row + j] : 0.0f;
        if (res && j < d) {
            v[k] += res[row + j];
            x[row + j] = v[k];
        }
        s += v[k];
    }
    float mean = 0.0f, ss = 0.0f;
    if (b) { /* LayerNorm: centred; RMSNorm (no bias) is not */
        mean = block_sum(s) / d;
#pragma unroll
        for (int k = 0; k < PER; k++)
            if (threadIdx.x + k * blockDim.x < d)
                v[k] -= mean;
    }
#pragma unroll
    for (int k = 0; k < PER; k++)
        ss += v[k] * v[k];
    float r = rsqrtf(block_sum(ss) / d + eps);
#pragma unroll
    for (int k = 0; k < PER; k++) {
        int j = threadIdx.x + k * blockDim.x;
        if (j < d)
            put(y, yb, row + j, v[k] * r * wv[k] + bv[k]);
    }
}

/* A norm whose residual is the output of the GEMV held back (a one-token
 * step's output products) runs as that GEMV's tail: one launch, and the
 * norm starts the moment the product ends. */
static void cuda_norm(cuda_backend_t *cb, float *y, float *x, const float *res, const float *w,
                      const float *b, int n, int d, float eps)
{
    gemv_pending_t p = cb->pending;
    if (p.w && res && res == p.y && n == p.n && d == p.w->rows) {
        gemv_norm_t nm = { y, cuda_twin(cb, y, (size_t)n * d), x, w, b, eps, cb->d_done };
        cb->pending.w = NULL;
        if (p.x_bf16)
            cuda_gemv_launch<0, __nv_bfloat16, 1>(cb, p.y, NULL, (const __nv_bfloat16 *)p.x, p.w,
                                                 p.bias, n, nm);
        else
            cuda_gemv_launch<0, float, 1>(cb, p.y, NULL, (const float *)p.x, p.w, p.bias, n, nm);
        return;
    }
    cuda_flush(cb);
    __nv_bfloat16 *yb = cuda_twin(cb, y, (size_t)n * d);
    if (n <= 0)
        return;
    /* d <= be->max_dim: sep_model_load checks it */
    int per = d <= 1024 * NORM_PER ? NORM_PER : NORM_PER_WIDE;
    int threads = ((d + per - 1) / per + 31) / 32 * 32;
    if (per == NORM_PER)
        cuda_launch(cb->stream, k_norm<NORM_PER>, n, threads, 0, y, yb, x, res, w, b, d, eps);
    else
        cuda_launch(cb->stream, k_norm<NORM_PER_WIDE>, n, threads, 0, y, yb, x, res, w, b, d, eps);
}

static void cuda_rmsnorm(sep_backend_t *be, float *y, float *x, const float *res,
                         const float *w, int n, int d, float eps)
{
    cuda_norm(CB(be), y, x, res, w, NULL, n, d, eps);
}

static void cuda_layernorm(sep_backend_t *be, float *y, float *x, const float *res,
                           const float *w, const float *b, int n, int d, float eps)
{
    cuda_norm(CB(be), y, x, res, w, b, n, d, eps);
}

/* blockIdx.y the block of rows; the threads of blockIdx.x stride its
 * items: per row, a (head, pair of rotated dims) each, then the raw
 * heads' dims past rot_dim. A one-token step's row spreads over blocks. */
__global__ void k_rope(const batch_of<sep_rope_t> batch, int stride, int n_heads, int head_dim,
                       int rot_dim)
{
    griddep_wait();
    griddep_launch();
    const sep_rope_t *r = &batch.b[blockIdx.y];
    int half = rot_dim / 2, tail = head_dim - rot_dim, pairs = n_heads * half;
    size_t per_row = pairs + (r->raw ? (size_t)(n_heads - r->raw_head) * tail : 0);
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < r->n * per_row;
         t += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(t / per_row), e = (int)(t % per_row);
        float *x = r->x + (size_t)i * stride;
        float *raw = r->raw ? r->raw + (size_t)i * r->raw_stride : NULL;
        if (e >= pairs) { /* a raw head's dim that nothing rotates */
            int h = (e - pairs) / tail, j = rot_dim + (e - pairs) % tail;
            raw[(size_t)h * head_dim + j] = x[(size_t)(r->raw_head + h) * head_dim + j];
            continue;
        }
        int h = e / half, j = e % half;
        float *v = x + (size_t)h * head_dim;
        const float *cs = r->cs + (size_t)i * rot_dim;
        float c = cs[j], s = cs[half + j], a = v[j], b = v[j + half];
        if (raw && h >= r->raw_head) {
            float *kr = raw + (size_t)(h - r->raw_head) * head_dim;
            kr[j] = a;
            kr[j + half] = b;
        }
        v[j] = a * c - b * s;
        v[j + half] = b * c + a * s;
    }
}

static void cuda_rope(sep_backend_t *be, const sep_rope_t *blocks, int n_blocks, int stride,
                      int n_heads, int head_dim, int rot_dim)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    for (int i = 0; i < n_blocks; i++) {
        cuda_overwrites(cb, blocks[i].x, (size_t)blocks[i].n * stride);
        if (blocks[i].raw)
            cuda_overwrites(cb, blocks[i].raw, (size_t)blocks[i].n * blocks[i].raw_stride);
    }
    size_t per_row = (size_t)n_heads * (head_dim - rot_dim / 2);
    cuda_in_batches(blocks, n_blocks, [=](const batch_of<sep_rope_t> &batch, int nb, int rows) {
        size_t grid = (rows * per_row + 255) / 256;
        cuda_launch(cb->stream, k_rope, dim3(grid < 4096 ? (unsigned)grid : 4096, nb), 256, 0,
                    batch, stride, n_heads, head_dim, rot_dim);
    });
}

__global__ void k_rope_table(float *cs, const int64_t *pos, const double *inv_freq, int n,
                             int rot_dim)
{
    griddep_wait();
    griddep_launch();
    int half = rot_dim / 2;
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (size_t)n * half)
        return;
    int i = (int)(t / half), j = (int)(t % half);
    double s, c;
    sincos((double)pos[i] * inv_freq[j], &s, &c);
    cs[(size_t)i * rot_dim + j] = (float)c;
    cs[(size_t)i * rot_dim + half + j] = (float)s;
}

static void cuda_rope_table(sep_backend_t *be, float *cs, const int64_t *pos, int n,
                            const double *inv_freq, int rot_dim)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    cuda_overwrites(cb, cs, (size_t)n * rot_dim);
    size_t total = (size_t)n * (rot_dim / 2);
    if (!total)
        return;
    /* positions and frequencies in one copy (a copy between two kernels
     * keeps the second from launching early) */
    size_t pb = (size_t)n * sizeof *pos, fb = (size_t)(rot_dim / 2) * sizeof *inv_freq;
    size_t at = cuda_ring_take(cb, pb + fb);
    memcpy(cb->h_ring + at, pos, pb);
    memcpy(cb->h_ring + at + pb, inv_freq, fb);
    cuda_ring_send(cb, at, pb + fb);
    cuda_launch(cb->stream, k_rope_table, (unsigned)((total + 255) / 256), 256, 0, cs,
                (const int64_t *)(cb->d_ring + at), (const double *)(cb->d_ring + at + pb), n,
                rot_dim);
}

__global__ void k_add(float *x, const float *y, size_t n)
{
    griddep_wait();
    griddep_launch();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += y[i];
}

__device__ __forceinline__ float as_float(float v) { return v; }
__device__ __forceinline__ float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store(float *y, float v) { *y = v; }
__device__ __forceinline__ void store(__nv_bfloat16 *y, float v) { *y = __float2bfloat16(v); }

/* act (n, d) := silu(g + bias[:d]) * (u + bias[d:]) from gu = [g u]
 * (n, 2d), fp32 or bf16 (T). Rows i = blockIdx.y + k gridDim.y, columns
 * across blockIdx.x: no division per element. */
template <typename T>
__global__ void k_swiglu(T *act, const T *gu, const float *bias, int n, int d)
{
    griddep_wait();
    griddep_launch();
    for (size_t i = blockIdx.y; i < (size_t)n; i += gridDim.y)
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < d; j += gridDim.x * blockDim.x) {
            float g = as_float(gu[i * 2 * d + j]), u = as_float(gu[i * 2 * d + d + j]);
            if (bias) {
                g += bias[j];
                u += bias[d + j];
            }
            store(act + i * d + j, silu_mul(g, u));
        }
}

__global__ void k_gelu(float *x, __nv_bfloat16 *xb, size_t n, int tanh_approx)
{
    griddep_wait();
    griddep_launch();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    float v = x[i];
    put(x, xb, i, tanh_approx
        ? 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)))
        : 0.5f * v * (1.0f + erff(v * 0.7071067811865476f)));
}

static void cuda_add(sep_backend_t *be, float *x, const float *y, size_t n)
{
    cuda_flush(CB(be));
    cuda_overwrites(CB(be), x, n);
    if (n)
        cuda_launch(CB(be)->stream, k_add, (unsigned)((n + 255) / 256), 256, 0, x, y, n);
}

/* k_swiglu for bf16 rows of whole 16-byte vectors (d % 8 == 0): eight
 * columns a thread, 16-byte loads and stores. */
__global__ void k_swiglu_x8(__nv_bfloat16 *act, const __nv_bfloat16 *gu, const float *bias, int n,
                            int d)
{
    griddep_wait();
    griddep_launch();
    for (size_t i = blockIdx.y; i < (size_t)n; i += gridDim.y)
        for (int j = 8 * (blockIdx.x * blockDim.x + threadIdx.x); j < d;
             j += 8 * gridDim.x * blockDim.x) {
            float g[8], u[8];
            load8(g, gu + i * 2 * d + j);
            load8(u, gu + i * 2 * d + d + j);
            uint4 out;
            __nv_bfloat162 *o2 = (__nv_bfloat162 *)&out;
#pragma unroll
            for (int k = 0; k < 8; k += 2) {
                float a[2];
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float gg = g[k + h] + (bias ? bias[j + k + h] : 0.0f);
                    float uu = u[k + h] + (bias ? bias[d + j + k + h] : 0.0f);
                    a[h] = silu_mul(gg, uu);
                }
                o2[k / 2] = __floats2bfloat162_rn(a[0], a[1]);
            }
            *(uint4 *)(act + i * d + j) = out;
        }
}

/* The SwiGLU MLP. In bf16 mode the gate-up product and the activation
 * stay in bf16 (in the scratch gu and act): half the bytes of fp32, and
 * the down product reads them as they are. One-token steps fuse the
 * activation into the gate-up GEMV. */
static void cuda_swiglu(sep_backend_t *be, float *y, const float *x, const sep_weight_t *w_up,
                        const float *b_up, const sep_weight_t *w_down, const float *b_down,
                        int n, float *gu, float *act)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    int d = w_up->rows / 2;
    if (n <= 0)
        return;
    cuda_overwrites(cb, gu, (size_t)n * 2 * d);
    cuda_overwrites(cb, act, (size_t)n * d);
    dim3 grid((d + 255) / 256, n < 65535 ? n : 65535);
    if (!w_up->bf16) {
        cuda_matmul(be, gu, x, w_up, NULL, n);
        cuda_launch(cb->stream, k_swiglu<float>, grid, 256, 0, act, gu, b_up, n, d);
        cuda_matmul(be, y, act, w_down, b_down, n);
        return;
    }
    __nv_bfloat16 *gb = (__nv_bfloat16 *)gu, *ab = (__nv_bfloat16 *)act;
    if (cuda_gemv_fits(w_up, x, n)) {
        cuda_gemv<1, float>(cb, NULL, ab, x, w_up, b_up, n);
    } else {
        cuda_gemm_bf16(cb, gb, CUDA_R_16BF, cuda_bf16_input(cb, x, (size_t)n * w_up->cols),
                       w_up, NULL, n);
        if (d % 8 == 0)
            cuda_launch(cb->stream, k_swiglu_x8, dim3((d / 8 + 255) / 256, grid.y), 256, 0, ab,
                        gb, b_up, n, d);
        else
            cuda_launch(cb->stream, k_swiglu<__nv_bfloat16>, grid, 256, 0, ab, gb, b_up, n, d);
    }
    cuda_overwrites(cb, y, (size_t)n * w_down->rows);
    if (cuda_gemv_fits(w_down, ab, n))
        cuda_gemv<0, __nv_bfloat16>(cb, y, NULL, ab, w_down, b_down, n);
    else
        cuda_gemm_bf16(cb, y, CUDA_R_32F, ab, w_down, b_down, n);
}

static void cuda_gelu(sep_backend_t *be, float *x, size_t n, int tanh_approx)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    __nv_bfloat16 *xb = cuda_twin(cb, x, n);
    if (n)
        cuda_launch(cb->stream, k_gelu, (unsigned)((n + 255) / 256), 256, 0, x, xb, n, tanh_approx);
}

/* ---- attention ------------------------------------------------------------- */

/* Attention: a block per (problem, KV head, tile of ATTN_QT queries). Its
 * warps are the tile's (query, query head) rows of that KV head's group;
 * the block stages ATTN_KT keys and values at a time in shared memory,
 * read once for all its rows, and each warp keeps an online softmax: lane
 * j scores key j of the tile, then every lane folds the tile's values
 * into the dims it owns (d = lane + 32 r). No score matrix is stored; GQA
 * shares K/V without copies. */
#define ATTN_KT 32
#define ATTN_MAX_ROWS 32  /* warps a block: ATTN_QT * group */
#define ATTN_MAX_PROBS 48 /* problems a launch (by value, in the parameters) */
/* The tensor-core kernel (below): */
#define FA_ROWS 64        /* rows a block: 16 a warp */
#define FA_KT 64          /* keys a tile */
#define FA_MAX_SPLIT 32   /* key splits of one row tile at most */
#define FA_PART_BLOCKS 512 /* split blocks whose partial rows d_part holds */
/* Partial rows of split s of a row tile: FA_ROWS rows of HD outputs, then
 * FA_ROWS (max, sum) pairs; blocks numbered ((z * n_kv + kvh) * n_rt + rt)
 * * n_split + s. */
#define FA_PART_FLOATS(hd) ((size_t)FA_ROWS * ((hd) + 2))

typedef struct {
    sep_attn_t p[ATTN_MAX_PROBS];
    int n;
} attn_batch_t;

/* The pieces k_attention and k_attention_run share: a warp per row (a
 * query and a query head of the group), the block's keys staged a tile of
 * ATTN_KT rows at a time in shared memory (K rows padded: no bank
 * conflicts), each row's online softmax and output in its warp. */

/* Rows t0 .. t0 + ATTN_KT - 1 of KV head kvh of kk and vv staged (zeros
 * from row end on), once every warp is done with the last tile. */
__device__ __forceinline__ void attn_stage(float *ks, float *vs, const float *kk, const float *vv,
                                           int t0, int end, int kv_dim, int kvh, int head_dim)
{
    int pad = head_dim + 1;
    __syncthreads();
    for (int e = threadIdx.x; e < ATTN_KT * head_dim; e += blockDim.x) {
        int j = e / head_dim, d = e % head_dim, t = t0 + j;
        size_t at = (size_t)t * kv_dim + (size_t)kvh * head_dim + d;
        ks[j * pad + d] = t < end ? kk[at] : 0.0f;
        vs[j * head_dim + d] = t < end ? vv[at] : 0.0f;
    }
    __syncthreads();
}

/* The staged tile folded into a warp's row: lane j's key if it sees it
 * (see), the online softmax (mx, sum) and acc += p V over the tile's
 * first kn keys (those it does not see weigh 0). */
__device__ __forceinline__ void attn_fold(const float *q, const float *ks, const float *vs,
                                          int see, int kn, int head_dim, float &mx, float &sum,
                                          float (&acc)[8])
{
    int lane = threadIdx.x & 31, pad = head_dim + 1;
    float s = -INFINITY;
    if (see) {
        s = 0.0f;
        for (int d = 0; d < head_dim; d++)
            s += q[d] * ks[lane * pad + d];
    }
    float tmax = s;
    for (int o = 16; o > 0; o >>= 1)
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
    float nm = fmaxf(mx, tmax), corr = expf(mx - nm);
    float e = see ? expf(s - nm) : 0.0f, es = e;
    for (int o = 16; o > 0; o >>= 1)
        es += __shfl_xor_sync(0xffffffffu, es, o);
    sum = sum * corr + es;
    for (int r = 0; r < 8; r++)
        acc[r] *= corr;
    for (int j = 0; j < kn; j++) {
        float pj = __shfl_sync(0xffffffffu, e, j);
        for (int r = 0; r < 8; r++)
            if (lane + 32 * r < head_dim)
                acc[r] += pj * vs[j * head_dim + lane + 32 * r];
    }
    mx = nm;
}

/* A warp's row: its query (scaled) into q, its output from acc / sum. */
__device__ __forceinline__ void attn_load_q(float *q, const float *src, int head_dim, float scale)
{
    for (int d = threadIdx.x & 31; d < head_dim; d += 32)
        q[d] = src[d] * scale;
}

__device__ __forceinline__ void attn_put(float *out, const float (&acc)[8], float sum,
                                         int head_dim)
{
    int lane = threadIdx.x & 31;
    for (int r = 0; r < 8; r++)
        if (lane + 32 * r < head_dim)
            out[lane + 32 * r] = acc[r] / sum;
}

/* at most 32 * ATTN_MAX_ROWS threads a block: the bound keeps the
 * registers within what a block of that many may have */
__global__ void __launch_bounds__(32 * ATTN_MAX_ROWS)
    k_attention(const attn_batch_t batch, int n_heads, int group, int head_dim, int qt,
                float scale)
{
    griddep_wait();
    griddep_launch();
    extern __shared__ float sh[];
    const sep_attn_t *p = &batch.p[blockIdx.z];
    int kvh = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n_rows = qt * group;
    float *ks = sh, *vs = ks + ATTN_KT * (head_dim + 1), *qs = vs + ATTN_KT * head_dim;
    int q0 = blockIdx.x * qt;
    if (q0 >= p->n_q)
        return;
    int kv_dim = n_heads / group * head_dim;
    int row_i = q0 + warp / group, h = kvh * group + warp % group;
    int active = warp < n_rows && row_i < p->n_q;
    float *q = qs + warp * head_dim;
    if (active)
        attn_load_q(q, p->q + (size_t)row_i * p->q_stride + (size_t)h * head_dim, head_dim, scale);
    float acc[8], mx = -INFINITY, sum = 0.0f;
    for (int r = 0; r < 8; r++)
        acc[r] = 0.0f;
    int last_q = q0 + qt - 1 < p->n_q - 1 ? q0 + qt - 1 : p->n_q - 1;
    int n_keys = p->n_past + last_q + 1;         /* the tile's longest row */
    int my_keys = active ? p->n_past + row_i + 1 : 0;
    for (int t0 = 0; t0 < n_keys; t0 += ATTN_KT) {
        attn_stage(ks, vs, p->k, p->v, t0, n_keys, kv_dim, kvh, head_dim);
        if (!active || t0 >= my_keys)
            continue;
        int kn = my_keys - t0 < ATTN_KT ? my_keys - t0 : ATTN_KT;
        attn_fold(q, ks, vs, t0 + lane < my_keys, kn, head_dim, mx, sum, acc);
    }
    if (active)
        attn_put(p->out + (size_t)row_i * p->out_stride + (size_t)h * head_dim, acc, sum,
                 head_dim);
}

/* Runs (sep_attn_run_t): the problems of a launch, by value as above. */
#define ATTN_MAX_RUNS 32

typedef struct {
    sep_attn_run_t p[ATTN_MAX_RUNS];
    int n;
} run_batch_t;

/* The keys queries [q0, q1] of a run see between them: rows span[0] ..
 * span[1] - 1 of its prefix rows and span[2] .. span[3] - 1 of its window
 * rows (an empty range where none sees any), the block's union of its
 * rows' ranges, which neighbouring queries share. */
__device__ __forceinline__ void run_span(const sep_attn_keys_t *keys, int q0, int q1, int span[4])
{
    int a = INT_MAX, b = INT_MIN, c = INT_MAX, d = INT_MIN;
    for (int i = q0; i <= q1; i++) {
        sep_attn_keys_t k = keys[i];
        if (k.pre_hi > k.pre_lo) {
            a = min(a, k.pre_lo);
            b = max(b, k.pre_hi);
        }
        if (k.win_hi > k.win_lo) {
            c = min(c, k.win_lo);
            d = max(d, k.win_hi);
        }
    }
    span[0] = a < b ? a : 0;
    span[1] = a < b ? b : 0;
    span[2] = c < d ? c : 0;
    span[3] = c < d ? d : 0;
}

/* k_attention for runs, the twin of the CPU's sep_attn_head_run: a block
 * per (run, KV head, tile of qt queries); the block stages the tiles of
 * the prefix rows its queries see, then those of their window rows, and
 * a warp (one row) folds in the keys of each tile that its query sees, in
 * that order, skipping the tiles where it sees none. */
__global__ void __launch_bounds__(32 * ATTN_MAX_ROWS)
    k_attention_run(const run_batch_t batch, int n_heads, int group, int head_dim, int qt,
                    float scale)
{
    griddep_wait();
    griddep_launch();
    extern __shared__ float sh[];
    const sep_attn_run_t *p = &batch.p[blockIdx.z];
    int kvh = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n_rows = qt * group;
    float *ks = sh, *vs = ks + ATTN_KT * (head_dim + 1), *qs = vs + ATTN_KT * head_dim;
    int q0 = blockIdx.x * qt;
    if (q0 >= p->n_q)
        return;
    int kv_dim = n_heads / group * head_dim;
    int row_i = q0 + warp / group, h = kvh * group + warp % group;
    int active = warp < n_rows && row_i < p->n_q;
    float *q = qs + warp * head_dim;
    if (active)
        attn_load_q(q, p->q + (size_t)row_i * p->q_stride + (size_t)h * head_dim, head_dim, scale);
    float acc[8], mx = -INFINITY, sum = 0.0f;
    for (int r = 0; r < 8; r++)
        acc[r] = 0.0f;
    int last_q = q0 + qt - 1 < p->n_q - 1 ? q0 + qt - 1 : p->n_q - 1, span[4];
    run_span(p->keys, q0, last_q, span);
    sep_attn_keys_t mine = { 0, 0, 0, 0 };
    if (active)
        mine = p->keys[row_i];
    for (int phase = 0; phase < 2; phase++) {
        const float *kk = phase ? p->k : p->pk, *vv = phase ? p->v : p->pv;
        int lo = phase ? span[2] : span[0], hi = phase ? span[3] : span[1];
        int my_lo = phase ? mine.win_lo : mine.pre_lo, my_hi = phase ? mine.win_hi : mine.pre_hi;
        for (int t0 = lo; t0 < hi; t0 += ATTN_KT) {
            attn_stage(ks, vs, kk, vv, t0, hi, kv_dim, kvh, head_dim);
            if (!active || my_lo >= my_hi || my_hi <= t0 || my_lo >= t0 + ATTN_KT)
                continue;
            int t = t0 + lane, kn = hi - t0 < ATTN_KT ? hi - t0 : ATTN_KT;
            attn_fold(q, ks, vs, t >= my_lo && t < my_hi, kn, head_dim, mx, sum, acc);
        }
    }
    if (active)
        attn_put(p->out + (size_t)row_i * p->out_stride + (size_t)h * head_dim, acc, sum,
                 head_dim);
}

static int cuda_reserve(sep_backend_t *be, int max_keys, int max_rows, int max_width)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    cb->max_keys = max_keys; /* scores never leave registers: nothing grows with keys */
    size_t rows = (size_t)(max_rows > 0 ? max_rows : 1);
    cuda_written(cb); /* d_xb may move */
    if (32 * rows > cb->ring_len) {
        /* the ring holds several calls' indices and positions before it wraps */
        size_t len = 32 * rows > ((size_t)4 << 20) ? 32 * rows : ((size_t)4 << 20);
        unsigned char *d = NULL, *h = NULL;
        if (cudaMalloc(&d, len) != cudaSuccess || cudaMallocHost(&h, len) != cudaSuccess) {
            cudaFree(d);
            return sep_fail(SEP_ENOMEM, "cuda: no memory for %zu bytes of staging", len);
        }
        cudaStreamSynchronize(cb->stream);
        cudaFree(cb->d_ring);
        cudaFreeHost(cb->h_ring);
        cb->d_ring = d;
        cb->h_ring = h;
        cb->ring_len = len;
        cb->ring_at = 0;
    }
    if (cuda_grow(cb, (void **)&cb->d_tmp, &cb->tmp_cap, rows * max_width * sizeof(float)) ||
        (cb->bf16 && cuda_grow(cb, (void **)&cb->d_xb, &cb->xb_cap,
                               rows * max_width * sizeof(__nv_bfloat16))) ||
        (cb->bf16 && cuda_grow(cb, (void **)&cb->d_part, &cb->part_cap,
                               FA_PART_BLOCKS * FA_PART_FLOATS(128) * sizeof(float))))
        return sep_fail(SEP_ENOMEM, "cuda: no device memory for %zu rows of scratch", rows);
    if (cb->bf16 && !cb->d_count &&
        (cudaMalloc(&cb->d_count, (FA_PART_BLOCKS + 1) * sizeof(unsigned)) != cudaSuccess ||
         cudaMemsetAsync(cb->d_count, 0, (FA_PART_BLOCKS + 1) * sizeof(unsigned), cb->stream) !=
             cudaSuccess)) {
        cudaFree(cb->d_count);
        cb->d_count = NULL;
        return sep_fail(SEP_ENOMEM, "cuda: no device memory for attention counters");
    }
    cb->d_done = cb->d_count ? cb->d_count + FA_PART_BLOCKS : NULL;
    return SEP_OK;
}

static int cuda_sync(sep_backend_t *be)
{
    cuda_flush(CB(be));
    cudaError_t e = cudaStreamSynchronize(CB(be)->stream);
    if (e == cudaSuccess)
        e = cudaGetLastError();
    return e == cudaSuccess ? SEP_OK : sep_fail(SEP_EIO, "cuda: %s", cudaGetErrorString(e));
}

/* Attention on the tensor cores (bf16 mode, head_dim 64 or 128), after
 * FlashAttention-2: a block of 4 warps per (problem, KV head, tile of
 * FA_ROWS rows), a row being a (query, query head of the group) pair, so
 * a GQA group shares every K/V tile without copies. Each warp owns 16
 * rows; per tile of FA_KT keys (staged in shared memory as bf16) it
 * computes S = Q K^T with mma.sync m16n8k16 into registers, keeps an
 * online softmax there, and multiplies P by V from the same registers
 * (the accumulator layout of S is the operand layout of P). Nothing of S
 * touches memory. When the problems alone give too few blocks to fill the
 * GPU (one-token steps), the keys are split across blocks too: each
 * writes its rows' unnormalized output with their max and sum to
 * d_part, and k_attn_combine merges the splits. */

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* c (16x8, fp32) += a (16x16, bf16) b (16x8, bf16), fragments as the PTX
 * ISA lays them out for mma.m16n8k16 */
__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Four 8x8 bf16 matrices from shared memory, lane l giving the address of
 * row l % 8 of matrix l / 8; .trans hands each out transposed. */
__device__ __forceinline__ void ldsm_x4(uint32_t *r, const __nv_bfloat16 *p)
{
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t *r, const __nv_bfloat16 *p)
{
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}


/* Merge the key splits of the rows of block group grp (the last of its
 * split blocks runs this): the rows' split weights exp2(max_s - max) and
 * sums first, in shared memory wt (FA_MAX_SPLIT x FA_ROWS floats) and inv
 * (FA_ROWS); then each output is the weighted sum of the partial rows. */
template <int HD, typename P>
__device__ void attn_combine(const P *p, int group, int kvh, int row0, int n_split,
                             const float *part, size_t grp, float *wt, float *inv,
                             __nv_bfloat16 *ob, const float *ob_of)
{
    int n_rows = p->n_q * group, r = threadIdx.x;
    size_t blk0 = grp * n_split;
    if (r < FA_ROWS && row0 + r < n_rows) {
        float mx = -INFINITY, den = 0.0f;
        for (int s = 0; s < n_split; s++)
            mx = fmaxf(mx, __ldcg(part + (blk0 + s) * FA_PART_FLOATS(HD) + (size_t)FA_ROWS * HD +
                                  2 * r));
        for (int s = 0; s < n_split; s++) {
            const float *ml = part + (blk0 + s) * FA_PART_FLOATS(HD) + (size_t)FA_ROWS * HD;
            float w = exp2f(__ldcg(ml + 2 * r) - mx); /* an empty split: max -inf, weight 0 */
            wt[s * FA_ROWS + r] = w;
            den += w * __ldcg(ml + 2 * r + 1);
        }
        inv[r] = 1.0f / den;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < FA_ROWS * HD; e += blockDim.x) {
        int rr = e / HD, d = e % HD, R = row0 + rr;
        if (R >= n_rows)
            break;
        float num = 0.0f;
        for (int s = 0; s < n_split; s++)
            num += wt[s * FA_ROWS + rr] *
                   __ldcg(part + (blk0 + s) * FA_PART_FLOATS(HD) + (size_t)rr * HD + d);
        int i = R / group, head = kvh * group + R % group;
        size_t at = (size_t)i * p->out_stride + (size_t)head * HD + d;
        put(p->out, ob ? ob + (p->out - ob_of) : NULL, at, num * inv[rr]);
    }
}

/* The pieces of the tensor-core attention that k_attention_mma and
 * k_attention_run_mma share (each a block of 4 warps over FA_ROWS rows;
 * a lane holds two rows, warp * 16 + g and + 8). */

/* A lane's Q fragments of its two rows (NULL: past the last row), scaled. */
template <int HD>
__device__ __forceinline__ void fa_load_q(uint32_t (&qa)[HD / 16][4], const float *const qrow[2],
                                          int tq, float scale_log2)
{
    for (int kc = 0; kc < HD / 16; kc++)
        for (int r = 0; r < 4; r++) {
            const float *q = qrow[r & 1];
            int d = kc * 16 + 2 * tq + (r >> 1) * 8;
            qa[kc][r] = q ? pack_bf16(q[d] * scale_log2, q[d + 1] * scale_log2) : 0u;
        }
}

/* Rows t0 .. t0 + FA_KT - 1 of KV head kvh of kk and vv staged as bf16
 * (zeros from row end on), once every warp is done with the last tile. */
template <int HD>
__device__ __forceinline__ void fa_stage(__nv_bfloat16 (*ks)[HD + 8], __nv_bfloat16 (*vs)[HD + 8],
                                         const float *kk, const float *vv, int t0, int end,
                                         int kv_dim, int kvh)
{
    __syncthreads();
    /* 128 threads, compile-time strides: eight rounds of loads in flight */
#pragma unroll 8
    for (int e = threadIdx.x; e < FA_KT * HD / 4; e += 128) {
        int j = e / (HD / 4), d = e % (HD / 4) * 4, t = t0 + j;
        float4 kx = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vx = kx;
        if (t < end) {
            size_t at = (size_t)t * kv_dim + (size_t)kvh * HD + d;
            kx = *(const float4 *)(kk + at);
            vx = *(const float4 *)(vv + at);
        }
        *(uint2 *)&ks[j][d] = make_uint2(pack_bf16(kx.x, kx.y), pack_bf16(kx.z, kx.w));
        *(uint2 *)&vs[j][d] = make_uint2(pack_bf16(vx.x, vx.y), pack_bf16(vx.z, vx.w));
    }
    __syncthreads();
}

/* S = Q K^T over the staged tile: 8 tiles of 8 keys; matrices 0-1 are
 * keys 16np.. at dims 16kc and 16kc + 8, matrices 2-3 the next 8 keys.
 * s[nt][2h + c] is the lane's row h, key nt * 8 + 2 * tq + c. */
template <int HD>
__device__ __forceinline__ void fa_scores(float (&s)[FA_KT / 8][4],
                                          const uint32_t (&qa)[HD / 16][4],
                                          __nv_bfloat16 (*ks)[HD + 8], int lane)
{
    for (int nt = 0; nt < FA_KT / 8; nt++)
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
    int mi = lane >> 3, mr = lane & 7;
    for (int kc = 0; kc < HD / 16; kc++)
        for (int np = 0; np < FA_KT / 16; np++) {
            uint32_t b[4];
            ldsm_x4(b, &ks[np * 16 + (mi >> 1) * 8 + mr][kc * 16 + (mi & 1) * 8]);
            mma_bf16(s[2 * np], qa[kc], b[0], b[1]);
            mma_bf16(s[2 * np + 1], qa[kc], b[2], b[3]);
        }
}

/* The tile folded into the online softmax (base 2: Q carries log2 e; the
 * keys a row does not see are -inf in s) and O += P V. The four lanes of
 * a quad share a row. P's fragments for keys 16kk.. are S tiles 2kk and
 * 2kk + 1; V (keys x dims) transposed on load: matrices 0-1 are keys 16kk
 * and 16kk + 8 at dims 16dp, matrices 2-3 at 16dp + 8. */
template <int HD>
__device__ __forceinline__ void fa_fold(float (&s)[FA_KT / 8][4], float (&m)[2], float (&l)[2],
                                        float (&o)[HD / 8][4], __nv_bfloat16 (*vs)[HD + 8],
                                        int lane)
{
    for (int h = 0; h < 2; h++) {
        float mx = -INFINITY;
        for (int nt = 0; nt < FA_KT / 8; nt++)
            mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float mn = fmaxf(m[h], mx), base = mn == -INFINITY ? 0.0f : mn;
        float corr = exp2f(m[h] - base), sum = 0.0f;
        for (int nt = 0; nt < FA_KT / 8; nt++)
            for (int c = 0; c < 2; c++) {
                float e = exp2f(s[nt][2 * h + c] - base);
                s[nt][2 * h + c] = e;
                sum += e;
            }
        l[h] = l[h] * corr + sum;
        m[h] = mn;
        for (int dt = 0; dt < HD / 8; dt++) {
            o[dt][2 * h] *= corr;
            o[dt][2 * h + 1] *= corr;
        }
    }
    int mi = lane >> 3, mr = lane & 7;
    for (int kk = 0; kk < FA_KT / 16; kk++) {
        uint32_t pa[4] = { pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                           pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                           pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                           pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]) };
        for (int dp = 0; dp < HD / 16; dp++) {
            uint32_t b[4];
            ldsm_x4_trans(b, &vs[kk * 16 + (mi & 1) * 8 + mr][dp * 16 + (mi >> 1) * 8]);
            mma_bf16(o[2 * dp], pa, b[0], b[1]);
            mma_bf16(o[2 * dp + 1], pa, b[2], b[3]);
        }
    }
}

/* The block's end: with one split the rows' outputs (orow, NULL past the
 * last row) and their bf16 twins; with several, this split's unnormalized
 * rows with their max and sum to part, and the group's last block to
 * finish merges the splits (and rearms the counter for the next launch),
 * reusing the K/V tiles' shared memory. */
template <int HD, typename P>
__device__ __forceinline__ void fa_end(const P *p, int z, int group, int kvh, int row0, int split,
                                       int n_split, float (&o)[HD / 8][4], float (&m)[2],
                                       float (&l)[2], float *const orow[2], float *part,
                                       unsigned *count, __nv_bfloat16 *ob, const float *ob_of,
                                       float *wt)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    if (n_split == 1) {
        for (int h = 0; h < 2; h++) {
            if (!orow[h])
                continue;
            float inv = 1.0f / l[h];
            __nv_bfloat16 *obrow = ob ? ob + (orow[h] - ob_of) : NULL;
            for (int dt = 0; dt < HD / 8; dt++)
                put2(orow[h], obrow, dt * 8 + 2 * tq, o[dt][2 * h] * inv, o[dt][2 * h + 1] * inv);
        }
        return;
    }
    size_t grp = ((size_t)z * gridDim.y + kvh) * gridDim.x + blockIdx.x;
    float *po = part + (grp * n_split + split) * FA_PART_FLOATS(HD);
    float *ml = po + (size_t)FA_ROWS * HD;
    for (int h = 0; h < 2; h++) {
        int r = warp * 16 + g + 8 * h;
        if (!orow[h])
            continue; /* past the last row (one-token steps fill few) */
        for (int dt = 0; dt < HD / 8; dt++)
            *(float2 *)&po[(size_t)r * HD + dt * 8 + 2 * tq] = make_float2(o[dt][2 * h],
                                                                        o[dt][2 * h + 1]);
        if (tq == 0) {
            ml[2 * r] = m[h];
            ml[2 * r + 1] = l[h];
        }
    }
    __shared__ unsigned ticket;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0)
        ticket = atomicAdd(&count[grp], 1u);
    __syncthreads();
    if (ticket != (unsigned)n_split - 1)
        return;
    __threadfence();
    attn_combine<HD>(p, group, kvh, row0, n_split, part, grp, wt, wt + FA_MAX_SPLIT * FA_ROWS,
                     ob, ob_of);
    if (threadIdx.x == 0)
        count[grp] = 0;
}

template <int HD>
__global__ void __launch_bounds__(128)
    k_attention_mma(const attn_batch_t batch, int n_heads, int group, float scale_log2,
                    int n_split, float *part, unsigned *count, __nv_bfloat16 *ob,
                    const float *ob_of)
{
    griddep_wait();
    griddep_launch();
    __shared__ __align__(16) __nv_bfloat16 ks[FA_KT][HD + 8], vs[FA_KT][HD + 8];
    int z = blockIdx.z / n_split, split = blockIdx.z % n_split;
    const sep_attn_t *p = &batch.p[z];
    int kvh = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n_rows = p->n_q * group, row0 = blockIdx.x * FA_ROWS;
    if (row0 >= n_rows)
        return;
    int kv_dim = n_heads / group * HD, g = lane >> 2, tq = lane & 3;

    /* this lane's two rows: their query heads, queries and key limits
     * (causal), and their Q fragments */
    int lim[2];
    const float *qrow[2];
    float *orow[2];
    for (int h = 0; h < 2; h++) {
        int R = row0 + warp * 16 + g + 8 * h, i = R / group, head = kvh * group + R % group;
        int ok = R < n_rows;
        lim[h] = ok ? p->n_past + i + 1 : 0;
        qrow[h] = ok ? p->q + (size_t)i * p->q_stride + (size_t)head * HD : NULL;
        orow[h] = ok ? p->out + (size_t)i * p->out_stride + (size_t)head * HD : NULL;
    }
    uint32_t qa[HD / 16][4];
    fa_load_q<HD>(qa, qrow, tq, scale_log2);

    /* the tiles of keys this block's rows see, and this split's share */
    int last = (row0 + FA_ROWS < n_rows ? row0 + FA_ROWS : n_rows) - 1;
    int n_keys = p->n_past + last / group + 1, n_tiles = (n_keys + FA_KT - 1) / FA_KT;
    int per = (n_tiles + n_split - 1) / n_split;
    int t_begin = split * per, t_end = t_begin + per < n_tiles ? t_begin + per : n_tiles;

    float o[HD / 8][4], m[2] = { -INFINITY, -INFINITY }, l[2] = { 0.0f, 0.0f };
    for (int dt = 0; dt < HD / 8; dt++)
        o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    for (int tile = t_begin; tile < t_end; tile++) {
        int t0 = tile * FA_KT;
        fa_stage<HD>(ks, vs, p->k, p->v, t0, n_keys, kv_dim, kvh);
        float s[FA_KT / 8][4];
        fa_scores<HD>(s, qa, ks, lane);
        /* the causal mask */
        for (int h = 0; h < 2; h++)
            for (int nt = 0; nt < FA_KT / 8; nt++)
                for (int c = 0; c < 2; c++)
                    if (t0 + nt * 8 + 2 * tq + c >= lim[h])
                        s[nt][2 * h + c] = -INFINITY;
        fa_fold<HD>(s, m, l, o, vs, lane);
    }
    fa_end<HD>(p, z, group, kvh, row0, split, n_split, o, m, l, orow, part, count, ob, ob_of,
               (float *)&ks[0][0]);
}

/* Key splits for a launch of `blocks` row tiles seeing up to n_tiles key
 * tiles each: more than one when the rows leave multiprocessors idle
 * (one-token steps, short chunks), aiming at two blocks a multiprocessor,
 * as far as d_part holds their partial rows. */
static int fa_splits(const cuda_backend_t *cb, int blocks, int n_tiles)
{
    int n_split = 1;
    if (blocks < cb->n_sm && n_tiles > 1) {
        n_split = (2 * cb->n_sm + blocks - 1) / blocks;
        n_split = n_split < n_tiles ? n_split : n_tiles;
        n_split = n_split < FA_MAX_SPLIT ? n_split : FA_MAX_SPLIT;
        while (n_split > 1 && ((size_t)blocks * n_split > FA_PART_BLOCKS || !cb->d_count))
            n_split--;
    }
    return n_split;
}

/* Launch the tensor-core attention for one batch of problems. */
template <int HD>
static void cuda_attention_mma(cuda_backend_t *cb, const attn_batch_t *batch, int n_heads,
                               int group, int max_rows, int max_keys, __nv_bfloat16 *ob,
                               const float *ob_of)
{
    int n_kv = n_heads / group, n_rt = (max_rows + FA_ROWS - 1) / FA_ROWS;
    int n_split = fa_splits(cb, n_rt * n_kv * batch->n, (max_keys + FA_KT - 1) / FA_KT);
    float scale_log2 = 1.4426950408889634f / sqrtf((float)HD);
    dim3 grid(n_rt, n_kv, batch->n * n_split);
    cuda_launch(cb->stream, k_attention_mma<HD>, grid, 128, 0, *batch, n_heads, group,
                scale_log2, n_split, cb->d_part, cb->d_count, ob, ob_of);
}

/* k_attention_mma for runs (sep_attn_run_t), the twin of the CPU's
 * sep_attn_head_run: a block's rows are (query, query head) pairs of
 * consecutive queries of a run, which may lie in different segments; its
 * key tiles are those of the prefix rows any of them sees, then those of
 * their window rows, and each row masks the keys it does not see. The
 * rest (online softmax, key splits and their merge) is k_attention_mma's. */
template <int HD>
__global__ void __launch_bounds__(128)
    k_attention_run_mma(const run_batch_t batch, int n_heads, int group, float scale_log2,
                        int n_split, float *part, unsigned *count, __nv_bfloat16 *ob,
                        const float *ob_of)
{
    griddep_wait();
    griddep_launch();
    __shared__ __align__(16) __nv_bfloat16 ks[FA_KT][HD + 8], vs[FA_KT][HD + 8];
    int z = blockIdx.z / n_split, split = blockIdx.z % n_split;
    const sep_attn_run_t *p = &batch.p[z];
    int kvh = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n_rows = p->n_q * group, row0 = blockIdx.x * FA_ROWS;
    if (row0 >= n_rows)
        return;
    int kv_dim = n_heads / group * HD, g = lane >> 2, tq = lane & 3;

    /* the key ranges (prefix rows, then window rows) of the block's rows,
     * in shared memory (registers are what the tiles need); none past the
     * last row */
    __shared__ sep_attn_keys_t rk[FA_ROWS];
    if (threadIdx.x < FA_ROWS) {
        int R = row0 + threadIdx.x;
        sep_attn_keys_t k = { 0, 0, 0, 0 };
        if (R < n_rows)
            k = p->keys[R / group];
        rk[threadIdx.x] = k;
    }
    /* this lane's two rows: their query heads, queries and Q fragments */
    const float *qrow[2];
    float *orow[2];
    for (int h = 0; h < 2; h++) {
        int R = row0 + warp * 16 + g + 8 * h, i = R / group, head = kvh * group + R % group;
        int ok = R < n_rows;
        qrow[h] = ok ? p->q + (size_t)i * p->q_stride + (size_t)head * HD : NULL;
        orow[h] = ok ? p->out + (size_t)i * p->out_stride + (size_t)head * HD : NULL;
    }
    uint32_t qa[HD / 16][4];
    fa_load_q<HD>(qa, qrow, tq, scale_log2);

    /* the tiles of keys this block's rows see (prefix tiles first), and
     * this split's share */
    int last = (row0 + FA_ROWS < n_rows ? row0 + FA_ROWS : n_rows) - 1, span[4];
    run_span(p->keys, row0 / group, last / group, span);
    int n_pt = (span[1] - span[0] + FA_KT - 1) / FA_KT;
    int n_tiles = n_pt + (span[3] - span[2] + FA_KT - 1) / FA_KT;
    int per = (n_tiles + n_split - 1) / n_split;
    int t_begin = split * per, t_end = t_begin + per < n_tiles ? t_begin + per : n_tiles;

    float o[HD / 8][4], m[2] = { -INFINITY, -INFINITY }, l[2] = { 0.0f, 0.0f };
    for (int dt = 0; dt < HD / 8; dt++)
        o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    for (int tile = t_begin; tile < t_end; tile++) {
        int ph = tile >= n_pt;
        int t0 = ph ? span[2] + (tile - n_pt) * FA_KT : span[0] + tile * FA_KT;
        fa_stage<HD>(ks, vs, ph ? p->k : p->pk, ph ? p->v : p->pv, t0, ph ? span[3] : span[1],
                     kv_dim, kvh);
        float s[FA_KT / 8][4];
        fa_scores<HD>(s, qa, ks, lane);
        /* each row's own keys of the tile */
        for (int h = 0; h < 2; h++) {
            const sep_attn_keys_t *mine = &rk[warp * 16 + g + 8 * h];
            int lo = ph ? mine->win_lo : mine->pre_lo, hi = ph ? mine->win_hi : mine->pre_hi;
            for (int nt = 0; nt < FA_KT / 8; nt++)
                for (int c = 0; c < 2; c++) {
                    int t = t0 + nt * 8 + 2 * tq + c;
                    if (t < lo || t >= hi)
                        s[nt][2 * h + c] = -INFINITY;
                }
        }
        fa_fold<HD>(s, m, l, o, vs, lane);
    }
    fa_end<HD>(p, z, group, kvh, row0, split, n_split, o, m, l, orow, part, count, ob, ob_of,
               (float *)&ks[0][0]);
}

/* Launch the tensor-core attention for one batch of runs (key splits as
 * for cuda_attention_mma, from the most keys a tile of rows may see). */
template <int HD>
static void cuda_attention_run_mma(cuda_backend_t *cb, const run_batch_t *batch, int n_heads,
                                   int group, int max_rows, __nv_bfloat16 *ob,
                                   const float *ob_of)
{
    int n_kv = n_heads / group, n_rt = (max_rows + FA_ROWS - 1) / FA_ROWS;
    /* a tile of rows sees at most the longest row's keys and the rows its
     * neighbours' windows pass it by, prefix and window tiles apart */
    int n_split = fa_splits(cb, n_rt * n_kv * batch->n,
                            (cb->max_keys + FA_ROWS + FA_KT - 1) / FA_KT + 1);
    float scale_log2 = 1.4426950408889634f / sqrtf((float)HD);
    dim3 grid(n_rt, n_kv, batch->n * n_split);
    cuda_launch(cb->stream, k_attention_run_mma<HD>, grid, 128, 0, *batch, n_heads, group,
                scale_log2, n_split, cb->d_part, cb->d_count, ob, ob_of);
}

/* Where the tensor-core attention also writes its outputs in bf16, for
 * the output product: the mirror, which the rounds of one layer's
 * attention extend (their outputs are rows of one buffer, the first
 * round's first row lowest); NULL when the outputs are not whole rows or
 * do not fit d_xb. */
template <typename P>
static __nv_bfloat16 *cuda_attention_twin(cuda_backend_t *cb, const P *probs, int n_probs,
                                          int width)
{
    const float *lo = probs[0].out, *hi = probs[0].out;
    for (int i = 0; i < n_probs; i++) {
        const float *o = probs[i].out, *end = o + (size_t)probs[i].n_q * width;
        if (probs[i].out_stride != width) {
            cuda_written(cb);
            return NULL;
        }
        lo = o < lo ? o : lo;
        hi = end > hi ? end : hi;
    }
    if (!cb->xb_rounds || lo < cb->xb_of) {
        cuda_written(cb);
        cb->xb_of = lo;
        cb->xb_rounds = 1;
    }
    if ((size_t)(hi - cb->xb_of) * sizeof(__nv_bfloat16) > cb->xb_cap) {
        cuda_written(cb);
        return NULL;
    }
    for (int i = 0; i < n_probs; i++)
        if (cuda_mirror_add(cb, probs[i].out, (size_t)probs[i].n_q * width)) {
            cuda_written(cb);
            return NULL;
        }
    return cb->d_xb;
}

/* What a batch of attention problems (or runs) launches with: the
 * tensor cores (bf16, head_dim 64 or 128; head_dim <= max_head_dim, which
 * sep_model_load checks) and the bf16 twin of the outputs they write, or
 * k_attention's rows a block (qt queries of the group) and its shared
 * memory. */
typedef struct {
    int mma, group, qt;
    __nv_bfloat16 *ob;
    const float *ob_of;
    size_t shared;
} attn_launch_t;

template <typename P>
static attn_launch_t attn_begin(cuda_backend_t *cb, const P *probs, int n_probs, int n_heads,
                                int n_kv_heads, int head_dim)
{
    attn_launch_t a;
    a.mma = cb->bf16 && (head_dim == 128 || head_dim == 64);
    a.ob = NULL;
    if (a.mma && n_probs > 0)
        a.ob = cuda_attention_twin(cb, probs, n_probs, n_heads * head_dim);
    else
        cuda_written(cb);
    a.ob_of = cb->xb_of;
    a.group = n_heads / n_kv_heads;
    a.qt = ATTN_MAX_ROWS / a.group > 0 ? ATTN_MAX_ROWS / a.group : 1;
    a.shared = ((size_t)ATTN_KT * (head_dim + 1) + (size_t)ATTN_KT * head_dim +
                (size_t)a.qt * a.group * head_dim) * sizeof(float);
    return a;
}

static void cuda_attention(sep_backend_t *be, const sep_attn_t *probs, int n_probs,
                           int n_heads, int n_kv_heads, int head_dim)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    attn_launch_t a = attn_begin(cb, probs, n_probs, n_heads, n_kv_heads, head_dim);
    int mma = a.mma, group = a.group, qt = a.qt;
    __nv_bfloat16 *ob = a.ob;
    const float *ob_of = a.ob_of;
    size_t shared = a.shared;
    /* problems travel in the launch parameters: no copy, no host wait */
    for (int at = 0; at < n_probs; at += ATTN_MAX_PROBS) {
        attn_batch_t batch;
        batch.n = n_probs - at < ATTN_MAX_PROBS ? n_probs - at : ATTN_MAX_PROBS;
        int max_q = 0, max_keys = 0;
        for (int i = 0; i < batch.n; i++) {
            batch.p[i] = probs[at + i];
            max_q = probs[at + i].n_q > max_q ? probs[at + i].n_q : max_q;
            int keys = probs[at + i].n_past + probs[at + i].n_q;
            max_keys = keys > max_keys ? keys : max_keys;
        }
        if (mma && head_dim == 128) {
            cuda_attention_mma<128>(cb, &batch, n_heads, group, max_q * group, max_keys, ob,
                                    ob_of);
            continue;
        }
        if (mma) {
            cuda_attention_mma<64>(cb, &batch, n_heads, group, max_q * group, max_keys, ob,
                                   ob_of);
            continue;
        }
        dim3 grid((max_q + qt - 1) / qt, n_kv_heads, batch.n);
        cuda_launch(cb->stream, k_attention, grid, 32 * qt * group, shared, batch, n_heads,
                    group, head_dim, qt, 1.0f / sqrtf((float)head_dim));
    }
}

/* Runs: one launch for up to ATTN_MAX_RUNS of them, every segment of each
 * (its keys in device memory, written once a forward by the model). */
static void cuda_attention_runs(sep_backend_t *be, const sep_attn_run_t *runs, int n_runs,
                                int n_heads, int n_kv_heads, int head_dim)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    attn_launch_t a = attn_begin(cb, runs, n_runs, n_heads, n_kv_heads, head_dim);
    int mma = a.mma, group = a.group, qt = a.qt;
    __nv_bfloat16 *ob = a.ob;
    const float *ob_of = a.ob_of;
    size_t shared = a.shared;
    for (int at = 0; at < n_runs; at += ATTN_MAX_RUNS) {
        run_batch_t batch;
        batch.n = n_runs - at < ATTN_MAX_RUNS ? n_runs - at : ATTN_MAX_RUNS;
        int max_q = 0;
        for (int i = 0; i < batch.n; i++) {
            batch.p[i] = runs[at + i];
            max_q = runs[at + i].n_q > max_q ? runs[at + i].n_q : max_q;
        }
        if (max_q == 0)
            continue;
        if (mma && head_dim == 128) {
            cuda_attention_run_mma<128>(cb, &batch, n_heads, group, max_q * group, ob, ob_of);
            continue;
        }
        if (mma) {
            cuda_attention_run_mma<64>(cb, &batch, n_heads, group, max_q * group, ob, ob_of);
            continue;
        }
        dim3 grid((max_q + qt - 1) / qt, n_kv_heads, batch.n);
        cuda_launch(cb->stream, k_attention_run, grid, 32 * qt * group, shared, batch, n_heads,
                    group, head_dim, qt, 1.0f / sqrtf((float)head_dim));
    }
}

/* ---- NLL ----------------------------------------------------------------- */

/* One pass over a row: each thread keeps a running max and the sum of
 * exp(v - max) (rescaled when the max grows), then the block merges them. */
__global__ void k_nll(float *nll, const float *logits, const int32_t *target, int vocab)
{
    griddep_wait();
    griddep_launch();
    int i = blockIdx.x;
    if (target[i] < 0)
        return;
    const float *row = logits + (size_t)i * vocab;
    float m = -INFINITY, s = 0.0f;
    int j0 = 0;
    if ((vocab & 3) == 0) {
        const float4 *r4 = (const float4 *)row;
        for (int j = threadIdx.x; j < vocab / 4; j += blockDim.x) {
            float4 v = r4[j];
            float mv = fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)), mn = fmaxf(m, mv);
            s = s * __expf(m - mn) + __expf(v.x - mn) + __expf(v.y - mn) + __expf(v.z - mn) +
                __expf(v.w - mn);
            m = mn;
        }
        j0 = vocab;
    }
    for (int j = j0 + threadIdx.x; j < vocab; j += blockDim.x) {
        float mn = fmaxf(m, row[j]);
        s = s * __expf(m - mn) + __expf(row[j] - mn);
        m = mn;
    }
    float mx = block_max(m);
    s = block_sum(m == -INFINITY ? 0.0f : s * __expf(m - mx));
    if (threadIdx.x == 0)
        nll[i] = mx + logf(s) - row[target[i]];
}

static void cuda_nll(sep_backend_t *be, float *nll, const float *logits,
                     const int32_t *target, int n, int vocab)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    if (n <= 0)
        return;
    /* the targets go out and the NLLs come back through one piece of the
     * ring: 8 bytes a row */
    size_t bytes = (size_t)n * sizeof(int32_t), at = cuda_ring_take(cb, 2 * bytes);
    memcpy(cb->h_ring + at, target, bytes);
    cuda_ring_send(cb, at, bytes);
    cuda_launch(cb->stream, k_nll, n, 512, 0, (float *)(cb->d_ring + at + bytes), logits,
                (const int32_t *)(cb->d_ring + at), vocab);
    const float *got = (const float *)cuda_ring_fetch(cb, at + bytes, (size_t)n * sizeof(float));
    /* rows without a target keep the caller's value */
    for (int i = 0; i < n; i++)
        if (target[i] >= 0)
            nll[i] = got[i];
}

/* ---- pick ------------------------------------------------------------------ *
 * A row is a cluster of 16 blocks of PICK_THREADS (Hopper thread block
 * clusters; 8 where clusters of 16 cannot run), block r holding ids
 * [r C, (r + 1) C) of the row (C the vocabulary over the cluster, rounded
 * up), read once: the softmax of the row as it came (the NLL) while the
 * block copies its ids to shared memory, the penalties and the holes
 * written into that copy, then the cuts as radix selections on the keys
 * of pick.h, a digit a pass over the copy, each pass a histogram of
 * counts or weights in each block's shared memory (fixed point: integer
 * atomics, so the sums and every choice are the same each run and for
 * any split of the row), merged over the cluster through distributed
 * shared memory; no sort, neither of the vocabulary nor of the recent
 * ids. Every block makes the same choices from the same merged sums; the
 * block that holds the token writes it. */
#define PICK_THREADS 1024
#define PICK_MAX_CLUSTER 16

typedef unsigned long long pick_u64;

/* A row's pick as the kernel reads it from the ring; its ids (recent,
 * holes) at offsets into the call's id area, recent followed by room for
 * as many logits (those the penalties changed, as they came). */
typedef struct {
    float temperature, top_p, min_p, repetition, presence, frequency;
    int top_k, limit;
    int recent_at, n_recent, holes_at, n_holes;
    pick_u64 draw;
} pick_dev_t;

/* A block's shared state: its histogram of a digit, its share of the
 * cluster's (merged), what it shows the cluster at an exchange (two
 * sets, by the exchange's parity) and what it gathered there, the token
 * found, the recent ids. */
struct pick_shared {
    pick_u64 hist[SEP_PICK_BUCKETS];
    pick_u64 mrg[SEP_PICK_BUCKETS / 4];    /* clusters of 4 blocks or more */
    pick_u64 show[2][4];
    pick_u64 got[PICK_MAX_CLUSTER][4];
    pick_u64 goal;
    uint32_t bucket;
    int found, first;
    int ids[SEP_PICK_MAX_RECENT];
};

/* What the cuts see of a row: ids [0, limit) above -inf (this block's:
 * [lo, hi), id j's logit at row[j - base]), the cut so far. */
struct pick_ctx {
    const float *row;
    int base, lo, hi;
    float max, t, min_p;
    float cut;            /* SEP_PICK_CUT * t */
    int all;              /* no cut yet: every id ranks in */
    uint32_t cut_key;     /* else: ids whose key is above, or equal with id <= cut_id */
    int cut_id;
};

enum { PICK_TIE, PICK_KEPT };

__device__ __forceinline__ float pick_w(const pick_ctx &c, float v)
{
    float d = v - c.max;
    return d < c.cut ? 0.0f : __expf(d / c.t);
}

__device__ __forceinline__ pick_u64 pick_weight(const pick_ctx &c, float v)
{
    return (pick_u64)(pick_w(c, v) * SEP_PICK_ONE);
}

__device__ __forceinline__ int pick_in_cut(const pick_ctx &c, uint32_t k, int j)
{
    return c.all || k > c.cut_key || (k == c.cut_key && j <= c.cut_id);
}

/* Id j's amount: TIE, 1 when its key is tie_key; KEPT, its weight when
 * the cut and min_p keep it. */
__device__ __forceinline__ pick_u64 pick_amount(const pick_ctx &c, int mode, int j,
                                                uint32_t tie_key)
{
    float v = c.row[j - c.base];
    if (!(v > -INFINITY))
        return 0;
    uint32_t k = sep_pick_key(v);
    if (mode == PICK_TIE)
        return k == tie_key;
    if (!pick_in_cut(c, k, j))
        return 0;
    float w = pick_w(c, v);
    if (mode == PICK_KEPT && c.min_p > 0 && !(w >= c.min_p))
        return 0;
    return (pick_u64)(w * SEP_PICK_ONE);
}

__device__ __forceinline__ pick_u64 warp_sum_u64(pick_u64 v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ pick_u64 warp_scan_u64(pick_u64 v)
{
    int lane = threadIdx.x & 31;
    for (int o = 1; o < 32; o <<= 1) {
        pick_u64 u = __shfl_up_sync(0xffffffffu, v, o);
        v += lane >= o ? u : 0;
    }
    return v;
}

/* The block's sum of v, to every thread. */
__device__ pick_u64 block_sum_u64(pick_u64 v)
{
    __shared__ pick_u64 part[32];
    v = warp_sum_u64(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x >> 5] = v;
    __syncthreads();
    pick_u64 s = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++)
        s += part[w];
    return s;
}

/* The sum of v over the threads before this one; *total the block's. */
__device__ pick_u64 block_excl_u64(pick_u64 v, pick_u64 *total)
{
    __shared__ pick_u64 part[32];
    pick_u64 inc = warp_scan_u64(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 31)
        part[threadIdx.x >> 5] = inc;
    __syncthreads();
    pick_u64 before = 0, all = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) {
        before += w < (int)(threadIdx.x >> 5) ? part[w] : 0;
        all += part[w];
    }
    *total = all;
    return before + inc - v;
}

/* Shows n values (thread 0's v) to the cluster: on return sh.got[r][k]
 * holds block r's k-th, for every thread. */
template <int CL>
__device__ void pick_exchange(pick_shared &sh, int &par, const pick_u64 *v, int n)
{
    cg::cluster_group cl = cg::this_cluster();
    if (threadIdx.x == 0)
        for (int k = 0; k < n; k++)
            sh.show[par][k] = v[k];
    cl.sync();
    if ((int)threadIdx.x < CL * n) {
        int r = threadIdx.x / n, k = threadIdx.x % n;
        sh.got[r][k] = cl.map_shared_rank(&sh.show[par][0], r)[k];
    }
    __syncthreads();
    par ^= 1;
}

/* The first id (in id order) at which the running amount exceeds x (x
 * below the total), to every thread; with draw, x := the total times
 * draw * 2^-53 instead. Each warp sums a span of its block's ids, the
 * blocks show their sums, then the warp whose span holds x scans it 32
 * ids at a time and tells every block. */
template <int CL>
__device__ int pick_find(const pick_ctx &c, int mode, uint32_t tie_key, pick_u64 x, int draw,
                         pick_u64 bits, pick_shared &sh, int &par)
{
    __shared__ pick_u64 wsum[32];
    cg::cluster_group cl = cg::this_cluster();
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int n = c.hi > c.lo ? c.hi - c.lo : 0;
    int span = ((n + nw - 1) / nw + 31) & ~31;
    int lo = c.lo + warp * span, hi = min(lo + span, c.lo + n);
    pick_u64 s = 0;
    for (int j = lo + lane; j < hi; j += 32)
        s += pick_amount(c, mode, j, tie_key);
    s = warp_sum_u64(s);
    if (lane == 0)
        wsum[warp] = s;
    __syncthreads();
    pick_u64 mine = 0;
    for (int w = 0; w < nw; w++)
        mine += wsum[w];
    pick_exchange<CL>(sh, par, &mine, 1);
    pick_u64 acc = 0, total = 0;
    int rank = (int)cl.block_rank();
    for (int r = 0; r < CL; r++) {
        acc += r < rank ? sh.got[r][0] : 0;
        total += sh.got[r][0];
    }
    if (draw) {
        /* the best id weighs 2^40 and every cut keeps it: total > 0 */
        x = (pick_u64)((double)bits * 0x1p-53 * (double)total);
        x = x < total ? x : total - 1;
    }
    for (int w = 0; w < warp; w++)
        acc += wsum[w];
    if (acc <= x && x < acc + wsum[warp]) {
        for (int base = lo; base < hi; base += 32) {
            int j = base + lane;
            pick_u64 inc = warp_scan_u64(j < hi ? pick_amount(c, mode, j, tie_key) : 0);
            unsigned hit = __ballot_sync(0xffffffffu, acc + inc > x);
            if (hit) {
                if (lane == __ffs(hit) - 1)
                    for (int r = 0; r < CL; r++)
                        *cl.map_shared_rank(&sh.found, r) = j;
                break;
            }
            acc += __shfl_sync(0xffffffffu, inc, 31);
        }
    }
    cl.sync();
    return sh.found;
}

/* The rank at which the running amount of the ids in rank order (1 each,
 * or with mass the weight; with filt only those of the cut so far, which
 * are the first ranks) first reaches goal (1 <= goal <= the total; with
 * top_p > 0, goal := top_p of the total, rounded up, instead): its key
 * and id, to every thread. A digit a pass: each block's histogram of its
 * ids whose higher digits are those found, the cluster's sums of them
 * (block r sums buckets [r S, (r + 1) S)), then the bucket, from the top,
 * where the goal falls (thread t holds buckets 2047 - 2t and 2046 - 2t). */
template <int CL>
__device__ void pick_select(const pick_ctx &c, int mass, int filt, float top_p, pick_u64 goal,
                            uint32_t *key, int *id, pick_shared &sh, int &par)
{
    constexpr int SEG = SEP_PICK_BUCKETS / CL;
    cg::cluster_group cl = cg::this_cluster();
    int lane = threadIdx.x & 31, rank = (int)cl.block_rank();
    uint32_t pref = 0, pmask = 0;
    for (int d = 0; d < SEP_PICK_DIGITS; d++) {
        int shift = sep_pick_shift(d);
        uint32_t dmask = sep_pick_dmask(d);
        for (int b = threadIdx.x; b < SEP_PICK_BUCKETS; b += blockDim.x)
            sh.hist[b] = 0;
        __syncthreads();
        for (int base = c.lo + (int)(threadIdx.x & ~31u); base < c.hi; base += blockDim.x) {
            int j = base + lane;
            pick_u64 a = 0;
            uint32_t k = 0;
            if (j < c.hi) {
                float v = c.row[j - c.base];
                k = sep_pick_key(v);
                if (v > -INFINITY && (k & pmask) == pref && (!filt || pick_in_cut(c, k, j)))
                    a = mass ? pick_weight(c, v) : 1;
            }
            if (a)
                atomicAdd(&sh.hist[(k >> shift) & dmask], a);
        }
        cl.sync();
        for (int i = threadIdx.x; i < SEG; i += blockDim.x) {
            pick_u64 s = 0;
#pragma unroll
            for (int r = 0; r < CL; r++)
                s += cl.map_shared_rank(sh.hist, r)[rank * SEG + i];
            sh.mrg[i] = s;
        }
        cl.sync();
        int b0 = SEP_PICK_BUCKETS - 1 - 2 * (int)threadIdx.x, b1 = b0 - 1;
        pick_u64 h0 = 0, h1 = 0, total;
        if (b1 >= 0) {
            h0 = cl.map_shared_rank(sh.mrg, b0 / SEG)[b0 % SEG];
            h1 = cl.map_shared_rank(sh.mrg, b1 / SEG)[b1 % SEG];
        }
        pick_u64 before = block_excl_u64(h0 + h1, &total);
        if (d == 0 && top_p > 0) {
            goal = (pick_u64)ceil((double)top_p * (double)total);
            goal = goal < 1 ? 1 : goal > total ? total : goal;
        }
        if (before < goal && goal <= before + h0) {
            sh.bucket = (uint32_t)b0;
            sh.goal = goal - before;
        } else if (before + h0 < goal && goal <= before + h0 + h1) {
            sh.bucket = (uint32_t)b1;
            sh.goal = goal - before - h0;
        }
        __syncthreads();
        pref |= sh.bucket << shift;
        pmask |= dmask << shift;
        goal = sh.goal;
        __syncthreads();
    }
    /* ties share the key: the goal-th amount falls in the n-th of them */
    pick_u64 each = mass ? pick_weight(c, sep_pick_unkey(pref)) : 1;
    *key = pref;
    *id = pick_find<CL>(c, PICK_TIE, pref, (goal + each - 1) / each - 1, 0, 0, sh, par);
}

__device__ __forceinline__ pick_u64 pick_pack(float a, uint32_t b)
{
    return (pick_u64)__float_as_uint(a) | (pick_u64)b << 32;
}

/* A block's ids go to shared memory (after the shared state) when they fit. */
#define PICK_MAX_SMEM (160 * 1024)

template <int CL>
__global__ void __launch_bounds__(PICK_THREADS)
k_pick(const pick_dev_t *picks, int32_t *area, int32_t *token, float *nll, float *logits,
       int vocab)
{
    __shared__ pick_shared sh;
    extern __shared__ float pick_row[];
    griddep_wait();
    griddep_launch();
    cg::cluster_group cl = cg::this_cluster();
    int ri = blockIdx.x / CL, rank = (int)cl.block_rank(), par = 0;
    const pick_dev_t p = picks[ri];
    const float *row = logits + (size_t)ri * vocab;
    int tid = threadIdx.x, nt = blockDim.x;
    int chunk = (vocab + CL - 1) / CL;
    int lo = min(rank * chunk, vocab), hi = min(lo + chunk, vocab);
    /* this block's ids as the cuts see them: a copy in shared memory
     * where they fit, else the row itself (scratch) */
    int in_smem = (size_t)chunk * sizeof(float) <= PICK_MAX_SMEM;
    float *w = in_smem ? pick_row : (float *)row;
    int base = in_smem ? lo : 0;
    /* the softmax of this block's ids as they came, four loads at a time */
    float m = -INFINITY, s = 0.0f;
    int bad = 0;
    for (int j0 = lo + tid; j0 < hi; j0 += 4 * nt) {
        float v4[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
            v4[u] = j0 + u * nt < hi ? row[j0 + u * nt] : -INFINITY;
#pragma unroll
        for (int u = 0; u < 4; u++) {
            float v = v4[u];
            if (j0 + u * nt < hi && in_smem)
                w[j0 + u * nt - base] = v;
            bad |= !(v < INFINITY);
            if (v > m) {
                s = s * __expf(m - v) + 1.0f;
                m = v;
            } else if (v > -INFINITY) {
                s += __expf(v - m);
            }
        }
    }
    bad = __syncthreads_or(bad);
    float mx = block_max(m);
    float sx = block_sum(m == -INFINITY ? 0.0f : s * __expf(m - mx));
    /* the penalties of this block's ids, each distinct id once (at its
     * first place in recent, whose logit as it came is kept beside) */
    int n_rec = p.n_recent;
    int pen = n_rec > 0 && (p.repetition != 1 || p.presence != 0 || p.frequency != 0);
    const int32_t *rec = area + p.recent_at;
    float *raw = (float *)(area + p.recent_at + n_rec);
    if (pen) {
        for (int i = tid; i < n_rec; i += nt)
            sh.ids[i] = rec[i];
        __syncthreads();
        for (int i = tid; i < n_rec; i += nt) {
            int id = sh.ids[i], count = 0, first = 1;
            if (id < lo || id >= hi)
                continue;
            for (int k = 0; k < n_rec; k++) {
                int same = sh.ids[k] == id;
                count += same;
                first &= !(same && k < i);
            }
            if (first) {
                float v = w[id - base];
                raw[i] = v;
                w[id - base] = sep_pick_penalize(v, count, p.repetition, p.presence,
                                                 p.frequency);
            }
        }
        __syncthreads();
    }
    for (int i = tid; i < p.n_holes; i += nt) {
        int id = area[p.holes_at + i];
        if (id >= lo && id < hi)
            w[id - base] = -INFINITY;
    }
    __syncthreads();
    /* the best id it may take */
    int hl = max(lo, min(hi, p.limit));
    float m2 = -INFINITY;
    int best = vocab, count = 0;
    for (int j = lo + tid; j < hl; j += nt) {
        float v = w[j - base];
        count += v > -INFINITY;
        if (v > m2) {
            m2 = v;
            best = j;
        }
    }
    float vb = block_max(m2);
    /* indices below 2^24 are exact as floats */
    int bb = (int)block_reduce(m2 == vb ? (float)best : (float)vocab, op_min(), (float)vocab);
    pick_u64 mine[4] = { pick_pack(mx, __float_as_uint(sx)), pick_pack(vb, (uint32_t)bb),
                         block_sum_u64((pick_u64)count), (pick_u64)bad };
    pick_exchange<CL>(sh, par, mine, 4);
    /* the row's, from the blocks' (in rank order) */
    float lmax = -INFINITY, vmax = -INFINITY;
    for (int r = 0; r < CL; r++) {
        lmax = fmaxf(lmax, __uint_as_float((uint32_t)sh.got[r][0]));
        vmax = fmaxf(vmax, __uint_as_float((uint32_t)sh.got[r][1]));
    }
    float lsum = 0.0f;
    int tok = vocab, n_valid = 0;
    bad = 0;
    for (int r = 0; r < CL; r++) {
        float mr = __uint_as_float((uint32_t)sh.got[r][0]);
        if (mr > -INFINITY)
            lsum += __uint_as_float((uint32_t)(sh.got[r][0] >> 32)) * __expf(mr - lmax);
        if (__uint_as_float((uint32_t)sh.got[r][1]) == vmax)
            tok = min(tok, (int)(sh.got[r][1] >> 32));
        n_valid += (int)sh.got[r][2];
        bad |= (int)sh.got[r][3];
    }
    float lse = lmax + logf(lsum);
    if (bad || !(vmax > -INFINITY && vmax < INFINITY)) {
        if (rank == 0 && tid == 0) {
            token[ri] = -1;
            nll[ri] = NAN;
        }
        cl.sync(); /* no block leaves while another reads its memory */
        return;
    }
    if (p.temperature > 0) {
        pick_ctx c = { w, base, lo, hl, vmax, p.temperature, p.min_p,
                       SEP_PICK_CUT * p.temperature, 1, 0, 0 };
        if (p.top_k > 0 && p.top_k < n_valid) {
            pick_select<CL>(c, 0, 0, 0.0f, (pick_u64)p.top_k, &c.cut_key, &c.cut_id, sh, par);
            c.all = 0;
        }
        if (p.top_p < 1) {
            pick_select<CL>(c, 1, !c.all, p.top_p, 0, &c.cut_key, &c.cut_id, sh, par);
            c.all = 0;
        }
        tok = pick_find<CL>(c, PICK_KEPT, 0, 0, 1, p.draw, sh, par);
    }
    if (tok >= lo && tok < hi) {
        /* the NLL of the row as it came: a penalised token's logit is at
         * its first place in recent */
        if (tid == 0)
            sh.first = n_rec;
        __syncthreads();
        for (int i = tid; pen && i < n_rec; i += nt)
            if (sh.ids[i] == tok)
                atomicMin(&sh.first, i);
        __syncthreads();
        if (tid == 0) {
            float v = sh.first < n_rec ? raw[sh.first] : w[tok - base];
            token[ri] = tok;
            nll[ri] = lse - v;
        }
    }
    cl.sync(); /* no block leaves while another reads its memory */
}

/* The pick's kernel for clusters of 16 blocks (Hopper's largest, not
 * portable: where the GPU schedules them) or 8. */
typedef void (*pick_kernel_t)(const pick_dev_t *, int32_t *, int32_t *, float *, float *, int);
static pick_kernel_t pick_kernel(int cluster)
{
    return cluster == 16 ? k_pick<16> : k_pick<8>;
}

static void cuda_pick(sep_backend_t *be, int32_t *token, float *nll, float *logits, int n,
                      int vocab, const sep_pick_t *picks)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    /* rows go in groups whose staging fits half the ring: their picks,
     * their ids (recent with room for as many logits; holes shared with
     * the row before stage once), and the answers coming back, 8 bytes a
     * row */
    for (int i0 = 0, i1; i0 < n; i0 = i1) {
        size_t n_ids = 0;
        for (i1 = i0; i1 < n; i1++) {
            int shared = i1 > i0 && picks[i1].holes == picks[i1 - 1].holes &&
                         picks[i1].n_holes == picks[i1 - 1].n_holes;
            size_t more = 2 * (size_t)picks[i1].n_recent +
                          (shared ? 0 : (size_t)picks[i1].n_holes);
            size_t bytes = (size_t)(i1 + 1 - i0) * (sizeof(pick_dev_t) + 8) + (n_ids + more) * 4;
            if (i1 > i0 && bytes > cb->ring_len / 2)
                break;
            n_ids += more;
        }
        int m = i1 - i0;
        size_t head = (size_t)m * sizeof(pick_dev_t), in = head + n_ids * 4;
        size_t at = cuda_ring_take(cb, in + (size_t)m * 8);
        pick_dev_t *dp = (pick_dev_t *)(cb->h_ring + at);
        int32_t *area = (int32_t *)(cb->h_ring + at + head);
        int off = 0;
        for (int i = 0; i < m; i++) {
            const sep_pick_t *q = &picks[i0 + i];
            pick_dev_t *d = &dp[i];
            *d = (pick_dev_t){ q->temperature, q->top_p, q->min_p, q->repetition, q->presence,
                               q->frequency, q->top_k, q->limit, off, q->n_recent, 0,
                               q->n_holes, q->draw };
            memcpy(area + off, q->recent, (size_t)q->n_recent * sizeof(int32_t));
            off += 2 * q->n_recent;
            if (i > 0 && q->holes == q[-1].holes && q->n_holes == q[-1].n_holes) {
                d->holes_at = d[-1].holes_at;
            } else {
                d->holes_at = off;
                memcpy(area + off, q->holes, (size_t)q->n_holes * sizeof(int32_t));
                off += q->n_holes;
            }
        }
        cuda_ring_send(cb, at, in);
        int32_t *d_tok = (int32_t *)(cb->d_ring + at + in);
        int cl = cb->pick_cluster, chunk = (vocab + cl - 1) / cl;
        size_t smem = (size_t)chunk * sizeof(float) <= PICK_MAX_SMEM ? (size_t)chunk * 4 : 0;
        cuda_launch_cluster(cb->stream, pick_kernel(cl), cl, (unsigned)(m * cl), PICK_THREADS,
                            smem, (const pick_dev_t *)(cb->d_ring + at),
                            (int32_t *)(cb->d_ring + at + head), d_tok, (float *)(d_tok + m),
                            logits + (size_t)i0 * vocab, vocab);
        const unsigned char *got = cuda_ring_fetch(cb, at + in, (size_t)m * 8);
        memcpy(token + i0, got, (size_t)m * sizeof(int32_t));
        memcpy(nll + i0, got + (size_t)m * sizeof(int32_t), (size_t)m * sizeof(float));
    }
}

/* ---- life ------------------------------------------------------------------ */

static void cuda_destroy(sep_backend_t *be)
{
    cuda_flush(CB(be));
    cuda_backend_t *cb = CB(be);
    cuda_load_free(cb);
    cudaFree(cb->d_ring);
    cudaFreeHost(cb->h_ring);
    cudaFree(cb->d_tmp);
    cudaFree(cb->d_xb);
    cudaFree(cb->d_part);
    cudaFree(cb->d_count);
    free(cb->xb_spans);
    if (cb->blas)
        cublasDestroy(cb->blas);
    if (cb->stream)
        cudaStreamDestroy(cb->stream);
    free(cb);
}

extern "C" int sep_backend_cuda_open(sep_backend_t **out, int device, int bf16)
{
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0)
        return sep_fail(SEP_ENOTFOUND, "cuda: no GPU (%s)",
                        e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    if (device < 0 || device >= count)
        return sep_fail(SEP_EINVAL, "cuda: device %d of %d", device, count);
    cuda_backend_t *cb = (cuda_backend_t *)calloc(1, sizeof *cb);
    if (!cb)
        return sep_fail(SEP_ENOMEM, "cuda backend: out of memory");
    sep_backend_t *be = &cb->base;
    cb->device = device;
    cb->bf16 = bf16;
    if ((e = cudaSetDevice(device)) != cudaSuccess ||
        (e = cudaStreamCreate(&cb->stream)) != cudaSuccess) {
        cuda_destroy(be);
        return sep_fail(SEP_EIO, "cuda: device %d: %s", device, cudaGetErrorString(e));
    }
    if (cublasCreate(&cb->blas) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(cb->blas, cb->stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetMathMode(cb->blas, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
        cuda_destroy(be);
        return sep_fail(SEP_EIO, "cuda: cuBLAS would not start on device %d", device);
    }
    /* the pick's clusters: of 16 blocks where they can run, else of 8 */
    cudaFuncSetAttribute(k_pick<16>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    cudaFuncSetAttribute(k_pick<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, PICK_MAX_SMEM);
    cudaFuncSetAttribute(k_pick<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, PICK_MAX_SMEM);
    {
        cudaLaunchAttribute attr;
        attr.id = cudaLaunchAttributeClusterDimension;
        attr.val.clusterDim.x = 16;
        attr.val.clusterDim.y = 1;
        attr.val.clusterDim.z = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = 16;
        cfg.blockDim = PICK_THREADS;
        cfg.dynamicSmemBytes = PICK_MAX_SMEM;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        int n = 0;
        cb->pick_cluster = cudaOccupancyMaxActiveClusters(&n, k_pick<16>, &cfg) == cudaSuccess &&
                                   n > 0 ? 16 : 8;
        cudaGetLastError();
    }
    /* attention's shared memory at head_dim 256: above the 48 KB default */
    cudaFuncSetAttribute(k_attention, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024);
    cudaFuncSetAttribute(k_attention_run, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         160 * 1024);
    if (cudaDeviceGetAttribute(&cb->n_sm, cudaDevAttrMultiProcessorCount, device) !=
        cudaSuccess)
        cb->n_sm = 1;
    be->name = bf16 ? "cuda (bf16)" : "cuda (fp32)";
    be->n_threads = 1;
    be->max_head_dim = 256;        /* 8 registers a lane in k_attention */
    be->max_dim = 1024 * NORM_PER_WIDE; /* k_norm's registers */
    be->max_group = ATTN_MAX_ROWS; /* a group's rows share one block */
    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->host_alloc = cuda_host_alloc;
    be->host_free = cuda_host_free;
    be->gather_rows = cuda_gather_rows;
    be->copy_rows = cuda_copy_rows;
    be->weight_new = cuda_weight_new;
    be->weight_free = cuda_weight_free;
    be->weight_alloc = cuda_weight_alloc;
    be->weight_fill = cuda_weight_fill;
    be->stage = cuda_stage;
    be->load_end = cuda_load_end;
    be->weight_rows = cuda_weight_rows;
    be->matmul = cuda_matmul;
    be->rmsnorm = cuda_rmsnorm;
    be->layernorm = cuda_layernorm;
    be->rope = cuda_rope;
    be->rope_table = cuda_rope_table;
    be->reserve = cuda_reserve;
    be->sync = cuda_sync;
    be->attention = cuda_attention;
    be->attention_runs = cuda_attention_runs;
    be->add = cuda_add;
    be->swiglu = cuda_swiglu;
    be->gelu = cuda_gelu;
    be->nll = cuda_nll;
    be->pick = cuda_pick;
    be->destroy = cuda_destroy;
    *out = be;
    return SEP_OK;
}
