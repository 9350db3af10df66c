/* recover.c: worker faults. A stage that dies (killed, crashed), fails a
 * batch (out of device memory, say) or owes an answer for worker_timeout
 * seconds is a fault of the whole pool: the caches of every stage are
 * past the sessions' last checkpoints and no longer agree with each other.
 * sepd then goes through these phases (d->recover), serving ls, info and
 * stats all along and refusing every other request with `unavailable`:
 *
 *   DRAIN   the pool is killed at once (SIGKILL to its group); the store
 *           thread finishes what it has (a checkpoint under way may still
 *           land). Then every client op ends with a `worker_fault` error
 *           carrying the session's bytes_committed and tokens_committed.
 *   WAIT    the backoff: the first fault restarts at once, each one after
 *           it within SEPD_FAULT_CALM_S of the last restart (and every
 *           start that fails) waits twice as long as the one before, up
 *           to restart_backoff_max seconds.
 *   START   a new pool is started (its own endpoint, or worker_socket
 *           bound again) and says hello.
 *   RELOAD  the store thread lists every record; the session table is
 *           built again from them, as at a start: active sessions are
 *           loaded into the new workers from their last checkpoint and
 *           hold their queued ids until a client comes (a `feed --retry`
 *           resends from bytes_committed and gets every NLL once).
 *
 * A fault while starting (the new pool dies or does not say hello in
 * start_timeout) goes back to WAIT with a longer delay.
 */
#include "daemon.h"
#include "err.h"
#include "log.h"
#include "persist.h"
#include "storer.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define SEPD_FAULT_CALM_S 60.0   /* a fault this long after a restart starts the backoff over */
#define SEPD_STAGE_CHECK_S 0.5   /* how often the stages' processes are looked at */

const char *sepd_recover_name(int phase)
{
    static const char *names[] = { "serving", "draining", "waiting", "starting", "reloading" };
    return phase >= 0 && phase <= SEPD_RECOVER_RELOAD ? names[phase] : "?";
}

/* ---- the list of records (RELOAD) ------------------------------------------ */

typedef struct {
    sepd_job_t job;               /* first: the store thread sees this */
    sep_store_session_t *recs;    /* (n) */
    size_t n;
} reload_job_t;

static int reload_run(sep_store_t *st, sepd_job_t *job)
{
    reload_job_t *j = (reload_job_t *)job;
    return sep_store_sessions(st, &j->recs, &j->n);
}

static void recover_fault_again(sepd_t *d, const char *why);

static void reload_done(void *loop, sepd_job_t *job)
{
    sepd_t *d = loop;
    reload_job_t *j = (reload_job_t *)job;
    if (d->recover != SEPD_RECOVER_RELOAD || d->stop) {
        /* sepd stops (the store thread finishes its jobs at the end) */
    } else if (j->job.rc) {
        char why[600];
        snprintf(why, sizeof why, "the store: %s", j->job.error);
        recover_fault_again(d, why);
    } else if (sepd_persist_reload(d, j->recs, j->n)) {
        char why[600];
        snprintf(why, sizeof why, "reloading the sessions: %s", sep_errmsg());
        recover_fault_again(d, why);
    } else {
        d->recover = SEPD_RECOVER_NONE;
        d->recovered_at = d->workers_heard = sep_now();
        d->restarts++;
        sep_log(SEP_LOG_INFO, "workers restarted (restart %llu): %zu session(s) back at their "
                "last checkpoints", (unsigned long long)d->restarts, j->n);
    }
    sep_store_sessions_free(&j->recs, j->n);
    free(j);
}

/* ---- the phases ---------------------------------------------------------- */

/* The error every client op gets once the store is quiet: where its
 * session is back at. */
static void recover_tell(sepd_t *d)
{
    for (size_t i = 0; i < d->n_sess; i++) {
        sep_session_t *s = d->sess[i];
        char msg[1024];
        snprintf(msg, sizeof msg, "session '%s': %s; the workers are restarting and the session "
                 "goes back to its last checkpoint: %lld bytes, %lld tokens (resend from there: "
                 "sepctl feed --retry does)", s->name, d->fault_why,
                 (long long)s->committed_bytes, (long long)s->committed_tokens);
        const uint8_t *peer[2] = { s->op.kind ? s->op.peer : NULL,
                                   s->op.next ? s->op.next_peer : NULL };
        size_t len[2] = { s->op.kind ? s->op.peer_len : 0,
                          s->op.next ? s->op.next_peer_len : 0 };
        const char *op[2] = { sep_sop_name(s->op.kind),
                              s->op.next ? sep_hdr_str(s->op.next, "op", "error") : "" };
        for (int k = 0; k < 2; k++)
            if (peer[k] && len[k])
                sepd_send(d, peer[k], len[k],
                          json_pack("{s:s, s:b, s:s, s:s, s:s, s:I, s:I}", "op", op[k], "ok", 0,
                                    "code", SEP_ERR_WORKER_FAULT, "error", msg, "session",
                                    s->name, "bytes_committed", (json_int_t)s->committed_bytes,
                                    "tokens_committed", (json_int_t)s->committed_tokens),
                          NULL, 0);
        sep_session_op_end(s);
    }
}

