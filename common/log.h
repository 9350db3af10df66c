/* log.h: leveled log lines on stderr (or a file), with time and level.
 * Levels: error, warn, info, debug; lines below the set level are
 * dropped. Not thread-safe beyond one line per call (sepd is one thread). */
#ifndef SEP_LOG_H
#define SEP_LOG_H

#include <stdio.h>

typedef enum { SEP_LOG_ERROR = 0, SEP_LOG_WARN, SEP_LOG_INFO, SEP_LOG_DEBUG } sep_log_level_t;

/* Parse "error|warn|info|debug". */
int sep_log_parse(const char *name, sep_log_level_t *out);
void sep_log_set(sep_log_level_t level, FILE *out);
void sep_log(sep_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
