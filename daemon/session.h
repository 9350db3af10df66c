/* session.h: one unbounded text stream held by sepd.
 *
 * The daemon side of a session: its settings, the text held back by the
 * streaming tokenizer, the ids not yet run (the last of them waits for
 * its successor as target), the scoring counters, and two pieces of
 * explicit state (the caches live in the workers):
 *
 *   op   what a client asked and waits for (one at a time: feed, flush,
 *        generate, suspend, resume, close, open), with who asked;
 *   ctl  what the session waits for from the workers (w_open, w_save,
 *        w_load, w_close): the ranks asked, those that answered, those
 *        that failed.
 *
 * Both only change in the daemon's transition function (control.c).
 *
 * Ids flow q[0..q_len): q[0..sent) are in batches in flight, the rest
 * wait; an id is runnable when the id after it exists. After a batch,
 * sep_session_scored() drops its ids from the front.
 */
#ifndef SEP_SESSION_H
#define SEP_SESSION_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "proto.h"
#include "sample.h"
#include "separators.h"
#include "stop.h"
#include "tokenizer.h"

typedef enum {
    SEP_SS_OPENING,     /* w_open sent; active once every stage holds the cache */
    SEP_SS_ACTIVE,      /* its caches are in the workers; runs when it has ids */
    SEP_SS_SUSPENDED,   /* its caches are saved in the daemon, none in the workers */
    SEP_SS_FAILED,      /* a forward or a control op failed half way; only close works */
} sep_ss_state_t;

/* A client's operation on the session. */
typedef enum {
    SEP_SOP_NONE = 0,
    SEP_SOP_OPEN,       /* waits for w_open everywhere */
    SEP_SOP_FEED,       /* pieces of text, each acknowledged once scored; feed_end ends it */
    SEP_SOP_FLUSH,      /* the held tail tokenized and scored */
    SEP_SOP_GENERATE,   /* tokens, each a reply, at most window unacknowledged */
    SEP_SOP_SUSPEND,    /* w_save everywhere, then w_close */
    SEP_SOP_RESUME,     /* w_load everywhere */
    SEP_SOP_CLOSE,      /* the tail scored, then w_close everywhere, then gone */
    SEP_SOP_EXPORT,     /* its store data streamed out, a chunk per request */
} sep_sop_t;

/* What the session waits for from the workers. */
typedef enum {
    SEP_WAIT_NONE = 0,
    SEP_WAIT_OPEN,
    SEP_WAIT_SAVE,
    SEP_WAIT_LOAD,
    SEP_WAIT_CLOSE,
} sep_wait_t;

/* What the session waits for from the store thread (persist.c). */
typedef enum {
    SEP_SJ_NONE = 0,
    SEP_SJ_CREATE,      /* a sid and the empty session's record */
    SEP_SJ_WRITE,       /* a checkpoint: record and states of a cut */
    SEP_SJ_READ,        /* the states of the last checkpoint, for w_load */
    SEP_SJ_DELETE,      /* record, snapshot and archive: the session is closed */
} sep_sj_t;

/* After a w_close: what the session becomes. */
typedef enum {
    SEP_THEN_GONE = 0,  /* removed (close, or an open that failed) */
    SEP_THEN_SUSPENDED, /* suspend, or a resume that failed on some stage */
} sep_then_t;

/* What ended a generation (besides a cancel). */
typedef enum {
    SEP_GEN_LENGTH = 0, /* its n tokens */
    SEP_GEN_EOS,        /* one of the model's eos ids */
    SEP_GEN_STOP,       /* a stop string */
} sep_gen_end_t;

typedef struct {
    int64_t seq;
    int64_t ids_end;     /* ids tokenized once the piece was */
    int64_t bytes_end;   /* text bytes tokenized once the piece was */
    int64_t len;         /* its bytes (max_pending_bytes counts them) */
} sep_piece_t;

