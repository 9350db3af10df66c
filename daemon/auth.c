/* auth.c: the ZAP handler, the key lists, failed handshakes (auth.h).
 *
 * One thread serves the ZAP requests and reads the listeners' monitors:
 * an accepted connection's peer address is noted by its fd (ACCEPTED),
 * a failed handshake (HANDSHAKE_FAILED_*) is counted and logged with that
 * address when its connection closes (DISCONNECTED, the same fd; libzmq
 * emits both from the same call on its I/O thread). The key lists are
 * read on the main thread and swapped in under the lock.
 */
#define _GNU_SOURCE /* struct ucred */
#include "auth.h"
#include "err.h"
#include "grow.h"
#include "keylist.h"
#include "keys.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define AUTH_CTL_ENDPOINT "inproc://sepd-auth-ctl"
#define AUTH_MAX_DOMAINS 4
#define AUTH_CONNS 256            /* accepted connections whose address is remembered */
#define AUTH_EVENTS (ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED | \
                     ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | \
                     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)

typedef enum { AUTH_IPC = 1, AUTH_CURVE, AUTH_INSECURE } auth_kind_t;

typedef struct {
    int fd;
    char addr[80];
} auth_conn_t;

typedef enum {
    AUTH_PENDING_NONE = 0,
    AUTH_PENDING_LOG,             /* a handshake failure to log with the peer's address */
    AUTH_PENDING_LOGGED           /* a refused key: zap_fail logged it (the ZAP request
                                     has the address) */
} auth_pending_t;

typedef struct {
    char name[32];                /* the ZAP domain */
    char endpoint[256];
    auth_kind_t kind;
    void *mon;                    /* the thread's PAIR on the socket's monitor */
    char mon_ep[64];
    auth_conn_t conn[AUTH_CONNS]; /* ring of accepted connections */
    size_t next_conn;
    /* A failed handshake waiting for its connection's DISCONNECTED, which
     * names the peer (ZeroMQ's failure events carry no descriptor; one
     * I/O thread emits a connection's failure and its DISCONNECTED one
     * after the other). */
    auth_pending_t pending;
    char reason[160];             /* AUTH_PENDING_LOG: why */
} auth_domain_t;

struct sepd_auth {
    void *zctx, *zap, *ctl, *ctl_thread;
    pthread_t thread;
    int running;
    pthread_mutex_t mu;           /* guards clients, workers, dom[].kind/name */
    sepd_keylist_t clients, workers;
    char *allowed_path, *worker_path;
    char **ops;                   /* (n_ops) operator identities */
    size_t n_ops, ops_cap;
    sep_keypair_t server;
    int have_server, insecure;
    auth_domain_t dom[AUTH_MAX_DOMAINS];
    int n_dom;
    unsigned n_listens;           /* sepd_auth_listen calls: monitor endpoints' names */
    uint64_t failures;            /* atomic */
    char self[SEP_USER_MAX];
};

/* ---- key lists (keylist.h) --------------------------------------------- */

/* Both lists from their paths (an absent path: an empty list). */
static int auth_read_lists(sepd_auth_t *a, sepd_keylist_t *clients, sepd_keylist_t *workers)
{
    int rc = SEP_OK;
    memset(clients, 0, sizeof *clients);
    memset(workers, 0, sizeof *workers);
    if (a->allowed_path && (rc = sepd_keys_load(clients, a->allowed_path)))
        return rc;
    if (a->worker_path && (rc = sepd_keys_load(workers, a->worker_path)))
        sepd_keys_free(clients);
    return rc;
}

void sepd_auth_reload(sepd_auth_t *a)
{
    sepd_keylist_t c, w;
    if (auth_read_lists(a, &c, &w)) {
        sep_log(SEP_LOG_ERROR, "SIGHUP: the key lists were not reloaded (the old ones stay): "
                "%s", sep_errmsg());
        return;
    }
    pthread_mutex_lock(&a->mu);
    sepd_keylist_t oc = a->clients, ow = a->workers;
    a->clients = c;
    a->workers = w;
    pthread_mutex_unlock(&a->mu);
    sepd_keys_free(&oc);
    sepd_keys_free(&ow);
    sep_log(SEP_LOG_INFO, "SIGHUP: key lists reloaded: %zu client key(s), %zu worker key(s)",
            c.n, w.n);
}

