/* test_loader.c: the safetensors reader and the config.json parser, on
 * the shared checkpoints and on hand-made bad files.
 *
 * Shared checkpoints come from $SEP_SHARED/models, else from
 * SEP_SHARED_DIR/models (given at compile time). Bad files are written in
 * a mkdtemp() folder, one subfolder per case, removed at the end. Each
 * failure case checks the error code and that the message names the file
 * (and tensor or field); the message is echoed as a TAP comment.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <sys/stat.h>
#include <unistd.h>

/* Paths from the top of the tree: a bare "config.h" is autoconf's. */
#include "common/err.h"
#include "workers/config.h"
#include "workers/safetensors.h"

#ifndef SEP_SHARED_DIR
#error "compile with -DSEP_SHARED_DIR=\"/path/to/shared\""
#endif

enum { DIR_CAP = 512, PATH_CAP = 600 }; /* case folders, files in them */

static char tmp_root[256];

static const char *shared_dir(void)
{
    const char *s = getenv("SEP_SHARED");
    return s && *s ? s : SEP_SHARED_DIR;
}

/* buf = shared/models/name */
static const char *model(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/models/%s", shared_dir(), name);
    return buf;
}

/* buf = a fresh folder for one case */
static const char *case_dir(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmp_root, name);
    assert_int_equal(mkdir(buf, 0700), 0);
    return buf;
}

static const char *join(char *buf, size_t cap, const char *dir, const char *name)
{
    snprintf(buf, cap, "%s/%s", dir, name);
    return buf;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* A safetensors file: 8-byte little-endian length, header, then data
 * (or ndata pattern bytes when data is NULL). */
static void write_st(const char *path, const char *header, const void *data,
                     size_t ndata)
{
    size_t hlen = strlen(header);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int i = 0; i < 8; i++)
        assert_int_not_equal(fputc((int)(hlen >> (8 * i) & 0xff), f), EOF);
    assert_int_equal(fwrite(header, 1, hlen, f), hlen);
    for (size_t i = 0; i < ndata; i++)
        assert_int_not_equal(
            fputc(data ? ((const uint8_t *)data)[i] : (int)(i & 0xff), f), EOF);
    assert_int_equal(fclose(f), 0);
}

static void write_text(const char *path, const char *text)
{
    write_file(path, text, strlen(text));
}

/* rc must be code, and the message must hold each of the given strings. */
static void expect_err(int rc, int code, const char *a, const char *b,
                       const char *c)
{
    const char *msg = sep_errmsg();
    print_message("# %s\n", msg);
    if (rc != code)
        fail_msg("rc %d (%s), expected %d; message: %s", rc, sep_strerror(rc),
                 code, msg);
    const char *want[] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (want[i] && !strstr(msg, want[i]))
            fail_msg("message \"%s\" does not name \"%s\"", msg, want[i]);
}

/* Open dir, which must fail with code naming a, b and c. */
static void expect_open_err(const char *dir, int code, const char *a,
                            const char *b, const char *c)
{
    sep_st_t *st = (sep_st_t *)&st; /* must be reset to NULL */
    int rc = sep_st_open(&st, dir);
    assert_null(st);
    expect_err(rc, code, a, b, c);
}

static int rm_entry(const char *path, const struct stat *sb, int type,
                    struct FTW *ftw)
{
    (void)sb, (void)type, (void)ftw;
    return remove(path);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmp_root, sizeof tmp_root, "/tmp/sep_test_loader.XXXXXX");
    return mkdtemp(tmp_root) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    return nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The raw bytes of a tensor, found by parsing the header here: an
 * independent check of the module's offsets. */
static uint8_t *raw_tensor(const char *file, const char *name, size_t *n)
{
    uint8_t len8[8];
    uint64_t hlen = 0;
    FILE *f = fopen(file, "rb");
    assert_non_null(f);
    assert_int_equal(fread(len8, 1, 8, f), 8);
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | len8[i];
    char *hdr = malloc(hlen);
    assert_non_null(hdr);
    assert_int_equal(fread(hdr, 1, hlen, f), hlen);
    json_t *root = json_loadb(hdr, hlen, 0, NULL);
    assert_non_null(root);
    json_t *off = json_object_get(json_object_get(root, name), "data_offsets");
    long long begin = json_integer_value(json_array_get(off, 0));
    long long end = json_integer_value(json_array_get(off, 1));
    assert_true(end > begin);
    *n = (size_t)(end - begin);
    uint8_t *data = malloc(*n);
    assert_non_null(data);
    assert_int_equal(fseek(f, (long)(8 + hlen + (uint64_t)begin), SEEK_SET), 0);
    assert_int_equal(fread(data, 1, *n, f), *n);
    json_decref(root);
    free(hdr);
    fclose(f);
    return data;
}

/* The shard an index assigns to a tensor. */
static const char *shard_of(char *buf, size_t cap, const char *dir, const char *name)
{
    char idx[PATH_CAP];
    json_t *root = json_load_file(join(idx, sizeof idx, dir, "model.safetensors.index.json"),
                                  0, NULL);
    assert_non_null(root);
    const char *file = json_string_value(
        json_object_get(json_object_get(root, "weight_map"), name));
    assert_non_null(file);
    join(buf, cap, dir, file);
    json_decref(root);
    return buf;
}

/* IEEE half by its definition, not by bit manipulation. */
static float half_ref(uint16_t h)
{
    int s = h >> 15, e = h >> 10 & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0x1f)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp(m, -24);
    else
        v = ldexp(1024 + m, e - 25);
    return (float)(s ? -v : v);
}

static int ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

/* ---- shared checkpoints: tensors ---- */

static void open_count(const char *name, size_t count, sep_st_t **out)
{
    char dir[DIR_CAP];
    sep_st_t *st = NULL;
    int rc = sep_st_open(&st, model(dir, sizeof dir, name));
    if (rc)
        fail_msg("%s: %s", name, sep_errmsg());
    assert_int_equal(sep_st_count(st), count);
    /* sorted by name, each found by name */
    for (size_t i = 0; i < count; i++) {
        const sep_tensor_t *t = sep_st_at(st, i);
        assert_ptr_equal(sep_st_find(st, t->name), t);
        if (i)
            assert_true(strcmp(sep_st_at(st, i - 1)->name, t->name) < 0);
    }
    assert_null(sep_st_at(st, count));
    assert_null(sep_st_find(st, "no.such.tensor"));
    if (out)
        *out = st;
    else
        sep_st_destroy(&st);
}

