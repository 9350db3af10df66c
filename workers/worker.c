/* sepd-worker: one pipeline stage of sepd.
 *
 * A worker holds layers [layer0, layer1) of the model and, for every open
 * session, the cache of those layers. It connects to the daemon's worker
 * endpoint (a ZeroMQ DEALER), says hello, then serves the daemon's ops in
 * the order they arrive (docs/protocol.md). Started by sepd itself for one
 * stage; for N stages the workers are the ranks of one Open MPI job, rank
 * r running stage r, and each batch's hidden states go from rank r to
 * r + 1 as MPI messages. Only the last stage answers a batch.
 *
 * Exit codes: 0 after w_exit or when the daemon is gone, 1 a runtime
 * error at start (model, device, connection), 2 a usage error.
 */
#include "backend.h"
#include "cache.h"
#include "err.h"
#include "log.h"
#include "model.h"
#include "proto.h"
#include "keys.h"
#include "sample.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define WK_POLL_MS 1000 /* how often a worker checks that the daemon lives */
#define WK_SPIN_AUTO_US 2000 /* --spin-us by default on a GPU */
#define WK_CACHE_AUTO_PERCENT 50 /* --cache-memory 0 on the CPU: this share of the memory
                                    available at start, over the ranks of this host */

typedef struct {
    uint32_t sid;
    sep_cache_t *cache;
    uint8_t *is_sep;      /* (vocab) separator table of the session's policy */
} wk_session_t;

typedef struct {
    void *zctx, *sock;
    int rank, stages, mpi;
    pid_t daemon_pid;
    sep_backend_t *be;
    sep_model_t *m;
    wk_session_t *sess;   /* (n_sess) open sessions */
    int n_sess, cap_sess;
    float *x;             /* (max_tokens, dim) host hidden states in or out */
    sep_chunk_t *chunks;  /* (max_tokens) a batch's chunks */
    float *nll;           /* (max_tokens) */
    int32_t *kv;          /* (max_tokens) */
    int32_t *next;        /* (max_tokens) tokens picked for a batch's chunks that ask */
    float *next_nll;      /* (max_tokens) their nlls */
    sep_pick_t *picks;    /* (max_tokens) how they pick */
    int *archive;         /* (max_tokens) a batch's chunks: 0, or the dtype of their archive */
    uint32_t *chunk_sid;  /* (max_tokens) a batch's chunks: their sessions */
    void *arch;           /* w_archive frames being built, grown on demand */
    size_t arch_cap;
    /* where the time goes (w_stats): waiting for a message while sessions
     * are open, running batches (receive to reply), and their count */
    double idle_s, batch_s;
    uint64_t batches, rows;
    int spin_us;          /* after a generation step, poll this long without sleeping */
    int gen_batch;        /* the last batch held a generation step */
    /* a run ahead (docs/protocol.md): the batch's one generation step may
     * go on for `ahead` steps, each fed the pick before it */
    int ahead;            /* the budget of the batch being run (1: one step) */
    int ahead_window;     /* the penalty window the picks' recent ids slide in */
    const uint64_t *draws; /* (ahead) the draw of each step */
    const int32_t *eos;   /* (n_eos) ids that end the run once picked */
    int n_eos;
    int32_t *run_recent;  /* (SEP_PICK_MAX_RECENT) the recent ids as the run goes on */
    int32_t run_id;       /* the id of the step under way */
    int steps;            /* steps the last batch ran */
    uint64_t ahead_steps; /* steps run past each batch's first */
    int64_t cache_budget; /* bytes the sessions' caches may take (0: no limit of sepd's) */
    /* w_save's buffer (be->host_alloc: a GPU downloads into it at full
     * speed), kept between checkpoints; lent to ZeroMQ while a state is
     * sent, busy until its I/O thread gives it back */
    uint8_t *stage;       /* (stage_cap) */
    size_t stage_cap;
    atomic_int stage_busy;
} worker_t;

static const char *usage_text =
    "usage: sepd-worker --connect ENDPOINT [--model DIR] [--device cpu|cuda|auto]\n"
    "       [--precision fp32|bf16] [--threads T] [--max-tokens N] [--layers A:B]\n"
    "       [--daemon-pid PID] [--log-level L] [--spin-us US] [--cache-memory BYTES]\n"
    "       [--server-key KEY --key SECRET_FILE]   (CURVE, over tcp)\n"
    "One pipeline stage of sepd; normally started by sepd (see sepd-worker(8)).\n";

static wk_session_t *worker_find(worker_t *w, uint32_t sid)
{
    for (int i = 0; i < w->n_sess; i++)
        if (w->sess[i].sid == sid)
            return &w->sess[i];
    return NULL;
}

static void worker_drop(worker_t *w, wk_session_t *s)
{
    sep_cache_destroy(&s->cache);
    free(s->is_sep);
    *s = w->sess[--w->n_sess];
}

static int worker_reply(worker_t *w, json_t *hdr, const sep_frame_t *frames, int n)
{
    json_object_set_new(hdr, "rank", json_integer(w->rank));
    int rc = sep_msg_send(w->sock, NULL, 0, hdr, frames, n);
    json_decref(hdr);
    return rc;
}

static int worker_error(worker_t *w, const sep_msg_t *m)
{
    sep_log(SEP_LOG_WARN, "rank %d: %s: %s", w->rank, m->op, sep_errmsg());
    json_t *h = json_pack("{s:s, s:s, s:s, s:I, s:I}", "op", SEP_OP_W_ERROR, "of", m->op,
                          "error", sep_errmsg(), "seq", (json_int_t)sep_msg_int(m, "seq", -1),
                          "sid", (json_int_t)sep_msg_int(m, "sid", -1));
    return h ? worker_reply(w, h, NULL, 0) : SEP_ENOMEM;
}

