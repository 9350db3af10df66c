/* pool.c: starting, addressing and stopping the workers. */
#include "pool.h"
#include "err.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define POOL_MAX_ARGS 64

/* argv of the worker command; strings live in buf. */
static int pool_argv(const sep_pool_opts_t *o, const char *endpoint, char *buf, size_t cap,
                     char **argv)
{
    int n = 0;
    size_t used = 0;
    char nums[6][32];
#define ARG(s) do { \
        if (n >= POOL_MAX_ARGS - 1) return sep_fail(SEP_EINVAL, "worker command: too many arguments"); \
        argv[n++] = (char *)(s); } while (0)
    if (o->stages > 1) {
        snprintf(nums[0], sizeof nums[0], "%d", o->stages);
        ARG(o->mpirun);
        ARG("-np");
        ARG(nums[0]);
        /* extra mpirun arguments, split at spaces into buf */
        const char *a = o->mpirun_args ? o->mpirun_args : "";
        while (*a) {
            while (*a == ' ')
                a++;
            size_t len = strcspn(a, " ");
            if (!len)
                break;
            if (used + len + 1 > cap)
                return sep_fail(SEP_EINVAL, "mpirun_args: too long");
            memcpy(buf + used, a, len);
            buf[used + len] = '\0';
            ARG(buf + used);
            used += len + 1;
            a += len;
        }
    }
    snprintf(nums[1], sizeof nums[1], "%d", (int)getpid());
    snprintf(nums[2], sizeof nums[2], "%d", o->max_tokens);
    snprintf(nums[3], sizeof nums[3], "%d", o->threads);
    snprintf(nums[4], sizeof nums[4], "%d", o->spin_us);
    ARG(o->worker);
    ARG("--connect");
    ARG(endpoint);
    ARG("--model");
    ARG(o->model);
    if (strncmp(endpoint, "ipc://", 6) == 0) {
        /* a worker on this host watches sepd's pid; over tcp it may be elsewhere */
        ARG("--daemon-pid");
        ARG(nums[1]);
    }
    if (o->server_public && o->worker_key) {
        ARG("--server-key");
        ARG(o->server_public);
        ARG("--key");
        ARG(o->worker_key);
    }
    ARG("--max-tokens");
    ARG(nums[2]);
    if (o->threads > 0) {
        ARG("--threads");
        ARG(nums[3]);
    }
    if (o->spin_us >= 0) {
        ARG("--spin-us");
        ARG(nums[4]);
    }
    if (o->cache_memory_mib > 0) {
        snprintf(nums[5], sizeof nums[5], "%lld", (long long)o->cache_memory_mib << 20);
        ARG("--cache-memory");
        ARG(nums[5]);
    }
    if (o->device) {
        ARG("--device");
        ARG(o->device);
    }
    if (o->precision) {
        ARG("--precision");
        ARG(o->precision);
    }
    if (o->log_level) {
        ARG("--log-level");
        ARG(o->log_level);
    }
#undef ARG
    argv[n] = NULL;
    return SEP_OK;
}

int sep_pool_dead(sep_pool_t *p, char *why, size_t why_len)
{
    if (p->child <= 0)
        return 1;
    int st;
    pid_t r = waitpid(p->child, &st, WNOHANG);
    if (r == 0)
        return 0;
    if (r == p->child) {
        if (WIFSIGNALED(st))
            snprintf(why, why_len, "killed by signal %d", WTERMSIG(st));
        else
            snprintf(why, why_len, "exited with status %d", WEXITSTATUS(st));
        p->child = -1;
        return 1;
    }
    snprintf(why, why_len, "lost (%s)", strerror(errno));
    p->child = -1;
    return 1;
}

void sep_pool_describe_hang(const sep_pool_t *p, char *buf, size_t cap)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int r = 0; r < p->stages && at < cap; r++) {
        char path[64], line[512], state = '?';
        snprintf(path, sizeof path, "/proc/%d/stat", (int)p->stage[r].pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        /* "pid (comm) S ...": the state follows the last ')' */
        if (fgets(line, sizeof line, f)) {
            char *rp = strrchr(line, ')');
            if (rp && rp[1] == ' ')
                state = rp[2];
        }
        fclose(f);
        const char *what = state == 'T' || state == 't' ? "is stopped"
                           : state == 'Z' ? "has exited"
                           : state == 'D' ? "waits in the kernel"
                           : state == 'R' ? "is running" : "is sleeping";
        int n = snprintf(buf + at, cap - at, "%sstage %d (pid %d) %s", at ? ", " : "", r,
                         (int)p->stage[r].pid, what);
        at += n > 0 ? (size_t)n : 0;
    }
}