typedef struct {
    sep_sop_t kind;
    uint8_t peer[256];            /* routing id of the client that asked */
    size_t peer_len;              /* 0: nobody waits (it went away) */
    double seen;                  /* when that client last sent a message */
    int want_nll;                 /* the client takes the NLLs scored for it */
    int keep_nll;                 /* ... and confirms them (kept_nll until then) */
    /* feed */
    sep_piece_t pieces[SEP_FEED_WINDOW];
    int n_pieces;
    int ending;                   /* 1: feed_end received, answer when the pieces are
                                     done; 2 (SEPD_FEED_BROKEN): a piece was refused */
    int64_t base;                 /* bytes_in when the feed began (client offsets) */
    /* generate */
    int64_t left;                 /* tokens still to make */
    int64_t made, acked;          /* tokens sent to the client, and acknowledged */
    int window;                   /* most tokens unacknowledged */
    int tail_sent;                /* the NLLs of the text's end went out */
    sep_stop_t *stop;             /* its stop strings (NULL: none; op_end frees it) */
    int ignore_eos;               /* the model's eos ids do not end it */
    sep_gen_end_t stopped;        /* what ended it */
    int stop_hit;                 /* "stop": which stop string */
    int32_t stop_token;           /* "eos": which id */
    /* close, flush or generate of an incomplete final character */
    int64_t dropped;              /* bytes dropped at the text's end */
    /* an error for the client once the workers have undone the op's half */
    char error[512];
    /* feed_end, flush: the reply waits until a checkpoint holds this many bytes */
    int64_t durable_at, durable_tokens;
    int checkpointed;             /* suspend: its checkpoint is written */
    /* a request of the same client that waits for this op to end */
    json_t *next;
    uint8_t next_peer[256];
    size_t next_peer_len;
    char next_user[SEP_USER_MAX]; /* its sender's identity */
} sep_op_t;

typedef struct {
    sep_wait_t kind;
    uint64_t asked, answered, failed;   /* rank sets */
    char error[400];                    /* the first failure, as its rank said it */
    sep_then_t then;                    /* for SEP_WAIT_CLOSE */
    double since;                       /* when it was sent */
} sep_ctl_t;

typedef struct {
    char name[SEP_NAME_MAX + 1];
    uint32_t sid;
    char owner[SEP_USER_MAX];     /* the identity that opened it (auth.h) */
    int shared;                   /* 1: every identity may use it and see it in ls */
    sep_ss_state_t state;
    sep_policy_t policy;          /* is_sep points into seps */
    char *separators;             /* the separator spec it was opened with */
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
    /* the client's operation and the workers' */
    sep_op_t op;
    sep_ctl_t ctl;
    double ctl_since;             /* when the last control op that ended was sent */
    char ctl_error[512];          /* a failure kept while the workers undo it */
    float *out_nll;               /* (out_n) NLLs not yet sent to the op's client */
    size_t out_n, out_cap;
    /* feed --retry: the NLLs sent that its client has not confirmed
       (nll_have), tokens kept_at + 1 .. kept_at + kept_n; checkpoints hold them,
       so a client that reconnects after a restart gets each NLL once */
    float *kept_nll;              /* (kept_n) */
    size_t kept_n, kept_cap;
    int64_t kept_at;
    /* the sampler: its settings outlive a generate, as its state does */
    sep_rng_t rng;
    sep_pick_t sampler;           /* the last generate's settings (no ids, no draw) */
    int32_t penalty_window;       /* the last ids its penalties count */
    int32_t recent[SEP_PICK_MAX_RECENT]; /* the stream's last ids: id k (from 0, of
                                     ids_total) at k % SEP_PICK_MAX_RECENT ... */
    int64_t recent_from;          /* ... from this one on (0, or where a record began) */
    int gen_inflight;             /* a generation step is in a batch (its token is
                                     the stream's even if nobody waits for it) */
    /* durability (persist.c) */
    uint32_t archive;             /* SEP_ARCHIVE_* of store.h */
    sep_sj_t sj;                  /* the store job under way */
    int ckpt_want;                /* a checkpoint is due: batches wait for its cut */
    int hold;                     /* brought back from the store: runs nothing until a
                                     client's op begins */
    int recovering;               /* a worker fault: the session waits to be reloaded from
                                     the store (recover.c); info says "recovering" */
    int reviving;                 /* active, brought back at start: its caches are being
                                     loaded into the workers (no op holds it, so a client
                                     may feed it meanwhile: its ids wait) */
    struct sep_ckpt *cut;         /* the checkpoint being taken: its record and the
                                     stages' states as they arrive */
    struct sep_ckpt *loaded;      /* resume: the states read back, until w_load goes */
    int64_t committed_bytes;      /* bytes_in at the last durable checkpoint */
    int64_t committed_tokens;     /* tokens then */
    double committed_at;          /* when it was taken (monotonic); 0: never */
    double ckpt_cost;             /* seconds the last one's states took from the stages */
    double ckpt_tried_at;         /* when the last one that came due began (monotonic) */
    int64_t checkpoints;          /* checkpoints written over the session's life */
    int n_stages_saved;           /* stages in the store's snapshot (0: none) */
    int64_t saved_bytes;          /* bytes of its cache states there */
    char ckpt_error[512];         /* the last checkpoint that failed, "" if none */
    char foreign[300];            /* why this sepd cannot load its snapshot, "" if it can */
    void *exporting;              /* export: the store's cursor between chunks */
    int64_t export_at;            /* bytes of the export sent */
    int export_reading;           /* a chunk is being read */
} sep_session_t;

