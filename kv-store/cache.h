/* cache.h: the streaming KV cache of one stream, for a range of layers.
 *
 * Entries are kept in slot order in the regions
 *     [ initial (a) | separators (n_sep <= s) | recent ]
 * (the recent region is the past window and the local window of w: the
 * stream's newest tokens, consecutive) with each entry's token id and
 * stream position. The policy decides what a compaction keeps once the
 * cache holds more than c entries:
 *   full       nothing is ever evicted;
 *   streaming  the first a and the last c - a entries (StreamingLLM);
 *   sepllm     the first a, the newest s separators seen so far, the last w.
 *
 * Eviction costs what the prefix (initial and separators) holds, not c:
 * slot i lives in row lo + i of arrays of 2 (c + 1) rows, so the oldest
 * recent entries leave by lo moving up; a compaction rewrites only the
 * prefix, in the rows just before the recent region's first; when the
 * rows run out (every c + 1 tokens or so) the entries move down to row 0
 * in one copy. Rotary positions (shift on, positions are slots): only
 * differences of positions matter, and those within the recent region
 * never change as it slides, so a recent entry keeps the rotation of its
 * append, at its stream position less rope_off, and a query is rotated
 * the same way; a compaction re-rotates the prefix (from its unrotated
 * keys) at rope positions just below the recent region's. So slot i is at
 * rope position base + i for one base, as if it sat at i, for all i. With
 * shift off keys are rotated at their stream position and never again.
 *
 * Compaction points depend on token ids alone. sep_cache_plan() lays out a
 * chunk of ids as segments: tokens between two compactions, each followed
 * by the compaction that ends it. The model runs a segment's queries
 * against the cache as it is, appends the segment's K/V, then applies the
 * compaction; every result equals the one-token-per-step loop. The plan
 * also lists the separators each compaction evicts, whose rows the model
 * copies out for the separator archive before the compaction moves them.
 *
 * Runs: consecutive segments whose attention can go in one call. Within a
 * run no row is written but by appends (the recent region stays where it
 * is, and rows above it hold nothing yet), so once every token of the run
 * is appended, every entry that any of its segments sees is in a row as
 * it was at the run's start: a segment's own prefix is listed there (src)
 * for the model to copy out (and re-rotate) beside the others', and only
 * the run's last compaction is applied to the cache, from those rows. A
 * run ends before a segment that first moves the entries down, or where
 * its prefixes would take more rows than the caller allows.
 *
 * All of a cache's state is in the fields below (plain arrays and
 * counters), so it can be written out and read back exactly.
 */
#ifndef SEP_CACHE_H
#define SEP_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

typedef enum {
    SEP_METHOD_FULL = 0,
    SEP_METHOD_STREAMING = 1,
    SEP_METHOD_SEPLLM = 2,
} sep_method_t;

typedef struct {
    sep_method_t method;
    int a;                 /* initial entries kept forever */
    int s;                 /* separator region capacity (sepllm) */
    int w;                 /* local window kept by a compaction */
    int c;                 /* capacity: compact when the cache exceeds it */
    int shift;             /* 1: positions are cache slots; 0: stream positions */
    const uint8_t *is_sep; /* (n_vocab) 1 for separator ids (sepllm), not owned */
    int n_vocab;
} sep_policy_t;

/* Check a policy's parameters: sepllm needs a + s + w < c; streaming
 * needs w == c - a; a, s, w >= 0. Full ignores a/s/w/c. */
int sep_policy_check(const sep_policy_t *p);

/* Parse "full" / "streaming" / "sepllm". */
int sep_method_parse(const char *name, sep_method_t *out);
const char *sep_method_name(sep_method_t m);

typedef struct {
    sep_backend_t *be;
    sep_policy_t policy;
    int n_layers;      /* layers held */
    int kv_dim;        /* n_kv_heads * head_dim */
    int cap;           /* rows allocated per layer */
    int lo;            /* row of slot 0: the entries are rows [lo, lo + n) */
    int n;             /* entries in use */
    int n_sep;         /* entries in the separator region, slots [a, a + n_sep) */
    int64_t rope_off;  /* shift on: a token at stream position t is rotated at
                          t - rope_off (0 but in caches restored from version 1
                          states or rebased); shift off: 0 */
    float **k;         /* (n_layers) -> (cap, kv_dim) keys rotated at their position */
    float **k_raw;     /* (n_layers) -> (cap, kv_dim) unrotated keys; NULL unless
                          shift is on and entries can move */
    float **v;         /* (n_layers) -> (cap, kv_dim) values */
    int32_t *ids;      /* (cap) token id of the entry in each row */
    int64_t *pos;      /* (cap) stream position of the entry in each row */
    int64_t n_seen;    /* tokens appended over the stream's life */
} sep_cache_t;

