/* fuzz_settings.c: the readers of the files an operator writes: sepd.conf
 * (daemon/conf.c), the key lists allowed_keys and worker_keys
 * (daemon/keylist.c), key files (common/keys.c), all through the line
 * reader of common/lines.c where they read lines.
 *
 * Input: a mode byte, then the file. Mode 0: a sepd.conf; a failure names
 * the file. Mode 1: a key list; one that loads holds valid keys only, each
 * of them in the file, at most one a line; a failure names the file and
 * leaves the list empty. Mode 2: a .pub file and the same bytes as a
 * .secret file (0600); a public key read is valid, a key pair's public
 * key is the one its secret gives. */
#define _GNU_SOURCE
#include "fuzz.h"

#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

#include "conf.h"
#include "err.h"
#include "keylist.h"
#include "keys.h"

static const char *fuzz_path(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", fuzz_dir(), name);
    return buf;
}

static void named(const char *path)
{
    FUZZ_CHECK(strncmp(sep_errmsg(), path, strlen(path)) == 0, "the error names %s: %s", path,
               sep_errmsg());
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int mode = data[0] % 3;
    data++;
    size--;
    char path[8192];
    if (mode == 0) {
        fuzz_write("sepd.conf", data, size);
        fuzz_path("sepd.conf", path, sizeof path);
        sep_conf_t c;
        memset(&c, 0, sizeof c);
        if (sep_conf_read(&c, path))
            named(path);
        sep_conf_free(&c);
    } else if (mode == 1) {
        fuzz_write("keys", data, size);
        fuzz_path("keys", path, sizeof path);
        sepd_keylist_t l;
        if (sepd_keys_load(&l, path)) {
            named(path);
            FUZZ_CHECK(l.n == 0 && l.key == NULL, "a failed load leaves the list empty");
            return 0;
        }
        size_t lines = 1;
        for (size_t i = 0; i < size; i++)
            lines += data[i] == '\n';
        FUZZ_CHECK(l.n <= lines, "%zu keys from %zu lines", l.n, lines);
        for (size_t i = 0; i < l.n; i++) {
            FUZZ_CHECK(sep_key_valid(l.key[i]), "key %zu valid", i);
            FUZZ_CHECK(memmem(data, size, l.key[i], SEP_KEY_Z85), "key %zu in the file", i);
            FUZZ_CHECK(sepd_keys_has(&l, l.key[i]), "key %zu found", i);
        }
        sepd_keys_free(&l);
    } else {
        char out[SEP_KEY_Z85 + 1];
        fuzz_write("k.pub", data, size);
        fuzz_path("k.pub", path, sizeof path);
        if (sep_key_public(path, out) == SEP_OK)
            FUZZ_CHECK(sep_key_valid(out) && memmem(data, size, out, SEP_KEY_Z85),
                       "a public key read is valid and the file's");
        else
            named(path);
        fuzz_write("k.secret", data, size);
        fuzz_path("k.secret", path, sizeof path);
        FUZZ_CHECK(chmod(path, 0600) == 0, "chmod");
        sep_keypair_t kp;
        if (sep_key_pair(path, &kp) == SEP_OK) {
            char pub[SEP_KEY_Z85 + 1];
            FUZZ_CHECK(sep_key_valid(kp.sec) && zmq_curve_public(pub, kp.sec) == 0 &&
                       strcmp(pub, kp.pub) == 0, "a key pair's public key is its secret's");
        } else {
            named(path);
        }
    }
    return 0;
}