static void test_st_stories15m(void **state)
{
    (void)state;
    sep_st_t *st;
    open_count("stories15m", 56, &st);
    const sep_tensor_t *t = sep_st_find(st, "model.embed_tokens.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, SEP_DT_BF16);
    assert_string_equal(t->dtype_name, "BF16");
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 32000);
    assert_int_equal(t->shape[1], 288);
    assert_int_equal(t->nbytes, 32000 * 288 * 2);
    assert_true(ends_with(t->file, "/stories15m/model.safetensors"));
    sep_st_destroy(&st);
    assert_null(st);
    sep_st_destroy(&st); /* harmless twice */
}

static void test_st_books_llama(void **state)
{
    (void)state;
    sep_st_t *st;
    open_count("books-llama-16m", 74, &st);
    const sep_tensor_t *t = sep_st_find(st, "model.layers.0.self_attn.q_proj.weight");
    assert_non_null(t);
    assert_true(ends_with(t->file, "model-00001-of-00003.safetensors"));
    t = sep_st_find(st, "model.norm.weight");
    assert_non_null(t);
    assert_true(ends_with(t->file, "model-00003-of-00003.safetensors"));
    assert_int_equal(t->ndim, 1);
    assert_int_equal(t->shape[0], 384);
    sep_st_destroy(&st);
}

static void test_st_books_neox(void **state)
{
    (void)state;
    sep_st_t *st;
    open_count("books-neox-9m", 76, &st);
    const sep_tensor_t *t =
        sep_st_find(st, "gpt_neox.layers.0.attention.query_key_value.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, SEP_DT_F16);
    assert_int_equal(t->shape[0], 768);
    assert_int_equal(t->shape[1], 256);
    sep_st_destroy(&st);
}

static void test_st_arch_folders(void **state)
{
    (void)state;
    open_count("arch/tiny-qwen2", 39, NULL);
    open_count("arch/tiny-mistral", 30, NULL);
    open_count("arch/tiny-llama31", 29, NULL);
    open_count("arch/tiny-llama31-legacy-config", 29, NULL);
    open_count("arch/tiny-neox-seq", 40, NULL);
}

/* bf16 weights against the raw bits, and against values printed by Python */
static void test_read_bf16(void **state)
{
    (void)state;
    static const char name[] = "model.layers.0.self_attn.q_proj.weight";
    static const float py[4] = {0.01025390625f, 0.0264892578125f,
                                -0.01141357421875f, 0.01129150390625f};
    char dir[DIR_CAP], file[PATH_CAP];
    sep_st_t *st = NULL;
    size_t n;
    assert_int_equal(sep_st_open(&st, model(dir, sizeof dir, "books-llama-16m")), 0);
    uint8_t *raw = raw_tensor(shard_of(file, sizeof file, dir, name), name, &n);
    assert_int_equal(n, 384 * 384 * 2);
    float *x = malloc(384 * 384 * sizeof *x);
    assert_non_null(x);
    assert_int_equal(sep_st_read_f32(st, name, 2, (int64_t[]){384, 384}, x), 0);
    for (size_t i = 0; i < n / 2; i++) {
        uint32_t u = (uint32_t)raw[2 * i] << 16 | (uint32_t)raw[2 * i + 1] << 24;
        float want;
        memcpy(&want, &u, sizeof want);
        if (x[i] != want)
            fail_msg("element %zu: %.9g, expected %.9g", i, x[i], want);
    }
    for (int i = 0; i < 4; i++)
        assert_true(x[i] == py[i]);
    assert_true(x[384 * 384 - 1] == 0.00494384765625f);
    free(x);
    free(raw);
    sep_st_destroy(&st);
}

/* fp16 weights (371 of them subnormal) against the definition of a half */
static void test_read_f16(void **state)
{
    (void)state;
    static const char name[] = "gpt_neox.layers.0.attention.query_key_value.weight";
    static const float py[4] = {-0.051361083984375f, 0.0311126708984375f,
                                0.01146697998046875f, 0.065185546875f};
    char dir[DIR_CAP], file[PATH_CAP];
    sep_st_t *st = NULL;
    size_t n, subnormal = 0;
    assert_int_equal(sep_st_open(&st, model(dir, sizeof dir, "books-neox-9m")), 0);
    uint8_t *raw = raw_tensor(shard_of(file, sizeof file, dir, name), name, &n);
    assert_int_equal(n, 768 * 256 * 2);
    float *x = malloc(768 * 256 * sizeof *x);
    assert_non_null(x);
    assert_int_equal(sep_st_read_f32(st, name, 2, (int64_t[]){768, 256}, x), 0);
    for (size_t i = 0; i < n / 2; i++) {
        uint16_t h = (uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
        subnormal += (h & 0x7c00) == 0 && (h & 0x3ff);
        if (x[i] != half_ref(h))
            fail_msg("element %zu (0x%04x): %.9g, expected %.9g", i, h, x[i],
                     half_ref(h));
    }
    assert_true(subnormal > 0);
    for (int i = 0; i < 4; i++)
        assert_true(x[i] == py[i]);
    free(x);
    free(raw);
    sep_st_destroy(&st);
}

/* Hand-made file: F16 special values, F32, BF16, an empty tensor, a packed
 * F4 tensor and __metadata__. */
static void test_read_handmade(void **state)
{
    (void)state;
    static const uint16_t h[12] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00,
                                   0x7bff, 0x7c00, 0xfc00, 0x7e00, 0xc000, 0x3555};
    const float want[12] = {0.0f, -0.0f, 0x1p-24f, 0x3ffp-24f, 0x1p-14f, 1.0f,
                            65504.0f, INFINITY, -INFINITY, NAN, -2.0f,
                            0.333251953125f};
    uint8_t data[64] = {0};
    const float f32[3] = {1.5f, -0.25f, 3e38f};
    memcpy(data, h, sizeof h);              /* f16 [0,24) */
    memcpy(data + 24, f32, sizeof f32);     /* f32 [24,36) */
    data[36] = 0x80, data[37] = 0x3f;       /* bf16 1.0 [36,38) */
    data[38] = 0x21, data[39] = 0x43;       /* F4 x4 [38,40) */
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "handmade");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"__metadata__\":{\"format\":\"pt\"},"
             "\"h\":{\"dtype\":\"F16\",\"shape\":[3,4],\"data_offsets\":[0,24]},"
             "\"f\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[24,36]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,1],\"data_offsets\":[36,38]},"
             "\"q\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[38,40]},"
             "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[40,44]},"
             "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[40,40]}}  ",
             data, 44);
    sep_st_t *st = NULL;
    if (sep_st_open(&st, dir))
        fail_msg("%s", sep_errmsg());
    assert_int_equal(sep_st_count(st), 6);
    float x[12];
    assert_int_equal(sep_st_read_f32(st, "h", 2, (int64_t[]){3, 4}, x), 0);
    for (int i = 0; i < 12; i++) {
        if (isnan(want[i]))
            assert_true(isnan(x[i]));
        else if (x[i] != want[i] || signbit(x[i]) != signbit(want[i]))
            fail_msg("half 0x%04x: %.9g, expected %.9g", h[i], x[i], want[i]);
    }
    assert_int_equal(sep_st_read_f32(st, "f", 1, (int64_t[]){3}, x), 0);
    assert_memory_equal(x, f32, sizeof f32);
    assert_int_equal(sep_st_read_f32(st, "b", 2, (int64_t[]){1, 1}, x), 0);
    assert_true(x[0] == 1.0f);
    x[0] = 1;
    assert_int_equal(sep_st_read_f32(st, "s", 0, NULL, x), 0);
    assert_true(x[0] == 0.0f);
    assert_int_equal(sep_st_read_f32(st, "e", 2, (int64_t[]){0, 5}, x), 0);
    const sep_tensor_t *q = sep_st_find(st, "q");
    assert_int_equal(q->dtype, SEP_DT_OTHER);
    assert_int_equal(q->nbytes, 2);
    expect_err(sep_st_read_f32(st, "q", 1, (int64_t[]){4}, x), SEP_EUNSUPPORTED,
               path, "tensor q", "F4");
    sep_st_destroy(&st);
}

