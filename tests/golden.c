/* golden.c: fixture readers for the tests. */
#include "golden.h"

#include <stdio.h>
#include <stdlib.h>

const char *golden_shared(void)
{
    const char *env = getenv("SEP_SHARED");
    return env && *env ? env : SEP_SHARED_DIR;
}

const char *golden_device(void)
{
    const char *env = getenv("SEP_TEST_DEVICE");
    return env && *env ? env : "cpu";
}

const char *golden_precision(void)
{
    const char *env = getenv("SEP_TEST_PRECISION");
    return env && *env ? env : "fp32";
}

int golden_scale(void)
{
    const char *env = getenv("SEP_TEST_SCALE");
    int k = env && *env ? atoi(env) : 1;
    return k >= 1 ? k : 1;
}

const char *golden_path(const char *rel)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", golden_shared(), rel);
    return buf;
}

/* Read numbers with fmt ("%f" or "%d") into a growing array of size sz. */
static int golden_read(const char *path, const char *fmt, size_t sz, void **out, size_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t cap = 4096, k = 0;
    char *v = malloc(cap * sz);
    while (v) {
        if (k == cap) {
            char *nv = realloc(v, cap * 2 * sz);
            if (!nv) {
                free(v);
                v = NULL;
                break;
            }
            v = nv;
            cap *= 2;
        }
        if (fscanf(f, fmt, v + k * sz) != 1)
            break;
        k++;
    }
    int bad = !v || !feof(f);
    fclose(f);
    if (bad) {
        free(v);
        return -1;
    }
    *out = v;
    *n = k;
    return 0;
}

int golden_read_floats(const char *path, float **v, size_t *n)
{
    return golden_read(path, "%f", sizeof **v, (void **)v, n);
}

int golden_read_ids(const char *path, int32_t **v, size_t *n)
{
    return golden_read(path, "%d", sizeof **v, (void **)v, n);
}
