/* fuzz_records.c: the decoders of what sepd reads back from its LMDB
 * store and from other machines (kv-store/store.c, kv-store/cache.c).
 *
 * Input: a mode byte, then the bytes.
 *   mode 0  a session record (sep_store_session_decode). One that decodes
 *           encodes again (the decoder accepts only valid records) and
 *           decodes to the same bytes.
 *   mode 1  a cache state, the payload of the snapshot blocks
 *           (sep_cache_restore into a cache made from the policy numbers
 *           its header claims, when they are small). One that restores
 *           saves as itself (version 2), or as the same fields and
 *           entries with a rope offset (version 1, read since the
 *           in-place eviction); one that does not leaves the cache empty.
 *   mode 2  an export stream imported into a store (records, snapshot
 *           blocks and archive entries as stored, with their CRCs); an
 *           import that finishes has each stage's state read back from
 *           its blocks and its archive scanned, then is deleted. */
#include "fuzz.h"

#include <string.h>

#include "backend.h"
#include "cache.h"
#include "err.h"
#include "store.h"

static sep_store_t *fz_store;
static sep_backend_t *fz_be;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char dir[8192];
    snprintf(dir, sizeof dir, "%s/store", fuzz_dir());
    sep_store_opts_t o = { .map_size = 64 << 20, .map_max = 1 << 30, .no_sync = 1 };
    if (sep_store_open(&fz_store, dir, &o) || sep_backend_cpu_new(&fz_be, 1)) {
        fprintf(stderr, "fuzz_records: %s\n", sep_errmsg());
        abort();
    }
    return 0;
}

static void fz_record(const uint8_t *data, size_t size)
{
    sep_store_session_t r, r2;
    memset(&r, 0, sizeof r);
    if (sep_store_session_decode(&r, data, size)) {
        FUZZ_CHECK(sep_errmsg()[0], "a failed decode names its cause");
        return;
    }
    uint8_t *buf = NULL, *buf2 = NULL;
    size_t len = 0, len2 = 0;
    FUZZ_CHECK(!sep_store_session_encode(&r, &buf, &len), "a decoded record encodes: %s",
               sep_errmsg());
    memset(&r2, 0, sizeof r2);
    FUZZ_CHECK(!sep_store_session_decode(&r2, buf, len), "an encoded record decodes: %s",
               sep_errmsg());
    FUZZ_CHECK(!sep_store_session_encode(&r2, &buf2, &len2), "encodes again: %s", sep_errmsg());
    FUZZ_CHECK(len == len2 && !memcmp(buf, buf2, len), "decode and encode are stable");
    free(buf);
    free(buf2);
    sep_store_session_free(&r);
    sep_store_session_free(&r2);
}

/* the header of a state: magic, 12 int32, n_seen; version 2 adds rope_off */
#define FZ_STATE_HEADER_V1 (4 + 12 * 4 + 8)
#define FZ_STATE_HEADER (FZ_STATE_HEADER_V1 + 8)

