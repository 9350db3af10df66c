/* conf.h: sepd's settings: built-in defaults, then the config file
 * (sepd.conf(5): "key = value" lines, # comments), then the command line.
 * Strings are owned by the struct (sep_conf_free). */
#ifndef SEP_CONF_H
#define SEP_CONF_H

#include "quota.h"

typedef struct {
    char *socket;       /* client endpoint (ZeroMQ syntax) */
    char *store;        /* the store directory */
    char *model;        /* model folder */
    char *device, *precision;
    char *worker;       /* sepd-worker binary */
    char *mpirun, *mpirun_args;
    char *log_level;
    int stages, threads;
    int max_batch;      /* rows of one forward (tokens over all sessions) */
    int chunk;          /* most tokens of one session in a batch */
    int batches_ahead;  /* batches in flight beyond one a stage */
    int max_sessions;   /* sessions in the store, active and suspended (quota.h) */
    sepd_limits_conf_t limits; /* the other limits (quota.h) */
    int start_timeout;  /* seconds the workers have to start */
    int worker_timeout; /* seconds the workers may owe an answer before it is a fault */
    int restart_backoff_max; /* most seconds between restarts of the workers after faults */
    int poll_spin_us;   /* how long sepd and its workers poll without sleeping while a
                           generation step is under way; -1: auto (on a GPU only) */
    int decode_ahead;   /* generation steps a lone stage may run on its own picks per
                           batch (1: one round trip a step) */
    /* durability (persist.h) */
    long checkpoint_tokens;  /* a checkpoint every so many tokens scored ... */
    long checkpoint_bytes;   /* ... or bytes fed ... */
    int checkpoint_seconds;  /* ... or seconds, whichever first */
    int checkpoint_budget;   /* ... but at most this percent of the time */
    int shutdown_timeout;    /* seconds SIGTERM gives the checkpoints of every session */
    long store_map_mib;      /* the store's map at first */
    long store_max_mib;      /* the most it may grow to */
    int store_sync;          /* 1: a checkpoint is on disk when it is acknowledged */
    char *archive;           /* a session's separator archive unless open says: off f32 bf16 */
    /* security (daemon/auth.h, docs/security.md) */
    char *server_key;        /* sepd's CURVE secret key file: tcp listeners use CURVE */
    char *allowed_keys;      /* file or folder of the clients' public keys (SIGHUP re-reads) */
    char *worker_keys;       /* ... of the workers' public keys */
    char *operators;         /* identities that manage every session (uid:N key:KEY ...) */
    int allow_insecure_tcp;  /* 1: a tcp listener without CURVE may start (warned of) */
    char *worker_socket;     /* the workers' endpoint (NULL: a private ipc socket) */
    char *worker_key;        /* the workers' secret key file, over tcp */
    int foreground;
} sep_conf_t;

/* Read one "key = value" file into c (unknown keys and bad values are
 * errors naming the line). */
int sep_conf_read(sep_conf_t *c, const char *path);

/* Set key to value (the config file's keys). */
int sep_conf_set(sep_conf_t *c, const char *key, const char *value);
void sep_conf_free(sep_conf_t *c);

#endif
