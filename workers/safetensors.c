/* safetensors.c: map a checkpoint folder's safetensors files, validate
 * every header, look tensors up by name, convert them to fp32 or read
 * their bytes as stored.
 *
 * Contract in safetensors.h. Each file is mmapped read-only and stays
 * mapped (and open, for sep_st_read's preads) until sep_st_destroy(). A
 * header is trusted only after every
 * entry has been checked against the file's real size, so a tensor's data
 * pointer always lies inside its mapping. Tensors are kept in one array
 * sorted by name: sep_st_find() is a bsearch.
 */
#define _POSIX_C_SOURCE 200809L /* mmap, O_CLOEXEC, strdup under -std=c11 */
#include "safetensors.h"
#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tensor data are little-endian; F32 is copied as is. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "sepd reads safetensors on little-endian hosts only"
#endif

#define ST_SINGLE "model.safetensors"
#define ST_INDEX "model.safetensors.index.json"
/* The reference implementation refuses larger headers too; the bound
 * keeps a lying length from making jansson chew on gigabytes. */
#define ST_MAX_HEADER 100000000u
/* sep_st_read gives each thread pieces of at least this many bytes. */
#define ST_READ_PIECE ((size_t)4 << 20)

typedef struct {
    char *path;
    int fd;              /* open while map is set */
    uint8_t *map;
    size_t size;
    const uint8_t *data; /* the data area, after the header */
    size_t data_size;
} st_file_t;

struct sep_st {
    char *source;        /* model.safetensors or the index: named when a lookup fails */
    st_file_t *files;
    size_t n_files;
    sep_tensor_t *tensors; /* sorted by name */
    size_t n_tensors, cap;
};

/* Every dtype of the safetensors format, with its size in bits (the
 * fp4/fp6 ones pack below a byte). dtype_name points into this table. */
static const struct {
    const char *name;
    sep_dtype_t dtype;
    unsigned bits;
} st_dtypes[] = {
    {"F32", SEP_DT_F32, 32},      {"F16", SEP_DT_F16, 16},
    {"BF16", SEP_DT_BF16, 16},    {"F64", SEP_DT_OTHER, 64},
    {"I64", SEP_DT_OTHER, 64},    {"U64", SEP_DT_OTHER, 64},
    {"I32", SEP_DT_OTHER, 32},    {"U32", SEP_DT_OTHER, 32},
    {"I16", SEP_DT_OTHER, 16},    {"U16", SEP_DT_OTHER, 16},
    {"I8", SEP_DT_OTHER, 8},      {"U8", SEP_DT_OTHER, 8},
    {"BOOL", SEP_DT_OTHER, 8},    {"F8_E4M3", SEP_DT_OTHER, 8},
    {"F8_E5M2", SEP_DT_OTHER, 8}, {"F8_E8M0", SEP_DT_OTHER, 8},
    {"F6_E2M3", SEP_DT_OTHER, 6}, {"F6_E3M2", SEP_DT_OTHER, 6},
    {"F4", SEP_DT_OTHER, 4},      {"C64", SEP_DT_OTHER, 64},
};

static int st_has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    return 0;
}

static char *st_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* "[2,3]" into buf, cut short if cap is too small. */
static const char *st_shape_str(char *buf, size_t cap, int ndim,
                                const int64_t *shape)
{
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++) {
        int n = snprintf(buf + len, cap - len, "%s%lld", i ? "," : "",
                         (long long)shape[i]);
        len = n < 0 ? cap : len + (size_t)n;
    }
    if (len < cap)
        snprintf(buf + len, cap - len, "]");
    return buf;
}

