/* err.c: error names and the per-thread detail message. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_msg[1024];

const char *sep_strerror(int code)
{
    switch (code) {
    case SEP_OK: return "success";
    case SEP_ENOMEM: return "out of memory";
    case SEP_EIO: return "input/output error";
    case SEP_EFORMAT: return "malformed input";
    case SEP_EUNSUPPORTED: return "unsupported";
    case SEP_EINVAL: return "invalid argument";
    case SEP_ENOTFOUND: return "not found";
    case SEP_EUTF8: return "invalid UTF-8";
    case SEP_ERANGE: return "out of range";
    case SEP_ENOSPC: return "no space";
    case SEP_EAGAIN: return "would block";
    case SEP_EPEER: return "peer gone";
    default: return "unknown error";
    }
}

int sep_fail(int code, const char *fmt, ...)
{
    /* format aside first: an argument may point into last_msg */
    char msg[sizeof last_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(last_msg, msg, sizeof msg);
    return code;
}

const char *sep_errmsg(void)
{
    return last_msg;
}

const char *sep_clip(const char *s, char *buf)
{
    size_t i;
    for (i = 0; s[i] && i < 63; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    buf[i] = '\0';
    return buf;
}
