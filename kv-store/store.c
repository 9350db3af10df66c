/* store.c: sepd's sessions, snapshots and separator archive in LMDB.
 *
 * Every call runs its own transactions and leaves none open: a write that
 * hits MDB_MAP_FULL can then abort, grow the map (mdb_env_set_mapsize is
 * only legal with no transaction open in the process) and run again from
 * the start. Writes are functions of (store, txn, arg) run by store_write
 * for that reason: they must do nothing outside the transaction.
 */
#include "store.h"
#include "crc32c.h"
#include "err.h"

#include <errno.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "sepd stores little-endian floats; big-endian hosts are not supported"
#endif

#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)
#define PAGEHDRSZ 16           /* LMDB's page header: n overflow pages hold n * psize - 16 */
#define SNAP_KEY 10            /* sid | stage | block */
#define ARCH_KEY 14            /* sid | pos | layer */
#define BLOCK_HEAD 8           /* crc, payload length */
#define ARCH_HEAD 16           /* crc, id, kv_dim, dtype, 3 zero bytes */
#define REC_FRAME 16           /* magic, version, flags, body length ... crc */
#define REC_MAX (64 * MiB)     /* largest record encode writes and import accepts */
#define KV_DIM_MAX 65536
#define IN_BLOCK_MAX (16 * MiB) /* largest snapshot block payload an import accepts */
#define DEL_BLOCKS 512         /* blocks deleted per transaction (128 MiB with 4 KiB pages) */
#define DEL_ENTRIES 8192       /* archive entries deleted per transaction */
#define IMPORT_BATCH (8 * MiB) /* bytes an import buffers before it writes them */
#define SMALL_WRITE MiB        /* map room to ask for a write of records only */
#define EXP_HEAD 16
#define ITEM_HEAD 12
#define END_VALUE 28

/* store_write's own codes for LMDB's "the map is full" and "the
 * transaction is full": caught inside this file, never returned. */
#define E_MAPFULL (-1000)
#define E_TXNFULL (-1001)

struct sep_store {
    MDB_env *env;
    MDB_dbi meta, sessions, snaps, arch;
    char *dir, *path;          /* path: DIR/data.mdb, for messages */
    size_t map_max, psize, block_payload;
    int read_only;
    uint64_t orphan_blocks, orphan_entries, damaged;
};

/* ---- bytes -------------------------------------------------------------- */

static void be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static void be32(uint8_t *p, uint32_t v) { be16(p, v >> 16); be16(p + 2, (uint16_t)v); }
static void be64(uint8_t *p, uint64_t v) { be32(p, v >> 32); be32(p + 4, (uint32_t)v); }
static uint16_t get_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get_be32(const uint8_t *p) { return (uint32_t)get_be16(p) << 16 | get_be16(p + 2); }
static uint64_t get_be64(const uint8_t *p) { return (uint64_t)get_be32(p) << 32 | get_be32(p + 4); }
/* little-endian host (checked above): plain copies */
static void le16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void le32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static uint16_t get_le16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get_le32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_le64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void snap_key(uint8_t k[SNAP_KEY], uint32_t sid, uint32_t stage, uint32_t block)
{
    be32(k, sid);
    be16(k + 4, (uint16_t)stage);
    be32(k + 6, block);
}

static void arch_key(uint8_t k[ARCH_KEY], uint32_t sid, uint64_t pos, uint32_t layer)
{
    be32(k, sid);
    be64(k + 4, pos);
    be16(k + 12, (uint16_t)layer);
}

static MDB_val mval(const void *p, size_t n)
{
    MDB_val v = { n, (void *)p };
    return v;
}

/* Does key k start with the n bytes of prefix? */
static int has_prefix(const MDB_val *k, const uint8_t *prefix, size_t n)
{
    return k->mv_size >= n && memcmp(k->mv_data, prefix, n) == 0;
}

/* The CRC of a stored value: its key, then every byte after its own CRC. */
static uint32_t value_crc(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    return sep_crc32c(sep_crc32c(0, key, klen), val + 4, vlen - 4);
}

/* ---- errors and transactions ---------------------------------------------- */

/* An LMDB failure rc while doing what fmt says, as a sepd code and message. */
__attribute__((format(printf, 3, 4))) static int db_fail(const sep_store_t *st, int rc,
                                                         const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    int code;
    switch (rc) {
    case MDB_MAP_FULL: code = E_MAPFULL; break;
    case MDB_TXN_FULL: code = E_TXNFULL; break;
    case ENOSPC: case EDQUOT: case EFBIG: code = SEP_ENOSPC; break;
    case ENOMEM: code = SEP_ENOMEM; break;
    case MDB_CORRUPTED: case MDB_PAGE_NOTFOUND: case MDB_INVALID: case MDB_INCOMPATIBLE:
    case MDB_VERSION_MISMATCH: case MDB_BAD_VALSIZE: code = SEP_EFORMAT; break;
    default: code = SEP_EIO;
    }
    return sep_fail(code, "store %s: %s: %s", st->dir, what, mdb_strerror(rc));
}

static int txn_begin(sep_store_t *st, unsigned flags, MDB_txn **txn)
{
    int rc = mdb_txn_begin(st->env, NULL, flags, txn);
    if (rc == MDB_MAP_RESIZED) { /* another process grew the map: adopt its size */
        if (!(rc = mdb_env_set_mapsize(st->env, 0)))
            rc = mdb_txn_begin(st->env, NULL, flags, txn);
    }
    if (rc) {
        *txn = NULL;
        return db_fail(st, rc, "begin a transaction");
    }
    return SEP_OK;
}

