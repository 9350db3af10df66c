/* config.c: a checkpoint's architecture from its config.json, its
 * end-of-sequence ids also from generation_config.json.
 *
 * Contract in config.h. Defaults are those of the transformers config
 * classes, so a field left out means what it means to Hugging Face. JSON
 * null counts as absent (transformers writes "head_dim": null). Sizes are
 * bounded so that products of two of them fit an int64 and each one, and
 * the q/kv widths, fit an int.
 */
#include "config.h"
#include "err.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CFG_DIM_MAX ((1 << 20) - 1)   /* layers, widths, heads */
#define CFG_VOCAB_MAX ((1 << 24) - 1)
#define CFG_POS_MAX (1 << 24)         /* context lengths */

static int cfg_absent(const json_t *v)
{
    return !v || json_is_null(v);
}

/* The first of up to three candidate values that is present, with the
 * name it goes by in messages. */
static json_t *cfg_pick(json_t *a, const char *na, json_t *b, const char *nb,
                        json_t *c, const char *nc, const char **name)
{
    if (!cfg_absent(a)) {
        *name = na;
        return a;
    }
    if (!cfg_absent(b)) {
        *name = nb;
        return b;
    }
    *name = nc ? nc : na;
    return cfg_absent(c) ? NULL : c;
}

static int cfg_int(const char *path, const char *field, json_t *v, int required,
                   int def, long long lo, long long hi, int *out)
{
    if (cfg_absent(v)) {
        if (required)
            return sep_fail(SEP_EFORMAT, "%s: %s: missing", path, field);
        *out = def;
        return SEP_OK;
    }
    if (!json_is_integer(v))
        return sep_fail(SEP_EFORMAT, "%s: %s: not an integer", path, field);
    long long x = json_integer_value(v);
    if (x < lo)
        return sep_fail(SEP_EFORMAT, "%s: %s: %lld, below %lld", path, field, x, lo);
    if (x > hi)
        return sep_fail(SEP_ERANGE, "%s: %s: %lld, over the limit %lld", path,
                        field, x, hi);
    *out = (int)x;
    return SEP_OK;
}

/* A positive number (JSON integer or real; jansson only yields finite ones). */
static int cfg_pos(const char *path, const char *field, json_t *v, int required,
                   double def, double *out)
{
    if (cfg_absent(v)) {
        if (required)
            return sep_fail(SEP_EFORMAT, "%s: %s: missing", path, field);
        *out = def;
        return SEP_OK;
    }
    if (!json_is_number(v))
        return sep_fail(SEP_EFORMAT, "%s: %s: not a number", path, field);
    *out = json_number_value(v);
    if (!(*out > 0))
        return sep_fail(SEP_EFORMAT, "%s: %s: %g, not positive", path, field, *out);
    return SEP_OK;
}

static int cfg_bool(const char *path, const char *field, json_t *v, int def,
                    int *out)
{
    if (cfg_absent(v)) {
        *out = def;
        return SEP_OK;
    }
    if (!json_is_boolean(v))
        return sep_fail(SEP_EFORMAT, "%s: %s: not true or false", path, field);
    *out = json_is_true(v);
    return SEP_OK;
}

static int cfg_str(const char *path, const char *field, json_t *v,
                   const char *def, const char **out)
{
    if (cfg_absent(v)) {
        *out = def;
        return SEP_OK;
    }
    if (!json_is_string(v))
        return sep_fail(SEP_EFORMAT, "%s: %s: not a string", path, field);
    *out = json_string_value(v);
    return SEP_OK;
}

/* The JSON object in path; optional: a missing file is *root NULL. */
static int cfg_read(const char *path, int optional, json_t **root)
{
    json_error_t jerr;
    *root = NULL;
    FILE *fp = fopen(path, "r");
    if (!fp) {
        if (optional && errno == ENOENT)
            return SEP_OK;
        return sep_fail(errno == ENOENT ? SEP_ENOTFOUND : SEP_EIO, "%s: %s", path,
                        strerror(errno));
    }
    json_t *r = json_loadf(fp, JSON_REJECT_DUPLICATES, &jerr);
    fclose(fp);
    if (!r)
        return sep_fail(SEP_EFORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    if (!json_is_object(r)) {
        json_decref(r);
        return sep_fail(SEP_EFORMAT, "%s: not a JSON object", path);
    }
    *root = r;
    return SEP_OK;
}

/* eos_token_id: an id, a list of them, or null (none); ids in c's vocabulary. */
static int cfg_eos(const char *path, json_t *v, sep_config_t *c)
{
    c->n_eos = 0;
    if (cfg_absent(v))
        return SEP_OK;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (n > SEP_EOS_MAX)
        return sep_fail(SEP_ERANGE, "%s: eos_token_id: %zu ids, over the limit %d", path, n,
                        SEP_EOS_MAX);
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(x))
            return sep_fail(SEP_EFORMAT, "%s: eos_token_id: not an id or a list of ids", path);
        long long id = json_integer_value(x);
        if (id < 0 || id >= c->vocab)
            return sep_fail(SEP_EFORMAT, "%s: eos_token_id: %lld, outside the vocabulary "
                            "(0..%d)", path, id, c->vocab - 1);
        c->eos[i] = (int)id;
    }
    c->n_eos = (int)n;
    return SEP_OK;
}

