/* auth.h: who may reach sepd, and who each client is (docs/security.md).
 *
 * Every listener of sepd (the clients' socket, the workers' socket) goes
 * through sepd_auth_listen() before it binds: it gets a ZAP domain and,
 * over tcp, the CURVE server role with sepd's key pair. sepd's own ZAP
 * handler (a REP socket at inproc://zeromq.zap.01, bound by
 * sepd_auth_new() before any listener, served by the auth thread) decides
 * every connection and names its identity, the User-Id that each of its
 * messages carries (sep_msg_t.user, zmq_msg_gets "User-Id"):
 *
 *   ipc, NULL mechanism  "uid:N": the peer's uid, from SO_PEERCRED (libzmq
 *                        4.3 passes it in the ZAP request's address as
 *                        "HOST:UID:GID:PID"); the workers' socket takes
 *                        sepd's own uid only
 *   tcp, CURVE           "key:Z85": the peer's public key, which must be in
 *                        allowed_keys (or be an operator) on the clients'
 *                        socket, in worker_keys on the workers'
 *   tcp, no CURVE        "insecure", one identity for every such client
 *                        (only with allow_insecure_tcp = yes, warned of)
 *
 * Anything else is refused: fail closed (a request the handler cannot
 * read, an unknown domain, an address without credentials). Refusals and
 * failed handshakes (a wrong server key, a client without CURVE, a key
 * not allowed, a tcp peer that hangs up during its CURVE handshake) are
 * logged with the peer's address and counted
 * (sepd_auth_failures); the peer learns nothing but that it failed. The
 * key lists are re-read on SIGHUP (sepd_auth_reload): a list that fails
 * to read leaves the one before in force.
 *
 * Sessions belong to the identity that opened them (sepd_auth_may).
 */
#ifndef SEPD_AUTH_H
#define SEPD_AUTH_H

#include <stdint.h>

#include "proto.h"

#define SEPD_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define SEPD_DOMAIN_CLIENTS "sepd-clients"
#define SEPD_DOMAIN_WORKERS "sepd-workers"
#define SEPD_ID_INSECURE "insecure"

typedef struct sepd_auth sepd_auth_t;

typedef struct {
    const char *server_key;    /* sepd's secret key file (NULL: no CURVE) */
    const char *allowed_keys;  /* file or folder of client public keys */
    const char *worker_keys;   /* file or folder of worker public keys */
    const char *operators;     /* identities that manage every session: uid:N, key:Z85,
                                  a bare key or a .pub file (a path, with '/') */
    int allow_insecure_tcp;
} sepd_auth_opts_t;

/* Read the keys, bind the ZAP handler, start the auth thread. */
int sepd_auth_new(sepd_auth_t **out, void *zctx, const sepd_auth_opts_t *o);
/* Stop the thread, close its sockets (before zmq_ctx_term). */
void sepd_auth_destroy(sepd_auth_t **self_p);

/* Before sock binds endpoint: its domain (SEPD_DOMAIN_*), CURVE over tcp
 * (refused without server_key and a key list, unless allow_insecure_tcp),
 * a monitor for failed handshakes; an ipc endpoint's folder is checked
 * (not another user's, not writable by others). */
int sepd_auth_listen(sepd_auth_t *a, void *sock, const char *endpoint, const char *domain);
/* After an ipc endpoint is bound: its socket file is ours and 0600. */
int sepd_auth_check_ipc(const char *endpoint);

/* Over tcp with CURVE, sepd's public key (what workers are given); NULL
 * otherwise. */
const char *sepd_auth_server_public(const sepd_auth_t *a);

/* SIGHUP: re-read allowed_keys and worker_keys. */
void sepd_auth_reload(sepd_auth_t *a);

/* Failed authentications since start. */
uint64_t sepd_auth_failures(const sepd_auth_t *a);

/* sepd's own identity, "uid:N" (the owner of sessions from before
 * ownership existed). */
const char *sepd_auth_self(const sepd_auth_t *a);

/* Whether user may use a session owned by owner (shared: anyone): the
 * owner itself, or an operator. */
int sepd_auth_may(const sepd_auth_t *a, const char *user, const char *owner, int shared);
int sepd_auth_operator(const sepd_auth_t *a, const char *user);

#endif