/* ---- bad safetensors files ---- */

static void test_bad_short_file(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "short");
    write_file(join(path, sizeof path, dir, "model.safetensors"), "\x05\0\0\0\0", 5);
    expect_open_err(dir, SEP_EFORMAT, path, "8", NULL);
}

static void test_bad_header_len(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "hlen");
    write_file(join(path, sizeof path, dir, "model.safetensors"),
               "\xe8\x03\0\0\0\0\0\0{}", 10); /* claims 1000 bytes */
    expect_open_err(dir, SEP_EFORMAT, path, "1000", NULL);
    write_file(path, "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10);
    expect_open_err(dir, SEP_EFORMAT, path, "header length", NULL);
}

static void test_bad_header_not_json(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "notjson");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"w\": {\"dtype\": ", NULL, 16);
    expect_open_err(dir, SEP_EFORMAT, path, "JSON", NULL);
}

static void test_bad_header_not_object(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "notobject");
    write_st(join(path, sizeof path, dir, "model.safetensors"), "[1, 2, 3]", NULL, 0);
    expect_open_err(dir, SEP_EFORMAT, path, "object", NULL);
}

static void test_bad_duplicate_key(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "dupkey");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
             NULL, 8);
    expect_open_err(dir, SEP_EFORMAT, path, "w", NULL);
}

static void test_bad_unknown_dtype(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "dtype");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"ok\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"layer.w\":{\"dtype\":\"F17\",\"shape\":[2],\"data_offsets\":[4,12]}}",
             NULL, 12);
    expect_open_err(dir, SEP_EFORMAT, path, "tensor layer.w", "F17");
}

static void test_bad_shape_nbytes(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "nbytes");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"layer.w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}",
             NULL, 24);
    expect_open_err(dir, SEP_EFORMAT, path, "tensor layer.w", "[2,3]");
}

static void test_bad_negative_dim(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "negdim");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"layer.w\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,4]}}",
             NULL, 4);
    expect_open_err(dir, SEP_EFORMAT, path, "tensor layer.w", "shape[1]");
}

static void test_bad_too_many_dims(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "ndims");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"layer.w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
             "\"data_offsets\":[0,1]}}",
             NULL, 1);
    expect_open_err(dir, SEP_EUNSUPPORTED, path, "tensor layer.w", "9 dimensions");
}

static void test_bad_shape_overflow(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "overflow");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"layer.w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
             "\"data_offsets\":[0,0]}}",
             NULL, 0);
    expect_open_err(dir, SEP_EFORMAT, path, "tensor layer.w", "overflows");
}

static void test_bad_f4_odd(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "f4odd");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"layer.w\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}",
             NULL, 2);
    expect_open_err(dir, SEP_EFORMAT, path, "tensor layer.w", "12 bits");
}

static void test_bad_offsets_beyond(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "beyond");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"model.layers.0.mlp.up_proj.weight\":{\"dtype\":\"U8\",\"shape\":[100],"
             "\"data_offsets\":[100,200]}}",
             NULL, 150);
    expect_open_err(dir, SEP_EFORMAT, path,
                    "tensor model.layers.0.mlp.up_proj.weight",
                    "data_offsets [100,200] beyond the data area (150 bytes)");
}

static void test_bad_offsets_reversed(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "reversed");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"layer.w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,4]}}",
             NULL, 8);
    expect_open_err(dir, SEP_EFORMAT, path, "tensor layer.w", "reversed");
}

static void test_bad_overlap(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "overlap");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"a.w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
             "\"b.w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
             NULL, 16);
    expect_open_err(dir, SEP_EFORMAT, path, "a.w", "b.w");
}

static void test_bad_truncated(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    case_dir(dir, sizeof dir, "truncated");
    write_st(join(path, sizeof path, dir, "model.safetensors"),
             "{\"a.w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
             "\"b.w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}}",
             NULL, 20); /* the data stop 12 bytes short */
    expect_open_err(dir, SEP_EFORMAT, path, "tensor b.w", "(20 bytes)");
}

/* sep_st_read: a tensor's bytes as stored, whole, from an offset, and in
 * pieces on two threads (a tensor over 4 MiB); a range outside the tensor
 * is refused; a file that shrank after it was opened is a clean error
 * naming it and the tensor (the mapping would have raised SIGBUS). */