/* ---- the ZAP handler ---------------------------------------------------- */

/* The uid of an ipc peer from the ZAP address "HOST:UID:GID:PID". */
static int zap_ipc_uid(const char *addr, unsigned long *uid)
{
    const char *p[3];
    const char *end = addr + strlen(addr);
    int k = 0;
    for (const char *c = end; c > addr && k < 3; c--)
        if (c[-1] == ':')
            p[k++] = c;
    if (k < 3)
        return -1;
    char *e;
    errno = 0;
    *uid = strtoul(p[2], &e, 10);
    return errno || e == p[2] || *e != ':' ? -1 : 0;
}

typedef struct {
    char frame[7][256];
    size_t len[7];
    int n;
} zap_req_t;

static void zap_fail(sepd_auth_t *a, const auth_domain_t *dom, const char *addr,
                     const char *why)
{
    __atomic_add_fetch(&a->failures, 1, __ATOMIC_RELAXED);
    sep_log(SEP_LOG_WARN, "authentication failed from %s on %s: %s", addr[0] ? addr : "?",
            dom ? dom->endpoint : "an unknown endpoint", why);
}

/* Decide one request: 200 with *user set, or 400. */
static int zap_decide(sepd_auth_t *a, const zap_req_t *r, char *user, size_t cap,
                      int *counted)
{
    const char *domain = r->frame[2], *addr = r->frame[3], *mech = r->frame[5];
    auth_domain_t *dom = NULL;
    char why[200];
    int ok = 0;
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < a->n_dom; i++)
        if (strcmp(a->dom[i].name, domain) == 0)
            dom = &a->dom[i];
    int workers = dom && strcmp(domain, SEPD_DOMAIN_WORKERS) == 0;
    if (!dom) {
        snprintf(why, sizeof why, "unknown ZAP domain");
    } else if (dom->kind == AUTH_CURVE && strcmp(mech, "CURVE") == 0 && r->n >= 7 &&
               r->len[6] == 32) {
        char key[SEP_KEY_Z85 + 1];
        zmq_z85_encode(key, (const uint8_t *)r->frame[6], 32);
        snprintf(user, cap, "key:%s", key);
        ok = workers ? sepd_keys_has(&a->workers, key)
                     : sepd_keys_has(&a->clients, key) || sepd_auth_operator(a, user);
        snprintf(why, sizeof why, "key %s is not in %s", key,
                 workers ? "worker_keys" : "allowed_keys");
    } else if (dom->kind == AUTH_IPC && strcmp(mech, "NULL") == 0) {
        unsigned long uid;
        if (zap_ipc_uid(addr, &uid)) {
            snprintf(why, sizeof why, "no peer credentials in '%.64s'", addr);
        } else {
            snprintf(user, cap, "uid:%lu", uid);
            ok = !workers || uid == (unsigned long)geteuid();
            snprintf(why, sizeof why, "uid %lu on the workers' socket", uid);
        }
    } else if (dom->kind == AUTH_INSECURE && strcmp(mech, "NULL") == 0) {
        snprintf(user, cap, "%s", SEPD_ID_INSECURE);
        ok = 1;
    } else {
        snprintf(why, sizeof why, "mechanism %.16s on this endpoint", mech);
    }
    pthread_mutex_unlock(&a->mu);
    if (!ok) {
        user[0] = '\0';
        zap_fail(a, dom, addr, why);
        *counted = 1;
    }
    return ok ? 200 : 400;
}