/* Map f->path whole; index, when set, is the file that named it. */
static int st_map(st_file_t *f, const char *index)
{
    struct stat sb;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT && index)
            return sep_fail(SEP_ENOTFOUND, "%s: missing (named by %s)",
                            f->path, index);
        return sep_fail(errno == ENOENT ? SEP_ENOTFOUND : SEP_EIO, "%s: %s",
                        f->path, strerror(errno));
    }
    if (fstat(fd, &sb) < 0) {
        int rc = sep_fail(SEP_EIO, "%s: %s", f->path, strerror(errno));
        close(fd);
        return rc;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return sep_fail(SEP_EFORMAT, "%s: not a regular file", f->path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return sep_fail(SEP_EFORMAT,
                        "%s: %lld bytes, shorter than the 8-byte header length",
                        f->path, (long long)sb.st_size);
    }
    if ((unsigned long long)sb.st_size > SIZE_MAX) {
        close(fd);
        return sep_fail(SEP_EUNSUPPORTED, "%s: too large to map", f->path);
    }
    f->size = (size_t)sb.st_size;
    void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    if (map == MAP_FAILED) {
        close(fd);
        return sep_fail(SEP_EIO, "%s: mmap: %s", f->path, strerror(err));
    }
    f->map = map;
    f->fd = fd; /* bulk reads pread it: no page tables for the whole file */
    return SEP_OK;
}