/* Rows an evicting cache of capacity c allocates per layer. */
#define SEP_CACHE_ROWS(c) (2 * ((c) + 1))

/* One run of tokens between two compactions. */
typedef struct {
    int start, len;      /* tokens [start, start + len) of the chunk */
    int n_past;          /* entries in the cache before the segment */
    int lo;              /* row of slot 0 during the segment: its tokens' K/V go to
                            rows lo + n_past .. */
    int move_from;       /* >= 0: first the n_past entries move from rows
                            [move_from, move_from + n_past) down to [lo, ..)
                            (never overlapping); -1: they stay */
    int n_keep;          /* > 0: compaction after the segment keeps n_keep entries */
    int lo_after;        /* after it: the row of slot 0 */
    int n_pre;           /* the compaction rewrites slots [0, n_pre) (initial and
                            separators) at rows lo_after .., from rows pre */
    const int32_t *pre;  /* (n_pre) ascending rows, each at or before its new one */
    const int32_t *src;  /* (n_pre) the same entries' rows as they were at the start
                            of the segment's run (pre in a run's first segment):
                            ascending, each at or before its row after the compaction */
    int pre_at;          /* offset of pre in the plan's keep_buf and of src in src_buf:
                            the row of the plan's prefix rows (n_pre_rows) that holds
                            slot 0 of this compaction's prefix */
    int64_t pre_rope;    /* shift on: rope position of slot 0 after the compaction,
                            at which, plus the slot, the prefix is re-rotated */
    int n_evict;         /* separators the compaction evicts (sepllm: those beyond
                            the newest s) */
    int evict_at;        /* offset of them in the plan's evict_idx, _src, _id and _pos */
} sep_segment_t;

/* The plan of one chunk, and the cache's metadata after it. */
typedef struct {
    int n_tokens;
    int n_seg;
    sep_segment_t *seg;   /* (n_seg) */
    int64_t *rope_pos;    /* (n_tokens) rotary position of each token */
    int max_entries;      /* most entries held during the chunk */
    int rows;             /* rows the cache must hold (sep_cache_reserve) */
    int n_pre_rows;       /* the compactions' prefix entries, compaction after
                             compaction: sum of the segments' n_pre */
    int n_run;            /* runs of segments (sep_cache_plan's max_run_rows) */
    int *run_first;       /* (n_run + 1) run r is segments [run_first[r],
                             run_first[r + 1]) */
    int n, n_sep, lo;     /* after the chunk */
    int32_t *ids;         /* (rows) ids of the entries after the chunk, rows [lo, lo + n) */
    int64_t *pos;         /* (rows) their stream positions */
    /* The separators the chunk's compactions evict, segment after segment
     * (so in stream order); only sepllm evicts any. The arrays stay
     * unallocated while nothing is evicted. */
    int n_evict;
    int32_t *evict_idx;   /* (n_evict) the row to read it from before its compaction */
    int32_t *evict_src;   /* (n_evict) its row at the start of its segment's run */
    int32_t *evict_id;    /* (n_evict) token id */
    int64_t *evict_pos;   /* (n_evict) stream position, ascending */
    /* storage */
    int32_t *keep_buf, *src_buf; /* (keep_cap) the segments' pre and src lists */
    int32_t *orig;        /* (rows) planning: each row's entry's row at the run's start */
    int seg_cap, keep_cap, meta_cap, tok_cap, evict_cap;
} sep_plan_t;

int sep_cache_new(sep_cache_t **out, sep_backend_t *be, int n_layers, int kv_dim,
                  const sep_policy_t *policy);
void sep_cache_destroy(sep_cache_t **self_p);

/* Plan a chunk of n ids against the cache's current state. The plan's
 * buffers grow as needed and are reused across calls. max_run_rows bounds
 * the prefix rows of a run's compactions but its last (the rows a model
 * copies the prefixes of its segments after the first to): a segment
 * whose prefix would pass it starts a new run; 0 makes every segment a
 * run of its own. */
