/* sepd: the coordinator daemon.
 *
 * One thread, one poll loop over three things: the client socket (a
 * ZeroMQ ROUTER: sepctl and scripts; clients.c), the worker socket (the
 * pipeline stages, pool.h) and a signalfd. Clients open sessions and feed
 * them text; sepd tokenizes it (session.h), gathers the runnable ids of
 * many sessions into one batch per step (sched.c), and answers each
 * client as its tokens are scored; the state machine of every session is
 * in control.c. The loop also retries replies a slow client could not
 * take yet (outbox.h), sends heartbeats to clients that wait, and watches
 * the workers: one that dies, fails a batch or stops answering is a fault
 * (recover.c): the pool is killed and started again and every session
 * reloaded from its last checkpoint, while ls, info and stats go on being
 * served. Signals: signals.c. Protocol: docs/protocol.md.
 *
 * Exit codes: 0 after SIGTERM/SIGINT, 1 a runtime error, 2 a usage error.
 */
#include "auth.h"
#include "conf.h"
#include "daemon.h"
#include "persist.h"
#include "storer.h"
#include "err.h"
#include "grow.h"
#include "log.h"
#include "paths.h"
#include "pool.h"
#include "proto.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define SEPD_FAREWELL_S 2.0 /* how long a stopping sepd tries to deliver its last replies */

static void sepd_worker_msg(sepd_t *d)
{
    sep_msg_t m;
    int rc = sep_msg_recv(d->pool->sock, 1, &m, ZMQ_DONTWAIT);
    if (rc == SEP_ENOTFOUND)
        return;
    d->workers_heard = sep_now();
    if (d->recover) {
        /* the new pool's hellos (what the old one said last is dropped) */
        if (!rc)
            sepd_recover_msg(d, &m);
        sep_msg_close(&m);
        return;
    }
    int rank = rc ? -1 : sep_pool_rank_of(d->pool, &m);
    if (rc || rank < 0) {
        sep_log(SEP_LOG_WARN, "dropped a worker message: %s", rc ? sep_errmsg() : "unknown peer");
    } else if (strcmp(m.op, SEP_OP_W_DONE) == 0) {
        double t0 = sep_now();
        sepd_batch_done(d, &m);
        d->done_s += sep_now() - t0;
        d->spin_since = 0;
    } else if (strcmp(m.op, SEP_OP_W_STEP) == 0) {
        double t0 = sep_now();
        sepd_batch_step(d, &m);
        d->done_s += sep_now() - t0;
        d->spin_since = 0; /* the run goes on: the next step comes as soon */
    } else if (strcmp(m.op, SEP_OP_W_ERROR) == 0 &&
               strcmp(sep_msg_str(&m, "of", ""), SEP_OP_W_BATCH) == 0) {
        sepd_batch_failed(d, &m);
    } else if (strcmp(m.op, SEP_OP_W_STATS) == 0) {
        sepd_stats_ack(d, &m, rank);
    } else if (strcmp(m.op, SEP_OP_W_ARCHIVE) == 0) {
        sepd_archive_msg(d, &m, rank);
    } else {
        sepd_control_msg(d, &m, rank);
    }
    sep_msg_close(&m);
}

/* ---- the loop ----------------------------------------------------------- */

static void sepd_rate(sepd_t *d)
{
    double now = sep_now();
    if (now - d->rate_t0 < 2.0)
        return;
    d->rate = (double)(d->tokens_total - d->rate_tok0) / (now - d->rate_t0);
    d->rate_t0 = now;
    d->rate_tok0 = d->tokens_total;
}

static void sepd_gone_cb(void *arg, const uint8_t *peer, size_t len)
{
    sepd_peer_gone(arg, peer, len);
}

/* Give the last replies a moment to leave before the sockets close. */
static void sepd_farewell(sepd_t *d)
{
    double until = sep_now() + SEPD_FAREWELL_S;
    while (sepd_outbox_flush(d->out, NULL, NULL) && sep_now() < until)
        usleep(10 * 1000);
}