/* The backoff before the next start. again: the fault came while
 * restarting (a start that failed), which never starts the count over:
 * only workers that served SEPD_FAULT_CALM_S since they came back do. */
static void recover_wait(sepd_t *d, int again)
{
    double now = sep_now();
    if (!again && now - d->recovered_at > SEPD_FAULT_CALM_S)
        d->faults_row = 0;
    d->faults_row++;
    double delay = 0;
    if (d->faults_row > 1) {
        delay = 1;
        for (int i = 2; i < d->faults_row && delay < d->conf.restart_backoff_max; i++)
            delay *= 2;
        if (delay > d->conf.restart_backoff_max)
            delay = d->conf.restart_backoff_max;
    }
    d->restart_at = now + delay;
    sep_log(d->faults_row > 1 ? SEP_LOG_WARN : SEP_LOG_INFO,
            "worker fault %llu (%d in a row): the workers start again in %.0f s",
            (unsigned long long)d->faults, d->faults_row, delay);
}

/* A fault while recovering: the new pool goes too, the wait is longer. */
static void recover_fault_again(sepd_t *d, const char *why)
{
    d->faults++;
    snprintf(d->fault_why, sizeof d->fault_why, "%s", why);
    sep_log(SEP_LOG_ERROR, "worker fault while restarting: %s", why);
    if (d->pool)
        sep_pool_kill(d->pool);
    d->recover = SEPD_RECOVER_WAIT;
    recover_wait(d, 1);
}

void sepd_fault(sepd_t *d, const char *why)
{
    if (d->recover) {
        if (d->recover == SEPD_RECOVER_START)
            recover_fault_again(d, why);
        return;
    }
    d->faults++;
    /* a batch that could not be sent, say: name what became of the workers */
    char how[128] = "";
    if (strncmp(why, "the workers ", 12) != 0 && sep_pool_dead(d->pool, how, sizeof how) &&
        how[0])
        snprintf(d->fault_why, sizeof d->fault_why, "the workers %s (%s)", how, why);
    else
        snprintf(d->fault_why, sizeof d->fault_why, "%s", why);
    sep_log(SEP_LOG_ERROR, "worker fault: %s; killing the workers, the sessions go back to "
            "their last checkpoints", d->fault_why);
    sep_pool_kill(d->pool);
    d->recover = SEPD_RECOVER_DRAIN;
    d->n_flight = 0;
    d->spin_since = 0;
    for (size_t i = 0; i < d->n_sess; i++) {
        sep_session_t *s = d->sess[i];
        s->recovering = 1;
        if (s->op.kind == SEP_SOP_EXPORT)
            sepd_export_drop(d, s);
    }
    sepd_stats_unanswered(d);
    sepd_archive_flush(d);
}

/* Start the new pool (WAIT is over). */
static void recover_start(sepd_t *d)
{
    sep_pool_t *p = NULL;
    if (d->pool_opts.endpoint)
        sep_pool_unbind(d->pool); /* worker_socket: the new pool binds it again */
    int rc = sep_pool_spawn(&p, d->zctx, d->run_dir, &d->pool_opts, (int)d->faults);
    if (rc) {
        char why[600];
        snprintf(why, sizeof why, "%s", sep_errmsg());
        recover_fault_again(d, why);
        return;
    }
    sep_pool_stop(&d->pool); /* the old one: its processes are gone, its socket goes */
    d->pool = p;
    d->recover = SEPD_RECOVER_START;
}

