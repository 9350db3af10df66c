/* model.c: weight loading and the forward pass of Llama-family and
 * GPT-NeoX decoders, written once against the backend interface. */
#include "model.h"
#include "err.h"
#include "grow.h"
#include "pick.h"
#include "safetensors.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rows of logits a block (the largest block within 256 MiB, at most 512):
 * the output product of many rows runs at the matrix units' rate. */
#define SEP_LOGIT_BYTES ((size_t)256 << 20)
#define SEP_LOGIT_MAX_ROWS 512

/* The most memory a round's prefix copies take (run_k and run_v), shared
 * evenly by the chunks of a batch: a run ends before a segment whose
 * prefix would pass its chunk's share (256 MiB: 32768 rows of an 8B
 * model, a StreamingLLM run of 8192 tokens for one stream, of 128 tokens
 * each for 64). The model's run.run_bytes, which tests may lower. */
#define SEP_RUN_BYTES ((size_t)256 << 20)

/* ---- loading ----------------------------------------------------------
 * Matrices go to the backend as the checkpoint stores them: each tensor
 * is read (sep_st_read) into the backend's stage buffers a piece at a
 * time and handed to weight_fill, which converts it on the device while
 * the next piece is read. Vectors (norms, biases) are converted here. */

typedef struct {
    const sep_st_t *st;
    sep_model_t *m;
    float *stage;      /* host buffer of stage_len floats: vectors; synthetic matrices */
    size_t stage_len;
    uint64_t bytes;    /* checkpoint bytes read */
    char name[256];
} loader_t;

/* Synthetic weights: vectors (norms, biases) of ones, matrices small and
 * uniform, so activations stay finite at any depth; seed places the
 * values (an offset into the fused matrix). */
static void loader_synth(float *dst, size_t seed, int64_t rows, int64_t cols)
{
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        uint32_t h = (uint32_t)(i + seed) * 2654435761u ^ (uint32_t)(rows * 40503u + cols);
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        dst[i] = cols ? ((float)(h & 0xffff) / 32768.0f - 1.0f) * 0.02f : 1.0f;
    }
}

/* Read tensor `name` of shape (rows, cols) (cols 0: 1-D of rows) as fp32
 * into the staging buffer at float offset off. */
static int loader_read(loader_t *ld, size_t off, const char *name, int64_t rows, int64_t cols)
{
    int64_t shape[2] = { rows, cols };
    if (!ld->st) {
        loader_synth(ld->stage + off, off, rows, cols);
        return SEP_OK;
    }
    int rc = sep_st_read_f32(ld->st, name, cols ? 2 : 1, shape, ld->stage + off);
    if (!rc)
        ld->bytes += sep_st_find(ld->st, name)->nbytes;
    return rc;
}

/* Place the first n staged floats in a new backend buffer *dst. */
static int loader_place(loader_t *ld, float **dst, size_t n)
{
    sep_backend_t *be = ld->m->be;
    *dst = be->alloc(be, n * sizeof(float));
    if (!*dst)
        return sep_fail(SEP_ENOMEM, "%s: no %s memory for %zu weights",
                        ld->name, be->name, n);
    be->upload(be, *dst, ld->stage, n * sizeof(float));
    return SEP_OK;
}

/* A new (rows, cols) weight *dst for fills. */
static int loader_alloc(loader_t *ld, sep_weight_t **dst, const char *name, int rows, int cols)
{
    sep_backend_t *be = ld->m->be;
    snprintf(ld->name, sizeof ld->name, "%s", name);
    *dst = be->weight_alloc(be, rows, cols);
    if (!*dst)
        return sep_fail(SEP_ENOMEM, "%s: no %s memory for a %dx%d weight",
                        ld->name, be->name, rows, cols);
    return SEP_OK;
}

/* A stage buffer of up to *bytes bytes (*bytes := what it holds). */
static void *loader_stage(loader_t *ld, size_t *bytes)
{
    sep_backend_t *be = ld->m->be;
    size_t want = *bytes;
    void *buf = be->stage(be, bytes);
    if (!buf)
        sep_fail(SEP_ENOMEM, "%s: no %s memory to stage %zu bytes", ld->name, be->name, want);
    return buf;
}

/* Elements [at, at + rows * cols) of w := tensor `name` (rows, cols),
 * streamed through the stage buffers. */
static int loader_fill(loader_t *ld, sep_weight_t *w, size_t at, const char *name, int64_t rows,
                       int64_t cols)
{
    sep_backend_t *be = ld->m->be;
    size_t n = (size_t)rows * (size_t)cols;
    snprintf(ld->name, sizeof ld->name, "%s", name);
    if (!ld->st) {
        loader_synth(ld->stage, at, rows, cols);
        return be->weight_fill(be, w, at, ld->stage, n, SEP_ELEM_F32);
    }
    const sep_tensor_t *t;
    sep_elem_t e;
    int rc = sep_st_get(ld->st, name, 2, (int64_t[]){ rows, cols }, &t, &e);
    if (rc)
        return rc;
    size_t esz = sep_elem_size(e);
    for (size_t done = 0; !rc && done < n;) {
        size_t bytes = (n - done) * esz;
        void *buf = loader_stage(ld, &bytes);
        size_t k = bytes / esz;
        if (!buf)
            return SEP_ENOMEM;
        if (!(rc = sep_st_read(ld->st, t, done * esz, k * esz, buf)))
            rc = be->weight_fill(be, w, at + done, buf, k, e);
        done += k;
    }
    if (!rc)
        ld->bytes += t->nbytes;
    return rc;
}

/* A 1-D tensor (norm weight, bias) straight to the backend. */
static int loader_vector(loader_t *ld, float **dst, const char *name, int64_t n)
{
    snprintf(ld->name, sizeof ld->name, "%s", name);
    int rc = loader_read(ld, 0, name, n, 0);
    return rc ? rc : loader_place(ld, dst, (size_t)n);
}

/* A 2-D tensor straight to a weight. */
static int loader_matrix(loader_t *ld, sep_weight_t **dst, const char *name, int rows, int cols)
{
    int rc = loader_alloc(ld, dst, name, rows, cols);
    return rc ? rc : loader_fill(ld, *dst, 0, name, rows, cols);
}

static int load_llama_layer(loader_t *ld, int l, sep_layer_t *L)
{
    const sep_config_t *c = &ld->m->cfg;
    const char *prefix = "model.layers.";
    int q = ld->m->q_dim, kv = ld->m->kv_dim, d = c->dim, f = c->ffn_dim;
    int rc;
    char nm[256];
#define V(dst, suffix, n) \
    do { snprintf(nm, sizeof nm, "%s%d.%s", prefix, l, suffix); \
         if ((rc = loader_vector(ld, dst, nm, n))) return rc; } while (0)
#define M(dst, suffix, rows, cols) \
    do { snprintf(nm, sizeof nm, "%s%d.%s", prefix, l, suffix); \
         if ((rc = loader_matrix(ld, dst, nm, rows, cols))) return rc; } while (0)
#define R(off, suffix, rows, cols) \
    do { snprintf(nm, sizeof nm, "%s%d.%s", prefix, l, suffix); \
         if ((rc = loader_read(ld, off, nm, rows, cols))) return rc; } while (0)
#define A(dst, suffix, rows, cols) \
    do { snprintf(nm, sizeof nm, "%s%d.%s", prefix, l, suffix); \
         if ((rc = loader_alloc(ld, dst, nm, rows, cols))) return rc; } while (0)
#define F(w, at, suffix, rows, cols) \
    do { snprintf(nm, sizeof nm, "%s%d.%s", prefix, l, suffix); \
         if ((rc = loader_fill(ld, w, at, nm, rows, cols))) return rc; } while (0)
    V(&L->norm1_w, "input_layernorm.weight", d);
    V(&L->norm2_w, "post_attention_layernorm.weight", d);
    /* fused: q rows, then k, then v; gate rows, then up */
    A(&L->wqkv, "self_attn.qkv", q + 2 * kv, d);
    F(L->wqkv, 0, "self_attn.q_proj.weight", q, d);
    F(L->wqkv, (size_t)q * d, "self_attn.k_proj.weight", kv, d);
    F(L->wqkv, (size_t)(q + kv) * d, "self_attn.v_proj.weight", kv, d);
    if (c->qkv_bias) {
        R(0, "self_attn.q_proj.bias", q, 0);
        R(q, "self_attn.k_proj.bias", kv, 0);
        R(q + kv, "self_attn.v_proj.bias", kv, 0);
        if ((rc = loader_place(ld, &L->bqkv, (size_t)q + 2 * kv)))
            return rc;
    }
    M(&L->wo, "self_attn.o_proj.weight", d, q);
    if (c->o_bias)
        V(&L->bo, "self_attn.o_proj.bias", d);
    A(&L->w_up, "mlp.gate_up", 2 * f, d);
    F(L->w_up, 0, "mlp.gate_proj.weight", f, d);
    F(L->w_up, (size_t)f * d, "mlp.up_proj.weight", f, d);
    M(&L->w_down, "mlp.down_proj.weight", d, f);
    if (c->mlp_bias) {
        R(0, "mlp.gate_proj.bias", f, 0);
        R(f, "mlp.up_proj.bias", f, 0);
        if ((rc = loader_place(ld, &L->b_up, (size_t)2 * f)))
            return rc;
        V(&L->b_down, "mlp.down_proj.bias", d);
    }
    return SEP_OK;
#undef A
#undef F
}