static void zap_serve(sepd_auth_t *a)
{
    zap_req_t r = { .n = 0 };
    int more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, a->zap, 0) < 0) {
            zmq_msg_close(&m);
            return;
        }
        if (r.n < 7) {
            size_t n = zmq_msg_size(&m) < 255 ? zmq_msg_size(&m) : 255;
            memcpy(r.frame[r.n], zmq_msg_data(&m), n);
            r.frame[r.n][n] = '\0';
            r.len[r.n] = n; /* longer frames are cut: a key is 32 bytes, an id a few */
        }
        r.n++;
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    char user[SEP_USER_MAX] = "";
    int counted = 0, status = 400;
    if (r.n >= 6 && strcmp(r.frame[0], "1.0") == 0)
        status = zap_decide(a, &r, user, sizeof user, &counted);
    else
        zap_fail(a, NULL, "", "a malformed ZAP request");
    char code[4];
    snprintf(code, sizeof code, "%d", status);
    /* the reply: version, request id, status, text, user id, metadata */
    zmq_send(a->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(a->zap, r.n > 1 ? r.frame[1] : "", r.n > 1 ? r.len[1] : 0, ZMQ_SNDMORE);
    zmq_send(a->zap, code, 3, ZMQ_SNDMORE);
    zmq_send(a->zap, status == 200 ? "OK" : "denied", status == 200 ? 2 : 6, ZMQ_SNDMORE);
    zmq_send(a->zap, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(a->zap, "", 0, 0);
}

/* ---- monitors ----------------------------------------------------------- */

/* The peer of an accepted connection's fd. The monitor reads its events
 * after the fact: a client that failed its handshake at once may be gone
 * by then, and the fd with it (said so, rather than a wrong address). */
static void conn_addr(int fd, char *buf, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    snprintf(buf, cap, "a peer gone before its address was read (fd %d)", fd);
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
        return;
    char ip[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        snprintf(buf, cap, "%s:%u", ip, ntohs(s4->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        snprintf(buf, cap, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else if (ss.ss_family == AF_UNIX) {
        struct ucred cr;
        socklen_t cl = sizeof cr;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0)
            snprintf(buf, cap, "local uid %u pid %d", (unsigned)cr.uid, (int)cr.pid);
    }
}

static void mon_event(sepd_auth_t *a, auth_domain_t *dom)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, dom->mon, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return;
    }
    uint16_t ev = 0;
    uint32_t val = 0;
    if (zmq_msg_size(&m) >= 6) {
        memcpy(&ev, zmq_msg_data(&m), 2);
        memcpy(&val, (uint8_t *)zmq_msg_data(&m) + 2, 4);
    }
    int more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    while (more) { /* the endpoint frame */
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, dom->mon, 0) < 0)
            more = 0;
        else
            more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    if (ev == ZMQ_EVENT_ACCEPTED) {
        auth_conn_t *c = &dom->conn[dom->next_conn++ % AUTH_CONNS];
        c->fd = (int)val;
        conn_addr(c->fd, c->addr, sizeof c->addr);
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
        dom->pending = AUTH_PENDING_LOG;
        snprintf(dom->reason, sizeof dom->reason, "%s",
                 val == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                 ? (dom->kind == AUTH_CURVE ? "the client does not use CURVE"
                                            : "the client uses CURVE, this endpoint does not")
                 : val == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC
                 ? "its CURVE handshake does not decrypt (a wrong server key?)"
                 : "a malformed handshake");
        __atomic_add_fetch(&a->failures, 1, __ATOMIC_RELAXED);
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL && dom->kind == AUTH_CURVE) {
        /* the connection failed before its handshake did: the peer hung
           up first (a client without CURVE that saw the mismatch itself,
           one that gave up, a port probe); val is the errno of the read
           or write. Not on ipc, where sepctl's liveness probe connects
           and hangs up, nor on insecure tcp, where nothing authenticates */
        dom->pending = AUTH_PENDING_LOG;
        snprintf(dom->reason, sizeof dom->reason,
                 "the connection closed during its handshake (%s)",
                 val ? strerror((int)val) : "end of stream");
        __atomic_add_fetch(&a->failures, 1, __ATOMIC_RELAXED);
    } else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
        dom->pending = AUTH_PENDING_LOGGED;
    } else if (ev == ZMQ_EVENT_DISCONNECTED) {
        auth_conn_t *c = NULL;
        for (size_t i = 0; i < AUTH_CONNS && !c; i++)
            if (dom->conn[i].fd == (int)val && dom->conn[i].addr[0])
                c = &dom->conn[i];
        if (dom->pending == AUTH_PENDING_LOG) {
            char unknown[64];
            snprintf(unknown, sizeof unknown, "a peer whose address was not kept (fd %u)", val);
            sep_log(SEP_LOG_WARN, "authentication failed from %s on %s: %s",
                    c ? c->addr : unknown, dom->endpoint, dom->reason);
        }
        if (c) {
            c->addr[0] = '\0';
            c->fd = -1;
        }
        dom->pending = AUTH_PENDING_NONE;
    }
}

