/* grow.c: doubling growth of arrays. */
#include "grow.h"

#include <stdint.h>
#include <stdlib.h>

int sep_grow(void **pp, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return SEP_OK;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n = n > SIZE_MAX / 2 ? need : n * 2;
    void *p = n <= SIZE_MAX / size ? realloc(*pp, n * size) : NULL;
    if (!p)
        return sep_fail(SEP_ENOMEM, "out of memory for %zu elements of %zu bytes", need, size);
    *pp = p;
    *cap = n;
    return SEP_OK;
}
