/* sched.c: batches (continuous batching).
 *
 * Each step takes runnable ids from every session that may run, round
 * robin, until `max_batch` rows are filled: one row for each generation
 * step, the rest shared evenly among the sessions that ingest (at most
 * `chunk` each, a session with fewer ids leaving its rows to the next
 * ones), and sends the
 * batch to every stage; up to stages + batches_ahead are in flight so
 * every stage has the next ones queued (a pause of the loop, a long
 * tokenization say, does not leave the last stage waiting). The last stage answers each batch in
 * order (w_done) with its NLLs, cache sizes and, for generation steps,
 * the token it picked: each such step carries its pick (the session's
 * sampler settings, a draw of its generator when it samples, the recent
 * ids its penalties count) and the batch the ids the tokenizer lacks.
 */
#include "daemon.h"
#include "err.h"
#include "grow.h"
#include "persist.h"
#include "log.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* Whether s's ids may go into a batch: its caches are in the workers and
 * nothing else is asked of them (suspend waits for the batches in flight
 * and holds the rest of the queue for after). */
static int sched_may_run(const sep_session_t *s)
{
    /* a checkpoint that is due waits for the batches in flight and holds
     * the rest: its w_save is the cut; once it went, the session runs on */
    return s->state == SEP_SS_ACTIVE && !s->reviving && !s->ckpt_want && !s->hold &&
           (s->ctl.kind == SEP_WAIT_NONE || s->ctl.kind == SEP_WAIT_SAVE) &&
           (s->sj == SEP_SJ_NONE || s->sj == SEP_SJ_WRITE) && s->op.kind != SEP_SOP_SUSPEND;
}

/* Gather the runnable ids of the sessions into one batch and send it to
 * every stage. Returns 1 if a batch went out. */
static int sched_one(sepd_t *d)
{
    sepd_batch_t *b = &d->flight[d->n_flight];
    int n_pick = 0;
    size_t n_recent = 0;
    int total = 0, max = d->conf.max_batch < d->pool->max_tokens ? d->conf.max_batch
                                                                 : d->pool->max_tokens;
    b->nc = b->n_gen = 0;
    int behind = sepd_archive_behind(d);
    /* the batch's rows are shared evenly among the sessions that ingest,
     * after one row for each generation step, up to chunk each: many
     * sessions go into one forward together instead of a few taking it */
    int n_ing = 0, n_gen = 0;
    for (size_t k = 0; k < d->n_sess; k++) {
        const sep_session_t *s = d->sess[k];
        if (!sched_may_run(s) ||
            (behind && s->archive != SEP_ARCHIVE_OFF && s->policy.method == SEP_METHOD_SEPLLM))
            continue;
        if (sep_session_runnable(s) > 0)
            n_ing++;
        else
            n_gen += sepd_gen_ready(d, s);
    }
    int gen_rows = n_gen < max ? n_gen : max;
    for (size_t k = 0; k < d->n_sess && total < max; k++) {
        sep_session_t *s = d->sess[(d->rr + k) % d->n_sess];
        if (!sched_may_run(s) ||
            (behind && s->archive != SEP_ARCHIVE_OFF && s->policy.method == SEP_METHOD_SEPLLM))
            continue;
        size_t run = sep_session_runnable(s);
        int gen = 0, n;
        if (run > 0) {
            /* an even share of what is left once the steps have theirs */
            int left = max - total - gen_rows;
            int share = left > 0 && n_ing > 0 ? (left + n_ing - 1) / n_ing : 1;
            share = share < d->conf.chunk ? share : d->conf.chunk;
            n = (int)(run < (size_t)share ? run : (size_t)share);
            n = n < max - total ? n : max - total;
            n_ing--;
        } else if (sepd_gen_ready(d, s)) {
            n = 1;
            gen = 1;
            gen_rows -= gen_rows > 0;
        } else {
            continue;
        }
        if (gen) {
            /* the draw is taken now: a cut sees the generator after every
             * step in flight (there is none then) */
            sep_pick_t p = s->sampler;
            int pen = p.repetition != 1 || p.presence != 0 || p.frequency != 0;
            if (SEP_GROW(d->recent, d->recent_cap, n_recent + SEP_PICK_MAX_RECENT)) {
                sep_log(SEP_LOG_ERROR, "batch: %s", sep_errmsg());
                break; /* the batch goes without this step; it waits for the next */
            }
            p.n_recent = pen ? sep_session_recent(s, s->penalty_window, d->recent + n_recent) : 0;
            p.draw = p.temperature > 0 ? sep_rng_draw(&s->rng) : 0;
            sep_pick_pack(d->picks + (size_t)n_pick++ * SEP_PICK_WIRE, &p);
            n_recent += (size_t)p.n_recent;
            d->targets[total] = -1;
        } else {
            memcpy(d->targets + total, s->q + s->sent + 1, (size_t)n * sizeof(int32_t));
        }
        memcpy(d->ids + total, s->q + s->sent, (size_t)n * sizeof(int32_t));
        b->ch[b->nc++] = (sepd_bchunk_t){
            .sid = s->sid, .off = total, .n = n, .gen = gen,
            .archive = s->policy.method == SEP_METHOD_SEPLLM ? (int)s->archive : 0 };
        s->sent += (size_t)n;
        s->gen_inflight |= gen;
        b->n_gen += gen;
        total += n;
    }
    if (b->nc == 0)
        return 0;
    d->rr++;
    json_t *chunks = json_array();
    for (int j = 0; chunks && j < b->nc; j++)
        json_array_append_new(chunks, json_pack("{s:I, s:i, s:b, s:i}", "sid",
                                                (json_int_t)b->ch[j].sid, "n", b->ch[j].n,
                                                "pick", b->ch[j].gen,
                                                "archive", b->ch[j].archive));
    b->seq = d->next_seq++;
    json_t *h = chunks ? json_pack("{s:s, s:I, s:o, s:i}", "op", SEP_OP_W_BATCH, "seq",
                                   (json_int_t)b->seq, "chunks", chunks, "id_limit",
                                   d->id_limit) : NULL;
    sep_frame_t f[5] = { { d->ids, (size_t)total * sizeof(int32_t) },
                         { d->targets, (size_t)total * sizeof(int32_t) },
                         { d->picks, (size_t)n_pick * SEP_PICK_WIRE },
                         { d->recent, n_recent * sizeof(int32_t) },
                         { d->holes, (size_t)d->n_holes * sizeof(int32_t) } };
    int rc = h ? sep_pool_send_all(d->pool, h, f, 5) : SEP_ENOMEM;
    json_decref(h);
    d->n_flight++;
    if (rc) {
        /* the workers are unreachable: a fault */
        char why[600];
        snprintf(why, sizeof why, "batch %lld: %s", (long long)b->seq, sep_errmsg());
        sepd_fault(d, why);
        return 0;
    }
    return 1;
}

