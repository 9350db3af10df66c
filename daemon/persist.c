/* persist.c: sessions in the store, through the store thread (persist.h). */
#include "persist.h"
#include "auth.h"
#include "err.h"
#include "fingerprint.h"
#include "grow.h"
#include "log.h"
#include "paths.h"
#include "storer.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    sepd_job_t job;               /* first: the store thread sees this */
    sep_sj_t kind;                /* SEP_SJ_NONE: a record put nothing waits for */
    uint32_t sid;
    char name[SEP_NAME_MAX + 1];
    sep_store_session_t rec;      /* CREATE: the record to write */
    uint32_t state;               /* NONE: the state the stored record takes ... */
    char owner[SEP_USER_MAX];     /* ... and its owner and access (access.c) */
    uint32_t access;
    sep_ckpt_t *ck;               /* WRITE: the cut; READ: the stored record and states */
} persist_job_t;

void sep_ckpt_free(sep_ckpt_t **self_p)
{
    sep_ckpt_t *c = *self_p;
    if (!c)
        return;
    for (int i = 0; i < SEP_MAX_STAGES; i++) {
        sep_frame_release(c->frame[i]);
        free(c->buf[i]);
    }
    sep_store_session_free(&c->rec);
    free(c);
    *self_p = NULL;
}

static double wall_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* ---- records ------------------------------------------------------------ */

/* s's record now, as an owned copy in *out (encoded and decoded again: the
 * copy shares nothing with s, and what the store would refuse fails here). */