int sep_pool_rank_of(const sep_pool_t *p, const sep_msg_t *m)
{
    for (int r = 0; r < p->stages; r++)
        if (p->stage[r].peer_len == m->peer_len &&
            memcmp(p->stage[r].peer, m->peer, m->peer_len) == 0)
            return r;
    return -1;
}

int sep_pool_hello(sep_pool_t *p, sep_msg_t *m)
{
    if (strcmp(m->op, SEP_OP_HELLO) != 0) {
        sep_log(SEP_LOG_WARN, "workers: unexpected %s before hello", m->op);
        return SEP_OK;
    }
    int rank = (int)sep_msg_int(m, "rank", -1), stages = (int)sep_msg_int(m, "stages", 0);
    if (rank < 0 || rank >= p->stages || stages != p->stages || p->stage[rank].peer_len)
        return sep_fail(SEP_EFORMAT, "workers: hello from rank %d of %d (expected %d stages)",
                        rank, stages, p->stages);
    int rev = (int)sep_msg_int(m, "revision", 1);
    if (rev != SEP_WORKER_REVISION)
        return sep_fail(SEP_EFORMAT, "workers: rank %d speaks revision %d of the worker ops, "
                        "this sepd %d (install sepd and sepd-worker together)", rank, rev,
                        SEP_WORKER_REVISION);
    sep_stage_t *s = &p->stage[rank];
    s->rank = rank;
    memcpy(s->peer, m->peer, m->peer_len);
    s->peer_len = m->peer_len;
    s->layer0 = (int)sep_msg_int(m, "layer0", 0);
    s->layer1 = (int)sep_msg_int(m, "layer1", 0);
    s->pid = (pid_t)sep_msg_int(m, "pid", 0);
    snprintf(s->device, sizeof s->device, "%s", sep_msg_str(m, "device", "?"));
    s->kv_dim = (int)sep_msg_int(m, "kv_dim", 0);
    s->cache_budget = s->kv_dim > 0 ? sep_msg_int(m, "cache_budget", 0) : 0;
    if (s->cache_budget > 0)
        sep_log(SEP_LOG_INFO, "stage %d: %lld MiB for caches", rank,
                (long long)(s->cache_budget >> 20));
    p->vocab = (int)sep_msg_int(m, "vocab", 0);
    p->max_tokens = (int)sep_msg_int(m, "max_tokens", 0);
    p->dim = (int)sep_msg_int(m, "dim", 0);
    p->n_layers = (int)sep_msg_int(m, "n_layers", 0);
    char rate[96];
    sep_log(SEP_LOG_INFO, "stage %d: layers %d..%d on %s (pid %d): model loaded: %s", rank,
            s->layer0, s->layer1 - 1, s->device, (int)s->pid,
            sep_rate_str(rate, sizeof rate, (double)sep_msg_int(m, "load_bytes", 0),
                         sep_msg_real(m, "load_s", 0)));
    p->hellos++;
    return SEP_OK;
}

int sep_pool_ready(const sep_pool_t *p)
{
    return p->hellos == p->stages;
}

int sep_pool_starting(sep_pool_t *p, double timeout_s)
{
    char why[128];
    if (sep_pool_ready(p))
        return SEP_OK;
    if (sep_pool_dead(p, why, sizeof why))
        return sep_fail(SEP_EIO, "workers: %s %s before all %d stages started (see the log "
                        "above)", p->stages > 1 ? "mpirun" : "sepd-worker", why, p->stages);
    if (sep_now() - p->spawned > timeout_s)
        return sep_fail(SEP_EIO, "workers: %d of %d stages said hello within %.0f s", p->hellos,
                        p->stages, timeout_s);
    return SEP_EAGAIN;
}

