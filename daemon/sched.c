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
 *
 * Runs ahead: with one stage, a batch that is one generation step alone
 * (nothing else in flight, no stop strings, which need the text only sepd
 * decodes) may be granted a budget of k steps: min(the steps left, the
 * client's window room, decode_ahead). It carries k draws (taken from a
 * copy of the generator), the penalty window and the eos ids; the stage
 * feeds each pick back as the next step's id and answers each step as a
 * w_step, the last one in the batch's w_done ("steps"), stopping at k
 * steps, at an eos id, or at the first message waiting for it (another
 * batch, a w_save, a w_stats, or the w_yield sepd sends when the
 * generation must stop or wait: sepd_ahead_yields). sepd takes each
 * step as it would take a batch's answer and the next step's send: the
 * token pushed and emitted, its id in flight again, one draw taken from
 * the session's generator. So the session's stream, counters and
 * generator are those of one round trip a step, and every cut (a
 * checkpoint, a suspend) waits for the batch's end as for any batch.
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

/* The steps a generation step of s alone in a batch may run ahead: 1
 * (one round trip a step), or its budget k (at most decode_ahead, the
 * steps left, the client's window room). */
static int sched_budget(const sepd_t *d, const sep_session_t *s)
{
    const sep_op_t *op = &s->op;
    if (d->conf.decode_ahead < 2 || d->pool->stages != 1 || d->n_flight != 0 || op->stop ||
        op->kind != SEP_SOP_GENERATE)
        return 1;
    int64_t k = op->left, room = op->window - (op->made - op->acked);
    k = k < room ? k : room;
    k = k < d->conf.decode_ahead ? k : d->conf.decode_ahead;
    return k > 1 ? (int)k : 1;
}

/* Gather the runnable ids of the sessions into one batch and send it to
 * every stage. Returns 1 if a batch went out. */