static int persist_record(const sepd_t *d, const sep_session_t *s, uint32_t state,
                          sep_store_session_t *out)
{
    sep_store_session_t r = {
        .sid = s->sid ? s->sid : 1, /* a new session's sid comes from the store thread */
        .state = state, .method = (int32_t)s->policy.method, .a = s->policy.a,
        .s = s->policy.s, .w = s->policy.w, .c = s->policy.c, .shift = s->policy.shift,
        .separators = s->separators, .sep_ids = s->sep_ids,
        .n_sep_ids = (uint32_t)s->n_sep_ids, .archive = s->archive,
        .n_stages = (uint32_t)d->pool->stages,
        .tokens = s->tokens, .kv_sum = s->kv_sum, .kv_max = s->kv_max, .kv_last = s->kv_last,
        .bytes_in = s->bytes_in, .bytes_tokenized = s->bytes_tokenized,
        .ids_total = s->ids_total, .checkpoints = s->checkpoints + 1, .nll_sum = s->nll_sum,
        .created = s->created, .saved = wall_now(), .held = (uint8_t *)s->held,
        .held_len = (uint32_t)s->held_len, .tok_at = s->tok_at, .queue = s->q,
        .n_queue = (uint32_t)s->q_len, .temperature = s->sampler.temperature,
        .top_p = s->sampler.top_p, .min_p = s->sampler.min_p,
        .repetition = s->sampler.repetition, .presence = s->sampler.presence,
        .frequency = s->sampler.frequency, .top_k = s->sampler.top_k,
        .penalty_window = s->penalty_window,
        .owner_len = (uint32_t)strlen(s->owner), .access = s->shared ? SEP_STORE_SHARED : 0,
    };
    memcpy(r.owner, s->owner, r.owner_len);
    _Static_assert(SEP_STORE_MAX_RECENT == SEP_PICK_MAX_RECENT, "a record holds the ring");
    int32_t recent[SEP_PICK_MAX_RECENT];
    r.n_recent = (uint32_t)sep_session_recent(s, SEP_PICK_MAX_RECENT, recent);
    r.recent = recent;
    /* the NLLs the feeding client has not confirmed: sent, and not yet sent */
    float *nlls = NULL;
    size_t n_nlls = s->kept_n + (s->op.keep_nll ? s->out_n : 0);
    if (n_nlls) {
        if (!(nlls = malloc(n_nlls * sizeof *nlls)))
            return sep_fail(SEP_ENOMEM, "checkpoint: out of memory");
        memcpy(nlls, s->kept_nll, s->kept_n * sizeof *nlls);
        memcpy(nlls + s->kept_n, s->out_nll, (n_nlls - s->kept_n) * sizeof *nlls);
        r.nlls = nlls;
        r.n_nlls = (uint32_t)n_nlls;
        r.nll_at = s->kept_n ? s->kept_at : s->tokens - (int64_t)n_nlls;
    }
    snprintf(r.name, sizeof r.name, "%s", s->name);
    memcpy(r.model_fp, d->model_fp, sizeof r.model_fp);
    snprintf(r.precision, sizeof r.precision, "%s", d->pool->stage[0].device);
    memcpy(r.rng, s->rng.s, sizeof r.rng);
    for (int i = 0; i < d->pool->stages; i++) {
        r.layer0[i] = d->pool->stage[i].layer0;
        r.layer1[i] = d->pool->stage[i].layer1;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = sep_store_session_encode(&r, &buf, &len);
    if (!rc)
        rc = sep_store_session_decode(out, buf, len);
    free(buf);
    free(nlls);
    if (!rc)
        out->sid = s->sid;
    return rc;
}

/* Why this sepd cannot load r's snapshot ("" if it can). */
static void persist_fit(const sepd_t *d, const sep_store_session_t *r, char *why, size_t cap)
{
    char a[16], b[16];
    why[0] = '\0';
    if (memcmp(r->model_fp, d->model_fp, sizeof r->model_fp) != 0) {
        snprintf(why, cap, "it was made with another model (fingerprint %s..., this sepd serves "
                 "%s... from %s)", sep_fingerprint_hex(r->model_fp, 6, a),
                 sep_fingerprint_hex(d->model_fp, 6, b), d->conf.model);
        return;
    }
    if (r->n_stages == 0)
        return; /* no snapshot yet: any layout opens it afresh */
    int same = (int)r->n_stages == d->pool->stages;
    for (int i = 0; same && i < d->pool->stages; i++)
        same = r->layer0[i] == d->pool->stage[i].layer0 &&
               r->layer1[i] == d->pool->stage[i].layer1;
    if (same)
        return;
    int at = snprintf(why, cap, "its snapshot has %u stage(s) (layers", r->n_stages);
    for (uint32_t i = 0; i < r->n_stages && at > 0 && (size_t)at < cap; i++)
        at += snprintf(why + at, cap - (size_t)at, "%s %d-%d", i ? "," : "", r->layer0[i],
                       r->layer1[i] - 1);
    if (at > 0 && (size_t)at < cap)
        snprintf(why + at, cap - (size_t)at, "); this sepd runs %d stage(s)", d->pool->stages);
}

/* Its owner: the record's, or for a record from before ownership (no
 * owner) sepd's own uid, the only user its ipc socket admitted then;
 * it is stored with the next checkpoint. */
static void persist_owner(sepd_t *d, const sep_store_session_t *r, sep_session_t *s)
{
    if (r->owner_len && r->owner_len < sizeof s->owner) {
        memcpy(s->owner, r->owner, r->owner_len);
        s->owner[r->owner_len] = '\0';
        s->shared = (r->access & SEP_STORE_SHARED) != 0;
        return;
    }
    snprintf(s->owner, sizeof s->owner, "%s", sepd_auth_self(d->auth));
    s->shared = 0;
    sep_log(SEP_LOG_INFO, "session '%s': a record without an owner (made before sessions had "
            "owners): it belongs to %s, sepd's own user", s->name, s->owner);
}

/* A session as its record left it: counters, stream and sampler at the
 * cut, its caches in the store (suspended). */
static int persist_session(sepd_t *d, const sep_store_session_t *r, sep_session_t **out)
{
    sep_policy_t p = { .method = (sep_method_t)r->method, .a = r->a, .s = r->s, .w = r->w,
                       .c = r->c, .shift = r->shift };
    sep_session_t *s = NULL;
    int rc = sep_session_new(&s, r->name, r->sid, &p, r->separators ? r->separators : "auto",
                             d->tok, d->pool->vocab);
    if (rc)
        return rc;
    if (r->held_len > SEP_TOK_HOLD_MAX || (r->n_queue && !r->queue)) {
        sep_session_destroy(&s);
        return sep_fail(SEP_EFORMAT, "session '%s': its record holds %u bytes of held text "
                        "(at most %d)", r->name, r->held_len, SEP_TOK_HOLD_MAX);
    }
    s->state = SEP_SS_SUSPENDED;
    /* its queued ids wait for a client: their NLLs are that client's (a
     * feed --retry resending from bytes_committed gets every one) */
    s->hold = 1;
    memcpy(s->held, r->held, r->held_len);
    s->held_len = r->held_len;
    s->tok_at = r->tok_at;
    for (uint32_t i = 0; i < r->n_queue; i++)
        if ((rc = sep_session_push(s, r->queue[i]))) {
            sep_session_destroy(&s);
            return rc;
        }
    s->ids_total = r->ids_total;
    s->tokens = r->tokens;
    s->nll_sum = r->nll_sum;
    s->kv_sum = r->kv_sum;
    s->kv_max = r->kv_max;
    s->kv_last = r->kv_last;
    s->bytes_in = r->bytes_in;
    s->bytes_tokenized = r->bytes_tokenized;
    s->bytes_committed = r->bytes_in;
    s->committed_bytes = r->bytes_in;
    s->committed_tokens = r->tokens;
    s->committed_at = sep_now();
    s->checkpoints = r->checkpoints;
    s->n_stages_saved = (int)r->n_stages;
    s->created = r->created;
    s->archive = r->archive;
    memcpy(s->rng.s, r->rng, sizeof r->rng);
    s->sampler = (sep_pick_t){ .temperature = r->temperature, .top_p = r->top_p,
                               .min_p = r->min_p, .repetition = r->repetition,
                               .presence = r->presence, .frequency = r->frequency,
                               .top_k = r->top_k };
    s->penalty_window = r->penalty_window;
    /* the ring as it was at the cut (the queue's pushes above went in it
     * too, and are among these) */
    for (uint32_t i = 0; i < r->n_recent; i++)
        s->recent[(r->ids_total - r->n_recent + i) % SEP_PICK_MAX_RECENT] = r->recent[i];
    s->recent_from = r->ids_total - r->n_recent;
    if (r->n_nlls) {
        if (!(s->kept_nll = malloc(r->n_nlls * sizeof *s->kept_nll))) {
            sep_session_destroy(&s);
            return sep_fail(SEP_ENOMEM, "session '%s': out of memory", r->name);
        }
        memcpy(s->kept_nll, r->nlls, r->n_nlls * sizeof *s->kept_nll);
        s->kept_n = s->kept_cap = r->n_nlls;
        s->kept_at = r->nll_at;
    }
    /* the separator ids the caches were made with must be those of today */
    if (r->n_sep_ids != s->n_sep_ids ||
        memcmp(r->sep_ids, s->sep_ids, s->n_sep_ids * sizeof *s->sep_ids) != 0)
        snprintf(s->foreign, sizeof s->foreign, "its separator set '%s' names other ids than "
                 "it did (%u then, %zu now)", s->separators, r->n_sep_ids, s->n_sep_ids);
    persist_fit(d, r, s->foreign, sizeof s->foreign);
    persist_owner(d, r, s);
    if (r->n_stages && strcmp(r->precision, d->pool->stage[0].device) != 0)
        sep_log(SEP_LOG_WARN, "session '%s' was computed on %s; it goes on on %s (its NLLs "
                "from here are that backend's)", r->name, r->precision,
                d->pool->stage[0].device);
    *out = s;
    return SEP_OK;
}

/* A record that does not decode: listed as failed with the reason; close
 * deletes it. */
static int persist_damaged(sepd_t *d, const sep_store_session_t *r)
{
    sep_policy_t p = { .method = SEP_METHOD_FULL, .c = 1, .shift = 1 };
    sep_session_t *s = NULL;
    int rc = sep_session_new(&s, r->name, 0, &p, "auto", d->tok, d->pool->vocab);
    if (rc)
        return rc;
    s->state = SEP_SS_FAILED;
    snprintf(s->foreign, sizeof s->foreign, "its record is damaged: %s", r->damage);
    snprintf(s->owner, sizeof s->owner, "%s", sepd_auth_self(d->auth)); /* its owner is unknown */
    if ((rc = sepd_add(d, s)))
        sep_session_destroy(&s);
    return rc;
}

int sepd_persist_adopt(sepd_t *d, const sep_store_session_t *r, sep_session_t **out)
{
    sep_session_t *s = NULL;
    int rc = persist_session(d, r, &s);
    if (!rc && (rc = sepd_add(d, s)))
        sep_session_destroy(&s);
    *out = s;
    return rc;
}

/* ---- start and end ------------------------------------------------------ */

/* One sepd per store: a lock in the store directory. */
static int persist_lock(sepd_t *d)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/sepd.lock", d->conf.store);
    d->store_lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d->store_lock_fd < 0)
        return sep_fail(SEP_EIO, "%s: %s", path, strerror(errno));
    if (flock(d->store_lock_fd, LOCK_EX | LOCK_NB) != 0)
        return sep_fail(SEP_EIO, "another sepd uses the store %s (%s is locked)", d->conf.store,
                        path);
    return SEP_OK;
}

