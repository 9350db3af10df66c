/* storer.h: the thread that writes and reads sepd's store.
 *
 * The LMDB store (store.h) is used by this one thread, so that a
 * checkpoint of hundreds of MB, an archive batch or a resume's read never
 * stalls the loop that serves clients and workers. The loop hands it
 * jobs; the thread runs each job's run() with the store, in the order
 * they came, and hands it back; the loop polls sepd_storer_fd() and calls
 * each finished job's done() (sepd_storer_finish), in the same order. A
 * job's data is the thread's between submit and finish, the loop's before
 * and after: nothing else is shared.
 */
#ifndef SEPD_STORER_H
#define SEPD_STORER_H

#include "store.h"

typedef struct sepd_job sepd_job_t;
struct sepd_job {
    int (*run)(sep_store_t *st, sepd_job_t *job);  /* on the store thread */
    void (*done)(void *loop, sepd_job_t *job);     /* on the loop; frees the job */
    int rc;                    /* run's result */
    char error[512];           /* sep_errmsg() of a failed run */
    double queued, ran;        /* when submitted; seconds run took */
    sepd_job_t *next;
};

typedef struct sepd_storer sepd_storer_t;

/* Start the thread on st (which it then owns: sepd_storer_stop closes it). */
int sepd_storer_start(sepd_storer_t **out, sep_store_t *st);

/* Queue job (the thread takes it). */
void sepd_storer_submit(sepd_storer_t *w, sepd_job_t *job);

/* Readable when finished jobs wait (poll it). */
int sepd_storer_fd(const sepd_storer_t *w);

/* Call done(loop, job) for every finished job, in order. */
void sepd_storer_finish(sepd_storer_t *w, void *loop);

/* Jobs submitted and not yet finished. */
int sepd_storer_pending(const sepd_storer_t *w);

/* Run what is queued, finish it (done on this thread), stop the thread
 * and close the store. */
void sepd_storer_stop(sepd_storer_t **self_p, void *loop);

#endif