/* The policy of an open/load header with its separator ids (frame 0). */
static int worker_policy(worker_t *w, const sep_msg_t *m, sep_policy_t *p, uint8_t **is_sep)
{
    int vocab = w->m->cfg.vocab;
    *is_sep = NULL;
    if (m->n_frames < 1 || m->frames[0].len % 4)
        return sep_fail(SEP_EFORMAT, "%s: no separator id frame", m->op);
    const char *method = sep_msg_str(m, "method", "");
    *p = (sep_policy_t){ .a = (int)sep_msg_int(m, "a", -1), .s = (int)sep_msg_int(m, "s", -1),
                         .w = (int)sep_msg_int(m, "w", -1), .c = (int)sep_msg_int(m, "c", -1),
                         .shift = (int)sep_msg_int(m, "shift", 1), .n_vocab = vocab };
    int rc = sep_method_parse(method, &p->method);
    if (rc)
        return rc;
    if (!(*is_sep = calloc((size_t)vocab, 1)))
        return sep_fail(SEP_ENOMEM, "%s: out of memory", m->op);
    const int32_t *ids = m->frames[0].data;
    for (size_t i = 0; i < m->frames[0].len / 4; i++) {
        if (ids[i] < 0 || ids[i] >= vocab) {
            free(*is_sep);
            *is_sep = NULL;
            return sep_fail(SEP_ERANGE, "%s: separator id %d outside the vocabulary", m->op, ids[i]);
        }
        (*is_sep)[ids[i]] = 1;
    }
    p->is_sep = *is_sep;
    return SEP_OK;
}

/* The bytes a session's cache is charged: its capacity's (c + 1
 * entries; full: as many as it holds, at least c + 1, as it would grow to
 * them). sepd charges the same (daemon/quota.c) from the same numbers. */
static int64_t worker_charge(const worker_t *w, const sep_policy_t *p, int n)
{
    int entries = n > p->c + 1 ? n : p->c + 1;
    return sep_cache_bytes(p, w->m->layer1 - w->m->layer0, w->m->kv_dim,
                           sep_cache_cap_for(p, 0, entries));
}

static int64_t worker_cache_used(const worker_t *w)
{
    int64_t used = 0;
    for (int i = 0; i < w->n_sess; i++)
        used += worker_charge(w, &w->sess[i].cache->policy, w->sess[i].cache->n);
    return used;
}

/* The entries of a cache state (its header; 0 when it has none). */
static int worker_state_entries(const sep_msg_t *m)
{
    int32_t n = 0;
    if (m->n_frames >= 2 && m->frames[1].len >= 44)
        memcpy(&n, (const uint8_t *)m->frames[1].data + 40, sizeof n);
    return n > 0 ? n : 0;
}

/* Whether a cache of policy p holding n entries fits the budget, before
 * anything of it is allocated. */
static int worker_cache_fits(const worker_t *w, const sep_msg_t *m, const sep_policy_t *p, int n)
{
    if (w->cache_budget <= 0)
        return SEP_OK;
    int64_t need = worker_charge(w, p, n), used = worker_cache_used(w);
    if (used + need <= w->cache_budget)
        return SEP_OK;
    return sep_fail(SEP_ENOMEM, "%s: the session's cache needs %lld bytes on rank %d (layers "
                    "%d..%d); %lld of its %lld bytes of cache memory are in use (cache_memory_mib)",
                    m->op, (long long)need, w->rank, w->m->layer0, w->m->layer1 - 1,
                    (long long)used, (long long)w->cache_budget);
}

/* w_open (no state) and w_load (frame 1: a cache state). */
static int worker_open(worker_t *w, const sep_msg_t *m, int load)
{
    uint32_t sid = (uint32_t)sep_msg_int(m, "sid", 0);
    if (worker_find(w, sid))
        return sep_fail(SEP_EINVAL, "%s: session %u is open already", m->op, sid);
    if (load && m->n_frames < 2)
        return sep_fail(SEP_EFORMAT, "%s: no cache state frame", m->op);
    if (w->n_sess == w->cap_sess) {
        int cap = w->cap_sess ? 2 * w->cap_sess : 16;
        wk_session_t *ns = realloc(w->sess, (size_t)cap * sizeof *ns);
        if (!ns)
            return sep_fail(SEP_ENOMEM, "%s: out of memory", m->op);
        w->sess = ns;
        w->cap_sess = cap;
    }
    wk_session_t s = { .sid = sid };
    sep_policy_t p;
    int rc = worker_policy(w, m, &p, &s.is_sep);
    if (!rc)
        rc = worker_cache_fits(w, m, &p, load ? worker_state_entries(m) : 0);
    if (!rc)
        rc = sep_model_cache_new(w->m, &p, &s.cache);
    if (!rc && load)
        rc = sep_cache_restore(s.cache, m->frames[1].data, m->frames[1].len);
    if (rc) {
        sep_cache_destroy(&s.cache);
        free(s.is_sep);
        return rc;
    }
    w->sess[w->n_sess++] = s;
    return worker_reply(w, json_pack("{s:s, s:I}", "op", m->op, "sid", (json_int_t)sid), NULL, 0);
}

/* ZeroMQ is done with the state in w->stage (on its I/O thread). */
static void worker_stage_back(void *data, void *hint)
{
    (void)data;
    atomic_store(&((worker_t *)hint)->stage_busy, 0);
}

/* The staging buffer for a state of len bytes, grown when short; NULL
 * while ZeroMQ still sends the last one or without memory (the state then
 * goes through a malloc'ed buffer). */
static uint8_t *worker_stage(worker_t *w, size_t len)
{
    if (atomic_load(&w->stage_busy))
        return NULL;
    if (w->stage_cap < len) {
        w->be->host_free(w->be, w->stage);
        w->stage_cap = len + len / 4; /* a cache's state grows and shrinks by its compactions */
        if (!(w->stage = w->be->host_alloc(w->be, w->stage_cap)))
            w->stage_cap = 0;
    }
    return w->stage;
}

