/* transfer.c: whole sessions in and out of the store (export, import).
 *
 * export streams a suspended session (its record, snapshot and separator
 * archive: the store's export format, store.h) to its client a chunk per
 * request, so the client's pace is the flow control; the session is the
 * export's op meanwhile. import takes such a stream in pieces (at most
 * SEP_FEED_WINDOW unacknowledged, as feed) under a new name, which is
 * reserved until import_end makes it a suspended session. Both run on
 * the store thread; a client that goes away is cancelled and what an
 * import wrote is taken back.
 */
#include "daemon.h"
#include "err.h"
#include "grow.h"
#include "log.h"
#include "persist.h"
#include "storer.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XFER_CHUNK (1 << 20)     /* bytes of one export reply */

/* ---- export ----------------------------------------------------------------- */

typedef struct {
    sepd_job_t job;
    char name[SEP_NAME_MAX + 1];
    sep_store_export_t *ex;       /* the store's cursor; lives on the store thread */
    int close;                    /* close the cursor instead of reading */
    uint8_t *buf;                 /* (got) the chunk read */
    size_t got;
} export_job_t;

static int export_run(sep_store_t *st, sepd_job_t *job)
{
    export_job_t *j = (export_job_t *)job;
    int rc = SEP_OK;
    if (j->close) {
        sep_store_export_close(&j->ex);
        return SEP_OK;
    }
    if (!j->ex && (rc = sep_store_export_open(st, j->name, &j->ex)))
        return rc;
    if (!(j->buf = malloc(XFER_CHUNK)))
        return sep_fail(SEP_ENOMEM, "export: out of memory");
    if ((rc = sep_store_export_read(j->ex, j->buf, XFER_CHUNK, &j->got)) || j->got == 0)
        sep_store_export_close(&j->ex); /* the end, or a failure: final either way */
    return rc;
}

static void export_done(void *loop, sepd_job_t *job)
{
    sepd_t *d = loop;
    export_job_t *j = (export_job_t *)job;
    sep_session_t *s = sepd_find(d, j->name);
    if (j->close) {
        free(j);
        return;
    }
    if (!s || s->op.kind != SEP_SOP_EXPORT) {
        /* its client went away meanwhile: let go of the cursor */
        if (j->ex) {
            j->close = 1;
            free(j->buf);
            j->buf = NULL;
            sepd_storer_submit(d->storer, &j->job);
            return;
        }
    } else if (job->rc) {
        sepd_op_error(d, s, SEP_ERR_INTERNAL, "export: %s", job->error);
        sepd_op_finish(d, s);
    } else {
        s->exporting = j->ex;
        s->export_reading = 0;
        s->export_at += (int64_t)j->got;
        json_t *h = json_pack("{s:s, s:b, s:s, s:I, s:b}", "op", SEP_OP_EXPORT, "ok", 1,
                              "session", s->name, "offset", (json_int_t)s->export_at,
                              "done", j->got == 0);
        sep_frame_t f = { j->buf, j->got };
        sepd_send(d, s->op.peer, s->op.peer_len, h, &f, 1);
        if (j->got == 0) {
            sep_log(SEP_LOG_INFO, "session '%s' exported (%lld bytes)", s->name,
                    (long long)s->export_at);
            sepd_op_finish(d, s);
        }
    }
    free(j->buf);
    free(j);
}

/* The next chunk of s's export (the first opens it). */
void sepd_export_next(sepd_t *d, sep_session_t *s)
{
    export_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        sepd_op_error(d, s, SEP_ERR_INTERNAL, "export: out of memory");
        sepd_op_finish(d, s);
        return;
    }
    j->job.run = export_run;
    j->job.done = export_done;
    snprintf(j->name, sizeof j->name, "%s", s->name);
    j->ex = s->exporting;
    s->exporting = NULL; /* the job has it until it comes back */
    s->export_reading = 1;
    sepd_storer_submit(d->storer, &j->job);
}

/* An export whose client went away: its cursor is closed on the thread. */
void sepd_export_drop(sepd_t *d, sep_session_t *s)
{
    if (!s->exporting)
        return; /* a read is under way: its answer closes it */
    export_job_t *j = calloc(1, sizeof *j);
    if (!j) {
        sep_log(SEP_LOG_ERROR, "export: out of memory to close a cursor");
        return;
    }
    j->job.run = export_run;
    j->job.done = export_done;
    j->close = 1;
    j->ex = s->exporting;
    s->exporting = NULL;
    sepd_storer_submit(d->storer, &j->job);
}

/* ---- import ----------------------------------------------------------------- */

