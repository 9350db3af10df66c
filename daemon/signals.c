/* signals.c: what sepd does on a signal. They are blocked and read from a
 * signalfd in the loop, so a handler never runs in the middle of a step.
 *
 *   SIGTERM, SIGINT  checkpoint every active session (shutdown_timeout at
 *                    most), then exit 0; the second one stops at once
 *   SIGHUP           reopen STORE/sepd.log (a detached sepd; logrotate
 *                    moves the file, then sends it) and re-read the key
 *                    lists (sepd_hup, access.c)
 */
#include "daemon.h"
#include "err.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

int sepd_signals(sepd_t *d)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    signal(SIGPIPE, SIG_IGN);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0 ||
        (d->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0)
        return sep_fail(SEP_EIO, "signals: %s", strerror(errno));
    return SEP_OK;
}

/* SIGHUP: stdout and stderr to a new STORE/sepd.log. */
static void signal_reopen_log(sepd_t *d)
{
    if (d->conf.foreground) {
        sep_log(SEP_LOG_INFO, "SIGHUP: sepd runs in the foreground; its log is its stderr, "
                "nothing to reopen");
        return;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/sepd.log", d->conf.store);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        sep_log(SEP_LOG_ERROR, "SIGHUP: %s: %s (the log goes on where it was)", path,
                strerror(errno));
        return;
    }
    if (dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
        sep_log(SEP_LOG_ERROR, "SIGHUP: dup2: %s", strerror(errno));
    close(fd);
    sep_log(SEP_LOG_INFO, "SIGHUP: log reopened (%s)", path);
}

void sepd_signal_msg(sepd_t *d)
{
    struct signalfd_siginfo si;
    while (read(d->sig_fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            signal_reopen_log(d);
            sepd_hup(d); /* access.c: the key lists */
        } else if (!d->stopping) {
            sep_log(SEP_LOG_INFO, "signal %u: checkpointing every session, then shutting down "
                    "(shutdown_timeout %d s)", si.ssi_signo, d->conf.shutdown_timeout);
            sepd_fail_all(d, SEP_ERR_UNAVAILABLE, "sepd is shutting down");
            d->stopping = 1;
            d->stop_by = sep_now() + d->conf.shutdown_timeout;
        } else {
            sep_log(SEP_LOG_WARN, "signal %u again: stopping now", si.ssi_signo);
            d->stop = 1;
        }
    }
}
