/* daemon.h: what sepd's parts share. One thread runs all of them, so
 * nothing here is locked.
 *
 *   sepd.c      process setup, the poll loop, shutdown
 *   clients.c   the client verbs: requests in, replies out (outbox.c)
 *   control.c   the session state machine: sepd_step() is its one
 *               transition function; the workers' answers to control ops
 *   sched.c     batches: building them (continuous batching), their results
 *   generate.c  generation steps: the tokens picked, the text they add, where
 *               they end (stop.c matches the stop strings)
 *   session.c   one session's text, ids and counters
 *   pool.c      the worker processes; conf.c the settings
 *   quota.c     the limits (quota.h): sessions, caches, pending text, clients
 *   auth.c      who may connect, and who each client is (the auth thread);
 *               access.c which identity may use which session
 *   recover.c   worker faults: the pool killed, started again, the sessions
 *               reloaded from their checkpoints
 *   signals.c   SIGTERM, SIGINT (shutdown), SIGHUP (the log reopened)
 */
#ifndef SEPD_DAEMON_H
#define SEPD_DAEMON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "config.h"
#include "outbox.h"
#include "pool.h"
#include "proto.h"
#include "session.h"
#include "store.h"
#include "tokenizer.h"

#define SEPD_FEED_LEASE 5.0      /* seconds a silent feeder keeps its session */
#define SEPD_HEARTBEAT_S 2.0     /* a waiting client hears from sepd this often */
#define SEPD_MAX_GENERATE 1000000
#define SEPD_OUTBOX_MAX 1024     /* replies a client may leave unread */
#define SEPD_FLIGHT_SAVING 16   /* batches more in flight while a checkpoint's states come */
#define SEPD_ARCHIVE_BATCH (16u << 20) /* bytes of archive rows one job writes at most */
#define SEPD_ARCHIVE_DELAY_S 0.25      /* how long they wait for more */
#define SEPD_ARCHIVE_BACKLOG (256u << 20) /* rows waiting for the store before archiving
                                            sessions wait for it */
#define SEPD_SEPS_MAX 65536     /* positions of one seps listing reply */
#define SEPD_SEPS_PAGE (16 << 20) /* bytes of rows one seps data reply holds at most */
#define SEPD_SPIN_AUTO_US 20000 /* poll_spin_us = auto on a GPU */
#define SEPD_FEED_BROKEN 2       /* op.ending: a piece was refused, no feed_end reply */

typedef struct {
    uint32_t sid;
    int off, n;       /* rows [off, off + n) of the batch */
    int gen;          /* a generation step: the token the last stage picked */
    int archive;      /* SEP_ARCHIVE_*: the stages ship the separators it evicts */
    /* a run ahead (sched.c): the lone stage may take up to `ahead` steps
     * on its own picks; `ran` of them came back as w_step so far */
    int ahead, ran;
    int draws;        /* its steps draw from the session's generator (sampled) */
    int eos;          /* the eos ids went with it: the stage stops at one */
    int yielded;      /* w_yield went */
} sepd_bchunk_t;

typedef struct {
    int64_t seq;
    int nc;
    int n_gen;          /* chunks that are generation steps */
    sepd_bchunk_t *ch;  /* (nc) */
} sepd_batch_t;

typedef struct {
    uint8_t id[256];
    size_t len;
} sepd_peer_t;

/* One round of w_stats, answering every client that asked during it. */
typedef struct {
    sepd_peer_t *waiting;     /* (n_waiting) */
    size_t n_waiting, cap_waiting;
    uint64_t asked, answered; /* rank sets */
    json_t *workers;          /* array by rank */
} sepd_stats_t;

struct sepd_storer;
struct sepd_known;
struct sepd_auth;

