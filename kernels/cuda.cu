/* cuda.cu: the CUDA backend, built as the module sepd-cuda.so that
 * sep_backend_cuda_new() loads on first use (so CPU-only runs never map
 * the CUDA libraries). cuBLAS does the matrix products; the kernels
 * below do the rest on the device. Activations are fp32 between
 * operations. In bf16 mode weights are bf16 and a product rounds its
 * input to bf16 too, accumulating in fp32 on the tensor cores; in fp32
 * mode everything is fp32 (TF32 stays off), exact against the goldens. */
extern "C" {
#include "backend.h"
#include "err.h"
}

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The CUDA backend: a stream, a cuBLAS handle and device scratch. */
typedef struct {
    sep_backend_t base;
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    int32_t *d_ring;      /* (ring_len) indices of gathers and NLL targets, staged */
    int32_t *h_ring;      /* (ring_len) the same, pinned host memory */
    size_t ring_len, ring_at;
    float *d_tmp;         /* (max_rows, max_width) rows of an in-place gather */
    size_t tmp_cap;
    float *d_nll;         /* (max_rows) NLLs */
    size_t nll_cap;
    float *h_nll;         /* (max_rows) the same, host */
    size_t h_nll_cap;
    __nv_bfloat16 *d_xb;  /* (max_rows, max_width) a product's input in bf16 */
    size_t xb_cap;
    int bf16;             /* weights and product inputs in bf16 */
} cuda_backend_t;

struct sep_weight {
    void *data;           /* (rows, cols) fp32 or bf16 */
    int rows, cols;
    int bf16;
};

#define CB(be) ((cuda_backend_t *)(be))

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

/* Indices for the device without waiting: copied into the pinned ring and
 * sent asynchronously; a slot is reused only after a full wrap, which
 * first waits for the stream (every earlier copy has then landed). */
static const int32_t *cuda_stage_ids(cuda_backend_t *cb, const int32_t *ids, int n)
{
    if (cb->ring_at + n > cb->ring_len) {
        cudaStreamSynchronize(cb->stream);
        cb->ring_at = 0;
    }
    int32_t *h = cb->h_ring + cb->ring_at, *d = cb->d_ring + cb->ring_at;
    memcpy(h, ids, (size_t)n * sizeof *ids);
    cudaMemcpyAsync(d, h, (size_t)n * sizeof *ids, cudaMemcpyHostToDevice, cb->stream);
    cb->ring_at += n;
    return d;
}

static void *cuda_alloc(sep_backend_t *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    return cudaMalloc(&p, bytes ? bytes : 16) == cudaSuccess ? p : NULL;
}

static void cuda_free(sep_backend_t *be, void *p)
{
    (void)be;
    if (p)
        cudaFree(p);
}

static void cuda_upload(sep_backend_t *be, void *dst, const void *src, size_t bytes)
{
    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, CB(be)->stream);
    cudaStreamSynchronize(CB(be)->stream); /* src may be reused at once */
}

static void cuda_download(sep_backend_t *be, void *dst, const void *src, size_t bytes)
{
    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, CB(be)->stream);
    cudaStreamSynchronize(CB(be)->stream);
}

/* ---- rows ---------------------------------------------------------------- */

__global__ void k_gather(float *dst, const float *src, const int32_t *idx, int n, int width)
{
    int i = blockIdx.x;
    const float *s = src + (size_t)idx[i] * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x)
        dst[(size_t)i * width + j] = s[j];
}

static void cuda_gather_rows(sep_backend_t *be, float *dst, const float *src,
                             const int32_t *src_idx, int n, int width)
{
    cuda_backend_t *cb = CB(be);
    if (n <= 0)
        return;
    size_t bytes = (size_t)n * width * sizeof(float);
    /* in place, blocks run in any order: gather into scratch, copy back */
    int overlap = dst < src + (size_t)(src_idx[n - 1] + 1) * width && src < dst + (size_t)n * width;
    const int32_t *idx = cuda_stage_ids(cb, src_idx, n);
    float *out = overlap ? cb->d_tmp : dst;
    k_gather<<<n, 128, 0, cb->stream>>>(out, src, idx, n, width);
    if (overlap)
        cudaMemcpyAsync(dst, out, bytes, cudaMemcpyDeviceToDevice, cb->stream);
}