static int32_t fz_i32(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void fz_state(const uint8_t *data, size_t size)
{
    int64_t seen = 0;
    int rs = sep_cache_state_seen(data, size, &seen);
    if (size < FZ_STATE_HEADER_V1)
        FUZZ_CHECK(rs, "a state shorter than its header");
    if (rs)
        return;
    /* the header's policy: method, a, s, w, c, shift, n_layers, kv_dim at 8.. */
    int32_t method = fz_i32(data + 8), a = fz_i32(data + 12), s = fz_i32(data + 16),
            w = fz_i32(data + 20), c = fz_i32(data + 24), shift = fz_i32(data + 28),
            layers = fz_i32(data + 32), dim = fz_i32(data + 36);
    if (method < 0 || method > 2 || a < 0 || s < 0 || w < 0 || c < 1 || a > 4096 ||
        s > 4096 || w > 4096 || c > 4096 || layers < 1 || layers > 8 || dim < 1 || dim > 256)
        return;
    static uint8_t is_sep[256] = { [1] = 1, [13] = 1, [44] = 1 };
    sep_policy_t p = { .method = (sep_method_t)method, .a = a, .s = s, .w = w, .c = c,
                       .shift = shift != 0, .is_sep = is_sep, .n_vocab = 256 };
    if (sep_policy_check(&p))
        return;
    sep_cache_t *cache = NULL;
    if (sep_cache_new(&cache, fz_be, layers, dim, &p))
        return;
    uint8_t *out = NULL;
    size_t len = 0;
    if (sep_cache_restore(cache, data, size)) {
        /* a failed restore leaves the cache as it was: empty */
        FUZZ_CHECK(sep_errmsg()[0], "a failed restore names its cause");
        FUZZ_CHECK(!sep_cache_save(cache, &out, &len) && cache->n == 0 && cache->n_seen == 0 &&
                   len == FZ_STATE_HEADER, "a failed restore leaves the cache empty");
        free(out);
        sep_cache_destroy(&cache);
        return;
    }
    FUZZ_CHECK(!sep_cache_save(cache, &out, &len), "a restored cache saves: %s", sep_errmsg());
    if (fz_i32(data + 4) == 2) {
        FUZZ_CHECK(len == size && !memcmp(out, data, size), "save gives back what was restored");
    } else {
        /* version 1 is saved as version 2: its header, then rope_off (8
         * bytes), the same entries; and that restores and saves as itself */
        FUZZ_CHECK(len == size + 8 && !memcmp(out + 8, data + 8, FZ_STATE_HEADER_V1 - 8) &&
                   !memcmp(out + FZ_STATE_HEADER, data + FZ_STATE_HEADER_V1,
                           size - FZ_STATE_HEADER_V1),
                   "a version 1 state saves as version 2 with the same fields and entries");
        uint8_t *again = NULL;
        size_t len2 = 0;
        FUZZ_CHECK(!sep_cache_restore(cache, out, len), "its version 2 restores: %s",
                   sep_errmsg());
        FUZZ_CHECK(!sep_cache_save(cache, &again, &len2) && len2 == len &&
                   !memcmp(again, out, len), "and saves as itself");
        free(again);
    }
    free(out);
    sep_cache_destroy(&cache);
}

static int fz_entry(const sep_store_sep_t *e, void *arg)
{
    FUZZ_CHECK(e->kv_dim >= 1 && e->kv_dim <= 65536 && e->pos >= 0, "entry fields");
    /* every byte of K and V is read (ASan: they lie within the entry) */
    uint8_t sum = 0;
    size_t es = e->dtype == SEP_ARCHIVE_F32 ? 4 : 2;
    for (size_t i = 0; i < (size_t)e->kv_dim * es; i++)
        sum += ((const uint8_t *)e->k)[i] + ((const uint8_t *)e->v)[i];
    *(volatile uint8_t *)arg = sum;
    return 0;
}

static void fz_import(const uint8_t *data, size_t size)
{
    sep_store_import_t *im = NULL;
    sep_store_session_t r;
    memset(&r, 0, sizeof r);
    FUZZ_CHECK(!sep_store_import_open(fz_store, "fz", &im), "import_open: %s", sep_errmsg());
    /* in two pieces, cut where the input says, as a socket would */
    size_t cut = size ? data[0] % (size + 1) : 0;
    int rc = sep_store_import_write(im, data, cut);
    if (!rc)
        rc = sep_store_import_write(im, data + cut, size - cut);
    if (!rc)
        rc = sep_store_import_finish(im, &r);
    sep_store_import_abort(&im);
    if (rc) {
        FUZZ_CHECK(sep_errmsg()[0], "a failed import names its cause");
        return;
    }
    for (uint32_t i = 0; i < r.n_stages; i++) {
        uint8_t *st = NULL;
        FUZZ_CHECK(!sep_store_read_state(fz_store, &r, (int)i, &st), "stage %u reads back: %s",
                   i, sep_errmsg());
        free(st);
    }
    uint8_t sum = 0;
    sep_store_archive_scan(fz_store, r.sid, 0, INT64_MAX, -1, fz_entry, &sum);
    FUZZ_CHECK(!sep_store_delete_session(fz_store, r.name, r.sid), "delete: %s", sep_errmsg());
    sep_store_session_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size)
        return 0;
    switch (data[0] % 3) {
    case 0: fz_record(data + 1, size - 1); break;
    case 1: fz_state(data + 1, size - 1); break;
    default: fz_import(data + 1, size - 1); break;
    }
    return 0;
}