/* SIGTERM: every active session is checkpointed first (shutdown_timeout
 * at most), then the loop ends. Each session that has changed since its
 * last checkpoint gets one try after the signal, whether or not the one
 * before failed; one that fails (a full store) is not waited for again.
 * 1 once nothing is left to wait for, or the time is up (logged, naming
 * the sessions left at their last checkpoint). */
static int sepd_drained(sepd_t *d)
{
    /* after a worker fault the sessions are at their checkpoints already */
    if (d->recover)
        return 1;
    double now = sep_now(), since = d->stop_by - d->conf.shutdown_timeout;
    int busy = 0;
    for (size_t i = 0; i < d->n_sess; i++) {
        sep_session_t *s = d->sess[i];
        if (s->state != SEP_SS_ACTIVE)
            continue;
        if (s->committed_tokens != s->tokens || s->committed_bytes != s->bytes_in ||
            s->cut || s->sj != SEP_SJ_NONE) {
            if (!s->ckpt_want && !s->cut && s->sj == SEP_SJ_NONE && s->ckpt_tried_at < since) {
                s->ckpt_want = 1;
                s->ckpt_tried_at = now;
                sepd_step(d, s);
            }
            busy += s->ckpt_tried_at < since || s->ckpt_want || s->cut || s->sj != SEP_SJ_NONE;
        }
    }
    if (!busy)
        return 1;
    if (now <= d->stop_by)
        return 0;
    char names[400];
    size_t at = 0;
    names[0] = '\0';
    for (size_t i = 0; i < d->n_sess && at < sizeof names; i++) {
        sep_session_t *s = d->sess[i];
        if (s->state == SEP_SS_ACTIVE &&
            (s->committed_tokens != s->tokens || s->committed_bytes != s->bytes_in)) {
            int k = snprintf(names + at, sizeof names - at, "%s'%s'", at ? ", " : "", s->name);
            at += k > 0 ? (size_t)k : 0;
        }
    }
    sep_log(SEP_LOG_WARN, "shutdown_timeout (%d s) passed: not checkpointed: %s (back at "
            "their last checkpoints when sepd starts again)", d->conf.shutdown_timeout,
            names[0] ? names : "none");
    return 1;
}

static int sepd_loop(sepd_t *d)
{
    while (!d->stop) {
        size_t waiting = sepd_outbox_flush(d->out, sepd_gone_cb, d);
        /* while a generation step is under way on a GPU, poll without
         * sleeping (poll_spin_us at most a wait): its answer is taken and
         * the next step sent without a wake-up's latency */
        int spin = 0;
        if (d->spin_us > 0 && d->n_flight > 0 && d->flight[0].n_gen > 0) {
            double now = sep_now();
            if (d->spin_since == 0)
                d->spin_since = now;
            spin = now - d->spin_since < d->spin_us * 1e-6;
        } else {
            d->spin_since = 0;
        }
        zmq_pollitem_t it[4] = { { .socket = d->clients, .events = ZMQ_POLLIN },
                                 { .socket = d->pool->sock, .events = ZMQ_POLLIN },
                                 { .fd = d->sig_fd, .events = ZMQ_POLLIN },
                                 { .fd = sepd_storer_fd(d->storer), .events = ZMQ_POLLIN } };
        /* replies that wait for a slow client are retried often */
        if (zmq_poll(it, 4, spin ? 0 : waiting ? 10 : 200) < 0 && errno != EINTR)
            return sep_fail(SEP_EIO, "poll: %s", zmq_strerror(errno));
        /* worker results first: they free room for the next batch */
        for (int i = 0; i < 256 && (it[1].revents & ZMQ_POLLIN); i++) {
            int ev = 0;
            size_t sz = sizeof ev;
            zmq_getsockopt(d->pool->sock, ZMQ_EVENTS, &ev, &sz);
            if (!(ev & ZMQ_POLLIN))
                break;
            sepd_worker_msg(d);
            sepd_gone_drain(d);
        }
        /* a stage that finished a batch gets its next one at once (a
         * generation step's next id is known now) */
        if (it[1].revents & ZMQ_POLLIN)
            sepd_schedule(d);
        if (it[3].revents & ZMQ_POLLIN)
            sepd_persist_finish(d);
        sepd_gone_drain(d);
        for (int i = 0; i < 256 && (it[0].revents & ZMQ_POLLIN); i++) {
            int ev = 0;
            size_t sz = sizeof ev;
            zmq_getsockopt(d->clients, ZMQ_EVENTS, &ev, &sz);
            if (!(ev & ZMQ_POLLIN))
                break;
            sepd_client_msg(d);
            sepd_gone_drain(d);
        }
        if (it[2].revents & ZMQ_POLLIN)
            sepd_signal_msg(d);
        if (d->stopping && sepd_drained(d))
            d->stop = 1;
        if (d->failed) {
            sepd_fail_all(d, SEP_ERR_UNAVAILABLE, "sepd failed; it stops");
            sepd_farewell(d);
            return sep_fail(SEP_EIO, "sepd failed");
        }
        /* dead or hung workers are a fault: killed, started again, the
         * sessions reloaded (recover.c); sepd serves on */
        if (!d->stop)
            sepd_recover_tick(d);
        if (!d->stopping && !d->recover)
            sepd_checkpoint_due(d);
        sepd_archive_due(d);
        sepd_ahead_yields(d);
        sepd_schedule(d);
        sepd_gone_drain(d);
        sepd_heartbeats(d);
        sepd_rate(d);
    }
    sepd_farewell(d);
    return SEP_OK;
}

