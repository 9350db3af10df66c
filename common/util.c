/* util.c: numbers from text, the monotonic clock, rates. */
#include "util.h"
#include "err.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int sep_parse_long(const char *what, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return sep_fail(SEP_EINVAL, "%s: '%s' is not a whole number in %ld..%ld", what, s, lo,
                        hi);
    *out = v;
    return SEP_OK;
}

double sep_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

const char *sep_rate_str(char *buf, size_t cap, double bytes, double s)
{
    double unit = bytes < 1e9 ? 1e6 : 1e9;
    const char *u = bytes < 1e9 ? "MB" : "GB";
    snprintf(buf, cap, "%.1f %s in %.2f s (%.1f %s/s)", bytes / unit, u, s,
             s > 0 ? bytes / unit / s : 0.0, u);
    return buf;
}
