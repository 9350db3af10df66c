/* fuzz_common.c: the temporary folder and file helpers of fuzz.h. */
#define _GNU_SOURCE
#include "fuzz.h"

#include <dirent.h>
#include <string.h>
#include <unistd.h>

static char fz_dir[4096];

static void fz_cleanup(void)
{
    DIR *d = opendir(fz_dir);
    if (!d)
        return;
    struct dirent *e;
    char path[8192];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", fz_dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(fz_dir);
}

const char *fuzz_dir(void)
{
    if (!fz_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fz_dir, sizeof fz_dir, "%s/sepd-fuzz.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(fz_dir)) {
            perror(fz_dir);
            abort();
        }
        atexit(fz_cleanup);
    }
    return fz_dir;
}

void fuzz_write(const char *name, const void *data, size_t n)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) {
        perror(path);
        abort();
    }
}

const char *fuzz_source_root(void)
{
    const char *e = getenv("SEP_SOURCE_ROOT");
    return e && *e ? e : SEP_SOURCE_ROOT;
}