/* rope_scaling (older layout) or rope_parameters (newer): plain rotary or
 * Llama-3.1 scaling; the other schemes change attention in ways sepd
 * does not implement, so they are refused rather than ignored. */
static int cfg_rope_scaling(const char *path, json_t *root, sep_config_t *c)
{
    const char *obj = "rope_scaling", *type = NULL;
    char field[64], b[64];
    json_t *rs = json_object_get(root, obj);
    if (cfg_absent(rs)) {
        obj = "rope_parameters";
        rs = json_object_get(root, obj);
    }
    if (cfg_absent(rs))
        return SEP_OK;
    json_t *t = json_object_get(rs, "rope_type");
    const char *tname = "rope_type";
    if (cfg_absent(t)) {
        t = json_object_get(rs, "type");
        tname = "type";
    }
    snprintf(field, sizeof field, "%s.%s", obj, tname);
    int rc = cfg_str(path, field, t, "default", &type);
    if (rc)
        return rc;
    if (!strcmp(type, "default"))
        return SEP_OK;
    if (strcmp(type, "llama3"))
        return sep_fail(SEP_EUNSUPPORTED,
                        "%s: %s: \"%s\" is not supported (only default and llama3)",
                        path, field, sep_clip(type, b));

    c->rope_llama3 = 1;
    static const char *const keys[] = {"factor", "low_freq_factor", "high_freq_factor"};
    double *vals[] = {&c->rope_factor, &c->rope_low_freq_factor,
                      &c->rope_high_freq_factor};
    for (int i = 0; i < 3; i++) {
        snprintf(field, sizeof field, "%s.%s", obj, keys[i]);
        if ((rc = cfg_pos(path, field, json_object_get(rs, keys[i]), 1, 0, vals[i])))
            return rc;
    }
    snprintf(field, sizeof field, "%s.original_max_position_embeddings", obj);
    if ((rc = cfg_int(path, field,
                      json_object_get(rs, "original_max_position_embeddings"), 1,
                      0, 1, CFG_POS_MAX, &c->rope_orig_max_pos)))
        return rc;
    /* Equal factors would divide by zero in the smoothing band. */
    if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return sep_fail(SEP_EFORMAT, "%s: %s.high_freq_factor %g not above low_freq_factor %g",
                        path, obj, c->rope_high_freq_factor, c->rope_low_freq_factor);
    return SEP_OK;
}