static const char *usage_text =
    "usage: sepd [--config FILE] [--socket ENDPOINT] [--store DIR] [--model DIR]\n"
    "            [--stages N] [--device cpu|cuda|auto] [--precision fp32|bf16]\n"
    "            [--threads T] [--log-level error|warn|info|debug] [--foreground]\n"
    "            [--worker-timeout SECONDS]\n"
    "The sepd coordinator daemon (see sepd(8)). Without --foreground it\n"
    "detaches once it serves, logging to STORE/sepd.log.\n";

static int sepd_parse(int argc, char **argv, sep_conf_t *c)
{
    static const struct option opts[] = {
        { "config", required_argument, 0, 'f' }, { "socket", required_argument, 0, 's' },
        { "store", required_argument, 0, 'S' }, { "model", required_argument, 0, 'm' },
        { "stages", required_argument, 0, 'n' }, { "device", required_argument, 0, 'd' },
        { "precision", required_argument, 0, 'P' }, { "threads", required_argument, 0, 't' },
        { "log-level", required_argument, 0, 'l' }, { "foreground", no_argument, 0, 'F' },
        { "worker-timeout", required_argument, 0, 'w' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 } };
    static const char *keys[128] = { ['s'] = "socket", ['S'] = "store", ['m'] = "model",
                                     ['n'] = "stages", ['d'] = "device", ['P'] = "precision",
                                     ['t'] = "threads", ['l'] = "log_level",
                                     ['w'] = "worker_timeout" };
    const char *config = getenv("SEPD_CONFIG");
    int ch;
    /* the config file first, whatever its place on the line */
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'f')
            config = optarg;
        else if (ch == 'h') {
            fputs(usage_text, stdout);
            return -1;
        } else if (ch == '?') {
            fputs(usage_text, stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "sepd: unexpected argument '%s'\n%s", argv[optind], usage_text);
        return 2;
    }
    if (config && *config && sep_conf_read(c, config)) {
        fprintf(stderr, "sepd: %s\n", sep_errmsg());
        return 2;
    }
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'F')
            c->foreground = 1;
        else if (ch < 128 && keys[ch] && sep_conf_set(c, keys[ch], optarg)) {
            fprintf(stderr, "sepd: --%s\n", sep_errmsg());
            return 2;
        }
    }
    sep_log_level_t lv = SEP_LOG_INFO;
    if (c->log_level && sep_log_parse(c->log_level, &lv)) {
        fprintf(stderr, "sepd: %s\n", sep_errmsg());
        return 2;
    }
    sep_log_set(lv, NULL);
    return 0;
}