/* The sessions of the records recs into d's table: active ones marked
 * for loading (reviving), suspended ones as they are, and those this sepd
 * cannot load with the reason. */
static int persist_load(sepd_t *d, const sep_store_session_t *recs, size_t n, int counts[3])
{
    int rc;
    counts[0] = counts[1] = counts[2] = 0;
    for (size_t i = 0; i < n; i++) {
        sep_session_t *s = NULL;
        if (recs[i].damaged) {
            sep_log(SEP_LOG_ERROR, "session '%s': %s (only close works on it)", recs[i].name,
                    recs[i].damage);
            if ((rc = persist_damaged(d, &recs[i])))
                return rc;
            counts[2]++;
            continue;
        }
        if ((rc = persist_session(d, &recs[i], &s)) || (rc = sepd_add(d, s))) {
            sep_session_destroy(&s);
            return rc;
        }
        if (s->foreign[0]) {
            sep_log(SEP_LOG_WARN, "session '%s' stays suspended: %s", s->name, s->foreign);
            counts[2]++;
        } else if (recs[i].state == SEP_STORE_ACTIVE) {
            s->state = SEP_SS_ACTIVE; /* loaded in the background (reviving) */
            s->reviving = 1;
            counts[0]++;
        } else {
            counts[1]++;
        }
    }
    return SEP_OK;
}