static int cfg_llama(const char *path, json_t *root, json_t *rp, int qwen2,
                     sep_config_t *c)
{
    const char *act = "", *name;
    char b[64];
    int rc, bias = 0;
    if ((rc = cfg_int(path, "num_key_value_heads",
                      json_object_get(root, "num_key_value_heads"), 0,
                      c->n_heads, 1, CFG_DIM_MAX, &c->n_kv_heads)))
        return rc;
    json_t *hd = json_object_get(root, "head_dim");
    if (cfg_absent(hd) && c->dim % c->n_heads)
        return sep_fail(SEP_EFORMAT,
                        "%s: hidden_size %d not a multiple of num_attention_heads %d (and no head_dim)",
                        path, c->dim, c->n_heads);
    if ((rc = cfg_int(path, "head_dim", hd, 0, c->dim / c->n_heads, 1,
                      CFG_DIM_MAX, &c->head_dim)))
        return rc;
    double eps = 0;
    if ((rc = cfg_pos(path, "rms_norm_eps", json_object_get(root, "rms_norm_eps"),
                      0, 1e-6, &eps)))
        return rc;
    c->norm_eps = (float)eps;
    if ((rc = cfg_str(path, "hidden_act", json_object_get(root, "hidden_act"),
                      "silu", &act)))
        return rc;
    if (strcmp(act, "silu"))
        return sep_fail(SEP_EUNSUPPORTED, "%s: hidden_act: \"%s\" is not supported for %s (only silu)",
                        path, sep_clip(act, b), c->arch_name);
    c->act = SEP_ACT_SILU;
    if (qwen2) {
        /* Qwen2 always has q/k/v biases and never an o_proj or MLP one. */
        c->qkv_bias = 1;
    } else {
        if ((rc = cfg_bool(path, "attention_bias",
                           json_object_get(root, "attention_bias"), 0, &bias)) ||
            (rc = cfg_bool(path, "mlp_bias", json_object_get(root, "mlp_bias"), 0,
                           &c->mlp_bias)))
            return rc;
        c->qkv_bias = c->o_bias = bias;
    }
    json_t *theta = cfg_pick(json_object_get(root, "rope_theta"), "rope_theta",
                             json_object_get(rp, "rope_theta"),
                             "rope_parameters.rope_theta", NULL, NULL, &name);
    if ((rc = cfg_pos(path, name, theta, 0, 10000.0, &c->rope_theta)))
        return rc;
    c->rot_dim = c->head_dim;
    if (c->rot_dim % 2)
        return sep_fail(SEP_EFORMAT, "%s: head_dim %d is odd: rotary needs pairs",
                        path, c->head_dim);
    return SEP_OK;
}

static int cfg_neox(const char *path, json_t *root, json_t *rp, sep_config_t *c)
{
    const char *act = "", *name;
    char b[64];
    int rc, bias = 0;
    if (c->dim % c->n_heads)
        return sep_fail(SEP_EFORMAT, "%s: hidden_size %d not a multiple of num_attention_heads %d",
                        path, c->dim, c->n_heads);
    c->n_kv_heads = c->n_heads;
    c->head_dim = c->dim / c->n_heads;
    double eps = 0;
    if ((rc = cfg_pos(path, "layer_norm_eps", json_object_get(root, "layer_norm_eps"),
                      0, 1e-5, &eps)))
        return rc;
    c->norm_eps = (float)eps;
    if ((rc = cfg_str(path, "hidden_act", json_object_get(root, "hidden_act"),
                      "gelu", &act)))
        return rc;
    if (!strcmp(act, "gelu"))
        c->act = SEP_ACT_GELU;
    else if (!strcmp(act, "gelu_new") || !strcmp(act, "gelu_fast") ||
             !strcmp(act, "gelu_pytorch_tanh"))
        c->act = SEP_ACT_GELU_TANH;
    else
        return sep_fail(SEP_EUNSUPPORTED,
                        "%s: hidden_act: \"%s\" is not supported for %s (gelu, gelu_new, gelu_fast, gelu_pytorch_tanh)",
                        path, sep_clip(act, b), c->arch_name);
    /* attention_bias covers query_key_value and dense; the MLP always has biases. */
    if ((rc = cfg_bool(path, "attention_bias", json_object_get(root, "attention_bias"),
                       1, &bias)) ||
        (rc = cfg_bool(path, "use_parallel_residual",
                       json_object_get(root, "use_parallel_residual"), 1,
                       &c->parallel_residual)))
        return rc;
    c->qkv_bias = c->o_bias = bias;
    c->mlp_bias = 1;

    double pct = 0;
    json_t *v = cfg_pick(json_object_get(root, "rotary_pct"), "rotary_pct",
                         json_object_get(rp, "partial_rotary_factor"),
                         "rope_parameters.partial_rotary_factor",
                         json_object_get(root, "partial_rotary_factor"),
                         "partial_rotary_factor", &name);
    if ((rc = cfg_pos(path, name, v, 0, 1.0, &pct)))
        return rc;
    if (pct > 1)
        return sep_fail(SEP_EFORMAT, "%s: %s: %g, above 1", path, name, pct);
    c->rot_dim = (int)(c->head_dim * pct);
    if (c->rot_dim <= 0 || c->rot_dim % 2)
        return sep_fail(SEP_EFORMAT,
                        "%s: %s: %g of head_dim %d gives %d rotary dims, not a positive even number",
                        path, name, pct, c->head_dim, c->rot_dim);
    v = cfg_pick(json_object_get(root, "rotary_emb_base"), "rotary_emb_base",
                 json_object_get(root, "rope_theta"), "rope_theta",
                 json_object_get(rp, "rope_theta"), "rope_parameters.rope_theta",
                 &name);
    return cfg_pos(path, name, v, 0, 10000.0, &c->rope_theta);
}

