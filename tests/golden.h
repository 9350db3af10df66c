/* golden.h: reading the shared fixtures (../shared) in tests. */
#ifndef SEP_TEST_GOLDEN_H
#define SEP_TEST_GOLDEN_H

#include <stddef.h>
#include <stdint.h>

/* The shared folder: $SEP_SHARED, else the build's SEP_SHARED_DIR. */
const char *golden_shared(void);

/* The backend the tests run on: $SEP_TEST_DEVICE ("cuda" on the GPU
 * machine), else "cpu". */
const char *golden_device(void);

/* Their precision: $SEP_TEST_PRECISION, else "fp32". */
const char *golden_precision(void);

/* $SEP_TEST_SCALE (default 1): the heavy tests divide their stream
 * lengths by it (the sanitizer pass of scripts/check-sanitizers.sh runs
 * every test at 4), keeping what each checks on the shorter stream. */
int golden_scale(void);

/* shared/rel as a path in a static buffer (valid until the next call). */
const char *golden_path(const char *rel);

/* Whitespace-separated numbers of a file; malloc'ed; 0 on success. */
int golden_read_floats(const char *path, float **v, size_t *n);
int golden_read_ids(const char *path, int32_t **v, size_t *n);

#endif