/* The active sessions' snapshots read back, for the workers. */
static void persist_revive(sepd_t *d, const char *dir, size_t n, const int counts[3])
{
    sep_log(SEP_LOG_INFO, "store %s: %zu session(s): %d to resume, %d suspended, %d that this "
            "sepd cannot load", dir, n, counts[0], counts[1], counts[2]);
    for (size_t i = 0; i < d->n_sess; i++)
        if (d->sess[i]->reviving)
            sepd_persist_read(d, d->sess[i]);
}

int sepd_persist_open(sepd_t *d)
{
    char dir[4200];
    int rc;
    if ((rc = persist_lock(d)) || (rc = sep_model_fingerprint(d->conf.model, d->model_fp)))
        return rc;
    snprintf(dir, sizeof dir, "%s/db", d->conf.store);
    sep_store_opts_t o = { .map_size = (size_t)d->conf.store_map_mib << 20,
                           .map_max = (size_t)d->conf.store_max_mib << 20,
                           .no_sync = !d->conf.store_sync };
    sep_store_t *st = NULL;
    sep_store_session_t *recs = NULL;
    size_t n = 0;
    int counts[3];
    if ((rc = sep_store_open(&st, dir, &o)) || (rc = sep_store_sessions(st, &recs, &n)))
        goto fail;
    if ((rc = persist_load(d, recs, n, counts)))
        goto fail;
    sep_store_sessions_free(&recs, n);
    recs = NULL;
    if ((rc = sepd_storer_start(&d->storer, st)))
        goto fail;
    st = NULL;
    persist_revive(d, dir, n, counts);
    return SEP_OK;
fail:
    sep_store_sessions_free(&recs, n);
    sep_store_close(&st);
    return rc;
}