typedef struct sepd_import {
    char name[SEP_NAME_MAX + 1];  /* reserved until the end */
    uint8_t peer[256];
    size_t peer_len;
    char user[SEP_USER_MAX];      /* the importer: the new session's owner */
    sep_store_import_t *im;       /* the store's; on the store thread */
    int dead;                     /* store thread only: aborted, later pieces skip */
    int in_flight;                /* pieces at the thread */
    int ended;                    /* import_end received */
    int failed;                   /* a piece failed: the rest is refused */
    int64_t bytes;
} sepd_import_t;

typedef struct {
    sepd_job_t job;
    sepd_import_t *imp;
    int kind;                     /* 0 a piece, 1 the end, 2 abort */
    int64_t seq;
    uint8_t *data;                /* (len) a piece */
    size_t len;
    sep_store_session_t rec;      /* the end: the new session's record */
} import_job_t;

enum { IMPORT_PIECE, IMPORT_END, IMPORT_ABORT };

static int import_run(sep_store_t *st, sepd_job_t *job)
{
    import_job_t *j = (import_job_t *)job;
    sepd_import_t *imp = j->imp;
    int rc = SEP_OK;
    if (imp->dead)
        return SEP_OK; /* a piece sent before the failure was known */
    if (j->kind == IMPORT_ABORT) {
        sep_store_import_abort(&imp->im);
        imp->dead = 1;
        return SEP_OK;
    }
    if (!imp->im && (rc = sep_store_import_open(st, imp->name, &imp->im)))
        return rc;
    if (j->kind == IMPORT_PIECE)
        return sep_store_import_write(imp->im, j->data, j->len);
    rc = sep_store_import_finish(imp->im, &j->rec);
    sep_store_import_abort(&imp->im); /* after a finish: only frees; else takes back */
    return rc;
}

sepd_import_t *sepd_import_find(sepd_t *d, const char *name)
{
    for (size_t i = 0; name && i < d->n_imports; i++)
        if (strcmp(d->imports[i]->name, name) == 0)
            return d->imports[i];
    return NULL;
}

static void import_remove(sepd_t *d, sepd_import_t *imp)
{
    SEP_REMOVE(d->imports, d->n_imports, imp);
    free(imp);
}

static void import_submit(sepd_t *d, sepd_import_t *imp, int kind, int64_t seq,
                          const void *data, size_t len);

static void import_done(void *loop, sepd_job_t *job)
{
    sepd_t *d = loop;
    import_job_t *j = (import_job_t *)job;
    sepd_import_t *imp = j->imp;
    imp->in_flight--;
    if (imp->failed || j->kind == IMPORT_ABORT) {
        if (imp->failed && imp->in_flight == 0)
            import_remove(d, imp);
    } else if (job->rc) {
        if (imp->peer_len)
            sepd_error(d, imp->peer, imp->peer_len, SEP_OP_IMPORT, SEP_ERR_INPUT,
                       "import of '%s': %s (nothing was imported)", imp->name, job->error);
        imp->failed = 1;
        import_submit(d, imp, IMPORT_ABORT, 0, NULL, 0);
    } else if (j->kind == IMPORT_PIECE) {
        sepd_send(d, imp->peer, imp->peer_len,
                  json_pack("{s:s, s:b, s:s, s:I}", "op", SEP_OP_IMPORT, "ok", 1, "session",
                            imp->name, "seq", (json_int_t)j->seq), NULL, 0);
    } else {
        /* the end: the stream is a session now, suspended */
        sep_session_t *s = NULL;
        int rc = sepd_persist_adopt(d, &j->rec, &s);
        if (rc) {
            sepd_error(d, imp->peer, imp->peer_len, SEP_OP_IMPORT_END, SEP_ERR_INTERNAL,
                       "import of '%s': %s", imp->name, sep_errmsg());
        } else {
            /* it belongs to its importer, whoever exported it */
            snprintf(s->owner, sizeof s->owner, "%s", imp->user);
            s->shared = 0;
            sepd_persist_put(d, s, SEP_STORE_SUSPENDED);
            sep_log(SEP_LOG_INFO, "session '%s' imported (%lld bytes, %lld tokens)%s%s",
                    s->name, (long long)imp->bytes, (long long)s->tokens,
                    s->foreign[0] ? "; it cannot be resumed here: " : "", s->foreign);
            json_t *h = sepd_info(s);
            if (h) {
                json_object_set_new(h, "op", json_string(SEP_OP_IMPORT_END));
                json_object_set_new(h, "ok", json_true());
            }
            sepd_send(d, imp->peer, imp->peer_len, h, NULL, 0);
        }
        import_remove(d, imp);
    }
    free(j->data);
    sep_store_session_free(&j->rec);
    free(j);
}

