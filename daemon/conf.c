/* conf.c: the config file and its keys. */
#include "conf.h"
#include "err.h"
#include "lines.h"
#include "proto.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int conf_str(char **dst, const char *value)
{
    char *v = strdup(value);
    if (!v)
        return sep_fail(SEP_ENOMEM, "config: out of memory");
    free(*dst);
    *dst = v;
    return SEP_OK;
}

static int conf_int(int *dst, const char *key, const char *value, long lo, long hi)
{
    long v;
    int rc = sep_parse_long(key, value, lo, hi, &v);
    if (!rc)
        *dst = (int)v;
    return rc;
}

static int conf_long(long *dst, const char *key, const char *value, long lo, long hi)
{
    return sep_parse_long(key, value, lo, hi, dst);
}

static int conf_bool(int *dst, const char *key, const char *v)
{
    if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "1"))
        *dst = 1;
    else if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "0"))
        *dst = 0;
    else
        return sep_fail(SEP_EINVAL, "%s: '%.64s' is not yes or no", key, v);
    return SEP_OK;
}

/* One of the limits' keys (quota.h); SEP_ENOTFOUND when key is none of them. */
static int limits_set(sepd_limits_conf_t *l, const char *key, const char *v)
{
    long x;
    int rc;
    if (!strcmp(key, "max_active_sessions")) {
        if (!(rc = sep_parse_long(key, v, 1, 1 << 20, &x)))
            l->max_active_sessions = (int)x;
        return rc;
    }
    if (!strcmp(key, "max_clients")) {
        if (!(rc = sep_parse_long(key, v, 1, 1 << 20, &x)))
            l->max_clients = (int)x;
        return rc;
    }
    if (!strcmp(key, "max_pending_bytes"))
        /* a piece always fits; the feed window never holds more than 8 */
        return sep_parse_long(key, v, SEP_FEED_PIECE, (long)SEP_FEED_WINDOW * SEP_FEED_PIECE,
                              &l->max_pending_bytes);
    if (!strcmp(key, "cache_memory_mib")) {
        if (!strcmp(v, "auto")) {
            l->cache_memory_mib = 0;
            return SEP_OK;
        }
        if (sep_parse_long(key, v, 1, 1L << 30, &x))
            return sep_fail(SEP_EINVAL, "%s: '%.64s': expected auto or a whole number of MiB "
                            "in 1..%ld", key, v, 1L << 30);
        l->cache_memory_mib = x;
        return SEP_OK;
    }
    return SEP_ENOTFOUND;
}

