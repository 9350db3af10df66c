/* lines.h: the line reader of sepd's settings files (sepd.conf,
 * sepctl.conf, key lists): lines of any length up to SEP_LINE_MAX, each
 * with its number for messages. A file that is not text is refused, never
 * misread: a NUL byte, or a line past SEP_LINE_MAX, is an error naming
 * the file and the line (a fixed buffer would cut such a line in two and
 * read its tail as a line of its own).
 *
 *     sep_lines_t l;
 *     if ((rc = sep_lines_open(&l, path)))
 *         return rc;                      // SEP_EIO: path and strerror
 *     while ((rc = sep_lines_next(&l)) > 0)
 *         use(l.line, l.no);              // without its "\n" or "\r\n"
 *     sep_lines_close(&l);                // rc: 0 at the end, or the error
 */
#ifndef SEP_LINES_H
#define SEP_LINES_H

#include <stdio.h>

#define SEP_LINE_MAX 65536        /* bytes of one line, its newline excluded */

typedef struct {
    FILE *f;
    const char *path;             /* borrowed: outlives the reader */
    char *line;                   /* (cap) the current line, NUL-terminated */
    size_t cap;
    size_t len;                   /* its bytes */
    int no;                       /* its number, from 1 */
} sep_lines_t;

/* Open path for reading: SEP_OK, or SEP_EIO naming it (errno kept). */
int sep_lines_open(sep_lines_t *l, const char *path);

/* The next line into l->line: 1; 0 at the end of the file; or SEP_EFORMAT
 * ("PATH:N: a NUL byte ...", "PATH:N: a line longer than ..."), SEP_EIO
 * (a read error), SEP_ENOMEM. */
int sep_lines_next(sep_lines_t *l);

/* Close the file and free the line; l may be closed twice. */
void sep_lines_close(sep_lines_t *l);

#endif