static uint64_t file_size(const sep_store_t *st)
{
    int fd;
    struct stat sb;
    return mdb_env_get_fd(st->env, &fd) == 0 && fstat(fd, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* A commit failed with rc. LMDB reports a write cut short by a full disk
 * or by the file size limit as EIO, so EIO is taken as "no space" when the
 * disk or the limit has less room than the write needed. */
static int commit_fail(sep_store_t *st, int rc, size_t need)
{
    if (rc == EIO) {
        struct statvfs vfs;
        struct rlimit lim;
        if (statvfs(st->dir, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < need)
            return sep_fail(SEP_ENOSPC, "store %s: the disk is full: %llu bytes free, the "
                            "write needs about %zu", st->dir,
                            (unsigned long long)vfs.f_bavail * vfs.f_frsize, need);
        if (getrlimit(RLIMIT_FSIZE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY &&
            file_size(st) + need > lim.rlim_cur)
            return sep_fail(SEP_ENOSPC, "store %s: the file size limit of %llu bytes is "
                            "reached", st->dir, (unsigned long long)lim.rlim_cur);
    }
    return db_fail(st, rc, "commit");
}

/* Make the map big enough for a write of about need more bytes: twice as
 * big, or what is in use plus need, whichever is more, up to map_max. */
static int grow(sep_store_t *st, size_t need)
{
    MDB_envinfo info;
    int rc = mdb_env_info(st->env, &info);
    if (rc)
        return db_fail(st, rc, "read the map size");
    size_t cur = info.me_mapsize, used = (info.me_last_pgno + 1) * st->psize;
    if (cur >= st->map_max)
        return sep_fail(SEP_ENOSPC, "store %s: the map is full at its limit of %zu bytes "
                        "(map_max; %zu in use, the write needs about %zu more)", st->dir,
                        st->map_max, used, need);
    size_t want = used + need + need / 4 + SMALL_WRITE, size = cur * 2 > want ? cur * 2 : want;
    size = (size + st->psize - 1) / st->psize * st->psize;
    if (size > st->map_max)
        size = st->map_max;
    if ((rc = mdb_env_set_mapsize(st->env, size)))
        return db_fail(st, rc, "grow the map to %zu bytes", size);
    return SEP_OK;
}

typedef int (*txn_fn)(sep_store_t *st, MDB_txn *txn, void *arg);

/* Run fn in a write transaction and commit it. When the map fills, grow it
 * and run fn again from the start (the aborted transaction changed
 * nothing). need: about how many bytes of new pages the write takes, to
 * grow enough at once. E_TXNFULL is returned for the caller to split the
 * work; see store_write1. */
static int store_write(sep_store_t *st, size_t need, txn_fn fn, void *arg)
{
    if (st->read_only)
        return sep_fail(SEP_EINVAL, "store %s is open read-only", st->dir);
    for (;;) {
        MDB_txn *txn;
        int rc = txn_begin(st, 0, &txn);
        if (rc)
            return rc;
        if (!(rc = fn(st, txn, arg))) {
            int mrc = mdb_txn_commit(txn); /* ends the transaction, failed or not */
            if (!mrc)
                return SEP_OK;
            rc = commit_fail(st, mrc, need);
        } else {
            mdb_txn_abort(txn);
        }
        if (rc != E_MAPFULL)
            return rc;
        if ((rc = grow(st, need)))
            return rc;
    }
}

/* store_write for work that cannot be split: a full transaction is final. */
static int store_write1(sep_store_t *st, size_t need, txn_fn fn, void *arg, const char *what)
{
    int rc = store_write(st, need, fn, arg);
    if (rc == E_TXNFULL)
        return sep_fail(SEP_ERANGE, "store %s: %s: more than one LMDB transaction can hold",
                        st->dir, what);
    return rc;
}

/* Run fn in a read transaction. */
static int store_read(sep_store_t *st, txn_fn fn, void *arg)
{
    MDB_txn *txn;
    int rc = txn_begin(st, MDB_RDONLY, &txn);
    if (rc)
        return rc;
    rc = fn(st, txn, arg);
    mdb_txn_abort(txn);
    return rc;
}

static int cursor_open(sep_store_t *st, MDB_txn *txn, MDB_dbi dbi, MDB_cursor **cur)
{
    int rc = mdb_cursor_open(txn, dbi, cur);
    return rc ? db_fail(st, rc, "open a cursor") : SEP_OK;
}

/* Delete, from key `from` on, the keys that start with prefix (n bytes),
 * at most max of them; *deleted counts them. */
static int del_range(sep_store_t *st, MDB_txn *txn, MDB_dbi dbi, const uint8_t *from,
                     size_t from_len, const uint8_t *prefix, size_t n, size_t max,
                     size_t *deleted)
{
    MDB_cursor *cur;
    MDB_val k = mval(from, from_len), v;
    int rc = cursor_open(st, txn, dbi, &cur);
    if (rc)
        return rc;
    *deleted = 0;
    /* after mdb_cursor_del the cursor stands on the next key: MDB_NEXT gets it */
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); !rc && *deleted < max;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (!has_prefix(&k, prefix, n))
            break;
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
        ++*deleted;
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return db_fail(st, rc, "delete");
    return SEP_OK;
}

typedef struct {
    MDB_dbi dbi;
    uint8_t prefix[4];
    size_t max, deleted;
} del_t;

static int del_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    del_t *d = arg;
    return del_range(st, txn, d->dbi, d->prefix, 4, d->prefix, 4, d->max, &d->deleted);
}

/* Delete every key of sid in dbi, batch keys a transaction (fewer when a
 * transaction cannot hold that many); *count adds them up. */
static int delete_sid(sep_store_t *st, MDB_dbi dbi, uint32_t sid, size_t batch, uint64_t *count)
{
    del_t d = { .dbi = dbi, .max = batch };
    be32(d.prefix, sid);
    for (;;) {
        int rc = store_write(st, SMALL_WRITE, del_txn, &d);
        if (rc == E_TXNFULL && d.max > 1) {
            d.max /= 2;
            continue;
        }
        if (rc == E_TXNFULL)
            return sep_fail(SEP_ERANGE, "store %s: deleting sid %u: one delete fills a "
                            "transaction", st->dir, sid);
        if (rc)
            return rc;
        if (count)
            *count += d.deleted;
        if (d.deleted < d.max)
            return SEP_OK;
    }
}

/* Both the snapshot blocks and the archive entries of sid. */
static int delete_data(sep_store_t *st, uint32_t sid, uint64_t *blocks, uint64_t *entries)
{
    int rc = delete_sid(st, st->snaps, sid, DEL_BLOCKS, blocks);
    return rc ? rc : delete_sid(st, st->arch, sid, DEL_ENTRIES, entries);
}

/* ---- session records ------------------------------------------------------ */

enum {
    T_NAME = 1, T_SID, T_STATE, T_SETTINGS, T_SEPARATORS, T_SEP_IDS, T_ARCHIVE, T_MODEL_FP,
    T_PRECISION, T_STAGES, T_COUNTERS, T_REALS, T_HELD, T_TOK_AT, T_QUEUE, T_SAMPLER,
    T_OWNER, T_NLLS, T_PICK, T_RECENT, T_ACCESS, T_END
};
/* fields a record may leave out (a later addition: records without it read) */
#define TAGS_OPTIONAL (1u << T_NLLS)
/* fields version 2 added: a version 1 record has none of them */
#define TAGS_V2 (1u << T_PICK | 1u << T_RECENT)
/* fields version 3 added: records of versions 1 and 2 have none of them */
#define TAGS_V3 (1u << T_ACCESS)
static const char *tag_name[T_END] = {
    [T_NAME] = "name", [T_SID] = "sid", [T_STATE] = "state", [T_SETTINGS] = "settings",
    [T_SEPARATORS] = "separators", [T_SEP_IDS] = "sep_ids", [T_ARCHIVE] = "archive",
    [T_MODEL_FP] = "model_fp", [T_PRECISION] = "precision", [T_STAGES] = "stages",
    [T_COUNTERS] = "counters", [T_REALS] = "reals", [T_HELD] = "held", [T_TOK_AT] = "tok_at",
    [T_QUEUE] = "queue", [T_SAMPLER] = "sampler", [T_OWNER] = "owner", [T_NLLS] = "nlls",
    [T_PICK] = "pick", [T_RECENT] = "recent", [T_ACCESS] = "access",
};
/* exact length of each fixed-size field (0: variable) */
static const uint32_t tag_len[T_END] = {
    [T_SID] = 4, [T_STATE] = 4, [T_SETTINGS] = 24, [T_ARCHIVE] = 4, [T_MODEL_FP] = 32,
    [T_COUNTERS] = 64, [T_REALS] = 24, [T_TOK_AT] = 4, [T_SAMPLER] = 40, [T_PICK] = 24,
    [T_ACCESS] = 4,
};
#define STAGE_BYTES 16 /* layer0, layer1, state_len */

/* The values a record may hold, for encode (SEP_EINVAL) and decode
 * (SEP_EFORMAT) alike, so that nothing is written that cannot be read.
 * Returns NULL or what is wrong, in why. */
static const char *record_check(const sep_store_session_t *r, char why[160])
{
    char clip[64];
    if (!memchr(r->name, 0, sizeof r->name) || !sep_name_ok(r->name))
        snprintf(why, 160, "name '%s' is not a session name",
                 sep_clip(memchr(r->name, 0, sizeof r->name) ? r->name : "?", clip));
    else if (!r->sid)
        snprintf(why, 160, "sid 0");
    else if (r->state != SEP_STORE_ACTIVE && r->state != SEP_STORE_SUSPENDED)
        snprintf(why, 160, "state %u", r->state);
    else if (r->method < 0 || r->method > 2 || (r->shift != 0 && r->shift != 1))
        snprintf(why, 160, "method %d shift %d", r->method, r->shift);
    else if (r->archive > SEP_ARCHIVE_BF16)
        snprintf(why, 160, "archive %u", r->archive);
    else if (!memchr(r->precision, 0, sizeof r->precision))
        snprintf(why, 160, "precision is not terminated within %zu bytes", sizeof r->precision);
    else if (r->n_stages > SEP_STORE_MAX_STAGES)
        snprintf(why, 160, "%u stages (at most %d)", r->n_stages, SEP_STORE_MAX_STAGES);
    else if (r->n_nlls && (r->nll_at < 0 || r->nll_at + (int64_t)r->n_nlls > r->tokens))
        snprintf(why, 160, "NLLs of tokens %lld..%lld of %lld", (long long)r->nll_at,
                 (long long)(r->nll_at + (int64_t)r->n_nlls), (long long)r->tokens);
    else if (r->n_recent > SEP_STORE_MAX_RECENT || (int64_t)r->n_recent > r->ids_total)
        snprintf(why, 160, "%u recent ids of %lld (at most %d)", r->n_recent,
                 (long long)r->ids_total, SEP_STORE_MAX_RECENT);
    else if (r->access & ~(uint32_t)SEP_STORE_SHARED)
        snprintf(why, 160, "access flags 0x%x", r->access);
    else if (r->owner_len > sizeof r->owner)
        snprintf(why, 160, "owner of %u bytes (at most %zu)", r->owner_len, sizeof r->owner);
    else if ((r->n_sep_ids && !r->sep_ids) || (r->held_len && !r->held) ||
             (r->n_queue && !r->queue) || (r->n_nlls && !r->nlls) ||
             (r->n_recent && !r->recent))
        snprintf(why, 160, "a count without its array");
    else
        why[0] = 0;
    for (uint32_t i = 0; !why[0] && i < r->n_stages; i++)
        if (r->layer0[i] < 0 || r->layer1[i] < r->layer0[i])
            snprintf(why, 160, "stage %u: layers [%d, %d)", i, r->layer0[i], r->layer1[i]);
    for (uint32_t i = 1; !why[0] && i < r->n_sep_ids; i++)
        if (r->sep_ids[i] <= r->sep_ids[i - 1])
            snprintf(why, 160, "sep_ids not ascending at %u", i);
    return why[0] ? why : NULL;
}

/* A byte writer that only counts when p is NULL: encode runs it twice,
 * once to size the buffer and once to fill it, from the same code. */
typedef struct {
    uint8_t *p;
    size_t n;
} wbuf_t;

static void w_bytes(wbuf_t *w, const void *src, size_t n)
{
    if (w->p && n)
        memcpy(w->p + w->n, src, n);
    w->n += n;
}
static void w_u32(wbuf_t *w, uint32_t v) { w_bytes(w, &v, 4); }
static void w_u64(wbuf_t *w, uint64_t v) { w_bytes(w, &v, 8); }
static void w_tag(wbuf_t *w, uint16_t tag, size_t len)
{
    w_bytes(w, &tag, 2);
    w_u32(w, (uint32_t)len);
}
static void w_field(wbuf_t *w, uint16_t tag, const void *src, size_t len)
{
    w_tag(w, tag, len);
    w_bytes(w, src, len);
}

static void encode_body(wbuf_t *w, const sep_store_session_t *r)
{
    const char *seps = r->separators ? r->separators : "";
    w_field(w, T_NAME, r->name, strlen(r->name));
    w_field(w, T_SID, &r->sid, 4);
    w_field(w, T_STATE, &r->state, 4);
    const int32_t set[6] = { r->method, r->a, r->s, r->w, r->c, r->shift };
    w_field(w, T_SETTINGS, set, sizeof set);
    w_field(w, T_SEPARATORS, seps, strlen(seps));
    w_field(w, T_SEP_IDS, r->sep_ids, (size_t)r->n_sep_ids * 4);
    w_field(w, T_ARCHIVE, &r->archive, 4);
    w_field(w, T_MODEL_FP, r->model_fp, 32);
    w_field(w, T_PRECISION, r->precision, strlen(r->precision));
    w_tag(w, T_STAGES, (size_t)r->n_stages * STAGE_BYTES);
    for (uint32_t i = 0; i < r->n_stages; i++) {
        w_u32(w, (uint32_t)r->layer0[i]);
        w_u32(w, (uint32_t)r->layer1[i]);
        w_u64(w, r->state_len[i]);
    }
    const int64_t cnt[8] = { r->tokens, r->kv_sum, r->kv_max, r->kv_last, r->bytes_in,
                             r->bytes_tokenized, r->ids_total, r->checkpoints };
    w_field(w, T_COUNTERS, cnt, sizeof cnt);
    const double reals[3] = { r->nll_sum, r->created, r->saved };
    w_field(w, T_REALS, reals, sizeof reals); /* the doubles' own bytes */
    w_field(w, T_HELD, r->held, r->held_len);
    w_field(w, T_TOK_AT, &r->tok_at, 4);
    w_field(w, T_QUEUE, r->queue, (size_t)r->n_queue * 4);
    w_tag(w, T_SAMPLER, 40);
    w_bytes(w, r->rng, 32);
    w_bytes(w, &r->temperature, 4);
    w_bytes(w, &r->top_p, 4);
    w_field(w, T_OWNER, r->owner, r->owner_len);
    w_tag(w, T_PICK, 24);
    const float pf[4] = { r->min_p, r->repetition, r->presence, r->frequency };
    w_bytes(w, pf, sizeof pf);
    w_bytes(w, &r->top_k, 4);
    w_bytes(w, &r->penalty_window, 4);
    w_field(w, T_RECENT, r->recent, (size_t)r->n_recent * 4);
    w_field(w, T_ACCESS, &r->access, 4);
    if (r->n_nlls) {
        w_tag(w, T_NLLS, 8 + (size_t)r->n_nlls * 4);
        w_u64(w, (uint64_t)r->nll_at);
        w_bytes(w, r->nlls, (size_t)r->n_nlls * 4);
    }
}

int sep_store_session_encode(const sep_store_session_t *r, uint8_t **buf, size_t *len)
{
    char why[160];
    *buf = NULL;
    *len = 0;
    if (record_check(r, why))
        return sep_fail(SEP_EINVAL, "record: %s", why);
    size_t seps = r->separators ? strlen(r->separators) : 0;
    /* every field length must fit its uint32 and the record REC_MAX */
    if (seps > REC_MAX || r->held_len > REC_MAX || r->n_sep_ids > REC_MAX / 4 ||
        r->n_queue > REC_MAX / 4 || r->n_nlls > REC_MAX / 4)
        return sep_fail(SEP_ERANGE, "record of session '%s': more than %zu bytes", r->name,
                        REC_MAX);
    wbuf_t w = { 0 };
    encode_body(&w, r);
    size_t body = w.n, total = REC_FRAME + body;
    if (total > REC_MAX)
        return sep_fail(SEP_ERANGE, "record of session '%s': %zu bytes, more than %zu",
                        r->name, total, REC_MAX);
    uint8_t *b = malloc(total);
    if (!b)
        return sep_fail(SEP_ENOMEM, "record of session '%s': no memory for %zu bytes", r->name,
                        total);
    memcpy(b, "SEPS", 4);
    le16(b + 4, SEP_STORE_RECORD);
    le16(b + 6, 0);
    le32(b + 8, (uint32_t)body);
    w = (wbuf_t){ b + 12, 0 };
    encode_body(&w, r);
    le32(b + 12 + body, sep_crc32c(0, b, 12 + body));
    *buf = b;
    *len = total;
    return SEP_OK;
}

void sep_store_session_free(sep_store_session_t *r)
{
    if (!r)
        return;
    free(r->separators);
    free(r->sep_ids);
    free(r->held);
    free(r->queue);
    free(r->nlls);
    free(r->recent);
    r->separators = NULL, r->sep_ids = NULL, r->held = NULL, r->queue = NULL, r->nlls = NULL;
    r->recent = NULL;
}

/* A copy of n bytes (plus a NUL when text) into a new allocation: n was
 * checked against the input, so the input pays for it. */
static int dup_field(void **out, const uint8_t *v, uint32_t n, int text)
{
    if (!n && !text)
        return SEP_OK;
    uint8_t *p = malloc((size_t)n + (text != 0));
    if (!p)
        return sep_fail(SEP_ENOMEM, "record: no memory for %u bytes", n);
    memcpy(p, v, n);
    if (text)
        p[n] = 0;
    *out = p;
    return SEP_OK;
}

/* One field of known tag, n bytes at v, into r. */
static int decode_field(sep_store_session_t *r, unsigned tag, const uint8_t *v, uint32_t n)
{
    if (tag_len[tag] && n != tag_len[tag])
        return sep_fail(SEP_EFORMAT, "record: field %s is %u bytes, not %u", tag_name[tag], n,
                        tag_len[tag]);
    switch (tag) {
    case T_NAME:
    case T_PRECISION: {
        size_t cap = tag == T_NAME ? SEP_NAME_MAX : sizeof r->precision - 1;
        if (n > cap || memchr(v, 0, n))
            return sep_fail(SEP_EFORMAT, "record: field %s: %u bytes or a NUL (at most %zu)",
                            tag_name[tag], n, cap);
        memcpy(tag == T_NAME ? r->name : r->precision, v, n);
        return SEP_OK;
    }
    case T_SID: r->sid = get_le32(v); return SEP_OK;
    case T_STATE: r->state = get_le32(v); return SEP_OK;
    case T_SETTINGS: {
        int32_t *f[6] = { &r->method, &r->a, &r->s, &r->w, &r->c, &r->shift };
        for (int i = 0; i < 6; i++)
            *f[i] = (int32_t)get_le32(v + 4 * i);
        return SEP_OK;
    }
    case T_SEPARATORS:
        if (memchr(v, 0, n))
            return sep_fail(SEP_EFORMAT, "record: a NUL inside the separators");
        return dup_field((void **)&r->separators, v, n, 1);
    case T_SEP_IDS:
    case T_QUEUE:
    case T_RECENT: {
        if (n % 4)
            return sep_fail(SEP_EFORMAT, "record: field %s of %u bytes is not whole ids",
                            tag_name[tag], n);
        uint32_t *count = tag == T_QUEUE ? &r->n_queue : tag == T_RECENT ? &r->n_recent
                                                                          : &r->n_sep_ids;
        int32_t **ids = tag == T_QUEUE ? &r->queue : tag == T_RECENT ? &r->recent : &r->sep_ids;
        *count = n / 4;
        return dup_field((void **)ids, v, n, 0);
    }
    case T_PICK:
        memcpy(&r->min_p, v, 4);
        memcpy(&r->repetition, v + 4, 4);
        memcpy(&r->presence, v + 8, 4);
        memcpy(&r->frequency, v + 12, 4);
        r->top_k = (int32_t)get_le32(v + 16);
        r->penalty_window = (int32_t)get_le32(v + 20);
        return SEP_OK;
    case T_ARCHIVE: r->archive = get_le32(v); return SEP_OK;
    case T_ACCESS: r->access = get_le32(v); return SEP_OK;
    case T_MODEL_FP: memcpy(r->model_fp, v, 32); return SEP_OK;
    case T_STAGES:
        if (n % STAGE_BYTES || n / STAGE_BYTES > SEP_STORE_MAX_STAGES)
            return sep_fail(SEP_EFORMAT, "record: field stages of %u bytes is not 0..%d stages",
                            n, SEP_STORE_MAX_STAGES);
        r->n_stages = n / STAGE_BYTES;
        for (uint32_t i = 0; i < r->n_stages; i++, v += STAGE_BYTES) {
            r->layer0[i] = (int32_t)get_le32(v);
            r->layer1[i] = (int32_t)get_le32(v + 4);
            r->state_len[i] = get_le64(v + 8);
        }
        return SEP_OK;
    case T_COUNTERS: {
        int64_t *f[8] = { &r->tokens, &r->kv_sum, &r->kv_max, &r->kv_last, &r->bytes_in,
                          &r->bytes_tokenized, &r->ids_total, &r->checkpoints };
        for (int i = 0; i < 8; i++)
            *f[i] = (int64_t)get_le64(v + 8 * i);
        return SEP_OK;
    }
    case T_REALS:
        memcpy(&r->nll_sum, v, 8);
        memcpy(&r->created, v + 8, 8);
        memcpy(&r->saved, v + 16, 8);
        return SEP_OK;
    case T_HELD:
        r->held_len = n;
        return dup_field((void **)&r->held, v, n, 0);
    case T_TOK_AT: r->tok_at = (int32_t)get_le32(v); return SEP_OK;
    case T_SAMPLER:
        memcpy(r->rng, v, 32);
        memcpy(&r->temperature, v + 32, 4);
        memcpy(&r->top_p, v + 36, 4);
        return SEP_OK;
    case T_NLLS:
        if (n < 8 || (n - 8) % 4)
            return sep_fail(SEP_EFORMAT, "record: field nlls of %u bytes", n);
        r->nll_at = (int64_t)get_le64(v);
        r->n_nlls = (n - 8) / 4;
        return dup_field((void **)&r->nlls, v + 8, n - 8, 0);
    case T_OWNER:
        if (n > sizeof r->owner)
            return sep_fail(SEP_EFORMAT, "record: owner of %u bytes (at most %zu)", n,
                            sizeof r->owner);
        memcpy(r->owner, v, n);
        r->owner_len = n;
        return SEP_OK;
    }
    return SEP_OK;
}

int sep_store_session_decode(sep_store_session_t *r, const uint8_t *buf, size_t len)
{
    char why[160];
    int rc;
    memset(r, 0, sizeof *r);
    if (len < REC_FRAME)
        return sep_fail(SEP_EFORMAT, "record: %zu bytes, shorter than its %d-byte frame", len,
                        REC_FRAME);
    if (memcmp(buf, "SEPS", 4))
        return sep_fail(SEP_EFORMAT, "record: bad magic");
    uint32_t body = get_le32(buf + 8);
    if (body != len - REC_FRAME)
        return sep_fail(SEP_EFORMAT, "record: a body of %u bytes in %zu", body, len);
    if (get_le32(buf + len - 4) != sep_crc32c(0, buf, len - 4))
        return sep_fail(SEP_EFORMAT, "record: checksum mismatch");
    unsigned version = get_le16(buf + 4), flags = get_le16(buf + 6);
    if (version > SEP_STORE_RECORD)
        return sep_fail(SEP_EUNSUPPORTED, "record: version %u, made by a newer sepd (this one "
                        "reads 1 to %d)", version, SEP_STORE_RECORD);
    if (version == 0 || flags)
        return sep_fail(SEP_EFORMAT, "record: version %u flags %u", version, flags);
    const uint8_t *p = buf + 12, *end = p + body;
    uint32_t seen = 0;
    while (p < end) {
        size_t at = (size_t)(p - buf);
        if (end - p < 6) {
            rc = sep_fail(SEP_EFORMAT, "record: a field header cut at byte %zu", at);
            goto fail;
        }
        unsigned tag = get_le16(p);
        uint32_t n = get_le32(p + 2);
        p += 6;
        if (n > (size_t)(end - p)) {
            rc = sep_fail(SEP_EFORMAT, "record: field %u at byte %zu: %u bytes, %zu left", tag,
                          at, n, (size_t)(end - p));
            goto fail;
        }
        /* unknown tags: a later version's fields, skipped */
        if (tag >= 1 && tag < T_END) {
            if (seen & (1u << tag)) {
                rc = sep_fail(SEP_EFORMAT, "record: field %s twice", tag_name[tag]);
                goto fail;
            }
            seen |= 1u << tag;
            if ((rc = decode_field(r, tag, p, n)))
                goto fail;
        }
        p += n;
    }
    if (version == 1 && !(seen & TAGS_V2)) {
        /* before version 2: the penalties off, nothing recent */
        r->repetition = 1;
        r->penalty_window = 64;
        seen |= TAGS_V2;
    }
    if (version < 3 && !(seen & TAGS_V3))
        seen |= TAGS_V3; /* before version 3: not shared */
    for (unsigned tag = 1; tag < T_END; tag++)
        if (!(seen & (1u << tag)) && !(TAGS_OPTIONAL & (1u << tag))) {
            rc = sep_fail(SEP_EFORMAT, "record: field %s missing", tag_name[tag]);
            goto fail;
        }
    if (record_check(r, why)) {
        rc = sep_fail(SEP_EFORMAT, "record: %s", why);
        goto fail;
    }
    return SEP_OK;
fail:
    sep_store_session_free(r);
    memset(r, 0, sizeof *r);
    return rc;
}

/* Decode the record stored under key k (value v) into r; its name must be
 * its key. Failures say "session 'NAME': ...". */
static int decode_stored(const MDB_val *k, const MDB_val *v, sep_store_session_t *r)
{
    char name[SEP_NAME_MAX + 1], clip[64];
    size_t n = k->mv_size < SEP_NAME_MAX ? k->mv_size : SEP_NAME_MAX;
    /* the key as a printable name: the messages and damaged entries show it */
    for (size_t i = 0; i < n; i++) {
        uint8_t c = ((const uint8_t *)k->mv_data)[i];
        name[i] = c < 0x20 || c >= 0x7f ? '?' : (char)c;
    }
    name[n] = 0;
    int rc = sep_store_session_decode(r, v->mv_data, v->mv_size);
    if (rc == SEP_OK &&
        (k->mv_size != strlen(r->name) || memcmp(k->mv_data, r->name, k->mv_size))) {
        sep_store_session_free(r);
        memset(r, 0, sizeof *r);
        rc = sep_fail(SEP_EFORMAT, "record: its name is not its key");
    }
    if (rc == SEP_ENOMEM || rc == SEP_OK)
        return rc;
    char msg[256];
    snprintf(msg, sizeof msg, "session '%s': %s", sep_clip(name, clip), sep_errmsg());
    memcpy(r->name, name, n + 1);
    r->damaged = 1;
    snprintf(r->damage, sizeof r->damage, "%s", msg);
    return sep_fail(rc, "%s", msg);
}

typedef struct {
    const char *name;
    sep_store_session_t *r;
    int found;
} get_t;

static int get_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    get_t *g = arg;
    MDB_val k = mval(g->name, strlen(g->name)), v;
    int rc = mdb_get(txn, st->sessions, &k, &v);
    if (rc == MDB_NOTFOUND)
        return SEP_OK;
    if (rc)
        return db_fail(st, rc, "read session '%s'", g->name);
    g->found = 1;
    return decode_stored(&k, &v, g->r);
}

int sep_store_get_session(sep_store_t *st, const char *name, sep_store_session_t *out)
{
    memset(out, 0, sizeof *out);
    if (!sep_name_ok(name))
        return sep_fail(SEP_EINVAL, "'%s' is not a session name", name);
    get_t g = { name, out, 0 };
    int rc = store_read(st, get_txn, &g);
    if (rc) {
        sep_store_session_free(out);
        memset(out, 0, sizeof *out);
        return rc;
    }
    if (!g.found)
        return sep_fail(SEP_ENOTFOUND, "session '%s' not found", name);
    return SEP_OK;
}

typedef struct {
    sep_store_session_t *list;
    size_t n;
} list_t;

static int list_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    list_t *l = arg;
    MDB_stat ms;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_stat(txn, st->sessions, &ms);
    if (rc)
        return db_fail(st, rc, "count the sessions");
    if (!ms.ms_entries)
        return SEP_OK;
    if (!(l->list = calloc(ms.ms_entries, sizeof *l->list)))
        return sep_fail(SEP_ENOMEM, "sessions: no memory for %zu records", ms.ms_entries);
    if ((rc = cursor_open(st, txn, st->sessions, &cur)))
        return rc;
    for (int mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); !mrc && l->n < ms.ms_entries;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        /* a damaged record becomes an entry that says so */
        if ((rc = decode_stored(&k, &v, &l->list[l->n++])) == SEP_ENOMEM)
            break;
        rc = SEP_OK;
    }
    mdb_cursor_close(cur);
    return rc;
}

