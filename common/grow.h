/* grow.h: the one growable-array helper.
 *
 *     if ((rc = SEP_GROW(arr, cap, need)))   // size_t cap, elements
 *         return rc;
 *
 * makes room for need elements in arr (capacity cap), doubling from 16;
 * the contents are kept; on failure arr and cap are unchanged and the
 * result is SEP_ENOMEM with a message. The check is inline so a caller
 * may grow per element.
 *
 *     SEP_REMOVE(arr, n, x);   // size_t n
 *
 * removes the first element equal to x (a pointer array), moving the last
 * one into its place; order is not kept; nothing if x is absent.
 */
#ifndef SEP_GROW_H
#define SEP_GROW_H

#include <stddef.h>

#include "err.h"

int sep_grow(void **pp, size_t *cap, size_t need, size_t size);

#define SEP_GROW(arr, cap, need) \
    ((need) <= (cap) ? SEP_OK : sep_grow((void **)&(arr), &(cap), (need), sizeof *(arr)))

#define SEP_REMOVE(arr, n, x)                  \
    do {                                       \
        for (size_t i_ = 0; i_ < (n); i_++)    \
            if ((arr)[i_] == (x)) {            \
                (arr)[i_] = (arr)[--(n)];      \
                break;                         \
            }                                  \
    } while (0)

#endif
