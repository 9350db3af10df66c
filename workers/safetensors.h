/* safetensors.h: the tensors of a checkpoint folder, memory-mapped.
 *
 * A folder holds model.safetensors, or shards listed by
 * model.safetensors.index.json (its weight_map names each tensor's file).
 * Every header is validated before any tensor is used: JSON well formed,
 * dtype known, shape product times element size equal to the byte range,
 * ranges inside the file's data area and not overlapping, the index's
 * tensors all present in the file it names. Supported dtypes: F32, F16,
 * BF16 (others load but sep_st_get and sep_st_read_f32 refuse them,
 * naming the tensor).
 *
 * Data stay mapped, and the files open, until sep_st_destroy(); nothing
 * is copied at open. Small reads go through the mapping; sep_st_read
 * reads a tensor's bytes with pread, on several threads, so that a whole
 * checkpoint streams from the page cache without page tables for it.
 */
#ifndef SEP_SAFETENSORS_H
#define SEP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

typedef enum {
    SEP_DT_F32 = 1,
    SEP_DT_F16,
    SEP_DT_BF16,
    SEP_DT_OTHER, /* a valid safetensors dtype sepd cannot convert */
} sep_dtype_t;

#define SEP_ST_MAX_DIMS 8

typedef struct {
    const char *name;
    const char *file;          /* path of the file holding it */
    const char *dtype_name;    /* as written in the header ("BF16") */
    sep_dtype_t dtype;
    int ndim;
    int64_t shape[SEP_ST_MAX_DIMS];
    const void *data;          /* inside the mapping */
    size_t nbytes;
} sep_tensor_t;

typedef struct sep_st sep_st_t;

/* Open every safetensors file of the folder dir. On failure *out is NULL
 * and sep_errmsg() names the file (and tensor) that was wrong. */
int sep_st_open(sep_st_t **out, const char *dir);
void sep_st_destroy(sep_st_t **self_p);

/* The tensor called name, or NULL. */
const sep_tensor_t *sep_st_find(const sep_st_t *st, const char *name);
size_t sep_st_count(const sep_st_t *st);
const sep_tensor_t *sep_st_at(const sep_st_t *st, size_t i);

/* Tensor name in *out, with its element format in *elem, after checking
 * that its shape is exactly shape[0..ndim). Missing tensor: SEP_ENOTFOUND;
 * other shape: SEP_EFORMAT; unconvertible dtype: SEP_EUNSUPPORTED; each
 * naming the file and the tensor. */
int sep_st_get(const sep_st_t *st, const char *name, int ndim, const int64_t *shape,
               const sep_tensor_t **out, sep_elem_t *elem);

/* Convert tensor name to fp32 into dst, checked as by sep_st_get. */
int sep_st_read_f32(const sep_st_t *st, const char *name, int ndim,
                    const int64_t *shape, float *dst);

/* Bytes [off, off + len) of t's data (t from st) into dst, as stored,
 * read from its file; SEP_EIO naming the file and the tensor when it
 * cannot be read (a file that shrank since it was opened), SEP_EINVAL
 * for a range outside the tensor. */
int sep_st_read(const sep_st_t *st, const sep_tensor_t *t, size_t off, size_t len, void *dst);

#endif