static void test_read_raw(void **state)
{
    (void)state;
    enum { BIG = (9 << 20) + 3 };
    char dir[DIR_CAP], path[PATH_CAP], hdr[256];
    case_dir(dir, sizeof dir, "readraw");
    snprintf(hdr, sizeof hdr,
             "{\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]},"
             "\"big\":{\"dtype\":\"U8\",\"shape\":[%d],\"data_offsets\":[6,%d]}}",
             BIG, BIG + 6);
    write_st(join(path, sizeof path, dir, "model.safetensors"), hdr, NULL, BIG + 6);
    sep_st_t *st;
    assert_int_equal(sep_st_open(&st, dir), 0);
    const sep_tensor_t *a = sep_st_find(st, "a"), *big = sep_st_find(st, "big");
    uint8_t *buf = malloc(BIG);
    assert_true(a && big && buf);
    assert_int_equal(sep_st_read(st, a, 0, 6, buf), 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(buf[i], i);
    assert_int_equal(sep_st_read(st, a, 4, 2, buf), 0);
    assert_int_equal(buf[0], 4);
    int threads = omp_get_max_threads();
    omp_set_num_threads(2);
    memset(buf, 0, BIG);
    assert_int_equal(sep_st_read(st, big, 0, BIG, buf), 0);
    for (size_t i = 0; i < BIG; i++)
        if (buf[i] != (uint8_t)(i + 6))
            fail_msg("byte %zu of big: %d", i, buf[i]);
    assert_int_equal(sep_st_read(st, big, BIG - 1, 1, buf), 0);
    assert_int_equal(buf[0], (uint8_t)(BIG + 5));
    expect_err(sep_st_read(st, a, 4, 3, buf), SEP_EINVAL, path, "tensor a", "[4, 7)");
    assert_int_equal(truncate(path, 8 + (off_t)strlen(hdr) + (5 << 20)), 0);
    expect_err(sep_st_read(st, big, 0, BIG, buf), SEP_EIO, path, "tensor big", "shrank");
    omp_set_num_threads(threads);
    free(buf);
    sep_st_destroy(&st);
}

static void test_bad_empty_folder(void **state)
{
    (void)state;
    char dir[DIR_CAP];
    case_dir(dir, sizeof dir, "empty");
    expect_open_err(dir, SEP_ENOTFOUND, dir, "model.safetensors", NULL);
}

#define ST_A "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}"
#define ST_B "{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}"
#define ST_AB "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}," \
              "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}"

static void test_bad_index_missing_shard(void **state)
{
    (void)state;
    char dir[DIR_CAP], p1[PATH_CAP], p2[PATH_CAP], idx[PATH_CAP];
    case_dir(dir, sizeof dir, "missingshard");
    write_st(join(p1, sizeof p1, dir, "s1.safetensors"), ST_A, NULL, 4);
    join(p2, sizeof p2, dir, "s2.safetensors");
    write_text(join(idx, sizeof idx, dir, "model.safetensors.index.json"),
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_open_err(dir, SEP_ENOTFOUND, p2, idx, NULL);
}

static void test_bad_index_tensor_absent(void **state)
{
    (void)state;
    char dir[DIR_CAP], p1[PATH_CAP], idx[PATH_CAP];
    case_dir(dir, sizeof dir, "absent");
    write_st(join(p1, sizeof p1, dir, "s1.safetensors"), ST_A, NULL, 4);
    write_text(join(idx, sizeof idx, dir, "model.safetensors.index.json"),
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\"}}");
    expect_open_err(dir, SEP_EFORMAT, p1, "tensor b", NULL);
}

static void test_bad_index_wrong_shard(void **state)
{
    (void)state;
    char dir[DIR_CAP], p1[PATH_CAP], p2[PATH_CAP];
    case_dir(dir, sizeof dir, "wrongshard");
    write_st(join(p1, sizeof p1, dir, "s1.safetensors"), ST_B, NULL, 4);
    write_st(join(p2, sizeof p2, dir, "s2.safetensors"), ST_A, NULL, 4);
    write_text(join(p1, sizeof p1, dir, "model.safetensors.index.json"),
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_open_err(dir, SEP_EFORMAT, p2, "tensor a", "s1.safetensors");
}

static void test_bad_index_unlisted(void **state)
{
    (void)state;
    char dir[DIR_CAP], p1[PATH_CAP], idx[PATH_CAP];
    case_dir(dir, sizeof dir, "unlisted");
    write_st(join(p1, sizeof p1, dir, "s1.safetensors"), ST_AB, NULL, 8);
    write_text(join(idx, sizeof idx, dir, "model.safetensors.index.json"),
               "{\"weight_map\":{\"a\":\"s1.safetensors\"}}");
    expect_open_err(dir, SEP_EFORMAT, p1, "tensor b", idx);
}

static void test_bad_index_path_escape(void **state)
{
    (void)state;
    char dir[DIR_CAP], idx[PATH_CAP];
    case_dir(dir, sizeof dir, "escape");
    write_text(join(idx, sizeof idx, dir, "model.safetensors.index.json"),
               "{\"weight_map\":{\"a\":\"../handmade/model.safetensors\"}}");
    expect_open_err(dir, SEP_EFORMAT, idx, "tensor a", "../handmade");
}

static void test_bad_index_duplicate(void **state)
{
    (void)state;
    char dir[DIR_CAP], p1[PATH_CAP], p2[PATH_CAP], idx[PATH_CAP];
    case_dir(dir, sizeof dir, "duplicate");
    write_st(join(p1, sizeof p1, dir, "s1.safetensors"), ST_A, NULL, 4);
    write_st(join(p2, sizeof p2, dir, "s2.safetensors"), ST_AB, NULL, 8);
    write_text(join(idx, sizeof idx, dir, "model.safetensors.index.json"),
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_open_err(dir, SEP_EFORMAT, p1, p2, "tensor a");
}

static void test_bad_index_not_json(void **state)
{
    (void)state;
    char dir[DIR_CAP], idx[PATH_CAP];
    case_dir(dir, sizeof dir, "indexjson");
    write_text(join(idx, sizeof idx, dir, "model.safetensors.index.json"),
               "{\"weight_map\": [");
    expect_open_err(dir, SEP_EFORMAT, idx, NULL, NULL);
}

/* A single small file with tensor "a" (U8) and "w" (F32 [2,2]). */
static void read_case(const char *name, char *dir, char *path, sep_st_t **st)
{
    case_dir(dir, DIR_CAP, name);
    write_st(join(path, PATH_CAP, dir, "model.safetensors"),
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[4,20]}}",
             NULL, 20);
    assert_int_equal(sep_st_open(st, dir), 0);
}

static void test_bad_read_missing(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    sep_st_t *st;
    float x[4];
    read_case("readmissing", dir, path, &st);
    expect_err(sep_st_read_f32(st, "model.norm.weight", 1, (int64_t[]){4}, x),
               SEP_ENOTFOUND, path, "tensor model.norm.weight", NULL);
    sep_st_destroy(&st);
}

static void test_bad_read_shape(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    sep_st_t *st;
    float x[4];
    read_case("readshape", dir, path, &st);
    expect_err(sep_st_read_f32(st, "w", 1, (int64_t[]){4}, x), SEP_EFORMAT, path,
               "tensor w", "[2,2]");
    expect_err(sep_st_read_f32(st, "w", 2, (int64_t[]){2, 3}, x), SEP_EFORMAT,
               path, "tensor w", "[2,3]");
    sep_st_destroy(&st);
}

static void test_bad_read_dtype(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    sep_st_t *st;
    float x[4];
    read_case("readdtype", dir, path, &st);
    expect_err(sep_st_read_f32(st, "a", 1, (int64_t[]){4}, x), SEP_EUNSUPPORTED,
               path, "tensor a", "U8");
    sep_st_destroy(&st);
}

/* ---- shared checkpoints: configs ---- */

static void load_cfg(const char *name, sep_config_t *c)
{
    char dir[DIR_CAP];
    if (sep_config_load(c, model(dir, sizeof dir, name)))
        fail_msg("%s: %s", name, sep_errmsg());
}

static void test_cfg_stories15m(void **state)
{
    (void)state;
    sep_config_t c;
    load_cfg("stories15m", &c);
    assert_int_equal(c.arch, SEP_ARCH_LLAMA);
    assert_string_equal(c.arch_name, "LlamaForCausalLM");
    assert_int_equal(c.n_layers, 6);
    assert_int_equal(c.dim, 288);
    assert_int_equal(c.n_heads, 6);
    assert_int_equal(c.n_kv_heads, 6);
    assert_int_equal(c.head_dim, 48);
    assert_int_equal(c.ffn_dim, 768);
    assert_int_equal(c.vocab, 32000);
    assert_int_equal(c.max_pos, 256);
    assert_true(c.norm_eps == 1e-5f);
    assert_int_equal(c.act, SEP_ACT_SILU);
    assert_int_equal(c.tied_embeddings, 1);
    assert_int_equal(c.qkv_bias + c.o_bias + c.mlp_bias, 0);
    assert_int_equal(c.rot_dim, 48);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.rope_llama3, 0);
}

static void test_cfg_books_llama(void **state)
{
    (void)state;
    sep_config_t c;
    load_cfg("books-llama-16m", &c);
    assert_int_equal(c.arch, SEP_ARCH_LLAMA);
    assert_int_equal(c.n_layers, 8);
    assert_int_equal(c.dim, 384);
    assert_int_equal(c.n_heads, 6);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.ffn_dim, 1024);
    assert_int_equal(c.vocab, 8192);
    assert_int_equal(c.max_pos, 2048);
    assert_int_equal(c.tied_embeddings, 1);
    assert_int_equal(c.rot_dim, 64);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.rope_llama3, 0);
    double f[32];
    sep_config_rope_freqs(&c, f);
    for (int i = 0; i < 32; i++)
        assert_true(fabs(f[i] - pow(10000.0, -i / 32.0)) <= 1e-15 * f[i]);
}