static int worker_save(worker_t *w, const sep_msg_t *m)
{
    wk_session_t *s = worker_find(w, (uint32_t)sep_msg_int(m, "sid", 0));
    if (!s)
        return sep_fail(SEP_ENOTFOUND, "w_save: no session %lld",
                        (long long)sep_msg_int(m, "sid", 0));
    double t0 = sep_now();
    size_t len = sep_cache_state_bytes(s->cache);
    uint8_t *buf = worker_stage(w, len);
    int staged = buf != NULL,
        rc = staged ? sep_cache_save_to(s->cache, buf, len) : sep_cache_save(s->cache, &buf, &len);
    if (rc)
        return rc;
    sep_log(SEP_LOG_DEBUG, "rank %d: session %u: a state of %zu bytes taken in %.1f ms%s",
            w->rank, (unsigned)s->sid, len, (sep_now() - t0) * 1e3,
            staged ? "" : " (the staging buffer was busy or short)");
    /* hundreds of MB for a large model: the buffer goes to ZeroMQ as it is */
    sep_frame_t f = { buf, len };
    json_t *h = json_pack("{s:s, s:I, s:i}", "op", m->op, "sid", (json_int_t)s->sid, "rank",
                          w->rank);
    if (!h) {
        if (!staged)
            free(buf);
        return sep_fail(SEP_ENOMEM, "w_save: out of memory");
    }
    if (staged) {
        atomic_store(&w->stage_busy, 1);
        rc = sep_msg_send_lent(w->sock, NULL, 0, h, &f, 1, 1u, worker_stage_back, w);
    } else {
        rc = sep_msg_send_owned(w->sock, NULL, 0, h, &f, 1, 1u);
    }
    json_decref(h);
    return rc; /* the cache stays: w_close drops it once the state is safe */
}

static int worker_close(worker_t *w, const sep_msg_t *m)
{
    wk_session_t *s = worker_find(w, (uint32_t)sep_msg_int(m, "sid", 0));
    if (s)
        worker_drop(w, s); /* closing an unknown session is a no-op */
    return worker_reply(w, json_pack("{s:s, s:I}", "op", m->op, "sid",
                                     (json_int_t)sep_msg_int(m, "sid", 0)), NULL, 0);
}

static long worker_rss_kib(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return -1;
    int ok = fscanf(f, "%ld %ld", &pages, &rss) == 2;
    fclose(f);
    return ok ? rss * (sysconf(_SC_PAGESIZE) / 1024) : -1;
}

static int worker_stats(worker_t *w, const sep_msg_t *m)
{
    long long cache_bytes = 0;
    for (int i = 0; i < w->n_sess; i++) {
        const sep_cache_t *c = w->sess[i].cache;
        cache_bytes += sep_cache_bytes(&c->policy, c->n_layers, c->kv_dim, c->cap);
    }
    return worker_reply(w, json_pack("{s:s, s:I, s:i, s:I, s:I, s:i, s:i, s:s, s:I, s:I, s:I, s:f, s:f, s:I}",
                                     "op", m->op, "rss_kib", (json_int_t)worker_rss_kib(),
                                     "sessions", w->n_sess, "cache_bytes",
                                     (json_int_t)cache_bytes, "cache_budget",
                                     (json_int_t)w->cache_budget, "layer0", w->m->layer0, "layer1",
                                     w->m->layer1, "device", w->be->name, "pid",
                                     (json_int_t)getpid(), "batches", (json_int_t)w->batches,
                                     "rows", (json_int_t)w->rows, "batch_seconds", w->batch_s,
                                     "idle_seconds", w->idle_s, "ahead_steps",
                                     (json_int_t)w->ahead_steps),
                        NULL, 0);
}

/* A test hook: SEPD_WORKER_FAULT=OP@RANK makes rank RANK fail its next
 * op OP once, as a real failure would (sepd-worker(8)). */
static int worker_fault(const worker_t *w, const char *op)
{
    static int spent;
    const char *f = getenv("SEPD_WORKER_FAULT");
    char want[64];
    if (spent || !f || !*f)
        return 0;
    snprintf(want, sizeof want, "%s@%d", op, w->rank);
    if (strcmp(f, want) != 0)
        return 0;
    spent = 1;
    return 1;
}

/* A test hook: with SEPD_WORKER_CRASH=PATH, a worker about to run a
 * batch looks for the file PATH; when it holds "kill", "stop" or "fail"
 * (optionally "@RANK": that rank only), the worker kills itself
 * (SIGKILL), stops itself (SIGSTOP: a hang) or fails the batch (as when
 * the device runs out of memory). The file is removed when it fires
 * unless its second word is "always" (sepd-worker(8)). 1: fail the batch. */
static int worker_crash(const worker_t *w)
{
    const char *path = getenv("SEPD_WORKER_CRASH");
    if (!path || !*path)
        return 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char what[32] = "", mode[32] = "";
    int n = fscanf(f, "%31s %31s", what, mode);
    fclose(f);
    if (n < 1)
        return 0;
    char *at = strchr(what, '@');
    if (at) {
        *at = '\0';
        if (atoi(at + 1) != w->rank)
            return 0;
    }
    if (strcmp(mode, "always") != 0 && unlink(path) != 0)
        return 0; /* another rank took it */
    sep_log(SEP_LOG_WARN, "rank %d: SEPD_WORKER_CRASH: %s", w->rank, what);
    if (!strcmp(what, "kill"))
        kill(getpid(), SIGKILL);
    else if (!strcmp(what, "stop"))
        kill(getpid(), SIGSTOP);
    return !strcmp(what, "fail");
}

/* Hidden states between ranks: a header (seq, status, rows), then the
 * rows when status is 0. A failed stage sends status 1 so the stages
 * after it skip the batch (the failing stage reported it). */
enum { WK_TAG_HEAD = 1, WK_TAG_ROWS = 2 };