/* ---- the thread --------------------------------------------------------- */

static void *auth_main(void *arg)
{
    sepd_auth_t *a = arg;
    for (;;) {
        zmq_pollitem_t it[2 + AUTH_MAX_DOMAINS] = {
            { .socket = a->zap, .events = ZMQ_POLLIN },
            { .socket = a->ctl_thread, .events = ZMQ_POLLIN } };
        int n = 2;
        pthread_mutex_lock(&a->mu);
        int n_dom = a->n_dom;
        pthread_mutex_unlock(&a->mu);
        for (int i = 0; i < n_dom; i++)
            if (a->dom[i].mon)
                it[n++] = (zmq_pollitem_t){ .socket = a->dom[i].mon, .events = ZMQ_POLLIN };
        if (zmq_poll(it, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ETERM)
                break;
            continue;
        }
        if (it[0].revents & ZMQ_POLLIN)
            zap_serve(a);
        if (it[1].revents & ZMQ_POLLIN) {
            char cmd[64] = "";
            int len = zmq_recv(a->ctl_thread, cmd, sizeof cmd - 1, 0);
            if (len < 0)
                break;
            cmd[len < (int)sizeof cmd ? len : (int)sizeof cmd - 1] = '\0';
            if (strcmp(cmd, "stop") == 0)
                break;
            /* "mon N": connect to domain N's monitor (a new socket's, if
               the domain had one: the old socket's connections are gone) */
            int i = atoi(cmd + 4), linger = 0;
            auth_domain_t *dom = i >= 0 && i < n_dom + 1 && i < AUTH_MAX_DOMAINS ? &a->dom[i]
                                                                                 : NULL;
            if (dom && dom->mon) {
                zmq_close(dom->mon);
                dom->mon = NULL;
                for (int c = 0; c < AUTH_CONNS; c++) {
                    dom->conn[c].fd = -1;
                    dom->conn[c].addr[0] = '\0';
                }
                dom->pending = AUTH_PENDING_NONE;
            }
            int ok = dom && (dom->mon = zmq_socket(a->zctx, ZMQ_PAIR)) &&
                     zmq_setsockopt(dom->mon, ZMQ_LINGER, &linger, sizeof linger) == 0 &&
                     zmq_connect(dom->mon, dom->mon_ep) == 0;
            zmq_send(a->ctl_thread, ok ? "ok" : "no", 2, 0);
            continue; /* the monitors are polled again, as they are now */
        }
        for (int k = 2, i = 0; i < n_dom; i++)
            if (a->dom[i].mon && (it[k++].revents & ZMQ_POLLIN))
                for (int j = 0; j < 64; j++) {
                    int ev = 0;
                    size_t sz = sizeof ev;
                    zmq_getsockopt(a->dom[i].mon, ZMQ_EVENTS, &ev, &sz);
                    if (!(ev & ZMQ_POLLIN))
                        break;
                    pthread_mutex_lock(&a->mu); /* its endpoint, kind */
                    mon_event(a, &a->dom[i]);
                    pthread_mutex_unlock(&a->mu);
                }
    }
    for (int i = 0; i < a->n_dom; i++)
        if (a->dom[i].mon) {
            zmq_close(a->dom[i].mon);
            a->dom[i].mon = NULL;
        }
    return NULL;
}

