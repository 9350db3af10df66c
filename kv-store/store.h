/* store.h: sepd's durable store of sessions, on LMDB.
 *
 * One LMDB environment (a directory holding data.mdb and lock.mdb) keeps,
 * in four named databases:
 *   meta       "format" -> "SEPDSTOR" + uint32 version (1);
 *              "next_sid" -> uint32, the next session id to hand out
 *   sessions   session name -> the session's record (sep_store_session_t,
 *              encoded as below)
 *   snapshots  sid (uint32 BE) | stage (uint16 BE) | block (uint32 BE) ->
 *              uint32 CRC32C | uint32 payload length | payload: the bytes
 *              of one pipeline stage's sep_cache_save, cut into blocks
 *   archive    sid (uint32 BE) | stream position (uint64 BE) | layer
 *              (uint16 BE) -> uint32 CRC32C | int32 token id | uint32
 *              kv_dim | uint8 dtype (1 f32, 2 bf16) | 3 zero bytes | K
 *              (kv_dim elements) | V (kv_dim elements): the K/V rows of a
 *              separator token that left the cache
 * Numbers inside values are little-endian; keys are big-endian so that
 * they sort by sid, then stage and block, or position and layer. Each
 * value's CRC32C covers its key and every byte of the value after the CRC,
 * so a damaged value and a value under the wrong key are both detected.
 *
 * A snapshot block fills its run of LMDB overflow pages exactly: 64 pages
 * hold 64 * psize - 16 bytes (the page header), so a block's payload is
 * 64 * psize - 24 bytes (262120 with 4 KiB pages); every block of a stage
 * is full except its last. Fixed runs keep LMDB's free-page search cheap
 * and the file from fragmenting as checkpoints replace each other.
 *
 * Threads: a store is used by one thread at a time (any thread: the
 * environment is opened with MDB_NOTLS). Every call is synchronous and
 * runs its own transactions; no transaction stays open between calls,
 * which is what lets a write that finds the map full grow it in place
 * and retry (mdb_env_set_mapsize). Another process may open the store
 * read-only (opts.read_only) while sepd writes it.
 *
 * Durability: without opts.no_sync each write call is durable when it
 * returns (LMDB's fsync at commit). With it, a crash of the machine (not
 * of the process) can lose recent writes but never corrupts the store.
 *
 * Errors: SEP_OK or a negative SEP_E* code (err.h), with a one-line
 * message naming the store, the session, stage, block or archive entry
 * (sep_errmsg()). LMDB's own errors keep its text in the message. Beyond
 * those of each call:
 *   SEP_ENOSPC   the map reached opts.map_max, or the disk is full (or
 *                the process's file size limit reached); the store is as
 *                it was before the call
 *   SEP_EIO      a system call failed
 *   SEP_EINVAL   a write on a store opened read-only, or a bad argument
 */
#ifndef SEP_STORE_H
#define SEP_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h" /* SEP_NAME_MAX */

#define SEP_STORE_FORMAT 1       /* the version of the store this code writes and reads */
#define SEP_STORE_MAX_STAGES 64  /* pipeline stages a snapshot can have */
#define SEP_STORE_MAX_RECENT 4096 /* recent ids a record holds */
#define SEP_STORE_RECORD 3       /* the version of the session records this code writes */
#define SEP_STORE_BLOCK_PAGES 64 /* pages of each full snapshot block */

enum { SEP_STORE_ACTIVE = 1, SEP_STORE_SUSPENDED = 2 };                       /* record state */
enum { SEP_STORE_SHARED = 1 };                                                /* record access */
enum { SEP_ARCHIVE_OFF = 0, SEP_ARCHIVE_F32 = 1, SEP_ARCHIVE_BF16 = 2 };     /* record archive */

typedef struct sep_store sep_store_t;

/* ---- the environment ---------------------------------------------------- */

typedef struct {
    size_t map_size; /* initial map size; 0: 1 GiB. Rounded up to the page size */
    size_t map_max;  /* the most the map may grow to; 0: 64 GiB */
    int no_sync;     /* 1: no fsync at commit (tests, benchmarks) */
    int read_only;   /* 1: for tools; every write call fails with SEP_EINVAL */
} sep_store_opts_t;

