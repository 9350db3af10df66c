/* keylist.c: the key lists' files (keylist.h). */
#include "keylist.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "grow.h"
#include "lines.h"

static int keys_add(sepd_keylist_t *l, const char *key)
{
    int rc = SEP_GROW(l->key, l->cap, l->n + 1);
    if (!rc)
        memcpy(l->key[l->n++], key, SEP_KEY_Z85 + 1);
    return rc;
}

int sepd_keys_has(const sepd_keylist_t *l, const char *key)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->key[i], key) == 0)
            return 1;
    return 0;
}

/* The keys of one file; one: only its first (a .pub file of a folder). */
static int keys_file(sepd_keylist_t *l, const char *path, int one)
{
    sep_lines_t f;
    char key[SEP_KEY_Z85 + 1];
    int rc = sep_lines_open(&f, path), got, have = 0;
    while (!rc && (got = sep_lines_next(&f)) != 0) {
        if (got < 0) {
            rc = got;
            break;
        }
        char *s = f.line + strspn(f.line, " \t");
        if (!*s)
            continue;
        int is_key = sep_key_parse_line(s, key) == 0;
        if (!is_key && *s == '#')
            continue; /* a comment ('#' may also start a key: keys are tried first) */
        if (!is_key)
            rc = sep_fail(SEP_EFORMAT, "%s:%d: not a public key (40 Z85 characters)", path,
                          f.no);
        else if (!(one && have) && (rc = keys_add(l, key)) == SEP_OK)
            have = 1;
    }
    sep_lines_close(&f);
    return rc;
}

static int keys_dir(sepd_keylist_t *l, const char *path)
{
    DIR *dir = opendir(path);
    if (!dir)
        return sep_fail(SEP_EIO, "%s: %s", path, strerror(errno));
    struct dirent *e;
    int rc = SEP_OK;
    while (!rc && (e = readdir(dir))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".pub") != 0 || e->d_name[0] == '.')
            continue;
        char file[4400];
        snprintf(file, sizeof file, "%s/%s", path, e->d_name);
        rc = keys_file(l, file, 1);
    }
    closedir(dir);
    return rc;
}

int sepd_keys_load(sepd_keylist_t *l, const char *path)
{
    struct stat st;
    memset(l, 0, sizeof *l);
    if (stat(path, &st) != 0)
        return sep_fail(SEP_EIO, "%s: %s", path, strerror(errno));
    int rc = S_ISDIR(st.st_mode) ? keys_dir(l, path) : keys_file(l, path, 0);
    if (rc)
        sepd_keys_free(l);
    return rc;
}

void sepd_keys_free(sepd_keylist_t *l)
{
    free(l->key);
    memset(l, 0, sizeof *l);
}