static void test_cfg_books_neox(void **state)
{
    (void)state;
    sep_config_t c;
    load_cfg("books-neox-9m", &c);
    assert_int_equal(c.arch, SEP_ARCH_NEOX);
    assert_int_equal(c.n_layers, 6);
    assert_int_equal(c.dim, 256);
    assert_int_equal(c.n_heads, 4);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.ffn_dim, 1024);
    assert_int_equal(c.act, SEP_ACT_GELU);
    assert_true(c.norm_eps == 1e-5f);
    assert_int_equal(c.parallel_residual, 1);
    assert_int_equal(c.rot_dim, 16);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.tied_embeddings, 0);
    assert_int_equal(c.qkv_bias, 1);
    assert_int_equal(c.o_bias, 1);
    assert_int_equal(c.mlp_bias, 1);
}

static void test_cfg_tiny_neox_seq(void **state)
{
    (void)state;
    sep_config_t c;
    load_cfg("arch/tiny-neox-seq", &c);
    assert_int_equal(c.arch, SEP_ARCH_NEOX);
    assert_int_equal(c.parallel_residual, 0);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(c.rot_dim, 16);
    assert_int_equal(c.n_layers, 3);
    assert_int_equal(c.dim, 128);
}

static void test_cfg_tiny_qwen2(void **state)
{
    (void)state;
    sep_config_t c;
    load_cfg("arch/tiny-qwen2", &c);
    assert_int_equal(c.arch, SEP_ARCH_LLAMA);
    assert_string_equal(c.arch_name, "Qwen2ForCausalLM");
    assert_int_equal(c.qkv_bias, 1);
    assert_int_equal(c.o_bias, 0);
    assert_int_equal(c.mlp_bias, 0);
    assert_true(c.rope_theta == 1e6);
    assert_int_equal(c.tied_embeddings, 0);
    assert_true(c.norm_eps == 1e-6f);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.head_dim, 32);
}

static void test_cfg_tiny_mistral(void **state)
{
    (void)state;
    sep_config_t c;
    load_cfg("arch/tiny-mistral", &c);
    assert_int_equal(c.arch, SEP_ARCH_LLAMA);
    assert_string_equal(c.arch_name, "MistralForCausalLM");
    assert_int_equal(c.n_heads, 4);
    assert_int_equal(c.n_kv_heads, 1);
    assert_int_equal(c.tied_embeddings, 0);
    assert_int_equal(c.qkv_bias + c.o_bias + c.mlp_bias, 0);
    assert_int_equal(c.window, 0); /* "sliding_window": null */
    assert_int_equal(c.window_layers, 0);
}

/* Llama-3.1 scaling, newer and older layouts: same parameters, same
 * frequencies, matching transformers' formula as evaluated in Python. */