/* Check one header entry and fill t (its name is set by the caller). */
static int st_entry(const st_file_t *f, const char *name, json_t *e,
                    sep_tensor_t *t)
{
    char b1[64], b2[128];
    if (!json_is_object(e))
        return sep_fail(SEP_EFORMAT, "%s: tensor %s: entry is not an object",
                        f->path, name);

    json_t *dt = json_object_get(e, "dtype");
    if (!json_is_string(dt))
        return sep_fail(SEP_EFORMAT, "%s: tensor %s: dtype missing or not a string",
                        f->path, name);
    unsigned bits = 0;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (!strcmp(json_string_value(dt), st_dtypes[i].name)) {
            t->dtype_name = st_dtypes[i].name;
            t->dtype = st_dtypes[i].dtype;
            bits = st_dtypes[i].bits;
            break;
        }
    if (!bits)
        return sep_fail(SEP_EFORMAT, "%s: tensor %s: unknown dtype \"%s\"",
                        f->path, name, sep_clip(json_string_value(dt), b1));

    json_t *shape = json_object_get(e, "shape");
    if (!json_is_array(shape))
        return sep_fail(SEP_EFORMAT, "%s: tensor %s: shape missing or not a list",
                        f->path, name);
    if (json_array_size(shape) > SEP_ST_MAX_DIMS)
        return sep_fail(SEP_EUNSUPPORTED, "%s: tensor %s: %zu dimensions, over %d",
                        f->path, name, json_array_size(shape), SEP_ST_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    /* Counted in bits so the packed fp4/fp6 types need no special case. */
    uint64_t nbits = bits;
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(shape, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return sep_fail(SEP_EFORMAT,
                            "%s: tensor %s: shape[%d] is not a non-negative integer",
                            f->path, name, i);
        t->shape[i] = json_integer_value(d);
        if (__builtin_mul_overflow(nbits, (uint64_t)t->shape[i], &nbits))
            return sep_fail(SEP_EFORMAT, "%s: tensor %s: shape %s overflows",
                            f->path, name,
                            st_shape_str(b2, sizeof b2, i + 1, t->shape));
    }

    json_t *off = json_object_get(e, "data_offsets");
    json_t *jb = json_array_get(off, 0), *je = json_array_get(off, 1);
    if (!json_is_array(off) || json_array_size(off) != 2 ||
        !json_is_integer(jb) || !json_is_integer(je) ||
        json_integer_value(jb) < 0 || json_integer_value(je) < 0)
        return sep_fail(SEP_EFORMAT,
                        "%s: tensor %s: data_offsets is not a pair of non-negative integers",
                        f->path, name);
    uint64_t begin = (uint64_t)json_integer_value(jb);
    uint64_t end = (uint64_t)json_integer_value(je);
    if (begin > end)
        return sep_fail(SEP_EFORMAT, "%s: tensor %s: data_offsets [%llu,%llu] reversed",
                        f->path, name, (unsigned long long)begin,
                        (unsigned long long)end);
    if (end > f->data_size)
        return sep_fail(SEP_EFORMAT,
                        "%s: tensor %s: data_offsets [%llu,%llu] beyond the data area (%zu bytes)",
                        f->path, name, (unsigned long long)begin,
                        (unsigned long long)end, f->data_size);
    if (nbits % 8 || nbits / 8 != end - begin)
        return sep_fail(SEP_EFORMAT,
                        "%s: tensor %s: shape %s of %s is %llu bits, data_offsets [%llu,%llu] hold %llu bytes",
                        f->path, name,
                        st_shape_str(b2, sizeof b2, t->ndim, t->shape),
                        t->dtype_name, (unsigned long long)nbits,
                        (unsigned long long)begin, (unsigned long long)end,
                        (unsigned long long)(end - begin));
    t->file = f->path;
    t->data = f->data + begin;
    t->nbytes = (size_t)(end - begin);
    return SEP_OK;
}

static int st_cmp_data(const void *a, const void *b)
{
    const sep_tensor_t *x = *(const sep_tensor_t *const *)a;
    const sep_tensor_t *y = *(const sep_tensor_t *const *)b;
    const uint8_t *p = x->data, *q = y->data;
    return p < q ? -1 : p > q;
}

/* No two tensors of one file may share a byte; empty ones share none. */
static int st_check_overlap(const st_file_t *f, sep_tensor_t *t, size_t n)
{
    const sep_tensor_t **v = malloc((n ? n : 1) * sizeof *v);
    size_t m = 0;
    int rc = SEP_OK;
    if (!v)
        return sep_fail(SEP_ENOMEM, "%s: out of memory", f->path);
    for (size_t i = 0; i < n; i++)
        if (t[i].nbytes)
            v[m++] = &t[i];
    qsort(v, m, sizeof *v, st_cmp_data);
    for (size_t i = 1; i < m; i++) {
        const uint8_t *prev_end = (const uint8_t *)v[i - 1]->data + v[i - 1]->nbytes;
        if ((const uint8_t *)v[i]->data < prev_end) {
            rc = sep_fail(SEP_EFORMAT, "%s: tensor %s: data overlaps tensor %s",
                          f->path, v[i]->name, v[i - 1]->name);
            break;
        }
    }
    free(v);
    return rc;
}

/* Map one file, validate its header and append its tensors to st. */
static int st_load_file(sep_st_t *st, st_file_t *f, const char *index)
{
    json_error_t jerr;
    json_t *root = NULL;
    size_t first = st->n_tensors;
    int rc = st_map(f, index);
    if (rc)
        return rc;

    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->map[i];
    if (hlen > f->size - 8)
        return sep_fail(SEP_EFORMAT,
                        "%s: header length %llu beyond the file size (%zu bytes)",
                        f->path, (unsigned long long)hlen, f->size);
    if (hlen > ST_MAX_HEADER)
        return sep_fail(SEP_EUNSUPPORTED, "%s: header length %llu over the %u limit",
                        f->path, (unsigned long long)hlen, ST_MAX_HEADER);
    f->data = f->map + 8 + hlen;
    f->data_size = f->size - 8 - (size_t)hlen;

    /* Duplicate keys would make a tensor's meaning ambiguous. */
    root = json_loadb((const char *)f->map + 8, (size_t)hlen,
                      JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return sep_fail(SEP_EFORMAT, "%s: header is not JSON: %s (at byte %d)",
                        f->path, jerr.text, jerr.position);
    if (!json_is_object(root)) {
        rc = sep_fail(SEP_EFORMAT, "%s: header is not a JSON object", f->path);
        goto fail;
    }

    size_t want = st->n_tensors + json_object_size(root);
    if (want > st->cap) {
        sep_tensor_t *t = realloc(st->tensors, want * sizeof *t);
        if (!t) {
            rc = sep_fail(SEP_ENOMEM, "%s: out of memory", f->path);
            goto fail;
        }
        st->tensors = t;
        st->cap = want;
    }

    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        char b[64];
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val)) {
                rc = sep_fail(SEP_EFORMAT, "%s: __metadata__ is not an object", f->path);
                goto fail;
            }
            continue;
        }
        if (!*key || st_has_control(key)) {
            rc = sep_fail(SEP_EFORMAT, "%s: tensor name \"%s\" is empty or holds control characters",
                          f->path, sep_clip(key, b));
            goto fail;
        }
        sep_tensor_t *t = &st->tensors[st->n_tensors];
        memset(t, 0, sizeof *t);
        rc = st_entry(f, key, val, t);
        if (rc)
            goto fail;
        if (!(t->name = strdup(key))) {
            rc = sep_fail(SEP_ENOMEM, "%s: out of memory", f->path);
            goto fail;
        }
        st->n_tensors++;
    }
    rc = st_check_overlap(f, st->tensors + first, st->n_tensors - first);