/* Sliding-window attention of Mistral (every layer: MistralModel reads
 * no layer_types) and Qwen2 (the layers from max_window_layers on, or
 * those layer_types names), as transformers 5.17 derives it (config.h). */
static int cfg_window(const char *path, json_t *root, int qwen2, sep_config_t *c)
{
    json_t *sw = json_object_get(root, "sliding_window");
    json_t *types = qwen2 ? json_object_get(root, "layer_types") : NULL;
    int rc, use = 1, from = 0;
    if (qwen2 && (rc = cfg_bool(path, "use_sliding_window",
                                json_object_get(root, "use_sliding_window"), 0, &use)))
        return rc;
    if (!use)
        return SEP_OK;
    if (!sw)
        c->window = 4096; /* the config classes' default */
    else if (!json_is_null(sw) &&
             (rc = cfg_int(path, "sliding_window", sw, 1, 0, 2, CFG_POS_MAX, &c->window)))
        return rc;
    if (!c->window)
        return SEP_OK;
    if (!cfg_absent(types)) {
        if (!json_is_array(types) || json_array_size(types) != (size_t)c->n_layers)
            return sep_fail(SEP_EFORMAT, "%s: layer_types: not a list of %d names", path,
                            c->n_layers);
        for (int l = 0; l < c->n_layers; l++) {
            const char *t = json_string_value(json_array_get(types, l));
            if (!t || (strcmp(t, "full_attention") && strcmp(t, "sliding_attention")))
                return sep_fail(SEP_EUNSUPPORTED, "%s: layer_types[%d]: not \"full_attention\" "
                                "or \"sliding_attention\"", path, l);
            c->window_layers += !strcmp(t, "sliding_attention");
        }
        snprintf(c->window_keys, sizeof c->window_keys,
                 "use_sliding_window, sliding_window, layer_types");
    } else {
        if (qwen2 && (rc = cfg_int(path, "max_window_layers",
                                   json_object_get(root, "max_window_layers"), 0, 28, 0,
                                   CFG_DIM_MAX, &from)))
            return rc;
        c->window_layers = from < c->n_layers ? c->n_layers - from : 0;
        snprintf(c->window_keys, sizeof c->window_keys, "%s",
                 qwen2 ? "use_sliding_window, sliding_window, max_window_layers"
                       : "sliding_window");
    }
    if (!c->window_layers)
        c->window = 0;
    return SEP_OK;
}