/* ---- setup -------------------------------------------------------------- */

static int auth_operators(sepd_auth_t *a, const char *list)
{
    const char *p = list ? list : "";
    while (*p) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, " \t,");
        if (!n)
            break;
        char id[SEP_USER_MAX + 8], path[4096], pubk[SEP_KEY_Z85 + 1];
        if (n == SEP_KEY_Z85) {
            snprintf(id, sizeof id, "key:%.*s", (int)n, p);
        } else if (memchr(p, '/', n) && n < sizeof path) {
            /* a .pub file: keys may hold '#', which starts a comment in sepd.conf */
            snprintf(path, sizeof path, "%.*s", (int)n, p);
            int rc = sep_key_public(path, pubk);
            if (rc) {
                char msg[600];
                snprintf(msg, sizeof msg, "%s", sep_errmsg());
                return sep_fail(rc, "operators: %s", msg);
            }
            snprintf(id, sizeof id, "key:%s", pubk);
        } else {
            snprintf(id, sizeof id, "%.*s", (int)(n < SEP_USER_MAX ? n : SEP_USER_MAX), p);
        }
        int key = strncmp(id, "key:", 4) == 0 && sep_key_valid(id + 4);
        char *e = NULL;
        int uid = strncmp(id, "uid:", 4) == 0 && id[4] && (strtoul(id + 4, &e, 10), !*e);
        if (!key && !uid)
            return sep_fail(SEP_EINVAL, "operators: '%.*s' is neither uid:N, key:KEY, a "
                            "40-character Z85 key nor a .pub file (a key with '#' must be "
                            "given as a file: '#' starts a comment)", (int)(n < 64 ? n : 64), p);
        int rc = SEP_GROW(a->ops, a->ops_cap, a->n_ops + 1);
        if (rc)
            return rc;
        if (!(a->ops[a->n_ops] = strdup(id)))
            return sep_fail(SEP_ENOMEM, "operators: out of memory");
        a->n_ops++;
        p += n;
    }
    return SEP_OK;
}

