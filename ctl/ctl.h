/* ctl.h: what sepctl's two halves share: the local verbs (sepctl.c:
 * tokenize, eval, separators) and the verbs that talk to sepd (remote.c).
 *
 * Exit codes: 0 success; 1 a runtime error (bad model or input, an error
 * reply from sepd); 2 a usage error; 3 no sepd answers at the socket. */
#ifndef SEP_CTL_H
#define SEP_CTL_H

#include <getopt.h>

#include "cache.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
#define EXIT_NO_DAEMON 3

/* --name's whole number in lo..hi, else a message and -1. */
int ctl_int_opt(const char *name, const char *arg, long lo, long hi, long *out);

/* A cache option (CTL_CACHE_OPTIONS) into p: 0 taken, 1 not a cache
 * option, -1 a bad value (reported). */
int ctl_cache_opt(int c, const char *arg, sep_policy_t *p, int *window_given,
                  const char **separators);

/* After the cache options: streaming's default window, then the numbers
 * checked (sep_policy_check); -1 with the message printed. */
int ctl_policy_done(sep_policy_t *p, int window_given);

#define CTL_CACHE_OPTIONS \
    { "method", required_argument, 0, 'M' }, { "init", required_argument, 0, 'A' }, \
    { "seps", required_argument, 0, 'S' }, { "window", required_argument, 0, 'W' }, \
    { "capacity", required_argument, 0, 'C' }, { "no-shift", no_argument, 0, 'N' }, \
    { "separators", required_argument, 0, 'X' }

/* Run a verb against sepd: open feed generate ls info stats suspend
 * resume flush close. argv[0] is the verb. */
int ctl_remote(const char *verb, int argc, char **argv);

/* keys.c: `sepctl keygen [--out DIR] [--name NAME]`. */
int ctl_keygen(int argc, char **argv);
/* --server-key and --key (NULL: not given). */
void ctl_keys_opts(const char *server_key, const char *key);
/* CURVE on sock for a tcp endpoint when a server key is known (options,
 * environment, sepctl.conf, defaults); *curve says whether it is on. */
int ctl_keys_apply(void *sock, const char *endpoint, int *curve);
/* A handshake that failed (a monitor event, its value; shook: a handshake
 * succeeded before; tcp: the endpoint is tcp) as an error (message set),
 * or 0. */
int ctl_handshake_failed(int event, unsigned value, int curve, int shook, int tcp);

#endif