void sepd_schedule(sepd_t *d)
{
    if (d->recover)
        return;
    double t0 = sep_now();
    while (!d->stop && d->n_flight < d->max_flight && sched_one(d))
        d->batches_sent++;
    d->sched_s += sep_now() - t0;
}

/* The oldest batch is answered: take it off the FIFO. */
static void sched_pop(sepd_t *d)
{
    sepd_batch_t done = d->flight[0];
    memmove(d->flight, d->flight + 1, (size_t)(d->n_flight - 1) * sizeof *d->flight);
    d->flight[--d->n_flight] = done; /* keep its chunk array for reuse */
}

void sepd_batch_done(sepd_t *d, const sep_msg_t *m)
{
    int64_t seq = sep_msg_int(m, "seq", -1);
    if (d->n_flight == 0 || d->flight[0].seq != seq) {
        sep_log(SEP_LOG_ERROR, "workers answered batch %lld, expected %lld", (long long)seq,
                d->n_flight ? (long long)d->flight[0].seq : -1LL);
        return;
    }
    sepd_batch_t *b = &d->flight[0];
    int total = b->nc ? b->ch[b->nc - 1].off + b->ch[b->nc - 1].n : 0, n_pick = 0;
    for (int j = 0; j < b->nc; j++)
        n_pick += b->ch[j].gen;
    if (m->n_frames != 4 || m->frames[0].len != (size_t)total * 4 ||
        m->frames[1].len != (size_t)total * 4 || m->frames[2].len != (size_t)n_pick * 4 ||
        m->frames[3].len != (size_t)n_pick * 4) {
        char why[100];
        snprintf(why, sizeof why, "batch %lld: a malformed answer", (long long)seq);
        sepd_fault(d, why);
        return;
    }
    const float *nll = m->frames[0].data, *next_nll = m->frames[3].data;
    const int32_t *kv = m->frames[1].data, *next = m->frames[2].data;
    for (int j = 0, g = 0; j < b->nc; j++) {
        const sepd_bchunk_t *c = &b->ch[j];
        sep_session_t *s = sepd_find_sid(d, c->sid);
        if (s && s->state == SEP_SS_FAILED)
            s = NULL; /* a batch before it failed: nothing of it counts */
        d->tokens_total += c->n;
        if (c->gen) {
            if (s)
                sepd_generated(d, s, next[g], next_nll[g], kv[c->off]);
            g++;
        } else if (s && sep_session_scored(s, (size_t)c->n, nll + c->off, kv + c->off, 1)) {
            sep_log(SEP_LOG_ERROR, "%s", sep_errmsg());
        }
        if (s)
            sepd_step(d, s);
    }
    sched_pop(d);
}

/* A batch failed in a stage (out of device memory, say): the stages'
 * caches no longer agree with the sessions, nor with each other. A fault:
 * the pool starts again and every session comes back from its last
 * checkpoint (recover.c). */
void sepd_batch_failed(sepd_t *d, const sep_msg_t *m)
{
    int64_t seq = sep_msg_int(m, "seq", -1);
    char why[700];
    snprintf(why, sizeof why, "batch %lld failed in a stage: %s", (long long)seq,
             sep_msg_str(m, "error", "?"));
    sepd_fault(d, why);
}