int sep_cache_plan(const sep_cache_t *c, const int32_t *ids, int n, int max_run_rows,
                   sep_plan_t *plan);
void sep_plan_free(sep_plan_t *plan);

/* The entries a cache allocates to hold `entries`: an evicting cache c + 1
 * at once, a full one 256 doubling (what sep_cache_reserve gives). */
int sep_cache_cap_for(const sep_policy_t *p, int cap_now, int entries);

/* Bytes of a cache of cap entries over n_layers layers of kv_dim: its K,
 * V (and raw K with shift on) rows, ids and positions. What a session
 * costs a stage, and what its saved state can reach. */
int64_t sep_cache_bytes(const sep_policy_t *p, int n_layers, int kv_dim, int cap);

/* Make room for `entries` entries per layer (keeps contents). */
int sep_cache_reserve(sep_cache_t *c, int entries);

/* The copies that move one layer's entries down before a segment
 * (seg->move_from >= 0: keys, values, raw keys), for the caller to run
 * with others in one copy_rows call; returns how many (0 to 3). */
int sep_cache_move_copies(const sep_cache_t *c, int layer, const sep_segment_t *seg,
                          sep_rows_t out[3]);

/* The gathers that rewrite one layer's prefix by a segment's compaction
 * (values, and keys or raw keys), for the caller to run with those of
 * other caches in one gather_rows call; returns how many (0 to 2).
 * Re-rotation of the prefix keys at pre_rope + slot (shift on) is the
 * model's, which knows the rotary map. */
int sep_cache_compact_gathers(const sep_cache_t *c, int layer, const sep_segment_t *seg,
                              sep_gather_t out[2]);

/* The same gathers when the compactions of seg's run before it were not
 * applied (the run's rows as they were at its start, its tokens appended):
 * from rows src; seg must be its run's last compaction. */
int sep_cache_run_gathers(const sep_cache_t *c, int layer, const sep_segment_t *seg,
                          sep_gather_t out[2]);

/* Slots [0, prefix) are the initial and separator entries (none for
 * full); the rest, the recent region, are the stream's newest tokens. */
int sep_cache_prefix(const sep_cache_t *c);

/* Rope position of slot 0 (shift on): slot i is at base + i. */
int64_t sep_cache_rope_base(const sep_cache_t *c);

/* After every layer ran the plan: adopt its metadata. */
void sep_cache_commit(sep_cache_t *c, const sep_plan_t *plan);

/* A cache's state as bytes, to suspend a stream and resume it exactly.
 * Little-endian, no padding:
 *     0  "SEPC"
 *     4  int32 version (2), method, a, s, w, c, shift, n_layers, kv_dim,
 *        n, n_sep, has_raw (1 when k_raw is written)
 *    52  int64 n_seen
 *    60  int64 rope_off
 *    68  int32 ids[n], int64 pos[n], then for each layer the n entries
 *        in slot order of k, k_raw (when has_raw) and v, kv_dim floats each.
 * Version 1 (written before eviction kept the recent region in place) has
 * no rope_off, its ids at 60, and keys rotated at their slot (shift on):
 * read as rope_off = (stream position of the first recent entry) - prefix.
 * The separator table is not written: the restoring cache keeps its own. */

/* Write c's whole state, rows downloaded from the backend, into a
 * malloc'ed buffer *buf of *len bytes (the caller frees it). */
int sep_cache_save(const sep_cache_t *c, uint8_t **buf, size_t *len);

/* The bytes of c's state now, and the same state written into buf, which
 * holds at least that many (SEP_EINVAL if cap is short; buf from the
 * backend's host_alloc downloads at full speed). */
size_t sep_cache_state_bytes(const sep_cache_t *c);
int sep_cache_save_to(const sep_cache_t *c, uint8_t *buf, size_t cap);

/* The n_seen of a state written by sep_cache_save (its header alone is
 * read); SEP_EFORMAT when buf is not such a state. */
int sep_cache_state_seen(const uint8_t *buf, size_t len, int64_t *n_seen);

/* Restore a state written by sep_cache_save into c, which must have been
 * made with the same policy numbers (method, a, s, w, c, shift), n_layers
 * and kv_dim. A state that does not fit c, or is truncated, oversized or
 * inconsistent, fails with SEP_EFORMAT; on any failure c is unchanged. */
int sep_cache_restore(sep_cache_t *c, const uint8_t *buf, size_t len);

#endif