/* NeoX fuses q, k, v per head: rows [h*3*hd, +hd) are q of head h, then
 * k, then v. Reorder to all q rows, then all k, then all v, as for llama,
 * so both architectures share one forward pass. */
static void neox_unfuse_qkv(float *dst, const float *src, int n_heads, int head_dim, int cols)
{
    int q_dim = n_heads * head_dim;
    for (int h = 0; h < n_heads; h++)
        for (int part = 0; part < 3; part++)
            memcpy(dst + ((size_t)part * q_dim + (size_t)h * head_dim) * cols,
                   src + ((size_t)h * 3 + part) * head_dim * cols,
                   (size_t)head_dim * cols * sizeof(float));
}

/* The same reordering for the fused weight: heads [h0, h1) of it, as
 * stored (format e) at src, into their rows of w. */
static int neox_fill_heads(loader_t *ld, sep_weight_t *w, int h0, int h1, const void *src,
                           sep_elem_t e)
{
    sep_backend_t *be = ld->m->be;
    const sep_config_t *c = &ld->m->cfg;
    size_t part = (size_t)c->head_dim * c->dim, q_part = (size_t)c->n_heads * part;
    for (int h = h0; h < h1; h++)
        for (int p = 0; p < 3; p++) {
            const uint8_t *at = (const uint8_t *)src +
                                ((size_t)(h - h0) * 3 + p) * part * sep_elem_size(e);
            int rc = be->weight_fill(be, w, p * q_part + h * part, at, part, e);
            if (rc)
                return rc;
        }
    return SEP_OK;
}

/* NeoX's fused qkv weight `name` into w, whole heads through each stage
 * buffer. */
static int neox_fill_qkv(loader_t *ld, sep_weight_t *w, const char *name)
{
    const sep_config_t *c = &ld->m->cfg;
    int qkv = ld->m->qkv_dim, rc;
    snprintf(ld->name, sizeof ld->name, "%s", name);
    if (!ld->st) {
        loader_synth(ld->stage, 0, qkv, c->dim);
        return neox_fill_heads(ld, w, 0, c->n_heads, ld->stage, SEP_ELEM_F32);
    }
    const sep_tensor_t *t;
    sep_elem_t e;
    if ((rc = sep_st_get(ld->st, name, 2, (int64_t[]){ qkv, c->dim }, &t, &e)))
        return rc;
    size_t head = 3 * (size_t)c->head_dim * c->dim * sep_elem_size(e); /* bytes a head */
    for (int h = 0; !rc && h < c->n_heads;) {
        size_t bytes = (size_t)(c->n_heads - h) * head;
        void *buf = loader_stage(ld, &bytes);
        int k = (int)(bytes / head);
        if (!buf)
            return SEP_ENOMEM;
        if (!k)
            return sep_fail(SEP_EUNSUPPORTED, "%s: a head's %zu bytes exceed the %zu-byte "
                            "stage buffer", name, head, bytes);
        if (!(rc = sep_st_read(ld->st, t, (size_t)h * head, (size_t)k * head, buf)))
            rc = neox_fill_heads(ld, w, h, h + k, buf, e);
        h += k;
    }
    if (!rc)
        ld->bytes += t->nbytes;
    return rc;
}

static int load_neox_layer(loader_t *ld, int l, sep_layer_t *L)
{
    const sep_config_t *c = &ld->m->cfg;
    const char *prefix = "gpt_neox.layers.";
    int d = c->dim, f = c->ffn_dim, qkv = ld->m->qkv_dim;
    size_t half = ld->stage_len / 2;
    int rc;
    char nm[256];
    V(&L->norm1_w, "input_layernorm.weight", d);
    V(&L->norm1_b, "input_layernorm.bias", d);
    V(&L->norm2_w, "post_attention_layernorm.weight", d);
    V(&L->norm2_b, "post_attention_layernorm.bias", d);
    snprintf(nm, sizeof nm, "%s%d.attention.query_key_value.weight", prefix, l);
    if ((rc = loader_alloc(ld, &L->wqkv, nm, qkv, d)) || (rc = neox_fill_qkv(ld, L->wqkv, nm)))
        return rc;
    /* the bias: read into the upper half of the stage, unfuse into the lower */
    R(half, "attention.query_key_value.bias", qkv, 0);
    neox_unfuse_qkv(ld->stage, ld->stage + half, c->n_heads, c->head_dim, 1);
    if ((rc = loader_place(ld, &L->bqkv, (size_t)qkv)))
        return rc;
    M(&L->wo, "attention.dense.weight", d, d);
    V(&L->bo, "attention.dense.bias", d);
    M(&L->w_up, "mlp.dense_h_to_4h.weight", f, d);
    V(&L->b_up, "mlp.dense_h_to_4h.bias", f);
    M(&L->w_down, "mlp.dense_4h_to_h.weight", d, f);
    V(&L->b_down, "mlp.dense_4h_to_h.bias", d);
    return SEP_OK;
#undef V
#undef M
#undef R
}

static int model_alloc_run(sep_model_t *m, int max_tokens)
{
    sep_backend_t *be = m->be;
    sep_run_t *r = &m->run;
    const sep_config_t *c = &m->cfg;
    size_t t = (size_t)max_tokens;
    int last = m->layer1 == c->n_layers;
    r->max_tokens = max_tokens;
    r->run_bytes = SEP_RUN_BYTES;
    size_t fit = SEP_LOGIT_BYTES / ((size_t)c->vocab * sizeof(float));
    r->logit_rows = fit < 1 ? 1 : fit > SEP_LOGIT_MAX_ROWS ? SEP_LOGIT_MAX_ROWS : (int)fit;
    r->x = be->alloc(be, t * c->dim * sizeof(float));
    r->h = be->alloc(be, t * c->dim * sizeof(float));
    r->o = be->alloc(be, t * c->dim * sizeof(float));
    r->qkv = be->alloc(be, t * m->qkv_dim * sizeof(float));
    r->att = be->alloc(be, t * m->q_dim * sizeof(float));
    r->ff = be->alloc(be, t * 2 * c->ffn_dim * sizeof(float));
    r->act = be->alloc(be, t * c->ffn_dim * sizeof(float));
    /* only the last stage computes logits */
    if (last)
        r->logits = be->alloc(be, (size_t)r->logit_rows * c->vocab * sizeof(float));
    r->cs = be->alloc(be, t * c->rot_dim * sizeof(float));
    r->k_raw = be->alloc(be, t * m->kv_dim * sizeof(float));
    r->pos = malloc(t * sizeof *r->pos);
    r->rows = malloc(t * sizeof(int32_t));
    r->nll = malloc((size_t)r->logit_rows * sizeof(float));
    r->next = malloc((size_t)r->logit_rows * sizeof(int32_t));
    r->picks = malloc((size_t)r->logit_rows * sizeof *r->picks);
    if (!r->x || !r->h || !r->o || !r->qkv || !r->att || !r->ff || !r->act ||
        (last && !r->logits) || !r->cs || !r->k_raw || !r->pos || !r->rows || !r->nll ||
        !r->next || !r->picks)
        return sep_fail(SEP_ENOMEM, "model: no memory for a forward of %d tokens", max_tokens);
    return SEP_OK;
}