/* Where a restart of the workers after a fault is (recover.c). */
enum {
    SEPD_RECOVER_NONE = 0,  /* the workers serve */
    SEPD_RECOVER_DRAIN,     /* killed; the store thread finishes its jobs */
    SEPD_RECOVER_WAIT,      /* the backoff before the next start */
    SEPD_RECOVER_START,     /* a new pool starts */
    SEPD_RECOVER_RELOAD,    /* the sessions come back from the store */
};

typedef struct sepd {
    sep_conf_t conf;
    struct sepd_auth *auth;   /* ZAP handler, key lists, identities (auth.h) */
    struct sepd_storer *storer;  /* the store thread (persist.c) */
    struct arch_job *arch;    /* archive rows waiting for their job */
    struct sepd_import **imports; /* (n_imports) imports under way (transfer.c) */
    size_t n_imports, cap_imports;
    uint64_t arch_entries, arch_bytes;  /* written to the archive so far */
    double arch_seconds;      /* the store thread's time on them */
    size_t arch_backlog;      /* bytes of archive jobs at the store thread */
    uint64_t ckpt_count, ckpt_bytes;    /* checkpoints written, their states' bytes */
    double ckpt_seconds;      /* the store thread's time on them */
    int store_lock_fd;
    uint8_t model_fp[32];     /* the model's fingerprint (fingerprint.h) */
    char run_dir[4096], lock_path[4200];
    int lock_fd, sig_fd;
    void *zctx, *clients;
    sepd_outbox_t *out;
    struct sepd_known *known; /* the clients at once (quota.c) */
    struct sepd_gone *gone;   /* (n_gone) clients a reply found gone, handled by the
                                 loop (sepd_gone_drain), never inside the reply */
    size_t n_gone, cap_gone;
    sep_pool_t *pool;
    sep_tok_t *tok;
    int eos[SEP_EOS_MAX];     /* (n_eos) the model's end-of-sequence ids (config.h) */
    int n_eos;
    sep_session_t **sess;     /* (n_sess) */
    size_t n_sess, cap_sess;
    sepd_batch_t *flight;     /* (max_flight) FIFO of batches in flight */
    int n_flight, max_flight; /* stages + batches_ahead, + SEPD_FLIGHT_SAVING while a
                                 checkpoint's states are on their way */
    int64_t next_seq;
    int32_t *ids, *targets;   /* (max_batch) a batch being built */
    uint8_t *picks;           /* (max_batch * SEP_PICK_WIRE) its picks, on the wire */
    int32_t *recent;          /* (recent_cap) the recent ids its picks count */
    size_t recent_cap;
    size_t rr;                /* round-robin start */
    int id_limit;             /* generation picks ids below it that the tokenizer has ... */
    int32_t *holes;           /* (n_holes) ... but these, which it has not */
    int n_holes;
    sepd_stats_t stats;
    double workers_heard;     /* last word from a worker, or when they got work */
    double heartbeat_t;
    /* requests that could not be served, logged at most every few seconds */
    uint64_t bad_requests, bad_logged;
    double bad_log_t;
    /* throughput */
    int64_t tokens_total;
    /* where the loop's time goes (stats): the answers of batches, and
     * building and sending batches; batches sent */
    double done_s, sched_s;
    uint64_t batches_sent;
    /* runs ahead (sched.c): granted, steps taken past each one's first,
     * ended early by a w_yield */
    uint64_t ahead_runs, ahead_steps, ahead_yields;
    uint64_t *draws;          /* (conf.decode_ahead) a run's draws, being sent */
    int spin_us;              /* poll_spin_us resolved: 0 never spins */
    double spin_since;        /* when the wait for a generation step began spinning */
    double started, rate_t0, rate;
    int64_t rate_tok0;
    int stop;                 /* 1: leave the loop */
    int stopping;             /* SIGTERM: checkpointing every session, then stop */
    double stop_by;           /* when stopping gives up waiting */
    int failed;               /* a runtime error: exit 1 */
    /* worker faults (recover.c) */
    sep_pool_opts_t pool_opts; /* how the pool is started (strings are conf's) */
    int pool_vocab;           /* the first pool's vocabulary: a new one must match */
    int recover;              /* SEPD_RECOVER_* */
    char fault_why[512];      /* the last fault */
    uint64_t faults, restarts;
    int faults_row;           /* faults since the workers last served SEPD_FAULT_CALM_S */
    double restart_at;        /* WAIT: when the next start may begin */
    double recovered_at;      /* when the workers last came back */
    double stages_checked;    /* when the stages' processes were last looked at */
} sepd_t;

