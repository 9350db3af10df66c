/* store_bench.c: checkpoint and archive rates of the LMDB store.
 *
 *   store_bench [--dir DIR] [--big] [--cycles N] [--sync] [--archive N]
 *
 * (1) N cycles (200 by default) of sep_store_checkpoint + sep_store_read_state
 * of one session whose one stage holds the cache state of books-llama-16m
 * at c=800 (8 layers x 800 entries x kv_dim 128 x 4 bytes x 3 planes, and
 * the ids and positions: 9.8 MB), or with --big that of an 8B model
 * (32 layers x kv_dim 1024: 315 MB). Each cycle changes the state a little,
 * writes it, reads it back and compares. Prints each cycle's write and read
 * time and GB/s, the size of data.mdb after cycles 1, 10, 50, 100 and 200,
 * and the mean rates of the first and last ten cycles (they must not drift
 * apart: that is why snapshots are fixed-size blocks). Then memcpy of the
 * same size, into a buffer already touched and into a fresh one, for
 * comparison (read_state returns a fresh malloc'ed buffer each time).
 * (2) With --archive N (1000000 by default, 0: skip): N archive entries of
 * kv_dim 128 f32 (8 layers a position) in batches of 1000 a transaction,
 * in a store of their own (DIR/archive): entries/s, MB/s of K and V, and
 * data.mdb's size per million entries.
 *
 * --sync: fsync at every commit (the default is MDB_NOSYNC). DIR (default:
 * a new directory under /tmp) must not hold a store; it is left in place.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "store.h"
#include "util.h"

#define KV 128
#define BATCH 1000

static uint64_t data_size(const char *dir)
{
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

static int die(const char *what, int rc)
{
    fprintf(stderr, "store_bench: %s: %s (%s)\n", what, sep_errmsg(), sep_strerror(rc));
    return 1;
}

/* The bytes of one stage's sep_cache_save: header, ids and positions, then
 * k, k_raw and v of every layer. */
static size_t state_bytes(int layers, int kv_dim, int n)
{
    return 60 + (size_t)n * 12 + (size_t)layers * 3 * n * kv_dim * sizeof(float);
}

static double mean(const double *x, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += x[i];
    return n ? s / n : 0;
}

static int bench_checkpoints(sep_store_t *st, const char *dir, size_t len, int cycles)
{
    sep_store_session_t r = { .state = SEP_STORE_ACTIVE, .n_stages = 1 };
    uint8_t *state = malloc(len), *back = NULL;
    double *wr = calloc((size_t)cycles, sizeof *wr), *rd = calloc((size_t)cycles, sizeof *rd);
    int rc, status = 1;
    if (!state || !wr || !rd) {
        fprintf(stderr, "store_bench: no memory for %zu bytes\n", len);
        goto done;
    }
    for (size_t i = 0; i < len; i++)
        state[i] = (uint8_t)(i * 2654435761u >> 13);
    strcpy(r.name, "bench");
    strcpy(r.precision, "fp32");
    r.state_len[0] = len;
    r.layer1[0] = 8;
    if ((rc = sep_store_alloc_sid(st, &r.sid))) {
        die("alloc_sid", rc);
        goto done;
    }
    printf("checkpoints: a state of %zu bytes, %d cycles\n", len, cycles);
    printf("%6s %10s %8s %10s %8s %12s\n", "cycle", "write ms", "GB/s", "read ms", "GB/s",
           "data.mdb");
    for (int c = 0; c < cycles; c++) {
        /* a little of the state changes each cycle, as a cache's does */
        memcpy(state + (size_t)c * 4099 % (len - 8), &c, sizeof c);
        r.checkpoints = c;
        sep_store_blob_t b = { state, len };
        double t0 = sep_now();
        if ((rc = sep_store_checkpoint(st, &r, &b, 1))) {
            die("checkpoint", rc);
            goto done;
        }
        double t1 = sep_now();
        if ((rc = sep_store_read_state(st, &r, 0, &back))) {
            die("read_state", rc);
            goto done;
        }
        double t2 = sep_now();
        if (memcmp(back, state, len)) {
            fprintf(stderr, "store_bench: cycle %d: the state read back differs\n", c);
            goto done;
        }
        free(back);
        back = NULL;
        wr[c] = len / (t1 - t0) / 1e9;
        rd[c] = len / (t2 - t1) / 1e9;
        int mark = c + 1 == 1 || c + 1 == 10 || c + 1 == 50 || c + 1 == 100 || c + 1 == 200;
        printf("%6d %10.2f %8.2f %10.2f %8.2f", c + 1, (t1 - t0) * 1e3, wr[c],
               (t2 - t1) * 1e3, rd[c]);
        if (mark)
            printf(" %12llu", (unsigned long long)data_size(dir));
        printf("\n");
    }
    int k = cycles < 10 ? cycles : 10;
    printf("mean GB/s: write %.2f (first %d) %.2f (last %d), read %.2f (first) %.2f (last)\n",
           mean(wr, k), k, mean(wr + cycles - k, k), k, mean(rd, k), mean(rd + cycles - k, k));

    /* memcpy of the same size: into a buffer touched before, and a fresh one */
    uint8_t *warm = malloc(len);
    if (!warm)
        goto done;
    memset(warm, 1, len);
    double best = 0, fresh = 0;
    for (int i = 0; i < 5; i++) {
        double t0 = sep_now();
        memcpy(warm, state, len);
        double t1 = sep_now();
        uint8_t *f = malloc(len);
        if (!f)
            break;
        double t2 = sep_now();
        memcpy(f, state, len);
        double t3 = sep_now();
        best = len / (t1 - t0) / 1e9 > best ? len / (t1 - t0) / 1e9 : best;
        fresh = len / (t3 - t2) / 1e9 > fresh ? len / (t3 - t2) / 1e9 : fresh;
        warm[0] ^= f[1];
        free(f);
    }
    printf("memcpy of %zu bytes: %.2f GB/s into a touched buffer, %.2f GB/s into a fresh "
           "malloc\n", len, best, fresh);
    free(warm);
    status = 0;
done:
    free(back);
    free(state);
    free(wr);
    free(rd);
    return status;
}