int sep_store_sessions(sep_store_t *st, sep_store_session_t **out, size_t *n)
{
    list_t l = { 0 };
    int rc = store_read(st, list_txn, &l);
    if (rc)
        sep_store_sessions_free(&l.list, l.n);
    *out = l.list;
    *n = rc ? 0 : l.n;
    return rc;
}

void sep_store_sessions_free(sep_store_session_t **list, size_t n)
{
    if (!list || !*list)
        return;
    for (size_t i = 0; i < n; i++)
        sep_store_session_free(&(*list)[i]);
    free(*list);
    *list = NULL;
}

/* In txn: the record now under r->name, if it decodes, must be of r->sid:
 * writing over another sid would leave that one's data to the sweep. */
static int check_owner(sep_store_t *st, MDB_txn *txn, const sep_store_session_t *r)
{
    sep_store_session_t old = { 0 };
    get_t g = { r->name, &old, 0 };
    int rc = get_txn(st, txn, &g);
    if (rc == SEP_ENOMEM || (rc && rc != SEP_EFORMAT && rc != SEP_EUNSUPPORTED))
        return rc;
    uint32_t sid = rc ? r->sid : old.sid; /* a damaged record is replaced */
    sep_store_session_free(&old);
    if (g.found && sid != r->sid)
        return sep_fail(SEP_EINVAL, "session '%s' is sid %u in the store, not %u", r->name, sid,
                        r->sid);
    /* a sid that alloc_sid did not hand out would be handed out later,
     * to another session that would then share its data */
    MDB_val k = mval("next_sid", 8), v;
    if ((rc = mdb_get(txn, st->meta, &k, &v)))
        return db_fail(st, rc, "read next_sid");
    if (v.mv_size != 4 || r->sid >= get_le32(v.mv_data))
        return sep_fail(SEP_EINVAL, "session '%s': sid %u was never allocated", r->name, r->sid);
    return SEP_OK;
}

typedef struct {
    const sep_store_session_t *r;
    const uint8_t *rec;
    size_t rec_len;
    const sep_store_blob_t *states;
    int n_states;
} put_t;

static int put_record(sep_store_t *st, MDB_txn *txn, const put_t *p)
{
    MDB_val k = mval(p->r->name, strlen(p->r->name)), v = mval(p->rec, p->rec_len);
    int rc = mdb_put(txn, st->sessions, &k, &v, 0);
    return rc ? db_fail(st, rc, "write session '%s'", p->r->name) : SEP_OK;
}

static int put_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    const put_t *p = arg;
    int rc = check_owner(st, txn, p->r);
    return rc ? rc : put_record(st, txn, p);
}

int sep_store_put_session(sep_store_t *st, const sep_store_session_t *r)
{
    put_t p = { .r = r };
    int rc = sep_store_session_encode(r, (uint8_t **)&p.rec, &p.rec_len);
    if (!rc)
        rc = store_write1(st, SMALL_WRITE + p.rec_len, put_txn, &p, "session record");
    free((void *)p.rec);
    return rc;
}

typedef struct {
    const char *name;
    uint32_t sid;   /* in: 0 or the caller's; out: the sid whose data goes */
    int found;
} delrec_t;