static int worker_batch_run(worker_t *w, const sep_msg_t *m, int upstream_failed, int *n_pick)
{
    json_t *arr = json_object_get(m->hdr, "chunks");
    size_t nc = json_array_size(arr);
    if (upstream_failed)
        return SEP_EIO;
    json_int_t ahead = json_integer_value(json_object_get(json_array_get(arr, 0), "ahead"));
    int want_frames = ahead > 1 ? 7 : 5;
    if (nc < 1 || nc > (size_t)w->m->run.max_tokens || m->n_frames != want_frames)
        return sep_fail(SEP_EFORMAT, "w_batch: %zu chunks, %d frames", nc, m->n_frames);
    const int32_t *ids = m->frames[0].data, *targets = m->frames[1].data;
    size_t total = m->frames[0].len / 4;
    if (m->frames[0].len % 4 || m->frames[1].len != m->frames[0].len ||
        total > (size_t)w->m->run.max_tokens)
        return sep_fail(SEP_EFORMAT, "w_batch: id frames of %zu and %zu bytes",
                        m->frames[0].len, m->frames[1].len);
    /* the picks: their settings, the recent ids they count, the holes */
    const uint8_t *wire = m->frames[2].data;
    const int32_t *recent = m->frames[3].data, *holes = m->frames[4].data;
    size_t n_wire = m->frames[2].len / SEP_PICK_WIRE, n_recent = m->frames[3].len / 4;
    int limit = (int)sep_msg_int(m, "id_limit", w->m->cfg.vocab);
    w->ahead = 1;
    if (m->frames[2].len % SEP_PICK_WIRE || m->frames[3].len % 4 || m->frames[4].len % 4)
        return sep_fail(SEP_EFORMAT, "w_batch: pick frames of %zu, %zu and %zu bytes",
                        m->frames[2].len, m->frames[3].len, m->frames[4].len);
    int last = w->m->layer1 == w->m->cfg.n_layers;
    size_t at = 0, used = 0;
    int np = 0;
    w->gen_batch = 0;
    for (size_t j = 0; j < nc; j++) {
        json_t *c = json_array_get(arr, j);
        uint32_t sid = (uint32_t)json_integer_value(json_object_get(c, "sid"));
        json_int_t n = json_integer_value(json_object_get(c, "n"));
        wk_session_t *s = worker_find(w, sid);
        if (!s)
            return sep_fail(SEP_ENOTFOUND, "w_batch: no session %u", sid);
        if (n < 1 || (size_t)n > total - at)
            return sep_fail(SEP_EFORMAT, "w_batch: chunk of %lld ids past the frame", (long long)n);
        for (size_t k = 0; k < j; k++)
            if (w->chunks[k].cache == s->cache)
                return sep_fail(SEP_EFORMAT, "w_batch: session %u twice in one batch", sid);
        int archive = (int)json_integer_value(json_object_get(c, "archive"));
        if (archive < 0 || archive > 2)
            return sep_fail(SEP_EFORMAT, "w_batch: archive %d for session %u", archive, sid);
        w->archive[j] = archive;
        int pick = json_is_true(json_object_get(c, "pick"));
        w->gen_batch |= pick;
        if (pick && (size_t)np == n_wire)
            return sep_fail(SEP_EFORMAT, "w_batch: more picking chunks than picks (%zu)", n_wire);
        if (pick) {
            sep_pick_t *p = &w->picks[np];
            sep_pick_unpack(p, wire + (size_t)np * SEP_PICK_WIRE);
            if (p->n_recent < 0 || (size_t)p->n_recent > n_recent - used)
                return sep_fail(SEP_EFORMAT, "w_batch: a pick of %d recent ids past the frame",
                                p->n_recent);
            p->recent = recent + used;
            p->limit = limit;
            p->holes = holes;
            p->n_holes = (int)(m->frames[4].len / 4);
            used += (size_t)p->n_recent;
        }
        w->chunks[j] = (sep_chunk_t){ .cache = s->cache, .ids = ids + at, .n = (int)n,
                                      .targets = targets + at, .nll = w->nll + at,
                                      .kv = w->kv + at,
                                      .next = pick && last ? w->next + np : NULL,
                                      .next_nll = pick && last ? w->next_nll + np : NULL,
                                      .pick = pick && last ? &w->picks[np] : NULL,
                                      .archive = archive != 0 };
        w->chunk_sid[j] = sid;
        np += pick;
        at += (size_t)n;
    }
    if (at != total || (size_t)np != n_wire || used != n_recent)
        return sep_fail(SEP_EFORMAT, "w_batch: chunks cover %zu of %zu ids, %d of %zu picks, "
                        "%zu of %zu recent ids", at, total, np, n_wire, used, n_recent);
    if (ahead > 1) {
        json_int_t win = json_integer_value(json_object_get(json_array_get(arr, 0),
                                                            "penalty_window"));
        if (nc != 1 || total != 1 || np != 1 || !last || w->stages != 1 ||
            ahead > SEP_AHEAD_MAX || win < 0 || win > SEP_PICK_MAX_RECENT ||
            w->picks[0].n_recent > win || m->frames[5].len != (size_t)ahead * 8 ||
            m->frames[6].len % 4)
            return sep_fail(SEP_EFORMAT, "w_batch: a run ahead of %lld steps (at most %d) is "
                            "one generation step alone on a lone stage, with a draw a step "
                            "(%zu bytes) and a penalty window (%lld) that holds its recent "
                            "ids", (long long)ahead, SEP_AHEAD_MAX, m->frames[5].len,
                            (long long)win);
        w->ahead = (int)ahead;
        w->ahead_window = (int)win;
        w->draws = m->frames[5].data;
        w->eos = m->frames[6].data;
        w->n_eos = (int)(m->frames[6].len / 4);
        w->picks[0].draw = w->draws[0];
    }
    *n_pick = np;
    for (size_t i = 0; i < total; i++)
        w->nll[i] = NAN;
    return sep_model_forward_stage(w->m, w->chunks, (int)nc, w->m->layer0 ? w->x : NULL,
                                   last ? NULL : w->x);
}

