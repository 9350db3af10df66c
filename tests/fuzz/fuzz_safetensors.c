/* fuzz_safetensors.c: the safetensors header parser (workers/safetensors.c).
 *
 * Input: a mode byte, then the bytes of the files. Mode even: the rest is
 * model.safetensors. Mode odd: the rest is cut at each "\n--file--\n":
 * model.safetensors.index.json, then s1.safetensors, s2.safetensors...
 * (an index naming them). A folder that opens has each tensor read back
 * as stored and, when its dtype converts, as fp32 (checked: its shape). */
#define _GNU_SOURCE
#include "fuzz.h"

#include <string.h>
#include <unistd.h>

#include "err.h"
#include "safetensors.h"

#define FZ_CUT "\n--file--\n"
#define FZ_MAX_FILES 4

static void fz_unlink(const char *name)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[32];
    fz_unlink("model.safetensors");
    fz_unlink("model.safetensors.index.json");
    for (int i = 1; i <= FZ_MAX_FILES; i++) {
        snprintf(name, sizeof name, "s%d.safetensors", i);
        fz_unlink(name);
    }
    if (!size)
        return 0;
    const uint8_t *p = data + 1, *end = data + size;
    if (!(data[0] & 1)) {
        fuzz_write("model.safetensors", p, (size_t)(end - p));
    } else {
        for (int i = 0; i <= FZ_MAX_FILES && p <= end; i++) {
            const uint8_t *cut = memmem(p, (size_t)(end - p), FZ_CUT, strlen(FZ_CUT));
            const uint8_t *stop = cut ? cut : end;
            if (i == 0)
                snprintf(name, sizeof name, "model.safetensors.index.json");
            else
                snprintf(name, sizeof name, "s%d.safetensors", i);
            fuzz_write(name, p, (size_t)(stop - p));
            if (!cut)
                break;
            p = cut + strlen(FZ_CUT);
        }
    }
    sep_st_t *st = NULL;
    if (sep_st_open(&st, fuzz_dir())) {
        FUZZ_CHECK(!st && sep_errmsg()[0], "a failed open names its cause");
        return 0;
    }
    for (size_t i = 0; i < sep_st_count(st); i++) {
        const sep_tensor_t *t = sep_st_at(st, i);
        FUZZ_CHECK(sep_st_find(st, t->name) == t, "tensor %s found by name", t->name);
        size_t n = t->nbytes < 4096 ? t->nbytes : 4096;
        uint8_t *buf = malloc(n ? n : 1);
        FUZZ_CHECK(buf, "memory");
        FUZZ_CHECK(!sep_st_read(st, t, 0, n, buf), "%s: reading its bytes: %s", t->name,
                   sep_errmsg());
        FUZZ_CHECK(sep_st_read(st, t, t->nbytes, 1, buf), "a read past %s", t->name);
        free(buf);
        size_t elems = 1;
        for (int d = 0; d < t->ndim; d++)
            elems *= (size_t)t->shape[d];
        if (t->dtype != SEP_DT_OTHER && elems <= (1 << 16)) {
            float *f = malloc(elems ? elems * sizeof *f : 1);
            FUZZ_CHECK(f, "memory");
            FUZZ_CHECK(!sep_st_read_f32(st, t->name, t->ndim, t->shape, f), "%s as fp32: %s",
                       t->name, sep_errmsg());
            free(f);
        }
    }
    sep_st_destroy(&st);
    FUZZ_CHECK(!st, "destroy clears the pointer");
    return 0;
}