static void cuda_copy_rows(sep_backend_t *be, float *dst, int dst_stride, const float *src,
                           int src_stride, int n, int width)
{
    if (n > 0)
        cudaMemcpy2DAsync(dst, (size_t)dst_stride * sizeof(float), src,
                          (size_t)src_stride * sizeof(float), (size_t)width * sizeof(float),
                          n, cudaMemcpyDeviceToDevice, CB(be)->stream);
}

/* ---- weights and matmul ------------------------------------------------- */

__global__ void k_to_bf16(__nv_bfloat16 *y, const float *x, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = __float2bfloat16(x[i]);
}

__global__ void k_rows_bf16(float *y, const __nv_bfloat16 *w, const int32_t *ids, int cols)
{
    const __nv_bfloat16 *row = w + (size_t)ids[blockIdx.x] * cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        y[(size_t)blockIdx.x * cols + j] = __bfloat162float(row[j]);
}

static sep_weight_t *cuda_weight_new(sep_backend_t *be, const float *host, int rows, int cols)
{
    cuda_backend_t *cb = CB(be);
    size_t n = (size_t)rows * cols;
    sep_weight_t *w = (sep_weight_t *)calloc(1, sizeof *w);
    float *stage = NULL;
    if (!w || cudaMalloc(&w->data, n * (cb->bf16 ? 2 : 4)) != cudaSuccess)
        goto fail;
    w->rows = rows;
    w->cols = cols;
    w->bf16 = cb->bf16;
    if (!cb->bf16) {
        cudaMemcpy(w->data, host, n * sizeof(float), cudaMemcpyHostToDevice);
        return w;
    }
    /* convert on the device, through an fp32 staging buffer */
    if (cudaMalloc(&stage, n * sizeof(float)) != cudaSuccess)
        goto fail;
    cudaMemcpy(stage, host, n * sizeof(float), cudaMemcpyHostToDevice);
    k_to_bf16<<<(unsigned)((n + 255) / 256), 256, 0, cb->stream>>>(
        (__nv_bfloat16 *)w->data, stage, n);
    cudaStreamSynchronize(cb->stream);
    cudaFree(stage);
    return w;
fail:
    if (w)
        cudaFree(w->data);
    free(w);
    return NULL;
}

static void cuda_weight_free(sep_backend_t *be, sep_weight_t *w)
{
    (void)be;
    if (w)
        cudaFree(w->data);
    free(w);
}

__global__ void k_bias_rows(float *y, const float *bias, int n, int d)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)n * d)
        y[i] = bias[i % d];
}