/* bf16 of an fp32, rounded to nearest even (NaN stays a quiet NaN). */
static uint16_t worker_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(u >> 16 | 0x40);
    return (uint16_t)((u + 0x7fffu + (u >> 16 & 1u)) >> 16);
}

/* The separators the batch evicted from the chunks of archive dtype dt
 * (1 f32, 2 bf16), to the daemon for the archive: w_archive {seq rank
 * layer0 n_layers kv_dim dtype n}, frames sid (uint32), pos (int64), id
 * (int32) per entry, then K and V (n_layers, n, kv_dim) in dt. */
static int worker_archive_send(worker_t *w, int64_t seq, const sep_evicted_t *ev, int dt)
{
    int n = 0, L = ev->n_layers, kd = ev->kv_dim;
    for (int e = 0; e < ev->n; e++)
        n += w->archive[ev->chunk[e]] == dt;
    if (n == 0)
        return SEP_OK;
    size_t elem = dt == 2 ? 2 : 4, rows = (size_t)L * n * kd * elem;
    size_t need = (size_t)n * (4 + 8 + 4) + 2 * rows;
    if (need > w->arch_cap) {
        void *p = realloc(w->arch, need);
        if (!p)
            return sep_fail(SEP_ENOMEM, "w_archive: no memory for %zu bytes", need);
        w->arch = p;
        w->arch_cap = need;
    }
    /* the int64 array first: after n uint32 sids it would sit at an odd
     * multiple of 4 whenever n is odd (a misaligned store, UBSan) */
    int64_t *pos = w->arch;
    uint32_t *sid = (uint32_t *)(pos + n);
    int32_t *id = (int32_t *)(sid + n);
    uint8_t *k = (uint8_t *)(id + n), *v = k + rows;
    for (int e = 0, o = 0; e < ev->n; e++) {
        if (w->archive[ev->chunk[e]] != dt)
            continue;
        sid[o] = w->chunk_sid[ev->chunk[e]];
        pos[o] = ev->pos[e];
        id[o] = ev->id[e];
        for (int l = 0; l < L; l++) {
            const float *ks = ev->k + ((size_t)l * ev->n + e) * kd;
            const float *vs = ev->v + ((size_t)l * ev->n + e) * kd;
            size_t at = ((size_t)l * n + o) * kd;
            if (dt == 1) {
                memcpy((float *)k + at, ks, (size_t)kd * 4);
                memcpy((float *)v + at, vs, (size_t)kd * 4);
            } else {
                for (int i = 0; i < kd; i++) {
                    ((uint16_t *)k)[at + i] = worker_bf16(ks[i]);
                    ((uint16_t *)v)[at + i] = worker_bf16(vs[i]);
                }
            }
        }
        o++;
    }
    sep_frame_t f[5] = { { sid, (size_t)n * 4 }, { pos, (size_t)n * 8 }, { id, (size_t)n * 4 },
                         { k, rows }, { v, rows } };
    json_t *h = json_pack("{s:s, s:I, s:i, s:i, s:i, s:i, s:i}", "op", SEP_OP_W_ARCHIVE, "seq",
                          (json_int_t)seq, "layer0", w->m->layer0, "n_layers", L, "kv_dim", kd,
                          "dtype", dt, "n", n);
    return h ? worker_reply(w, h, f, 5) : sep_fail(SEP_ENOMEM, "w_archive: out of memory");
}

/* Every stage ships the separators its layers evicted in the last forward. */
static void worker_archive_all(worker_t *w, int64_t seq)
{
    const sep_evicted_t *ev = sep_model_evicted(w->m);
    for (int dt = 1; ev->n && dt <= 2; dt++)
        if (worker_archive_send(w, seq, ev, dt))
            sep_log(SEP_LOG_ERROR, "rank %d: batch %lld: %s", w->rank, (long long)seq,
                    sep_errmsg());
}

static int worker_is_eos(const worker_t *w, int32_t tok)
{
    for (int i = 0; i < w->n_eos; i++)
        if (w->eos[i] == tok)
            return 1;
    return 0;
}

/* A run ahead, after its first step: while the budget lasts, the last
 * pick is a token the tokenizer has and no eos, and no message waits
 * (sepd's next batch, a w_save, a w_yield...), that step goes to sepd as
 * a w_step and its pick runs as the next step (the recent ids slid by it,
 * the next draw). The last step's results stay in the batch's buffers
 * for its w_done; w->steps says how many ran. */
static int worker_ahead(worker_t *w, int64_t seq, uint32_t sid)
{
    sep_pick_t *p = &w->picks[0];
    sep_chunk_t *c = &w->chunks[0];
    memcpy(w->run_recent, p->recent, (size_t)p->n_recent * sizeof *w->run_recent);
    p->recent = w->run_recent;
    c->ids = &w->run_id;
    while (w->steps < w->ahead) {
        int32_t tok = w->next[0];
        if (tok < 0 || tok >= p->limit || worker_is_eos(w, tok))
            break;
        zmq_pollitem_t it = { .socket = w->sock, .events = ZMQ_POLLIN };
        if (zmq_poll(&it, 1, 0) != 0)
            break; /* a message waits (or the poll failed: the serve loop sees it) */
        sep_frame_t f[3] = { { w->kv, 4 }, { w->next, 4 }, { w->next_nll, 4 } };
        json_t *h = json_pack("{s:s, s:I, s:I, s:i}", "op", SEP_OP_W_STEP, "seq",
                              (json_int_t)seq, "sid", (json_int_t)sid, "step", w->steps - 1);
        int rc = h ? worker_reply(w, h, f, 3) : sep_fail(SEP_ENOMEM, "w_step: out of memory");
        if (rc)
            return rc;
        if (w->ahead_window > 0) {
            if (p->n_recent == w->ahead_window)
                memmove(w->run_recent, w->run_recent + 1,
                        (size_t)--p->n_recent * sizeof *w->run_recent);
            w->run_recent[p->n_recent++] = tok;
        }
        p->draw = w->draws[w->steps];
        w->run_id = tok;
        w->nll[0] = NAN;
        if ((rc = sep_model_forward_stage(w->m, w->chunks, 1, NULL, NULL)))
            return rc;
        w->steps++;
        w->ahead_steps++;
        worker_archive_all(w, seq);
    }
    return SEP_OK;
}