/* Open the store in directory dir, creating dir (mode 0700) and a new
 * store in it (files mode 0600) when absent; o NULL takes the defaults.
 * At open:
 *   - stale reader slots of crashed processes are cleared (mdb_reader_check);
 *   - snapshot blocks and archive entries whose sid has no session record
 *     (what a crash in the middle of a delete or an import leaves) are
 *     deleted, counted in sep_store_stat's orphan_*. This sweep is skipped
 *     when a session record fails to decode (its sid is unknown, so its
 *     data could be taken for an orphan) and in read-only mode.
 * Fails with
 *   SEP_EFORMAT       "DIR/data.mdb: not a sepd store (...)": not an LMDB
 *                     file, a LMDB environment without sepd's format
 *                     record, a bad magic; or "DIR/data.mdb: truncated":
 *                     the file is shorter than its meta page says (reading
 *                     it would fault with SIGBUS)
 *   SEP_EUNSUPPORTED  "made by a newer sepd: format 2, this one reads 1"
 *   SEP_ENOTFOUND     read_only and there is no store in dir
 *   SEP_EINVAL        map_size above map_max
 * On failure *out is NULL. */
int sep_store_open(sep_store_t **out, const char *dir, const sep_store_opts_t *o);

/* Close the store and set *self_p to NULL; NULL or *self_p NULL is a no-op.
 * Every export and import handle of the store must be closed first. */
void sep_store_close(sep_store_t **self_p);

typedef struct {
    size_t map_size;          /* the map now */
    size_t map_max;
    size_t page_size;
    uint64_t pages_used;      /* last_pgno + 1 of the newest commit */
    uint64_t file_size;       /* bytes of data.mdb on disk */
    uint64_t sessions;        /* entries of each database */
    uint64_t snapshot_blocks;
    uint64_t archive_entries;
    uint64_t meta_entries;
    uint64_t orphan_blocks;   /* deleted by the sweep at open */
    uint64_t orphan_entries;
    uint64_t damaged_at_open; /* records that failed to decode at open (sweep skipped) */
    size_t block_payload;     /* payload bytes of a full snapshot block */
} sep_store_stat_t;

int sep_store_stat(sep_store_t *st, sep_store_stat_t *out);

/* A new session id: returns meta's next_sid and stores next_sid + 1, in one
 * transaction. Ids start at 1 and are never reused; 0 is never an id. */
int sep_store_alloc_sid(sep_store_t *st, uint32_t *sid);

/* ---- session records ---------------------------------------------------- */