static int delrec_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    delrec_t *d = arg;
    sep_store_session_t old = { 0 };
    get_t g = { d->name, &old, 0 };
    int rc = get_txn(st, txn, &g);
    if (rc == SEP_ENOMEM || (rc && rc != SEP_EFORMAT && rc != SEP_EUNSUPPORTED))
        return rc;
    if (!rc && g.found) {
        uint32_t sid = old.sid;
        sep_store_session_free(&old);
        if (d->sid && sid != d->sid)
            return sep_fail(SEP_EINVAL, "session '%s' is sid %u in the store, not %u", d->name,
                            sid, d->sid);
        d->sid = sid;
    }
    d->found = g.found;
    MDB_val k = mval(d->name, strlen(d->name));
    if (g.found && (rc = mdb_del(txn, st->sessions, &k, NULL)))
        return db_fail(st, rc, "delete session '%s'", d->name);
    return SEP_OK;
}

int sep_store_delete_session(sep_store_t *st, const char *name, uint32_t sid)
{
    if (!sep_name_ok(name))
        return sep_fail(SEP_EINVAL, "'%s' is not a session name", name);
    delrec_t d = { name, sid, 0 };
    int rc = store_write1(st, SMALL_WRITE, delrec_txn, &d, "delete a record");
    if (!rc && d.sid)
        rc = delete_data(st, d.sid, NULL, NULL);
    return rc;
}

/* ---- snapshots -------------------------------------------------------------- */

static uint32_t block_count(const sep_store_t *st, uint64_t len)
{
    return len ? (uint32_t)((len - 1) / st->block_payload + 1) : 0;
}

/* Write stage's state (len bytes at data) as blocks of session r. */
static int write_blocks(sep_store_t *st, MDB_txn *txn, const sep_store_session_t *r,
                        uint32_t stage, const uint8_t *data, uint64_t len)
{
    uint32_t nb = block_count(st, len);
    for (uint32_t b = 0; b < nb; b++) {
        uint8_t key[SNAP_KEY];
        size_t off = (size_t)b * st->block_payload;
        uint32_t plen = (uint32_t)(len - off < st->block_payload ? len - off : st->block_payload);
        snap_key(key, r->sid, stage, b);
        MDB_val k = mval(key, SNAP_KEY), v = mval(NULL, BLOCK_HEAD + plen);
        /* MDB_RESERVE: LMDB makes room in its page and we copy into it */
        int rc = mdb_put(txn, st->snaps, &k, &v, MDB_RESERVE);
        if (rc)
            return db_fail(st, rc, "session '%s' stage %u block %u", r->name, stage, b);
        uint8_t *p = v.mv_data;
        le32(p + 4, plen);
        uint32_t crc = sep_crc32c(sep_crc32c(0, key, SNAP_KEY), p + 4, 4);
        le32(p, sep_crc32c_copy(p + BLOCK_HEAD, data + off, plen, crc));
    }
    return SEP_OK;
}

static int ckpt_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    const put_t *c = arg;
    const sep_store_session_t *r = c->r;
    uint8_t from[SNAP_KEY], prefix[6];
    size_t gone;
    int rc = check_owner(st, txn, r);
    for (int s = 0; !rc && s < c->n_states; s++)
        rc = write_blocks(st, txn, r, (uint32_t)s, c->states[s].data, c->states[s].len);
    /* what the last checkpoint had beyond the new counts: the tails of
     * stages that shrank, then whole stages that went away */
    for (int s = 0; !rc && s <= c->n_states; s++) {
        int past = s == c->n_states;
        snap_key(from, r->sid, (uint32_t)s, past ? 0 : block_count(st, c->states[s].len));
        memcpy(prefix, from, 6);
        rc = del_range(st, txn, st->snaps, from, SNAP_KEY, prefix, past ? 4 : 6, SIZE_MAX, &gone);
    }
    return rc ? rc : put_record(st, txn, c);
}

int sep_store_checkpoint(sep_store_t *st, const sep_store_session_t *r,
                         const sep_store_blob_t *states, int n_states)
{
    if (n_states < 0 || n_states > SEP_STORE_MAX_STAGES || (uint32_t)n_states != r->n_stages)
        return sep_fail(SEP_EINVAL, "checkpoint of session '%s': %d states for a record of %u "
                        "stages", r->name, n_states, r->n_stages);
    size_t need = SMALL_WRITE;
    for (int s = 0; s < n_states; s++) {
        if (states[s].len != r->state_len[s] || (states[s].len && !states[s].data))
            return sep_fail(SEP_EINVAL, "checkpoint of session '%s' stage %d: a state of %zu "
                            "bytes, the record says %llu", r->name, s, states[s].len,
                            (unsigned long long)r->state_len[s]);
        need += (size_t)block_count(st, states[s].len) * SEP_STORE_BLOCK_PAGES * st->psize;
    }
    put_t c = { .r = r, .states = states, .n_states = n_states };
    int rc = sep_store_session_encode(r, (uint8_t **)&c.rec, &c.rec_len);
    if (!rc)
        rc = store_write1(st, need + c.rec_len, ckpt_txn, &c, "checkpoint");
    free((void *)c.rec);
    return rc;
}

/* The frame of a block value v of want payload bytes (SIZE_MAX: any):
 * NULL or what is wrong, in why. */
static const char *block_frame(const MDB_val *v, uint64_t want, char why[96])
{
    const uint8_t *p = v->mv_data;
    if (v->mv_size < BLOCK_HEAD || get_le32(p + 4) != v->mv_size - BLOCK_HEAD)
        snprintf(why, 96, "truncated (a value of %zu bytes)", v->mv_size);
    else if (want != SIZE_MAX && v->mv_size - BLOCK_HEAD != want)
        snprintf(why, 96, "%s (%zu bytes, expected %llu)",
                 v->mv_size - BLOCK_HEAD < want ? "truncated" : "too long",
                 v->mv_size - BLOCK_HEAD, (unsigned long long)want);
    else
        return NULL;
    return why;
}

typedef struct {
    const sep_store_session_t *r;
    uint32_t stage;
    uint8_t *out;
} read_t;

static int read_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    read_t *rd = arg;
    const sep_store_session_t *r = rd->r;
    uint64_t len = r->state_len[rd->stage];
    uint32_t nb = block_count(st, len), b = 0;
    uint8_t key[SNAP_KEY];
    char why[96];
    MDB_cursor *cur;
    MDB_val k, v;
    snap_key(key, r->sid, rd->stage, 0);
    k = mval(key, SNAP_KEY);
    int rc = cursor_open(st, txn, st->snaps, &cur), mrc;
    if (rc)
        return rc;
    for (; !rc; b++) {
        if ((mrc = mdb_cursor_get(cur, &k, &v, b ? MDB_NEXT : MDB_SET_RANGE)) &&
            mrc != MDB_NOTFOUND) {
            rc = db_fail(st, mrc, "session '%s' stage %u block %u", r->name, rd->stage, b);
            break;
        }
        int ours = !mrc && has_prefix(&k, key, 6); /* of this sid and stage */
        if (b == nb) {
            if (ours)
                rc = sep_fail(SEP_EFORMAT, "session '%s' stage %u block %u: past the end of "
                              "the %llu-byte state", r->name, rd->stage,
                              k.mv_size == SNAP_KEY ? get_be32((uint8_t *)k.mv_data + 6) : b,
                              (unsigned long long)len);
            break;
        }
        if (!ours || k.mv_size != SNAP_KEY || get_be32((uint8_t *)k.mv_data + 6) != b) {
            rc = sep_fail(SEP_EFORMAT, "session '%s' stage %u: block %u of %u missing", r->name,
                          rd->stage, b, nb);
            break;
        }
        size_t off = (size_t)b * st->block_payload;
        uint64_t want = len - off < st->block_payload ? len - off : st->block_payload;
        const uint8_t *p = v.mv_data;
        if (block_frame(&v, want, why)) {
            rc = sep_fail(SEP_EFORMAT, "session '%s' stage %u block %u of %u: %s", r->name,
                          rd->stage, b, nb, why);
            break;
        }
        uint32_t crc = sep_crc32c(sep_crc32c(0, k.mv_data, SNAP_KEY), p + 4, 4);
        if (sep_crc32c_copy(rd->out + off, p + BLOCK_HEAD, want, crc) != get_le32(p))
            rc = sep_fail(SEP_EFORMAT, "session '%s' stage %u block %u: checksum mismatch",
                          r->name, rd->stage, b);
    }
    mdb_cursor_close(cur);
    return rc;
}

int sep_store_read_state(sep_store_t *st, const sep_store_session_t *r, int stage,
                         uint8_t **buf)
{
    *buf = NULL;
    if (stage < 0 || (uint32_t)stage >= r->n_stages)
        return sep_fail(SEP_EINVAL, "session '%s': no stage %d (%u stages)", r->name, stage,
                        r->n_stages);
    uint64_t len = r->state_len[stage];
    if (len > SIZE_MAX / 2 || len / st->block_payload >= UINT32_MAX)
        return sep_fail(SEP_ERANGE, "session '%s' stage %d: a state of %llu bytes", r->name,
                        stage, (unsigned long long)len);
    read_t rd = { r, (uint32_t)stage, malloc(len ? len : 1) };
    if (!rd.out)
        return sep_fail(SEP_ENOMEM, "session '%s' stage %d: no memory for %llu bytes", r->name,
                        stage, (unsigned long long)len);
    int rc = store_read(st, read_txn, &rd);
    if (rc) {
        free(rd.out);
        return rc;
    }
    *buf = rd.out;
    return SEP_OK;
}

/* ---- the separator archive ------------------------------------------------- */

static size_t dtype_size(uint32_t dtype)
{
    return dtype == SEP_ARCHIVE_F32 ? 4 : dtype == SEP_ARCHIVE_BF16 ? 2 : 0;
}

/* An archive value v under key (14 bytes) into e: NULL or what is wrong. */
static const char *arch_check(const uint8_t *key, const MDB_val *v, sep_store_sep_t *e,
                              char why[96])
{
    const uint8_t *p = v->mv_data;
    if (v->mv_size < ARCH_HEAD) {
        snprintf(why, 96, "truncated (%zu bytes)", v->mv_size);
        return why;
    }
    uint32_t dim = get_le32(p + 8), dtype = p[12];
    size_t es = dtype_size(dtype);
    if (!es || p[13] || p[14] || p[15])
        snprintf(why, 96, "dtype %u or its padding", dtype);
    else if (!dim || dim > KV_DIM_MAX)
        snprintf(why, 96, "kv_dim %u", dim);
    else if (v->mv_size != ARCH_HEAD + 2 * dim * es)
        snprintf(why, 96, "%zu bytes, K and V of %u elements take %zu", v->mv_size, dim,
                 ARCH_HEAD + 2 * dim * es);
    else if (value_crc(key, ARCH_KEY, p, v->mv_size) != get_le32(p))
        snprintf(why, 96, "checksum mismatch");
    else
        why[0] = 0;
    if (why[0])
        return why;
    if (e) {
        e->pos = (int64_t)get_be64(key + 4);
        e->layer = get_be16(key + 12);
        e->id = (int32_t)get_le32(p + 4);
        e->kv_dim = (int32_t)dim;
        e->dtype = (int32_t)dtype;
        e->k = p + ARCH_HEAD;
        e->v = p + ARCH_HEAD + dim * es;
    }
    return NULL;
}

/* Can puts into dbi from key first on use MDB_APPEND (first above every
 * key there)? */
static int can_append(sep_store_t *st, MDB_cursor *cur, const uint8_t *first, size_t n, int *ok)
{
    MDB_val k, v;
    int rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    if (rc && rc != MDB_NOTFOUND)
        return db_fail(st, rc, "find the last key");
    size_t m = rc ? 0 : k.mv_size < n ? k.mv_size : n;
    int c = m ? memcmp(k.mv_data, first, m) : -1;
    *ok = rc == MDB_NOTFOUND || c < 0 || (c == 0 && k.mv_size < n);
    return SEP_OK;
}

typedef struct {
    uint32_t sid;
    const sep_store_sep_t *e;
    size_t n;
    int ascending; /* keys strictly ascending: MDB_APPEND can take them */
} aput_t;