static int worker_batch(worker_t *w, const sep_msg_t *m)
{
    int64_t seq = sep_msg_int(m, "seq", -1);
    int failed = 0, n_pick = 0, dim = w->m->cfg.dim;
    long head[3] = { 0 };
    w->steps = 1;
    w->ahead = 1;
    if (w->rank > 0) {
        MPI_Recv(head, 3, MPI_LONG, w->rank - 1, WK_TAG_HEAD, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        failed = head[1] != 0 || head[0] != seq;
        if (head[1] == 0 && head[2] <= w->m->run.max_tokens)
            MPI_Recv(w->x, (int)head[2] * dim, MPI_FLOAT, w->rank - 1, WK_TAG_ROWS,
                     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    int rc = !failed && (worker_fault(w, SEP_OP_W_BATCH) || worker_crash(w))
                 ? sep_fail(SEP_EIO, "w_batch: an injected fault (SEPD_WORKER_FAULT or SEPD_WORKER_CRASH)")
                 : worker_batch_run(w, m, failed, &n_pick);
    int last = w->rank == w->stages - 1;
    size_t total = m->n_frames >= 1 ? m->frames[0].len / 4 : 0;
    if (!last) {
        long out[3] = { seq, rc != SEP_OK, (long)total };
        MPI_Send(out, 3, MPI_LONG, w->rank + 1, WK_TAG_HEAD, MPI_COMM_WORLD);
        if (rc == SEP_OK)
            MPI_Send(w->x, (int)total * dim, MPI_FLOAT, w->rank + 1, WK_TAG_ROWS, MPI_COMM_WORLD);
    }
    if (rc)
        return failed ? SEP_OK : worker_error(w, m); /* the failing stage reports */
    worker_archive_all(w, seq);
    if (!last)
        return SEP_OK;
    if (w->ahead > 1 && (rc = worker_ahead(w, seq, w->chunk_sid[0])))
        return worker_error(w, m); /* the steps sent are the session's; the batch failed */
    sep_frame_t f[4] = { { w->nll, total * sizeof(float) }, { w->kv, total * sizeof(int32_t) },
                         { w->next, (size_t)n_pick * sizeof(int32_t) },
                         { w->next_nll, (size_t)n_pick * sizeof(float) } };
    json_t *h = json_pack("{s:s, s:I}", "op", SEP_OP_W_DONE, "seq", (json_int_t)seq);
    if (h && w->ahead > 1)
        json_object_set_new(h, "steps", json_integer(w->steps));
    return h ? worker_reply(w, h, f, 4) : sep_fail(SEP_ENOMEM, "w_done: out of memory");
}

/* Serve ops until w_exit or the daemon's end. */
static int worker_serve(worker_t *w)
{
    for (;;) {
        zmq_pollitem_t it = { .socket = w->sock, .events = ZMQ_POLLIN };
        double t0 = sep_now();
        /* the next step of a generation comes within a round trip: wait
         * for it awake (a sleeping thread's wake-up is part of the step) */
        int n = 0;
        while (w->gen_batch && w->spin_us > 0 && (n = zmq_poll(&it, 1, 0)) == 0 &&
               sep_now() - t0 < w->spin_us * 1e-6)
            ;
        if (n == 0)
            n = zmq_poll(&it, 1, WK_POLL_MS);
        if (w->n_sess)
            w->idle_s += sep_now() - t0;
        if (n < 0 && errno != EINTR)
            return sep_fail(SEP_EIO, "poll: %s", zmq_strerror(errno));
        if (n <= 0) {
            if (w->daemon_pid > 0 && kill(w->daemon_pid, 0) != 0 && errno == ESRCH) {
                sep_log(SEP_LOG_WARN, "rank %d: the daemon (pid %d) is gone; exiting", w->rank,
                        (int)w->daemon_pid);
                return SEP_OK;
            }
            continue;
        }
        sep_msg_t m;
        int rc = sep_msg_recv(w->sock, 0, &m, 0);
        if (rc) {
            sep_log(SEP_LOG_WARN, "rank %d: dropped a message: %s", w->rank, sep_errmsg());
            sep_msg_close(&m);
            continue;
        }
        if (strcmp(m.op, SEP_OP_W_EXIT) == 0) {
            sep_msg_close(&m);
            return SEP_OK;
        }
        if (strcmp(m.op, SEP_OP_W_BATCH) != 0 && worker_fault(w, m.op))
            rc = sep_fail(SEP_EIO, "%s: an injected fault (SEPD_WORKER_FAULT)", m.op);
        else if (strcmp(m.op, SEP_OP_W_BATCH) == 0) {
            double t0 = sep_now();
            rc = worker_batch(w, &m);
            w->batch_s += sep_now() - t0;
            w->batches++;
            w->rows += (m.n_frames >= 1 ? m.frames[0].len / 4 : 0) +
                       (w->steps > 1 ? (uint64_t)w->steps - 1 : 0);
        }
        else if (strcmp(m.op, SEP_OP_W_YIELD) == 0)
            rc = SEP_OK; /* a run it ends came to its end already: nothing to do */
        else if (strcmp(m.op, SEP_OP_W_OPEN) == 0)
            rc = worker_open(w, &m, 0);
        else if (strcmp(m.op, SEP_OP_W_LOAD) == 0)
            rc = worker_open(w, &m, 1);
        else if (strcmp(m.op, SEP_OP_W_SAVE) == 0)
            rc = worker_save(w, &m);
        else if (strcmp(m.op, SEP_OP_W_CLOSE) == 0)
            rc = worker_close(w, &m);
        else if (strcmp(m.op, SEP_OP_W_STATS) == 0)
            rc = worker_stats(w, &m);
        else
            rc = sep_fail(SEP_EFORMAT, "unknown op '%s'", m.op);
        if (rc)
            worker_error(w, &m);
        sep_msg_close(&m);
    }
}

typedef struct {
    const char *connect, *model, *device, *precision, *layers;
    const char *server_key, *key; /* CURVE over tcp: sepd's public key, this worker's secret file */
    long threads, max_tokens, daemon_pid, spin_us;
    long cache_memory;    /* bytes; 0: auto */
    sep_log_level_t log_level;
} worker_opts_t;

static int worker_int(const char *name, const char *arg, long lo, long hi, long *out)
{
    if (sep_parse_long(name, arg, lo, hi, out)) {
        fprintf(stderr, "sepd-worker: --%s\n", sep_errmsg());
        return -1;
    }
    return 0;
}

/* CURVE on the link to sepd: sepd's public key, this worker's key pair
 * (docs/security.md). */
static int worker_curve(void *sock, const worker_opts_t *o)
{
    char server[SEP_KEY_Z85 + 1];
    sep_keypair_t kp;
    int rc = sep_key_public(o->server_key, server);
    if (rc || (rc = sep_key_pair(o->key, &kp)))
        return rc;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server, SEP_KEY_Z85) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, kp.pub, SEP_KEY_Z85) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp.sec, SEP_KEY_Z85))
        return sep_fail(SEP_EIO, "CURVE: %s", zmq_strerror(errno));
    return SEP_OK;
}

