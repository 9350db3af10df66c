/* archive.c: the separator archive: the rows of every separator a
 * session's cache evicts, as the stages send them (w_archive), written by
 * the store thread a few batches at a time; and the seps verb that reads
 * them back (a listing, or the rows themselves for sepctl seps --export). */
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

/* ---- writing ------------------------------------------------------------- */


/* One w_archive message, its frames held without a copy. */
typedef struct {
    void *frame[5];                /* sid, pos, id, K, V */
    int n, n_layers, kv_dim, dtype, layer0;
    uint8_t *keep;                 /* (n) 0: its session is gone or keeps no archive */
} arch_msg_t;

/* The archive messages of a few batches, written in one job. */
typedef struct arch_job {
    sepd_job_t job;
    arch_msg_t *msgs;              /* (n_msgs) */
    size_t n_msgs, cap_msgs;
    size_t bytes;
    uint64_t entries;              /* separators x layers */
    double first;                  /* when the first message came */
    sep_store_sep_t *buf;          /* (buf_cap) entries of one run of one sid */
    size_t buf_cap;
} arch_job_t;

int sepd_archive_behind(const sepd_t *d)
{
    /* rows received and not yet written: the store (its disk) sets the pace */
    return d->arch_backlog + (d->arch ? d->arch->bytes : 0) >= SEPD_ARCHIVE_BACKLOG;
}

static void arch_job_free(arch_job_t *j)
{
    for (size_t i = 0; i < j->n_msgs; i++) {
        for (int f = 0; f < 5; f++)
            sep_frame_release(j->msgs[i].frame[f]);
        free(j->msgs[i].keep);
    }
    free(j->msgs);
    free(j->buf);
    free(j);
}

static int arch_run(sep_store_t *st, sepd_job_t *job)
{
    arch_job_t *j = (arch_job_t *)job;
    for (size_t i = 0; i < j->n_msgs; i++) {
        arch_msg_t *a = &j->msgs[i];
        const uint32_t *sid = sep_frame_data(a->frame[0]);
        const int64_t *pos = sep_frame_data(a->frame[1]);
        const int32_t *id = sep_frame_data(a->frame[2]);
        const uint8_t *k = sep_frame_data(a->frame[3]), *v = sep_frame_data(a->frame[4]);
        size_t row = (size_t)a->kv_dim * (a->dtype == SEP_ARCHIVE_BF16 ? 2 : 4);
        /* one put (one transaction) per run of entries of one session, keys
         * ascending: position, then layer */
        for (int e = 0; e < a->n;) {
            int e1 = e;
            while (e1 < a->n && sid[e1] == sid[e])
                e1++;
            if (!a->keep[e]) {
                e = e1;
                continue;
            }
            size_t need = (size_t)(e1 - e) * a->n_layers;
            int rc = SEP_GROW(j->buf, j->buf_cap, need);
            if (rc)
                return rc;
            size_t o = 0;
            for (int x = e; x < e1; x++)
                for (int l = 0; l < a->n_layers; l++) {
                    size_t at = ((size_t)l * a->n + x) * row;
                    j->buf[o++] = (sep_store_sep_t){ .pos = pos[x], .id = id[x],
                                                     .layer = a->layer0 + l,
                                                     .kv_dim = a->kv_dim, .dtype = a->dtype,
                                                     .k = k + at, .v = v + at };
                }
            if ((rc = sep_store_archive_put(st, sid[e], j->buf, o)))
                return rc;
            e = e1;
        }
    }
    return SEP_OK;
}

static void arch_done(void *loop, sepd_job_t *job)
{
    sepd_t *d = loop;
    arch_job_t *j = (arch_job_t *)job;
    if (job->rc)
        sep_log(SEP_LOG_ERROR, "separator archive: %llu entries not written: %s",
                (unsigned long long)j->entries, job->error);
    else {
        d->arch_entries += j->entries;
        d->arch_bytes += j->bytes;
        d->arch_seconds += job->ran;
    }
    d->arch_backlog -= j->bytes;
    arch_job_free(j);
}