int sepd_persist_reload(sepd_t *d, const sep_store_session_t *recs, size_t n)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/db", d->conf.store);
    int counts[3];
    while (d->n_sess) {
        sep_session_t *s = d->sess[--d->n_sess];
        sep_ckpt_free(&s->cut);
        sep_ckpt_free(&s->loaded);
        sep_session_destroy(&s);
    }
    int rc = persist_load(d, recs, n, counts);
    if (!rc)
        persist_revive(d, dir, n, counts);
    return rc;
}

int64_t sepd_store_file_bytes(const sepd_t *d)
{
    char path[4200];
    struct stat sb;
    snprintf(path, sizeof path, "%s/db/data.mdb", d->conf.store);
    return stat(path, &sb) == 0 ? (int64_t)sb.st_blocks * 512 : -1;
}

void sepd_persist_close(sepd_t *d)
{
    sepd_archive_flush(d);
    sepd_storer_stop(&d->storer, d);
    if (d->store_lock_fd >= 0)
        close(d->store_lock_fd);
    d->store_lock_fd = -1;
}

void sepd_persist_finish(sepd_t *d)
{
    sepd_storer_finish(d->storer, d);
}

/* ---- jobs ---------------------------------------------------------------- */

static int job_run(sep_store_t *st, sepd_job_t *job)
{
    persist_job_t *j = (persist_job_t *)job;
    sep_ckpt_t *ck = j->ck;
    int rc = SEP_OK;
    switch (j->kind) {
    case SEP_SJ_CREATE:
        if ((rc = sep_store_alloc_sid(st, &j->sid)))
            return rc;
        j->rec.sid = j->sid;
        return sep_store_put_session(st, &j->rec);
    case SEP_SJ_NONE:
        /* the stored record with another state: its snapshot stays as it is */
        if (!(rc = sep_store_get_session(st, j->name, &j->rec))) {
            j->rec.state = j->state;
            j->rec.owner_len = (uint32_t)strlen(j->owner);
            memcpy(j->rec.owner, j->owner, j->rec.owner_len);
            j->rec.access = j->access;
            rc = sep_store_put_session(st, &j->rec);
        }
        return rc;
    case SEP_SJ_WRITE:
        rc = sep_store_checkpoint(st, &ck->rec, ck->state, ck->n_stages);
        /* the states were copied into the map (or failed to be): let go of them */
        for (int i = 0; i < ck->n_stages; i++) {
            sep_frame_release(ck->frame[i]);
            ck->frame[i] = NULL;
            ck->state[i] = (sep_store_blob_t){ 0 };
        }
        return rc;
    case SEP_SJ_READ:
        /* the states of the snapshot as the store describes it */
        if ((rc = sep_store_get_session(st, j->name, &ck->rec)))
            return rc;
        if (ck->rec.sid != j->sid)
            return sep_fail(SEP_EFORMAT, "session '%s': the store holds sid %u for it, not %u",
                            j->name, ck->rec.sid, j->sid);
        ck->n_stages = (int)ck->rec.n_stages;
        for (int i = 0; !rc && i < ck->n_stages; i++)
            if (!(rc = sep_store_read_state(st, &ck->rec, i, &ck->buf[i])))
                ck->state[i] = (sep_store_blob_t){ ck->buf[i], ck->rec.state_len[i] };
        return rc;
    case SEP_SJ_DELETE:
        return sep_store_delete_session(st, j->name, j->sid);
    }
    return SEP_OK;
}