static void test_cfg_llama31(void **state)
{
    (void)state;
    static const double py[16] = {
        1, 0.44036660267178046, 0.19392274474868576, 0.072430035164963602,
        0.010538232746455323, 0.0020700550101243058, 0.00091158309215213856,
        0.00040143074934407392, 0.00017677669529663688, 7.7846552739324498e-05,
        3.4281021959525912e-05, 1.509621717643313e-05, 6.6478698711812362e-06,
        2.9274998701761677e-06, 1.2891731721515574e-06, 5.6770881007598369e-07};
    sep_config_t a, b;
    double fa[16], fb[16];
    load_cfg("arch/tiny-llama31", &a);
    load_cfg("arch/tiny-llama31-legacy-config", &b);
    sep_config_t *cs[2] = {&a, &b};
    for (int k = 0; k < 2; k++) {
        sep_config_t *c = cs[k];
        assert_int_equal(c->rope_llama3, 1);
        assert_true(c->rope_factor == 8.0);
        assert_true(c->rope_low_freq_factor == 1.0);
        assert_true(c->rope_high_freq_factor == 4.0);
        assert_int_equal(c->rope_orig_max_pos, 256);
        assert_true(c->rope_theta == 500000.0);
        assert_int_equal(c->rot_dim, 32);
        assert_int_equal(c->tied_embeddings, 1);
    }
    sep_config_rope_freqs(&a, fa);
    sep_config_rope_freqs(&b, fb);
    for (int i = 0; i < 16; i++) {
        assert_true(fa[i] == fb[i]);
        if (fabs(fa[i] - py[i]) > 1e-13 * py[i])
            fail_msg("inv_freq[%d] %.17g, Python %.17g", i, fa[i], py[i]);
    }
}

/* ---- bad config.json ---- */

#define LLAMA_HEAD "{\"architectures\":[\"LlamaForCausalLM\"],"
#define NEOX_HEAD "{\"architectures\":[\"GPTNeoXForCausalLM\"],"
#define SIZES "\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4," \
              "\"intermediate_size\":128,\"vocab_size\":100"

/* Write text as case/config.json; path gets the file's path. */
static const char *cfg_case(const char *name, const char *text, char *dir,
                            char *path)
{
    case_dir(dir, DIR_CAP, name);
    write_text(join(path, PATH_CAP, dir, "config.json"), text);
    return dir;
}

static void expect_cfg_err(const char *name, const char *text, int code,
                           const char *a, const char *b)
{
    char dir[DIR_CAP], path[PATH_CAP];
    sep_config_t c;
    expect_err(sep_config_load(&c, cfg_case(name, text, dir, path)), code, path, a, b);
}

/* Sliding windows as transformers 5.17's config classes derive them. */
#define MISTRAL_HEAD "{\"architectures\":[\"MistralForCausalLM\"],"
#define QWEN2_HEAD "{\"architectures\":[\"Qwen2ForCausalLM\"],"
#define SIZES3 "\"hidden_size\":64,\"num_hidden_layers\":3,\"num_attention_heads\":4," \
               "\"intermediate_size\":128,\"vocab_size\":100"

static void cfg_window_is(const char *name, const char *text, int window, int layers)
{
    char dir[DIR_CAP], path[PATH_CAP];
    sep_config_t c;
    if (sep_config_load(&c, cfg_case(name, text, dir, path)))
        fail_msg("%s: %s", name, sep_errmsg());
    if (c.window != window || c.window_layers != layers)
        fail_msg("%s: window %d on %d layers, expected %d on %d", name, c.window,
                 c.window_layers, window, layers);
}

static void test_cfg_sliding_window(void **state)
{
    (void)state;
    /* Mistral: absent is the class default 4096, null none, every layer
     * (layer_types is Ministral's, not read) */
    cfg_window_is("swm0", MISTRAL_HEAD SIZES3 "}", 4096, 3);
    cfg_window_is("swm1", MISTRAL_HEAD SIZES3 ",\"sliding_window\":null}", 0, 0);
    cfg_window_is("swm2", MISTRAL_HEAD SIZES3 ",\"sliding_window\":100,"
                  "\"layer_types\":[\"full_attention\",\"full_attention\",\"full_attention\"]}",
                  100, 3);
    /* Qwen2: only with use_sliding_window, from max_window_layers (28) on */
    cfg_window_is("swq0", QWEN2_HEAD SIZES3 ",\"sliding_window\":100}", 0, 0);
    cfg_window_is("swq1", QWEN2_HEAD SIZES3 ",\"use_sliding_window\":true}", 0, 0);
    cfg_window_is("swq2", QWEN2_HEAD SIZES3 ",\"use_sliding_window\":true,"
                  "\"max_window_layers\":1}", 4096, 2);
    cfg_window_is("swq3", QWEN2_HEAD SIZES3 ",\"use_sliding_window\":true,"
                  "\"sliding_window\":64,\"max_window_layers\":0}", 64, 3);
    cfg_window_is("swq4", QWEN2_HEAD SIZES3 ",\"use_sliding_window\":true,\"sliding_window\":64,"
                  "\"layer_types\":[\"sliding_attention\",\"full_attention\",\"sliding_attention\"]}",
                  64, 2);
    cfg_window_is("swq5", QWEN2_HEAD SIZES3 ",\"use_sliding_window\":false,\"sliding_window\":64,"
                  "\"layer_types\":[\"sliding_attention\",\"sliding_attention\",\"sliding_attention\"]}",
                  0, 0);
    /* Llama has no window */
    cfg_window_is("swl", LLAMA_HEAD SIZES ",\"sliding_window\":100}", 0, 0);
}

static void test_cfg_bad_sliding_window(void **state)
{
    (void)state;
    expect_cfg_err("swbad1", MISTRAL_HEAD SIZES3 ",\"sliding_window\":1}", SEP_EFORMAT,
                   "sliding_window", "below 2");
    expect_cfg_err("swbad2", MISTRAL_HEAD SIZES3 ",\"sliding_window\":\"4096\"}", SEP_EFORMAT,
                   "sliding_window", "not an integer");
    expect_cfg_err("swbad3", QWEN2_HEAD SIZES3 ",\"use_sliding_window\":1}", SEP_EFORMAT,
                   "use_sliding_window", NULL);
    expect_cfg_err("swbad4", QWEN2_HEAD SIZES3 ",\"use_sliding_window\":true,"
                   "\"layer_types\":[\"full_attention\"]}", SEP_EFORMAT, "layer_types", "3");
    expect_cfg_err("swbad5", QWEN2_HEAD SIZES3 ",\"use_sliding_window\":true,\"layer_types\":"
                   "[\"full_attention\",\"chunked_attention\",\"full_attention\"]}",
                   SEP_EUNSUPPORTED, "layer_types[1]", NULL);
    expect_cfg_err("swbad6", QWEN2_HEAD SIZES3 ",\"use_sliding_window\":true,"
                   "\"max_window_layers\":-1}", SEP_EFORMAT, "max_window_layers", NULL);
}