/* A session named name (checked with sep_name_ok) under policy numbers p
 * with the separator spec over tok, for a model of n_vocab ids. */
int sep_session_new(sep_session_t **out, const char *name, uint32_t sid, const sep_policy_t *p,
                    const char *separators, const sep_tok_t *tok, int n_vocab);
void sep_session_destroy(sep_session_t **self_p);
const char *sep_session_state_name(sep_ss_state_t st);
const char *sep_sop_name(sep_sop_t op);

/* Tokenize a piece of text. final: the text so far ends here, nothing is
 * held back; an incomplete UTF-8 character at its very end is dropped
 * (*dropped, may be NULL, gets its byte count), as sepctl eval drops it.
 * Invalid UTF-8 fails with SEP_EUTF8, *bad_at the offset of its first
 * byte in the session's text, and changes nothing; a piece over
 * SEP_FEED_PIECE bytes is SEP_ERANGE. */
int sep_session_ingest(sep_session_t *s, const sep_tok_t *tok, const char *text, size_t len,
                       int final, int64_t *bad_at, int64_t *dropped);

/* Append one id (generation). */
int sep_session_push(sep_session_t *s, int32_t id);

/* The stream's last ids, at most max of them (<= SEP_PICK_MAX_RECENT), in
 * order into out; returns how many. */
int sep_session_recent(const sep_session_t *s, int max, int32_t *out);

/* Ids that can go into a batch now (each has its target). */
size_t sep_session_runnable(const sep_session_t *s);

/* Nothing in flight and nothing runnable. */
int sep_session_idle(const sep_session_t *s);

/* k ids from the front were scored with these NLLs and cache sizes;
 * owed: keep the NLLs for the op's client (when it wants them). */
int sep_session_scored(sep_session_t *s, size_t k, const float *nll, const int32_t *kv,
                       int owed);

/* The NLLs a reply sends (out_nll) were sent: keep them until confirmed
 * when the op's client confirms (keep_nll). */
int sep_session_nll_sent(sep_session_t *s);

/* The op's client has the NLLs of the first `have` tokens: drop them from
 * kept_nll. */
void sep_session_nll_have(sep_session_t *s, int64_t have);

/* End the op: forget its client, what is owed to it, a waiting request. */
void sep_session_op_end(sep_session_t *s);


#endif