/* Defaults for what neither the config nor the line set. */
static int sepd_defaults(sep_conf_t *c, const char *argv0)
{
    char buf[4096];
    int rc;
    if (!c->socket && ((rc = sep_default_socket(buf, sizeof buf)) ||
                       (rc = sep_conf_set(c, "socket", buf))))
        return rc;
    if (!c->store && ((rc = sep_default_store(buf, sizeof buf)) ||
                      (rc = sep_conf_set(c, "store", buf))))
        return rc;
    if (!c->model && (rc = sep_conf_set(c, "model", sep_default_model())))
        return rc;
    if (!c->mpirun && (rc = sep_conf_set(c, "mpirun", SEP_MPIRUN)))
        return rc;
    if (!c->archive && (rc = sep_conf_set(c, "archive", "f32")))
        return rc;
    if (!c->worker) {
        /* next to sepd when installed, workers/ beside daemon/ in a build */
        const char *env = getenv("SEPD_WORKER");
        char self[PATH_MAX], cand[PATH_MAX + 64];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (env && *env) {
            snprintf(cand, sizeof cand, "%s", env);
        } else if (n > 0) {
            self[n] = '\0';
            char *dir = dirname(self);
            snprintf(cand, sizeof cand, "%s/sepd-worker", dir);
            if (access(cand, X_OK) != 0)
                snprintf(cand, sizeof cand, "%s/../workers/sepd-worker", dir);
        } else {
            snprintf(cand, sizeof cand, "%s", argv0);
        }
        if ((rc = sep_conf_set(c, "worker", cand)))
            return rc;
    }
    return SEP_OK;
}

/* For an ipc endpoint: a lock beside the socket file, so a second daemon
 * does not steal the socket of a live one; the socket becomes 0600. */
