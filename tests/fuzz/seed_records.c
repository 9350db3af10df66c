/* seed_records.c: writes the seed corpus of fuzz_records (make
 * tests/fuzz/seed_records; tests/fuzz/seed_records CORPUS_DIR SCRATCH_DIR):
 * a session record of the current version (3: an owner, shared), cache
 * states of version 2 (empty; 3 entries of a full cache; 5 entries of a
 * sepllm cache with a separator, its raw keys and a rope offset), and an
 * export stream of a session with a two-stage snapshot and archive
 * entries (f32 and bf16). The corpus keeps older seeds too: record-v2 (no
 * owner), state-v1-full3 and export-v2 (the formats from before owners
 * and before the in-place eviction), which the decoders still read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cache.h"
#include "err.h"
#include "store.h"

static void put(const char *dir, const char *name, uint8_t mode, const void *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(&mode, 1, 1, f) != 1 || (n && fwrite(p, 1, n, f) != n) || fclose(f)) {
        perror(path);
        exit(1);
    }
}

static void check(int rc)
{
    if (rc) {
        fprintf(stderr, "seed_records: %s\n", sep_errmsg());
        exit(1);
    }
}

static void record(sep_store_session_t *r, uint32_t sid, int stages, const uint64_t *lens)
{
    static int32_t seps[3] = { 11, 13, 30 };
    static uint8_t held[3] = { 'a', 0xc3, 0 };
    static int32_t queue[2] = { 5, 6 }, recent[2] = { 7, 8 };
    memset(r, 0, sizeof *r);
    strcpy(r->name, "book");
    r->sid = sid;
    r->state = SEP_STORE_SUSPENDED;
    r->method = SEP_METHOD_SEPLLM, r->a = 2, r->s = 4, r->w = 8, r->c = 16, r->shift = 1;
    r->separators = "auto";
    r->sep_ids = seps, r->n_sep_ids = 3;
    r->archive = SEP_ARCHIVE_F32;
    strcpy(r->precision, "fp32");
    r->n_stages = (uint32_t)stages;
    for (int i = 0; i < stages; i++) {
        r->layer0[i] = i, r->layer1[i] = i + 1;
        r->state_len[i] = lens[i];
    }
    r->tokens = 40, r->kv_sum = 300, r->kv_max = 16, r->kv_last = 12, r->bytes_in = 200;
    r->bytes_tokenized = 198, r->ids_total = 42, r->checkpoints = 1;
    r->nll_sum = 123.5, r->created = 1.7e9, r->saved = 1.7e9 + 5;
    r->held = held, r->held_len = 2;
    r->queue = queue, r->n_queue = 2;
    r->temperature = 0.8f, r->top_p = 0.95f, r->repetition = 1.1f, r->top_k = 40;
    r->penalty_window = 64;
    r->recent = recent, r->n_recent = 2;
    r->rng[0] = 1, r->rng[1] = 2, r->rng[2] = 3, r->rng[3] = 4;
    memcpy(r->owner, "uid:1000", 8);
    r->owner_len = 8;
    r->access = SEP_STORE_SHARED;
}

/* A state of version 2 written by hand in the documented layout
 * (cache.h): header h, n_seen, rope_off, then ids, positions and rows
 * (floats floats per entry); into out under name once a cache of policy
 * p (on be) restores it. */
