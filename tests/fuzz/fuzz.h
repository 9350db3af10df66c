/* fuzz.h: what the harnesses of tests/fuzz share.
 *
 * A harness defines LLVMFuzzerTestOneInput (and may define
 * LLVMFuzzerInitialize). Built with clang -fsanitize=fuzzer it is a
 * libFuzzer program (configure --enable-fuzzers, make fuzzers); linked
 * with replay.c it is a plain program that runs the files named on its
 * command line (or every file of the folders named) through the harness
 * once each: the suite replays every corpus that way, so a crash found
 * once stays fixed. A harness aborts (FUZZ_CHECK) where a property it
 * checks fails; the parsers under test must return an error, never crash.
 */
#ifndef SEP_FUZZ_H
#define SEP_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                            \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* A folder of this process's own under $TMPDIR (made once, removed at
 * exit), for parsers that read files. */
const char *fuzz_dir(void);
/* Write data[0..n) to fuzz_dir()/name; aborts when it cannot. */
void fuzz_write(const char *name, const void *data, size_t n);
/* The repository's root (SEP_SOURCE_ROOT of the build), for the models. */
const char *fuzz_source_root(void);

#endif