/* Wait until every rank said hello, or the child died, or time ran out. */
static int pool_wait_hellos(sep_pool_t *p, const sep_pool_opts_t *o)
{
    int rc;
    while ((rc = sep_pool_starting(p, o->start_timeout_s)) == SEP_EAGAIN) {
        zmq_pollitem_t it = { .socket = p->sock, .events = ZMQ_POLLIN };
        if (zmq_poll(&it, 1, 200) < 0 && errno != EINTR)
            return sep_fail(SEP_EIO, "workers: poll: %s", zmq_strerror(errno));
        if (!(it.revents & ZMQ_POLLIN))
            continue;
        sep_msg_t m;
        if (sep_msg_recv(p->sock, 1, &m, 0)) {
            sep_log(SEP_LOG_WARN, "workers: unexpected message before hello: %s", sep_errmsg());
            continue;
        }
        rc = sep_pool_hello(p, &m);
        sep_msg_close(&m);
        if (rc)
            return rc;
    }
    return rc;
}

int sep_pool_spawn(sep_pool_t **out, void *zctx, const char *run_dir, const sep_pool_opts_t *o,
                   int generation)
{
    *out = NULL;
    if (o->stages < 1)
        return sep_fail(SEP_EINVAL, "stages: %d (at least 1)", o->stages);
    sep_pool_t *p = calloc(1, sizeof *p);
    if (!p || !(p->stage = calloc((size_t)o->stages, sizeof *p->stage))) {
        free(p);
        return sep_fail(SEP_ENOMEM, "workers: out of memory");
    }
    p->stages = o->stages;
    p->child = -1;
    int rc, linger = 0, mandatory = 1;
    /* a configured endpoint is the same for every pool (the one before
     * has let it go: sep_pool_unbind); a private one is new for a pool
     * started again, so that nothing of the old one's reaches it */
    if (o->endpoint)
        snprintf(p->endpoint, sizeof p->endpoint, "%s", o->endpoint);
    else if (generation)
        snprintf(p->endpoint, sizeof p->endpoint, "ipc://%s/workers-%d-%d.sock", run_dir,
                 (int)getpid(), generation);
    else
        snprintf(p->endpoint, sizeof p->endpoint, "ipc://%s/workers-%d.sock", run_dir,
                 (int)getpid());
    p->sock = zmq_socket(zctx, ZMQ_ROUTER);
    if (p->sock && o->listen && (rc = o->listen(o->listen_arg, p->sock, p->endpoint)))
        goto fail;
    /* mandatory: an op for a worker that is gone fails instead of vanishing */
    if (!p->sock || zmq_setsockopt(p->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(p->sock, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory) ||
        zmq_setsockopt(p->sock, ZMQ_MAXMSGSIZE, &o->max_msg, sizeof o->max_msg) ||
        zmq_bind(p->sock, p->endpoint)) {
        rc = sep_fail(SEP_EIO, "workers: bind %s: %s", p->endpoint, zmq_strerror(errno));
        goto fail;
    }
    size_t elen = sizeof p->endpoint; /* tcp://HOST:*: the port bound, for the workers */
    if (strncmp(p->endpoint, "tcp://", 6) == 0 &&
        zmq_getsockopt(p->sock, ZMQ_LAST_ENDPOINT, p->endpoint, &elen) != 0) {
        rc = sep_fail(SEP_EIO, "workers: %s: %s", p->endpoint, zmq_strerror(errno));
        goto fail;
    }
    char buf[1024], *argv[POOL_MAX_ARGS];
    if ((rc = pool_argv(o, p->endpoint, buf, sizeof buf, argv)))
        goto fail;
    /* the workers' cache states are hundreds of MB: huge pages for their
     * large allocations halve the time a suspend or resume spends faulting
     * pages in (BENCHMARKS.md); an operator's own setting wins */
    if (!getenv("GLIBC_TUNABLES") && setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1", 0)) {
        rc = sep_fail(SEP_EIO, "workers: setenv: %s", strerror(errno));
        goto fail;
    }
    pid_t pid = fork();
    if (pid < 0) {
        rc = sep_fail(SEP_EIO, "workers: fork: %s", strerror(errno));
        goto fail;
    }
    if (pid == 0) {
        setpgid(0, 0); /* one group: stopping the pool reaches every rank */
        /* sepd blocks these for its signalfd; the workers take them as usual */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execvp(argv[0], argv);
        fprintf(stderr, "sepd: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    p->child = pid;
    p->spawned = sep_now();
    sep_log(SEP_LOG_INFO, "started %d stage(s): %s (pid %d)", o->stages, argv[0], (int)pid);
    *out = p;
    return SEP_OK;
fail:
    sep_pool_stop(&p);
    return rc;
}

int sep_pool_start(sep_pool_t **out, void *zctx, const char *run_dir, const sep_pool_opts_t *o)
{
    sep_pool_t *p = NULL;
    int rc = sep_pool_spawn(&p, zctx, run_dir, o, 0);
    if (!rc && (rc = pool_wait_hellos(p, o)))
        sep_pool_stop(&p);
    *out = p;
    return rc;
}

int sep_pool_send_all(sep_pool_t *p, json_t *hdr, const sep_frame_t *frames, int n)
{
    for (int r = 0; r < p->stages; r++) {
        int rc = sep_msg_send(p->sock, p->stage[r].peer, p->stage[r].peer_len, hdr, frames, n);
        if (rc)
            return rc;
    }
    return SEP_OK;
}

void sep_pool_kill(sep_pool_t *p)
{
    if (p->child <= 0)
        return;
    kill(-p->child, SIGKILL);
    /* the ranks of mpirun are its children, in its group: reap it */
    waitpid(p->child, NULL, 0);
    p->child = -1;
}

void sep_pool_unbind(sep_pool_t *p)
{
    if (!p->sock || !p->endpoint[0])
        return;
    if (zmq_unbind(p->sock, p->endpoint) != 0)
        sep_log(SEP_LOG_WARN, "workers: unbind %s: %s", p->endpoint, zmq_strerror(errno));
    if (strncmp(p->endpoint, "ipc://", 6) == 0)
        unlink(p->endpoint + strlen("ipc://"));
    p->endpoint[0] = '\0';
}

int sep_pool_stage_gone(const sep_pool_t *p, char *why, size_t why_len)
{
    for (int r = 0; r < p->stages; r++) {
        pid_t pid = p->stage[r].pid;
        if (pid <= 0 || !p->stage[r].peer_len)
            continue;
        char path[64], line[512], state = '?';
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        if (f) {
            if (fgets(line, sizeof line, f)) {
                char *rp = strrchr(line, ')');
                if (rp && rp[1] == ' ')
                    state = rp[2];
            }
            fclose(f);
        } else if (kill(pid, 0) == 0 || errno != ESRCH) {
            continue; /* no /proc, or not ours to see: the socket will tell */
        }
        if (!f || state == 'Z' || state == 'X') {
            snprintf(why, why_len, "stage %d (pid %d) has exited", r, (int)pid);
            return 1;
        }
    }
    return 0;
}

void sep_pool_stop(sep_pool_t **self_p)
{
    sep_pool_t *p = *self_p;
    if (!p)
        return;
    if (p->sock) {
        json_t *h = json_pack("{s:s}", "op", SEP_OP_W_EXIT);
        for (int r = 0; h && r < p->stages; r++)
            if (p->stage[r].peer_len)
                sep_msg_send(p->sock, p->stage[r].peer, p->stage[r].peer_len, h, NULL, 0);
        json_decref(h);
    }
    /* give the workers a moment to exit on their own, then end the group */
    char why[128];
    for (int i = 0; i < 50 && !sep_pool_dead(p, why, sizeof why); i++)
        usleep(100 * 1000);
    if (p->child > 0) {
        kill(-p->child, SIGTERM);
        for (int i = 0; i < 30 && !sep_pool_dead(p, why, sizeof why); i++)
            usleep(100 * 1000);
        if (p->child > 0) {
            kill(-p->child, SIGKILL);
            waitpid(p->child, NULL, 0);
        }
    }
    if (p->sock) {
        zmq_close(p->sock);
        if (strncmp(p->endpoint, "ipc://", 6) == 0)
            unlink(p->endpoint + strlen("ipc://"));
    }
    free(p->stage);
    free(p);
    *self_p = NULL;
}