void sepd_archive_flush(sepd_t *d)
{
    arch_job_t *j = d->arch;
    if (!j)
        return;
    d->arch = NULL;
    d->arch_backlog += j->bytes;
    sepd_storer_submit(d->storer, &j->job);
}

void sepd_archive_msg(sepd_t *d, sep_msg_t *m, int rank)
{
    int n = (int)sep_msg_int(m, "n", -1), L = (int)sep_msg_int(m, "n_layers", -1);
    int kd = (int)sep_msg_int(m, "kv_dim", -1), dt = (int)sep_msg_int(m, "dtype", -1);
    int l0 = (int)sep_msg_int(m, "layer0", -1);
    size_t elem = dt == SEP_ARCHIVE_BF16 ? 2 : 4;
    const sep_stage_t *st = &d->pool->stage[rank];
    if (n < 1 || L != st->layer1 - st->layer0 || l0 != st->layer0 || kd < 1 || kd > 65536 ||
        (dt != SEP_ARCHIVE_F32 && dt != SEP_ARCHIVE_BF16) || m->n_frames != 5 ||
        m->frames[0].len != (size_t)n * 4 || m->frames[1].len != (size_t)n * 8 ||
        m->frames[2].len != (size_t)n * 4 ||
        m->frames[3].len != (size_t)L * n * kd * elem || m->frames[4].len != m->frames[3].len) {
        sep_log(SEP_LOG_ERROR, "stage %d: a malformed w_archive (%d entries): dropped", rank, n);
        return;
    }
    /* entries of sessions that are gone, or keep no archive, are skipped */
    const uint32_t *sid = m->frames[0].data;
    uint8_t *keep = malloc((size_t)n);
    if (!keep) {
        sep_log(SEP_LOG_ERROR, "separator archive: out of memory: %d entries lost", n);
        return;
    }
    int kept = 0;
    for (int e = 0; e < n; e++) {
        sep_session_t *s = sepd_find_sid(d, sid[e]);
        keep[e] = s && s->archive != SEP_ARCHIVE_OFF;
        kept += keep[e];
    }
    if (!kept) {
        free(keep);
        return;
    }
    arch_job_t *j = d->arch;
    if (!j) {
        if (!(j = calloc(1, sizeof *j))) {
            free(keep);
            sep_log(SEP_LOG_ERROR, "separator archive: out of memory: %d entries lost", n);
            return;
        }
        j->job.run = arch_run;
        j->job.done = arch_done;
        j->first = sep_now();
        d->arch = j;
    }
    if (SEP_GROW(j->msgs, j->cap_msgs, j->n_msgs + 1)) {
        free(keep);
        sep_log(SEP_LOG_ERROR, "separator archive: out of memory: %d entries lost", n);
        return;
    }
    arch_msg_t *a = &j->msgs[j->n_msgs];
    *a = (arch_msg_t){ .n = n, .n_layers = L, .kv_dim = kd, .dtype = dt, .layer0 = l0,
                       .keep = keep };
    for (int f = 0; f < 5; f++)
        if (!(a->frame[f] = sep_msg_take_frame(m, f))) {
            for (int g = 0; g < f; g++)
                sep_frame_release(a->frame[g]);
            free(keep);
            sep_log(SEP_LOG_ERROR, "separator archive: out of memory: %d entries lost", n);
            return;
        }
    j->n_msgs++;
    j->entries += (uint64_t)kept * L;
    j->bytes += 2 * (size_t)L * n * kd * elem;
    if (j->bytes >= SEPD_ARCHIVE_BATCH)
        sepd_archive_flush(d);
}

void sepd_archive_due(sepd_t *d)
{
    if (d->arch && sep_now() - d->arch->first >= SEPD_ARCHIVE_DELAY_S)
        sepd_archive_flush(d);
}

/* ---- reading: the seps verb ---------------------------------------------- */

