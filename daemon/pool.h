/* pool.h: the daemon's pipeline workers.
 *
 * One stage: sepd starts sepd-worker itself. N stages: sepd starts
 * `mpirun -np N [args] sepd-worker ...`, whose ranks are the stages. Each
 * worker connects to the pool's private ipc endpoint and says hello; the
 * pool is ready when every rank has. Ops go to every rank in order.
 */
#ifndef SEP_POOL_H
#define SEP_POOL_H

#include <jansson.h>
#include <sys/types.h>

#include "proto.h"

typedef struct {
    int stages;
    const char *worker;      /* sepd-worker binary */
    const char *mpirun;      /* mpirun binary (stages > 1) */
    const char *mpirun_args; /* extra mpirun arguments, split at spaces */
    const char *model, *device, *precision;
    int threads, max_tokens;
    int spin_us;             /* the workers' --spin-us; -1: their default */
    const char *log_level;
    int start_timeout_s;
    long cache_memory_mib;   /* each worker's --cache-memory (0: auto) */
    int64_t max_msg;         /* ZMQ_MAXMSGSIZE of the workers' socket (-1: none) */
    /* the workers' endpoint (NULL: a private ipc socket in run_dir); over
       tcp the workers get sepd's public key and their own key file */
    const char *endpoint, *server_public, *worker_key;
    /* called on the socket before it binds (auth.h: sepd_auth_listen) */
    int (*listen)(void *arg, void *sock, const char *endpoint);
    void *listen_arg;
} sep_pool_opts_t;

typedef struct {
    int rank;
    uint8_t peer[256];       /* routing id of its DEALER */
    size_t peer_len;
    int layer0, layer1;
    pid_t pid;
    char device[16];
    int kv_dim;              /* floats of a cache row */
    int64_t cache_budget;    /* bytes its caches may take (0: no limit of sepd's) */
} sep_stage_t;

typedef struct {
    void *sock;              /* ROUTER bound to endpoint */
    char endpoint[300];
    pid_t child;             /* the worker or mpirun */
    int stages;
    sep_stage_t *stage;      /* (stages) by rank */
    int vocab, max_tokens, dim, n_layers;
    int hellos;              /* ranks that said hello */
    double spawned;          /* when the child was started */
} sep_pool_t;

/* Bind, start the workers, wait for their hellos. */
int sep_pool_start(sep_pool_t **out, void *zctx, const char *run_dir, const sep_pool_opts_t *o);

/* Bind and start the workers without waiting for them (a pool started
 * again after a fault: generation > 0 gives a private endpoint a name of
 * its own; a configured o->endpoint is bound again, see sep_pool_unbind).
 * The caller passes what arrives on p->sock to sep_pool_hello until
 * sep_pool_ready; sep_pool_starting says how the start goes: SEP_EAGAIN
 * while it goes on, 0 once ready, an error once the child died or
 * timeout_s passed. */
int sep_pool_spawn(sep_pool_t **out, void *zctx, const char *run_dir, const sep_pool_opts_t *o,
                   int generation);
int sep_pool_hello(sep_pool_t *p, sep_msg_t *m);
int sep_pool_ready(const sep_pool_t *p);
int sep_pool_starting(sep_pool_t *p, double timeout_s);

/* Kill every process of the pool at once (SIGKILL to its group) and reap
 * the child; the socket stays until sep_pool_stop. */
void sep_pool_kill(sep_pool_t *p);

/* Let the endpoint go (zmq_unbind; an ipc socket file is removed) while
 * the socket stays open until sep_pool_stop: a configured endpoint
 * (worker_socket) is then free for the pool that starts after it. */
void sep_pool_unbind(sep_pool_t *p);

/* Nonzero when a stage's process (a rank of mpirun) has exited though the
 * child still runs; *why names it. */
int sep_pool_stage_gone(const sep_pool_t *p, char *why, size_t why_len);

/* Send hdr and frames to every rank (hdr keeps its reference). */
int sep_pool_send_all(sep_pool_t *p, json_t *hdr, const sep_frame_t *frames, int n);

/* The rank of a message's peer, -1 if none. */
int sep_pool_rank_of(const sep_pool_t *p, const sep_msg_t *m);

/* What each stage's process is doing, for a message about workers that
 * stopped answering ("stage 1 (pid 123) is stopped"); "" if nothing is
 * known. */
void sep_pool_describe_hang(const sep_pool_t *p, char *buf, size_t cap);

/* Nonzero once the worker process (or mpirun) has exited; *why says how. */
int sep_pool_dead(sep_pool_t *p, char *why, size_t why_len);

/* Ask the workers to exit, wait a little, then kill; close the socket. */
void sep_pool_stop(sep_pool_t **self_p);

#endif