/* Build the stage [layer0, layer1) of m (its config set) from st, or
 * from random weights when st is NULL (synthetic shapes); what names the
 * model in messages. */
static int model_build(sep_model_t *m, const sep_st_t *st, const char *what, int max_tokens,
                       int layer0, int layer1)
{
    const sep_config_t *c = &m->cfg;
    sep_backend_t *be = m->be;
    loader_t ld = { 0 };
    int rc;
    if (layer0 < 0 || layer0 >= layer1 || layer1 > c->n_layers)
        return sep_fail(SEP_EINVAL, "%s: stage layers [%d, %d): want 0 <= layer0 < layer1 <= %d",
                        what, layer0, layer1, c->n_layers);
    m->layer0 = layer0;
    m->layer1 = layer1;
    int first = layer0 == 0, last = layer1 == c->n_layers;
    if (c->head_dim > be->max_head_dim)
        return sep_fail(SEP_EUNSUPPORTED, "%s: head_dim %d: the %s backend handles up to %d",
                        what, c->head_dim, be->name, be->max_head_dim);
    if (c->dim > be->max_dim)
        return sep_fail(SEP_EUNSUPPORTED, "%s: dim %d: the %s backend handles up to %d",
                        what, c->dim, be->name, be->max_dim);
    if (c->n_heads / c->n_kv_heads > be->max_group)
        return sep_fail(SEP_EUNSUPPORTED, "%s: %d query heads per KV head: the %s backend "
                        "handles up to %d", what, c->n_heads / c->n_kv_heads, be->name,
                        be->max_group);
    m->q_dim = c->n_heads * c->head_dim;
    m->kv_dim = c->n_kv_heads * c->head_dim;
    m->qkv_dim = m->q_dim + 2 * m->kv_dim;
    m->layers = calloc((size_t)(layer1 - layer0), sizeof *m->layers);
    m->inv_freq = malloc((size_t)c->rot_dim / 2 * sizeof(double));
    /* the largest staged vector: fused biases (twice for NeoX's unfusing);
     * synthetic weights also stage the largest matrix: embeddings (first
     * and last stages), fused qkv or mlp, whichever is largest */
    size_t big = 2 * (size_t)(m->qkv_dim > c->ffn_dim ? m->qkv_dim : c->ffn_dim);
    big = big > (size_t)c->dim ? big : (size_t)c->dim;
    if (!st) {
        size_t emb = first || last ? (size_t)c->vocab * c->dim : 0;
        size_t qkv = (size_t)m->qkv_dim * c->dim, mlp = (size_t)2 * c->ffn_dim * c->dim;
        size_t ow = (size_t)c->dim * m->q_dim;
        big = big > emb ? big : emb;
        big = big > qkv ? big : qkv;
        big = big > mlp ? big : mlp;
        big = big > ow ? big : ow;
    }
    ld.stage_len = big;
    ld.stage = malloc(big * sizeof(float));
    ld.st = st;
    ld.m = m;
    if (!m->layers || !m->inv_freq || !ld.stage) {
        rc = sep_fail(SEP_ENOMEM, "%s: out of memory loading the model", what);
        goto done;
    }
    sep_config_rope_freqs(c, m->inv_freq);
    int neox = c->arch == SEP_ARCH_NEOX;
    const char *embed = neox ? "gpt_neox.embed_in.weight" : "model.embed_tokens.weight";
    if (first && (rc = loader_matrix(&ld, &m->embed, embed, c->vocab, c->dim)))
        goto done;
    for (int l = layer0; l < layer1; l++)
        if ((rc = neox ? load_neox_layer(&ld, l, &m->layers[l - layer0])
                       : load_llama_layer(&ld, l, &m->layers[l - layer0])))
            goto done;
    if (last) {
        if ((rc = loader_vector(&ld, &m->norm_w, neox ? "gpt_neox.final_layer_norm.weight"
                                                      : "model.norm.weight", c->dim)))
            goto done;
        if (neox &&
            (rc = loader_vector(&ld, &m->norm_b, "gpt_neox.final_layer_norm.bias", c->dim)))
            goto done;
        /* tied: a last stage without the embedding loads it as lm_head */
        if (c->tied_embeddings && first)
            m->lm_head = m->embed;
        else if ((rc = loader_matrix(&ld, &m->lm_head,
                                     c->tied_embeddings ? embed
                                     : neox             ? "embed_out.weight"
                                                        : "lm_head.weight",
                                     c->vocab, c->dim)))
            goto done;
    }
    rc = model_alloc_run(m, max_tokens);
done:
    /* the fills in flight end (and their stage buffers go) on failure too */
    if (ld.m) {
        int end = be->load_end(be);
        rc = rc ? rc : end;
    }
    m->load_bytes = ld.bytes;
    free(ld.stage);
    return rc;
}

static int model_new(sep_model_t **m, sep_backend_t *be, int max_tokens)
{
    if (max_tokens < 1 || max_tokens > (1 << 20))
        return sep_fail(SEP_EINVAL, "model: max_tokens %d outside 1..%d", max_tokens, 1 << 20);
    if (!(*m = calloc(1, sizeof **m)))
        return sep_fail(SEP_ENOMEM, "model: out of memory");
    (*m)->be = be;
    return SEP_OK;
}

int sep_model_load(sep_model_t **out, const char *dir, sep_backend_t *be, int max_tokens)
{
    *out = NULL;
    sep_config_t cfg;
    int rc = sep_config_load(&cfg, dir);
    return rc ? rc : sep_model_load_stage(out, dir, be, max_tokens, 0, cfg.n_layers);
}

int sep_model_load_stage(sep_model_t **out, const char *dir, sep_backend_t *be, int max_tokens,
                         int layer0, int layer1)
{
    *out = NULL;
    sep_st_t *st = NULL;
    sep_model_t *m = NULL;
    char what[600];
    snprintf(what, sizeof what, "%s/config.json", dir);
    double t0 = sep_now();
    int rc = model_new(&m, be, max_tokens);
    if (rc || (rc = sep_config_load(&m->cfg, dir)) || (rc = sep_st_open(&st, dir)) ||
        (rc = model_build(m, st, what, max_tokens, layer0, layer1)))
        sep_model_destroy(&m);
    sep_st_destroy(&st);
    if (m)
        m->load_s = sep_now() - t0;
    *out = m;
    return rc;
}

/* Shapes of public checkpoints, for benchmarks at full size. */
static const struct {
    const char *name;
    sep_config_t cfg;
} synthetic[] = {
    { "llama3-8b", { .arch = SEP_ARCH_LLAMA, .arch_name = "LlamaForCausalLM", .n_layers = 32,
                     .dim = 4096, .n_heads = 32, .n_kv_heads = 8, .head_dim = 128,
                     .ffn_dim = 14336, .vocab = 128256, .max_pos = 8192, .norm_eps = 1e-5f,
                     .act = SEP_ACT_SILU, .rot_dim = 128, .rope_theta = 500000.0 } },
    { "pythia-6.9b", { .arch = SEP_ARCH_NEOX, .arch_name = "GPTNeoXForCausalLM", .n_layers = 32,
                       .dim = 4096, .n_heads = 32, .n_kv_heads = 32, .head_dim = 128,
                       .ffn_dim = 16384, .vocab = 50432, .max_pos = 2048, .norm_eps = 1e-5f,
                       .act = SEP_ACT_GELU, .qkv_bias = 1, .o_bias = 1, .mlp_bias = 1,
                       .parallel_residual = 1, .rot_dim = 32, .rope_theta = 10000.0 } },
    { "llama-70b-layer", { .arch = SEP_ARCH_LLAMA, .arch_name = "LlamaForCausalLM",
                           .n_layers = 80, .dim = 8192, .n_heads = 64, .n_kv_heads = 8,
                           .head_dim = 128, .ffn_dim = 28672, .vocab = 128256, .max_pos = 8192,
                           .norm_eps = 1e-5f, .act = SEP_ACT_SILU, .rot_dim = 128,
                           .rope_theta = 500000.0 } },
};

