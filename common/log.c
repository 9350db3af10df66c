/* log.c: one timestamped line per call. */
#include "log.h"
#include "err.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>

static sep_log_level_t log_level = SEP_LOG_INFO;
static FILE *log_out;
static const char *log_names[] = { "error", "warn", "info", "debug" };

int sep_log_parse(const char *name, sep_log_level_t *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, log_names[i]) == 0) {
            *out = (sep_log_level_t)i;
            return SEP_OK;
        }
    return sep_fail(SEP_EINVAL, "log level '%s': expected error, warn, info or debug", name);
}

void sep_log_set(sep_log_level_t level, FILE *out)
{
    log_level = level;
    log_out = out;
}

void sep_log(sep_log_level_t level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    FILE *f = log_out ? log_out : stderr;
    struct timespec ts;
    struct tm tm;
    char when[32];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(f, "%s.%03ldZ %-5s ", when, ts.tv_nsec / 1000000, log_names[level]);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fflush(f);
}