static int aput_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    const aput_t *a = arg;
    uint8_t key[ARCH_KEY];
    MDB_cursor *cur;
    int append, rc = cursor_open(st, txn, st->arch, &cur);
    if (rc)
        return rc;
    arch_key(key, a->sid, (uint64_t)a->e[0].pos, (uint32_t)a->e[0].layer);
    if ((rc = can_append(st, cur, key, ARCH_KEY, &append)))
        goto done;
    append &= a->ascending;
    for (size_t i = 0; i < a->n; i++) {
        const sep_store_sep_t *e = &a->e[i];
        size_t row = (size_t)e->kv_dim * dtype_size((uint32_t)e->dtype);
        arch_key(key, a->sid, (uint64_t)e->pos, (uint32_t)e->layer);
        MDB_val k = mval(key, ARCH_KEY), v = mval(NULL, ARCH_HEAD + 2 * row);
        int mrc = mdb_cursor_put(cur, &k, &v, MDB_RESERVE | (append ? MDB_APPEND : 0));
        if (mrc) {
            rc = db_fail(st, mrc, "archive sid %u pos %lld layer %d", a->sid,
                         (long long)e->pos, e->layer);
            goto done;
        }
        uint8_t *p = v.mv_data;
        le32(p + 4, (uint32_t)e->id);
        le32(p + 8, (uint32_t)e->kv_dim);
        p[12] = (uint8_t)e->dtype;
        p[13] = p[14] = p[15] = 0;
        uint32_t crc = sep_crc32c(sep_crc32c(0, key, ARCH_KEY), p + 4, ARCH_HEAD - 4);
        crc = sep_crc32c_copy(p + ARCH_HEAD, e->k, row, crc);
        le32(p, sep_crc32c_copy(p + ARCH_HEAD + row, e->v, row, crc));
    }
done:
    mdb_cursor_close(cur);
    return rc;
}

/* One batch in one transaction; halves of it when it does not fit. */
static int archive_put(sep_store_t *st, uint32_t sid, const sep_store_sep_t *e, size_t n,
                       size_t need, int ascending)
{
    aput_t a = { sid, e, n, ascending };
    int rc = store_write(st, need, aput_txn, &a);
    if (rc != E_TXNFULL)
        return rc;
    if (n == 1)
        return sep_fail(SEP_ERANGE, "archive sid %u pos %lld layer %d: one entry fills a "
                        "transaction", sid, (long long)e->pos, e->layer);
    if ((rc = archive_put(st, sid, e, n / 2, need / 2, ascending)))
        return rc;
    return archive_put(st, sid, e + n / 2, n - n / 2, need / 2, ascending);
}

int sep_store_archive_put(sep_store_t *st, uint32_t sid, const sep_store_sep_t *e, size_t n)
{
    size_t need = SMALL_WRITE;
    int ascending = 1;
    if (!sid)
        return sep_fail(SEP_EINVAL, "archive: sid 0");
    for (size_t i = 0; i < n; i++) {
        const sep_store_sep_t *x = &e[i];
        if (x->pos < 0 || x->layer < 0 || x->layer > 65535 || x->kv_dim < 1 ||
            x->kv_dim > KV_DIM_MAX || !dtype_size((uint32_t)x->dtype) || !x->k || !x->v)
            return sep_fail(SEP_EINVAL, "archive sid %u entry %zu: pos %lld layer %d kv_dim %d "
                            "dtype %d", sid, i, (long long)x->pos, x->layer, x->kv_dim,
                            x->dtype);
        /* leaf pages fill to half in the worst case */
        need += 2 * (ARCH_HEAD + 2 * (size_t)x->kv_dim * dtype_size((uint32_t)x->dtype) +
                     ARCH_KEY + 8);
        if (i && (x->pos < x[-1].pos || (x->pos == x[-1].pos && x->layer <= x[-1].layer)))
            ascending = 0;
    }
    return n ? archive_put(st, sid, e, n, need, ascending) : SEP_OK;
}

typedef struct {
    uint32_t sid;
    uint64_t from, to;
    int layer;
    int (*fn)(const sep_store_sep_t *e, void *arg);
    void *arg;
    uint64_t count;
} scan_t;

/* The next entry of the scan's range into k, v (first: seek its start),
 * skipping other layers by seeking; MDB_NOTFOUND past the range. */
static int scan_next(MDB_cursor *cur, const scan_t *q, MDB_val *k, MDB_val *v, int first)
{
    uint8_t key[ARCH_KEY];
    arch_key(key, q->sid, q->from, q->layer < 0 ? 0 : (uint32_t)q->layer);
    *k = mval(key, ARCH_KEY);
    int rc = mdb_cursor_get(cur, k, v, first ? MDB_SET_RANGE : MDB_NEXT);
    for (; !rc; rc = mdb_cursor_get(cur, k, v, MDB_SET_RANGE)) {
        const uint8_t *p = k->mv_data;
        if (k->mv_size < 4 || get_be32(p) != q->sid)
            return MDB_NOTFOUND;
        if (k->mv_size != ARCH_KEY)
            return MDB_BAD_VALSIZE; /* not an archive key: the caller names it */
        uint64_t pos = get_be64(p + 4);
        int layer = get_be16(p + 12);
        if (pos >= q->to)
            return MDB_NOTFOUND;
        if (q->layer < 0 || layer == q->layer)
            return 0;
        /* another layer: on to this position's layer, or the next position's */
        arch_key(key, q->sid, layer < q->layer ? pos : pos + 1, (uint32_t)q->layer);
        *k = mval(key, ARCH_KEY);
    }
    return rc;
}

static int scan_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    scan_t *q = arg;
    MDB_cursor *cur;
    MDB_val k, v;
    char why[96];
    int rc = cursor_open(st, txn, st->arch, &cur), mrc = 0;
    if (rc)
        return rc;
    for (int first = 1; !rc && !(mrc = scan_next(cur, q, &k, &v, first)); first = 0) {
        sep_store_sep_t e;
        if (!q->fn) {
            q->count++;
        } else if (arch_check(k.mv_data, &v, &e, why)) {
            const uint8_t *p = k.mv_data;
            rc = sep_fail(SEP_EFORMAT, "archive sid %u pos %llu layer %u: %s", q->sid,
                          (unsigned long long)get_be64(p + 4), get_be16(p + 12), why);
        } else {
            rc = q->fn(&e, q->arg);
        }
    }
    if (!rc && mrc == MDB_BAD_VALSIZE)
        rc = sep_fail(SEP_EFORMAT, "archive sid %u: a key of %zu bytes", q->sid, k.mv_size);
    else if (!rc && mrc != MDB_NOTFOUND)
        rc = db_fail(st, mrc, "archive sid %u", q->sid);
    mdb_cursor_close(cur);
    return rc;
}

static int archive_walk(sep_store_t *st, scan_t *q, int64_t from, int64_t to)
{
    if (q->layer < -1 || q->layer > 65535)
        return sep_fail(SEP_EINVAL, "archive sid %u: layer %d", q->sid, q->layer);
    q->from = from < 0 ? 0 : (uint64_t)from;
    q->to = to < 0 ? 0 : (uint64_t)to;
    return q->from < q->to ? store_read(st, scan_txn, q) : SEP_OK;
}

int sep_store_archive_scan(sep_store_t *st, uint32_t sid, int64_t from, int64_t to, int layer,
                           int (*fn)(const sep_store_sep_t *e, void *arg), void *arg)
{
    if (!fn)
        return sep_fail(SEP_EINVAL, "archive scan: no function");
    scan_t q = { .sid = sid, .layer = layer, .fn = fn, .arg = arg };
    return archive_walk(st, &q, from, to);
}

int sep_store_archive_count(sep_store_t *st, uint32_t sid, int64_t from, int64_t to, int layer,
                            uint64_t *n)
{
    scan_t q = { .sid = sid, .layer = layer };
    int rc = archive_walk(st, &q, from, to);
    *n = rc ? 0 : q.count;
    return rc;
}

/* ---- export ------------------------------------------------------------------ */

enum { IT_RECORD = 1, IT_BLOCK = 2, IT_ENTRY = 3, IT_END = 0xFF };
enum { PH_HEAD, PH_BLOCKS, PH_ENTRIES, PH_END, PH_DONE };
static const char *item_name(unsigned type)
{
    return type == IT_RECORD ? "session record" : type == IT_BLOCK ? "snapshot block" :
           type == IT_ENTRY ? "archive entry" : type == IT_END ? "end" : "unknown";
}

struct sep_store_export {
    sep_store_t *st;
    char name[SEP_NAME_MAX + 1];
    uint32_t sid;
    size_t rec_len;           /* the record as it was at open: a change fails the export */
    uint32_t rec_crc;
    int phase;
    uint8_t last[ARCH_KEY];   /* the last key emitted in this phase */
    int have_last;
    uint8_t *pend;            /* bytes made but not yet read */
    size_t pend_len, pend_off, pend_cap;
    uint32_t crc;             /* of the stream so far */
    uint64_t n_items[3];      /* records, blocks, entries */
    int rc;                   /* a failure is final: rc and its message */
    char why[256];
};

/* Out buffer of one read: the caller's, then the export's own for the rest
 * of the item that did not fit. */
typedef struct {
    uint8_t *buf;
    size_t cap, n;
} out_t;

static int ex_emit(sep_store_export_t *ex, out_t *o, const void *src, size_t len)
{
    size_t k = len < o->cap - o->n ? len : o->cap - o->n;
    ex->crc = sep_crc32c_copy(o->buf + o->n, src, k, ex->crc);
    o->n += k;
    if (k == len)
        return SEP_OK;
    size_t need = ex->pend_len + len - k;
    if (need > ex->pend_cap) {
        uint8_t *p = realloc(ex->pend, need);
        if (!p)
            return sep_fail(SEP_ENOMEM, "export of session '%s': no memory for %zu bytes",
                            ex->name, need);
        ex->pend = p;
        ex->pend_cap = need;
    }
    ex->crc = sep_crc32c_copy(ex->pend + ex->pend_len, (const uint8_t *)src + k, len - k, ex->crc);
    ex->pend_len = need;
    return SEP_OK;
}

static int ex_item(sep_store_export_t *ex, out_t *o, unsigned type, const MDB_val *k,
                   const MDB_val *v)
{
    uint8_t head[ITEM_HEAD] = { (uint8_t)type };
    le32(head + 4, (uint32_t)k->mv_size);
    le32(head + 8, (uint32_t)v->mv_size);
    int rc = ex_emit(ex, o, head, ITEM_HEAD);
    if (!rc)
        rc = ex_emit(ex, o, k->mv_data, k->mv_size);
    if (!rc)
        rc = ex_emit(ex, o, v->mv_data, v->mv_size);
    return rc;
}

static int ex_record(sep_store_t *st, MDB_txn *txn, sep_store_export_t *ex, MDB_val *v)
{
    MDB_val k = mval(ex->name, strlen(ex->name));
    int rc = mdb_get(txn, st->sessions, &k, v);
    if (rc && rc != MDB_NOTFOUND)
        return db_fail(st, rc, "export of session '%s'", ex->name);
    if (rc || v->mv_size != ex->rec_len || get_le32((uint8_t *)v->mv_data + v->mv_size - 4) !=
        ex->rec_crc)
        return sep_fail(SEP_EINVAL, "export of session '%s': the session changed during the "
                        "export", ex->name);
    return SEP_OK;
}

/* Emit the blocks or entries of the export's sid from where the last read
 * stopped, until the caller's buffer is full or the database has no more. */
static int ex_scan(sep_store_t *st, MDB_txn *txn, sep_store_export_t *ex, out_t *o)
{
    int blocks = ex->phase == PH_BLOCKS;
    size_t klen = blocks ? SNAP_KEY : ARCH_KEY;
    uint8_t prefix[4];
    char why[96];
    MDB_cursor *cur;
    MDB_val k, v;
    be32(prefix, ex->sid);
    k = ex->have_last ? mval(ex->last, klen) : mval(prefix, 4);
    int rc = cursor_open(st, txn, blocks ? st->snaps : st->arch, &cur);
    if (rc)
        return rc;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (!mrc && ex->have_last && k.mv_size == klen && !memcmp(k.mv_data, ex->last, klen))
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    for (; !mrc && o->n < o->cap && has_prefix(&k, prefix, 4);
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const char *bad = k.mv_size != klen ? "a key of the wrong size" :
                          blocks ? block_frame(&v, SIZE_MAX, why) :
                          arch_check(k.mv_data, &v, NULL, why);
        if (!bad && blocks && value_crc(k.mv_data, klen, v.mv_data, v.mv_size) !=
            get_le32(v.mv_data))
            bad = "checksum mismatch";
        if (bad) {
            const uint8_t *p = k.mv_data;
            if (k.mv_size != klen)
                rc = sep_fail(SEP_EFORMAT, "export of session '%s': %s", ex->name, bad);
            else if (blocks)
                rc = sep_fail(SEP_EFORMAT, "export of session '%s': stage %u block %u: %s",
                              ex->name, get_be16(p + 4), get_be32(p + 6), bad);
            else
                rc = sep_fail(SEP_EFORMAT, "export of session '%s': archive sid %u pos %llu "
                              "layer %u: %s", ex->name, ex->sid,
                              (unsigned long long)get_be64(p + 4), get_be16(p + 12), bad);
            break;
        }
        if ((rc = ex_item(ex, o, blocks ? IT_BLOCK : IT_ENTRY, &k, &v)))
            break;
        memcpy(ex->last, k.mv_data, klen);
        ex->have_last = 1;
        ex->n_items[blocks ? 1 : 2]++;
    }
    if (!rc && mrc && mrc != MDB_NOTFOUND)
        rc = db_fail(st, mrc, "export of session '%s'", ex->name);
    else if (!rc && (mrc || !has_prefix(&k, prefix, 4))) {
        ex->phase++; /* this database has no more of the sid */
        ex->have_last = 0;
    }
    mdb_cursor_close(cur);
    return rc;
}