int sep_config_load(sep_config_t *cfg, const char *dir)
{
    static const char *const llama_names[] = {"LlamaForCausalLM",
                                              "MistralForCausalLM",
                                              "Qwen2ForCausalLM"};
    sep_config_t c = {0};
    json_t *root = NULL, *gen = NULL;
    char b[64];
    int rc;
    size_t n = strlen(dir) + sizeof "/config.json";
    size_t gn = strlen(dir) + sizeof "/generation_config.json";
    char *path = malloc(n), *gpath = malloc(gn);
    if (!path || !gpath) {
        rc = sep_fail(SEP_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    snprintf(path, n, "%s/config.json", dir);
    snprintf(gpath, gn, "%s/generation_config.json", dir);
    if ((rc = cfg_read(path, 0, &root)))
        goto fail;

    json_t *archs = json_object_get(root, "architectures");
    json_t *a0 = json_array_get(archs, 0);
    if (!json_is_array(archs) || !json_is_string(a0)) {
        rc = sep_fail(SEP_EFORMAT, "%s: architectures: missing or not a list of names",
                      path);
        goto fail;
    }
    const char *arch = json_string_value(a0);
    if (!strcmp(arch, "GPTNeoXForCausalLM"))
        c.arch = SEP_ARCH_NEOX;
    for (size_t i = 0; i < sizeof llama_names / sizeof llama_names[0]; i++)
        if (!strcmp(arch, llama_names[i]))
            c.arch = SEP_ARCH_LLAMA;
    if (!c.arch) {
        rc = sep_fail(SEP_EUNSUPPORTED,
                      "%s: architectures: \"%s\" is not supported (Llama, Mistral, Qwen2, GPTNeoX ForCausalLM)",
                      path, sep_clip(arch, b));
        goto fail;
    }
    snprintf(c.arch_name, sizeof c.arch_name, "%s", arch);

    json_t *rp = json_object_get(root, "rope_parameters");
    json_t *rs = json_object_get(root, "rope_scaling");
    if (!cfg_absent(rp) && !json_is_object(rp)) {
        rc = sep_fail(SEP_EFORMAT, "%s: rope_parameters: not an object", path);
        goto fail;
    }
    if (!cfg_absent(rs) && !json_is_object(rs)) {
        rc = sep_fail(SEP_EFORMAT, "%s: rope_scaling: not an object", path);
        goto fail;
    }

    if ((rc = cfg_int(path, "num_hidden_layers", json_object_get(root, "num_hidden_layers"),
                      1, 0, 1, CFG_DIM_MAX, &c.n_layers)) ||
        (rc = cfg_int(path, "hidden_size", json_object_get(root, "hidden_size"),
                      1, 0, 1, CFG_DIM_MAX, &c.dim)) ||
        (rc = cfg_int(path, "num_attention_heads",
                      json_object_get(root, "num_attention_heads"), 1, 0, 1,
                      CFG_DIM_MAX, &c.n_heads)) ||
        (rc = cfg_int(path, "intermediate_size", json_object_get(root, "intermediate_size"),
                      1, 0, 1, CFG_DIM_MAX, &c.ffn_dim)) ||
        (rc = cfg_int(path, "vocab_size", json_object_get(root, "vocab_size"),
                      1, 0, 1, CFG_VOCAB_MAX, &c.vocab)) ||
        (rc = cfg_int(path, "max_position_embeddings",
                      json_object_get(root, "max_position_embeddings"), 0, 0, 1,
                      CFG_POS_MAX, &c.max_pos)) ||
        (rc = cfg_bool(path, "tie_word_embeddings",
                       json_object_get(root, "tie_word_embeddings"), 0,
                       &c.tied_embeddings)))
        goto fail;

    if (c.arch == SEP_ARCH_LLAMA)
        rc = cfg_llama(path, root, rp, !strcmp(arch, "Qwen2ForCausalLM"), &c);
    else
        rc = cfg_neox(path, root, rp, &c);
    if (rc)
        goto fail;

    if (c.n_heads % c.n_kv_heads) {
        rc = sep_fail(SEP_EFORMAT,
                      "%s: num_attention_heads %d not a multiple of num_key_value_heads %d",
                      path, c.n_heads, c.n_kv_heads);
        goto fail;
    }
    if ((long long)c.n_heads * c.head_dim > CFG_DIM_MAX) {
        rc = sep_fail(SEP_ERANGE,
                      "%s: num_attention_heads %d times head_dim %d over the limit %d",
                      path, c.n_heads, c.head_dim, CFG_DIM_MAX);
        goto fail;
    }
    if ((rc = cfg_rope_scaling(path, root, &c)))
        goto fail;
    if ((!strcmp(arch, "MistralForCausalLM") || !strcmp(arch, "Qwen2ForCausalLM")) &&
        (rc = cfg_window(path, root, !strcmp(arch, "Qwen2ForCausalLM"), &c)))
        goto fail;

    /* generate takes generation_config.json's eos_token_id over config.json's */
    json_t *eos = json_object_get(root, "eos_token_id");
    const char *eos_path = path;
    if ((rc = cfg_read(gpath, 1, &gen)))
        goto fail;
    if (gen && !cfg_absent(json_object_get(gen, "eos_token_id"))) {
        eos = json_object_get(gen, "eos_token_id");
        eos_path = gpath;
    }
    if ((rc = cfg_eos(eos_path, eos, &c)))
        goto fail;

    *cfg = c;
fail:
    json_decref(root);
    json_decref(gen);
    free(path);
    free(gpath);
    return rc;
}

void sep_config_rope_freqs(const sep_config_t *cfg, double *inv_freq)
{
    const double two_pi = 6.283185307179586;
    double orig = cfg->rope_orig_max_pos;
    double low = cfg->rope_low_freq_factor, high = cfg->rope_high_freq_factor;
    for (int i = 0; i < cfg->rot_dim / 2; i++) {
        double inv = 1.0 / pow(cfg->rope_theta, 2.0 * i / cfg->rot_dim);
        if (cfg->rope_llama3) {
            /* transformers' _compute_llama3_parameters: long wavelengths
             * are stretched by factor, short ones kept, the band between
             * blended linearly in orig/wavelen. */
            double wavelen = two_pi / inv;
            if (wavelen > orig / low) {
                inv /= cfg->rope_factor;
            } else if (wavelen >= orig / high) {
                double smooth = (orig / wavelen - low) / (high - low);
                inv = (1 - smooth) * inv / cfg->rope_factor + smooth * inv;
            }
        }
        inv_freq[i] = inv;
    }
}
