/* keys.c: CURVE key files (keys.h). */
#include "keys.h"
#include "err.h"
#include "paths.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

int sep_key_valid(const char *s)
{
    uint8_t raw[32];
    return strlen(s) == SEP_KEY_Z85 && zmq_z85_decode(raw, s) != NULL;
}

int sep_key_parse_line(const char *line, char out[SEP_KEY_Z85 + 1])
{
    while (*line == ' ' || *line == '\t')
        line++;
    /* '#' is a Z85 character: the key is the first 40 characters, then a
       blank or the end (what follows a blank is a comment) */
    size_t n = strcspn(line, " \t\r\n");
    if (n != SEP_KEY_Z85)
        return -1;
    memcpy(out, line, SEP_KEY_Z85);
    out[SEP_KEY_Z85] = '\0';
    return sep_key_valid(out) ? 0 : -1;
}

/* The one key line of a key file into out. */
static int key_read(const char *path, char out[SEP_KEY_Z85 + 1], int secret)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sep_fail(errno == ENOENT ? SEP_ENOTFOUND : SEP_EIO, "%s: %s", path,
                        strerror(errno));
    struct stat st;
    char buf[256];
    ssize_t n = fstat(fd, &st) == 0 ? read(fd, buf, sizeof buf - 1) : -1;
    int e = errno;
    close(fd);
    if (n < 0)
        return sep_fail(SEP_EIO, "%s: %s", path, strerror(e));
    if (secret && ((st.st_mode & 077) || (st.st_uid != geteuid() && geteuid() != 0)))
        return sep_fail(SEP_EINVAL, "%s: a secret key file must be the user's own, mode 0600 "
                        "(it is %03o)", path, (unsigned)(st.st_mode & 0777));
    buf[n] = '\0';
    if (sep_key_parse_line(buf, out))
        return sep_fail(SEP_EFORMAT, "%s: not a key file (expected one line of %d Z85 "
                        "characters)", path, SEP_KEY_Z85);
    return SEP_OK;
}

int sep_key_pair(const char *secret_path, sep_keypair_t *kp)
{
    int rc = key_read(secret_path, kp->sec, 1);
    if (rc)
        return rc;
    if (zmq_curve_public(kp->pub, kp->sec) != 0)
        return sep_fail(SEP_EUNSUPPORTED, "%s: %s (libzmq without CURVE?)", secret_path,
                        zmq_strerror(errno));
    return SEP_OK;
}

int sep_key_public(const char *arg, char out[SEP_KEY_Z85 + 1])
{
    if (sep_key_valid(arg)) {
        memcpy(out, arg, SEP_KEY_Z85 + 1);
        return SEP_OK;
    }
    size_t n = strlen(arg);
    if (n > 7 && strcmp(arg + n - 7, ".secret") == 0) {
        sep_keypair_t kp;
        int rc = sep_key_pair(arg, &kp);
        if (!rc)
            memcpy(out, kp.pub, sizeof kp.pub);
        return rc;
    }
    int rc = key_read(arg, out, 0);
    if (rc == SEP_ENOTFOUND && !strchr(arg, '/') && n == SEP_KEY_Z85)
        return sep_fail(SEP_EINVAL, "'%s' is not a Z85 key", arg);
    return rc;
}

static int key_write(const char *path, const char *key, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return sep_fail(errno == EEXIST ? SEP_EINVAL : SEP_EIO, "%s: %s%s", path,
                        strerror(errno), errno == EEXIST ? " (keygen never overwrites a key)" : "");
    char line[SEP_KEY_Z85 + 2];
    snprintf(line, sizeof line, "%s\n", key);
    ssize_t n = write(fd, line, SEP_KEY_Z85 + 1);
    int e = errno, bad = n != SEP_KEY_Z85 + 1 || fchmod(fd, mode) != 0 || fsync(fd) != 0;
    if (close(fd) != 0 || bad) {
        unlink(path);
        return sep_fail(SEP_EIO, "%s: %s", path, strerror(bad ? e : errno));
    }
    return SEP_OK;
}

int sep_key_generate(const char *dir, const char *name, sep_keypair_t *out)
{
    char pub[4200], sec[4200];
    if (!*name || strchr(name, '/'))
        return sep_fail(SEP_EINVAL, "key name '%s': a file name, without '/'", name);
    snprintf(pub, sizeof pub, "%s/%s.pub", dir, name);
    snprintf(sec, sizeof sec, "%s/%s.secret", dir, name);
    int rc = sep_mkdirs(dir, 0700);
    if (rc)
        return rc;
    if (zmq_curve_keypair(out->pub, out->sec) != 0)
        return sep_fail(SEP_EUNSUPPORTED, "zmq_curve_keypair: %s (libzmq without CURVE?)",
                        zmq_strerror(errno));
    if (access(pub, F_OK) == 0)
        return sep_fail(SEP_EINVAL, "%s exists already (keygen never overwrites a key)", pub);
    if ((rc = key_write(sec, out->sec, 0600)))
        return rc;
    if ((rc = key_write(pub, out->pub, 0644))) {
        unlink(sec);
        return rc;
    }
    return SEP_OK;
}