static void cuda_matmul(sep_backend_t *be, float *y, const float *x, const sep_weight_t *w,
                        const float *bias, int n)
{
    cuda_backend_t *cb = CB(be);
    int d_in = w->cols, d_out = w->rows;
    float one = 1.0f, beta = 0.0f;
    if (n <= 0)
        return;
    if (bias) {
        size_t total = (size_t)n * d_out;
        k_bias_rows<<<(unsigned)((total + 255) / 256), 256, 0, cb->stream>>>(y, bias, n, d_out);
        beta = 1.0f;
    }
    /* row-major y = x w^T is column-major y^T = w x^T */
    if (!w->bf16) {
        cublasSgemm(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, d_out, n, d_in, &one,
                    (const float *)w->data, d_in, x, d_in, &beta, y, d_out);
        return;
    }
    size_t nx = (size_t)n * d_in;
    k_to_bf16<<<(unsigned)((nx + 255) / 256), 256, 0, cb->stream>>>(cb->d_xb, x, nx);
    cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, d_out, n, d_in, &one, w->data,
                 CUDA_R_16BF, d_in, cb->d_xb, CUDA_R_16BF, d_in, &beta, y, CUDA_R_32F, d_out,
                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

static void cuda_weight_rows(sep_backend_t *be, float *y, const sep_weight_t *w,
                             const int32_t *ids, int n)
{
    cuda_backend_t *cb = CB(be);
    if (n <= 0)
        return;
    if (!w->bf16) {
        cuda_gather_rows(be, y, (const float *)w->data, ids, n, w->cols);
        return;
    }
    k_rows_bf16<<<n, 256, 0, cb->stream>>>(y, (const __nv_bfloat16 *)w->data,
                                           cuda_stage_ids(cb, ids, n), w->cols);
}

/* ---- norms, rope, elementwise -------------------------------------------- */

struct op_sum {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct op_max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
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

__global__ void k_rmsnorm(float *y, const float *x, const float *w, int d, float eps)
{
    const float *xi = x + (size_t)blockIdx.x * d;
    float *yi = y + (size_t)blockIdx.x * d;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        ss += xi[j] * xi[j];
    float r = rsqrtf(block_sum(ss) / d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        yi[j] = xi[j] * r * w[j];
}

__global__ void k_layernorm(float *y, const float *x, const float *w, const float *b, int d,
                            float eps)
{
    const float *xi = x + (size_t)blockIdx.x * d;
    float *yi = y + (size_t)blockIdx.x * d;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        s += xi[j];
    float mean = block_sum(s) / d, ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        ss += (xi[j] - mean) * (xi[j] - mean);
    float r = rsqrtf(block_sum(ss) / d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x)
        yi[j] = (xi[j] - mean) * r * w[j] + b[j];
}

static void cuda_rmsnorm(sep_backend_t *be, float *y, const float *x, const float *w, int n,
                         int d, float eps)
{
    if (n > 0)
        k_rmsnorm<<<n, 256, 0, CB(be)->stream>>>(y, x, w, d, eps);
}

static void cuda_layernorm(sep_backend_t *be, float *y, const float *x, const float *w,
                           const float *b, int n, int d, float eps)
{
    if (n > 0)
        k_layernorm<<<n, 256, 0, CB(be)->stream>>>(y, x, w, b, d, eps);
}

__global__ void k_rope(float *x, int n, int stride, int n_heads, int head_dim, int rot_dim,
                       const float *cs)
{
    int half = rot_dim / 2;
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (size_t)n * n_heads * half)
        return;
    int j = (int)(t % half), h = (int)(t / half % n_heads), i = (int)(t / half / n_heads);
    float *v = x + (size_t)i * stride + (size_t)h * head_dim;
    float c = cs[(size_t)i * rot_dim + j], s = cs[(size_t)i * rot_dim + half + j];
    float a = v[j], b = v[j + half];
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
}

static void cuda_rope(sep_backend_t *be, float *x, int n, int stride, int n_heads,
                      int head_dim, int rot_dim, const float *cs)
{
    size_t total = (size_t)n * n_heads * (rot_dim / 2);
    if (total)
        k_rope<<<(unsigned)((total + 255) / 256), 256, 0, CB(be)->stream>>>(
            x, n, stride, n_heads, head_dim, rot_dim, cs);
}

__global__ void k_add(float *x, const float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += y[i];
}

__global__ void k_silu_mul(float *y, const float *gu, int n, int d)
{
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (size_t)n * d)
        return;
    size_t i = t / d, j = t % d;
    float g = gu[i * 2 * d + j], u = gu[i * 2 * d + d + j];
    y[t] = g / (1.0f + expf(-g)) * u;
}

__global__ void k_gelu(float *x, size_t n, int tanh_approx)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    float v = x[i];
    x[i] = tanh_approx
        ? 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)))
        : 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
}

static void cuda_add(sep_backend_t *be, float *x, const float *y, size_t n)
{
    if (n)
        k_add<<<(unsigned)((n + 255) / 256), 256, 0, CB(be)->stream>>>(x, y, n);
}

static void cuda_silu_mul(sep_backend_t *be, float *y, const float *gu, int n, int d)
{
    size_t total = (size_t)n * d;
    if (total)
        k_silu_mul<<<(unsigned)((total + 255) / 256), 256, 0, CB(be)->stream>>>(y, gu, n, d);
}

