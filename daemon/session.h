/* session.h: one unbounded text stream held by sepd.
 *
 * The daemon side of a session: its settings, the text held back by the
 * streaming tokenizer, the ids not yet run (the last of them waits for
 * its successor as target), the scoring counters, and the feed pieces
 * waiting for their acknowledgement. The caches live in the workers.
 *
 * Ids flow q[0..q_len): q[0..sent) are in batches in flight, the rest
 * wait; an id is runnable when the id after it exists. After a batch,
 * sep_session_scored() drops its ids from the front.
 */
#ifndef SEP_SESSION_H
#define SEP_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "proto.h"
#include "sample.h"
#include "separators.h"
#include "tokenizer.h"


typedef enum {
    SEP_SS_ACTIVE,      /* runs when it has ids */
    SEP_SS_SUSPENDING,  /* its caches are being saved */
    SEP_SS_SUSPENDED,   /* caches saved in the daemon, none in the workers */
    SEP_SS_RESUMING,    /* caches being loaded back */
    SEP_SS_CLOSING,     /* finishing its ids, then gone */
    SEP_SS_FAILED,      /* a forward failed; only close is possible */
} sep_ss_state_t;

typedef struct {
    int64_t seq;
    int64_t ids_end;     /* ids tokenized once the piece was */
    int64_t bytes_end;   /* text bytes tokenized once the piece was */
} sep_piece_t;

typedef struct {
    char name[SEP_NAME_MAX + 1];
    uint32_t sid;
    sep_ss_state_t state;
    sep_policy_t policy;          /* is_sep points into seps */
    char separators[64];          /* the separator spec it was opened with */
    sep_sepset_t seps;
    int32_t *sep_ids;             /* (n_sep_ids) ascending, for the workers */
    size_t n_sep_ids;
    /* text -> ids */
    char *held;                   /* (held_len) text the tokenizer holds back */
    size_t held_len;
    int tok_at;
    int32_t *q;                   /* (q_len) ids not yet scored */
    size_t q_len, q_cap, sent;
    int64_t ids_total;            /* ids over the session's life */
    /* counters */
    int64_t tokens;               /* ids scored */
    double nll_sum;
    int64_t kv_sum, kv_max, kv_last;
    int64_t bytes_in, bytes_tokenized, bytes_committed;
    double created;
    /* the client that owns the session's current operation */
    uint8_t owner[256];
    size_t owner_len;
    int owner_op;                 /* SEP_OWN_* */
    double owner_seen;
    int want_nll;
    float *out_nll;               /* (out_n) NLLs not yet sent to the owner */
    size_t out_n, out_cap;
    sep_piece_t pieces[SEP_FEED_WINDOW];
    int n_pieces;
    int feed_ending;              /* feed_end received: answer when pieces are done */
    /* generation */
    int64_t gen_left;
    float temperature, top_p;
    sep_rng_t rng;
    int gen_inflight;
    /* suspended caches, one per stage */
    uint8_t **saved;              /* (n_state) */
    size_t *saved_len;
    int n_state, state_got;
    int acks_wanted;              /* worker replies awaited by a control op */
} sep_session_t;

enum { SEP_OWN_NONE = 0, SEP_OWN_FEED, SEP_OWN_FLUSH, SEP_OWN_CLOSE, SEP_OWN_GENERATE,
       SEP_OWN_SUSPEND, SEP_OWN_RESUME, SEP_OWN_OPEN };

/* A session named name (checked with sep_name_ok)
 * under policy numbers p with the separator spec over tok. */
int sep_session_new(sep_session_t **out, const char *name, uint32_t sid, const sep_policy_t *p,
                    const char *separators, const sep_tok_t *tok);
void sep_session_destroy(sep_session_t **self_p);
const char *sep_session_state_name(sep_ss_state_t st);

/* Tokenize a piece of text (final: the end of the text so far, nothing
 * held back). Invalid UTF-8 fails with SEP_EUTF8 and changes nothing. */
int sep_session_ingest(sep_session_t *s, const sep_tok_t *tok, const char *text, size_t len,
                       int final);

/* Append one id (generation). */
int sep_session_push(sep_session_t *s, int32_t id);

/* Ids that can go into a batch now (each has its target). */
size_t sep_session_runnable(const sep_session_t *s);

/* k ids from the front were scored with these NLLs and cache sizes. */
int sep_session_scored(sep_session_t *s, size_t k, const float *nll, const int32_t *kv);

/* Drop what is owed to the owner (NLLs) and the owner itself. */
void sep_session_release(sep_session_t *s);

/* Free the suspended state. */
void sep_session_state_free(sep_session_t *s);

#endif