/* The config of a synthetic shape, NULL for an unknown name. */
static const sep_config_t *synthetic_config(const char *shape)
{
    for (size_t i = 0; i < sizeof synthetic / sizeof synthetic[0]; i++)
        if (strcmp(shape, synthetic[i].name) == 0)
            return &synthetic[i].cfg;
    return NULL;
}

int sep_model_synthetic(sep_model_t **out, const char *shape, sep_backend_t *be, int max_tokens)
{
    const sep_config_t *c = synthetic_config(shape);
    /* an unknown shape fails in the stage call, naming the known ones */
    return sep_model_synthetic_stage(out, shape, be, max_tokens, 0, c ? c->n_layers : 1);
}

int sep_model_synthetic_stage(sep_model_t **out, const char *shape, sep_backend_t *be,
                              int max_tokens, int layer0, int layer1)
{
    *out = NULL;
    const sep_config_t *c = synthetic_config(shape);
    if (!c)
        return sep_fail(SEP_EINVAL, "synthetic '%s': expected llama3-8b, pythia-6.9b or "
                        "llama-70b-layer", shape);
    sep_model_t *m = NULL;
    char what[64];
    snprintf(what, sizeof what, "synthetic %s", shape);
    int rc = model_new(&m, be, max_tokens);
    if (!rc) {
        m->cfg = *c;
        rc = model_build(m, NULL, what, max_tokens, layer0, layer1);
    }
    if (rc)
        sep_model_destroy(&m);
    *out = m;
    return rc;
}

void sep_model_destroy(sep_model_t **self_p)
{
    sep_model_t *m = *self_p;
    if (!m)
        return;
    sep_backend_t *be = m->be;
    if (m->layers) {
        for (int l = 0; l < m->layer1 - m->layer0; l++) {
            sep_layer_t *L = &m->layers[l];
            float *v[] = { L->norm1_w, L->norm1_b, L->bqkv, L->bo,
                           L->norm2_w, L->norm2_b, L->b_up, L->b_down };
            for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
                be->free(be, v[i]);
            sep_weight_t *w[] = { L->wqkv, L->wo, L->w_up, L->w_down };
            for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
                be->weight_free(be, w[i]);
        }
    }
    if (m->lm_head != m->embed)
        be->weight_free(be, m->lm_head);
    be->weight_free(be, m->embed);
    be->free(be, m->norm_w);
    be->free(be, m->norm_b);
    sep_run_t *r = &m->run;
    float *bufs[] = { r->x, r->h, r->o, r->qkv, r->att, r->ff, r->act, r->logits, r->cs,
                      r->k_raw, r->pre_cs, r->arch_k, r->arch_v, r->run_k, r->run_v,
                      (float *)r->keys };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        be->free(be, bufs[i]);
    for (int i = 0; i < r->n_plans; i++)
        sep_plan_free(&r->plans[i]);
    free(r->plans);
    free(r->probs);
    free(r->runs);
    free(r->keys_host);
    free(r->keys_at);
    free(r->keys_next);
    free(r->appends);
    free(r->gathers);
    free(r->rotations);
    free(r->arch_at);
    free(r->pre_at);
    free(r->pre_pos);
    free(r->evicted.chunk);
    free(r->evicted.pos);
    free(r->evicted.id);
    free(r->evicted.k);
    free(r->evicted.v);
    free(r->pos);
    free(r->rows);
    free(r->nll);
    free(r->next);
    free(r->picks);
    free(m->layers);
    free(m->inv_freq);
    free(m);
    *self_p = NULL;
}

int sep_model_cache_new(const sep_model_t *m, const sep_policy_t *policy, sep_cache_t **out)
{
    const sep_config_t *cfg = &m->cfg;
    *out = NULL;
    if (policy->method == SEP_METHOD_SEPLLM && policy->n_vocab < cfg->vocab)
        return sep_fail(SEP_EINVAL, "sepllm: separator set covers %d ids, the model has %d",
                        policy->n_vocab, cfg->vocab);
    if (!cfg->window)
        return sep_cache_new(out, m->be, m->layer1 - m->layer0, m->kv_dim, policy);
    /* A sliding window: a query of a sliding layer sees its window newest
     * keys. An evicting cache whose queries never see more is unaffected:
     * it holds at most c entries before a token, c + 1 with it. */
    if (policy->method != SEP_METHOD_FULL) {
        if (policy->c < cfg->window)
            return sep_cache_new(out, m->be, m->layer1 - m->layer0, m->kv_dim, policy);
        return sep_fail(SEP_EUNSUPPORTED, "%s: capacity c=%d: a query would see up to %d keys, "
                        "beyond the sliding window of %d (config.json %s); take c below %d",
                        sep_method_name(policy->method), policy->c, policy->c + 1, cfg->window,
                        cfg->window_keys, cfg->window);
    }
    if (cfg->window_layers < cfg->n_layers)
        return sep_fail(SEP_EUNSUPPORTED, "full attention: %d of the %d layers slide over a "
                        "window of %d keys and the others do not (config.json %s); sepd applies "
                        "one window to every layer or none: take --method sepllm or streaming "
                        "with a capacity below %d", cfg->window_layers, cfg->n_layers, cfg->window,
                        cfg->window_keys, cfg->window);
    /* every layer slides: full attention over the window is a cache of
     * the window - 1 newest entries before each token, at their stream
     * positions (streaming with a = 0, no shift) */
    sep_policy_t win = { .method = SEP_METHOD_STREAMING, .a = 0, .s = 0, .w = cfg->window - 1,
                         .c = cfg->window - 1, .shift = 0, .is_sep = policy->is_sep,
                         .n_vocab = policy->n_vocab };
    return sep_cache_new(out, m->be, m->layer1 - m->layer0, m->kv_dim, &win);
}

int sep_model_cache_rebase(sep_model_t *m, sep_cache_t *c)
{
    sep_backend_t *be = m->be;
    int rot = m->cfg.rot_dim, kv = m->kv_dim, rc;
    if (!c->k_raw)
        return SEP_OK;
    if (c->n == 0) {
        c->rope_off = c->n_seen;
        return SEP_OK;
    }
    int64_t *pos = malloc((size_t)c->n * sizeof *pos);
    float *cs = be->alloc(be, (size_t)c->n * rot * sizeof *cs);
    if (!pos || !cs) {
        rc = sep_fail(SEP_ENOMEM, "rebase: no memory for %d rotary positions", c->n);
        goto done;
    }
    for (int i = 0; i < c->n; i++)
        pos[i] = i;
    be->rope_table(be, cs, pos, c->n, m->inv_freq, rot);
    for (int l = 0; l < c->n_layers; l++) {
        size_t at = (size_t)c->lo * kv;
        sep_rows_t raw = { c->k[l] + at, c->k_raw[l] + at, kv, kv, c->n, kv };
        sep_rope_t r = { c->k[l] + at, cs, c->n, NULL, 0, 0 };
        be->copy_rows(be, &raw, 1);
        be->rope(be, &r, 1, kv, m->cfg.n_kv_heads, m->cfg.head_dim, rot);
    }
    if (!(rc = be->sync(be)))
        c->rope_off = c->n_seen - c->n;
done:
    free(pos);
    be->free(be, cs);
    return rc;
}

/* ---- forward ------------------------------------------------------------ */