static void state_v2(const char *out, const char *name, const int32_t h[12], int64_t seen,
                     int64_t rope_off, const int32_t *ids, const int64_t *pos, int floats,
                     sep_backend_t *be, const sep_policy_t *p)
{
    int n = h[9];
    size_t nf = (size_t)n * floats, len = 4 + 48 + 16 + (size_t)n * 12 + nf * 4;
    uint8_t *b = malloc(len), *q = b;
    if (!b)
        exit(1);
    memcpy(q, "SEPC", 4), q += 4;
    memcpy(q, h, 48), q += 48;
    memcpy(q, &seen, 8), q += 8;
    memcpy(q, &rope_off, 8), q += 8;
    memcpy(q, ids, (size_t)n * 4), q += (size_t)n * 4;
    memcpy(q, pos, (size_t)n * 8), q += (size_t)n * 8;
    for (size_t i = 0; i < nf; i++, q += 4) {
        float f = (float)i / 16;
        memcpy(q, &f, 4);
    }
    sep_cache_t *c;
    check(sep_cache_new(&c, be, h[7], h[8], p));
    check(sep_cache_restore(c, b, len));
    sep_cache_destroy(&c);
    put(out, name, 1, b, len);
    free(b);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: seed_records CORPUS_DIR SCRATCH_DIR\n");
        return 2;
    }
    const char *out = argv[1];
    sep_store_session_t r;
    uint8_t *buf;
    size_t len;
    uint64_t lens[2] = { 0, 0 };

    record(&r, 7, 0, lens);
    check(sep_store_session_encode(&r, &buf, &len));
    put(out, "record", 0, buf, len);
    free(buf);

    /* cache states: an empty sepllm cache, and a full one of 3 entries */
    sep_backend_t *be;
    check(sep_backend_cpu_new(&be, 1));
    static uint8_t is_sep[256] = { [11] = 1, [13] = 1 };
    sep_policy_t p = { .method = SEP_METHOD_SEPLLM, .a = 2, .s = 4, .w = 8, .c = 16,
                       .shift = 1, .is_sep = is_sep, .n_vocab = 256 };
    sep_cache_t *c;
    check(sep_cache_new(&c, be, 2, 4, &p));
    uint8_t *st_empty;
    size_t n_empty;
    check(sep_cache_save(c, &st_empty, &n_empty));
    put(out, "state-empty", 1, st_empty, n_empty);
    sep_cache_destroy(&c);
    /* version 2 by hand: a full cache of 3 entries (2 layers, kv_dim 4,
     * two planes), and a sepllm one (a=2 s=4 w=8 c=16, shift: three
     * planes) of 5 entries after 12 tokens: 2 initial, the separator at
     * 5, the recent 10 and 11, rotated 7 positions back */
    {
        const int32_t hf[12] = { 2, SEP_METHOD_FULL, 0, 0, 0, 16, 0, 2, 4, 3, 0, 0 };
        const int32_t ids[3] = { 5, 11, 6 };
        const int64_t pos[3] = { 0, 1, 2 };
        sep_policy_t pf = { .method = SEP_METHOD_FULL, .c = 16, .is_sep = is_sep, .n_vocab = 256 };
        state_v2(out, "state-full3", hf, 3, 0, ids, pos, 2 * 2 * 4, be, &pf);
        const int32_t hs[12] = { 2, SEP_METHOD_SEPLLM, 2, 4, 8, 16, 1, 2, 4, 5, 1, 1 };
        const int32_t sids[5] = { 5, 6, 11, 7, 8 };
        const int64_t spos[5] = { 0, 1, 5, 10, 11 };
        state_v2(out, "state-sepllm5", hs, 12, 7, sids, spos, 2 * 3 * 4, be, &p);
    }

    /* an export stream: two stages (one of them empty) and 3 archive entries */
    sep_store_t *st;
    sep_store_opts_t o = { .map_size = 16 << 20, .no_sync = 1 };
    check(sep_store_open(&st, argv[2], &o));
    uint32_t sid;
    check(sep_store_alloc_sid(st, &sid));
    lens[0] = n_empty + 100, lens[1] = n_empty;
    record(&r, sid, 2, lens);
    uint8_t *s0 = malloc(lens[0]);
    for (size_t i = 0; i < lens[0]; i++)
        s0[i] = (uint8_t)(i * 7);
    sep_store_blob_t blobs[2] = { { s0, lens[0] }, { st_empty, n_empty } };
    check(sep_store_checkpoint(st, &r, blobs, 2));
    float kv[16];
    for (int i = 0; i < 16; i++)
        kv[i] = (float)i;
    sep_store_sep_t e[3] = {
        { .pos = 3, .id = 11, .layer = 0, .kv_dim = 4, .dtype = SEP_ARCHIVE_F32, .k = kv, .v = kv + 4 },
        { .pos = 3, .id = 11, .layer = 1, .kv_dim = 4, .dtype = SEP_ARCHIVE_F32, .k = kv + 8, .v = kv + 12 },
        { .pos = 9, .id = 13, .layer = 0, .kv_dim = 2, .dtype = SEP_ARCHIVE_BF16, .k = kv, .v = kv + 1 },
    };
    check(sep_store_archive_put(st, sid, e, 3));
    sep_store_export_t *ex;
    check(sep_store_export_open(st, "book", &ex));
    uint8_t *stream = NULL;
    size_t n = 0, got;
    do {
        uint8_t *ns = realloc(stream, n + 4096);
        if (!ns)
            return 1;
        stream = ns;
        check(sep_store_export_read(ex, stream + n, 4096, &got));
        n += got;
    } while (got);
    sep_store_export_close(&ex);
    put(out, "export", 2, stream, n);
    free(stream);
    free(s0);
    free(st_empty);
    sep_store_close(&st);
    sep_backend_destroy(&be);
    return 0;
}