static void job_done(void *loop, sepd_job_t *job)
{
    sepd_t *d = loop;
    persist_job_t *j = (persist_job_t *)job;
    sep_session_t *s = sepd_find(d, j->name); /* names are unique; a new one has no sid yet */
    if (j->kind == SEP_SJ_NONE) {
        if (j->job.rc)
            sep_log(SEP_LOG_ERROR, "session '%s': its record: %s", j->name, j->job.error);
    } else if (!s || s->sj != j->kind) {
        sep_log(SEP_LOG_ERROR, "store: an answer (%d) for session '%s' that waits for %s", j->kind,
                j->name, s ? (s->sj == SEP_SJ_NONE ? "none" : "another") : "nothing: it is gone");
    } else {
        s->sj = SEP_SJ_NONE;
        if (j->kind == SEP_SJ_CREATE && !j->job.rc)
            s->sid = j->sid;
        if (j->kind == SEP_SJ_READ && !j->job.rc) {
            s->loaded = j->ck;
            j->ck = NULL;
        }
        if (j->kind == SEP_SJ_WRITE && !j->job.rc) {
            d->ckpt_count++;
            d->ckpt_seconds += j->job.ran;
            for (int i = 0; i < j->ck->n_stages; i++)
                d->ckpt_bytes += j->ck->rec.state_len[i];
        }
        if (j->kind == SEP_SJ_WRITE) {
            uint64_t bytes = 0;
            for (int i = 0; i < j->ck->n_stages; i++)
                bytes += j->ck->rec.state_len[i];
            double states = j->ck->states_at - j->ck->cut_at, all = sep_now() - j->ck->cut_at;
            if (!j->job.rc)
                s->ckpt_cost = states;
            sep_log(j->job.rc ? SEP_LOG_ERROR
                    : j->ck->rec.state == SEP_STORE_SUSPENDED ? SEP_LOG_INFO : SEP_LOG_DEBUG,
                    "session '%s': checkpoint of %lld tokens%s%s: %llu bytes of state in %.1f "
                    "ms from the stages, %.1f ms in the store, %.1f ms in all (%.2f GB/s)",
                    s->name, (long long)j->ck->rec.tokens, j->job.rc ? " failed: " : "",
                    j->job.rc ? j->job.error : "", (unsigned long long)bytes, states * 1e3,
                    j->job.ran * 1e3, all * 1e3, all > 0 ? bytes / all / 1e9 : 0.0);
        }
        if (j->kind == SEP_SJ_READ && !j->job.rc)
            sep_log(SEP_LOG_INFO, "session '%s': its snapshot read in %.1f ms", s->name,
                    j->job.ran * 1e3);
        sepd_store_answer(d, s, j->kind, j->job.rc, j->job.error,
                          j->kind == SEP_SJ_WRITE ? &j->ck->rec : NULL);
    }
    sep_ckpt_free(&j->ck);
    sep_store_session_free(&j->rec);
    free(j);
}

static persist_job_t *job_new(sep_session_t *s, sep_sj_t kind)
{
    persist_job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->job.run = job_run;
    j->job.done = job_done;
    j->kind = kind;
    j->sid = s->sid;
    snprintf(j->name, sizeof j->name, "%s", s->name);
    return j;
}

/* Submit j (s waits for it), or answer the failure at once. */
static void job_submit(sepd_t *d, sep_session_t *s, persist_job_t *j, int rc)
{
    if (!j || rc) {
        char msg[512];
        sep_sj_t kind = j ? j->kind : SEP_SJ_NONE;
        snprintf(msg, sizeof msg, "%s", j ? sep_errmsg() : "out of memory");
        if (j) {
            sep_ckpt_free(&j->ck);
            sep_store_session_free(&j->rec);
            free(j);
        }
        sepd_store_answer(d, s, kind, rc ? rc : SEP_ENOMEM, msg, NULL);
        return;
    }
    s->sj = j->kind;
    /* the archive of what was evicted before goes first: a checkpoint never
     * holds a cut whose evicted separators the store does not have */
    sepd_archive_flush(d);
    sepd_storer_submit(d->storer, &j->job);
}

void sepd_persist_create(sepd_t *d, sep_session_t *s)
{
    persist_job_t *j = job_new(s, SEP_SJ_CREATE);
    int rc = j ? persist_record(d, s, SEP_STORE_ACTIVE, &j->rec) : SEP_ENOMEM;
    if (!rc) {
        j->rec.n_stages = 0; /* no snapshot yet */
        j->rec.checkpoints = 0;
    }
    job_submit(d, s, j, rc);
}

void sepd_persist_read(sepd_t *d, sep_session_t *s)
{
    persist_job_t *j = job_new(s, SEP_SJ_READ);
    int rc = j && (j->ck = calloc(1, sizeof *j->ck)) ? SEP_OK : SEP_ENOMEM;
    job_submit(d, s, j, rc);
}

void sepd_persist_delete(sepd_t *d, sep_session_t *s)
{
    persist_job_t *j = job_new(s, SEP_SJ_DELETE);
    job_submit(d, s, j, j ? SEP_OK : SEP_ENOMEM);
}

