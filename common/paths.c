/* paths.c: default locations. */
#include "paths.h"
#include "err.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int sep_mkdirs(const char *path, unsigned mode)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return sep_fail(SEP_EINVAL, "path too long: %.64s...", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return sep_fail(SEP_EIO, "mkdir %s: %s", buf, strerror(errno));
        *p = c;
        if (!c)
            break;
    }
    return SEP_OK;
}

int sep_run_dir(char *buf, size_t cap)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int n = xdg && *xdg ? snprintf(buf, cap, "%s/sepd", xdg)
                        : snprintf(buf, cap, "/tmp/sepd-%u", (unsigned)getuid());
    if (n < 0 || (size_t)n >= cap)
        return sep_fail(SEP_EINVAL, "run directory path too long");
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return sep_fail(SEP_EIO, "mkdir %s: %s", buf, strerror(errno));
    struct stat st;
    if (lstat(buf, &st) != 0)
        return sep_fail(SEP_EIO, "%s: %s", buf, strerror(errno));
    /* a shared /tmp: the directory must be ours and closed to others */
    if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 0077))
        return sep_fail(SEP_EIO, "%s: not a private directory of this user (mode %03o)", buf,
                        (unsigned)(st.st_mode & 0777));
    return SEP_OK;
}

int sep_default_socket(char *buf, size_t cap)
{
    const char *env = getenv("SEPD_SOCKET");
    if (env && *env) {
        if (snprintf(buf, cap, "%s", env) >= (int)cap)
            return sep_fail(SEP_EINVAL, "SEPD_SOCKET too long");
        return SEP_OK;
    }
    char dir[4096];
    int rc = sep_run_dir(dir, sizeof dir);
    if (rc)
        return rc;
    if (snprintf(buf, cap, "ipc://%s/sepd.sock", dir) >= (int)cap)
        return sep_fail(SEP_EINVAL, "socket path too long");
    return SEP_OK;
}

int sep_default_store(char *buf, size_t cap)
{
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    int n;
    if (xdg && *xdg)
        n = snprintf(buf, cap, "%s/sepd", xdg);
    else if (home && *home)
        n = snprintf(buf, cap, "%s/.local/state/sepd", home);
    else
        return sep_fail(SEP_EINVAL, "no store: set --store, XDG_STATE_HOME or HOME");
    if (n < 0 || (size_t)n >= cap)
        return sep_fail(SEP_EINVAL, "store path too long");
    return SEP_OK;
}

const char *sep_default_model(void)
{
    const char *env = getenv("SEPD_MODEL");
    if (env && *env)
        return env;
    if (access(SEP_BUNDLED_MODEL "/config.json", R_OK) == 0)
        return SEP_BUNDLED_MODEL;
    return SEP_SOURCE_MODEL;
}