typedef struct {
    char name[SEP_NAME_MAX + 1];  /* the key; 1..SEP_NAME_MAX bytes of [A-Za-z0-9._-] */
    uint32_t sid;                 /* from sep_store_alloc_sid; never 0 */
    uint32_t state;               /* SEP_STORE_ACTIVE or SEP_STORE_SUSPENDED */
    /* settings */
    int32_t method, a, s, w, c, shift;
    char *separators;             /* the separator spec it was opened with (NUL-terminated;
                                     NULL encodes as "") */
    int32_t *sep_ids;             /* (n_sep_ids) strictly ascending separator ids */
    uint32_t n_sep_ids;
    uint32_t archive;             /* SEP_ARCHIVE_* */
    /* where the state was made */
    uint8_t model_fp[32];         /* model fingerprint (the caller's) */
    char precision[16];           /* backend precision, e.g. "fp32" */
    uint32_t n_stages;            /* stages in the snapshot (0: none yet) */
    int32_t layer0[SEP_STORE_MAX_STAGES], layer1[SEP_STORE_MAX_STAGES]; /* 0 <= l0 <= l1 */
    uint64_t state_len[SEP_STORE_MAX_STAGES]; /* bytes of each stage's cache state */
    /* counters at the cut */
    int64_t tokens, kv_sum, kv_max, kv_last, bytes_in, bytes_tokenized, ids_total, checkpoints;
    double nll_sum, created, saved; /* stored as their 8 bytes: NaN payloads survive */
    /* the stream at the cut: the tokenizer's held-back text and its one int
       of state, the queued ids */
    uint8_t *held;                /* (held_len) */
    uint32_t held_len;
    int32_t tok_at;
    int32_t *queue;               /* (n_queue) */
    uint32_t n_queue;
    /* the sampler: its generator, the last generate's settings and the
       stream's last ids (ids_total - n_recent .. ids_total - 1), which its
       penalties count (version 2; a version 1 record reads as penalties
       off, window 64, no recent ids) */
    uint64_t rng[4];
    float temperature, top_p;
    float min_p, repetition, presence, frequency;
    int32_t top_k, penalty_window;
    int32_t *recent;              /* (n_recent) */
    uint32_t n_recent;            /* <= SEP_STORE_MAX_RECENT and ids_total */
    /* the NLLs of tokens nll_at + 1 .. nll_at + n_nlls that the feeding client
       had not confirmed at the cut (feed --retry replays them after a restart);
       an optional field: records without it read */
    int64_t nll_at;
    float *nlls;                  /* (n_nlls) */
    uint32_t n_nlls;
    /* owner identity (opaque; sepd: "uid:N" or "key:Z85", daemon/auth.h) and
       access (SEP_STORE_SHARED: every identity may use it; version 3, a
       record of version 1 or 2 reads as 0) */
    uint8_t owner[64];
    uint32_t owner_len;           /* 0..64; 0: made before sessions had owners */
    uint32_t access;
    /* set by sep_store_sessions only; never encoded */
    int damaged;                  /* 1: the stored record failed to decode */
    char damage[256];             /* why */
} sep_store_session_t;

/* Encoding of a record: a versioned, checksummed, extensible binary:
 *     0  "SEPS"
 *     4  uint16 version (3; 1 and 2 are read), uint16 flags (0)
 *     8  uint32 body length B
 *    12  body: TLV fields, each uint16 tag, uint32 length, value
 *  12+B  uint32 CRC32C of bytes [0, 12 + B)
 * Little-endian. A decoder skips tags it does not know, so a later version
 * can add fields without breaking this one; a version requires every tag
 * it defines, each once and of its exact length (version 2 added the
 * sampling settings and the recent ids, version 3 the access flags). */

/* Encode r into a malloc'ed *buf of *len bytes (the caller frees it).
 * A record that is not valid (name, state, archive, counts above their
 * limits, sep_ids not ascending, layers) is SEP_EINVAL naming the field. */
int sep_store_session_encode(const sep_store_session_t *r, uint8_t **buf, size_t *len);

/* Decode len bytes into *r (which is overwritten: pass one with nothing to
 * free). Any malformed input is SEP_EFORMAT "record: ..." (a length that
 * does not fit, a missing, repeated or mis-sized tag, a bad CRC, a value
 * out of range), with *r zeroed; a record of a newer version is
 * SEP_EUNSUPPORTED. Allocates separators, sep_ids, held and queue, never
 * more than len justifies; free them with sep_store_session_free. */
int sep_store_session_decode(sep_store_session_t *r, const uint8_t *buf, size_t len);

/* Free what decode allocated (not r itself) and NULL the pointers. */
void sep_store_session_free(sep_store_session_t *r);

/* Write r alone under r->name, replacing the record there. A record of
 * that name with another sid is SEP_EINVAL "session 'x' is sid 5 in the
 * store, not 7" (the old sid's data would be lost to the sweep); a sid
 * sep_store_alloc_sid did not hand out is SEP_EINVAL "... sid 9 was never
 * allocated" (it would be handed out again, and the data shared). */
int sep_store_put_session(sep_store_t *st, const sep_store_session_t *r);

/* The record named name into *out (free with sep_store_session_free).
 * SEP_ENOTFOUND when absent; SEP_EFORMAT "session 'x': ..." when damaged. */
int sep_store_get_session(sep_store_t *st, const char *name, sep_store_session_t *out);

