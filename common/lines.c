/* lines.c: the settings files' line reader (lines.h). */
#include "lines.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "grow.h"

int sep_lines_open(sep_lines_t *l, const char *path)
{
    memset(l, 0, sizeof *l);
    l->path = path;
    if (!(l->f = fopen(path, "r"))) {
        int e = errno;
        sep_fail(SEP_EIO, "%s: %s", path, strerror(e));
        errno = e;
        return SEP_EIO;
    }
    return SEP_OK;
}

int sep_lines_next(sep_lines_t *l)
{
    int c, rc;
    l->len = 0;
    if ((rc = SEP_GROW(l->line, l->cap, 1)))
        return rc;
    l->line[0] = '\0';
    while ((c = getc(l->f)) != EOF && c != '\n') {
        if (c == '\0')
            return sep_fail(SEP_EFORMAT, "%s:%d: a NUL byte (not a text file?)", l->path,
                            l->no + 1);
        if (l->len == SEP_LINE_MAX)
            return sep_fail(SEP_EFORMAT, "%s:%d: a line longer than %d bytes (not a "
                            "settings file?)", l->path, l->no + 1, SEP_LINE_MAX);
        if ((rc = SEP_GROW(l->line, l->cap, l->len + 2)))
            return rc;
        l->line[l->len++] = (char)c;
    }
    if (ferror(l->f))
        return sep_fail(SEP_EIO, "%s: read error after line %d", l->path, l->no);
    if (c == EOF && l->len == 0)
        return 0;
    if (l->len && l->line[l->len - 1] == '\r')
        l->len--;
    l->line[l->len] = '\0';
    l->no++;
    return 1;
}

void sep_lines_close(sep_lines_t *l)
{
    if (l->f)
        fclose(l->f);
    free(l->line);
    l->f = NULL;
    l->line = NULL;
    l->cap = l->len = 0;
}