void sepd_persist_put(sepd_t *d, sep_session_t *s, uint32_t state)
{
    persist_job_t *j = job_new(s, SEP_SJ_NONE);
    if (!j) {
        sep_log(SEP_LOG_ERROR, "session '%s': its record: out of memory", s->name);
        return;
    }
    j->state = state;
    snprintf(j->owner, sizeof j->owner, "%s", s->owner);
    j->access = s->shared ? SEP_STORE_SHARED : 0;
    sepd_storer_submit(d->storer, &j->job);
}

/* ---- checkpoints ---------------------------------------------------------- */

int sepd_ckpt_cut(sepd_t *d, sep_session_t *s, uint32_t state)
{
    sep_ckpt_free(&s->cut);
    sep_ckpt_t *c = calloc(1, sizeof *c);
    if (!c)
        return sep_fail(SEP_ENOMEM, "checkpoint: out of memory");
    int rc = persist_record(d, s, state, &c->rec);
    if (rc) {
        sep_ckpt_free(&c);
        return rc;
    }
    c->n_stages = d->pool->stages;
    c->cut_at = sep_now();
    s->cut = c;
    return SEP_OK;
}

int sepd_ckpt_state(sep_session_t *s, sep_msg_t *m, int rank)
{
    sep_ckpt_t *c = s->cut;
    if (!c || rank >= c->n_stages || m->n_frames != 1)
        return sep_fail(SEP_EFORMAT, "w_save without its state frame");
    /* n_seen of the state must be the session's tokens at the cut */
    int64_t seen = -1;
    if (sep_cache_state_seen(m->frames[0].data, m->frames[0].len, &seen))
        return SEP_EFORMAT;
    if (seen != c->rec.tokens)
        return sep_fail(SEP_EFORMAT, "its cache state holds %lld tokens, the session %lld at "
                        "the cut", (long long)seen, (long long)c->rec.tokens);
    size_t len = m->frames[0].len;
    if (!(c->frame[rank] = sep_msg_take_frame(m, 0)))
        return sep_fail(SEP_ENOMEM, "no memory in sepd for the cache state");
    /* the frame's bytes stay where ZeroMQ put them: no copy until the store's */
    c->state[rank] = (sep_store_blob_t){ sep_frame_data(c->frame[rank]), len };
    c->rec.state_len[rank] = len;
    c->got |= 1ull << rank;
    c->states_at = sep_now();
    return SEP_OK;
}

void sepd_ckpt_write(sepd_t *d, sep_session_t *s)
{
    persist_job_t *j = job_new(s, SEP_SJ_WRITE);
    if (j) {
        j->ck = s->cut;
        s->cut = NULL;
    }
    job_submit(d, s, j, j ? SEP_OK : SEP_ENOMEM);
}

void sepd_checkpoint_due(sepd_t *d)
{
    double now = sep_now();
    for (size_t i = 0; i < d->n_sess; i++) {
        sep_session_t *s = d->sess[i];
        if (s->state != SEP_SS_ACTIVE || s->ckpt_want || s->cut || s->sj != SEP_SJ_NONE)
            continue;
        int changed = s->tokens != s->committed_tokens || s->bytes_in != s->committed_bytes;
        if (!changed)
            continue;
        /* after one that failed (a full store, say) the next is tried
         * checkpoint_seconds later, not on every turn of the loop */
        if (s->ckpt_error[0] && now - s->ckpt_tried_at < d->conf.checkpoint_seconds)
            continue;
        /* the checkpoints of tokens and seconds take at most
         * checkpoint_budget percent of the time: a state that is slow to
         * take (hundreds of MB at full size) is taken less often; the
         * bytes' bound what a feed --retry keeps, and holds */
        int afford = now - s->committed_at >= s->ckpt_cost * 100.0 / d->conf.checkpoint_budget;
        if (s->bytes_in - s->committed_bytes >= d->conf.checkpoint_bytes ||
            (afford && (s->tokens - s->committed_tokens >= d->conf.checkpoint_tokens ||
                        now - s->committed_at >= d->conf.checkpoint_seconds))) {
            s->ckpt_want = 1;
            s->ckpt_tried_at = now;
            sepd_step(d, s);
        }
    }
}