/* y = norm(x) with weights w (and bias b, LayerNorm); res, when not
 * NULL, is added to x first (the residual add fused with the norm). */
static void model_norm(sep_model_t *m, float *y, float *x, const float *res, const float *w,
                       const float *b, int n)
{
    if (m->cfg.arch == SEP_ARCH_NEOX)
        m->be->layernorm(m->be, y, x, res, w, b, n, m->cfg.dim, m->cfg.norm_eps);
    else
        m->be->rmsnorm(m->be, y, x, res, w, n, m->cfg.dim, m->cfg.norm_eps);
}

/* The mlp of layer L on h (n rows) into m->run.o. */
static void model_mlp(sep_model_t *m, const sep_layer_t *L, int n)
{
    sep_backend_t *be = m->be;
    sep_run_t *r = &m->run;
    int f = m->cfg.ffn_dim;
    if (m->cfg.arch == SEP_ARCH_NEOX) {
        be->matmul(be, r->ff, r->h, L->w_up, L->b_up, n);
        be->gelu(be, r->ff, (size_t)n * f, m->cfg.act == SEP_ACT_GELU_TANH);
        be->matmul(be, r->o, r->ff, L->w_down, L->b_down, n);
    } else {
        be->swiglu(be, r->o, r->h, L->w_up, L->b_up, L->w_down, L->b_down, n, r->ff, r->act);
    }
}

static int model_check_batch(const sep_model_t *m, const sep_chunk_t *ch, int nc, int *total)
{
    int n = 0;
    if (nc < 1)
        return sep_fail(SEP_EINVAL, "forward: empty batch");
    for (int j = 0; j < nc; j++) {
        if (ch[j].n < 1 || ch[j].n > m->run.max_tokens - n)
            return sep_fail(SEP_EINVAL, "forward: batch of more than %d tokens", m->run.max_tokens);
        if (ch[j].cache->n_layers != m->layer1 - m->layer0 || ch[j].cache->kv_dim != m->kv_dim)
            return sep_fail(SEP_EINVAL, "forward: chunk %d: its cache holds %d layers of width %d, "
                            "the model layers [%d, %d) of width %d", j, ch[j].cache->n_layers,
                            ch[j].cache->kv_dim, m->layer0, m->layer1, m->kv_dim);
        for (int i = 0; i < ch[j].n; i++) {
            if (ch[j].ids[i] < 0 || ch[j].ids[i] >= m->cfg.vocab)
                return sep_fail(SEP_ERANGE, "forward: token id %d outside the vocabulary (%d)",
                                ch[j].ids[i], m->cfg.vocab);
            if (ch[j].targets && ch[j].targets[i] >= m->cfg.vocab)
                return sep_fail(SEP_ERANGE, "forward: target id %d outside the vocabulary (%d)",
                                ch[j].targets[i], m->cfg.vocab);
        }
        int rc = ch[j].pick ? sep_pick_check(ch[j].pick, m->cfg.vocab) : SEP_OK;
        if (rc)
            return sep_fail(rc, "forward: chunk %d: %s", j, sep_errmsg());
        n += ch[j].n;
    }
    *total = n;
    return SEP_OK;
}

/* Scores of the final hidden states h: NLLs of each row's target. */
static void model_score(sep_model_t *m, sep_chunk_t *ch, int nc, int n)
{
    sep_backend_t *be = m->be;
    sep_run_t *r = &m->run;
    int any = 0;
    for (int j = 0, row = 0; j < nc; row += ch[j].n, j++)
        for (int i = 0; i < ch[j].n; i++) {
            r->rows[row + i] = ch[j].targets ? ch[j].targets[i] : -1;
            any |= r->rows[row + i] >= 0;
        }
    if (!any)
        return;
    int j = 0, i = 0; /* chunk and token of the next row to hand back */
    for (int b = 0; b < n; b += r->logit_rows) {
        int rows = n - b < r->logit_rows ? n - b : r->logit_rows;
        be->matmul(be, r->logits, r->h + (size_t)b * m->cfg.dim, m->lm_head, NULL, rows);
        be->nll(be, r->nll, r->logits, r->rows + b, rows, m->cfg.vocab);
        for (int k = 0; k < rows; k++) {
            if (r->rows[b + k] >= 0)
                ch[j].nll[i] = r->nll[k];
            if (++i == ch[j].n) {
                i = 0;
                j++;
            }
        }
    }
}

/* Logits of each chunk's last token where asked for (the logits
 * themselves, or the token picked from them), from the final hidden
 * states h (the rows gathered into o unless they are h's first), a block
 * at a time. */
static void model_logits(sep_model_t *m, sep_chunk_t *ch, int nc)
{
    sep_backend_t *be = m->be;
    sep_run_t *r = &m->run;
    int k = 0;
    for (int j = 0, row = 0; j < nc; row += ch[j].n, j++)
        if (ch[j].logits || ch[j].next)
            r->rows[k++] = row + ch[j].n - 1;
    if (k == 0)
        return;
    size_t vocab = (size_t)m->cfg.vocab;
    /* one-token chunks ask for rows 0 .. k-1 of h: no gather */
    const float *last = r->h;
    for (int i = 0; i < k; i++)
        if (r->rows[i] != i) {
            sep_gather_t last_rows = { r->o, r->h, r->rows, k, m->cfg.dim };
            be->gather_rows(be, &last_rows, 1);
            last = r->o;
            break;
        }
    /* a chunk that gives no pick takes the greedy token of every id */
    sep_pick_t greedy = { .temperature = 0, .top_p = 1, .repetition = 1, .limit = m->cfg.vocab };
    for (int b = 0, j = 0; b < k; b += r->logit_rows) {
        int rows = k - b < r->logit_rows ? k - b : r->logit_rows, n_pick = 0;
        be->matmul(be, r->logits, last + (size_t)b * m->cfg.dim, m->lm_head, NULL, rows);
        for (int i = 0, jj = j; i < rows; i++, jj++) {
            while (!ch[jj].logits && !ch[jj].next)
                jj++;
            /* the logits go out before the pick works on them */
            if (ch[jj].logits)
                be->download(be, ch[jj].logits, r->logits + i * vocab, vocab * sizeof(float));
            r->picks[i] = ch[jj].pick ? *ch[jj].pick : greedy;
            n_pick += ch[jj].next != NULL;
        }
        if (n_pick)
            be->pick(be, r->next, r->nll, r->logits, rows, (int)vocab, r->picks);
        for (int i = 0; i < rows; i++, j++) {
            while (!ch[j].logits && !ch[j].next)
                j++;
            if (ch[j].next) {
                *ch[j].next = r->next[i];
                *ch[j].next_nll = r->nll[i];
            }
        }
    }
}

/* The prefix rows run r of plan p copies out: those of its segments
 * after the first (none for a run of one segment). */
static int model_run_rows(const sep_plan_t *p, int r)
{
    int s0 = p->run_first[r], s1 = p->run_first[r + 1];
    if (s1 - s0 < 2)
        return 0;
    return p->seg[s1 - 2].pre_at + p->seg[s1 - 2].n_pre - p->seg[s0].pre_at;
}

/* The keys of each query of plan p's runs of several segments, into keys
 * (as many entries as those runs have tokens): segment s0 of a run sees
 * its cache's rows from slot 0, a later one its prefix's rows of the
 * run's copies, then its window of the recent region. */
static void model_run_keys(const sep_plan_t *p, sep_attn_keys_t *keys)
{
    for (int r = 0, at = 0; r < p->n_run; r++) {
        int s0 = p->run_first[r], s1 = p->run_first[r + 1];
        if (s1 - s0 < 2)
            continue;
        for (int s = s0; s < s1; s++) {
            const sep_segment_t *sg = &p->seg[s];
            int n_pre = s > s0 ? sg[-1].n_pre : 0;
            int pre = s > s0 ? sg[-1].pre_at - p->seg[s0].pre_at : 0;
            for (int i = 0; i < sg->len; i++)
                keys[at++] = (sep_attn_keys_t){ pre, pre + n_pre, sg->lo + n_pre,
                                                sg->lo + sg->n_past + i + 1 };
        }
    }
}