static int sepd_lock(sepd_t *d)
{
    d->lock_fd = -1;
    if (strncmp(d->conf.socket, "ipc://", 6) != 0)
        return SEP_OK;
    const char *path = d->conf.socket + 6;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    int rc = sep_mkdirs(dirname(dir), 0700);
    if (rc)
        return rc;
    snprintf(d->lock_path, sizeof d->lock_path, "%s.lock", path);
    d->lock_fd = open(d->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d->lock_fd < 0)
        return sep_fail(SEP_EIO, "%s: %s", d->lock_path, strerror(errno));
    if (flock(d->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return sep_fail(SEP_EIO, "another sepd serves %s (%s is locked)", d->conf.socket,
                        d->lock_path);
    return SEP_OK;
}

static int sepd_bind(sepd_t *d)
{
    /* mandatory routing: ZeroMQ tells of a full or gone peer instead of
     * dropping the reply (outbox.h); a frame over SEP_MSG_MAX_FRAME closes
     * the connection before it costs memory */
    int linger = 0, mandatory = 1;
    int64_t max_frame = SEP_MSG_MAX_FRAME;
    d->clients = zmq_socket(d->zctx, ZMQ_ROUTER);
    if (!d->clients)
        return sep_fail(SEP_EIO, "zmq: %s", zmq_strerror(errno));
    /* who may connect: the ZAP domain, CURVE over tcp (auth.h) */
    int rc = sepd_auth_listen(d->auth, d->clients, d->conf.socket, SEPD_DOMAIN_CLIENTS);
    if (rc)
        return rc;
    mode_t old = umask(0077); /* the ipc socket file is created 0600 */
    int bad = zmq_setsockopt(d->clients, ZMQ_LINGER, &linger, sizeof linger) ||
              zmq_setsockopt(d->clients, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory) ||
              zmq_setsockopt(d->clients, ZMQ_MAXMSGSIZE, &max_frame, sizeof max_frame) ||
              zmq_bind(d->clients, d->conf.socket);
    umask(old);
    if (bad)
        return sep_fail(SEP_EIO, "bind %s: %s", d->conf.socket, zmq_strerror(errno));
    /* tcp://HOST:* binds a free port: the log and the clients get the real one */
    char bound[300];
    size_t blen = sizeof bound;
    if (strncmp(d->conf.socket, "tcp://", 6) == 0 &&
        zmq_getsockopt(d->clients, ZMQ_LAST_ENDPOINT, bound, &blen) == 0 &&
        (rc = sep_conf_set(&d->conf, "socket", bound)))
        return rc;
    if (strncmp(d->conf.socket, "ipc://", 6) == 0 && chmod(d->conf.socket + 6, 0600) != 0)
        return sep_fail(SEP_EIO, "chmod %s: %s", d->conf.socket + 6, strerror(errno));
    return sepd_auth_check_ipc(d->conf.socket);
}

/* Detach: the parent waits on a pipe until the child serves (or fails),
 * so `sepd && sepctl ...` works. Returns in the child; *ready_fd is the
 * pipe's write end. */
static int sepd_detach(const char *store, int *ready_fd)
{
    int fds[2];
    char log_path[4200];
    snprintf(log_path, sizeof log_path, "%s/sepd.log", store);
    if (pipe(fds) != 0)
        return sep_fail(SEP_EIO, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        return sep_fail(SEP_EIO, "fork: %s", strerror(errno));
    if (pid > 0) {
        close(fds[1]);
        char ok = 0;
        ssize_t n = read(fds[0], &ok, 1);
        if (n == 1 && ok == 1)
            _exit(0);
        fprintf(stderr, "sepd: failed to start; see %s\n", log_path);
        _exit(1);
    }
    close(fds[0]);
    setsid();
    int nul = open("/dev/null", O_RDWR);
    int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (nul < 0 || log < 0)
        return sep_fail(SEP_EIO, "%s: %s", log_path, strerror(errno));
    dup2(nul, 0);
    dup2(log, 1);
    dup2(log, 2);
    close(nul);
    close(log);
    *ready_fd = fds[1];
    return SEP_OK;
}

/* The workers' socket's cap on one frame: a stage's cache state (within
 * its cache memory: cache_memory_mib, else at most the machine's memory)
 * or a batch's archive rows (K or V of every row of a batch, f32). */
static int64_t sepd_worker_max_msg(const sepd_t *d, const sep_config_t *cfg)
{
    int64_t states = d->conf.limits.cache_memory_mib
                     ? (int64_t)d->conf.limits.cache_memory_mib << 20
                     : (int64_t)sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE);
    int64_t rows = (int64_t)d->conf.max_batch * cfg->n_layers * cfg->n_kv_heads *
                   cfg->head_dim * (int64_t)sizeof(float);
    return (states > rows ? states : rows) + SEP_WORKER_MSG_SLACK;
}

static int sepd_pool_listen(void *arg, void *sock, const char *endpoint)
{
    sepd_t *d = arg;
    if (strncmp(endpoint, "ipc://", 6) != 0 && sepd_auth_server_public(d->auth) &&
        !d->conf.worker_key)
        return sep_fail(SEP_EINVAL, "%s: workers over CURVE need worker_key, their secret "
                        "key file", endpoint);
    return sepd_auth_listen(d->auth, sock, endpoint, SEPD_DOMAIN_WORKERS);
}

static int sepd_start(sepd_t *d)
{
    char path[4200];
    sep_config_t cfg;
    int rc;
    snprintf(path, sizeof path, "%s/tokenizer.json", d->conf.model);
    if ((rc = sep_mkdirs(d->conf.store, 0700)) || (rc = sep_run_dir(d->run_dir, sizeof d->run_dir)) ||
        (rc = sepd_lock(d)) || (rc = sep_tok_load(&d->tok, path)) ||
        (rc = sep_config_load(&cfg, d->conf.model)) || (rc = sepd_signals(d)))
        return rc;
    /* generate stops at these (its eos text is not sent) */
    memcpy(d->eos, cfg.eos, sizeof d->eos);
    d->n_eos = cfg.n_eos;
    if (!(d->zctx = zmq_ctx_new()))
        return sep_fail(SEP_EIO, "zmq: %s", zmq_strerror(errno));
    /* the ZAP handler is bound before any listener: fail closed */
    sepd_auth_opts_t ao = { .server_key = d->conf.server_key,
                            .allowed_keys = d->conf.allowed_keys,
                            .worker_keys = d->conf.worker_keys,
                            .operators = d->conf.operators,
                            .allow_insecure_tcp = d->conf.allow_insecure_tcp };
    if ((rc = sepd_auth_new(&d->auth, d->zctx, &ao)))
        return rc;
    d->pool_opts = (sep_pool_opts_t){ .stages = d->conf.stages, .worker = d->conf.worker,
                           .mpirun = d->conf.mpirun, .mpirun_args = d->conf.mpirun_args,
                           .model = d->conf.model, .device = d->conf.device,
                           .precision = d->conf.precision, .threads = d->conf.threads,
                           .max_tokens = d->conf.max_batch, .log_level = d->conf.log_level,
                           .spin_us = d->conf.poll_spin_us,
                           .start_timeout_s = d->conf.start_timeout,
                           .cache_memory_mib = d->conf.limits.cache_memory_mib,
                           .max_msg = sepd_worker_max_msg(d, &cfg),
                           .endpoint = d->conf.worker_socket,
                           .server_public = sepd_auth_server_public(d->auth),
                           .worker_key = d->conf.worker_key,
                           .listen = sepd_pool_listen, .listen_arg = d };
    if ((rc = sep_pool_start(&d->pool, d->zctx, d->run_dir, &d->pool_opts)))
        return rc;
    d->pool_vocab = d->pool->vocab;
    if (d->pool->stages > SEP_MAX_STAGES)
        return sep_fail(SEP_EINVAL, "%d stages (at most %d)", d->pool->stages, SEP_MAX_STAGES);
    if ((rc = sep_tok_check_vocab(d->tok, d->pool->vocab)))
        return sep_fail(rc, "%s: %s", d->conf.model, sep_errmsg());
    d->spin_us = d->conf.poll_spin_us;
    for (int r = 0; d->spin_us < 0 && r < d->pool->stages; r++)
        if (strncmp(d->pool->stage[r].device, "cuda", 4) == 0)
            d->spin_us = SEPD_SPIN_AUTO_US;
    d->spin_us = d->spin_us < 0 ? 0 : d->spin_us;
    d->max_flight = d->pool->stages + d->conf.batches_ahead + SEPD_FLIGHT_SAVING;
    d->flight = calloc((size_t)d->max_flight, sizeof *d->flight);
    d->ids = malloc((size_t)d->conf.max_batch * sizeof *d->ids);
    d->targets = malloc((size_t)d->conf.max_batch * sizeof *d->targets);
    d->picks = malloc((size_t)d->conf.max_batch * SEP_PICK_WIRE);
    d->draws = malloc((size_t)d->conf.decode_ahead * sizeof *d->draws);
    if (!d->flight || !d->ids || !d->targets || !d->picks || !d->draws)
        return sep_fail(SEP_ENOMEM, "out of memory");
    /* generation never picks an id the tokenizer cannot decode */
    int n_ids = sep_tok_vocab_size(d->tok);
    d->id_limit = n_ids < d->pool->vocab ? n_ids : d->pool->vocab;
    size_t holes_cap = 0;
    for (int32_t id = 0; id < d->id_limit; id++)
        if (!sep_tok_has_id(d->tok, id)) {
            if ((rc = SEP_GROW(d->holes, holes_cap, (size_t)d->n_holes + 1)))
                return rc;
            d->holes[d->n_holes++] = id;
        }
    for (int i = 0; i < d->max_flight; i++)
        if (!(d->flight[i].ch = malloc((size_t)d->conf.max_batch * sizeof *d->flight[i].ch)))
            return sep_fail(SEP_ENOMEM, "out of memory");
    /* the sessions of the store come back before clients can reach them */
    d->workers_heard = sep_now();
    if ((rc = sepd_persist_open(d)) || (rc = sepd_bind(d)))
        return rc;
    return sepd_outbox_new(&d->out, d->clients, SEPD_OUTBOX_MAX);
}

static void sepd_cleanup(sepd_t *d)
{
    if (d->storer) {
        sepd_import_stop(d);
        sepd_persist_close(d); /* what the store thread has is finished first */
    }
    sepd_import_free(d);
    while (d->n_sess) {
        /* a checkpoint's cut or a state read for a reload may be held
         * still (sepd stopped during a recovery) */
        sep_session_t *s = d->sess[--d->n_sess];
        sep_ckpt_free(&s->cut);
        sep_ckpt_free(&s->loaded);
        sep_session_destroy(&s);
    }
    free(d->sess);
    free(d->gone);
    sep_pool_stop(&d->pool);
    sepd_outbox_destroy(&d->out);
    sepd_limits_free(d);
    if (d->clients)
        zmq_close(d->clients);
    sepd_auth_destroy(&d->auth); /* its sockets close before the context ends */
    if (d->zctx)
        zmq_ctx_term(d->zctx);
    for (int i = 0; d->flight && i < d->max_flight; i++)
        free(d->flight[i].ch);
    free(d->flight);
    free(d->ids);
    free(d->targets);
    free(d->picks);
    free(d->draws);
    free(d->recent);
    free(d->holes);
    json_decref(d->stats.workers);
    free(d->stats.waiting);
    sep_tok_destroy(&d->tok);
    if (d->lock_fd >= 0) {
        /* ours while the lock is held: no other daemon serves this path */
        if (d->clients)
            unlink(d->conf.socket + strlen("ipc://"));
        unlink(d->lock_path);
        close(d->lock_fd);
    }
    if (d->sig_fd > 0)
        close(d->sig_fd);
    sep_conf_free(&d->conf);
}

int main(int argc, char **argv)
{
    sepd_t d = { .conf = { .stages = 1, .max_batch = 2048, .chunk = 512, .batches_ahead = 2, .max_sessions = 1024,
                           .limits = SEPD_LIMITS_DEFAULTS,
                           .start_timeout = 120, .worker_timeout = 300, .poll_spin_us = -1,
                           .restart_backoff_max = 60,
                           .decode_ahead = 32, .checkpoint_tokens = 65536, .checkpoint_bytes = 8L << 20,
                           .checkpoint_seconds = 30, .checkpoint_budget = 2, .shutdown_timeout = 30,
                           .store_map_mib = 1024, .store_max_mib = 65536, .store_sync = 1 },
                 .lock_fd = -1, .sig_fd = -1, .store_lock_fd = -1 };
    int urc = sepd_parse(argc, argv, &d.conf), ready_fd = -1, rc;
    if (urc) {
        sep_conf_free(&d.conf);
        return urc < 0 ? 0 : urc;
    }
    if ((rc = sepd_defaults(&d.conf, argv[0])) || (rc = sep_mkdirs(d.conf.store, 0700)) ||
        (!d.conf.foreground && (rc = sepd_detach(d.conf.store, &ready_fd))))
        goto fail;
    d.started = d.rate_t0 = sep_now();
    sep_log(SEP_LOG_INFO, "sepd %s starting: model %s, %d stage(s), socket %s", PACKAGE_VERSION,
            d.conf.model, d.conf.stages, d.conf.socket);
    if ((rc = sepd_start(&d)))
        goto fail;
    sep_log(SEP_LOG_INFO, "serving on %s", d.conf.socket);
    if (ready_fd >= 0) {
        char ok = 1;
        if (write(ready_fd, &ok, 1) != 1)
            sep_log(SEP_LOG_WARN, "could not tell the starting shell: %s", strerror(errno));
        close(ready_fd);
        ready_fd = -1;
    }
    rc = sepd_loop(&d);
    if (d.failed && !rc)
        rc = SEP_EIO;
fail:
    if (rc)
        sep_log(SEP_LOG_ERROR, "%s (%s)", sep_errmsg(), sep_strerror(rc));
    if (ready_fd >= 0)
        close(ready_fd); /* the waiting parent reports the failure */
    sepd_cleanup(&d);
    if (!rc)
        sep_log(SEP_LOG_INFO, "stopped");
    return rc ? 1 : 0;
}