static int ex_step(sep_store_t *st, MDB_txn *txn, sep_store_export_t *ex, out_t *o)
{
    MDB_val rv;
    int rc = SEP_OK;
    switch (ex->phase) {
    case PH_HEAD: {
        uint8_t head[EXP_HEAD] = "SEPDEXPT";
        le32(head + 8, 1);
        le32(head + 12, 0);
        MDB_val k = mval(ex->name, strlen(ex->name));
        if (!(rc = ex_record(st, txn, ex, &rv)) && !(rc = ex_emit(ex, o, head, EXP_HEAD)))
            rc = ex_item(ex, o, IT_RECORD, &k, &rv);
        ex->n_items[0] = 1;
        ex->phase = PH_BLOCKS;
        return rc;
    }
    case PH_BLOCKS:
    case PH_ENTRIES:
        return ex_scan(st, txn, ex, o);
    case PH_END: {
        uint8_t end[ITEM_HEAD + END_VALUE] = { IT_END };
        le32(end + 8, END_VALUE);
        for (int i = 0; i < 3; i++)
            memcpy(end + ITEM_HEAD + 8 * i, &ex->n_items[i], 8);
        /* the CRC covers everything before it, the end item's counts too */
        if (!(rc = ex_emit(ex, o, end, ITEM_HEAD + 24))) {
            le32(end + ITEM_HEAD + 24, ex->crc);
            rc = ex_emit(ex, o, end + ITEM_HEAD + 24, 4);
        }
        ex->phase = PH_DONE;
        return rc;
    }
    }
    return rc;
}

typedef struct {
    sep_store_export_t *ex;
    out_t *o;
} exread_t;

static int exread_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    exread_t *a = arg;
    MDB_val rv;
    int rc = a->ex->phase == PH_HEAD ? SEP_OK : ex_record(st, txn, a->ex, &rv);
    while (!rc && a->o->n < a->o->cap && a->ex->phase != PH_DONE)
        rc = ex_step(st, txn, a->ex, a->o);
    return rc;
}

static int exopen_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    sep_store_export_t *ex = arg;
    MDB_val k = mval(ex->name, strlen(ex->name)), v;
    sep_store_session_t r;
    int rc = mdb_get(txn, st->sessions, &k, &v);
    if (rc == MDB_NOTFOUND)
        return sep_fail(SEP_ENOTFOUND, "session '%s' not found", ex->name);
    if (rc)
        return db_fail(st, rc, "export of session '%s'", ex->name);
    if ((rc = decode_stored(&k, &v, &r)))
        return rc == SEP_ENOMEM ? rc : sep_fail(SEP_EFORMAT, "export: %s", sep_errmsg());
    ex->sid = r.sid;
    ex->rec_len = v.mv_size;
    ex->rec_crc = get_le32((uint8_t *)v.mv_data + v.mv_size - 4);
    sep_store_session_free(&r);
    return SEP_OK;
}

int sep_store_export_open(sep_store_t *st, const char *name, sep_store_export_t **out)
{
    *out = NULL;
    if (!sep_name_ok(name))
        return sep_fail(SEP_EINVAL, "'%s' is not a session name", name);
    sep_store_export_t *ex = calloc(1, sizeof *ex);
    if (!ex)
        return sep_fail(SEP_ENOMEM, "export: no memory");
    ex->st = st;
    snprintf(ex->name, sizeof ex->name, "%s", name);
    int rc = store_read(st, exopen_txn, ex);
    if (rc) {
        free(ex);
        return rc;
    }
    *out = ex;
    return SEP_OK;
}

int sep_store_export_read(sep_store_export_t *ex, void *buf, size_t cap, size_t *got)
{
    *got = 0;
    if (ex->rc)
        return sep_fail(ex->rc, "%s", ex->why);
    if (!cap) /* *got == 0 would read as the end */
        return sep_fail(SEP_EINVAL, "export of session '%s': a read of 0 bytes", ex->name);
    out_t o = { buf, cap, 0 };
    size_t k = ex->pend_len - ex->pend_off;
    k = k < cap ? k : cap;
    if (k)
        memcpy(o.buf, ex->pend + ex->pend_off, k);
    o.n = k;
    if ((ex->pend_off += k) == ex->pend_len)
        ex->pend_off = ex->pend_len = 0;
    if (o.n < cap && ex->phase != PH_DONE) {
        exread_t a = { ex, &o };
        int rc = store_read(ex->st, exread_txn, &a);
        if (rc) {
            snprintf(ex->why, sizeof ex->why, "%s", sep_errmsg());
            return ex->rc = rc;
        }
    }
    *got = o.n;
    return SEP_OK;
}

void sep_store_export_close(sep_store_export_t **ex)
{
    if (!ex || !*ex)
        return;
    free((*ex)->pend);
    free(*ex);
    *ex = NULL;
}

/* ---- import ------------------------------------------------------------------ */

struct sep_store_import {
    sep_store_t *st;
    char name[SEP_NAME_MAX + 1]; /* "" until known */
    uint32_t sid;                /* the new one */
    uint64_t off;                /* stream bytes taken */
    uint32_t crc;                /* of the stream up to the current item */
    uint8_t head[EXP_HEAD];
    size_t head_got;
    uint8_t *item;               /* the current item: header, key, value */
    size_t item_got, item_len, item_cap;
    uint64_t item_off, n_item;   /* where it starts in the stream; its index */
    sep_store_session_t rec;
    int have_rec, in_entries, ended, finished, rc;
    uint32_t old_sid;
    uint64_t n_items[3];         /* records, blocks, entries seen */
    /* snapshot blocks as they come, and as this store cuts them */
    int in_stage;                /* stage of the last block seen (-1: none) */
    uint32_t in_block;           /* the block expected next in that stage */
    uint64_t stage_bytes[SEP_STORE_MAX_STAGES];
    uint8_t *blk;                /* a block of this store being filled: payload */
    size_t blk_len;
    uint32_t blk_stage, blk_index;
    uint8_t last_entry[ARCH_KEY];
    /* puts not yet written: (uint8 db, uint32 value length, key, value)... */
    uint8_t *batch;
    size_t batch_len, batch_cap;
    char why[256];               /* the message of the failure in rc */
};

/* A malformed stream: the message (made by sep_fail) with the item and
 * its offset in front. */
static int im_where(const sep_store_import_t *im, int rc)
{
    unsigned type = im->item_got ? im->item[0] : 0;
    return sep_fail(rc, "export stream: item %llu (%s) at offset %llu: %s",
                    (unsigned long long)im->n_item, item_name(type),
                    (unsigned long long)im->item_off, sep_errmsg());
}
#define im_fail(im, ...) im_where(im, sep_fail(SEP_EFORMAT, __VA_ARGS__))

/* Room for n more bytes in *buf of *len used, *cap allocated. */
static int reserve(uint8_t **buf, size_t *cap, size_t len, size_t n)
{
    if (len + n <= *cap)
        return SEP_OK;
    size_t c = *cap ? *cap : 4096;
    while (c < len + n)
        c *= 2;
    uint8_t *p = realloc(*buf, c);
    if (!p)
        return sep_fail(SEP_ENOMEM, "import: no memory for %zu bytes", c);
    *buf = p;
    *cap = c;
    return SEP_OK;
}

static int batch_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    sep_store_import_t *im = arg;
    MDB_cursor *cur[2];
    int append[2], rc = cursor_open(st, txn, st->snaps, &cur[0]);
    if (rc)
        return rc;
    if ((rc = cursor_open(st, txn, st->arch, &cur[1]))) {
        mdb_cursor_close(cur[0]);
        return rc;
    }
    /* the new sid is usually the highest: then its keys (ascending in the
     * stream, checked) append, from the first of this batch on */
    const uint8_t *first[2] = { NULL, NULL };
    for (size_t at = 0; at < im->batch_len && (!first[0] || !first[1]);) {
        const uint8_t *p = im->batch + at;
        if (!first[p[0]])
            first[p[0]] = p + 5;
        at += 5 + (p[0] ? ARCH_KEY : SNAP_KEY) + get_le32(p + 1);
    }
    for (int d = 0; !rc && d < 2; d++)
        append[d] = 0;
    for (int d = 0; !rc && d < 2; d++)
        if (first[d])
            rc = can_append(st, cur[d], first[d], d ? ARCH_KEY : SNAP_KEY, &append[d]);
    for (size_t at = 0; !rc && at < im->batch_len;) {
        const uint8_t *p = im->batch + at;
        int d = p[0];
        size_t klen = d ? ARCH_KEY : SNAP_KEY, vlen = get_le32(p + 1);
        MDB_val k = mval(p + 5, klen), v = mval(p + 5 + klen, vlen);
        int mrc = mdb_cursor_put(cur[d], &k, &v, append[d] ? MDB_APPEND : 0);
        if (mrc)
            rc = db_fail(st, mrc, "import into sid %u", im->sid);
        at += 5 + klen + vlen;
    }
    mdb_cursor_close(cur[0]);
    mdb_cursor_close(cur[1]);
    return rc;
}

static int batch_flush(sep_store_import_t *im)
{
    if (!im->batch_len)
        return SEP_OK;
    int rc = store_write1(im->st, 2 * im->batch_len + SMALL_WRITE, batch_txn, im, "import");
    im->batch_len = 0;
    return rc;
}

/* Queue a put into snapshots (d 0) or the archive (d 1); value = head
 * (hlen bytes, its CRC field filled here) then body. */
static int batch_add(sep_store_import_t *im, int d, const uint8_t *key, const uint8_t *head,
                     size_t hlen, const uint8_t *body, size_t blen)
{
    size_t klen = d ? ARCH_KEY : SNAP_KEY;
    int rc = reserve(&im->batch, &im->batch_cap, im->batch_len, 5 + klen + hlen + blen);
    if (rc)
        return rc;
    uint8_t *p = im->batch + im->batch_len, *val = p + 5 + klen;
    p[0] = (uint8_t)d;
    le32(p + 1, (uint32_t)(hlen + blen));
    memcpy(p + 5, key, klen);
    memcpy(val, head, hlen);
    uint32_t crc = sep_crc32c(sep_crc32c(0, key, klen), val + 4, hlen - 4);
    le32(val, sep_crc32c_copy(val + hlen, body, blen, crc));
    im->batch_len += 5 + klen + hlen + blen;
    return im->batch_len >= IMPORT_BATCH ? batch_flush(im) : SEP_OK;
}

/* The block being filled, as one of this store's blocks. */
static int blk_flush(sep_store_import_t *im)
{
    if (!im->blk_len)
        return SEP_OK;
    uint8_t key[SNAP_KEY], head[BLOCK_HEAD];
    snap_key(key, im->sid, im->blk_stage, im->blk_index++);
    le32(head + 4, (uint32_t)im->blk_len);
    int rc = batch_add(im, 0, key, head, BLOCK_HEAD, im->blk, im->blk_len);
    im->blk_len = 0;
    return rc;
}

static int name_free_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    const char *name = arg;
    MDB_val k = mval(name, strlen(name)), v;
    int rc = mdb_get(txn, st->sessions, &k, &v);
    if (!rc)
        return sep_fail(SEP_EINVAL, "session '%s' exists", name);
    return rc == MDB_NOTFOUND ? SEP_OK : db_fail(st, rc, "read session '%s'", name);
}

static int im_record(sep_store_import_t *im, const MDB_val *k, const MDB_val *v)
{
    if (im->have_rec)
        return im_fail(im, "a second session record");
    int rc = decode_stored(k, v, &im->rec);
    if (rc == SEP_ENOMEM)
        return rc;
    if (rc)
        return im_where(im, SEP_EFORMAT);
    im->have_rec = 1;
    im->old_sid = im->rec.sid;
    if (!im->name[0]) {
        memcpy(im->name, im->rec.name, sizeof im->name);
        if ((rc = store_read(im->st, name_free_txn, im->name)))
            return rc;
    }
    return SEP_OK;
}