/* Plans for nc chunks, the rotary table of the prefixes they re-rotate,
 * the rows their runs copy prefixes to and their queries' keys. */
static int model_plan(sep_model_t *m, sep_chunk_t *ch, int nc)
{
    sep_run_t *r = &m->run;
    int rc, max_keys = 0;
    if (nc > r->n_plans) {
        /* the tables a forward keeps a chunk's worth of (a table that grew
         * before another failed stays grown: n_plans says what is set) */
        struct {
            void **p;
            size_t per_chunk;
        } t[] = {
            { (void **)&r->plans, sizeof *r->plans },
            { (void **)&r->probs, sizeof *r->probs },
            { (void **)&r->runs, sizeof *r->runs },
            { (void **)&r->appends, 6 * sizeof *r->appends },
            { (void **)&r->gathers, 4 * sizeof *r->gathers },
            { (void **)&r->rotations, sizeof *r->rotations },
            { (void **)&r->arch_at, sizeof *r->arch_at },
            { (void **)&r->pre_at, sizeof *r->pre_at },
            { (void **)&r->keys_at, sizeof *r->keys_at },
            { (void **)&r->keys_next, sizeof *r->keys_next },
        };
        for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
            void *x = realloc(*t[i].p, (size_t)nc * t[i].per_chunk);
            if (!x)
                return sep_fail(SEP_ENOMEM, "forward: no memory to plan %d chunks", nc);
            *t[i].p = x;
        }
        memset(r->plans + r->n_plans, 0, (size_t)(nc - r->n_plans) * sizeof *r->plans);
        r->n_plans = nc;
    }
    /* rows of the rotary table for the prefixes the compactions re-rotate
     * (shift on), and the queries of runs of several segments */
    size_t pre = 0, n_keys = 0;
    size_t share = r->run_bytes / (2 * sizeof(float) * (size_t)m->kv_dim) / (size_t)nc;
    int rounds = 0, run_max = share < 1 ? 1 : share > (1 << 24) ? 1 << 24 : (int)share;
    for (int j = 0; j < nc; j++) {
        sep_plan_t *p = &r->plans[j];
        if ((rc = sep_cache_plan(ch[j].cache, ch[j].ids, ch[j].n, run_max, p)) ||
            (rc = sep_cache_reserve(ch[j].cache, p->rows)))
            return rc;
        if (p->max_entries > max_keys)
            max_keys = p->max_entries;
        r->pre_at[j] = (int32_t)pre;
        if (ch[j].cache->k_raw)
            pre += (size_t)p->n_pre_rows;
        if (pre > INT32_MAX / 2)
            return sep_fail(SEP_ERANGE, "forward: %zu prefix rows to re-rotate", pre);
        r->keys_at[j] = (int32_t)n_keys;
        for (int k = 0; k < p->n_run; k++)
            if (p->run_first[k + 1] - p->run_first[k] > 1) {
                const sep_segment_t *last = &p->seg[p->run_first[k + 1] - 1];
                n_keys += (size_t)(last->start + last->len - p->seg[p->run_first[k]].start);
            }
        rounds = p->n_run > rounds ? p->n_run : rounds;
    }
    /* the most prefix rows a round copies out, over its chunks */
    int run_rows = 1;
    for (int k = 0; k < rounds; k++) {
        long sum = 0;
        for (int j = 0; j < nc; j++)
            if (k < r->plans[j].n_run)
                sum += model_run_rows(&r->plans[j], k);
        if (sum > INT32_MAX / 2)
            return sep_fail(SEP_ERANGE, "forward: %ld prefix rows in a round", sum);
        run_rows = sum > run_rows ? (int)sum : run_rows;
    }
    /* rows: tokens (products, embeddings), entries (compactions), a
     * block of logit rows (NLLs); width: the widest product input */
    int rows = r->max_tokens > max_keys ? r->max_tokens : max_keys;
    int width = m->cfg.dim > m->q_dim ? m->cfg.dim : m->q_dim;
    width = width > m->cfg.ffn_dim ? width : m->cfg.ffn_dim;
    if ((rc = m->be->reserve(m->be, max_keys, rows > r->logit_rows ? rows : r->logit_rows,
                             width)))
        return rc;
    sep_backend_t *be = m->be;
    if (n_keys && run_rows > r->run_cap) {
        /* a forward's scratch is not kept: free first */
        int cap = 2 * run_rows;
        size_t bytes = (size_t)cap * m->kv_dim * sizeof(float);
        be->free(be, r->run_k);
        be->free(be, r->run_v);
        r->run_k = be->alloc(be, bytes);
        r->run_v = be->alloc(be, bytes);
        r->run_cap = r->run_k && r->run_v ? cap : 0;
        if (!r->run_cap)
            return sep_fail(SEP_ENOMEM, "forward: no %s memory for %d prefix rows", be->name,
                            run_rows);
    }
    if (n_keys) {
        if (n_keys > (size_t)r->keys_cap) {
            int cap = 2 * (int)n_keys; /* n_keys <= the forward's tokens */
            be->free(be, r->keys);
            r->keys = be->alloc(be, (size_t)cap * sizeof *r->keys);
            r->keys_cap = r->keys ? cap : 0;
            if (!r->keys)
                return sep_fail(SEP_ENOMEM, "forward: no %s memory for the keys of %zu "
                                "queries", be->name, n_keys);
        }
        if (SEP_GROW(r->keys_host, r->keys_host_cap, n_keys))
            return sep_fail(SEP_ENOMEM, "forward: no memory for the keys of %zu queries",
                            n_keys);
        for (int j = 0; j < nc; j++)
            model_run_keys(&r->plans[j], r->keys_host + r->keys_at[j]);
        be->upload(be, r->keys, r->keys_host, n_keys * sizeof *r->keys);
    }
    if (pre == 0)
        return SEP_OK;
    if ((rc = SEP_GROW(r->pre_pos, r->pre_pos_cap, pre)))
        return rc;
    if ((int)pre > r->pre_cs_cap) {
        int cap = 2 * (int)pre;
        be->free(be, r->pre_cs);
        r->pre_cs = be->alloc(be, (size_t)cap * m->cfg.rot_dim * sizeof(float));
        r->pre_cs_cap = r->pre_cs ? cap : 0;
        if (!r->pre_cs)
            return sep_fail(SEP_ENOMEM, "forward: no memory for %zu rotary positions", pre);
    }
    /* slot i of a compaction's prefix is at its pre_rope + i */
    for (int j = 0; j < nc; j++) {
        const sep_plan_t *p = &r->plans[j];
        if (!ch[j].cache->k_raw)
            continue;
        for (int s = 0; s < p->n_seg; s++)
            for (int i = 0; i < p->seg[s].n_pre; i++)
                r->pre_pos[r->pre_at[j] + p->seg[s].pre_at + i] = p->seg[s].pre_rope + i;
    }
    be->rope_table(be, r->pre_cs, r->pre_pos, (int)pre, m->inv_freq, m->cfg.rot_dim);
    return SEP_OK;
}

/* The archiving chunks' evicted separators, numbered in batch order, room
 * for their rows (backend staging, host copies) and their chunks, ids and
 * positions filled in: all before any cache changes, so that running out
 * of memory fails the forward cleanly. Nothing when no chunk archives. */