static int sched_one(sepd_t *d)
{
    sepd_batch_t *b = &d->flight[d->n_flight];
    int n_pick = 0, gen_window = 0;
    size_t n_recent = 0;
    sep_session_t *gen_s = NULL;
    sep_pick_t gen_p = { 0 };
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
            gen_s = s;
            gen_p = p;
            gen_window = pen ? s->penalty_window : 0;
            n_recent += (size_t)p.n_recent;
            d->targets[total] = -1;
        } else {
            memcpy(d->targets + total, s->q + s->sent + 1, (size_t)n * sizeof(int32_t));
        }
        memcpy(d->ids + total, s->q + s->sent, (size_t)n * sizeof(int32_t));
        b->ch[b->nc++] = (sepd_bchunk_t){
            .sid = s->sid, .off = total, .n = n, .gen = gen, .ahead = 1,
            .archive = s->policy.method == SEP_METHOD_SEPLLM ? (int)s->archive : 0 };
        s->sent += (size_t)n;
        s->gen_inflight |= gen;
        b->n_gen += gen;
        total += n;
    }
    if (b->nc == 0)
        return 0;
    d->rr++;
    /* one generation step alone: it may run ahead (the draws of its later
     * steps come from a copy: the session's generator moves a draw a step
     * as the steps come back, sepd_batch_step) */
    sepd_bchunk_t *c0 = &b->ch[0];
    int n_eos = 0;
    if (b->nc == 1 && c0->gen && gen_s && (c0->ahead = sched_budget(d, gen_s)) > 1) {
        sep_rng_t r = gen_s->rng;
        c0->draws = gen_p.temperature > 0;
        c0->eos = !gen_s->op.ignore_eos;
        d->draws[0] = gen_p.draw;
        for (int i = 1; i < c0->ahead; i++)
            d->draws[i] = c0->draws ? sep_rng_draw(&r) : 0;
        n_eos = c0->eos ? d->n_eos : 0;
        d->ahead_runs++;
    }
    json_t *chunks = json_array();
    for (int j = 0; chunks && j < b->nc; j++)
        json_array_append_new(chunks, b->ch[j].ahead > 1
            ? json_pack("{s:I, s:i, s:b, s:i, s:i, s:i}", "sid", (json_int_t)b->ch[j].sid,
                        "n", b->ch[j].n, "pick", b->ch[j].gen, "archive", b->ch[j].archive,
                        "ahead", b->ch[j].ahead, "penalty_window", gen_window)
            : json_pack("{s:I, s:i, s:b, s:i}", "sid", (json_int_t)b->ch[j].sid, "n",
                        b->ch[j].n, "pick", b->ch[j].gen, "archive", b->ch[j].archive));
    b->seq = d->next_seq++;
    json_t *h = chunks ? json_pack("{s:s, s:I, s:o, s:i}", "op", SEP_OP_W_BATCH, "seq",
                                   (json_int_t)b->seq, "chunks", chunks, "id_limit",
                                   d->id_limit) : NULL;
    sep_frame_t f[7] = { { d->ids, (size_t)total * sizeof(int32_t) },
                         { d->targets, (size_t)total * sizeof(int32_t) },
                         { d->picks, (size_t)n_pick * SEP_PICK_WIRE },
                         { d->recent, n_recent * sizeof(int32_t) },
                         { d->holes, (size_t)d->n_holes * sizeof(int32_t) },
                         { d->draws, (size_t)c0->ahead * sizeof(uint64_t) },
                         { d->eos, (size_t)n_eos * sizeof d->eos[0] } };
    int rc = h ? sep_pool_send_all(d->pool, h, f, c0->ahead > 1 ? 7 : 5) : SEP_ENOMEM;
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
    /* a checkpoint's state on its way from the stages (hundreds of MB at
     * full size) holds back every answer sent after it on that socket:
     * more batches go ahead meanwhile, so the stages keep working */
    int limit = d->max_flight - SEPD_FLIGHT_SAVING;
    for (size_t k = 0; k < d->n_sess; k++)
        if (d->sess[k]->ctl.kind == SEP_WAIT_SAVE) {
            limit = d->max_flight;
            break;
        }
    while (!d->stop && d->n_flight < limit && sched_one(d))
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
    /* a run ahead's last step: the steps before it came as w_step */
    int64_t steps = sep_msg_int(m, "steps", 1);
    if (steps != b->ch[0].ran + 1 || steps > b->ch[0].ahead) {
        char why[200];
        snprintf(why, sizeof why, "batch %lld: an answer after %lld steps, %d asked and %d "
                 "answered before", (long long)seq, (long long)steps, b->ch[0].ahead,
                 b->ch[0].ran);
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

void sepd_batch_step(sepd_t *d, const sep_msg_t *m)
{
    int64_t seq = sep_msg_int(m, "seq", -1), step = sep_msg_int(m, "step", -1);
    uint32_t sid = (uint32_t)sep_msg_int(m, "sid", -1);
    sepd_bchunk_t *c = d->n_flight ? &d->flight[0].ch[0] : NULL;
    if (!c || d->flight[0].seq != seq || d->flight[0].nc != 1 || c->sid != sid ||
        step != c->ran || c->ran + 1 >= c->ahead || m->n_frames != 3 ||
        m->frames[0].len != 4 || m->frames[1].len != 4 || m->frames[2].len != 4) {
        char why[300];
        snprintf(why, sizeof why, "workers sent step %lld of batch %lld (session %u), "
                 "expected %s", (long long)step, (long long)seq, sid,
                 !c ? "no batch" : c->ahead < 2 ? "none: it runs no steps ahead"
                 : "the next of its run, before the last step of its budget");
        sepd_fault(d, why);
        return;
    }
    int32_t kv, tok;
    float nll;
    memcpy(&kv, m->frames[0].data, 4);
    memcpy(&tok, m->frames[1].data, 4);
    memcpy(&nll, m->frames[2].data, 4);
    c->ran++;
    d->tokens_total++;
    d->ahead_steps++;
    sep_session_t *s = sepd_find_sid(d, sid);
    if (!s || s->state == SEP_SS_FAILED)
        return; /* a step before failed it: nothing of the run counts */
    int eos = 0;
    for (int i = 0; c->eos && i < d->n_eos; i++)
        eos |= d->eos[i] == tok;
    if (eos || tok < 0 || tok >= d->id_limit || s->q_len != 1 || s->sent != 1) {
        char why[200];
        snprintf(why, sizeof why, "stage 0 went on after step %lld of batch %lld, which %s",
                 (long long)step, (long long)seq,
                 eos ? "picked an eos id" : tok < 0 || tok >= d->id_limit
                 ? "picked no id the tokenizer has" : "did not end the session's ids");
        sepd_session_failed(d, s, why);
        return;
    }
    /* the step came back (as a batch's answer) and its token went out as
     * the next step's id (as the next batch would send it) */
    sepd_generated(d, s, tok, nll, kv);
    if (s->state == SEP_SS_FAILED)
        return;
    s->sent = 1;
    s->gen_inflight = 1;
    if (c->draws)
        sep_rng_draw(&s->rng); /* the next step's draw, d->draws[c->ran] */
    sepd_step(d, s);
}

void sepd_ahead_yields(sepd_t *d)
{
    int behind = -1;
    for (int i = 0; i < d->n_flight; i++) {
        sepd_bchunk_t *c = &d->flight[i].ch[0];
        if (d->flight[i].nc != 1 || c->ahead < 2 || c->yielded)
            continue;
        const sep_session_t *s = sepd_find_sid(d, c->sid);
        const sep_op_t *op = s ? &s->op : NULL;
        if (behind < 0)
            behind = sepd_archive_behind(d);
        /* what stops a step from being sent stops the run: the generation
         * ended (cancel, its client gone, a close), its client reads
         * slowly, a checkpoint or a suspend is due, the archive is behind */
        if (s && s->state == SEP_SS_ACTIVE && op->kind == SEP_SOP_GENERATE && op->left > 0 &&
            op->peer_len && !sepd_outbox_waiting(d->out, op->peer, op->peer_len) &&
            !s->ckpt_want && !(behind && c->archive))
            continue;
        json_t *h = json_pack("{s:s, s:I, s:I}", "op", SEP_OP_W_YIELD, "seq",
                              (json_int_t)d->flight[i].seq, "sid", (json_int_t)c->sid);
        int rc = h ? sep_pool_send_all(d->pool, h, NULL, 0) : SEP_ENOMEM;
        json_decref(h);
        if (rc) {
            /* the run ends at its budget instead */
            sep_log(SEP_LOG_ERROR, "batch %lld: w_yield: %s", (long long)d->flight[i].seq,
                    sep_errmsg());
            continue;
        }
        c->yielded = 1;
        d->ahead_yields++;
    }
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