/* ---- clients.c ---- */
void sepd_client_msg(sepd_t *d);
/* Serve a request that waited for an op to end (it is not a reply). */
void sepd_redo(sepd_t *d, const uint8_t *peer, size_t peer_len, const char *user, json_t *hdr);
/* A reply to peer (hdr's reference is taken). A peer found gone is noted
 * and handled by the loop once the current message is done
 * (sepd_gone_drain): a reply never ends an op or steps a session under its
 * caller, which may go on using both. */
void sepd_send(sepd_t *d, const uint8_t *peer, size_t peer_len, json_t *hdr,
               const sep_frame_t *frames, int n);
void sepd_error(sepd_t *d, const uint8_t *peer, size_t peer_len, const char *op,
                const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The session's figures, as info and ls report them. */
json_t *sepd_info(const sep_session_t *s);
/* Reply to the op's client: op, the figures, extra (taken), the NLLs owed. */
void sepd_op_reply(sepd_t *d, sep_session_t *s, const char *op, json_t *extra);
/* Whether m carries one piece of at most SEP_FEED_PIECE bytes; if not, an
 * error to m's client. */
int sepd_piece_ok(sepd_t *d, const sep_msg_t *m);
/* An error to the client of the request that waits for the op (if one does). */
void sepd_next_error(sepd_t *d, sep_session_t *s, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* An error to the op's client (when there is one). */
void sepd_op_error(sepd_t *d, sep_session_t *s, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A client found gone: cancel what it waited for. Only where nothing
 * up the stack holds a session or op (the loop, heartbeats). */
void sepd_peer_gone(sepd_t *d, const uint8_t *peer, size_t peer_len);
/* The clients replies found gone since the last call: sepd_peer_gone
 * for each (the loop calls it between messages). */
void sepd_gone_drain(sepd_t *d);
/* Heartbeats to clients that wait (finds vanished ones). */
void sepd_heartbeats(sepd_t *d);
/* Tell every waiting client why sepd stops (code, message). */
void sepd_fail_all(sepd_t *d, const char *code, const char *why);
void sepd_stats_ack(sepd_t *d, const sep_msg_t *m, int rank);
/* Answer the stats round under way without the workers (they are gone). */
void sepd_stats_unanswered(sepd_t *d);

/* ---- recover.c ---- */
/* A fault of the workers (why): kill the pool, start it again, reload
 * every session from its last checkpoint; clients are told (worker_fault). */
void sepd_fault(sepd_t *d, const char *why);
/* The loop, every turn: the liveness check, or the next step of a restart. */
void sepd_recover_tick(sepd_t *d);
/* A message on the pool's socket while recovering (hellos of the new pool). */
void sepd_recover_msg(sepd_t *d, sep_msg_t *m);
/* Dead or hung workers: why, in *why; 0 while they serve. */
int sepd_workers_lost(sepd_t *d, char *why, size_t cap);
/* While recovering: refuse m (1) unless it is ls, info, stats, ping, ack
 * or cancel; while shutting down, unless it is ls, stats or ping. */
int sepd_recover_refuses(sepd_t *d, const sep_msg_t *m);
/* stats' "recovery" object. */
json_t *sepd_recover_stats(const sepd_t *d);
const char *sepd_recover_name(int phase);

/* ---- signals.c ---- */
/* Block SIGTERM, SIGINT and SIGHUP for a signalfd (d->sig_fd). */
int sepd_signals(sepd_t *d);
/* The signalfd is readable: shutdown (SIGTERM, SIGINT), the log (SIGHUP). */
void sepd_signal_msg(sepd_t *d);

/* ---- access.c ---- */
/* Whether m's sender may use s; if not, a "denied" error to it. */
int sepd_access(sepd_t *d, const sep_session_t *s, const sep_msg_t *m);
/* Whether m's sender sees s in ls. */
int sepd_visible(const sepd_t *d, const sep_session_t *s, const sep_msg_t *m);
/* open: s belongs to m's sender (shared when m asks). */
void sepd_access_own(sepd_t *d, sep_session_t *s, const sep_msg_t *m);
/* The share op: mark the session shared or not (its owner, an operator). */
void sepd_share(sepd_t *d, const sep_msg_t *m);
/* The signal loop's SIGHUP hook: re-read what may be re-read. */
void sepd_hup(sepd_t *d);

/* ---- control.c ---- */
sep_session_t *sepd_find(sepd_t *d, const char *name);
sep_session_t *sepd_find_sid(sepd_t *d, uint32_t sid);
int sepd_add(sepd_t *d, sep_session_t *s);
/* The one transition function: advance s as far as its state allows.
 * Returns 1 when s is gone (closed; the pointer is then invalid). */
int sepd_step(sepd_t *d, sep_session_t *s);
/* End s's op and serve a request that waited for it; 1: s is gone. */
int sepd_op_finish(sepd_t *d, sep_session_t *s);
/* Ask the stages in ranks for a control op about s. */
int sepd_ctl_send(sepd_t *d, sep_session_t *s, sep_wait_t kind, uint64_t ranks);
/* A worker's answer (or w_error) to a control op. */
void sepd_control_msg(sepd_t *d, sep_msg_t *m, int rank);
/* The store thread's answer to s's job (persist.h); rec: the record a
 * checkpoint wrote. */
void sepd_store_answer(sepd_t *d, sep_session_t *s, sep_sj_t kind, int rc, const char *error,
                       const sep_store_session_t *rec);
/* s cannot go on (a failed batch): end its op with why; only close works. */
void sepd_session_failed(sepd_t *d, sep_session_t *s, const char *why);
/* Whether work is asked of the workers and not answered (the watchdog). */
int sepd_workers_owe(const sepd_t *d);

/* ---- sched.c ---- */
void sepd_schedule(sepd_t *d);
void sepd_batch_done(sepd_t *d, const sep_msg_t *m);
void sepd_batch_failed(sepd_t *d, const sep_msg_t *m);
/* w_step: one step of the run ahead in flight came back; the worker goes on. */
void sepd_batch_step(sepd_t *d, const sep_msg_t *m);
/* A run ahead that should end (its generation stopped or waits, a
 * checkpoint or a suspend is due) is told to: w_yield, once. */
void sepd_ahead_yields(sepd_t *d);

/* ---- generate.c ---- */
/* Whether s may take a generation step now: its text is scored, nothing
 * is in flight, and its client has room in its window. */
int sepd_gen_ready(const sepd_t *d, const sep_session_t *s);
/* The generate op's replies that are due (the NLLs of the text's end,
 * the final one); 1: s is gone. */
int sepd_gen_progress(sepd_t *d, sep_session_t *s);
/* A step came back: its token (picked by the last stage), scored, goes on. */
void sepd_generated(sepd_t *d, sep_session_t *s, int32_t next, float next_nll, int32_t kv);
/* Where generate request m ends: its "stop" strings (*stop, NULL when none;
 * the caller owns it) and "ignore_eos". 0, or -1 after an error reply. */
int sepd_gen_stops(sepd_t *d, const sep_msg_t *m, sep_stop_t **stop, int *ignore_eos);

#endif
