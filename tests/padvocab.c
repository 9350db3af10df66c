/* padvocab: a copy of a checkpoint folder with a padded vocabulary, for
 * the tests of a tokenizer with fewer ids than its model.
 *
 *     padvocab SRC DST VOCAB
 *
 * makes the folder DST (which must not exist) from SRC: config.json with
 * vocab_size set to VOCAB (more than SRC's), and every 2-D tensor of
 * vocab_size rows (the embedding, an untied lm_head) grown to VOCAB rows.
 * The new rows' elements are drawn from the tensor's own elements by a
 * xoshiro256** seeded with VOCAB: the same bytes on every machine, of
 * the scale of the real rows, so the extra logits move every softmax.
 * The index's total_size and total_parameters grow by what was added;
 * shards without such a tensor, the tokenizer and every other file are
 * symbolic links to SRC's.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "safetensors.h"
#include "sample.h"

typedef struct {
    const char *src, *dst;
    int old_vocab, vocab;
    sep_st_t *st;
    int64_t added_bytes, added_params;
} pad_t;

static int pad_grows(const pad_t *p, const sep_tensor_t *t)
{
    return t->ndim == 2 && t->shape[0] == p->old_vocab;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Tensors of one file in the order of their data. */
static int by_data(const void *a, const void *b)
{
    const char *x = (*(const sep_tensor_t *const *)a)->data;
    const char *y = (*(const sep_tensor_t *const *)b)->data;
    return (x > y) - (x < y);
}

/* out: the new rows of t, (vocab - old_vocab) rows of t's width. */
static void pad_rows(const pad_t *p, const sep_tensor_t *t, char *out)
{
    size_t have = (size_t)t->shape[0] * (size_t)t->shape[1];
    size_t elem = t->nbytes / have, n = (size_t)(p->vocab - p->old_vocab) * (size_t)t->shape[1];
    sep_rng_t r;
    sep_rng_seed(&r, (uint64_t)p->vocab);
    for (size_t i = 0; i < n; i++)
        memcpy(out + i * elem, (const char *)t->data + (sep_rng_next(&r) % have) * elem, elem);
}

/* Write the safetensors file name of SRC to DST with its growing tensors
 * padded. */