/* Every record, in name order, into a malloc'ed array *out of *n (free it
 * with sep_store_sessions_free; *out is NULL when *n is 0). A record that
 * fails to decode does not hide the others: its entry has the name from its
 * key (clipped to SEP_NAME_MAX, control bytes as '?'), damaged = 1, the
 * reason in damage, and every other field zero. Fails only on a failure of
 * LMDB or of memory. */
int sep_store_sessions(sep_store_t *st, sep_store_session_t **out, size_t *n);
void sep_store_sessions_free(sep_store_session_t **list, size_t n);

/* Delete session name: its record first (one transaction), then the
 * snapshot blocks and archive entries of sid in transactions of bounded
 * size (an archive can hold millions of entries). sid 0 means the
 * record's own sid. A record that decodes to another sid than a nonzero
 * sid is SEP_EINVAL and nothing is deleted; a damaged record is deleted
 * with the data of sid (what remains of its own sid is swept at the next
 * open). Deleting what is not there is not an error, so a call that
 * failed half-way can be repeated; what a crash leaves is swept at the
 * next open. */
int sep_store_delete_session(sep_store_t *st, const char *name, uint32_t sid);

/* ---- snapshots ----------------------------------------------------------- */

typedef struct {
    const void *data;
    size_t len;
} sep_store_blob_t;

/* Checkpoint session r in ONE transaction: every stage's cache state
 * states[0..n_states) as blocks under r->sid (copied from the caller's
 * buffers straight into the pages LMDB reserves for them, checksummed on
 * the way; LMDB writes those pages to the file at commit), the blocks
 * of r->sid beyond the new counts deleted (a state that shrank, stages
 * that went away), and the record r. r->n_stages must be n_states and
 * r->state_len[i] states[i].len (SEP_EINVAL otherwise). A crash at any
 * point leaves the old checkpoint or the new one, entirely. r is checked
 * as by sep_store_put_session. A checkpoint more than one LMDB transaction
 * can hold is SEP_ERANGE. */
int sep_store_checkpoint(sep_store_t *st, const sep_store_session_t *r,
                         const sep_store_blob_t *states, int n_states);

/* Stage stage's cache state of the checkpoint r describes (r->sid,
 * r->state_len[stage]; r as returned by get_session or sessions) into a
 * malloc'ed *buf of r->state_len[stage] bytes (at least 1 byte is
 * allocated, so an empty state is a valid pointer too; the caller frees
 * it). Every block is checked: its key, length, count and CRC; a mismatch
 * is SEP_EFORMAT "session 'x' stage 1 block 7: checksum mismatch", "...
 * block 3 of 5 missing", "... block 4 of 5: truncated (...)", "... block 5:
 * past the end of the 1310600-byte state". *buf is NULL on failure. */
int sep_store_read_state(sep_store_t *st, const sep_store_session_t *r, int stage,
                         uint8_t **buf);

/* ---- the separator archive ----------------------------------------------- */

typedef struct {
    int64_t pos;      /* stream position, >= 0 */
    int32_t id;       /* token id */
    int32_t layer;    /* 0..65535 */
    int32_t kv_dim;   /* elements of K and of V, 1..65536 */
    int32_t dtype;    /* SEP_ARCHIVE_F32 or SEP_ARCHIVE_BF16 */
    const void *k, *v; /* kv_dim elements each; from a scan: into the map, aligned to
                          2 bytes only (memcpy them out) */
} sep_store_sep_t;

/* Append (or replace) n entries of session sid, in one transaction;
 * a batch too big for one LMDB transaction is split into several
 * (SEP_ERANGE only when a single entry does not fit), and then a failure
 * can leave the parts before it written. Write the session's record
 * before its first entries: entries of a sid without a record are swept
 * at the next open. A batch in ascending (pos, layer) order whose keys
 * come after everything in the archive is appended with MDB_APPEND (leaf
 * pages filled whole); any other batch is inserted (pages split in half,
 * so the archive of a session that is not the newest takes up to twice
 * the room). */
int sep_store_archive_put(sep_store_t *st, uint32_t sid, const sep_store_sep_t *e, size_t n);