int sepd_auth_new(sepd_auth_t **out, void *zctx, const sepd_auth_opts_t *o)
{
    *out = NULL;
    sepd_auth_t *a = calloc(1, sizeof *a);
    int rc, linger = 0;
    if (!a)
        return sep_fail(SEP_ENOMEM, "auth: out of memory");
    pthread_mutex_init(&a->mu, NULL);
    a->zctx = zctx;
    a->insecure = o->allow_insecure_tcp;
    snprintf(a->self, sizeof a->self, "uid:%u", (unsigned)geteuid());
    if ((o->allowed_keys && !(a->allowed_path = strdup(o->allowed_keys))) ||
        (o->worker_keys && !(a->worker_path = strdup(o->worker_keys)))) {
        rc = sep_fail(SEP_ENOMEM, "auth: out of memory");
        goto fail;
    }
    if ((rc = auth_operators(a, o->operators)))
        goto fail;
    if (o->server_key) {
        if ((rc = sep_key_pair(o->server_key, &a->server))) {
            char msg[600];
            snprintf(msg, sizeof msg, "%s", sep_errmsg());
            rc = sep_fail(rc, "server_key: %s", msg);
            goto fail;
        }
        a->have_server = 1;
    }
    if ((rc = auth_read_lists(a, &a->clients, &a->workers)))
        goto fail;
    /* the handler first: a CURVE listener without one takes any client */
    a->zap = zmq_socket(zctx, ZMQ_REP);
    if (!a->zap || zmq_setsockopt(a->zap, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(a->zap, SEPD_ZAP_ENDPOINT)) {
        rc = sep_fail(SEP_EIO, "auth: bind %s: %s", SEPD_ZAP_ENDPOINT, zmq_strerror(errno));
        goto fail;
    }
    a->ctl = zmq_socket(zctx, ZMQ_PAIR);
    a->ctl_thread = zmq_socket(zctx, ZMQ_PAIR);
    if (!a->ctl || !a->ctl_thread || zmq_setsockopt(a->ctl, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(a->ctl_thread, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(a->ctl_thread, AUTH_CTL_ENDPOINT) || zmq_connect(a->ctl, AUTH_CTL_ENDPOINT)) {
        rc = sep_fail(SEP_EIO, "auth: %s", zmq_strerror(errno));
        goto fail;
    }
    if (pthread_create(&a->thread, NULL, auth_main, a) != 0) {
        rc = sep_fail(SEP_EIO, "auth: thread: %s", strerror(errno));
        goto fail;
    }
    a->running = 1;
    if (a->have_server)
        sep_log(SEP_LOG_INFO, "CURVE: server key %s; %zu client key(s), %zu worker key(s), "
                "%zu operator(s)", a->server.pub, a->clients.n, a->workers.n, a->n_ops);
    *out = a;
    return SEP_OK;
fail:
    sepd_auth_destroy(&a);
    return rc;
}

void sepd_auth_destroy(sepd_auth_t **self_p)
{
    sepd_auth_t *a = *self_p;
    if (!a)
        return;
    if (a->running) {
        zmq_send(a->ctl, "stop", 4, 0);
        pthread_join(a->thread, NULL);
    }
    if (a->zap)
        zmq_close(a->zap);
    if (a->ctl)
        zmq_close(a->ctl);
    if (a->ctl_thread)
        zmq_close(a->ctl_thread);
    sepd_keys_free(&a->clients);
    sepd_keys_free(&a->workers);
    for (size_t i = 0; i < a->n_ops; i++)
        free(a->ops[i]);
    free(a->ops);
    free(a->allowed_path);
    free(a->worker_path);
    pthread_mutex_destroy(&a->mu);
    memset(&a->server, 0, sizeof a->server);
    free(a);
    *self_p = NULL;
}

/* An ipc endpoint's folder: not another user's, not open to others' writes. */
static int auth_ipc_dir(const char *endpoint)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", endpoint + 6);
    const char *d = dirname(dir);
    struct stat st;
    if (stat(d, &st) != 0)
        return sep_fail(SEP_EIO, "%s: %s", d, strerror(errno));
    if (st.st_uid != geteuid() && st.st_uid != 0)
        return sep_fail(SEP_EINVAL, "socket folder %s belongs to uid %u, not to sepd's user: "
                        "another user could replace the socket", d, (unsigned)st.st_uid);
    if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX))
        return sep_fail(SEP_EINVAL, "socket folder %s is writable by others (mode %03o): "
                        "another user could replace the socket", d,
                        (unsigned)(st.st_mode & 0777));
    return SEP_OK;
}