static int im_block(sep_store_import_t *im, const MDB_val *k, const MDB_val *v)
{
    const uint8_t *key = k->mv_data, *p = v->mv_data;
    char why[96];
    if (!im->have_rec || im->in_entries)
        return im_fail(im, "a snapshot block %s", im->have_rec ? "after the archive entries" :
                       "before the session record");
    uint32_t sid = get_be32(key), stage = get_be16(key + 4), block = get_be32(key + 6);
    if (sid != im->old_sid || stage >= im->rec.n_stages)
        return im_fail(im, "a block of sid %u stage %u in an export of sid %u (%u stages)", sid,
                       stage, im->old_sid, im->rec.n_stages);
    int next = (int)stage == im->in_stage && block == im->in_block;
    if (!next && !((int)stage > im->in_stage && block == 0))
        return im_fail(im, "stage %u block %u out of order", stage, block);
    if (block_frame(v, SIZE_MAX, why))
        return im_fail(im, "%s", why);
    if (value_crc(key, SNAP_KEY, p, v->mv_size) != get_le32(p))
        return im_fail(im, "checksum mismatch");
    size_t n = v->mv_size - BLOCK_HEAD;
    if (!n)
        return im_fail(im, "an empty block");
    if (im->stage_bytes[stage] + n > im->rec.state_len[stage])
        return im_fail(im, "%zu bytes beyond the %llu of stage %u in the record", n,
                       (unsigned long long)im->rec.state_len[stage], stage);
    int rc;
    if (!next) { /* a new stage: finish the last one's block */
        if ((rc = blk_flush(im)))
            return rc;
        im->blk_stage = stage;
        im->blk_index = 0;
    }
    im->in_stage = (int)stage;
    im->in_block = block + 1;
    im->stage_bytes[stage] += n;
    /* cut again into this store's blocks: the exporter's page size may differ */
    for (p += BLOCK_HEAD; n;) {
        size_t k2 = im->st->block_payload - im->blk_len;
        k2 = k2 < n ? k2 : n;
        memcpy(im->blk + im->blk_len, p, k2);
        im->blk_len += k2;
        p += k2;
        n -= k2;
        if (im->blk_len == im->st->block_payload && (rc = blk_flush(im)))
            return rc;
    }
    return SEP_OK;
}

static int im_entry(sep_store_import_t *im, const MDB_val *k, const MDB_val *v)
{
    const uint8_t *key = k->mv_data;
    uint8_t nkey[ARCH_KEY];
    char why[96];
    sep_store_sep_t e;
    int rc;
    if (!im->have_rec)
        return im_fail(im, "an archive entry before the session record");
    if (get_be32(key) != im->old_sid)
        return im_fail(im, "an entry of sid %u in an export of sid %u", get_be32(key),
                       im->old_sid);
    if (im->in_entries && memcmp(key, im->last_entry, ARCH_KEY) <= 0)
        return im_fail(im, "entries out of order");
    if (arch_check(key, v, &e, why))
        return im_fail(im, "%s", why);
    if (!im->in_entries && (rc = blk_flush(im)))
        return rc;
    im->in_entries = 1;
    memcpy(im->last_entry, key, ARCH_KEY);
    memcpy(nkey, key, ARCH_KEY);
    be32(nkey, im->sid);
    return batch_add(im, 1, nkey, v->mv_data, ARCH_HEAD, (const uint8_t *)v->mv_data + ARCH_HEAD,
                     v->mv_size - ARCH_HEAD);
}

static int im_end(sep_store_import_t *im, const uint8_t *val)
{
    uint32_t crc = sep_crc32c(im->crc, im->item, ITEM_HEAD + 24);
    if (!im->have_rec)
        return im_fail(im, "the end before the session record");
    for (int i = 0; i < 3; i++)
        if (get_le64(val + 8 * i) != im->n_items[i])
            return im_fail(im, "%llu %ss counted, %llu in the stream",
                           (unsigned long long)get_le64(val + 8 * i), item_name((unsigned)i + 1),
                           (unsigned long long)im->n_items[i]);
    if (get_le32(val + 24) != crc)
        return im_fail(im, "stream checksum mismatch");
    im->ended = 1;
    return SEP_OK;
}

/* The item now whole in im->item. */
static int im_item(sep_store_import_t *im)
{
    unsigned type = im->item[0];
    size_t klen = get_le32(im->item + 4);
    MDB_val k = mval(im->item + ITEM_HEAD, klen),
            v = mval(im->item + ITEM_HEAD + klen, im->item_len - ITEM_HEAD - klen);
    int rc;
    if (type == IT_END)
        return im_end(im, v.mv_data);
    if (type == IT_RECORD)
        rc = im_record(im, &k, &v);
    else if (type == IT_BLOCK)
        rc = im_block(im, &k, &v);
    else
        rc = im_entry(im, &k, &v);
    im->n_items[type - 1]++;
    im->crc = sep_crc32c(im->crc, im->item, im->item_len);
    return rc;
}

/* An item's header is in: check its type and lengths against the bounds
 * of its type before anything is allocated for it. */
static int im_head(sep_store_import_t *im)
{
    const uint8_t *h = im->item;
    unsigned type = h[0];
    uint32_t klen = get_le32(h + 4), vlen = get_le32(h + 8);
    uint32_t kmin, kmax, vmin, vmax;
    switch (type) {
    case IT_RECORD: kmin = 1, kmax = SEP_NAME_MAX, vmin = REC_FRAME, vmax = REC_MAX; break;
    case IT_BLOCK: kmin = kmax = SNAP_KEY, vmin = BLOCK_HEAD, vmax = vmin + IN_BLOCK_MAX; break;
    case IT_ENTRY: kmin = kmax = ARCH_KEY, vmin = ARCH_HEAD, vmax = vmin + 8 * KV_DIM_MAX; break;
    case IT_END: kmin = kmax = 0, vmin = vmax = END_VALUE; break;
    default: return im_fail(im, "unknown item type %u", type);
    }
    if (h[1] || h[2] || h[3])
        return im_fail(im, "nonzero reserved bytes");
    if (klen < kmin || klen > kmax || vlen < vmin || vlen > vmax)
        return im_fail(im, "a key of %u bytes and a value of %u", klen, vlen);
    im->item_len = ITEM_HEAD + (size_t)klen + vlen;
    return reserve(&im->item, &im->item_cap, 0, im->item_len) ? SEP_ENOMEM : SEP_OK;
}

static int im_header(sep_store_import_t *im)
{
    uint32_t version = get_le32(im->head + 8);
    im->crc = sep_crc32c(0, im->head, EXP_HEAD);
    if (memcmp(im->head, "SEPDEXPT", 8) || get_le32(im->head + 12))
        return sep_fail(SEP_EFORMAT, "export stream: not a sepd export (bad header)");
    if (version != 1)
        return sep_fail(version > 1 ? SEP_EUNSUPPORTED : SEP_EFORMAT, "export stream: "
                                 "version %u, this sepd reads 1", version);
    im->item_off = EXP_HEAD;
    return SEP_OK;
}

static int im_write(sep_store_import_t *im, const uint8_t *p, size_t len)
{
    int rc = SEP_OK;
    while (len && !rc) {
        if (im->ended)
            return sep_fail(SEP_EFORMAT, "export stream: bytes after the end item at offset "
                            "%llu", (unsigned long long)im->off);
        size_t k;
        if (im->head_got < EXP_HEAD) {
            k = EXP_HEAD - im->head_got < len ? EXP_HEAD - im->head_got : len;
            memcpy(im->head + im->head_got, p, k);
            if ((im->head_got += k) == EXP_HEAD)
                rc = im_header(im);
        } else if (im->item_got < ITEM_HEAD) {
            k = ITEM_HEAD - im->item_got < len ? ITEM_HEAD - im->item_got : len;
            memcpy(im->item + im->item_got, p, k);
            if ((im->item_got += k) == ITEM_HEAD)
                rc = im_head(im); /* sets item_len, always above ITEM_HEAD */
        } else {
            k = im->item_len - im->item_got < len ? im->item_len - im->item_got : len;
            memcpy(im->item + im->item_got, p, k);
            if ((im->item_got += k) == im->item_len) {
                rc = im_item(im);
                im->item_off += im->item_len;
                im->n_item++;
                im->item_got = 0;
            }
        }
        p += k;
        len -= k;
        im->off += k;
    }
    return rc;
}

/* A failure of an import is final: later calls repeat it. */
static int im_stop(sep_store_import_t *im, int rc)
{
    if (rc && !im->rc) {
        im->rc = rc;
        snprintf(im->why, sizeof im->why, "%s", sep_errmsg());
    }
    return rc;
}

static int im_usable(const sep_store_import_t *im)
{
    if (im->rc)
        return sep_fail(im->rc, "%s", im->why);
    return im->finished ? sep_fail(SEP_EINVAL, "import of '%s': already finished", im->name) :
           SEP_OK;
}

int sep_store_import_write(sep_store_import_t *im, const void *buf, size_t len)
{
    int rc = im_usable(im);
    return rc ? rc : im_stop(im, im_write(im, buf, len));
}

typedef struct {
    sep_store_import_t *im;
    const uint8_t *rec;
    size_t rec_len;
} finish_t;

static int finish_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    finish_t *f = arg;
    MDB_val k = mval(f->im->name, strlen(f->im->name)), v = mval(f->rec, f->rec_len);
    int rc = name_free_txn(st, txn, f->im->name);
    if (!rc && (rc = mdb_put(txn, st->sessions, &k, &v, 0)))
        rc = db_fail(st, rc, "write session '%s'", f->im->name);
    return rc;
}

static int im_finish(sep_store_import_t *im, sep_store_session_t *out)
{
    if (!im->ended)
        return sep_fail(SEP_EFORMAT, "export stream: truncated at offset %llu (%s)",
                                 (unsigned long long)im->off,
                                 im->head_got < EXP_HEAD ? "in the header" :
                                 im->item_got ? "inside an item" : "before the end item");
    for (uint32_t s = 0; s < im->rec.n_stages; s++)
        if (im->stage_bytes[s] != im->rec.state_len[s])
            return sep_fail(SEP_EFORMAT, "export stream: stage %u has %llu bytes of "
                                     "blocks, its record says %llu", s,
                                     (unsigned long long)im->stage_bytes[s],
                                     (unsigned long long)im->rec.state_len[s]);
    int rc = blk_flush(im);
    if (!rc)
        rc = batch_flush(im);
    if (rc)
        return rc;
    sep_store_session_t *r = &im->rec;
    memcpy(r->name, im->name, sizeof r->name);
    r->sid = im->sid;
    r->state = SEP_STORE_SUSPENDED;
    finish_t f = { im, NULL, 0 };
    if ((rc = sep_store_session_encode(r, (uint8_t **)&f.rec, &f.rec_len)))
        return rc;
    rc = store_write1(im->st, SMALL_WRITE + f.rec_len, finish_txn, &f, "import");
    free((void *)f.rec);
    if (rc)
        return rc;
    im->finished = 1;
    *out = *r;
    memset(r, 0, sizeof *r); /* out owns the arrays now */
    return SEP_OK;
}

int sep_store_import_finish(sep_store_import_t *im, sep_store_session_t *out)
{
    memset(out, 0, sizeof *out);
    int rc = im_usable(im);
    return rc ? rc : im_stop(im, im_finish(im, out));
}

int sep_store_import_open(sep_store_t *st, const char *new_name, sep_store_import_t **out)
{
    *out = NULL;
    if (st->read_only)
        return sep_fail(SEP_EINVAL, "store %s is open read-only", st->dir);
    if (new_name && !sep_name_ok(new_name))
        return sep_fail(SEP_EINVAL, "'%s' is not a session name", new_name);
    sep_store_import_t *im = calloc(1, sizeof *im);
    if (!im || !(im->blk = malloc(st->block_payload)) || !(im->item = malloc(ITEM_HEAD))) {
        if (im)
            free(im->blk);
        free(im);
        return sep_fail(SEP_ENOMEM, "import: no memory");
    }
    im->st = st;
    im->in_stage = -1;
    int rc = SEP_OK;
    if (new_name) {
        snprintf(im->name, sizeof im->name, "%s", new_name);
        rc = store_read(st, name_free_txn, im->name);
    }
    if (!rc)
        rc = sep_store_alloc_sid(st, &im->sid);
    if (rc) {
        free(im->item);
        free(im->blk);
        free(im);
        return rc;
    }
    im->item_cap = ITEM_HEAD;
    *out = im;
    return SEP_OK;
}

void sep_store_import_abort(sep_store_import_t **imp)
{
    if (!imp || !*imp)
        return;
    sep_store_import_t *im = *imp;
    /* what this fails to delete is an orphan that the next open sweeps */
    if (!im->finished)
        delete_data(im->st, im->sid, NULL, NULL);
    sep_store_session_free(&im->rec);
    free(im->item);
    free(im->blk);
    free(im->batch);
    free(im);
    *imp = NULL;
}

/* ---- the environment --------------------------------------------------------- */

typedef struct {
    uint32_t sid;
} nextsid_t;

