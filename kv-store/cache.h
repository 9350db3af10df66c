/* cache.h: the streaming KV cache of one stream, for a range of layers.
 *
 * Entries are kept in slot order in the regions
 *     [ initial (a) | separators (n_sep <= s) | past window | local window (w) ]
 * with each entry's token id and stream position. The policy decides what
 * a compaction keeps once the cache holds more than c entries:
 *   full       nothing is ever evicted;
 *   streaming  the first a and the last c - a entries (StreamingLLM);
 *   sepllm     the first a, the newest s separators seen so far, the last w.
 * Keys are stored rotated at their position (the slot index with shift on,
 * the stream position with it off); with shift on they are also kept
 * unrotated, so a compaction re-rotates moved keys exactly.
 *
 * Compaction points depend on token ids alone. sep_cache_plan() lays out a
 * chunk of ids as segments: tokens between two compactions, each followed
 * by the compaction that ends it. The model runs a segment's queries
 * against the cache as it is, appends the segment's K/V, then applies the
 * compaction; every result equals the one-token-per-step loop. The plan
 * also lists the separators each compaction evicts, whose rows the model
 * copies out for the separator archive before the compaction moves them.
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
    int cap;           /* entries allocated per layer */
    int n;             /* entries in use */
    int n_sep;         /* entries in the separator region [a, a + n_sep) */
    float **k;         /* (n_layers) -> (cap, kv_dim) keys rotated at their position */
    float **k_raw;     /* (n_layers) -> (cap, kv_dim) unrotated keys; NULL unless
                          shift is on and entries can move */
    float **v;         /* (n_layers) -> (cap, kv_dim) values */
    int32_t *ids;      /* (cap) token id of each entry */
    int64_t *pos;      /* (cap) stream position of each entry */
    int64_t n_seen;    /* tokens appended over the stream's life */
} sep_cache_t;

/* One run of tokens between two compactions. */
typedef struct {
    int start, len;      /* tokens [start, start + len) of the chunk */
    int n_past;          /* entries in the cache before the segment */
    int n_keep;          /* > 0: compaction after the segment keeps n_keep entries */
    const int32_t *keep; /* (n_keep) ascending indices of the kept entries */
    int first_moved;     /* first kept slot whose entry moved (n_keep: none) */
    int keep_at;         /* offset of keep in the plan's keep_buf */
    int n_evict;         /* separators the compaction evicts (sepllm: those beyond
                            the newest s) */
    int evict_at;        /* offset of them in the plan's evict_idx, _id and _pos */
} sep_segment_t;

/* The plan of one chunk, and the cache's metadata after it. */
typedef struct {
    int n_tokens;
    int n_seg;
    sep_segment_t *seg;   /* (n_seg) */
    int64_t *rope_pos;    /* (n_tokens) rotary position of each token */
    int max_entries;      /* most entries held during the chunk */
    int n, n_sep;         /* after the chunk */
    int32_t *ids;         /* (n) ids of the entries after the chunk */
    int64_t *pos;         /* (n) their stream positions */
    /* The separators the chunk's compactions evict, segment after segment
     * (so in stream order); only sepllm evicts any. The arrays stay
     * unallocated while nothing is evicted. */
    int n_evict;
    int32_t *evict_idx;   /* (n_evict) entry index before its compaction, the row
                             to read it from then */
    int32_t *evict_id;    /* (n_evict) token id */
    int64_t *evict_pos;   /* (n_evict) stream position, ascending */
    /* storage */
    int32_t *keep_buf;
    int seg_cap, keep_cap, meta_cap, tok_cap, evict_cap;
} sep_plan_t;

int sep_cache_new(sep_cache_t **out, sep_backend_t *be, int n_layers, int kv_dim,
                  const sep_policy_t *policy);
void sep_cache_destroy(sep_cache_t **self_p);

/* Plan a chunk of n ids against the cache's current state. The plan's
 * buffers grow as needed and are reused across calls. */
int sep_cache_plan(const sep_cache_t *c, const int32_t *ids, int n, sep_plan_t *plan);
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

/* The gathers that compact one layer by a segment's keep list (values,
 * and keys or raw keys), for the caller to run with those of other
 * caches in one gather_rows call; returns how many (0 to 2). Re-rotation
 * of moved keys (shift on) is the model's, which knows the rotary map. */
int sep_cache_compact_gathers(const sep_cache_t *c, int layer, const sep_segment_t *seg,
                              sep_gather_t out[2]);

/* After every layer ran the plan: adopt its metadata. */
void sep_cache_commit(sep_cache_t *c, const sep_plan_t *plan);

/* A cache's state as bytes, to suspend a stream and resume it exactly.
 * Little-endian, no padding:
 *     0  "SEPC"
 *     4  int32 version (1), method, a, s, w, c, shift, n_layers, kv_dim,
 *        n, n_sep, has_raw (1 when k_raw is written)
 *    52  int64 n_seen
 *    60  int32 ids[n], int64 pos[n], then for each layer the n rows in
 *        use of k, k_raw (when has_raw) and v, kv_dim floats each.
 * The separator table is not written: the restoring cache keeps its own. */

/* Write c's whole state, rows downloaded from the backend, into a
 * malloc'ed buffer *buf of *len bytes (the caller frees it). */
int sep_cache_save(const sep_cache_t *c, uint8_t **buf, size_t *len);

/* The n_seen of a state written by sep_cache_save (its header alone is
 * read); SEP_EFORMAT when buf is not such a state. */
int sep_cache_state_seen(const uint8_t *buf, size_t len, int64_t *n_seen);

/* Restore a state written by sep_cache_save into c, which must have been
 * made with the same policy numbers (method, a, s, w, c, shift), n_layers
 * and kv_dim. A state that does not fit c, or is truncated, oversized or
 * inconsistent, fails with SEP_EFORMAT; on any failure c is unchanged. */
int sep_cache_restore(sep_cache_t *c, const uint8_t *buf, size_t len);

#endif