int sep_conf_set(sep_conf_t *c, const char *key, const char *v)
{
    if (!strcmp(key, "socket")) return conf_str(&c->socket, v);
    if (!strcmp(key, "store")) return conf_str(&c->store, v);
    if (!strcmp(key, "model")) return conf_str(&c->model, v);
    if (!strcmp(key, "device")) return conf_str(&c->device, v);
    if (!strcmp(key, "precision")) return conf_str(&c->precision, v);
    if (!strcmp(key, "worker")) return conf_str(&c->worker, v);
    if (!strcmp(key, "mpirun")) return conf_str(&c->mpirun, v);
    if (!strcmp(key, "mpirun_args")) return conf_str(&c->mpirun_args, v);
    if (!strcmp(key, "log_level")) return conf_str(&c->log_level, v);
    if (!strcmp(key, "stages")) return conf_int(&c->stages, key, v, 1, SEP_MAX_STAGES);
    if (!strcmp(key, "threads")) return conf_int(&c->threads, key, v, 0, 1024);
    if (!strcmp(key, "max_batch")) return conf_int(&c->max_batch, key, v, 1, 1 << 20);
    if (!strcmp(key, "chunk")) return conf_int(&c->chunk, key, v, 1, 1 << 20);
    if (!strcmp(key, "batches_ahead")) return conf_int(&c->batches_ahead, key, v, 1, 16);
    if (!strcmp(key, "poll_spin_us")) {
        if (!strcmp(v, "auto")) {
            c->poll_spin_us = -1;
            return SEP_OK;
        }
        long us;
        if (sep_parse_long(key, v, 0, 1000000, &us))
            return sep_fail(SEP_EINVAL, "%s: '%.64s': expected auto or a whole number of "
                            "microseconds in 0..1000000", key, v);
        c->poll_spin_us = (int)us;
        return SEP_OK;
    }
    if (!strcmp(key, "decode_ahead")) return conf_int(&c->decode_ahead, key, v, 1, SEP_AHEAD_MAX);
    if (!strcmp(key, "max_sessions")) return conf_int(&c->max_sessions, key, v, 1, 1 << 20);
    if (!strcmp(key, "start_timeout")) return conf_int(&c->start_timeout, key, v, 1, 3600);
    if (!strcmp(key, "worker_timeout")) return conf_int(&c->worker_timeout, key, v, 1, 86400);
    if (!strcmp(key, "restart_backoff_max")) return conf_int(&c->restart_backoff_max, key, v, 1, 86400);
    if (!strcmp(key, "checkpoint_tokens")) return conf_long(&c->checkpoint_tokens, key, v, 1, 1L << 40);
    if (!strcmp(key, "checkpoint_bytes")) return conf_long(&c->checkpoint_bytes, key, v, 1, 1L << 40);
    if (!strcmp(key, "checkpoint_seconds")) return conf_int(&c->checkpoint_seconds, key, v, 1, 86400);
    if (!strcmp(key, "checkpoint_budget")) return conf_int(&c->checkpoint_budget, key, v, 1, 100);
    if (!strcmp(key, "shutdown_timeout")) return conf_int(&c->shutdown_timeout, key, v, 0, 86400);
    if (!strcmp(key, "store_map_mib")) return conf_long(&c->store_map_mib, key, v, 1, 1L << 30);
    if (!strcmp(key, "store_max_mib")) return conf_long(&c->store_max_mib, key, v, 1, 1L << 30);
    if (!strcmp(key, "store_sync")) return conf_bool(&c->store_sync, key, v);
    if (!strcmp(key, "archive")) {
        if (strcmp(v, "off") && strcmp(v, "f32") && strcmp(v, "bf16"))
            return sep_fail(SEP_EINVAL, "archive: '%.64s': expected off, f32 or bf16", v);
        return conf_str(&c->archive, v);
    }
    if (!strcmp(key, "server_key")) return conf_str(&c->server_key, v);
    if (!strcmp(key, "allowed_keys")) return conf_str(&c->allowed_keys, v);
    if (!strcmp(key, "worker_keys")) return conf_str(&c->worker_keys, v);
    if (!strcmp(key, "operators")) return conf_str(&c->operators, v);
    if (!strcmp(key, "allow_insecure_tcp")) return conf_bool(&c->allow_insecure_tcp, key, v);
    if (!strcmp(key, "worker_socket")) return conf_str(&c->worker_socket, v);
    if (!strcmp(key, "worker_key")) return conf_str(&c->worker_key, v);
    int rc = limits_set(&c->limits, key, v);
    if (rc != SEP_ENOTFOUND)
        return rc;
    return sep_fail(SEP_EINVAL, "unknown key '%.64s'", key);
}

static char *conf_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

int sep_conf_read(sep_conf_t *c, const char *path)
{
    sep_lines_t l;
    int rc = sep_lines_open(&l, path), got;
    while (!rc && (got = sep_lines_next(&l)) != 0) {
        if (got < 0) {
            rc = got;
            break;
        }
        char *hash = strchr(l.line, '#');
        if (hash)
            *hash = '\0';
        char *s = conf_trim(l.line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = sep_fail(SEP_EFORMAT, "%s:%d: expected 'key = value'", path, l.no);
            break;
        }
        *eq = '\0';
        char *key = conf_trim(s), *value = conf_trim(eq + 1);
        if ((rc = sep_conf_set(c, key, value)))
            rc = sep_fail(rc, "%s:%d: %s", path, l.no, sep_errmsg());
    }
    sep_lines_close(&l);
    return rc;
}

void sep_conf_free(sep_conf_t *c)
{
    free(c->socket);
    free(c->store);
    free(c->model);
    free(c->device);
    free(c->precision);
    free(c->worker);
    free(c->mpirun);
    free(c->mpirun_args);
    free(c->log_level);
    free(c->archive);
    free(c->server_key);
    free(c->allowed_keys);
    free(c->worker_keys);
    free(c->operators);
    free(c->worker_socket);
    free(c->worker_key);
    memset(c, 0, sizeof *c);
}