typedef struct {
    sepd_job_t job;
    uint8_t peer[256];
    size_t peer_len;
    char name[SEP_NAME_MAX + 1];
    uint32_t sid;
    int64_t from, to;
    int limit, data, count, n_layers;
    /* results */
    uint64_t total;               /* count: entries of layer 0 in [from, to) */
    int n;                        /* positions found (at most limit) */
    int64_t next;                 /* the position after them, -1: none */
    int64_t *pos;                 /* (limit) */
    int32_t *id;                  /* (limit) */
    int kv_dim, dtype;
    size_t row;                   /* bytes of one K or V row */
    uint8_t *k, *v;               /* data: (n_layers, limit, row) */
    int64_t have;                 /* data: layers seen of the current position */
    char bad[256];
} seps_job_t;

static int seps_entry(const sep_store_sep_t *e, void *arg)
{
    seps_job_t *j = arg;
    if (j->n == 0 || j->pos[j->n - 1] != e->pos) {
        if (j->data && j->n && j->have != j->n_layers) {
            snprintf(j->bad, sizeof j->bad, "archive of session '%s': position %lld has %lld "
                     "of %d layers", j->name, (long long)j->pos[j->n - 1], (long long)j->have,
                     j->n_layers);
            return SEP_EFORMAT;
        }
        if (j->n == j->limit) {
            j->next = e->pos;
            return 1;
        }
        j->pos[j->n] = e->pos;
        j->id[j->n] = e->id;
        j->n++;
        j->have = 0;
    }
    if (!j->data)
        return 0;
    size_t row = (size_t)e->kv_dim * (e->dtype == SEP_ARCHIVE_BF16 ? 2 : 4);
    if (!j->k) {
        j->kv_dim = e->kv_dim;
        j->dtype = e->dtype;
        j->row = row;
        size_t bytes = (size_t)j->n_layers * j->limit * row;
        j->k = malloc(bytes ? bytes : 1);
        j->v = malloc(bytes ? bytes : 1);
        if (!j->k || !j->v) {
            snprintf(j->bad, sizeof j->bad, "seps: no memory for %zu bytes", 2 * bytes);
            return SEP_ENOMEM;
        }
    }
    if (row != j->row || e->layer < 0 || e->layer >= j->n_layers) {
        snprintf(j->bad, sizeof j->bad, "archive of session '%s': position %lld layer %d has "
                 "another shape", j->name, (long long)e->pos, e->layer);
        return SEP_EFORMAT;
    }
    size_t at = ((size_t)e->layer * j->limit + (size_t)(j->n - 1)) * row;
    memcpy(j->k + at, e->k, row);
    memcpy(j->v + at, e->v, row);
    j->have++;
    return 0;
}

static int seps_run(sep_store_t *st, sepd_job_t *job)
{
    seps_job_t *j = (seps_job_t *)job;
    if (j->count)
        return sep_store_archive_count(st, j->sid, j->from, j->to, 0, &j->total);
    j->pos = malloc((size_t)j->limit * sizeof *j->pos);
    j->id = malloc((size_t)j->limit * sizeof *j->id);
    if (!j->pos || !j->id)
        return sep_fail(SEP_ENOMEM, "seps: out of memory");
    j->next = -1;
    int rc = sep_store_archive_scan(st, j->sid, j->from, j->to, j->data ? -1 : 0, seps_entry, j);
    if (rc == 1)
        rc = SEP_OK;
    if (!rc && j->data && j->n && j->have != j->n_layers)
        rc = sep_fail(SEP_EFORMAT, "archive of session '%s': position %lld has %lld of %d "
                      "layers", j->name, (long long)j->pos[j->n - 1], (long long)j->have,
                      j->n_layers);
    else if (rc && j->bad[0])
        rc = sep_fail(rc, "%s", j->bad);
    return rc;
}

/* The rows of layer l of the n positions found, packed (the job's buffer
 * holds limit slots a layer). */
static void seps_pack(seps_job_t *j, uint8_t *b)
{
    for (int l = 1; l < j->n_layers; l++)
        memmove(b + (size_t)l * j->n * j->row, b + (size_t)l * j->limit * j->row,
                (size_t)j->n * j->row);
}