static void import_submit(sepd_t *d, sepd_import_t *imp, int kind, int64_t seq,
                          const void *data, size_t len)
{
    import_job_t *j = calloc(1, sizeof *j);
    if (!j || (len && !(j->data = malloc(len)))) {
        free(j);
        sep_log(SEP_LOG_ERROR, "import of '%s': out of memory", imp->name);
        imp->failed = 1;
        if (imp->peer_len)
            sepd_error(d, imp->peer, imp->peer_len, SEP_OP_IMPORT, SEP_ERR_INTERNAL,
                       "import of '%s': out of memory in sepd", imp->name);
        return;
    }
    j->job.run = import_run;
    j->job.done = import_done;
    j->imp = imp;
    j->kind = kind;
    j->seq = seq;
    if (len)
        memcpy(j->data, data, len);
    j->len = len;
    imp->in_flight++;
    sepd_storer_submit(d->storer, &j->job);
}

void sepd_import_piece(sepd_t *d, const sep_msg_t *m)
{
    const char *name = sep_msg_str(m, "session", NULL);
    char clip[64];
    if (!name || !sep_name_ok(name))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "import: a session name of 1 to %d characters of A-Z a-z 0-9 . _ -",
                          SEP_NAME_MAX);
    sepd_import_t *imp = sepd_import_find(d, name);
    int end = strcmp(m->op, SEP_OP_IMPORT_END) == 0;
    if (!imp) {
        if (end)
            return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                              "import_end: no import of '%s' under way", sep_clip(name, clip));
        if (sepd_find(d, name))
            return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_EXISTS,
                              "session '%s' exists already", name);
        if (!sepd_limit_new_session(d, m, name))
            return;
        if (SEP_GROW(d->imports, d->cap_imports, d->n_imports + 1) ||
            !(imp = calloc(1, sizeof *imp)))
            return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL,
                              "import: out of memory");
        snprintf(imp->name, sizeof imp->name, "%s", name);
        memcpy(imp->peer, m->peer, m->peer_len);
        imp->peer_len = m->peer_len;
        snprintf(imp->user, sizeof imp->user, "%s", m->user);
        d->imports[d->n_imports++] = imp;
    } else if (imp->peer_len != m->peer_len || memcmp(imp->peer, m->peer, m->peer_len) != 0) {
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BUSY,
                          "another client imports '%s'", name);
    }
    if (imp->failed || imp->ended)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                          "import of '%s': %s", name, imp->failed ? "it failed" : "it ended");
    if (end) {
        imp->ended = 1;
        import_submit(d, imp, IMPORT_END, 0, NULL, 0);
        return;
    }
    if (!sepd_piece_ok(d, m))
        return;
    if (imp->in_flight >= SEP_FEED_WINDOW)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_LIMIT,
                          "import: more than %d pieces unacknowledged", SEP_FEED_WINDOW);
    imp->bytes += (int64_t)m->frames[0].len;
    import_submit(d, imp, IMPORT_PIECE, sep_msg_int(m, "seq", 0), m->frames[0].data,
                  m->frames[0].len);
}

void sepd_import_gone(sepd_t *d, const uint8_t *peer, size_t peer_len)
{
    for (size_t i = 0; i < d->n_imports; i++) {
        sepd_import_t *imp = d->imports[i];
        if (imp->peer_len != peer_len || memcmp(imp->peer, peer, peer_len) != 0)
            continue;
        imp->peer_len = 0;
        if (!imp->failed && !imp->ended) {
            sep_log(SEP_LOG_INFO, "import of '%s': its client went away; taken back", imp->name);
            imp->failed = 1;
            import_submit(d, imp, IMPORT_ABORT, 0, NULL, 0);
        }
    }
}

void sepd_import_stop(sepd_t *d)
{
    for (size_t i = 0; i < d->n_imports; i++) {
        sepd_import_t *imp = d->imports[i];
        if (!imp->failed && !imp->ended) {
            sep_log(SEP_LOG_INFO, "import of '%s': sepd stops; taken back", imp->name);
            imp->peer_len = 0;
            imp->failed = 1;
            import_submit(d, imp, IMPORT_ABORT, 0, NULL, 0);
        }
    }
}

void sepd_import_free(sepd_t *d)
{
    while (d->n_imports)
        free(d->imports[--d->n_imports]);
    free(d->imports);
    d->imports = NULL;
    d->cap_imports = 0;
}