fail:
    json_decref(root);
    return rc;
}

static int st_cmp_name(const void *a, const void *b)
{
    return strcmp(((const sep_tensor_t *)a)->name, ((const sep_tensor_t *)b)->name);
}

static int st_cmp_key(const void *key, const void *elem)
{
    return strcmp(key, ((const sep_tensor_t *)elem)->name);
}

static int st_cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The distinct shard names of the index's weight_map, checked to be plain
 * names inside dir; *names point into wm and live as long as it does. */
static int st_index_files(const char *index, json_t *wm, const char ***names,
                          size_t *n)
{
    size_t m = 0;
    const char *key;
    json_t *val;
    const char **v = malloc((json_object_size(wm) ? json_object_size(wm) : 1) * sizeof *v);
    if (!v)
        return sep_fail(SEP_ENOMEM, "%s: out of memory", index);
    json_object_foreach(wm, key, val) {
        char b1[64], b2[64];
        const char *s = json_string_value(val);
        if (!s) {
            free(v);
            return sep_fail(SEP_EFORMAT, "%s: weight_map: tensor %s: file is not a string",
                            index, sep_clip(key, b1));
        }
        /* A shard is a file of this folder: no path may lead out of it. */
        if (!*s || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..") ||
            st_has_control(s)) {
            free(v);
            return sep_fail(SEP_EFORMAT,
                            "%s: weight_map: tensor %s: \"%s\" is not a file name in the folder",
                            index, sep_clip(key, b1), sep_clip(s, b2));
        }
        v[m++] = s;
    }
    qsort(v, m, sizeof *v, st_cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < m; i++)
        if (!u || strcmp(v[u - 1], v[i]))
            v[u++] = v[i];
    *names = v;
    *n = u;
    return SEP_OK;
}

/* Each tensor must sit in the shard the index names, and each shard
 * tensor must be listed. */
static int st_check_index(const sep_st_t *st, const char *dir,
                          const char *index, json_t *wm)
{
    const char *key;
    json_t *val;
    char b[64];
    json_object_foreach(wm, key, val) {
        const sep_tensor_t *t = sep_st_find(st, key);
        const char *file = json_string_value(val);
        if (!t)
            return sep_fail(SEP_EFORMAT, "%s/%s: tensor %s: absent, though %s lists it there",
                            dir, file, sep_clip(key, b), index);
        const char *slash = strrchr(t->file, '/');
        if (strcmp(slash ? slash + 1 : t->file, file))
            return sep_fail(SEP_EFORMAT, "%s: tensor %s: found here, but %s places it in %s",
                            t->file, t->name, index, file);
    }
    for (size_t i = 0; i < st->n_tensors; i++)
        if (!json_object_get(wm, st->tensors[i].name))
            return sep_fail(SEP_EFORMAT, "%s: tensor %s: not listed in %s",
                            st->tensors[i].file, st->tensors[i].name, index);
    return SEP_OK;
}

/* Fill st->files from the index at st->source; *wm_out keeps the
 * weight_map for the cross-check once all shards are loaded. */
