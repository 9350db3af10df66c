/* fingerprint.c: a model folder's fingerprint (fingerprint.h). */
#include "fingerprint.h"
#include "err.h"
#include "safetensors.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FP_SAMPLE 256

static int fp_file(crypto_generichash_state *h, const char *dir, const char *name)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return sep_fail(SEP_EIO, "%s: %s", path, strerror(errno));
    unsigned char buf[1 << 16];
    size_t n;
    uint64_t len = 0;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        crypto_generichash_update(h, buf, n);
        len += n;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad)
        return sep_fail(SEP_EIO, "%s: read error", path);
    crypto_generichash_update(h, (const unsigned char *)&len, sizeof len);
    return SEP_OK;
}

static int fp_by_name(const void *a, const void *b)
{
    const sep_tensor_t *x = *(const sep_tensor_t *const *)a, *y = *(const sep_tensor_t *const *)b;
    return strcmp(x->name, y->name);
}

int sep_model_fingerprint(const char *dir, uint8_t out[SEP_FINGERPRINT_BYTES])
{
    if (sodium_init() < 0)
        return sep_fail(SEP_EIO, "libsodium: initialisation failed");
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, SEP_FINGERPRINT_BYTES);
    sep_st_t *st = NULL;
    const sep_tensor_t **order = NULL;
    int rc;
    if ((rc = fp_file(&h, dir, "config.json")) || (rc = fp_file(&h, dir, "tokenizer.json")) ||
        (rc = sep_st_open(&st, dir)))
        goto fail;
    size_t n = sep_st_count(st);
    if (!(order = malloc((n ? n : 1) * sizeof *order))) {
        rc = sep_fail(SEP_ENOMEM, "fingerprint: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        order[i] = sep_st_at(st, i);
    qsort(order, n, sizeof *order, fp_by_name);
    for (size_t i = 0; i < n; i++) {
        const sep_tensor_t *t = order[i];
        uint64_t meta[2 + SEP_ST_MAX_DIMS] = { (uint64_t)t->nbytes, (uint64_t)t->ndim };
        for (int d = 0; d < t->ndim; d++)
            meta[2 + d] = (uint64_t)t->shape[d];
        crypto_generichash_update(&h, (const unsigned char *)t->name, strlen(t->name) + 1);
        crypto_generichash_update(&h, (const unsigned char *)t->dtype_name,
                                  strlen(t->dtype_name) + 1);
        crypto_generichash_update(&h, (const unsigned char *)meta, sizeof meta);
        size_t at[3] = { 0, t->nbytes / 2, t->nbytes > FP_SAMPLE ? t->nbytes - FP_SAMPLE : 0 };
        for (int k = 0; k < 3; k++) {
            size_t len = t->nbytes - at[k] < FP_SAMPLE ? t->nbytes - at[k] : FP_SAMPLE;
            crypto_generichash_update(&h, (const unsigned char *)t->data + at[k], len);
        }
    }
    crypto_generichash_final(&h, out, SEP_FINGERPRINT_BYTES);
fail:
    free(order);
    sep_st_destroy(&st);
    return rc;
}

const char *sep_fingerprint_hex(const uint8_t *fp, size_t n, char *buf)
{
    for (size_t i = 0; i < n; i++)
        snprintf(buf + 2 * i, 3, "%02x", fp[i]);
    buf[2 * n] = '\0';
    return buf;
}