static int model_archive_plan(sep_model_t *m, const sep_chunk_t *ch, int nc)
{
    sep_backend_t *be = m->be;
    sep_run_t *r = &m->run;
    sep_evicted_t *ev = &r->evicted;
    int n = 0;
    for (int j = 0; j < nc; j++) {
        r->arch_at[j] = ch[j].archive ? n : -1;
        if (!ch[j].archive)
            continue;
        if (r->plans[j].n_evict > INT32_MAX / 2 - n)
            return sep_fail(SEP_ERANGE, "forward: more than %d evicted separators in a batch",
                            INT32_MAX / 2);
        n += r->plans[j].n_evict;
    }
    r->arch_n = n;
    ev->n_layers = m->layer1 - m->layer0;
    ev->kv_dim = m->kv_dim;
    if (n == 0)
        return SEP_OK;
    size_t rows = (size_t)n * ev->n_layers * m->kv_dim; /* floats of k, of v */
    if (n > r->arch_cap) {
        /* the rows of a forward are not kept: free first, so that device
         * memory never holds both sizes */
        int cap = 2 * n; /* n <= INT32_MAX / 2 */
        size_t bytes = (size_t)cap * ev->n_layers * m->kv_dim * sizeof(float);
        be->free(be, r->arch_k);
        be->free(be, r->arch_v);
        r->arch_k = be->alloc(be, bytes);
        r->arch_v = be->alloc(be, bytes);
        r->arch_cap = r->arch_k && r->arch_v ? cap : 0;
        if (!r->arch_cap)
            return sep_fail(SEP_ENOMEM, "forward: no %s memory for %d evicted separators",
                            be->name, n);
    }
    size_t *cap = r->host_caps;
    if (SEP_GROW(ev->chunk, cap[0], (size_t)n) || SEP_GROW(ev->pos, cap[1], (size_t)n) ||
        SEP_GROW(ev->id, cap[2], (size_t)n) || SEP_GROW(ev->k, cap[3], rows) ||
        SEP_GROW(ev->v, cap[4], rows))
        return sep_fail(SEP_ENOMEM, "forward: no memory for %d evicted separators", n);
    for (int j = 0; j < nc; j++) {
        const sep_plan_t *p = &r->plans[j];
        for (int e = 0, at = r->arch_at[j]; at >= 0 && e < p->n_evict; e++) {
            ev->chunk[at + e] = j;
            ev->pos[at + e] = p->evict_pos[e];
            ev->id[at + e] = p->evict_id[e];
        }
    }
    return SEP_OK;
}

/* The gathers that copy the separators the compactions of run `round`
 * evict from layer l of chunk j's cache (their rows as at the run's
 * start), its raw keys where it keeps them and its values, to their rows
 * in the staging buffers; returns how many. */
static int model_archive_gathers(const sep_model_t *m, const sep_chunk_t *ch, int j, int l,
                                 int round, sep_gather_t out[2])
{
    const sep_run_t *r = &m->run;
    const sep_cache_t *kc = ch[j].cache;
    const sep_plan_t *p = &r->plans[j];
    int s0 = p->run_first[round], s1 = p->run_first[round + 1], n = 0;
    for (int s = s0; s < s1; s++)
        n += p->seg[s].n_evict;
    if (!n || r->arch_at[j] < 0)
        return 0;
    /* the run's evictions follow one another, from its first segment's */
    int first = p->seg[s0].evict_at;
    size_t row = ((size_t)l * r->arch_n + r->arch_at[j] + first) * m->kv_dim;
    const int32_t *idx = p->evict_src + first;
    out[0] = (sep_gather_t){ r->arch_k + row, kc->k_raw ? kc->k_raw[l] : kc->k[l], idx, n,
                             m->kv_dim };
    out[1] = (sep_gather_t){ r->arch_v + row, kc->v[l], idx, n, m->kv_dim };
    return 2;
}

/* After round `round` of layer l's attention: the compaction that ends
 * each chunk's run (its last; those before it never touched the cache),
 * all chunks' at once: each rewrites its cache's prefix before the recent
 * region from the rows of the run's start, and with shift on re-rotates
 * the prefix keys there from their raw keys. */
static void model_compact(sep_model_t *m, sep_chunk_t *ch, int nc, int l, int round)
{
    sep_backend_t *be = m->be;
    sep_run_t *r = &m->run;
    const sep_config_t *c = &m->cfg;
    sep_gather_t *arch = r->gathers + 2 * nc;
    int ng = 0, nr = 0, na = 0;
    for (int j = 0; j < nc; j++) {
        const sep_plan_t *p = &r->plans[j];
        if (round >= p->n_run)
            continue;
        int s0 = p->run_first[round], f = p->run_first[round + 1] - 1;
        if (!p->seg[f].n_keep)
            f--; /* the chunk's last segment, which no compaction ends */
        na += model_archive_gathers(m, ch, j, l, round, arch + na);
        if (f < s0)
            continue;
        const sep_segment_t *seg = &p->seg[f];
        sep_cache_t *kc = ch[j].cache;
        ng += sep_cache_run_gathers(kc, l, seg, r->gathers + ng);
        if (!kc->k_raw || seg->n_pre <= 0)
            continue;
        size_t at = (size_t)seg->lo_after * m->kv_dim;
        float *k = kc->k[l] + at;
        r->appends[nr] = (sep_rows_t){ k, kc->k_raw[l] + at, m->kv_dim, m->kv_dim, seg->n_pre,
                                       m->kv_dim };
        size_t cs = (size_t)r->pre_at[j] + (size_t)seg->pre_at;
        r->rotations[nr++] = (sep_rope_t){ k, r->pre_cs + cs * c->rot_dim, seg->n_pre, NULL,
                                           0, 0 };
    }
    /* the evicted rows leave before the compactions overwrite them: a call
     * of their own, since no gather of one call may read rows another
     * writes (one more launch, queued, on a GPU) */
    if (na)
        be->gather_rows(be, arch, na);
    if (ng)
        be->gather_rows(be, r->gathers, ng);
    if (nr) {
        be->copy_rows(be, r->appends, nr);
        be->rope(be, r->rotations, nr, m->kv_dim, c->n_kv_heads, c->head_dim, c->rot_dim);
    }
}

/* Attention of layer l over every chunk, a run of segments at a time:
 * round r runs the r-th run of each chunk (its cache's entries moved down
 * first where the plan says, and all its tokens' K/V appended, all chunks'
 * rows in one copy; the prefixes its segments after the first see copied
 * out, and re-rotated, beside one another), its attention in one problem,
 * then the compaction that ends it. */
