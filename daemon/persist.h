/* persist.h: sessions in the store.
 *
 * A session's record (store.h) holds its settings, the model and stage
 * layout its caches were made with, its counters, the stream at a cut
 * (the tokenizer's held-back text, the ids not yet scored) and the
 * sampler; with it, each stage's cache state at the same cut is the
 * snapshot. A cut is a moment when nothing of the session is in flight:
 * the w_save sent then reaches every stage after the batches before it
 * and before any after it, so the states and the record agree.
 *
 *   open        the record of the empty session (no snapshot), then w_open
 *   checkpoint  record and every stage's state, one transaction; every
 *               checkpoint_tokens tokens, checkpoint_bytes bytes fed or
 *               checkpoint_seconds (sepd.conf), at feed_end and flush, and
 *               for suspend
 *   suspend     a checkpoint marked suspended, then the workers drop it
 *   resume      the states read back, then w_load
 *   close       w_close, then record, snapshot and archive deleted
 *
 * bytes_committed is what the last checkpoint holds: a client resends
 * from there after a crash. At start every record comes back: active
 * sessions are loaded into the workers, suspended ones stay suspended,
 * and one this sepd cannot load (another model, another stage layout, a
 * damaged record) is listed with the reason and can only be closed.
 *
 * The store jobs run on the store thread (storer.h); their answers come
 * back to sepd_store_answer (control.c), which steps the session.
 */
#ifndef SEPD_PERSIST_H
#define SEPD_PERSIST_H

#include "daemon.h"
#include "store.h"

/* A checkpoint on its way, or a snapshot read back for a resume. */
typedef struct sep_ckpt {
    sep_store_session_t rec;          /* the record of the cut (owned) */
    int n_stages;
    void *frame[SEP_MAX_STAGES];      /* w_save: each stage's state frame, taken from its
                                         message without a copy (sep_msg_take_frame) */
    sep_store_blob_t state[SEP_MAX_STAGES]; /* the states' bytes (in frame or buf) */
    uint8_t *buf[SEP_MAX_STAGES];     /* resume: the states read back (malloc'ed) */
    uint64_t got;                     /* ranks whose state is here */
    double cut_at, states_at;         /* when w_save went, and the last state came */
} sep_ckpt_t;

void sep_ckpt_free(sep_ckpt_t **self_p);

/* At start: open the store under conf.store, bring back every session it
 * holds (active ones are resumed once the loop runs), start the store
 * thread. */
int sepd_persist_open(sepd_t *d);

/* After a worker fault (recover.c): the session table built again from
 * the records the store holds now (recs), as at a start. */
int sepd_persist_reload(sepd_t *d, const sep_store_session_t *recs, size_t n);

/* Bytes data.mdb takes on disk (its blocks: the map is sparse), -1 if unknown. */
int64_t sepd_store_file_bytes(const sepd_t *d);

/* At the end: finish what the store thread has, stop it, close the store. */
void sepd_persist_close(sepd_t *d);

/* The loop: the store thread finished jobs (its fd is readable). */
void sepd_persist_finish(sepd_t *d);

/* A record the store holds now (an import's): its session, suspended,
 * into d's table (*out). */
int sepd_persist_adopt(sepd_t *d, const sep_store_session_t *r, sep_session_t **out);

/* transfer.c: export and import. */
void sepd_export_next(sepd_t *d, sep_session_t *s);
void sepd_export_drop(sepd_t *d, sep_session_t *s);
void sepd_import_piece(sepd_t *d, const sep_msg_t *m);
struct sepd_import *sepd_import_find(sepd_t *d, const char *name);
void sepd_import_gone(sepd_t *d, const uint8_t *peer, size_t peer_len);
/* sepd stops: each import still under way is taken back (a job for the
 * store thread, which sepd_persist_close finishes); then, the store
 * thread stopped, sepd_import_free frees what is left and the table. */
void sepd_import_stop(sepd_t *d);
void sepd_import_free(sepd_t *d);

/* Jobs about s; each sets s->sj, and its answer steps s. */
void sepd_persist_create(sepd_t *d, sep_session_t *s);
void sepd_persist_read(sepd_t *d, sep_session_t *s);
void sepd_persist_delete(sepd_t *d, sep_session_t *s);

/* The cut of a checkpoint: s's record now (nothing may be in flight),
 * marked state (SEP_STORE_ACTIVE or SEP_STORE_SUSPENDED), in s->cut. */
int sepd_ckpt_cut(sepd_t *d, sep_session_t *s, uint32_t state);

/* A stage's w_save answer for s->cut; 0, or an error (message set). */
int sepd_ckpt_state(sep_session_t *s, sep_msg_t *m, int rank);

/* Every state is in s->cut: write the checkpoint (SEP_SJ_WRITE). */
void sepd_ckpt_write(sepd_t *d, sep_session_t *s);

/* The record of s alone, with state, written when the thread gets to it
 * (a state change that needs no new snapshot); nothing waits for it. */
void sepd_persist_put(sepd_t *d, sep_session_t *s, uint32_t state);

/* archive.c. A stage's w_archive: the separators a batch evicted, kept for the next
 * archive job (which holds a few batches: SEPD_ARCHIVE_BATCH bytes or
 * SEPD_ARCHIVE_DELAY_S seconds, whichever first, and always goes before
 * any other job so a checkpoint never runs ahead of the archive). */
void sepd_archive_msg(sepd_t *d, sep_msg_t *m, int rank);
/* Whether more archive rows wait for the store than SEPD_ARCHIVE_BACKLOG:
 * archiving sessions then run no new batch (the archive's back-pressure:
 * memory stays bounded when the disk is slower than the model). */
int sepd_archive_behind(const sepd_t *d);
void sepd_archive_due(sepd_t *d);
void sepd_archive_flush(sepd_t *d);

/* archive.c. The seps verb on s: its archive's positions and ids (with
 * their text), or with "data" their K and V rows of every layer, a page
 * at a time ("next"); "count": how many. */
void sepd_seps(sepd_t *d, const sep_msg_t *m, sep_session_t *s);

/* The loop: mark the sessions a checkpoint is due for (ckpt_want). */
void sepd_checkpoint_due(sepd_t *d);

#endif
