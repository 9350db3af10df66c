/* test_store: the LMDB store of sessions, snapshots and the separator
 * archive: round trips of every kind of data, and every failure it is meant
 * to name (damaged records, blocks and entries, foreign and truncated
 * files, a newer format, a full map or disk, broken export streams, the
 * sweep of what a crash leaves). Damage is done with plain LMDB on the
 * closed store. Each test works in its own directory under /tmp. */
#define _GNU_SOURCE /* nftw */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <lmdb.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "crc32c.h"
#include "err.h"
#include "store.h"

/* call must fail with code and a message holding text */
#define assert_fails(call, code, text)                                                     \
    do {                                                                                   \
        int rc_ = (call);                                                                  \
        if (rc_ != (code) || !strstr(sep_errmsg(), (text)))                                \
            fail_msg("%s: rc %d '%s', expected %d with '%s'", #call, rc_, sep_errmsg(),    \
                     (code), (text));                                                      \
    } while (0)
#define assert_ok(call)                                                                    \
    do {                                                                                   \
        int rc_ = (call);                                                                  \
        if (rc_)                                                                           \
            fail_msg("%s: rc %d '%s'", #call, rc_, sep_errmsg());                          \
    } while (0)

/* ---- scaffolding ----------------------------------------------------------- */

typedef struct {
    char dir[64];      /* the test's own directory */
    char store[80];    /* the store inside it */
    sep_store_t *st;   /* the test's store: the teardown closes it */
} tdir_t;

static void tdir_make(tdir_t *t)
{
    snprintf(t->dir, sizeof t->dir, "/tmp/test_store.XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->store, sizeof t->store, "%s/s", t->dir);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void tdir_remove(tdir_t *t)
{
    nftw(t->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static sep_store_t *open_store(const char *dir)
{
    sep_store_t *st;
    sep_store_opts_t o = { .no_sync = 1 };
    assert_ok(sep_store_open(&st, dir, &o));
    return st;
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static uint8_t *make_state(size_t len, uint64_t seed)
{
    uint8_t *b = malloc(len ? len : 1);
    assert_non_null(b);
    seed = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < len; i++)
        b[i] = (uint8_t)(rnd(&seed) >> 24);
    return b;
}

/* A record with every field set to something a round trip can lose:
 * NaN payloads, -0.0, NUL and 0xff bytes, negative numbers. */
static void fill_record(sep_store_session_t *r, const char *name, uint32_t sid, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->sid = sid;
    r->state = SEP_STORE_ACTIVE;
    r->method = 2, r->a = 4, r->s = 64, r->w = 256, r->c = 800, r->shift = 1;
    r->separators = strdup("llama3,\"\\n\"");
    r->n_sep_ids = 5;
    r->sep_ids = malloc(5 * sizeof *r->sep_ids);
    for (int i = 0; i < 5; i++)
        r->sep_ids[i] = 11 + 100 * i + (int32_t)(seed % 50);
    r->archive = SEP_ARCHIVE_BF16;
    for (int i = 0; i < 32; i++)
        r->model_fp[i] = (uint8_t)(rnd(&seed) >> 8);
    strcpy(r->precision, "fp32");
    int64_t *cnt[8] = { &r->tokens, &r->kv_sum, &r->kv_max, &r->kv_last, &r->bytes_in,
                        &r->bytes_tokenized, &r->ids_total, &r->checkpoints };
    for (int i = 0; i < 8; i++)
        *cnt[i] = (int64_t)rnd(&seed);
    uint64_t nan = 0x7ff8dead12345678ull;
    memcpy(&r->nll_sum, &nan, 8);
    r->created = -0.0;
    r->saved = 1.0 / 3.0 + (double)seed;
    r->held_len = 6;
    r->held = malloc(6);
    memcpy(r->held, "\0\xff" "ab\n\x80", 6);
    r->tok_at = -3;
    r->n_queue = 7;
    r->queue = malloc(7 * sizeof *r->queue);
    for (int i = 0; i < 7; i++)
        r->queue[i] = (int32_t)(rnd(&seed) >> 40) - 1000;
    for (int i = 0; i < 4; i++)
        r->rng[i] = rnd(&seed);
    r->temperature = 0.8f;
    uint32_t fnan = 0x7fc00123u;
    memcpy(&r->top_p, &fnan, 4);
    r->min_p = 0.05f;
    r->repetition = 1.25f;
    r->presence = -0.5f;
    memcpy(&r->frequency, &fnan, 4);
    r->top_k = 40;
    r->penalty_window = 300;
    r->n_recent = 5;
    r->recent = malloc(5 * sizeof *r->recent);
    for (int i = 0; i < 5; i++)
        r->recent[i] = (int32_t)(rnd(&seed) >> 44);
    r->ids_total = r->ids_total < 5 ? 5 : r->ids_total;
    r->owner_len = 10;
    memcpy(r->owner, "owner\0\x01\x02\x03\x04", 10);
    r->access = SEP_STORE_SHARED;
}

/* fill_record under a sid allocated from st, as the daemon does. */
static void new_record(sep_store_t *st, sep_store_session_t *r, const char *name, uint64_t seed)
{
    uint32_t sid;
    assert_ok(sep_store_alloc_sid(st, &sid));
    fill_record(r, name, sid, seed);
}

static void assert_records_equal(const sep_store_session_t *a, const sep_store_session_t *b)
{
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->sid, b->sid);
    assert_int_equal(a->state, b->state);
    assert_int_equal(a->method, b->method);
    assert_int_equal(a->a, b->a);
    assert_int_equal(a->s, b->s);
    assert_int_equal(a->w, b->w);
    assert_int_equal(a->c, b->c);
    assert_int_equal(a->shift, b->shift);
    assert_string_equal(a->separators ? a->separators : "", b->separators);
    assert_int_equal(a->n_sep_ids, b->n_sep_ids);
    if (a->n_sep_ids)
        assert_memory_equal(a->sep_ids, b->sep_ids, a->n_sep_ids * 4);
    assert_int_equal(a->archive, b->archive);
    assert_memory_equal(a->model_fp, b->model_fp, 32);
    assert_string_equal(a->precision, b->precision);
    assert_int_equal(a->n_stages, b->n_stages);
    for (uint32_t i = 0; i < a->n_stages; i++) {
        assert_int_equal(a->layer0[i], b->layer0[i]);
        assert_int_equal(a->layer1[i], b->layer1[i]);
        assert_int_equal(a->state_len[i], b->state_len[i]);
    }
    const int64_t ca[8] = { a->tokens, a->kv_sum, a->kv_max, a->kv_last, a->bytes_in,
                            a->bytes_tokenized, a->ids_total, a->checkpoints };
    const int64_t cb[8] = { b->tokens, b->kv_sum, b->kv_max, b->kv_last, b->bytes_in,
                            b->bytes_tokenized, b->ids_total, b->checkpoints };
    assert_memory_equal(ca, cb, sizeof ca);
    assert_memory_equal(&a->nll_sum, &b->nll_sum, 8); /* bits: NaN == NaN */
    assert_memory_equal(&a->created, &b->created, 8);
    assert_memory_equal(&a->saved, &b->saved, 8);
    assert_int_equal(a->held_len, b->held_len);
    if (a->held_len)
        assert_memory_equal(a->held, b->held, a->held_len);
    assert_int_equal(a->tok_at, b->tok_at);
    assert_int_equal(a->n_queue, b->n_queue);
    if (a->n_queue)
        assert_memory_equal(a->queue, b->queue, a->n_queue * 4);
    assert_memory_equal(a->rng, b->rng, 32);
    assert_memory_equal(&a->temperature, &b->temperature, 4);
    assert_memory_equal(&a->top_p, &b->top_p, 4);
    const float fa[4] = { a->min_p, a->repetition, a->presence, a->frequency };
    const float fb[4] = { b->min_p, b->repetition, b->presence, b->frequency };
    assert_memory_equal(fa, fb, sizeof fa);
    assert_int_equal(a->top_k, b->top_k);
    assert_int_equal(a->penalty_window, b->penalty_window);
    assert_int_equal(a->n_recent, b->n_recent);
    if (a->n_recent)
        assert_memory_equal(a->recent, b->recent, a->n_recent * 4);
    assert_int_equal(a->owner_len, b->owner_len);
    assert_memory_equal(a->owner, b->owner, a->owner_len);
    assert_int_equal(a->access, b->access);
}

/* Checkpoint r with n stages of lens[] bytes made from seed. */
static int checkpoint(sep_store_t *st, sep_store_session_t *r, const size_t *lens, int n,
                      uint64_t seed)
{
    sep_store_blob_t b[SEP_STORE_MAX_STAGES] = { { 0 } };
    r->n_stages = (uint32_t)n;
    for (int i = 0; i < n; i++) {
        b[i].len = lens[i];
        b[i].data = make_state(lens[i], seed + (uint64_t)i);
        r->state_len[i] = lens[i];
        r->layer0[i] = 4 * i;
        r->layer1[i] = 4 * i + 4;
    }
    r->checkpoints++;
    int rc = sep_store_checkpoint(st, r, b, n);
    for (int i = 0; i < n; i++)
        free((void *)b[i].data);
    return rc;
}

/* Every stage of r's checkpoint reads back as made from seed. */
static void verify_states(sep_store_t *st, const sep_store_session_t *r, uint64_t seed)
{
    for (uint32_t i = 0; i < r->n_stages; i++) {
        uint8_t *got, *want = make_state(r->state_len[i], seed + i);
        assert_ok(sep_store_read_state(st, r, (int)i, &got));
        assert_non_null(got);
        if (r->state_len[i])
            assert_memory_equal(got, want, r->state_len[i]);
        free(got);
        free(want);
    }
}

static sep_store_stat_t stat_of(sep_store_t *st)
{
    sep_store_stat_t s;
    assert_ok(sep_store_stat(st, &s));
    return s;
}

static void snap_key(uint8_t k[10], uint32_t sid, uint16_t stage, uint32_t block)
{
    uint8_t b[10] = { sid >> 24, sid >> 16, sid >> 8, sid, stage >> 8, stage,
                      block >> 24, block >> 16, block >> 8, block };
    memcpy(k, b, 10);
}

static void arch_key(uint8_t k[14], uint32_t sid, uint64_t pos, uint16_t layer)
{
    for (int i = 0; i < 4; i++)
        k[i] = (uint8_t)(sid >> (24 - 8 * i));
    for (int i = 0; i < 8; i++)
        k[4 + i] = (uint8_t)(pos >> (56 - 8 * i));
    k[12] = layer >> 8;
    k[13] = (uint8_t)layer;
}

/* ---- plain LMDB on a closed store, to damage it ---------------------------- */

typedef struct {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
} raw_t;

static void raw_open(raw_t *w, const char *dir, const char *db)
{
    assert_int_equal(mdb_env_create(&w->env), 0);
    assert_int_equal(mdb_env_set_maxdbs(w->env, 8), 0);
    assert_int_equal(mdb_env_set_mapsize(w->env, (size_t)1 << 30), 0);
    assert_int_equal(mdb_env_open(w->env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(w->env, NULL, 0, &w->txn), 0);
    assert_int_equal(mdb_dbi_open(w->txn, db, db ? 0 : MDB_CREATE, &w->dbi), 0);
}

static void raw_close(raw_t *w)
{
    assert_int_equal(mdb_txn_commit(w->txn), 0);
    mdb_env_close(w->env);
}

/* Flip one bit of byte off of the value under key in database db. */
static void raw_flip(const char *dir, const char *db, const void *key, size_t klen, size_t off)
{
    raw_t w;
    raw_open(&w, dir, db);
    MDB_val k = { klen, (void *)key }, v;
    assert_int_equal(mdb_get(w.txn, w.dbi, &k, &v), 0);
    assert_true(off < v.mv_size);
    uint8_t *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[off] ^= 0x10;
    v.mv_data = copy;
    assert_int_equal(mdb_put(w.txn, w.dbi, &k, &v, 0), 0);
    free(copy);
    raw_close(&w);
}

static void raw_del(const char *dir, const char *db, const void *key, size_t klen)
{
    raw_t w;
    raw_open(&w, dir, db);
    MDB_val k = { klen, (void *)key };
    assert_int_equal(mdb_del(w.txn, w.dbi, &k, NULL), 0);
    raw_close(&w);
}

/* Put under key `to` the value under key `from` (a misplaced value). */
static void raw_copy(const char *dir, const char *db, const void *from, const void *to,
                     size_t klen)
{
    raw_t w;
    raw_open(&w, dir, db);
    MDB_val k = { klen, (void *)from }, v, k2 = { klen, (void *)to };
    assert_int_equal(mdb_get(w.txn, w.dbi, &k, &v), 0);
    uint8_t *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    v.mv_data = copy;
    assert_int_equal(mdb_put(w.txn, w.dbi, &k2, &v, 0), 0);
    free(copy);
    raw_close(&w);
}

static void write_file(const char *path, const void *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, p, n), (ssize_t)n);
    close(fd);
}

/* ---- CRC32C --------------------------------------------------------------- */

static void test_crc32c(void **state)
{
    (void)state;
    assert_int_equal(sep_crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(sep_crc32c_sw(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(sep_crc32c_hw(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(sep_crc32c(0, "", 0), 0);
    size_t cap = 200000;
    uint8_t *buf = make_state(cap + 16, 7), *dst = malloc(cap + 16);
    uint64_t seed = 99;
    for (int it = 0; it < 400; it++) {
        /* the sizes around the stream lengths (8192 and 256, three of each) */
        size_t sizes[] = { 0, 1, 7, 8, 9, 767, 768, 769, 24575, 24576, 24577, 3 * 8192 + 768 };
        size_t n = it < 12 ? sizes[it] : rnd(&seed) % cap, off = rnd(&seed) % 16;
        uint32_t sw = sep_crc32c_sw(5, buf + off, n);
        assert_int_equal(sep_crc32c_hw(5, buf + off, n), sw);
        assert_int_equal(sep_crc32c(5, buf + off, n), sw);
        assert_int_equal(sep_crc32c_copy(dst, buf + off, n, 5), sw);
        if (n)
            assert_memory_equal(dst, buf + off, n);
        size_t cut = n ? rnd(&seed) % n : 0;
        assert_int_equal(sep_crc32c(sep_crc32c(5, buf + off, cut), buf + off + cut, n - cut), sw);
    }
    print_message("# crc32c: SSE4.2 %s\n", sep_crc32c_hw_available() ? "used" : "absent");
    free(buf);
    free(dst);
}

/* ---- records --------------------------------------------------------------- */

/* Re-frame a record body: header with its length, CRC after it. */
static uint8_t *frame(const uint8_t *body, size_t n, size_t *len)
{
    uint8_t *b = malloc(n + 16);
    memcpy(b, "SEPS\0\0\0\0", 8);
    b[4] = SEP_STORE_RECORD;
    uint32_t n32 = (uint32_t)n;
    memcpy(b + 8, &n32, 4);
    memcpy(b + 12, body, n);
    uint32_t crc = sep_crc32c(0, b, 12 + n);
    memcpy(b + 12 + n, &crc, 4);
    *len = n + 16;
    return b;
}

static void test_record_round_trip(void **state)
{
    (void)state;
    sep_store_session_t r, d;
    uint8_t *buf;
    size_t len;
    fill_record(&r, "book-1.x_y", 42, 3);
    r.n_stages = 3;
    for (int i = 0; i < 3; i++) {
        r.layer0[i] = 3 * i;
        r.layer1[i] = 3 * i + 3;
        r.state_len[i] = ((uint64_t)1 << 40) + (uint64_t)i;
    }
    r.state = SEP_STORE_SUSPENDED;
    assert_ok(sep_store_session_encode(&r, &buf, &len));
    assert_ok(sep_store_session_decode(&d, buf, len));
    assert_records_equal(&r, &d);
    sep_store_session_free(&d);

    /* a field of a later version (unknown tag) is skipped */
    size_t n = len - 16;
    uint8_t *body = malloc(n + 6 + SEP_NAME_MAX + 11); /* room for a field more */
    memcpy(body, buf + 12, n);
    memcpy(body + n, "\xe7\x03\x05\0\0\0hello", 11);
    size_t flen;
    uint8_t *f = frame(body, n + 11, &flen);
    assert_ok(sep_store_session_decode(&d, f, flen));
    assert_records_equal(&r, &d);
    sep_store_session_free(&d);
    free(f);

    /* the first field (the name) dropped: required */
    uint32_t first;
    memcpy(&first, buf + 14, 4);
    f = frame(buf + 12 + 6 + first, n - 6 - first, &flen);
    assert_fails(sep_store_session_decode(&d, f, flen), SEP_EFORMAT, "field name missing");
    free(f);
    /* a field twice */
    memcpy(body, buf + 12, n);
    memcpy(body + n, buf + 12, 6 + first);
    f = frame(body, n + 6 + first, &flen);
    assert_fails(sep_store_session_decode(&d, f, flen), SEP_EFORMAT, "field name twice");
    free(f);
    free(body);
    /* version 1, before the pick settings (tag 19) and the recent ids (20):
     * it reads with the penalties off and nothing recent; version 2 needs
     * both */
    body = malloc(n);
    size_t kept = 0;
    for (size_t at = 0; at < n;) {
        uint16_t tag;
        uint32_t flen32;
        memcpy(&tag, buf + 12 + at, 2);
        memcpy(&flen32, buf + 12 + at + 2, 4);
        if (tag != 19 && tag != 20) {
            memcpy(body + kept, buf + 12 + at, 6 + flen32);
            kept += 6 + flen32;
        }
        at += 6 + flen32;
    }
    assert_true(kept < n);
    f = frame(body, kept, &flen);
    assert_fails(sep_store_session_decode(&d, f, flen), SEP_EFORMAT, "field pick missing");
    f[4] = 1;
    uint32_t crc = sep_crc32c(0, f, flen - 4);
    memcpy(f + flen - 4, &crc, 4);
    assert_ok(sep_store_session_decode(&d, f, flen));
    assert_true(d.repetition == 1 && d.presence == 0 && d.frequency == 0 && d.min_p == 0 &&
                d.top_k == 0 && d.penalty_window == 64 && d.n_recent == 0 && !d.recent);
    assert_true(d.temperature == r.temperature && d.tokens == r.tokens);
    sep_store_session_free(&d);
    free(f);
    free(body);

    /* version 2, before the access flags (tag 21): it reads as not shared
     * (owner kept); version 3 needs them */
    body = malloc(n);
    kept = 0;
    for (size_t at = 0; at < n;) {
        uint16_t tag;
        uint32_t flen32;
        memcpy(&tag, buf + 12 + at, 2);
        memcpy(&flen32, buf + 12 + at + 2, 4);
        if (tag != 21) {
            memcpy(body + kept, buf + 12 + at, 6 + flen32);
            kept += 6 + flen32;
        }
        at += 6 + flen32;
    }
    assert_true(kept == n - 10);
    f = frame(body, kept, &flen);
    assert_fails(sep_store_session_decode(&d, f, flen), SEP_EFORMAT, "field access missing");
    f[4] = 2;
    crc = sep_crc32c(0, f, flen - 4);
    memcpy(f + flen - 4, &crc, 4);
    assert_ok(sep_store_session_decode(&d, f, flen));
    assert_true(d.access == 0 && d.owner_len == r.owner_len &&
                memcmp(d.owner, r.owner, r.owner_len) == 0 && d.tokens == r.tokens);
    sep_store_session_free(&d);
    free(f);
    free(body);

    /* a newer version, well formed */
    assert_int_equal(buf[4], SEP_STORE_RECORD);
    buf[4] = SEP_STORE_RECORD + 1;
    crc = sep_crc32c(0, buf, len - 4);
    memcpy(buf + len - 4, &crc, 4);
    assert_fails(sep_store_session_decode(&d, buf, len), SEP_EUNSUPPORTED, "newer sepd");
    buf[4] = SEP_STORE_RECORD;
    buf[20] ^= 1;
    assert_fails(sep_store_session_decode(&d, buf, len), SEP_EFORMAT, "checksum mismatch");
    free(buf);

    /* an empty record: no arrays at all */
    sep_store_session_t e = { .sid = 1, .state = SEP_STORE_ACTIVE };
    strcpy(e.name, "e");
    assert_ok(sep_store_session_encode(&e, &buf, &len));
    assert_ok(sep_store_session_decode(&d, buf, len));
    assert_records_equal(&e, &d);
    assert_null(d.sep_ids);
    assert_null(d.held);
    assert_null(d.queue);
    sep_store_session_free(&d);
    free(buf);

    /* what decode would reject, encode refuses */
    sep_store_session_t bad = r;
    strcpy(bad.name, "no spaces");
    assert_fails(sep_store_session_encode(&bad, &buf, &len), SEP_EINVAL, "not a session name");
    bad = r;
    bad.sid = 0;
    assert_fails(sep_store_session_encode(&bad, &buf, &len), SEP_EINVAL, "sid 0");
    bad.sid = 1;
    bad.sep_ids[1] = bad.sep_ids[0];
    assert_fails(sep_store_session_encode(&bad, &buf, &len), SEP_EINVAL, "not ascending");
    bad.sep_ids[1] = bad.sep_ids[0] + 1;
    bad.n_stages = SEP_STORE_MAX_STAGES + 1;
    assert_fails(sep_store_session_encode(&bad, &buf, &len), SEP_EINVAL, "stages");
    bad.n_stages = 1;
    bad.layer1[0] = -1;
    assert_fails(sep_store_session_encode(&bad, &buf, &len), SEP_EINVAL, "layers");
    sep_store_session_free(&r);
}

static void test_record_fuzz(void **state)
{
    (void)state;
    sep_store_session_t r, d;
    uint8_t *buf;
    size_t len;
    uint64_t seed = 12345;
    fill_record(&r, "fuzz", 7, 1);
    assert_ok(sep_store_session_encode(&r, &buf, &len));
    uint8_t *m = malloc(len + 64);
    int ok = 0;
    for (int it = 0; it < 4000; it++) {
        size_t n;
        int kind = it % 4, rc;
        if (kind == 0) { /* random bytes, sometimes with a good frame */
            n = rnd(&seed) % (len + 64);
            for (size_t i = 0; i < n; i++)
                m[i] = (uint8_t)rnd(&seed);
            if (n >= 16 && it % 8 == 0) {
                memcpy(m, "SEPS\1\0\0\0", 8);
                uint32_t body = (uint32_t)(n - 16), crc;
                memcpy(m + 8, &body, 4);
                crc = sep_crc32c(0, m, n - 4);
                memcpy(m + n - 4, &crc, 4);
            }
        } else if (kind == 1) { /* truncated */
            n = rnd(&seed) % len;
            memcpy(m, buf, n);
        } else { /* bit flips; kind 3 fixes the CRC so the TLV parser sees them */
            n = len;
            memcpy(m, buf, len);
            for (int f = 1 + (int)(rnd(&seed) % 4); f > 0; f--)
                m[rnd(&seed) % (kind == 3 ? len - 4 : len)] ^= (uint8_t)(1u << (rnd(&seed) % 8));
            if (kind == 3) {
                uint32_t crc = sep_crc32c(0, m, len - 4);
                memcpy(m + len - 4, &crc, 4);
            }
        }
        /* a copy of exactly n bytes, so a read past the end is caught (valgrind) */
        uint8_t *exact = malloc(n ? n : 1);
        memcpy(exact, m, n);
        rc = sep_store_session_decode(&d, exact, n);
        free(exact);
        if (rc == SEP_OK) {
            ok++;
            sep_store_session_free(&d);
        } else {
            assert_true(rc == SEP_EFORMAT || rc == SEP_EUNSUPPORTED);
            assert_true(sep_errmsg()[0] != 0);
            /* a failed decode leaves nothing to free */
            assert_null(d.separators);
            assert_null(d.sep_ids);
        }
    }
    print_message("# fuzz: %d of 4000 inputs decoded\n", ok);
    free(m);
    free(buf);
    sep_store_session_free(&r);
}

/* ---- the environment -------------------------------------------------------- */

static void test_open_alloc_sid(void **state)
{
    tdir_t *t = *state;
    struct stat sb;
    char path[128];
    assert_int_equal(stat(t->store, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0700);
    snprintf(path, sizeof path, "%s/data.mdb", t->store);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    uint32_t sid;
    for (uint32_t want = 1; want <= 3; want++) {
        assert_ok(sep_store_alloc_sid(t->st, &sid));
        assert_int_equal(sid, want);
    }
    sep_store_stat_t s = stat_of(t->st);
    assert_int_equal(s.map_size, (size_t)1 << 30);
    assert_int_equal(s.map_max, (size_t)64 << 30);
    assert_int_equal(s.block_payload, SEP_STORE_BLOCK_PAGES * s.page_size - 24);
    assert_int_equal(s.meta_entries, 2);
    sep_store_close(&t->st);
    assert_null(t->st);
    sep_store_close(&t->st); /* NULL: nothing */
    t->st = open_store(t->store);
    assert_ok(sep_store_alloc_sid(t->st, &sid));
    assert_int_equal(sid, 4); /* never reused */
    sep_store_close(&t->st);

    /* read-only: reads work, writes are refused */
    sep_store_opts_t ro = { .read_only = 1 };
    assert_ok(sep_store_open(&t->st, t->store, &ro));
    assert_fails(sep_store_alloc_sid(t->st, &sid), SEP_EINVAL, "read-only");
    sep_store_session_t *list;
    size_t n;
    assert_ok(sep_store_sessions(t->st, &list, &n));
    assert_int_equal(n, 0);
    assert_null(list);
    sep_store_close(&t->st);
    snprintf(path, sizeof path, "%s/none", t->dir);
    assert_fails(sep_store_open(&t->st, path, &ro), SEP_ENOTFOUND, "none");
    assert_null(t->st);
    sep_store_opts_t big = { .map_size = 2 << 20, .map_max = 1 << 20 };
    assert_fails(sep_store_open(&t->st, t->store, &big), SEP_EINVAL, "map_max");
}

static void test_sessions_put_get(void **state)
{
    tdir_t *t = *state;
    sep_store_session_t a, b, got, *list;
    size_t n;
    new_record(t->st, &a, "alpha", 1);
    new_record(t->st, &b, "beta", 2);
    assert_ok(sep_store_put_session(t->st, &b));
    assert_ok(sep_store_put_session(t->st, &a));
    a.tokens = 99;
    assert_ok(sep_store_put_session(t->st, &a)); /* replaces */
    assert_ok(sep_store_get_session(t->st, "alpha", &got));
    assert_records_equal(&a, &got);
    sep_store_session_free(&got);
    assert_fails(sep_store_get_session(t->st, "gamma", &got), SEP_ENOTFOUND, "'gamma'");
    assert_ok(sep_store_sessions(t->st, &list, &n));
    assert_int_equal(n, 2);
    assert_records_equal(&a, &list[0]); /* name order */
    assert_records_equal(&b, &list[1]);
    assert_false(list[0].damaged);
    sep_store_sessions_free(&list, n);
    assert_null(list);
    /* the same name under another sid would orphan the first one's data */
    sep_store_session_t other = a;
    other.sid = 9;
    assert_fails(sep_store_put_session(t->st, &other), SEP_EINVAL, "session 'alpha' is sid 1");
    /* a sid alloc_sid never gave would be given to another session later */
    strcpy(other.name, "stray");
    assert_fails(sep_store_put_session(t->st, &other), SEP_EINVAL,
                 "session 'stray': sid 9 was never allocated");
    sep_store_close(&t->st);
    sep_store_session_free(&a);
    sep_store_session_free(&b);
}

/* ---- snapshots ---------------------------------------------------------------- */

static void test_checkpoint_sizes(void **state)
{
    tdir_t *t = *state;
    /* the one test that syncs: durability is LMDB's, the path must work */
    assert_ok(sep_store_open(&t->st, t->store, NULL));
    size_t P = stat_of(t->st).block_payload;
    const size_t sizes[] = { 0, 1, P, P + 1, 3 * P - 1, (size_t)5 << 20 };
    sep_store_session_t r, got;
    new_record(t->st, &r, "sizes", 5);
    uint64_t seed = 1000;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++, seed += 10) {
        size_t one[1] = { sizes[i] }, three[3] = { sizes[i], P + 7, sizes[i] / 2 + 1 };
        assert_ok(checkpoint(t->st, &r, one, 1, seed));
        assert_ok(sep_store_get_session(t->st, "sizes", &got));
        assert_records_equal(&r, &got);
        verify_states(t->st, &got, seed);
        sep_store_session_free(&got);
        size_t blocks = (sizes[i] + P - 1) / P;
        assert_int_equal(stat_of(t->st).snapshot_blocks, blocks);
        assert_ok(checkpoint(t->st, &r, three, 3, seed + 5));
        verify_states(t->st, &r, seed + 5);
        blocks = (sizes[i] + P - 1) / P + 2 + (sizes[i] / 2 + P) / P;
        assert_int_equal(stat_of(t->st).snapshot_blocks, blocks);
    }
    uint8_t *buf;
    assert_fails(sep_store_read_state(t->st, &r, 3, &buf), SEP_EINVAL, "no stage 3");
    assert_null(buf);
    /* states that do not match the record */
    sep_store_blob_t b = { "x", 1 };
    r.n_stages = 1;
    r.state_len[0] = 2;
    assert_fails(sep_store_checkpoint(t->st, &r, &b, 1), SEP_EINVAL, "the record says 2");
    assert_fails(sep_store_checkpoint(t->st, &r, &b, 2), SEP_EINVAL, "2 states");
    sep_store_close(&t->st);
    sep_store_session_free(&r);
}

static void test_checkpoint_replace(void **state)
{
    tdir_t *t = *state;
    size_t P = stat_of(t->st).block_payload;
    sep_store_session_t r, keep;
    new_record(t->st, &r, "re", 1);
    new_record(t->st, &keep, "keep", 2);
    size_t k3[3] = { 3 * P, P, 2 * P + 5 };
    assert_ok(checkpoint(t->st, &keep, k3, 3, 77));
    size_t a[3] = { 5 * P, 2 * P, 4 * P + 1 }, b[2] = { P + 3, 6 * P }, c[3] = { 1, 2, 3 };
    assert_ok(checkpoint(t->st, &r, a, 3, 1));
    assert_int_equal(stat_of(t->st).snapshot_blocks, 7 + 5 + 2 + 5);
    /* stage 0 shrinks, stage 1 grows, stage 2 goes away */
    assert_ok(checkpoint(t->st, &r, b, 2, 2));
    assert_int_equal(stat_of(t->st).snapshot_blocks, 7 + 2 + 6);
    verify_states(t->st, &r, 2);
    assert_ok(checkpoint(t->st, &r, c, 3, 3));
    assert_int_equal(stat_of(t->st).snapshot_blocks, 7 + 3);
    verify_states(t->st, &r, 3);
    assert_ok(checkpoint(t->st, &r, NULL, 0, 4));
    assert_int_equal(stat_of(t->st).snapshot_blocks, 7);
    sep_store_session_t got;
    assert_ok(sep_store_get_session(t->st, "re", &got));
    assert_int_equal(got.n_stages, 0);
    sep_store_session_free(&got);
    verify_states(t->st, &keep, 77); /* the neighbour untouched */
    sep_store_close(&t->st);
    sep_store_session_free(&r);
    sep_store_session_free(&keep);
}

/* ---- the archive ------------------------------------------------------------- */

#define KV 16

/* The K row of an entry: a function of (sid, pos, layer), V its negation. */
static void entry_rows(uint32_t sid, int64_t pos, int layer, int dtype, uint8_t *k, uint8_t *v)
{
    for (int i = 0; i < KV; i++) {
        float x = (float)sid * 1000.0f + (float)pos + (float)layer / 8.0f + (float)i / 64.0f;
        if (dtype == SEP_ARCHIVE_F32) {
            float y = -x;
            memcpy(k + 4 * i, &x, 4);
            memcpy(v + 4 * i, &y, 4);
        } else {
            uint32_t bits;
            memcpy(&bits, &x, 4);
            uint16_t h = (uint16_t)(bits >> 16), nh = h ^ 0x8000;
            memcpy(k + 2 * i, &h, 2);
            memcpy(v + 2 * i, &nh, 2);
        }
    }
}

/* Archive positions [p0, p1) x layers [0, layers) of sid; odd positions bf16. */
static void put_entries(sep_store_t *st, uint32_t sid, int64_t p0, int64_t p1, int layers)
{
    size_t n = (size_t)(p1 - p0) * (size_t)layers, i = 0;
    sep_store_sep_t *e = calloc(n, sizeof *e);
    uint8_t *rows = malloc(n * 2 * KV * 4);
    for (int64_t p = p0; p < p1; p++)
        for (int l = 0; l < layers; l++, i++) {
            uint8_t *k = rows + i * 2 * KV * 4, *v = k + KV * 4;
            int dtype = p % 2 ? SEP_ARCHIVE_BF16 : SEP_ARCHIVE_F32;
            entry_rows(sid, p, l, dtype, k, v);
            e[i] = (sep_store_sep_t){ .pos = p, .id = (int32_t)(p * 10 + l), .layer = l,
                                      .kv_dim = KV, .dtype = dtype, .k = k, .v = v };
        }
    assert_ok(sep_store_archive_put(st, sid, e, n));
    free(e);
    free(rows);
}

typedef struct {
    uint32_t sid;
    int64_t last_pos;
    int last_layer, n, stop_at;
} seen_t;

static int check_entry(const sep_store_sep_t *e, void *arg)
{
    seen_t *s = arg;
    uint8_t k[KV * 4], v[KV * 4];
    /* ascending by position, then layer */
    assert_true(e->pos > s->last_pos || (e->pos == s->last_pos && e->layer > s->last_layer));
    s->last_pos = e->pos;
    s->last_layer = e->layer;
    assert_int_equal(e->id, e->pos * 10 + e->layer);
    assert_int_equal(e->kv_dim, KV);
    assert_int_equal(e->dtype, e->pos % 2 ? SEP_ARCHIVE_BF16 : SEP_ARCHIVE_F32);
    entry_rows(s->sid, e->pos, e->layer, e->dtype, k, v);
    size_t row = (size_t)KV * (e->dtype == SEP_ARCHIVE_F32 ? 4 : 2);
    assert_memory_equal(e->k, k, row);
    assert_memory_equal(e->v, v, row);
    return ++s->n == s->stop_at ? 77 : 0;
}

/* Entries of sid in the range, checked against rows made for row_sid
 * (an import moves them to another sid); their count, also by count. */
static int scan_as(sep_store_t *st, uint32_t sid, uint32_t row_sid, int64_t from, int64_t to,
                   int layer)
{
    seen_t s = { row_sid, -1, -1, 0, 0 };
    uint64_t count;
    assert_ok(sep_store_archive_scan(st, sid, from, to, layer, check_entry, &s));
    assert_ok(sep_store_archive_count(st, sid, from, to, layer, &count));
    assert_int_equal(count, s.n);
    return s.n;
}
#define scan_n(st, sid, from, to, layer) scan_as(st, sid, sid, from, to, layer)

static void test_archive(void **state)
{
    tdir_t *t = *state;
    /* sid 2 first, then sid 1 (not appendable), then sid 2 again (appends) */
    put_entries(t->st, 2, 0, 50, 4);
    put_entries(t->st, 1, 0, 100, 4);
    put_entries(t->st, 2, 50, 100, 4);
    put_entries(t->st, 3, 0, 1, 1);
    assert_int_equal(scan_n(t->st, 1, 0, 1000, -1), 400);
    assert_int_equal(scan_n(t->st, 2, 0, INT64_MAX, -1), 400);
    assert_int_equal(scan_n(t->st, 1, 10, 20, -1), 40);
    assert_int_equal(scan_n(t->st, 1, 10, 20, 2), 10);
    assert_int_equal(scan_n(t->st, 2, 95, 200, 3), 5);
    assert_int_equal(scan_n(t->st, 1, -5, 1, 0), 1);
    assert_int_equal(scan_n(t->st, 1, 20, 10, -1), 0);
    assert_int_equal(scan_n(t->st, 1, 0, 100, 4), 0);
    assert_int_equal(scan_n(t->st, 9, 0, 100, -1), 0);
    assert_int_equal(scan_n(t->st, 3, 0, 100, -1), 1);
    /* a nonzero return of fn stops the scan and is returned */
    seen_t s = { 1, -1, -1, 0, 7 };
    assert_int_equal(sep_store_archive_scan(t->st, 1, 0, 100, -1, check_entry, &s), 77);
    assert_int_equal(s.n, 7);
    /* a replaced entry, a batch out of order */
    put_entries(t->st, 1, 40, 41, 4);
    sep_store_sep_t e[2];
    uint8_t rows[2][2 * KV * 4];
    entry_rows(1, 200, 1, SEP_ARCHIVE_F32, rows[0], rows[0] + KV * 4);
    entry_rows(1, 150, 0, SEP_ARCHIVE_F32, rows[1], rows[1] + KV * 4);
    e[0] = (sep_store_sep_t){ 200, 2001, 1, KV, SEP_ARCHIVE_F32, rows[0], rows[0] + KV * 4 };
    e[1] = (sep_store_sep_t){ 150, 1500, 0, KV, SEP_ARCHIVE_F32, rows[1], rows[1] + KV * 4 };
    assert_ok(sep_store_archive_put(t->st, 1, e, 2));
    assert_int_equal(scan_n(t->st, 1, 0, 1000, -1), 402);
    assert_int_equal(stat_of(t->st).archive_entries, 803);
    e[0].kv_dim = 0;
    assert_fails(sep_store_archive_put(t->st, 1, e, 2), SEP_EINVAL, "entry 0");
    e[0].kv_dim = KV;
    e[1].layer = 70000;
    assert_fails(sep_store_archive_put(t->st, 1, e, 2), SEP_EINVAL, "entry 1");
    uint64_t count;
    assert_fails(sep_store_archive_count(t->st, 1, 0, 9, -2, &count), SEP_EINVAL, "layer -2");
}

static void test_delete(void **state)
{
    tdir_t *t = *state;
    size_t P = stat_of(t->st).block_payload, lens[2] = { 2 * P + 1, 100 };
    sep_store_session_t a, b, got;
    new_record(t->st, &a, "a", 1);
    new_record(t->st, &b, "b", 2);
    assert_ok(checkpoint(t->st, &a, lens, 2, 10));
    assert_ok(checkpoint(t->st, &b, lens, 2, 20));
    put_entries(t->st, 1, 0, 3000, 4); /* more than one delete batch */
    put_entries(t->st, 2, 0, 10, 4);
    assert_fails(sep_store_delete_session(t->st, "a", 2), SEP_EINVAL, "session 'a' is sid 1");
    assert_ok(sep_store_delete_session(t->st, "a", 0));
    assert_fails(sep_store_get_session(t->st, "a", &got), SEP_ENOTFOUND, "'a'");
    sep_store_stat_t s = stat_of(t->st);
    assert_int_equal(s.sessions, 1);
    assert_int_equal(s.snapshot_blocks, 4);
    assert_int_equal(s.archive_entries, 40);
    assert_ok(sep_store_delete_session(t->st, "a", 1)); /* again: nothing left, no error */
    verify_states(t->st, &b, 20);
    assert_int_equal(scan_n(t->st, 2, 0, 100, -1), 40);
    sep_store_close(&t->st);
    sep_store_session_free(&a);
    sep_store_session_free(&b);
}

/* Read ex to its end or its first failure, in pieces of cap bytes. */
static int export_drain(sep_store_export_t *ex, size_t cap)
{
    uint8_t buf[4096];
    size_t got;
    int rc;
    assert_true(cap <= sizeof buf);
    while (!(rc = sep_store_export_read(ex, buf, cap, &got)) && got)
        ;
    return rc;
}

/* ---- damage ------------------------------------------------------------------ */

static void test_damaged_record(void **state)
{
    tdir_t *t = *state;
    sep_store_session_t x, y, got, *list;
    size_t n, lens[1] = { 1000 };
    new_record(t->st, &x, "x", 1);
    new_record(t->st, &y, "y", 2);
    assert_ok(checkpoint(t->st, &x, lens, 1, 1));
    assert_ok(checkpoint(t->st, &y, lens, 1, 2));
    sep_store_close(&t->st);
    raw_flip(t->store, "sessions", "x", 1, 40);

    t->st = open_store(t->store);
    sep_store_stat_t s = stat_of(t->st);
    assert_int_equal(s.damaged_at_open, 1);
    assert_int_equal(s.orphan_blocks, 0); /* the sweep held back: x's sid is unknown */
    assert_int_equal(s.snapshot_blocks, 2);
    assert_fails(sep_store_get_session(t->st, "x", &got), SEP_EFORMAT,
                 "session 'x': record: checksum mismatch");
    assert_ok(sep_store_get_session(t->st, "y", &got));
    assert_records_equal(&y, &got);
    sep_store_session_free(&got);
    assert_ok(sep_store_sessions(t->st, &list, &n));
    assert_int_equal(n, 2);
    assert_string_equal(list[0].name, "x");
    assert_true(list[0].damaged);
    assert_non_null(strstr(list[0].damage, "checksum mismatch"));
    assert_int_equal(list[0].sid, 0);
    assert_false(list[1].damaged);
    assert_records_equal(&y, &list[1]);
    sep_store_sessions_free(&list, n);
    sep_store_export_t *ex;
    assert_fails(sep_store_export_open(t->st, "x", &ex), SEP_EFORMAT, "checksum mismatch");
    /* a checkpoint replaces the damaged record */
    assert_ok(checkpoint(t->st, &x, lens, 1, 3));
    verify_states(t->st, &x, 3);
    sep_store_close(&t->st);
    sep_store_session_free(&x);
    sep_store_session_free(&y);
}

/* Open the store damaged by the caller, read stage of x: it must fail with
 * text; then checkpoint x again, which undoes the damage. */
typedef struct {
    tdir_t *t;
    sep_store_session_t *x;
    const size_t *lens;
} blk_case_t;

static void blk_case(const blk_case_t *c, int stage, const char *text)
{
    uint8_t *buf;
    sep_store_t *st = open_store(c->t->store);
    assert_fails(sep_store_read_state(st, c->x, stage, &buf), SEP_EFORMAT, text);
    assert_null(buf);
    assert_ok(checkpoint(st, c->x, c->lens, 2, 1)); /* undo the damage */
    sep_store_close(&st);
}

static void test_damaged_block(void **state)
{
    tdir_t *t = *state;
    size_t P = stat_of(t->st).block_payload, lens[2] = { 4 * P + 10, 2 * P };
    sep_store_session_t x, y;
    uint8_t key[10], key2[10];
    blk_case_t c = { t, &x, lens };
    new_record(t->st, &x, "x", 1);
    new_record(t->st, &y, "y", 2);
    assert_ok(checkpoint(t->st, &x, lens, 2, 1));
    assert_ok(checkpoint(t->st, &y, lens, 2, 2));
    sep_store_close(&t->st);

    snap_key(key, 1, 1, 1);
    raw_flip(t->store, "snapshots", key, 10, 5000);
    t->st = open_store(t->store);
    verify_states(t->st, &y, 2); /* the other session reads */
    sep_store_export_t *ex;
    assert_ok(sep_store_export_open(t->st, "x", &ex));
    assert_fails(export_drain(ex, 4096), SEP_EFORMAT, "stage 1 block 1: checksum mismatch");
    assert_fails(export_drain(ex, 10), SEP_EFORMAT, "block 1"); /* failed for good */
    sep_store_export_close(&ex);
    sep_store_close(&t->st);
    blk_case(&c, 1, "session 'x' stage 1 block 1: checksum mismatch");

    snap_key(key, 1, 0, 3);
    raw_del(t->store, "snapshots", key, 10);
    blk_case(&c, 0, "session 'x' stage 0: block 3 of 5 missing");
    snap_key(key, 1, 0, 4);
    raw_del(t->store, "snapshots", key, 10);
    blk_case(&c, 0, "session 'x' stage 0: block 4 of 5 missing");
    /* a block under another block's key: the CRC covers the key */
    snap_key(key, 1, 0, 1);
    snap_key(key2, 1, 0, 3);
    raw_copy(t->store, "snapshots", key, key2, 10);
    blk_case(&c, 0, "session 'x' stage 0 block 3: checksum mismatch");
    /* a full block where the last one (10 bytes) goes */
    snap_key(key2, 1, 0, 4);
    raw_copy(t->store, "snapshots", key, key2, 10);
    blk_case(&c, 0, "session 'x' stage 0 block 4 of 5: too long");
    /* a block past the end */
    snap_key(key, 1, 0, 5);
    raw_copy(t->store, "snapshots", key2, key, 10);
    blk_case(&c, 0, "session 'x' stage 0 block 5: past the end of the");
    /* records that say less or more than the blocks hold */
    x.state_len[0] = 3 * P;
    blk_case(&c, 0, "session 'x' stage 0 block 3: past the end of the");
    x.state_len[0] = 4 * P + 20;
    blk_case(&c, 0, "session 'x' stage 0 block 4 of 5: truncated (10 bytes, expected 20)");
    sep_store_session_free(&x);
    sep_store_session_free(&y);
}

static void test_damaged_entry(void **state)
{
    tdir_t *t = *state;
    sep_store_session_t x;
    new_record(t->st, &x, "x", 1);
    assert_ok(sep_store_put_session(t->st, &x));
    put_entries(t->st, 1, 0, 20, 2);
    put_entries(t->st, 2, 0, 20, 2);
    sep_store_close(&t->st);
    uint8_t key[14];
    arch_key(key, 1, 7, 1);
    raw_flip(t->store, "archive", key, 14, 30);
    t->st = open_store(t->store);
    seen_t s = { 1, -1, -1, 0, 0 };
    assert_fails(sep_store_archive_scan(t->st, 1, 0, 100, -1, check_entry, &s), SEP_EFORMAT,
                 "archive sid 1 pos 7 layer 1: checksum mismatch");
    assert_int_equal(s.n, 15); /* the ones before it */
    assert_int_equal(scan_n(t->st, 1, 8, 100, -1), 24);
    assert_int_equal(scan_n(t->st, 1, 0, 100, 0), 20); /* other layers skip it */
    sep_store_export_t *ex;
    assert_ok(sep_store_export_open(t->st, "x", &ex));
    assert_fails(export_drain(ex, 100), SEP_EFORMAT,
                 "archive sid 1 pos 7 layer 1: checksum mismatch");
    sep_store_export_close(&ex);
    sep_store_close(&t->st);
    sep_store_session_free(&x);
}

static void test_foreign_files(void **state)
{
    tdir_t *t = *state;
    char path[128];
    snprintf(path, sizeof path, "%s/data.mdb", t->store);
    mkdir(t->store, 0700);
    /* random bytes */
    uint8_t *junk = make_state(65536, 3);
    write_file(path, junk, 65536);
    free(junk);
    assert_fails(sep_store_open(&t->st, t->store, NULL), SEP_EFORMAT, "data.mdb: not a sepd store");
    assert_null(t->st);
    /* a valid LMDB environment of something else */
    remove(path);
    raw_t w;
    raw_open(&w, t->store, NULL);
    MDB_val k = { 5, "hello" }, v = { 5, "world" };
    assert_int_equal(mdb_put(w.txn, w.dbi, &k, &v, 0), 0);
    raw_close(&w);
    assert_fails(sep_store_open(&t->st, t->store, NULL), SEP_EFORMAT,
                 "not a sepd store (no 'meta'");
    tdir_remove(t);
    tdir_make(t);

    /* a newer format */
    t->st = open_store(t->store);
    sep_store_close(&t->st);
    raw_open(&w, t->store, "meta");
    uint8_t fmt[12] = "SEPDSTOR\2\0\0\0";
    k = (MDB_val){ 6, "format" };
    v = (MDB_val){ 12, fmt };
    assert_int_equal(mdb_put(w.txn, w.dbi, &k, &v, 0), 0);
    raw_close(&w);
    assert_fails(sep_store_open(&t->st, t->store, NULL), SEP_EUNSUPPORTED,
                 "data.mdb: made by a newer sepd: format 2, this one reads 1");
    /* no format record */
    raw_del(t->store, "meta", "format", 6);
    assert_fails(sep_store_open(&t->st, t->store, NULL), SEP_EFORMAT, "no format record");
    tdir_remove(t);
    tdir_make(t);

    /* truncated: never SIGBUS */
    t->st = open_store(t->store);
    sep_store_session_t r;
    size_t lens[1] = { (size_t)2 << 20 };
    new_record(t->st, &r, "t", 1);
    assert_ok(checkpoint(t->st, &r, lens, 1, 1));
    sep_store_close(&t->st);
    snprintf(path, sizeof path, "%s/data.mdb", t->store);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(truncate(path, sb.st_size / 2), 0);
    assert_fails(sep_store_open(&t->st, t->store, NULL), SEP_EFORMAT, "data.mdb: truncated");
    assert_int_equal(truncate(path, 4096), 0); /* only one meta page left */
    assert_fails(sep_store_open(&t->st, t->store, NULL), SEP_EFORMAT, "data.mdb: not a sepd store");
    sep_store_session_free(&r);
}

/* ---- space ------------------------------------------------------------------- */

static void test_map_growth(void **state)
{
    tdir_t *t = *state;
    sep_store_opts_t o = { .map_size = 1 << 20, .no_sync = 1 };
    assert_ok(sep_store_open(&t->st, t->store, &o));
    assert_int_equal(stat_of(t->st).map_size, 1 << 20);
    sep_store_session_t r[4];
    size_t lens[2] = { (size_t)3 << 20, ((size_t)2 << 20) + 17 };
    for (int i = 0; i < 4; i++) { /* 20 MB */
        char name[8];
        snprintf(name, sizeof name, "g%d", i);
        new_record(t->st, &r[i], name, (uint64_t)i);
        assert_ok(checkpoint(t->st, &r[i], lens, 2, 100 + (uint64_t)i));
    }
    put_entries(t->st, 1, 0, 2000, 2);
    sep_store_stat_t s = stat_of(t->st);
    assert_true(s.map_size >= (size_t)20 << 20);
    assert_true(s.file_size >= (size_t)20 << 20);
    for (int i = 0; i < 4; i++)
        verify_states(t->st, &r[i], 100 + (uint64_t)i);
    sep_store_close(&t->st);
    t->st = open_store(t->store); /* reopens with the default map over the grown file */
    for (int i = 0; i < 4; i++) {
        verify_states(t->st, &r[i], 100 + (uint64_t)i);
        sep_store_session_free(&r[i]);
    }
    assert_int_equal(scan_n(t->st, 1, 0, 2000, -1), 4000);
}

static void test_map_max(void **state)
{
    tdir_t *t = *state;
    sep_store_opts_t o = { .map_size = 1 << 20, .map_max = 4 << 20, .no_sync = 1 };
    assert_ok(sep_store_open(&t->st, t->store, &o));
    sep_store_session_t r, got;
    new_record(t->st, &r, "m", 1);
    size_t small[1] = { 1 << 20 }, big[1] = { 8 << 20 };
    assert_ok(checkpoint(t->st, &r, small, 1, 1));
    sep_store_session_t newer = r;
    assert_fails(checkpoint(t->st, &newer, big, 1, 2), SEP_ENOSPC, "map_max");
    assert_non_null(strstr(sep_errmsg(), t->store));
    assert_int_equal(stat_of(t->st).map_size, 4 << 20);
    /* the previous checkpoint, whole */
    assert_ok(sep_store_get_session(t->st, "m", &got));
    assert_int_equal(got.state_len[0], 1 << 20);
    verify_states(t->st, &got, 1);
    sep_store_session_free(&got);
    /* and the store still takes what fits */
    r.n_stages = 1;
    assert_ok(checkpoint(t->st, &r, small, 1, 3));
    verify_states(t->st, &r, 3);
    sep_store_close(&t->st);
    sep_store_session_free(&r);
}

/* A full disk without root: the file size limit makes LMDB's writes fail
 * the way a full disk does (a short write, then EFBIG). */
static void test_disk_full(void **state)
{
    tdir_t *t = *state;
    sep_store_session_t r, got;
    new_record(t->st, &r, "d", 1);
    size_t small[1] = { 1 << 20 }, big[1] = { 16 << 20 };
    assert_ok(checkpoint(t->st, &r, small, 1, 1));
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = stat_of(t->st).file_size + (4 << 20);
    void (*was)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    sep_store_session_t newer = r;
    int rc = checkpoint(t->st, &newer, big, 1, 2);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, was);
    assert_fails(rc, SEP_ENOSPC, "file size limit");
    assert_ok(sep_store_get_session(t->st, "d", &got));
    verify_states(t->st, &got, 1);
    sep_store_session_free(&got);
    sep_store_close(&t->st);
    t->st = open_store(t->store); /* and after a reopen */
    assert_ok(sep_store_get_session(t->st, "d", &got));
    verify_states(t->st, &got, 1);
    sep_store_session_free(&got);
    sep_store_close(&t->st);
    sep_store_session_free(&r);
}

/* ---- export and import -------------------------------------------------------- */

/* The whole export of name, read in pieces of 1..maxpiece bytes. */
static uint8_t *export_all(sep_store_t *st, const char *name, size_t maxpiece, size_t *len,
                           uint64_t *seed)
{
    sep_store_export_t *ex;
    size_t cap = 1 << 20, n = 0, got;
    uint8_t *b = malloc(cap);
    assert_ok(sep_store_export_open(st, name, &ex));
    for (;;) {
        size_t want = 1 + rnd(seed) % maxpiece;
        if (n + want > cap)
            assert_non_null(b = realloc(b, cap *= 2));
        assert_ok(sep_store_export_read(ex, b + n, want, &got));
        if (!got)
            break;
        n += got;
    }
    sep_store_export_close(&ex);
    *len = n;
    return b;
}

/* Feed len bytes of stream in pieces of 1..maxpiece bytes: the first failure. */
static int import_feed(sep_store_import_t *im, const uint8_t *s, size_t len, size_t maxpiece,
                       uint64_t *seed)
{
    for (size_t at = 0; at < len;) {
        size_t k = 1 + rnd(seed) % maxpiece;
        k = k < len - at ? k : len - at;
        int rc = sep_store_import_write(im, s + at, k);
        if (rc)
            return rc;
        at += k;
    }
    return SEP_OK;
}

/* A session with a snapshot of three stages (one empty) and an archive. */
static void make_exportable(sep_store_t *st, sep_store_session_t *r, const char *name)
{
    size_t P = stat_of(st).block_payload, lens[3] = { 3 * P + 11, 0, P };
    new_record(st, r, name, 31);
    r->state = SEP_STORE_SUSPENDED;
    assert_ok(checkpoint(st, r, lens, 3, 500 + r->sid));
    put_entries(st, r->sid, 0, 300, 3);
}

static void test_export_import(void **state)
{
    tdir_t *t = *state, t2;
    tdir_make(&t2);
    sep_store_t *st2;
    t->st = open_store(t->store);
    sep_store_session_t r, other, got;
    uint64_t seed = 4242;
    make_exportable(t->st, &r, "src");
    make_exportable(t->st, &other, "other"); /* a neighbour not to be exported */
    size_t len, len2;
    uint8_t *s = export_all(t->st, "src", 5000, &len, &seed);
    uint8_t *s2 = export_all(t->st, "src", 1, &len2, &seed); /* byte by byte: the same stream */
    assert_int_equal(len, len2);
    assert_memory_equal(s, s2, len);
    free(s2);

    sep_store_import_t *im;
    assert_fails(sep_store_import_open(t->st, "other", &im), SEP_EINVAL, "session 'other' exists");
    assert_ok(sep_store_import_open(t->st, "copy", &im));
    assert_ok(import_feed(im, s, len, 777, &seed));
    assert_ok(sep_store_import_finish(im, &got));
    sep_store_import_abort(&im); /* after a finish: only frees */
    assert_null(im);
    assert_string_equal(got.name, "copy");
    assert_int_equal(got.sid, 3);
    assert_int_equal(got.state, SEP_STORE_SUSPENDED);
    sep_store_session_t want = r;
    strcpy(want.name, "copy");
    want.sid = 3;
    assert_records_equal(&want, &got);
    verify_states(t->st, &got, 500 + r.sid);
    assert_int_equal(scan_as(t->st, 3, r.sid, 0, 1000, -1), 900);
    sep_store_session_t stored;
    assert_ok(sep_store_get_session(t->st, "copy", &stored));
    assert_records_equal(&got, &stored);
    sep_store_session_free(&stored);
    /* the copy's stream is the original's but for its name and sid */
    sep_store_stat_t s0 = stat_of(t->st);
    assert_int_equal(s0.sessions, 3);

    /* into another store under the exported name, byte by byte */
    st2 = open_store(t2.store);
    assert_ok(sep_store_import_open(st2, NULL, &im));
    assert_ok(import_feed(im, s, len, 1, &seed));
    sep_store_session_t got2;
    assert_ok(sep_store_import_finish(im, &got2));
    sep_store_import_abort(&im);
    assert_string_equal(got2.name, "src");
    assert_int_equal(got2.sid, 1);
    verify_states(st2, &got2, 500 + r.sid);
    /* ids of the entries are the source's sid (1) rows, under sid 1 again */
    assert_int_equal(scan_n(st2, 1, 0, 1000, -1), 900);
    assert_ok(sep_store_import_open(st2, NULL, &im));
    assert_fails(import_feed(im, s, len, 4096, &seed), SEP_EINVAL, "session 'src' exists");
    sep_store_import_abort(&im);
    assert_int_equal(stat_of(st2).archive_entries, 900);
    sep_store_session_free(&got2);
    sep_store_close(&st2);
    free(s);
    sep_store_session_free(&got);
    sep_store_session_free(&r);
    sep_store_session_free(&other);
    tdir_remove(&t2);
}

static void test_export_changed(void **state)
{
    tdir_t *t = *state;
    sep_store_session_t r;
    make_exportable(t->st, &r, "c");
    sep_store_export_t *ex;
    uint8_t buf[1000];
    size_t got;
    assert_ok(sep_store_export_open(t->st, "c", &ex));
    assert_ok(sep_store_export_read(ex, buf, sizeof buf, &got));
    assert_int_equal(got, sizeof buf);
    r.tokens++;
    assert_ok(sep_store_put_session(t->st, &r));
    /* what was made before the change comes out first */
    assert_fails(export_drain(ex, sizeof buf), SEP_EINVAL,
                 "session 'c': the session changed during the export");
    sep_store_export_close(&ex);
    assert_fails(sep_store_export_open(t->st, "none", &ex), SEP_ENOTFOUND, "'none'");
    sep_store_close(&t->st);
    sep_store_session_free(&r);
}

/* An import of stream s that must fail with code and text, at write or
 * finish; afterwards the store holds what it held before. */
static void import_fails(sep_store_t *st, const uint8_t *s, size_t len, int code,
                         const char *text, uint64_t *seed)
{
    sep_store_stat_t before = stat_of(st);
    sep_store_import_t *im;
    sep_store_session_t got;
    assert_ok(sep_store_import_open(st, "bad", &im));
    int rc = import_feed(im, s, len, 3000, seed);
    if (!rc)
        rc = sep_store_import_finish(im, &got);
    assert_fails(rc, code, text);
    /* and it stays failed */
    assert_int_equal(sep_store_import_finish(im, &got), code);
    sep_store_import_abort(&im);
    sep_store_stat_t after = stat_of(st);
    assert_int_equal(after.sessions, before.sessions);
    assert_int_equal(after.snapshot_blocks, before.snapshot_blocks);
    assert_int_equal(after.archive_entries, before.archive_entries);
}

static void test_import_bad_stream(void **state)
{
    tdir_t *t = *state;
    sep_store_session_t r;
    uint64_t seed = 77;
    size_t len;
    make_exportable(t->st, &r, "x");
    uint8_t *s = export_all(t->st, "x", 1 << 16, &len, &seed), *m = malloc(len);
    size_t rec = 16 + 12 + 1 + 4; /* header, item head, key "x", into the record value */
    /* cut anywhere */
    const size_t cuts[] = { 0, 5, 16, 20, rec + 3, len / 2, len - 40, len - 1 };
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++)
        import_fails(t->st, s, cuts[i], SEP_EFORMAT, "truncated at offset", &seed);
    /* a byte of the record, of a block payload, of an entry, of the end's CRC */
    const struct { size_t off; const char *text; } flips[] = {
        { 3, "not a sepd export" },
        { rec + 20, "item 0 (session record) at offset 16: session 'x': record: checksum" },
        { len / 3, "(snapshot block) at offset" },
        { len - 40 - 106 + 26 + 30, "(archive entry) at offset" },
        { len - 2, "stream checksum mismatch" },
        { len - 20, "counted" },
    };
    for (size_t i = 0; i < sizeof flips / sizeof *flips; i++) {
        memcpy(m, s, len);
        m[flips[i].off] ^= 0x04;
        import_fails(t->st, m, len, SEP_EFORMAT, flips[i].text, &seed);
    }
    /* bytes after the end */
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, s, len);
    longer[len] = 0;
    import_fails(t->st, longer, len + 1, SEP_EFORMAT, "after the end item", &seed);
    free(longer);
    /* an item of an unknown type */
    memcpy(m, s, len);
    m[16] = 9;
    import_fails(t->st, m, len, SEP_EFORMAT, "item 0 (unknown) at offset 16: unknown item type 9",
                 &seed);

    /* a crash in the middle of an import: the next open sweeps what it wrote
     * (a stream larger than what an import keeps in memory, so some is) */
    sep_store_session_t big;
    size_t blen[1] = { (size_t)20 << 20 };
    new_record(t->st, &big, "big", 2);
    assert_ok(checkpoint(t->st, &big, blen, 1, 9));
    free(s);
    s = export_all(t->st, "big", 1 << 20, &len, &seed);
    sep_store_stat_t before = stat_of(t->st);
    sep_store_close(&t->st);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        sep_store_t *cst;
        sep_store_import_t *im;
        sep_store_opts_t o = { .no_sync = 1 };
        int ok = !sep_store_open(&cst, t->store, &o) && !sep_store_import_open(cst, "y", &im) &&
                 !sep_store_import_write(im, s, len - 100);
        if (ok)
            kill(getpid(), SIGKILL); /* a crash: no abort, no close, no exit */
        _exit(1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    t->st = open_store(t->store);
    sep_store_stat_t after = stat_of(t->st);
    print_message("# crash mid-import: %llu orphan blocks swept\n",
                  (unsigned long long)after.orphan_blocks);
    assert_true(after.orphan_blocks >= 32);
    assert_int_equal(after.orphan_entries, 0);
    assert_int_equal(after.sessions, before.sessions);
    assert_int_equal(after.snapshot_blocks, before.snapshot_blocks);
    assert_int_equal(after.archive_entries, before.archive_entries);
    verify_states(t->st, &r, 501);
    verify_states(t->st, &big, 9);
    sep_store_close(&t->st);
    free(s);
    free(m);
    sep_store_session_free(&r);
    sep_store_session_free(&big);
}

static void test_orphan_sweep(void **state)
{
    tdir_t *t = *state;
    sep_store_session_t a, b;
    size_t P = stat_of(t->st).block_payload, lens[2] = { 2 * P, 5 };
    new_record(t->st, &a, "a", 1);
    new_record(t->st, &b, "b", 2);
    assert_ok(checkpoint(t->st, &a, lens, 2, 1));
    assert_ok(checkpoint(t->st, &b, lens, 2, 2));
    put_entries(t->st, 1, 0, 10, 2);
    put_entries(t->st, 2, 0, 10, 2);
    put_entries(t->st, 7, 0, 10, 1); /* no record ever */
    sep_store_close(&t->st);
    raw_del(t->store, "sessions", "a", 1); /* as a crash after a delete's first transaction */
    t->st = open_store(t->store);
    sep_store_stat_t s = stat_of(t->st);
    assert_int_equal(s.orphan_blocks, 3);
    assert_int_equal(s.orphan_entries, 30);
    assert_int_equal(s.snapshot_blocks, 3);
    assert_int_equal(s.archive_entries, 20);
    verify_states(t->st, &b, 2);
    assert_int_equal(scan_n(t->st, 2, 0, 100, -1), 20);
    sep_store_close(&t->st);
    t->st = open_store(t->store);
    assert_int_equal(stat_of(t->st).orphan_blocks, 0); /* nothing left to sweep */
    sep_store_close(&t->st);
    sep_store_session_free(&a);
    sep_store_session_free(&b);
}

/* Each test that touches a store gets a fresh directory (*state). */
static int dir_setup(void **state)
{
    tdir_t *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    tdir_make(t);
    *state = t;
    return 0;
}

/* The same with the store opened in it (no_sync). */
static int store_setup(void **state)
{
    int rc = dir_setup(state);
    tdir_t *t = *state;
    if (!rc)
        t->st = open_store(t->store);
    return rc;
}

static int dir_teardown(void **state)
{
    tdir_t *t = *state;
    sep_store_close(&t->st); /* left open by a test that failed, or at its end */
    tdir_remove(t);
    free(t);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_record_round_trip),
        cmocka_unit_test(test_record_fuzz),
        cmocka_unit_test_setup_teardown(test_open_alloc_sid, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_sessions_put_get, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_sizes, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_replace, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_archive, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_delete, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_damaged_record, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_damaged_block, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_damaged_entry, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_foreign_files, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_map_growth, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_map_max, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_disk_full, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_export_import, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_export_changed, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_import_bad_stream, store_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_orphan_sweep, store_setup, dir_teardown),
    };
    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