static int worker_parse(int argc, char **argv, worker_opts_t *o)
{
    static const struct option opts[] = {
        { "connect", required_argument, 0, 'c' }, { "model", required_argument, 0, 'm' },
        { "device", required_argument, 0, 'd' }, { "precision", required_argument, 0, 'P' },
        { "threads", required_argument, 0, 't' }, { "max-tokens", required_argument, 0, 'n' },
        { "layers", required_argument, 0, 'L' }, { "daemon-pid", required_argument, 0, 'p' },
        { "log-level", required_argument, 0, 'l' }, { "spin-us", required_argument, 0, 'S' },
        { "cache-memory", required_argument, 0, 'C' },
        { "server-key", required_argument, 0, 'K' }, { "key", required_argument, 0, 'k' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 } };
    *o = (worker_opts_t){ .max_tokens = 2048, .spin_us = -1, .log_level = SEP_LOG_INFO };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': o->connect = optarg; break;
        case 'm': o->model = optarg; break;
        case 'd': o->device = optarg; break;
        case 'P': o->precision = optarg; break;
        case 'L': o->layers = optarg; break;
        case 'K': o->server_key = optarg; break;
        case 'k': o->key = optarg; break;
        case 't': if (worker_int("threads", optarg, 1, 1024, &o->threads)) return 2; break;
        case 'n': if (worker_int("max-tokens", optarg, 1, 1 << 20, &o->max_tokens)) return 2; break;
        case 'p': if (worker_int("daemon-pid", optarg, 1, 1L << 30, &o->daemon_pid)) return 2; break;
        case 'S': if (worker_int("spin-us", optarg, 0, 1000000, &o->spin_us)) return 2; break;
        case 'C': if (worker_int("cache-memory", optarg, 0, 1L << 60, &o->cache_memory)) return 2; break;
        case 'l':
            if (sep_log_parse(optarg, &o->log_level)) {
                fprintf(stderr, "sepd-worker: %s\n", sep_errmsg());
                return 2;
            }
            break;
        case 'h': fputs(usage_text, stdout); return -1;
        default: fputs(usage_text, stderr); return 2;
        }
    }
    if (optind != argc || !o->connect || !o->model) {
        fprintf(stderr, "sepd-worker: --connect and --model are required\n%s", usage_text);
        return 2;
    }
    if (!o->server_key != !o->key) {
        fprintf(stderr, "sepd-worker: --server-key and --key go together\n%s", usage_text);
        return 2;
    }
    return 0;
}

/* Layers of this rank: --layers A:B for a single stage, else an even
 * split of the checkpoint's layers over the ranks (earlier stages take
 * the remainder). */
static int worker_layers(const worker_opts_t *o, int rank, int stages, int n_layers, int *l0,
                         int *l1)
{
    if (o->layers) {
        if (sscanf(o->layers, "%d:%d", l0, l1) != 2)
            return sep_fail(SEP_EINVAL, "--layers '%s': expected A:B", o->layers);
        return SEP_OK;
    }
    if (stages > n_layers)
        return sep_fail(SEP_EINVAL, "%d stages for a model of %d layers", stages, n_layers);
    int base = n_layers / stages, extra = n_layers % stages;
    *l0 = rank * base + (rank < extra ? rank : extra);
    *l1 = *l0 + base + (rank < extra);
    return SEP_OK;
}

/* --cache-memory: the bytes given, or with 0 on the CPU a share of the
 * memory available now over this host's ranks (0 on a GPU: its own
 * allocations fail when it is full). */