static int st_open_index(sep_st_t *st, const char *dir, json_t **root_out,
                         json_t **wm_out)
{
    json_error_t jerr;
    const char **names = NULL;
    size_t n = 0;
    int rc;
    json_t *root = json_load_file(st->source, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return sep_fail(SEP_EFORMAT, "%s: line %d: %s", st->source, jerr.line,
                        jerr.text);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        rc = sep_fail(SEP_EFORMAT, "%s: weight_map missing or not an object",
                      st->source);
        goto fail;
    }
    if (!json_object_size(wm)) {
        rc = sep_fail(SEP_EFORMAT, "%s: weight_map lists no tensors", st->source);
        goto fail;
    }
    if ((rc = st_index_files(st->source, wm, &names, &n)))
        goto fail;
    if (!(st->files = calloc(n, sizeof *st->files))) {
        rc = sep_fail(SEP_ENOMEM, "%s: out of memory", st->source);
        goto fail;
    }
    for (; st->n_files < n; st->n_files++)
        if (!(st->files[st->n_files].path = st_join(dir, names[st->n_files]))) {
            rc = sep_fail(SEP_ENOMEM, "%s: out of memory", st->source);
            goto fail;
        }
    free(names);
    *root_out = root;
    *wm_out = wm;
    return SEP_OK;
fail:
    free(names);
    json_decref(root);
    return rc;
}

/* SEP_OK if path exists, SEP_ENOTFOUND if not, else an I/O failure. */
static int st_exists(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) == 0)
        return SEP_OK;
    if (errno == ENOENT)
        return SEP_ENOTFOUND;
    return sep_fail(SEP_EIO, "%s: %s", path, strerror(errno));
}