static void test_cfg_defaults(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    sep_config_t c;
    assert_int_equal(sep_config_load(&c, cfg_case("cfgmin", LLAMA_HEAD SIZES "}",
                                                  dir, path)), 0);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.rot_dim, 16);
    assert_int_equal(c.max_pos, 0);
    assert_true(c.norm_eps == 1e-6f);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.act, SEP_ACT_SILU);
    assert_int_equal(c.tied_embeddings, 0);
    assert_int_equal(sep_config_load(&c, cfg_case("cfgneoxmin",
        NEOX_HEAD SIZES ",\"hidden_act\":\"gelu_new\",\"rotary_pct\":0.25,"
        "\"rope_scaling\":null,\"head_dim\":null}", dir, path)), 0);
    assert_int_equal(c.act, SEP_ACT_GELU_TANH);
    assert_int_equal(c.parallel_residual, 1);
    assert_int_equal(c.rot_dim, 4);
    assert_true(c.norm_eps == 1e-5f);
}

static void test_cfg_missing(void **state)
{
    (void)state;
    char dir[DIR_CAP], path[PATH_CAP];
    sep_config_t c;
    case_dir(dir, sizeof dir, "cfgmissing");
    join(path, sizeof path, dir, "config.json");
    expect_err(sep_config_load(&c, dir), SEP_ENOTFOUND, path, NULL, NULL);
}

static void test_cfg_not_json(void **state)
{
    (void)state;
    expect_cfg_err("cfgnotjson", LLAMA_HEAD SIZES, SEP_EFORMAT, "config.json", NULL);
}

static void test_cfg_unknown_arch(void **state)
{
    (void)state;
    expect_cfg_err("cfgarch", "{\"architectures\":[\"BertForMaskedLM\"]," SIZES "}",
                   SEP_EUNSUPPORTED, "architectures", "BertForMaskedLM");
}

static void test_cfg_no_arch(void **state)
{
    (void)state;
    expect_cfg_err("cfgnoarch", "{" SIZES "}", SEP_EFORMAT, "architectures", NULL);
}

static void test_cfg_missing_hidden_size(void **state)
{
    (void)state;
    expect_cfg_err("cfgnohidden",
                   LLAMA_HEAD "\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                   "\"intermediate_size\":128,\"vocab_size\":100}",
                   SEP_EFORMAT, "hidden_size", "missing");
}

static void test_cfg_wrong_type(void **state)
{
    (void)state;
    expect_cfg_err("cfgtype", LLAMA_HEAD SIZES ",\"num_key_value_heads\":\"2\"}",
                   SEP_EFORMAT, "num_key_value_heads", NULL);
}

static void test_cfg_bad_kv_heads(void **state)
{
    (void)state;
    expect_cfg_err("cfgkv", LLAMA_HEAD SIZES ",\"num_key_value_heads\":3}",
                   SEP_EFORMAT, "num_key_value_heads", NULL);
}

static void test_cfg_too_large(void **state)
{
    (void)state;
    expect_cfg_err("cfgbig",
                   LLAMA_HEAD "\"hidden_size\":64,\"num_hidden_layers\":2,"
                   "\"num_attention_heads\":4,\"intermediate_size\":128,"
                   "\"vocab_size\":99999999999}",
                   SEP_ERANGE, "vocab_size", NULL);
}

static void test_cfg_rope_yarn(void **state)
{
    (void)state;
    expect_cfg_err("cfgyarn",
                   LLAMA_HEAD SIZES ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}",
                   SEP_EUNSUPPORTED, "rope_scaling.rope_type", "yarn");
}

static void test_cfg_rope_linear_type_key(void **state)
{
    (void)state;
    expect_cfg_err("cfglinear",
                   LLAMA_HEAD SIZES ",\"rope_parameters\":{\"type\":\"linear\",\"factor\":2}}",
                   SEP_EUNSUPPORTED, "rope_parameters.type", "linear");
}

static void test_cfg_llama3_missing_factor(void **state)
{
    (void)state;
    expect_cfg_err("cfgllama3",
                   LLAMA_HEAD SIZES ",\"rope_parameters\":{\"rope_type\":\"llama3\","
                   "\"rope_theta\":500000.0,\"low_freq_factor\":1.0,"
                   "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":256}}",
                   SEP_EFORMAT, "rope_parameters.factor", "missing");
}

static void test_cfg_bad_hidden_act(void **state)
{
    (void)state;
    expect_cfg_err("cfgactllama", LLAMA_HEAD SIZES ",\"hidden_act\":\"gelu\"}",
                   SEP_EUNSUPPORTED, "hidden_act", "gelu");
    expect_cfg_err("cfgactneox", NEOX_HEAD SIZES ",\"hidden_act\":\"relu\"}",
                   SEP_EUNSUPPORTED, "hidden_act", "relu");
}

static void test_cfg_bad_rotary_pct(void **state)
{
    (void)state;
    expect_cfg_err("cfgpct", NEOX_HEAD SIZES ",\"rotary_pct\":0.01}",
                   SEP_EFORMAT, "rotary_pct", NULL);
}

/* ---- eos ids: config.json, generation_config.json over it ---- */

/* Load case name: config.json with eos (a JSON value, or NULL for none),
 * generation_config.json with gen when given. */
static int eos_case(const char *name, const char *eos, const char *gen, sep_config_t *c,
                    char *gpath)
{
    char dir[DIR_CAP], path[PATH_CAP], text[1024];
    snprintf(text, sizeof text, LLAMA_HEAD SIZES "%s%s}", eos ? ",\"eos_token_id\":" : "",
             eos ? eos : "");
    cfg_case(name, text, dir, path);
    join(gpath, PATH_CAP, dir, "generation_config.json");
    if (gen)
        write_text(gpath, gen);
    return sep_config_load(c, dir);
}