static int pad_shard(pad_t *p, const char *name, const char *path)
{
    size_t n_all = sep_st_count(p->st), n = 0;
    const sep_tensor_t **ts = malloc(n_all * sizeof *ts);
    json_t *hdr = json_object(), *meta = json_pack("{s:s}", "format", "pt");
    char *text = NULL, *rows = NULL;
    FILE *f = NULL;
    int rc = SEP_ENOMEM;
    if (!ts || !hdr || !meta || json_object_set_new(hdr, "__metadata__", meta)) {
        rc = sep_fail(SEP_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < n_all; i++)
        if (!strcmp(base_name(sep_st_at(p->st, i)->file), name))
            ts[n++] = sep_st_at(p->st, i);
    qsort(ts, n, sizeof *ts, by_data);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const sep_tensor_t *t = ts[i];
        json_t *shape = json_array();
        for (int d = 0; shape && d < t->ndim; d++)
            json_array_append_new(shape, json_integer(d == 0 && pad_grows(p, t) ? p->vocab
                                                                                  : t->shape[d]));
        uint64_t len = t->nbytes;
        if (pad_grows(p, t))
            len += t->nbytes / (size_t)t->shape[0] * (size_t)(p->vocab - p->old_vocab);
        json_t *e = shape ? json_pack("{s:s, s:o, s:[I, I]}", "dtype", t->dtype_name, "shape",
                                      shape, "data_offsets", (json_int_t)off,
                                      (json_int_t)(off + len))
                          : NULL;
        if (!e || json_object_set_new(hdr, t->name, e)) {
            rc = sep_fail(SEP_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        off += len;
    }
    if (!(text = json_dumps(hdr, JSON_COMPACT))) {
        rc = sep_fail(SEP_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    /* the data area starts 8-aligned: the header is padded with spaces */
    size_t hlen = strlen(text), padded = (hlen + 7) / 8 * 8;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    if (!(f = fopen(path, "wbx"))) {
        rc = sep_fail(SEP_EIO, "%s: %s", path, strerror(errno));
        goto done;
    }
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(text, 1, hlen, f) == hlen;
    for (size_t i = hlen; ok && i < padded; i++)
        ok = fputc(' ', f) != EOF;
    for (size_t i = 0; ok && i < n; i++) {
        const sep_tensor_t *t = ts[i];
        ok = fwrite(t->data, 1, t->nbytes, f) == t->nbytes;
        if (!ok || !pad_grows(p, t))
            continue;
        size_t extra = t->nbytes / (size_t)t->shape[0] * (size_t)(p->vocab - p->old_vocab);
        if (!(rows = malloc(extra))) {
            rc = sep_fail(SEP_ENOMEM, "%s: out of memory for %zu bytes", path, extra);
            goto done;
        }
        pad_rows(p, t, rows);
        ok = fwrite(rows, 1, extra, f) == extra;
        free(rows);
        rows = NULL;
        p->added_bytes += (int64_t)extra;
        p->added_params += (int64_t)(p->vocab - p->old_vocab) * t->shape[1];
    }
    if (fclose(f) != 0)
        ok = 0;
    f = NULL;
    rc = ok ? SEP_OK : sep_fail(SEP_EIO, "%s: write failed: %s", path, strerror(errno));
done:
    if (f)
        fclose(f);
    free(rows);
    free(text);
    json_decref(hdr);
    free(ts);
    return rc;
}

static int pad_write_json(json_t *root, const char *path)
{
    if (json_dump_file(root, path, JSON_INDENT(2)) != 0)
        return sep_fail(SEP_EIO, "%s: cannot write", path);
    return SEP_OK;
}

/* config.json with vocab_size set to VOCAB. */
static int pad_config(pad_t *p, const char *from, const char *to)
{
    json_error_t jerr;
    json_t *root = json_load_file(from, 0, &jerr);
    if (!root)
        return sep_fail(SEP_EFORMAT, "%s: line %d: %s", from, jerr.line, jerr.text);
    int rc = json_object_set_new(root, "vocab_size", json_integer(p->vocab))
                 ? sep_fail(SEP_ENOMEM, "%s: out of memory", to)
                 : pad_write_json(root, to);
    json_decref(root);
    return rc;
}

/* The index with metadata.total_size and total_parameters grown. */
static int pad_index(pad_t *p, const char *from, const char *to)
{
    json_error_t jerr;
    json_t *root = json_load_file(from, 0, &jerr);
    if (!root)
        return sep_fail(SEP_EFORMAT, "%s: line %d: %s", from, jerr.line, jerr.text);
    json_t *meta = json_object_get(root, "metadata");
    static const char *const keys[] = { "total_size", "total_parameters" };
    int64_t add[] = { p->added_bytes, p->added_params };
    int rc = SEP_OK;
    for (int i = 0; i < 2 && !rc; i++) {
        json_t *v = json_object_get(meta, keys[i]);
        if (v && (!json_is_integer(v) ||
                  json_integer_set(v, json_integer_value(v) + (json_int_t)add[i])))
            rc = sep_fail(SEP_EFORMAT, "%s: metadata.%s: not an integer", from, keys[i]);
    }
    if (!rc)
        rc = pad_write_json(root, to);
    json_decref(root);
    return rc;
}

static int pad_run(pad_t *p)
{
    char from[PATH_MAX], to[PATH_MAX], real[PATH_MAX];
    snprintf(from, sizeof from, "%s/config.json", p->src);
    json_error_t jerr;
    json_t *cfg = json_load_file(from, 0, &jerr);
    if (!cfg)
        return sep_fail(SEP_EFORMAT, "%s: line %d: %s", from, jerr.line, jerr.text);
    json_t *v = json_object_get(cfg, "vocab_size");
    p->old_vocab = json_is_integer(v) ? (int)json_integer_value(v) : 0;
    json_decref(cfg);
    if (p->old_vocab < 1)
        return sep_fail(SEP_EFORMAT, "%s: vocab_size: missing or not an integer", from);
    if (p->vocab <= p->old_vocab)
        return sep_fail(SEP_EINVAL, "VOCAB %d: not above %s's vocab_size %d", p->vocab, p->src,
                        p->old_vocab);
    int rc = sep_st_open(&p->st, p->src);
    if (rc)
        return rc;
    int grows = 0;
    for (size_t i = 0; i < sep_st_count(p->st); i++)
        grows += pad_grows(p, sep_st_at(p->st, i));
    if (!grows)
        return sep_fail(SEP_EFORMAT, "%s: no tensor has vocab_size (%d) rows", p->src,
                        p->old_vocab);
    if (mkdir(p->dst, 0755) != 0)
        return sep_fail(SEP_EIO, "%s: %s", p->dst, strerror(errno));
    DIR *dir = opendir(p->src);
    if (!dir)
        return sep_fail(SEP_EIO, "%s: %s", p->src, strerror(errno));
    /* the index last: it counts what the shards added */
    int has_index = 0;
    struct dirent *e;
    while (!rc && (e = readdir(dir))) {
        const char *name = e->d_name;
        if (name[0] == '.')
            continue;
        snprintf(from, sizeof from, "%s/%s", p->src, name);
        snprintf(to, sizeof to, "%s/%s", p->dst, name);
        int shard = 0;
        for (size_t i = 0; i < sep_st_count(p->st); i++)
            shard |= pad_grows(p, sep_st_at(p->st, i)) &&
                     !strcmp(base_name(sep_st_at(p->st, i)->file), name);
        if (!strcmp(name, "config.json"))
            rc = pad_config(p, from, to);
        else if (!strcmp(name, "model.safetensors.index.json"))
            has_index = 1;
        else if (shard)
            rc = pad_shard(p, name, to);
        else if (!realpath(from, real) || symlink(real, to) != 0)
            rc = sep_fail(SEP_EIO, "%s: %s", to, strerror(errno));
    }
    closedir(dir);
    if (!rc && has_index) {
        snprintf(from, sizeof from, "%s/model.safetensors.index.json", p->src);
        snprintf(to, sizeof to, "%s/model.safetensors.index.json", p->dst);
        rc = pad_index(p, from, to);
    }
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: padvocab SRC DST VOCAB\n");
        return 2;
    }
    char *end;
    errno = 0;
    long vocab = strtol(argv[3], &end, 10);
    if (errno || *end || end == argv[3] || vocab < 2 || vocab > INT_MAX) {
        fprintf(stderr, "padvocab: VOCAB '%s': not a number of ids\n", argv[3]);
        return 2;
    }
    pad_t p = { .src = argv[1], .dst = argv[2], .vocab = (int)vocab };
    int rc = pad_run(&p);
    sep_st_destroy(&p.st);
    if (rc) {
        fprintf(stderr, "padvocab: %s\n", sep_errmsg());
        return 1;
    }
    return 0;
}