int sep_st_open(sep_st_t **out, const char *dir)
{
    json_t *root = NULL, *wm = NULL;
    char *single = NULL;
    int rc;
    *out = NULL;
    sep_st_t *st = calloc(1, sizeof *st);
    if (!st)
        return sep_fail(SEP_ENOMEM, "%s: out of memory", dir);

    /* As transformers does, a single file wins over an index. */
    if (!(single = st_join(dir, ST_SINGLE)) ||
        !(st->source = st_join(dir, ST_INDEX))) {
        rc = sep_fail(SEP_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    rc = st_exists(single);
    if (rc == SEP_OK) {
        free(st->source);
        st->source = single;
        single = NULL;
        if (!(st->files = calloc(1, sizeof *st->files)) ||
            !(st->files[0].path = strdup(st->source))) {
            rc = sep_fail(SEP_ENOMEM, "%s: out of memory", dir);
            goto fail;
        }
        st->n_files = 1;
    } else if (rc != SEP_ENOTFOUND) {
        goto fail;
    } else if ((rc = st_exists(st->source)) == SEP_ENOTFOUND) {
        rc = sep_fail(SEP_ENOTFOUND, "%s: neither %s nor %s", dir, ST_SINGLE,
                      ST_INDEX);
        goto fail;
    } else if (rc || (rc = st_open_index(st, dir, &root, &wm))) {
        goto fail;
    }

    for (size_t i = 0; i < st->n_files; i++)
        if ((rc = st_load_file(st, &st->files[i], wm ? st->source : NULL)))
            goto fail;

    if (st->n_tensors) /* a header may hold no tensor, leaving the array NULL */
        qsort(st->tensors, st->n_tensors, sizeof *st->tensors, st_cmp_name);
    for (size_t i = 1; i < st->n_tensors; i++)
        if (!strcmp(st->tensors[i - 1].name, st->tensors[i].name)) {
            rc = sep_fail(SEP_EFORMAT, "%s: tensor %s: also in %s",
                          st->tensors[i].file, st->tensors[i].name,
                          st->tensors[i - 1].file);
            goto fail;
        }
    if (wm && (rc = st_check_index(st, dir, st->source, wm)))
        goto fail;

    json_decref(root);
    free(single);
    *out = st;
    return SEP_OK;
fail:
    json_decref(root);
    free(single);
    sep_st_destroy(&st);
    return rc;
}

void sep_st_destroy(sep_st_t **self_p)
{
    sep_st_t *st = self_p ? *self_p : NULL;
    if (!st)
        return;
    for (size_t i = 0; i < st->n_tensors; i++)
        free((char *)st->tensors[i].name);
    free(st->tensors);
    for (size_t i = 0; i < st->n_files; i++) {
        if (st->files[i].map) {
            munmap(st->files[i].map, st->files[i].size);
            close(st->files[i].fd);
        }
        free(st->files[i].path);
    }
    free(st->files);
    free(st->source);
    free(st);
    *self_p = NULL;
}

const sep_tensor_t *sep_st_find(const sep_st_t *st, const char *name)
{
    if (!st->n_tensors)
        return NULL;
    return bsearch(name, st->tensors, st->n_tensors, sizeof *st->tensors,
                   st_cmp_key);
}

size_t sep_st_count(const sep_st_t *st)
{
    return st->n_tensors;
}

const sep_tensor_t *sep_st_at(const sep_st_t *st, size_t i)
{
    return i < st->n_tensors ? &st->tensors[i] : NULL;
}

int sep_st_get(const sep_st_t *st, const char *name, int ndim, const int64_t *shape,
               const sep_tensor_t **out, sep_elem_t *elem)
{
    char b1[128], b2[128];
    const sep_tensor_t *t = sep_st_find(st, name);
    *out = NULL;
    if (!t)
        return sep_fail(SEP_ENOTFOUND, "%s: tensor %s: not found", st->source, name);
    if (ndim < 0 || ndim > SEP_ST_MAX_DIMS)
        return sep_fail(SEP_EINVAL, "%s: tensor %s: %d dimensions asked",
                        t->file, name, ndim);
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same)
        return sep_fail(SEP_EFORMAT, "%s: tensor %s: shape %s, expected %s", t->file,
                        name, st_shape_str(b1, sizeof b1, t->ndim, t->shape),
                        st_shape_str(b2, sizeof b2, ndim, shape));
    switch (t->dtype) {
    case SEP_DT_F32: *elem = SEP_ELEM_F32; break;
    case SEP_DT_F16: *elem = SEP_ELEM_F16; break;
    case SEP_DT_BF16: *elem = SEP_ELEM_BF16; break;
    default:
        return sep_fail(SEP_EUNSUPPORTED, "%s: tensor %s: dtype %s cannot be read as F32",
                        t->file, name, t->dtype_name);
    }
    *out = t;
    return SEP_OK;
}

int sep_st_read_f32(const sep_st_t *st, const char *name, int ndim,
                    const int64_t *shape, float *dst)
{
    const sep_tensor_t *t;
    sep_elem_t e;
    int rc = sep_st_get(st, name, ndim, shape, &t, &e);
    if (!rc)
        sep_elem_to_f32(dst, t->data, t->nbytes / sep_elem_size(e), e);
    return rc;
}

int sep_st_read(const sep_st_t *st, const sep_tensor_t *t, size_t off, size_t len, void *dst)
{
    const st_file_t *f = NULL;
    for (size_t i = 0; i < st->n_files && !f; i++)
        if ((const uint8_t *)t->data >= st->files[i].data &&
            (const uint8_t *)t->data <= st->files[i].data + st->files[i].data_size)
            f = &st->files[i];
    if (!f)
        return sep_fail(SEP_EINVAL, "%s: tensor %s: not one of this folder's", st->source,
                        t->name);
    if (off > t->nbytes || len > t->nbytes - off)
        return sep_fail(SEP_EINVAL, "%s: tensor %s: bytes [%zu, %zu) of %zu asked", f->path,
                        t->name, off, off + len, t->nbytes);
    size_t base = (size_t)((const uint8_t *)t->data - f->map) + off;
    long pieces = (long)((len + ST_READ_PIECE - 1) / ST_READ_PIECE);
    int err = 0; /* an errno, or -1: the file ended early */
    #pragma omp parallel for schedule(static) if (pieces > 1)
    for (long i = 0; i < pieces; i++) {
        size_t a = (size_t)i * ST_READ_PIECE;
        size_t b = a + ST_READ_PIECE < len ? a + ST_READ_PIECE : len;
        while (a < b) {
            ssize_t got = pread(f->fd, (uint8_t *)dst + a, b - a, (off_t)(base + a));
            if (got > 0) {
                a += (size_t)got;
                continue;
            }
            if (got < 0 && errno == EINTR)
                continue;
            #pragma omp critical(st_read_err)
            err = got < 0 ? errno : -1;
            break;
        }
    }
    if (err)
        return sep_fail(SEP_EIO, "%s: tensor %s: %s", f->path, t->name,
                        err < 0 ? "the file ended before its data (it shrank since it was "
                                  "opened)" : strerror(err));
    return SEP_OK;
}