static void test_cfg_eos(void **state)
{
    (void)state;
    char g[PATH_CAP];
    sep_config_t c;
    load_cfg("books-llama-16m", &c);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos[0], 0);
    assert_int_equal(eos_case("eosnone", NULL, NULL, &c, g), 0);
    assert_int_equal(c.n_eos, 0);
    assert_int_equal(eos_case("eosnull", "null", NULL, &c, g), 0);
    assert_int_equal(c.n_eos, 0);
    assert_int_equal(eos_case("eosint", "7", NULL, &c, g), 0);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos[0], 7);
    assert_int_equal(eos_case("eoslist", "[3,99,0]", NULL, &c, g), 0);
    assert_int_equal(c.n_eos, 3);
    assert_int_equal(c.eos[0], 3);
    assert_int_equal(c.eos[1], 99);
    assert_int_equal(c.eos[2], 0);
    assert_int_equal(eos_case("eosempty", "[]", NULL, &c, g), 0);
    assert_int_equal(c.n_eos, 0);
    /* generation_config.json's, when it names one, as transformers' generate */
    assert_int_equal(eos_case("eosgen", "7", "{\"eos_token_id\":[5,6]}", &c, g), 0);
    assert_int_equal(c.n_eos, 2);
    assert_int_equal(c.eos[0], 5);
    assert_int_equal(c.eos[1], 6);
    assert_int_equal(eos_case("eosgenint", "[7,8]", "{\"eos_token_id\":9}", &c, g), 0);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos[0], 9);
    assert_int_equal(eos_case("eosgennone", "7", "{\"do_sample\":true}", &c, g), 0);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos[0], 7);
    assert_int_equal(eos_case("eosgennull", "7", "{\"eos_token_id\":null}", &c, g), 0);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos[0], 7);
}

static void test_cfg_bad_eos(void **state)
{
    (void)state;
    char g[PATH_CAP];
    sep_config_t c;
    expect_cfg_err("eosstr", LLAMA_HEAD SIZES ",\"eos_token_id\":\"</s>\"}", SEP_EFORMAT,
                   "config.json: eos_token_id", "not an id");
    expect_cfg_err("eoslistbad", LLAMA_HEAD SIZES ",\"eos_token_id\":[1,\"2\"]}",
                   SEP_EFORMAT, "eos_token_id", "not an id");
    expect_cfg_err("eosvocab", LLAMA_HEAD SIZES ",\"eos_token_id\":100}", SEP_EFORMAT,
                   "eos_token_id: 100", "outside the vocabulary (0..99)");
    expect_cfg_err("eosneg", LLAMA_HEAD SIZES ",\"eos_token_id\":[-1]}", SEP_EFORMAT,
                   "eos_token_id: -1", "outside the vocabulary");
    expect_cfg_err("eosmany", LLAMA_HEAD SIZES ",\"eos_token_id\":[1,2,3,4,5,6,7,8,9,10,11,"
                   "12,13,14,15,16,17]}", SEP_ERANGE, "17 ids", "over the limit 16");
    expect_err(eos_case("eosgenbad", "7", "{\"eos_token_id\":200}", &c, g), SEP_EFORMAT, g,
               "eos_token_id: 200", NULL);
    expect_err(eos_case("eosgenjson", "7", "{\"eos_token_id\":", &c, g), SEP_EFORMAT, g,
               "line", NULL);
    expect_err(eos_case("eosgenobj", "7", "[1]", &c, g), SEP_EFORMAT, g, "not a JSON object",
               NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_st_stories15m),
        cmocka_unit_test(test_st_books_llama),
        cmocka_unit_test(test_st_books_neox),
        cmocka_unit_test(test_st_arch_folders),
        cmocka_unit_test(test_read_bf16),
        cmocka_unit_test(test_read_f16),
        cmocka_unit_test(test_read_handmade),
        cmocka_unit_test(test_bad_short_file),
        cmocka_unit_test(test_bad_header_len),
        cmocka_unit_test(test_bad_header_not_json),
        cmocka_unit_test(test_bad_header_not_object),
        cmocka_unit_test(test_bad_duplicate_key),
        cmocka_unit_test(test_bad_unknown_dtype),
        cmocka_unit_test(test_bad_shape_nbytes),
        cmocka_unit_test(test_bad_negative_dim),
        cmocka_unit_test(test_bad_too_many_dims),
        cmocka_unit_test(test_bad_shape_overflow),
        cmocka_unit_test(test_bad_f4_odd),
        cmocka_unit_test(test_bad_offsets_beyond),
        cmocka_unit_test(test_bad_offsets_reversed),
        cmocka_unit_test(test_bad_overlap),
        cmocka_unit_test(test_bad_truncated),
        cmocka_unit_test(test_read_raw),
        cmocka_unit_test(test_bad_empty_folder),
        cmocka_unit_test(test_bad_index_missing_shard),
        cmocka_unit_test(test_bad_index_tensor_absent),
        cmocka_unit_test(test_bad_index_wrong_shard),
        cmocka_unit_test(test_bad_index_unlisted),
        cmocka_unit_test(test_bad_index_path_escape),
        cmocka_unit_test(test_bad_index_duplicate),
        cmocka_unit_test(test_bad_index_not_json),
        cmocka_unit_test(test_bad_read_missing),
        cmocka_unit_test(test_bad_read_shape),
        cmocka_unit_test(test_bad_read_dtype),
        cmocka_unit_test(test_cfg_stories15m),
        cmocka_unit_test(test_cfg_books_llama),
        cmocka_unit_test(test_cfg_books_neox),
        cmocka_unit_test(test_cfg_tiny_neox_seq),
        cmocka_unit_test(test_cfg_tiny_qwen2),
        cmocka_unit_test(test_cfg_tiny_mistral),
        cmocka_unit_test(test_cfg_llama31),
        cmocka_unit_test(test_cfg_sliding_window),
        cmocka_unit_test(test_cfg_bad_sliding_window),
        cmocka_unit_test(test_cfg_defaults),
        cmocka_unit_test(test_cfg_missing),
        cmocka_unit_test(test_cfg_not_json),
        cmocka_unit_test(test_cfg_unknown_arch),
        cmocka_unit_test(test_cfg_no_arch),
        cmocka_unit_test(test_cfg_missing_hidden_size),
        cmocka_unit_test(test_cfg_wrong_type),
        cmocka_unit_test(test_cfg_bad_kv_heads),
        cmocka_unit_test(test_cfg_too_large),
        cmocka_unit_test(test_cfg_rope_yarn),
        cmocka_unit_test(test_cfg_rope_linear_type_key),
        cmocka_unit_test(test_cfg_llama3_missing_factor),
        cmocka_unit_test(test_cfg_bad_hidden_act),
        cmocka_unit_test(test_cfg_bad_rotary_pct),
        cmocka_unit_test(test_cfg_eos),
        cmocka_unit_test(test_cfg_bad_eos),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