static void cuda_gelu(sep_backend_t *be, float *x, size_t n, int tanh_approx)
{
    if (n)
        k_gelu<<<(unsigned)((n + 255) / 256), 256, 0, CB(be)->stream>>>(x, n, tanh_approx);
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

typedef struct {
    sep_attn_t p[ATTN_MAX_PROBS];
    int n;
} attn_batch_t;

__global__ void k_attention(const attn_batch_t batch, int n_heads, int group, int head_dim,
                            int qt, float scale)
{
    extern __shared__ float sh[];
    const sep_attn_t *p = &batch.p[blockIdx.z];
    int kvh = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n_rows = qt * group, pad = head_dim + 1; /* padded rows: no bank conflicts */
    float *ks = sh, *vs = ks + ATTN_KT * pad, *qs = vs + ATTN_KT * head_dim;
    int q0 = blockIdx.x * qt;
    if (q0 >= p->n_q)
        return;
    int kv_dim = n_heads / group * head_dim;
    int row_i = q0 + warp / group, h = kvh * group + warp % group;
    int active = warp < n_rows && row_i < p->n_q;
    float *q = qs + warp * head_dim;
    if (active)
        for (int d = lane; d < head_dim; d += 32)
            q[d] = p->q[(size_t)row_i * p->q_stride + (size_t)h * head_dim + d] * scale;
    float acc[8], mx = -INFINITY, sum = 0.0f;
    for (int r = 0; r < 8; r++)
        acc[r] = 0.0f;
    int last_q = q0 + qt - 1 < p->n_q - 1 ? q0 + qt - 1 : p->n_q - 1;
    int n_keys = p->n_past + last_q + 1;         /* the tile's longest row */
    int my_keys = active ? p->n_past + row_i + 1 : 0;
    for (int t0 = 0; t0 < n_keys; t0 += ATTN_KT) {
        __syncthreads();
        for (int e = threadIdx.x; e < ATTN_KT * head_dim; e += blockDim.x) {
            int j = e / head_dim, d = e % head_dim, t = t0 + j;
            size_t at = (size_t)t * kv_dim + (size_t)kvh * head_dim + d;
            ks[j * pad + d] = t < n_keys ? p->k[at] : 0.0f;
            vs[j * head_dim + d] = t < n_keys ? p->v[at] : 0.0f;
        }
        __syncthreads();
        if (!active || t0 >= my_keys)
            continue;
        float s = -INFINITY;
        if (t0 + lane < my_keys) {
            s = 0.0f;
            for (int d = 0; d < head_dim; d++)
                s += q[d] * ks[lane * pad + d];
        }
        float tmax = s;
        for (int o = 16; o > 0; o >>= 1)
            tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
        float nm = fmaxf(mx, tmax), corr = expf(mx - nm);
        float e = t0 + lane < my_keys ? expf(s - nm) : 0.0f, es = e;
        for (int o = 16; o > 0; o >>= 1)
            es += __shfl_xor_sync(0xffffffffu, es, o);
        sum = sum * corr + es;
        for (int r = 0; r < 8; r++)
            acc[r] *= corr;
        int kn = my_keys - t0 < ATTN_KT ? my_keys - t0 : ATTN_KT;
        for (int j = 0; j < kn; j++) {
            float pj = __shfl_sync(0xffffffffu, e, j);
            for (int r = 0; r < 8; r++)
                if (lane + 32 * r < head_dim)
                    acc[r] += pj * vs[j * head_dim + lane + 32 * r];
        }
        mx = nm;
    }
    if (!active)
        return;
    float *out = p->out + (size_t)row_i * p->out_stride + (size_t)h * head_dim;
    for (int r = 0; r < 8; r++)
        if (lane + 32 * r < head_dim)
            out[lane + 32 * r] = acc[r] / sum;
}

static int cuda_reserve(sep_backend_t *be, int max_keys, int max_rows, int max_width)
{
    cuda_backend_t *cb = CB(be);
    (void)max_keys; /* scores never leave registers: nothing grows with keys */
    size_t rows = (size_t)(max_rows > 0 ? max_rows : 1);
    if (4 * rows > cb->ring_len) {
        /* the ring holds several calls' indices before it wraps */
        size_t len = 4 * rows > ((size_t)1 << 20) ? 4 * rows : ((size_t)1 << 20);
        int32_t *d = NULL, *h = NULL;
        if (cudaMalloc(&d, len * sizeof *d) != cudaSuccess ||
            cudaMallocHost(&h, len * sizeof *h) != cudaSuccess) {
            cudaFree(d);
            return sep_fail(SEP_ENOMEM, "cuda: no memory for %zu staged indices", len);
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
        cuda_grow(cb, (void **)&cb->d_nll, &cb->nll_cap, rows * sizeof(float)) ||
        (cb->bf16 && cuda_grow(cb, (void **)&cb->d_xb, &cb->xb_cap,
                               rows * max_width * sizeof(__nv_bfloat16))))
        return sep_fail(SEP_ENOMEM, "cuda: no device memory for %zu rows of scratch", rows);
    if (rows * sizeof(float) > cb->h_nll_cap) {
        float *h = (float *)realloc(cb->h_nll, rows * sizeof(float));
        if (!h)
            return sep_fail(SEP_ENOMEM, "cuda: out of memory");
        cb->h_nll = h;
        cb->h_nll_cap = rows * sizeof(float);
    }
    return SEP_OK;
}

static int cuda_sync(sep_backend_t *be)
{
    cudaError_t e = cudaStreamSynchronize(CB(be)->stream);
    if (e == cudaSuccess)
        e = cudaGetLastError();
    return e == cudaSuccess ? SEP_OK : sep_fail(SEP_EIO, "cuda: %s", cudaGetErrorString(e));
}

/* Attention on the tensor cores (bf16 mode): a block per (problem, KV
 * head, tile of TC_ROWS rows), a row being a (query, query head of the
 * group) pair, so a GQA group shares every K/V tile. Per tile of TC_KT
 * keys: S = Q K^T and P V on bf16 fragments with fp32 accumulation, an
 * online softmax in between, the output kept in fp32 in shared memory. */
#define TC_ROWS 16
#define TC_KT 64
#define TC_WARPS 4

static size_t tc_shared_bytes(int head_dim)
{
    int ld = head_dim + 8;
    return (size_t)(TC_ROWS + 2 * TC_KT) * ld * 2 + (size_t)TC_ROWS * (TC_KT + 4) * 4 +
           (size_t)TC_ROWS * (TC_KT + 8) * 2 + (size_t)2 * TC_ROWS * (head_dim + 4) * 4 +
           (size_t)3 * TC_ROWS * 4;
}

/* c(16x16, row-major, ldc) := a(16 x k_len, row-major) b(k_len x 16): one
 * warp on bf16 fragments; b advances b_step elements per unit of k (1
 * for a column-major b, ldb for a row-major one). */
template <typename BLayout>
__device__ void tc_tile(float *c, int ldc, const __nv_bfloat16 *a, int lda,
                        const __nv_bfloat16 *b, int ldb, int b_step, int k_len)
{
    using namespace nvcuda;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < k_len; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, BLayout> fb;
        wmma::load_matrix_sync(fa, a + k, lda);
        wmma::load_matrix_sync(fb, b + (size_t)k * b_step, ldb);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c, acc, ldc, wmma::mem_row_major);
}

__global__ void k_attention_tc(const attn_batch_t batch, int n_heads, int group, int head_dim,
                               float scale)
{
    using namespace nvcuda;
    extern __shared__ __align__(32) unsigned char smem[];
    const sep_attn_t *p = &batch.p[blockIdx.z];
    int kvh = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row0 = blockIdx.x * TC_ROWS;
    if (row0 >= p->n_q * group)
        return;
    int ld = head_dim + 8, lds = TC_KT + 4, ldp = TC_KT + 8, ldo = head_dim + 4;
    __nv_bfloat16 *qs = (__nv_bfloat16 *)smem, *ks = qs + TC_ROWS * ld, *vs = ks + TC_KT * ld;
    float *ss = (float *)(vs + TC_KT * ld);
    __nv_bfloat16 *ps = (__nv_bfloat16 *)(ss + TC_ROWS * lds);
    float *os = (float *)(ps + TC_ROWS * ldp), *pv = os + TC_ROWS * ldo;
    float *rm = pv + TC_ROWS * ldo, *rl = rm + TC_ROWS, *rc = rl + TC_ROWS;
    int kv_dim = n_heads / group * head_dim;

    for (int e = threadIdx.x; e < TC_ROWS * head_dim; e += blockDim.x) {
        int r = e / head_dim, d = e % head_dim, R = row0 + r, i = R / group;
        int h = kvh * group + R % group;
        float v = i < p->n_q ? p->q[(size_t)i * p->q_stride + (size_t)h * head_dim + d] * scale
                             : 0.0f;
        qs[r * ld + d] = __float2bfloat16(v);
        os[r * ldo + d] = 0.0f;
    }
    if (threadIdx.x < TC_ROWS) {
        rm[threadIdx.x] = -INFINITY;
        rl[threadIdx.x] = 0.0f;
    }
    int last_row = row0 + TC_ROWS - 1 < p->n_q * group - 1 ? row0 + TC_ROWS - 1
                                                          : p->n_q * group - 1;
    int n_keys = p->n_past + last_row / group + 1;
    for (int t0 = 0; t0 < n_keys; t0 += TC_KT) {
        __syncthreads();
        for (int e = threadIdx.x; e < TC_KT * head_dim; e += blockDim.x) {
            int j = e / head_dim, d = e % head_dim, t = t0 + j;
            size_t at = (size_t)t * kv_dim + (size_t)kvh * head_dim + d;
            ks[j * ld + d] = __float2bfloat16(t < n_keys ? p->k[at] : 0.0f);
            vs[j * ld + d] = __float2bfloat16(t < n_keys ? p->v[at] : 0.0f);
        }
        __syncthreads();
        /* S = Q K^T: warp w the keys [16w, 16w + 16) */
        for (int nt = warp; nt < TC_KT / 16; nt += TC_WARPS)
            tc_tile<wmma::col_major>(ss + nt * 16, lds, qs, ld, ks + nt * 16 * ld, ld, 1,
                                     head_dim);
        __syncthreads();
        /* online softmax: warp w the rows w, w + 4, ...; lane the keys
         * lane and lane + 32 */
        for (int r = warp; r < TC_ROWS; r += TC_WARPS) {
            int R = row0 + r, i = R / group;
            int keys = i < p->n_q ? p->n_past + i + 1 : 0; /* causal */
            float s0 = t0 + lane < keys ? ss[r * lds + lane] : -INFINITY;
            float s1 = t0 + lane + 32 < keys ? ss[r * lds + lane + 32] : -INFINITY;
            float mx = fmaxf(s0, s1);
            for (int o = 16; o > 0; o >>= 1)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float m_old = rm[r], m_new = fmaxf(m_old, mx);
            float e0 = 0.0f, e1 = 0.0f, corr = 1.0f;
            if (m_new != -INFINITY) {
                e0 = s0 == -INFINITY ? 0.0f : expf(s0 - m_new);
                e1 = s1 == -INFINITY ? 0.0f : expf(s1 - m_new);
                corr = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
            }
            ps[r * ldp + lane] = __float2bfloat16(e0);
            ps[r * ldp + lane + 32] = __float2bfloat16(e1);
            float sum = e0 + e1;
            for (int o = 16; o > 0; o >>= 1)
                sum += __shfl_xor_sync(0xffffffffu, sum, o);
            __syncwarp();
            if (lane == 0) {
                rl[r] = rl[r] * corr + sum;
                rm[r] = m_new;
                rc[r] = corr;
            }
        }
        __syncthreads();
        /* P V: warp w the dims [16n, 16n + 16) for n = w, w + 4, ... */
        for (int nt = warp; nt < head_dim / 16; nt += TC_WARPS)
            tc_tile<wmma::row_major>(pv + nt * 16, ldo, ps, ldp, vs + nt * 16, ld, ld, TC_KT);
        __syncthreads();
        for (int e = threadIdx.x; e < TC_ROWS * head_dim; e += blockDim.x) {
            int r = e / head_dim, d = e % head_dim;
            os[r * ldo + d] = os[r * ldo + d] * rc[r] + pv[r * ldo + d];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < TC_ROWS * head_dim; e += blockDim.x) {
        int r = e / head_dim, d = e % head_dim, R = row0 + r, i = R / group;
        if (i < p->n_q)
            p->out[(size_t)i * p->out_stride + (size_t)(kvh * group + R % group) * head_dim + d] =
                os[r * ldo + d] / rl[r];
    }
}

static void cuda_attention(sep_backend_t *be, const sep_attn_t *probs, int n_probs,
                           int n_heads, int n_kv_heads, int head_dim)
{
    /* head_dim <= max_head_dim: sep_model_load checks it */
    cuda_backend_t *cb = CB(be);
    int group = n_heads / n_kv_heads;
    int qt = ATTN_MAX_ROWS / group > 0 ? ATTN_MAX_ROWS / group : 1;
    size_t shared = ((size_t)ATTN_KT * (head_dim + 1) + (size_t)ATTN_KT * head_dim +
                     (size_t)qt * group * head_dim) * sizeof(float);
    /* problems travel in the launch parameters: no copy, no host wait */
    for (int at = 0; at < n_probs; at += ATTN_MAX_PROBS) {
        attn_batch_t batch;
        batch.n = n_probs - at < ATTN_MAX_PROBS ? n_probs - at : ATTN_MAX_PROBS;
        int max_q = 0;
        for (int i = 0; i < batch.n; i++) {
            batch.p[i] = probs[at + i];
            max_q = probs[at + i].n_q > max_q ? probs[at + i].n_q : max_q;
        }
        /* the tensor cores pay once a problem fills several row tiles;
         * one-token steps stay on the tiled kernel */
        if (cb->bf16 && head_dim % 16 == 0 && max_q * group >= 4 * TC_ROWS) {
            dim3 grid((max_q * group + TC_ROWS - 1) / TC_ROWS, n_kv_heads, batch.n);
            k_attention_tc<<<grid, 32 * TC_WARPS, tc_shared_bytes(head_dim), cb->stream>>>(
                batch, n_heads, group, head_dim, 1.0f / sqrtf((float)head_dim));
            continue;
        }
        dim3 grid((max_q + qt - 1) / qt, n_kv_heads, batch.n);
        k_attention<<<grid, 32 * qt * group, shared, cb->stream>>>(
            batch, n_heads, group, head_dim, qt, 1.0f / sqrtf((float)head_dim));
    }
}

/* ---- NLL ----------------------------------------------------------------- */

__global__ void k_nll(float *nll, const float *logits, const int32_t *target, int vocab)
{
    int i = blockIdx.x;
    if (target[i] < 0)
        return;
    const float *row = logits + (size_t)i * vocab;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        mx = fmaxf(mx, row[j]);
    mx = block_max(mx);
    float s = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        s += expf(row[j] - mx);
    s = block_sum(s);
    if (threadIdx.x == 0)
        nll[i] = mx + logf(s) - row[target[i]];
}

static void cuda_nll(sep_backend_t *be, float *nll, const float *logits,
                     const int32_t *target, int n, int vocab)
{
    cuda_backend_t *cb = CB(be);
    if (n <= 0)
        return;
    k_nll<<<n, 512, 0, cb->stream>>>(cb->d_nll, logits, cuda_stage_ids(cb, target, n), vocab);
    /* rows without a target keep the caller's value */
    cudaMemcpyAsync(cb->h_nll, cb->d_nll, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost,
                    cb->stream);
    cudaStreamSynchronize(cb->stream);
    for (int i = 0; i < n; i++)
        if (target[i] >= 0)
            nll[i] = cb->h_nll[i];
}

/* ---- life ------------------------------------------------------------------ */

static void cuda_destroy(sep_backend_t *be)
{
    cuda_backend_t *cb = CB(be);
    cudaFree(cb->d_ring);
    cudaFreeHost(cb->h_ring);
    cudaFree(cb->d_tmp);
    cudaFree(cb->d_nll);
    cudaFree(cb->d_xb);
    free(cb->h_nll);
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
    /* attention's shared memory at head_dim 256: above the 48 KB default */
    cudaFuncSetAttribute(k_attention, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024);
    cudaFuncSetAttribute(k_attention_tc, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         (int)tc_shared_bytes(256));
    be->name = bf16 ? "cuda (bf16)" : "cuda (fp32)";
    be->n_threads = 1;
    be->max_head_dim = 256;        /* 8 registers a lane in k_attention */
    be->max_group = ATTN_MAX_ROWS; /* a group's rows share one block */
    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->gather_rows = cuda_gather_rows;
    be->copy_rows = cuda_copy_rows;
    be->weight_new = cuda_weight_new;
    be->weight_free = cuda_weight_free;
    be->weight_rows = cuda_weight_rows;
    be->matmul = cuda_matmul;
    be->rmsnorm = cuda_rmsnorm;
    be->layernorm = cuda_layernorm;
    be->rope = cuda_rope;
    be->reserve = cuda_reserve;
    be->sync = cuda_sync;
    be->attention = cuda_attention;
    be->add = cuda_add;
    be->silu_mul = cuda_silu_mul;
    be->gelu = cuda_gelu;
    be->nll = cuda_nll;
    be->destroy = cuda_destroy;
    *out = be;
    return SEP_OK;
}
