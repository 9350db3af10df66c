/* quota.h: what sepd lets its clients hold (sepd.conf(5), docs/protocol.md).
 *
 * Each check either lets a request go on (1) or answers its client with a
 * "limit" error naming the sepd.conf key and its value (0); nothing of a
 * refused request is taken, and sepd goes on serving:
 *   max_sessions         sessions in the store (active and suspended, and
 *                        imports under way): open, import
 *   max_active_sessions  sessions whose caches are in the workers: open, resume
 *   cache_memory_mib     bytes of cache on each stage: open, resume, before
 *                        any stage allocates (sepd_cache_charge); a full
 *                        cache's growth: feed, generate
 *   max_pending_bytes    text of a session's unacknowledged feed pieces
 *   max_clients          clients at once: a client is a connection that has
 *                        sent something and is not known to have gone (a
 *                        heartbeat finds that out when the table is full)
 * and new session names follow SEP_NAME_RULE (a bad_request otherwise).
 */
#ifndef SEPD_QUOTA_H
#define SEPD_QUOTA_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "session.h"

typedef struct {
    int max_active_sessions;
    int max_clients;
    long max_pending_bytes;
    long cache_memory_mib;   /* per stage; 0: auto (the worker decides, sepd-worker(8)) */
} sepd_limits_conf_t;

#define SEPD_LIMITS_DEFAULTS { .max_active_sessions = 256, .max_clients = 1024, \
                               .max_pending_bytes = SEP_FEED_WINDOW * SEP_FEED_PIECE, \
                               .cache_memory_mib = 0 }


struct sepd;

/* Forget every client (at exit). */
void sepd_limits_free(struct sepd *d);

/* m's sender may be served: a known client, or a new one with room for it. */
int sepd_client_admit(struct sepd *d, const sep_msg_t *m);
/* A client found gone. */
void sepd_client_forget(struct sepd *d, const uint8_t *peer, size_t peer_len);

/* open, import: a new session named name may be made. */
int sepd_limit_new_session(struct sepd *d, const sep_msg_t *m, const char *name);
/* open (s not yet added), resume: s's caches may go to the workers. */
int sepd_limit_caches(struct sepd *d, const sep_msg_t *m, const sep_session_t *s);
/* feed, generate: s's cache may grow by `more` tokens (a feed's bytes,
 * a generate's n) within cache_memory_mib; always 1 but for full. */
int sepd_limit_growth(struct sepd *d, const sep_msg_t *m, const sep_session_t *s, int64_t more);
/* feed: a piece of len bytes may join s's unacknowledged ones. */
int sepd_limit_piece(struct sepd *d, const sep_msg_t *m, const sep_session_t *s, size_t len);

/* The bytes s's cache takes on stage rank (the worker charges the same). */
int64_t sepd_cache_charge(const struct sepd *d, const sep_session_t *s, int rank);

#endif