static int bench_archive(sep_store_t *st, const char *dir, long entries)
{
    sep_store_session_t r = { .state = SEP_STORE_ACTIVE };
    sep_store_sep_t *e = calloc(BATCH, sizeof *e);
    float *rows = malloc((size_t)BATCH * 2 * KV * sizeof *rows);
    int rc, layers = 8, status = 1;
    if (!e || !rows) {
        fprintf(stderr, "store_bench: no memory\n");
        goto done;
    }
    strcpy(r.name, "archive");
    if ((rc = sep_store_alloc_sid(st, &r.sid)) || (rc = sep_store_put_session(st, &r))) {
        die("archive session", rc);
        goto done;
    }
    for (size_t i = 0; i < (size_t)BATCH * 2 * KV; i++)
        rows[i] = (float)i * 0.001f;
    uint64_t before = data_size(dir);
    double t0 = sep_now();
    long done = 0;
    while (done < entries) {
        int n = entries - done < BATCH ? (int)(entries - done) : BATCH;
        for (int i = 0; i < n; i++) {
            long x = done + i;
            e[i] = (sep_store_sep_t){ .pos = x / layers, .id = 13, .layer = (int32_t)(x % layers),
                                      .kv_dim = KV, .dtype = SEP_ARCHIVE_F32,
                                      .k = rows + (size_t)i * 2 * KV,
                                      .v = rows + (size_t)i * 2 * KV + KV };
        }
        if ((rc = sep_store_archive_put(st, r.sid, e, (size_t)n))) {
            die("archive_put", rc);
            goto done;
        }
        done += n;
    }
    double t = sep_now() - t0;
    uint64_t after = data_size(dir), count;
    if ((rc = sep_store_archive_count(st, r.sid, 0, INT64_MAX, -1, &count))) {
        die("archive_count", rc);
        goto done;
    }
    double kvmb = (double)entries * 2 * KV * sizeof(float) / 1e6;
    printf("archive: %ld entries (kv_dim %d f32, %d layers a position) in batches of %d: "
           "%.2f s, %.0f entries/s, %.1f MB/s of K and V; data.mdb +%.1f MB = %.1f MB per "
           "million entries (%llu counted)\n", entries, KV, layers, BATCH, t, entries / t,
           kvmb / t, (after - before) / 1e6, (after - before) / 1e6 / (entries / 1e6),
           (unsigned long long)count);
    status = 0;
done:
    free(e);
    free(rows);
    return status;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    char tmp[] = "/tmp/store_bench.XXXXXX";
    long cycles = 200, entries = 1000000;
    int big = 0, sync = 0, rc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--big"))
            big = 1;
        else if (!strcmp(a, "--sync"))
            sync = 1;
        else if (!strcmp(a, "--dir") && v)
            dir = argv[++i];
        else if (!strcmp(a, "--cycles") && v) {
            if (sep_parse_long("--cycles", argv[++i], 0, 1000000, &cycles))
                return die("usage", SEP_EINVAL);
        } else if (!strcmp(a, "--archive") && v) {
            if (sep_parse_long("--archive", argv[++i], 0, 1L << 40, &entries))
                return die("usage", SEP_EINVAL);
        } else {
            fprintf(stderr, "usage: store_bench [--dir DIR] [--big] [--cycles N] [--sync] "
                    "[--archive N]\n");
            return 2;
        }
    }
    if (!dir && !(dir = mkdtemp(tmp))) {
        fprintf(stderr, "store_bench: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    sep_store_t *st;
    sep_store_opts_t o = { .no_sync = !sync };
    if ((rc = sep_store_open(&st, dir, &o)))
        return die(dir, rc);
    sep_store_stat_t s;
    if ((rc = sep_store_stat(st, &s))) {
        sep_store_close(&st);
        return die("stat", rc);
    }
    printf("store %s: %s, page %zu, block payload %zu\n", dir, sync ? "sync" : "no sync",
           s.page_size, s.block_payload);
    size_t len = big ? state_bytes(32, 1024, 800) : state_bytes(8, 128, 800);
    int status = cycles ? bench_checkpoints(st, dir, len, (int)cycles) : 0;
    sep_store_close(&st);
    if (status || !entries)
        return status;
    /* the archive in a store of its own, so its file size is its own */
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/archive", dir);
    if ((rc = sep_store_open(&st, sub, &o)))
        return die(sub, rc);
    status = bench_archive(st, sub, entries);
    sep_store_close(&st);
    return status;
}