static int64_t worker_cache_budget(const worker_t *w, long given)
{
    if (given > 0)
        return given;
    if (strncmp(w->be->name, "cuda", 4) == 0)
        return 0;
    long long kib = 0;
    char line[256];
    FILE *f = fopen("/proc/meminfo", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    if (kib <= 0)
        kib = (long long)sysconf(_SC_PHYS_PAGES) * (sysconf(_SC_PAGESIZE) / 1024);
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    long ranks = local ? strtol(local, NULL, 10) : 1;
    return (int64_t)kib * 1024 / 100 * WK_CACHE_AUTO_PERCENT / (ranks > 0 ? ranks : 1);
}

/* The checkpoint's layer count, from config.json alone. */
static int worker_n_layers(const char *dir, int *n)
{
    sep_config_t cfg;
    int rc = sep_config_load(&cfg, dir);
    *n = cfg.n_layers;
    return rc;
}

int main(int argc, char **argv)
{
    worker_opts_t o;
    int urc = worker_parse(argc, argv, &o);
    if (urc)
        return urc < 0 ? 0 : urc;
    sep_log_set(o.log_level, NULL);
    worker_t w = { .rank = 0, .stages = 1, .daemon_pid = (pid_t)o.daemon_pid };
    /* ranks of an Open MPI job; a lone worker needs no MPI at all */
    w.mpi = getenv("OMPI_COMM_WORLD_SIZE") != NULL;
    if (w.mpi) {
        MPI_Init(&argc, &argv);
        MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
        MPI_Comm_size(MPI_COMM_WORLD, &w.stages);
    }
    int rc, n_layers = 0, l0 = 0, l1 = 0;
    double t0 = sep_now();
    if ((rc = worker_n_layers(o.model, &n_layers)) ||
        (rc = worker_layers(&o, w.rank, w.stages, n_layers, &l0, &l1)) ||
        (rc = sep_backend_new(&w.be, o.device, o.precision, (int)o.threads)))
        goto fail;
    sep_log(SEP_LOG_INFO, "rank %d: %s backend up in %.2f s", w.rank, w.be->name, sep_now() - t0);
    if ((rc = sep_model_load_stage(&w.m, o.model, w.be, (int)o.max_tokens, l0, l1)))
        goto fail;
    char rate[96];
    sep_log(SEP_LOG_INFO, "rank %d: model loaded: %s", w.rank,
            sep_rate_str(rate, sizeof rate, (double)w.m->load_bytes, w.m->load_s));
    w.spin_us = o.spin_us >= 0 ? (int)o.spin_us
                : strncmp(w.be->name, "cuda", 4) == 0 ? WK_SPIN_AUTO_US : 0;
    size_t rows = (size_t)o.max_tokens;
    w.x = malloc(rows * w.m->cfg.dim * sizeof *w.x);
    w.chunks = malloc(rows * sizeof *w.chunks);
    w.nll = malloc(rows * sizeof *w.nll);
    w.kv = malloc(rows * sizeof *w.kv);
    w.next = malloc(rows * sizeof *w.next);
    w.next_nll = malloc(rows * sizeof *w.next_nll);
    w.picks = malloc(rows * sizeof *w.picks);
    w.archive = malloc(rows * sizeof *w.archive);
    w.chunk_sid = malloc(rows * sizeof *w.chunk_sid);
    w.run_recent = malloc(SEP_PICK_MAX_RECENT * sizeof *w.run_recent);
    if (!w.x || !w.chunks || !w.nll || !w.kv || !w.next || !w.next_nll || !w.picks ||
        !w.archive || !w.chunk_sid || !w.run_recent) {
        rc = sep_fail(SEP_ENOMEM, "out of memory for %zu rows", rows);
        goto fail;
    }
    w.cache_budget = worker_cache_budget(&w, o.cache_memory);
    w.zctx = zmq_ctx_new();
    w.sock = w.zctx ? zmq_socket(w.zctx, ZMQ_DEALER) : NULL;
    int linger = 0;
    /* the largest message from sepd is a cache state for w_load, which
     * fits the budget; a batch is small beside SEP_WORKER_MSG_SLACK */
    int64_t max_msg = w.cache_budget > 0 ? w.cache_budget + SEP_WORKER_MSG_SLACK : -1;
    if (w.sock && o.server_key && (rc = worker_curve(w.sock, &o)))
        goto fail;
    if (!w.sock || zmq_setsockopt(w.sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(w.sock, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg) ||
        zmq_connect(w.sock, o.connect)) {
        rc = sep_fail(SEP_EIO, "connect %s: %s", o.connect, zmq_strerror(errno));
        goto fail;
    }
    json_t *hello = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:I, s:i, s:I, s:f, "
                              "s:i, s:I}",
                              "op", SEP_OP_HELLO, "revision", SEP_WORKER_REVISION, "stages",
                              w.stages, "layer0", l0, "layer1", l1,
                              "n_layers", n_layers, "vocab", w.m->cfg.vocab, "max_tokens",
                              (int)o.max_tokens, "device", w.be->name, "pid",
                              (json_int_t)getpid(), "dim", w.m->cfg.dim, "load_bytes",
                              (json_int_t)w.m->load_bytes, "load_s", w.m->load_s,
                              "kv_dim", w.m->kv_dim, "cache_budget", (json_int_t)w.cache_budget);
    if (!hello || (rc = worker_reply(&w, hello, NULL, 0)))
        goto fail;
    sep_log(SEP_LOG_INFO, "rank %d of %d: layers %d..%d of %d on %s", w.rank, w.stages, l0,
            l1 - 1, n_layers, w.be->name);
    rc = worker_serve(&w);
fail:
    if (rc)
        fprintf(stderr, "sepd-worker[%d]: %s (%s)\n", w.rank, sep_errmsg(), sep_strerror(rc));
    while (w.n_sess)
        worker_drop(&w, &w.sess[0]);
    free(w.sess);
    if (w.sock)
        zmq_close(w.sock);
    if (w.zctx)
        zmq_ctx_term(w.zctx); /* after the last state went (or was dropped): stage is ours */
    if (w.stage)
        w.be->host_free(w.be, w.stage);
    free(w.x);
    free(w.chunks);
    free(w.nll);
    free(w.kv);
    free(w.next);
    free(w.next_nll);
    free(w.picks);
    free(w.archive);
    free(w.chunk_sid);
    free(w.run_recent);
    free(w.arch);
    sep_model_destroy(&w.m);
    sep_backend_destroy(&w.be);
    if (w.mpi) {
        if (rc)
            MPI_Abort(MPI_COMM_WORLD, 1);
        MPI_Finalize();
    }
    return rc ? 1 : 0;
}
