/* storer.c: the store thread and its two queues. */
#include "storer.h"
#include "err.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct {
    sepd_job_t *head, *tail;
} job_list_t;

struct sepd_storer {
    sep_store_t *st;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    job_list_t todo, done;     /* under lock */
    int stopping;              /* under lock */
    int efd;                   /* counts finished jobs */
    int pending;               /* the loop's count: submitted, not finished */
};

static void list_push(job_list_t *l, sepd_job_t *j)
{
    j->next = NULL;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
}

static sepd_job_t *list_pop(job_list_t *l)
{
    sepd_job_t *j = l->head;
    if (j && !(l->head = j->next))
        l->tail = NULL;
    return j;
}

static void *storer_main(void *arg)
{
    sepd_storer_t *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        sepd_job_t *j;
        while (!(j = list_pop(&w->todo)) && !w->stopping)
            pthread_cond_wait(&w->wake, &w->lock);
        if (!j)
            break;
        pthread_mutex_unlock(&w->lock);
        double t0 = sep_now();
        j->rc = j->run ? j->run(w->st, j) : SEP_OK;
        j->ran = sep_now() - t0;
        if (j->rc)
            snprintf(j->error, sizeof j->error, "%s", sep_errmsg());
        pthread_mutex_lock(&w->lock);
        list_push(&w->done, j);
        uint64_t one = 1;
        if (write(w->efd, &one, sizeof one) != sizeof one)
            sep_log(SEP_LOG_ERROR, "store thread: eventfd: %s", strerror(errno));
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

int sepd_storer_start(sepd_storer_t **out, sep_store_t *st)
{
    sepd_storer_t *w = calloc(1, sizeof *w);
    if (!w)
        return sep_fail(SEP_ENOMEM, "store thread: out of memory");
    w->st = st;
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->efd < 0) {
        free(w);
        return sep_fail(SEP_EIO, "store thread: eventfd: %s", strerror(errno));
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    int e = pthread_create(&w->thread, NULL, storer_main, w);
    if (e) {
        close(w->efd);
        free(w);
        return sep_fail(SEP_EIO, "store thread: %s", strerror(e));
    }
    *out = w;
    return SEP_OK;
}

void sepd_storer_submit(sepd_storer_t *w, sepd_job_t *job)
{
    job->queued = sep_now();
    w->pending++;
    pthread_mutex_lock(&w->lock);
    list_push(&w->todo, job);
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

int sepd_storer_fd(const sepd_storer_t *w)
{
    return w->efd;
}

int sepd_storer_pending(const sepd_storer_t *w)
{
    return w->pending;
}

void sepd_storer_finish(sepd_storer_t *w, void *loop)
{
    uint64_t count;
    if (read(w->efd, &count, sizeof count) < 0 && errno != EAGAIN)
        sep_log(SEP_LOG_ERROR, "store thread: eventfd: %s", strerror(errno));
    for (;;) {
        pthread_mutex_lock(&w->lock);
        sepd_job_t *j = list_pop(&w->done);
        pthread_mutex_unlock(&w->lock);
        if (!j)
            return;
        w->pending--;
        j->done(loop, j); /* it may submit more */
    }
}

void sepd_storer_stop(sepd_storer_t **self_p, void *loop)
{
    sepd_storer_t *w = *self_p;
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = 1;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    sepd_storer_finish(w, loop);
    close(w->efd);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->wake);
    sep_store_close(&w->st);
    free(w);
    *self_p = NULL;
}