static void model_attention(sep_model_t *m, sep_chunk_t *ch, int nc, int l)
{
    sep_backend_t *be = m->be;
    sep_run_t *r = &m->run;
    const sep_config_t *c = &m->cfg;
    int kv = m->kv_dim;
    for (int j = 0; j < nc; j++)
        r->keys_next[j] = r->keys_at[j];
    for (int round = 0;; round++) {
        int np = 0, nrun = 0, na = 0, ng = 0, nrot = 0, scratch = 0;
        /* entries that move down to row 0 go in a call of their own: a
         * run's tokens, appended after them, may reach the rows they come
         * from (no copy of one call may write rows another reads) */
        for (int j = 0; j < nc; j++)
            if (round < r->plans[j].n_run)
                na += sep_cache_move_copies(ch[j].cache, l,
                                            &r->plans[j].seg[r->plans[j].run_first[round]],
                                            r->appends + na);
        if (na)
            be->copy_rows(be, r->appends, na);
        na = 0;
        for (int j = 0, row = 0; j < nc; row += ch[j].n, j++) {
            const sep_plan_t *p = &r->plans[j];
            if (round >= p->n_run)
                continue;
            int s0 = p->run_first[round], s1 = p->run_first[round + 1];
            const sep_segment_t *sg = &p->seg[s0], *last = &p->seg[s1 - 1];
            sep_cache_t *kc = ch[j].cache;
            int r0 = row + sg->start, len = last->start + last->len - sg->start;
            const float *qkv = r->qkv + (size_t)r0 * m->qkv_dim;
            /* the run's tokens go to consecutive rows: a compaction leaves
             * the next segment's first row right after the recent region */
            size_t base = (size_t)sg->lo * kv, at = base + (size_t)sg->n_past * kv;
            r->appends[na++] = (sep_rows_t){ kc->k[l] + at, qkv + m->q_dim, kv, m->qkv_dim,
                                             len, kv };
            r->appends[na++] = (sep_rows_t){ kc->v[l] + at, qkv + m->q_dim + kv, kv,
                                             m->qkv_dim, len, kv };
            if (kc->k_raw)
                r->appends[na++] = (sep_rows_t){ kc->k_raw[l] + at, r->k_raw + (size_t)r0 * kv,
                                                 kv, kv, len, kv };
            if (s1 - s0 == 1) {
                r->probs[np++] = (sep_attn_t){
                    .out = r->att + (size_t)r0 * m->q_dim, .q = qkv,
                    .k = kc->k[l] + base, .v = kc->v[l] + base, .n_q = sg->len,
                    .n_past = sg->n_past, .out_stride = m->q_dim, .q_stride = m->qkv_dim,
                };
                continue;
            }
            int rows = model_run_rows(p, round);
            float *pk = r->run_k + (size_t)scratch * kv, *pv = r->run_v + (size_t)scratch * kv;
            if (rows) {
                const int32_t *src = p->src_buf + sg->pre_at;
                r->gathers[ng++] = (sep_gather_t){ pv, kc->v[l], src, rows, kv };
                r->gathers[ng++] = (sep_gather_t){ pk, kc->k_raw ? kc->k_raw[l] : kc->k[l], src,
                                                   rows, kv };
                if (kc->k_raw) {
                    size_t cs = (size_t)r->pre_at[j] + (size_t)sg->pre_at;
                    r->rotations[nrot++] = (sep_rope_t){ pk, r->pre_cs + cs * c->rot_dim, rows,
                                                         NULL, 0, 0 };
                }
            }
            r->runs[nrun++] = (sep_attn_run_t){
                .out = r->att + (size_t)r0 * m->q_dim, .q = qkv, .pk = pk, .pv = pv,
                .k = kc->k[l], .v = kc->v[l], .keys = r->keys + r->keys_next[j], .n_q = len,
                .out_stride = m->q_dim, .q_stride = m->qkv_dim,
            };
            r->keys_next[j] += len;
            scratch += rows;
        }
        if (np == 0 && nrun == 0)
            return;
        be->copy_rows(be, r->appends, na);
        if (ng)
            be->gather_rows(be, r->gathers, ng);
        if (nrot)
            be->rope(be, r->rotations, nrot, kv, c->n_kv_heads, c->head_dim, c->rot_dim);
        /* the problems of the batch's first rows first (a GPU extends its
         * bf16 copy of the outputs from there) */
        int runs_first = nrun && (!np || r->runs[0].out < r->probs[0].out);
        if (nrun && runs_first)
            be->attention_runs(be, r->runs, nrun, c->n_heads, c->n_kv_heads, c->head_dim);
        if (np)
            be->attention(be, r->probs, np, c->n_heads, c->n_kv_heads, c->head_dim);
        if (nrun && !runs_first)
            be->attention_runs(be, r->runs, nrun, c->n_heads, c->n_kv_heads, c->head_dim);
        model_compact(m, ch, nc, l, round);
    }
}

/* Cache entries after each token's append, from the plans. */
static void model_kv_counts(const sep_model_t *m, sep_chunk_t *ch, int nc)
{
    for (int j = 0; j < nc; j++) {
        if (!ch[j].kv)
            continue;
        const sep_plan_t *p = &m->run.plans[j];
        for (int s = 0; s < p->n_seg; s++)
            for (int i = 0; i < p->seg[s].len; i++)
                ch[j].kv[p->seg[s].start + i] = p->seg[s].n_past + i + 1;
    }
}

int sep_model_forward(sep_model_t *m, sep_chunk_t *ch, int nc)
{
    return sep_model_forward_stage(m, ch, nc, NULL, NULL);
}

int sep_model_forward_stage(sep_model_t *m, sep_chunk_t *ch, int nc, const float *x_in,
                            float *x_out)
{
    sep_backend_t *be = m->be;
    sep_run_t *r = &m->run;
    const sep_config_t *c = &m->cfg;
    int n = 0, rc, first = m->layer0 == 0, last = m->layer1 == c->n_layers;
    if ((x_in == NULL) != first)
        return sep_fail(SEP_EINVAL, first ? "forward: stage [%d, %d) embeds its ids: x_in must "
                                            "be NULL"
                                          : "forward: stage [%d, %d) needs x_in",
                        m->layer0, m->layer1);
    if ((x_out == NULL) != last)
        return sep_fail(SEP_EINVAL, last ? "forward: stage [%d, %d) is the last: x_out must "
                                           "be NULL"
                                         : "forward: stage [%d, %d) needs x_out",
                        m->layer0, m->layer1);
    r->evicted.n = 0;
    if ((rc = model_check_batch(m, ch, nc, &n)) || (rc = model_plan(m, ch, nc)) ||
        (rc = model_archive_plan(m, ch, nc)))
        return rc;

    /* the rotary table at each token's planned position, and the
     * embeddings (first stage) or the previous stage's hidden states */
    for (int j = 0, row = 0; j < nc; row += ch[j].n, j++)
        for (int i = 0; i < ch[j].n; i++) {
            r->rows[row + i] = ch[j].ids[i];
            r->pos[row + i] = r->plans[j].rope_pos[i];
        }
    if (first)
        be->weight_rows(be, r->x, m->embed, r->rows, n);
    else
        be->upload(be, r->x, x_in, (size_t)n * c->dim * sizeof(float));
    be->rope_table(be, r->cs, r->pos, n, m->inv_freq, c->rot_dim);

    int n_layers = m->layer1 - m->layer0;
    model_norm(m, r->h, r->x, NULL, m->layers[0].norm1_w, m->layers[0].norm1_b, n);
    for (int l = 0; l < n_layers; l++) {
        const sep_layer_t *L = &m->layers[l];
        be->matmul(be, r->qkv, r->h, L->wqkv, L->bqkv, n);
        /* the keys' heads follow the queries' in a row: one rotation,
         * which keeps the unrotated keys for caches that re-rotate after
         * compaction */
        sep_rope_t qk = { r->qkv, r->cs, n, r->k_raw, c->n_heads, m->kv_dim };
        be->rope(be, &qk, 1, m->qkv_dim, c->n_heads + c->n_kv_heads, c->head_dim, c->rot_dim);
        model_attention(m, ch, nc, l);
        be->matmul(be, r->o, r->att, L->wo, L->bo, n);
        if (c->arch == SEP_ARCH_NEOX && c->parallel_residual) {
            /* x + attn(ln1(x)) + mlp(ln2(x)): both norms see the same x */
            model_norm(m, r->h, r->x, NULL, L->norm2_w, L->norm2_b, n);
            be->add(be, r->x, r->o, (size_t)n * c->dim);
        } else {
            model_norm(m, r->h, r->x, r->o, L->norm2_w, L->norm2_b, n);
        }
        model_mlp(m, L, n);
        /* the mlp's residual add, fused with the norm that follows */
        if (l + 1 < n_layers)
            model_norm(m, r->h, r->x, r->o, L[1].norm1_w, L[1].norm1_b, n);
        else if (last)
            model_norm(m, r->h, r->x, r->o, m->norm_w, m->norm_b, n);
        else
            be->add(be, r->x, r->o, (size_t)n * c->dim);
    }
    if (last) {
        model_score(m, ch, nc, n);
        model_logits(m, ch, nc);
    } else {
        be->download(be, x_out, r->x, (size_t)n * c->dim * sizeof(float));
    }
    /* the archive's rows in one download each, where the forward waits
     * for the device anyway */
    size_t arch_bytes = (size_t)r->arch_n * n_layers * m->kv_dim * sizeof(float);
    if (arch_bytes) {
        be->download(be, r->evicted.k, r->arch_k, arch_bytes);
        be->download(be, r->evicted.v, r->arch_v, arch_bytes);
    }
    if ((rc = be->sync(be)))
        return rc;
    r->evicted.n = r->arch_n;
    model_kv_counts(m, ch, nc);
    for (int j = 0; j < nc; j++)
        sep_cache_commit(ch[j].cache, &r->plans[j]);
    return SEP_OK;
}

const sep_evicted_t *sep_model_evicted(const sep_model_t *m)
{
    return &m->run.evicted;
}