static void seps_done(void *loop, sepd_job_t *job)
{
    sepd_t *d = loop;
    seps_job_t *j = (seps_job_t *)job;
    json_t *h = NULL;
    if (job->rc) {
        sepd_error(d, j->peer, j->peer_len, SEP_OP_SEPS, SEP_ERR_INTERNAL, "seps: %s",
                   job->error);
    } else if (j->count) {
        h = json_pack("{s:s, s:b, s:s, s:I, s:i}", "op", SEP_OP_SEPS, "ok", 1, "session",
                      j->name, "total", (json_int_t)j->total, "n_layers", j->n_layers);
        sepd_send(d, j->peer, j->peer_len, h, NULL, 0);
    } else if (j->data) {
        seps_pack(j, j->k);
        seps_pack(j, j->v);
        h = json_pack("{s:s, s:b, s:s, s:i, s:I, s:i, s:i, s:i}", "op", SEP_OP_SEPS, "ok", 1,
                      "session", j->name, "n", j->n, "next", (json_int_t)j->next, "n_layers",
                      j->n_layers, "kv_dim", j->kv_dim, "dtype", j->dtype);
        size_t rows = (size_t)j->n_layers * j->n * j->row;
        sep_frame_t f[4] = { { j->pos, (size_t)j->n * 8 }, { j->id, (size_t)j->n * 4 },
                             { j->k, j->n ? rows : 0 }, { j->v, j->n ? rows : 0 } };
        sepd_send(d, j->peer, j->peer_len, h, f, 4);
    } else {
        json_t *list = json_array();
        for (int i = 0; list && i < j->n; i++) {
            char *text = NULL;
            size_t len = 0;
            json_t *t = sep_tok_token_text(d->tok, j->id[i], &text, &len) ? NULL
                        : json_stringn(text, len);
            json_array_append_new(list, json_pack("[I, i, o]", (json_int_t)j->pos[i], j->id[i],
                                                  t ? t : json_null()));
            free(text);
        }
        h = list ? json_pack("{s:s, s:b, s:s, s:i, s:I, s:o}", "op", SEP_OP_SEPS, "ok", 1,
                             "session", j->name, "n", j->n, "next", (json_int_t)j->next,
                             "entries", list) : NULL;
        sepd_send(d, j->peer, j->peer_len, h, NULL, 0);
    }
    free(j->pos);
    free(j->id);
    free(j->k);
    free(j->v);
    free(j);
}

void sepd_seps(sepd_t *d, const sep_msg_t *m, sep_session_t *s)
{
    seps_job_t *j = calloc(1, sizeof *j);
    if (!j)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "seps: out of memory");
    j->job.run = seps_run;
    j->job.done = seps_done;
    memcpy(j->peer, m->peer, m->peer_len);
    j->peer_len = m->peer_len;
    snprintf(j->name, sizeof j->name, "%s", s->name);
    j->sid = s->sid;
    j->from = sep_msg_int(m, "from", 0);
    j->to = sep_msg_int(m, "to", INT64_MAX);
    j->data = json_is_true(json_object_get(m->hdr, "data"));
    j->count = json_is_true(json_object_get(m->hdr, "count"));
    j->n_layers = d->pool->n_layers;
    /* a page of rows stays near SEPD_SEPS_PAGE bytes */
    int64_t limit = sep_msg_int(m, "limit", 4096), cap = SEPD_SEPS_MAX;
    if (j->data) {
        int64_t per = (int64_t)d->pool->n_layers * 2 * 4 * 1024;
        cap = per ? SEPD_SEPS_PAGE / per : 1;
        cap = cap < 1 ? 1 : cap;
    }
    j->limit = (int)(limit < 1 ? 1 : limit > cap ? cap : limit);
    if (j->from < 0 || j->to < j->from) {
        free(j);
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "seps: from %lld, to %lld", (long long)sep_msg_int(m, "from", 0),
                          (long long)sep_msg_int(m, "to", 0));
    }
    sepd_archive_flush(d); /* what came before is in the answer */
    sepd_storer_submit(d->storer, &j->job);
}