static int nextsid_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    nextsid_t *s = arg;
    MDB_val k = mval("next_sid", 8), v;
    int rc = mdb_get(txn, st->meta, &k, &v);
    if (rc)
        return rc == MDB_NOTFOUND ? sep_fail(SEP_EFORMAT, "%s: no next_sid record", st->path) :
               db_fail(st, rc, "read next_sid");
    if (v.mv_size != 4)
        return sep_fail(SEP_EFORMAT, "%s: next_sid of %zu bytes", st->path, v.mv_size);
    s->sid = get_le32(v.mv_data);
    if (!s->sid || s->sid == UINT32_MAX)
        return sep_fail(SEP_ERANGE, "%s: next_sid is %u: no session ids left", st->path, s->sid);
    uint8_t next[4];
    le32(next, s->sid + 1);
    v = mval(next, 4);
    if ((rc = mdb_put(txn, st->meta, &k, &v, 0)))
        return db_fail(st, rc, "write next_sid");
    return SEP_OK;
}

int sep_store_alloc_sid(sep_store_t *st, uint32_t *sid)
{
    nextsid_t s = { 0 };
    int rc = store_write1(st, SMALL_WRITE, nextsid_txn, &s, "next_sid");
    *sid = rc ? 0 : s.sid;
    return rc;
}

static const char *db_names[4] = { "meta", "sessions", "snapshots", "archive" };

/* Open the named databases and check the format record; a new (empty)
 * environment gets them. */
static int format_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    (void)arg;
    MDB_dbi main, *dbis[4] = { &st->meta, &st->sessions, &st->snaps, &st->arch };
    MDB_stat ms;
    MDB_val k = mval("format", 6), v;
    int rc = mdb_dbi_open(txn, NULL, 0, &main);
    if (!rc)
        rc = mdb_stat(txn, main, &ms);
    if (rc)
        return db_fail(st, rc, "open the main database");
    int fresh = ms.ms_entries == 0;
    if (fresh && st->read_only)
        return sep_fail(SEP_EFORMAT, "%s: not a sepd store (empty)", st->path);
    for (int i = 0; i < 4; i++) {
        rc = mdb_dbi_open(txn, db_names[i], fresh ? MDB_CREATE : 0, dbis[i]);
        if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE)
            return sep_fail(SEP_EFORMAT, "%s: not a sepd store (no '%s' database)", st->path,
                            db_names[i]);
        if (rc)
            return db_fail(st, rc, "open database '%s'", db_names[i]);
    }
    if (fresh) {
        uint8_t fmt[12] = "SEPDSTOR", next[4];
        le32(fmt + 8, SEP_STORE_FORMAT);
        le32(next, 1);
        MDB_val fv = mval(fmt, 12), nk = mval("next_sid", 8), nv = mval(next, 4);
        if ((rc = mdb_put(txn, st->meta, &k, &fv, 0)) || (rc = mdb_put(txn, st->meta, &nk, &nv, 0)))
            return db_fail(st, rc, "write the format record");
        return SEP_OK;
    }
    if ((rc = mdb_get(txn, st->meta, &k, &v)))
        return rc == MDB_NOTFOUND ? sep_fail(SEP_EFORMAT, "%s: not a sepd store (no format "
                                             "record)", st->path) :
               db_fail(st, rc, "read the format record");
    if (v.mv_size != 12 || memcmp(v.mv_data, "SEPDSTOR", 8))
        return sep_fail(SEP_EFORMAT, "%s: not a sepd store (bad format record)", st->path);
    uint32_t version = get_le32((uint8_t *)v.mv_data + 8);
    if (version > SEP_STORE_FORMAT)
        return sep_fail(SEP_EUNSUPPORTED, "%s: made by a newer sepd: format %u, this one reads "
                        "%d", st->path, version, SEP_STORE_FORMAT);
    if (version < 1)
        return sep_fail(SEP_EFORMAT, "%s: not a sepd store (format %u)", st->path, version);
    return SEP_OK;
}

typedef struct {
    uint32_t *sids;
    size_t n;
    MDB_dbi dbi;
    uint32_t from, orphan;
    int found;
} sweep_t;

static int sids_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    sweep_t *sw = arg;
    list_t l = { 0 };
    int rc = list_txn(st, txn, &l);
    if (!rc && l.n && !(sw->sids = malloc(l.n * sizeof *sw->sids)))
        rc = sep_fail(SEP_ENOMEM, "sweep: no memory");
    for (size_t i = 0; !rc && i < l.n; i++) {
        if (l.list[i].damaged)
            st->damaged++;
        else
            sw->sids[sw->n++] = l.list[i].sid;
    }
    sep_store_sessions_free(&l.list, l.n);
    return rc;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The first sid at or after sw->from with keys in sw->dbi and no record. */
static int orphan_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    sweep_t *sw = arg;
    MDB_cursor *cur;
    MDB_val k, v;
    uint8_t key[4];
    be32(key, sw->from);
    k = mval(key, 4);
    sw->found = 0;
    int rc = cursor_open(st, txn, sw->dbi, &cur), mrc;
    if (rc)
        return rc;
    for (mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); !mrc;) {
        if (k.mv_size < 4) { /* not ours, and of no sid: left alone */
            mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
            continue;
        }
        uint32_t sid = get_be32(k.mv_data);
        if (!sw->n || !bsearch(&sid, sw->sids, sw->n, sizeof *sw->sids, cmp_u32)) {
            sw->orphan = sid;
            sw->found = 1;
            break;
        }
        if (sid == UINT32_MAX)
            break;
        be32(key, sid + 1);
        k = mval(key, 4);
        mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    }
    mdb_cursor_close(cur);
    return mrc && mrc != MDB_NOTFOUND ? db_fail(st, mrc, "sweep") : SEP_OK;
}

/* Delete the blocks and entries of sids without a record. */
static int sweep(sep_store_t *st)
{
    sweep_t sw = { 0 };
    int rc = store_read(st, sids_txn, &sw);
    if (!rc && !st->damaged) {
        if (sw.n)
            qsort(sw.sids, sw.n, sizeof *sw.sids, cmp_u32);
        for (int d = 0; !rc && d < 2; d++) {
            sw.dbi = d ? st->arch : st->snaps;
            for (sw.from = 0; !rc; sw.from = sw.orphan + 1) {
                if ((rc = store_read(st, orphan_txn, &sw)) || !sw.found)
                    break;
                rc = delete_sid(st, sw.dbi, sw.orphan, d ? DEL_ENTRIES : DEL_BLOCKS,
                                d ? &st->orphan_entries : &st->orphan_blocks);
                if (sw.orphan == UINT32_MAX)
                    break;
            }
        }
    }
    free(sw.sids);
    return rc;
}

/* A data.mdb shorter than its meta page says would fault (SIGBUS) on the
 * first read of a page past its end. */
static int check_size(sep_store_t *st)
{
    MDB_envinfo info;
    MDB_stat ms;
    int rc = mdb_env_info(st->env, &info);
    if (!rc)
        rc = mdb_env_stat(st->env, &ms);
    if (rc)
        return db_fail(st, rc, "read the environment");
    uint64_t want = ((uint64_t)info.me_last_pgno + 1) * ms.ms_psize, have = file_size(st);
    if (have < want)
        return sep_fail(SEP_EFORMAT, "%s: truncated: %llu bytes, its meta page says %llu",
                        st->path, (unsigned long long)have, (unsigned long long)want);
    st->psize = ms.ms_psize;
    st->block_payload = SEP_STORE_BLOCK_PAGES * st->psize - PAGEHDRSZ - BLOCK_HEAD;
    return SEP_OK;
}

static int env_open(sep_store_t *st, const sep_store_opts_t *o, size_t map)
{
    int rc = mdb_env_create(&st->env);
    if (rc)
        return db_fail(st, rc, "create the environment");
    if ((rc = mdb_env_set_maxdbs(st->env, 8)) ||
        (!o->read_only && (rc = mdb_env_set_mapsize(st->env, map))))
        return db_fail(st, rc, "set up the environment");
    unsigned flags = MDB_NOTLS | (o->no_sync ? MDB_NOSYNC : 0) | (o->read_only ? MDB_RDONLY : 0);
    if ((rc = mdb_env_open(st->env, st->dir, flags, 0600))) {
        if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED)
            return sep_fail(SEP_EFORMAT, "%s: not a sepd store (%s)", st->path,
                            mdb_strerror(rc));
        if (rc == ENOENT)
            return sep_fail(SEP_ENOTFOUND, "%s: no store", st->path);
        return db_fail(st, rc, "open %s", st->path);
    }
    return SEP_OK;
}

int sep_store_open(sep_store_t **out, const char *dir, const sep_store_opts_t *o)
{
    static const sep_store_opts_t dflt;
    *out = NULL;
    if (!o)
        o = &dflt;
    long pg = sysconf(_SC_PAGESIZE);
    size_t psz = pg > 0 ? (size_t)pg : 4096;
    size_t map = o->map_size ? o->map_size : GiB, max = o->map_max ? o->map_max : 64 * GiB;
    map = (map + psz - 1) / psz * psz;
    max = (max + psz - 1) / psz * psz;
    if (map > max && o->map_size)
        return sep_fail(SEP_EINVAL, "store %s: map_size %zu above map_max %zu", dir, map, max);
    map = map > max ? max : map;

    sep_store_t *st = calloc(1, sizeof *st);
    size_t plen = strlen(dir) + sizeof "/data.mdb";
    if (!st || !(st->dir = strdup(dir)) || !(st->path = malloc(plen))) {
        if (st)
            free(st->dir);
        free(st);
        return sep_fail(SEP_ENOMEM, "store %s: no memory", dir);
    }
    snprintf(st->path, plen, "%s/data.mdb", dir);
    st->map_max = max;
    st->read_only = o->read_only;
    int rc = SEP_OK, dead;
    struct stat sb;
    if (!o->read_only && mkdir(dir, 0700) && errno != EEXIST) {
        rc = sep_fail(SEP_EIO, "store %s: cannot create the directory: %s", dir, strerror(errno));
        goto fail;
    }
    if (stat(dir, &sb) || !S_ISDIR(sb.st_mode)) {
        rc = sep_fail(errno == ENOENT ? SEP_ENOTFOUND : SEP_EIO, "store %s: %s", dir,
                      errno == ENOENT ? "no such directory" : "not a directory");
        goto fail;
    }
    if ((rc = env_open(st, o, map)) || (rc = check_size(st)))
        goto fail;
    if ((rc = mdb_reader_check(st->env, &dead))) {
        rc = db_fail(st, rc, "clear stale readers");
        goto fail;
    }
    if (o->read_only) {
        /* dbi handles opened in a read transaction last once it commits */
        MDB_txn *txn;
        if ((rc = txn_begin(st, MDB_RDONLY, &txn)))
            goto fail;
        if ((rc = format_txn(st, txn, NULL))) {
            mdb_txn_abort(txn);
            goto fail;
        }
        if ((rc = mdb_txn_commit(txn))) {
            rc = db_fail(st, rc, "open the databases");
            goto fail;
        }
    } else {
        rc = store_write1(st, SMALL_WRITE, format_txn, NULL, "open");
    }
    if (rc || (!o->read_only && (rc = sweep(st))))
        goto fail;
    *out = st;
    return SEP_OK;
fail:
    sep_store_close(&st);
    return rc;
}

void sep_store_close(sep_store_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sep_store_t *st = *self_p;
    if (st->env)
        mdb_env_close(st->env);
    free(st->dir);
    free(st->path);
    free(st);
    *self_p = NULL;
}

typedef struct {
    sep_store_stat_t *out;
} stats_t;

static int stat_txn(sep_store_t *st, MDB_txn *txn, void *arg)
{
    sep_store_stat_t *o = ((stats_t *)arg)->out;
    MDB_dbi dbis[4] = { st->meta, st->sessions, st->snaps, st->arch };
    uint64_t *counts[4] = { &o->meta_entries, &o->sessions, &o->snapshot_blocks,
                            &o->archive_entries };
    for (int i = 0; i < 4; i++) {
        MDB_stat ms;
        int rc = mdb_stat(txn, dbis[i], &ms);
        if (rc)
            return db_fail(st, rc, "count database '%s'", db_names[i]);
        *counts[i] = ms.ms_entries;
    }
    return SEP_OK;
}

int sep_store_stat(sep_store_t *st, sep_store_stat_t *out)
{
    MDB_envinfo info;
    memset(out, 0, sizeof *out);
    int rc = mdb_env_info(st->env, &info);
    if (rc)
        return db_fail(st, rc, "read the environment");
    out->map_size = info.me_mapsize;
    out->map_max = st->map_max;
    out->page_size = st->psize;
    out->pages_used = (uint64_t)info.me_last_pgno + 1;
    out->file_size = file_size(st);
    out->orphan_blocks = st->orphan_blocks;
    out->orphan_entries = st->orphan_entries;
    out->damaged_at_open = st->damaged;
    out->block_payload = st->block_payload;
    stats_t s = { out };
    return store_read(st, stat_txn, &s);
}
