/* zstore: damage a sepd store the way a bad disk would, for the tests of
 * what sepd does then (test_durable.sh). sepd must not be running.
 *
 *   zstore DIR flip-block NAME STAGE BLOCK   flip a byte of a snapshot block
 *   zstore DIR cut-block NAME STAGE BLOCK    cut a snapshot block short
 *   zstore DIR flip-record NAME              flip a byte of a session record
 *   zstore DIR unown-record NAME             rewrite it as a version 2 record
 *                                            without an owner (made before owners)
 *   zstore DIR blocks NAME                   print the blocks of each stage
 *
 * DIR is the LMDB environment (STORE/db). Exit 0 done, 1 not done.
 */
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>

#include "crc32c.h"
#include "store.h"

/* A record as version 2 wrote it: no owner (tag 17 empty), no access
 * flags (tag 21), version 2; into out (as long as v). */
static size_t unown(const uint8_t *v, size_t n, uint8_t *out)
{
    uint32_t body, at = 12, w = 12;
    memcpy(&body, v + 8, 4);
    memcpy(out, v, 12);
    while (at < 12 + body) {
        uint16_t tag;
        uint32_t len;
        memcpy(&tag, v + at, 2);
        memcpy(&len, v + at + 2, 4);
        if (tag == 17) {
            uint32_t zero = 0;
            memcpy(out + w, v + at, 2);
            memcpy(out + w + 2, &zero, 4);
            w += 6;
        } else if (tag != 21) {
            memcpy(out + w, v + at, 6 + len);
            w += 6 + len;
        }
        at += 6 + len;
    }
    (void)n;
    out[4] = 2;
    out[5] = 0;
    body = w - 12;
    memcpy(out + 8, &body, 4);
    uint32_t crc = sep_crc32c(0, out, w);
    memcpy(out + w, &crc, 4);
    return w + 4;
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "zstore: %s: %s\n", what, mdb_strerror(rc));
    return 1;
}

/* The sid of session name, from its record. */
static int session_sid(MDB_txn *txn, MDB_dbi sessions, const char *name, uint32_t *sid)
{
    MDB_val k = { strlen(name), (void *)name }, v;
    int rc = mdb_get(txn, sessions, &k, &v);
    if (rc)
        return fail(name, rc);
    sep_store_session_t r;
    if (sep_store_session_decode(&r, v.mv_data, v.mv_size)) {
        fprintf(stderr, "zstore: %s: its record does not decode\n", name);
        return 1;
    }
    *sid = r.sid;
    sep_store_session_free(&r);
    return 0;
}

/* The edit cmd on name, in txn (argc, argv as main's). */
static int zstore_edit(MDB_txn *txn, MDB_dbi sessions, MDB_dbi snapshots, int argc, char **argv)
{
    const char *cmd = argv[2], *name = argv[3];
    int rc;
    if (!strcmp(cmd, "unown-record")) {
        MDB_val k = { strlen(name), (void *)name }, v;
        if ((rc = mdb_get(txn, sessions, &k, &v)))
            return fail(name, rc);
        uint8_t *copy = malloc(v.mv_size);
        if (!copy)
            return fail(name, ENOMEM);
        MDB_val nv = { unown(v.mv_data, v.mv_size, copy), copy };
        rc = mdb_put(txn, sessions, &k, &nv, 0);
        free(copy);
        return rc ? fail(name, rc) : 0;
    }
    if (!strcmp(cmd, "flip-record")) {
        MDB_val k = { strlen(name), (void *)name }, v;
        if ((rc = mdb_get(txn, sessions, &k, &v)))
            return fail(name, rc);
        uint8_t *copy = malloc(v.mv_size);
        if (!copy)
            return fail(name, ENOMEM);
        memcpy(copy, v.mv_data, v.mv_size);
        copy[v.mv_size / 2] ^= 0x40;
        MDB_val nv = { v.mv_size, copy };
        rc = mdb_put(txn, sessions, &k, &nv, 0);
        free(copy);
        return rc ? fail(name, rc) : 0;
    }
    uint32_t sid = 0;
    if (session_sid(txn, sessions, name, &sid))
        return 1;
    uint8_t key[10];
    key[0] = sid >> 24, key[1] = sid >> 16, key[2] = sid >> 8, key[3] = sid;
    if (!strcmp(cmd, "blocks")) {
        MDB_cursor *c;
        MDB_val k = { 4, key }, v;
        if ((rc = mdb_cursor_open(txn, snapshots, &c)))
            return fail(name, rc);
        for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); !rc;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            const uint8_t *p = k.mv_data;
            if (k.mv_size != 10 || memcmp(p, key, 4))
                break;
            printf("stage %d block %u: %zu bytes\n", p[4] << 8 | p[5],
                   (unsigned)p[6] << 24 | p[7] << 16 | p[8] << 8 | p[9], v.mv_size);
        }
        mdb_cursor_close(c);
        return 0;
    }
    if (argc != 6) {
        fprintf(stderr, "zstore: %s: bad arguments\n", cmd);
        return 2;
    }
    int stage = atoi(argv[4]);
    uint32_t block = (uint32_t)atoi(argv[5]);
    key[4] = stage >> 8, key[5] = stage;
    key[6] = block >> 24, key[7] = block >> 16, key[8] = block >> 8, key[9] = block;
    MDB_val k = { 10, key }, v;
    if ((rc = mdb_get(txn, snapshots, &k, &v)))
        return fail("block", rc);
    size_t len = !strcmp(cmd, "cut-block") ? v.mv_size / 2 : v.mv_size;
    uint8_t *copy = malloc(v.mv_size);
    if (!copy)
        return fail("block", ENOMEM);
    memcpy(copy, v.mv_data, v.mv_size);
    if (!strcmp(cmd, "flip-block"))
        copy[v.mv_size - 100] ^= 0x01;
    MDB_val nv = { len, copy };
    rc = mdb_put(txn, snapshots, &k, &nv, 0);
    free(copy);
    return rc ? fail("block", rc) : 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: zstore DIR flip-block|cut-block NAME STAGE BLOCK | "
                        "flip-record NAME | unown-record NAME | blocks NAME\n");
        return 2;
    }
    const char *dir = argv[1];
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi sessions, snapshots;
    int rc, status;
    /* every path closes the environment: a leak checker runs this too */
    if ((rc = mdb_env_create(&env)) || (rc = mdb_env_set_maxdbs(env, 8)) ||
        (rc = mdb_env_set_mapsize(env, (size_t)1 << 36)) || (rc = mdb_env_open(env, dir, 0, 0600)) ||
        (rc = mdb_txn_begin(env, NULL, 0, &txn)) ||
        (rc = mdb_dbi_open(txn, "sessions", 0, &sessions)) ||
        (rc = mdb_dbi_open(txn, "snapshots", 0, &snapshots)))
        status = fail(dir, rc);
    else if ((status = zstore_edit(txn, sessions, snapshots, argc, argv)))
        ;
    else {
        rc = mdb_txn_commit(txn); /* frees txn, failed or not */
        txn = NULL;
        if (rc)
            status = fail("commit", rc);
    }
    if (txn)
        mdb_txn_abort(txn);
    if (env)
        mdb_env_close(env);
    return status;
}