/* Call fn on every entry of sid at positions [from, to), ascending by
 * position and then layer, only layer `layer` unless it is -1. e->k and
 * e->v point into the map and are valid during the call only; fn must not
 * call the store (a read transaction is open). A nonzero return of fn
 * stops the scan and is returned. A bad entry is SEP_EFORMAT "archive sid
 * 5 pos 1200 layer 3: checksum mismatch" (or what else is wrong); the
 * entries before it were passed to fn. */
int sep_store_archive_scan(sep_store_t *st, uint32_t sid, int64_t from, int64_t to, int layer,
                           int (*fn)(const sep_store_sep_t *e, void *arg), void *arg);

/* The number of entries a scan with these arguments would see (keys only:
 * values are not read nor checked). */
int sep_store_archive_count(sep_store_t *st, uint32_t sid, int64_t from, int64_t to, int layer,
                            uint64_t *n);

/* ---- export and import ---------------------------------------------------- */

/* An export stream holds one session: its record, snapshot and archive.
 *     header  "SEPDEXPT", uint32 version (1), uint32 0
 *     items   uint8 type, 3 zero bytes, uint32 key length, uint32 value
 *             length, key, value; type 1 the session record (first), 2 a
 *             snapshot block, 3 an archive entry, in key order; keys and
 *             values as stored (values keep their CRCs)
 *     end     type 0xFF, key length 0, value: uint64 records, uint64
 *             blocks, uint64 entries, uint32 CRC32C of every byte of the
 *             stream before this CRC
 * Little-endian. */
typedef struct sep_store_export sep_store_export_t;
typedef struct sep_store_import sep_store_import_t;

/* Start exporting session name. Each read opens and closes its own read
 * transaction and goes on from the last key it emitted, so the session
 * must not change until the export is closed: export a suspended session,
 * or one of a store no daemon writes. A change of its record between reads
 * fails the read with SEP_EINVAL. SEP_ENOTFOUND when there is no such
 * session, SEP_EFORMAT when its record is damaged. Works read-only. */
int sep_store_export_open(sep_store_t *st, const char *name, sep_store_export_t **ex);

/* The next bytes of the stream, up to cap (>= 1), into buf; *got == 0 at
 * its end. Every block and entry is checked on the way out: a damaged one
 * is SEP_EFORMAT naming it. A failure is final: later reads repeat it. */
int sep_store_export_read(sep_store_export_t *ex, void *buf, size_t cap, size_t *got);
void sep_store_export_close(sep_store_export_t **ex);

/* Start importing a stream as a new session named new_name (NULL: the
 * exported name) under a freshly allocated sid. A name in use is
 * SEP_EINVAL "session 'x' exists" (here when new_name is given, when the
 * record arrives otherwise, and again at finish). */
int sep_store_import_open(sep_store_t *st, const char *new_name, sep_store_import_t **im);

/* Feed the next len bytes of the stream: cut anywhere, in any number of
 * pieces. Each item's CRC is checked as it completes; snapshot blocks are
 * cut again into this store's block size (the exporter's page size may
 * differ) and written with the archive entries under the new sid, in
 * transactions of bounded size (a few MiB are kept in memory between
 * calls). A corrupt or out-of-order stream is SEP_EFORMAT "export stream:
 * item 3 (snapshot block) at offset 1234: ..."; the failure is final. */
int sep_store_import_write(sep_store_import_t *im, const void *buf, size_t len);

/* Check the end item (counts, stream CRC) and that each stage's blocks
 * add up to the record's state_len, then write the session record under
 * the new name and sid, state SEP_STORE_SUSPENDED, and return it in *out
 * (free with sep_store_session_free). Until then the store holds only
 * data without a record, which import_abort or the next open's sweep
 * deletes. A stream that ended early is SEP_EFORMAT "export stream:
 * truncated at offset N". */
int sep_store_import_finish(sep_store_import_t *im, sep_store_session_t *out);

/* Free the import; unless finish succeeded, first delete what it wrote
 * (what that fails to delete the next open sweeps). NULL is a no-op. */
void sep_store_import_abort(sep_store_import_t **im);

#endif