/* The new pool said hello on every rank: the same layout, or a fault. */
static void recover_started(sepd_t *d)
{
    char why[300];
    if (d->pool->vocab != d->pool_vocab || d->pool->stages != d->pool_opts.stages) {
        snprintf(why, sizeof why, "the workers came back with %d stage(s) and %d ids (before: "
                 "%d and %d)", d->pool->stages, d->pool->vocab, d->pool_opts.stages,
                 d->pool_vocab);
        recover_fault_again(d, why);
        return;
    }
    reload_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        recover_fault_again(d, "out of memory");
        return;
    }
    j->job.run = reload_run;
    j->job.done = reload_done;
    d->recover = SEPD_RECOVER_RELOAD;
    sepd_storer_submit(d->storer, &j->job);
}

void sepd_recover_msg(sepd_t *d, sep_msg_t *m)
{
    if (d->recover != SEPD_RECOVER_START)
        return; /* the old pool's last words, or early ones of the new */
    if (sep_pool_hello(d->pool, m)) {
        char why[600];
        snprintf(why, sizeof why, "%s", sep_errmsg());
        recover_fault_again(d, why);
    }
}

void sepd_recover_tick(sepd_t *d)
{
    char why[512];
    switch (d->recover) {
    case SEPD_RECOVER_NONE:
        if (sepd_workers_lost(d, why, sizeof why))
            sepd_fault(d, why);
        return;
    case SEPD_RECOVER_DRAIN:
        if (sepd_storer_pending(d->storer) || d->arch)
            return;
        recover_tell(d);
        d->recover = SEPD_RECOVER_WAIT;
        recover_wait(d, 0);
        /* fall through */
    case SEPD_RECOVER_WAIT:
        if (sep_now() >= d->restart_at)
            recover_start(d);
        return;
    case SEPD_RECOVER_START: {
        int rc = sep_pool_starting(d->pool, d->conf.start_timeout);
        if (rc == SEP_EAGAIN)
            return;
        if (rc) {
            snprintf(why, sizeof why, "%s", sep_errmsg());
            recover_fault_again(d, why);
            return;
        }
        recover_started(d);
        return;
    }
    case SEPD_RECOVER_RELOAD:
        return; /* reload_done ends it */
    }
}

int sepd_workers_lost(sepd_t *d, char *why, size_t cap)
{
    char how[400];
    if (sep_pool_dead(d->pool, how, sizeof how)) {
        snprintf(why, cap, "the workers %s", how);
        return 1;
    }
    /* a rank of mpirun that exited while mpirun waits for the others */
    double now = sep_now();
    if (now - d->stages_checked >= SEPD_STAGE_CHECK_S) {
        d->stages_checked = now;
        if (sep_pool_stage_gone(d->pool, how, sizeof how)) {
            snprintf(why, cap, "%s", how);
            return 1;
        }
    }
    /* the clock runs while the workers owe an answer and say nothing */
    double quiet = now - d->workers_heard;
    if (!sepd_workers_owe(d)) {
        d->workers_heard = now;
        return 0;
    }
    if (quiet < d->conf.worker_timeout)
        return 0;
    sep_pool_describe_hang(d->pool, how, sizeof how);
    snprintf(why, cap, "the workers have not answered for %.0f s (worker_timeout)%s%s", quiet,
             how[0] ? ": " : "", how);
    return 1;
}

int sepd_recover_refuses(sepd_t *d, const sep_msg_t *m)
{
    static const char *served[] = { SEP_OP_LS, SEP_OP_INFO, SEP_OP_STATS, SEP_OP_PING,
                                    SEP_OP_ACK, SEP_OP_CANCEL };
    if (d->stopping && strcmp(m->op, SEP_OP_LS) && strcmp(m->op, SEP_OP_STATS) &&
        strcmp(m->op, SEP_OP_PING)) {
        /* not even info: its figures are past what the restart comes back
         * at, and a feed --retry must not resend from them */
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_UNAVAILABLE,
                   "sepd is shutting down (checkpointing every session)");
        return 1;
    }
    if (!d->recover)
        return 0;
    for (size_t i = 0; i < sizeof served / sizeof served[0]; i++)
        if (strcmp(m->op, served[i]) == 0)
            return 0;
    sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_UNAVAILABLE,
               "the workers are restarting after a fault (%s; %s): try again shortly",
               d->fault_why, sepd_recover_name(d->recover));
    return 1;
}

json_t *sepd_recover_stats(const sepd_t *d)
{
    json_t *h = json_pack("{s:s, s:I, s:I}", "state", sepd_recover_name(d->recover),
                          "faults", (json_int_t)d->faults, "restarts", (json_int_t)d->restarts);
    if (h && d->faults)
        json_object_set_new(h, "last_fault", json_string(d->fault_why));
    return h;
}