int sepd_auth_check_ipc(const char *endpoint)
{
    if (strncmp(endpoint, "ipc://", 6) != 0)
        return SEP_OK;
    struct stat st;
    if (stat(endpoint + 6, &st) != 0)
        return sep_fail(SEP_EIO, "%s: %s", endpoint + 6, strerror(errno));
    if (!S_ISSOCK(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
        return sep_fail(SEP_EINVAL, "%s: expected sepd's own socket of mode 0600 (mode %03o, "
                        "uid %u)", endpoint + 6, (unsigned)(st.st_mode & 0777),
                        (unsigned)st.st_uid);
    return SEP_OK;
}

int sepd_auth_listen(sepd_auth_t *a, void *sock, const char *endpoint, const char *domain)
{
    /* a domain listened on again (the workers' socket of a pool started
       again after a fault) keeps its slot; the thread moves to the new
       socket's monitor */
    int idx = -1;
    for (int i = 0; i < a->n_dom; i++)
        if (strcmp(a->dom[i].name, domain) == 0)
            idx = i;
    if (idx < 0 && a->n_dom == AUTH_MAX_DOMAINS)
        return sep_fail(SEP_EINVAL, "auth: too many listeners");
    auth_kind_t kind;
    int rc, workers = strcmp(domain, SEPD_DOMAIN_WORKERS) == 0, one = 1;
    if (strncmp(endpoint, "ipc://", 6) == 0) {
        if ((rc = auth_ipc_dir(endpoint)))
            return rc;
        kind = AUTH_IPC;
    } else if (a->have_server) {
        if (workers ? !a->worker_path : !a->allowed_path && !a->n_ops)
            return sep_fail(SEP_EINVAL, "%s: CURVE needs %s (sepd.conf(5))", endpoint,
                            workers ? "worker_keys, the workers' public keys"
                                    : "allowed_keys, the clients' public keys");
        if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
            zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, a->server.sec, SEP_KEY_Z85))
            return sep_fail(SEP_EIO, "%s: CURVE: %s", endpoint, zmq_strerror(errno));
        kind = AUTH_CURVE;
    } else if (a->insecure) {
        sep_log(SEP_LOG_WARN, "%s: tcp WITHOUT authentication (allow_insecure_tcp = yes): "
                "whoever reaches it can read, feed and close every session", endpoint);
        kind = AUTH_INSECURE;
    } else {
        return sep_fail(SEP_EINVAL, "%s: a tcp endpoint needs CURVE: set server_key and %s in "
                        "sepd.conf (sepctl keygen makes keys), or allow_insecure_tcp = yes",
                        endpoint, workers ? "worker_keys" : "allowed_keys");
    }
    pthread_mutex_lock(&a->mu);
    if (idx < 0) {
        idx = a->n_dom;
        memset(&a->dom[idx], 0, sizeof a->dom[idx]);
        for (int i = 0; i < AUTH_CONNS; i++)
            a->dom[idx].conn[i].fd = -1;
        snprintf(a->dom[idx].name, sizeof a->dom[idx].name, "%s", domain);
        a->n_dom++;
    }
    auth_domain_t *dom = &a->dom[idx];
    snprintf(dom->endpoint, sizeof dom->endpoint, "%s", endpoint);
    /* a monitor endpoint of its own each time: the old socket's may not be
       unbound yet */
    snprintf(dom->mon_ep, sizeof dom->mon_ep, "inproc://sepd-auth-mon-%d-%u", idx,
             a->n_listens++);
    dom->kind = kind;
    pthread_mutex_unlock(&a->mu);
    if (zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) ||
        zmq_socket_monitor(sock, dom->mon_ep, AUTH_EVENTS))
        return sep_fail(SEP_EIO, "%s: %s", endpoint, zmq_strerror(errno));
    char cmd[32], ans[4] = "";
    snprintf(cmd, sizeof cmd, "mon %d", idx);
    if (zmq_send(a->ctl, cmd, strlen(cmd), 0) < 0 || zmq_recv(a->ctl, ans, 2, 0) != 2 ||
        memcmp(ans, "ok", 2) != 0)
        return sep_fail(SEP_EIO, "%s: its monitor: %s", endpoint, zmq_strerror(errno));
    return SEP_OK;
}

const char *sepd_auth_server_public(const sepd_auth_t *a)
{
    return a->have_server ? a->server.pub : NULL;
}

uint64_t sepd_auth_failures(const sepd_auth_t *a)
{
    return __atomic_load_n(&a->failures, __ATOMIC_RELAXED);
}

const char *sepd_auth_self(const sepd_auth_t *a)
{
    return a->self;
}

int sepd_auth_operator(const sepd_auth_t *a, const char *user)
{
    for (size_t i = 0; user[0] && i < a->n_ops; i++)
        if (strcmp(a->ops[i], user) == 0)
            return 1;
    return 0;
}

int sepd_auth_may(const sepd_auth_t *a, const char *user, const char *owner, int shared)
{
    if (!user[0])
        return 0; /* fail closed: a message without an identity */
    return shared || strcmp(user, owner) == 0 || sepd_auth_operator(a, user);
}
