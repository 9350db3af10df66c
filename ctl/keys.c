/* keys.c: sepctl's keys: `sepctl keygen`, and CURVE on its connection to a
 * sepd over tcp (docs/security.md).
 *
 * Over tcp sepctl takes sepd's public key and its own secret key file, in
 * order, from --server-key / --key, from $SEPD_SERVER_KEY / $SEPD_KEY, from
 * CONFIG/sepctl.conf ("server_key = ..." and "key = ..." lines, '#' lines
 * comments), and last
 * from CONFIG/server.pub and CONFIG/sepctl.secret when they exist, where
 * CONFIG is $XDG_CONFIG_HOME/sepd, else ~/.config/sepd. Without a server
 * key it connects without CURVE (a sepd with allow_insecure_tcp). ipc
 * endpoints never use keys: the socket's permissions and the peer's uid
 * are the authentication there.
 */
#include "ctl.h"
#include "err.h"
#include "keys.h"
#include "lines.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static const char *opt_server_key, *opt_key;

void ctl_keys_opts(const char *server_key, const char *key)
{
    if (server_key)
        opt_server_key = server_key;
    if (key)
        opt_key = key;
}

static int ctl_config_dir(char *buf, size_t cap)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(buf, cap, "%s/sepd", xdg);
    else if (home && *home)
        snprintf(buf, cap, "%s/.config/sepd", home);
    else
        return sep_fail(SEP_ENOTFOUND, "no $XDG_CONFIG_HOME or $HOME for sepctl's keys");
    return SEP_OK;
}

/* CONFIG/sepctl.conf's server_key and key, into the buffers ("" if absent). */
static int ctl_config_read(const char *dir, char *server, char *key, size_t cap)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/sepctl.conf", dir);
    sep_lines_t f;
    int rc = sep_lines_open(&f, path), got;
    if (rc && errno == ENOENT)
        return SEP_OK;
    while (!rc && (got = sep_lines_next(&f)) != 0) {
        if (got < 0) {
            rc = got;
            break;
        }
        int no = f.no;
        char *s = f.line + strspn(f.line, " \t");
        if (!*s || *s == '#')
            continue; /* comments are whole lines: a Z85 key may hold '#' */
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = sep_fail(SEP_EFORMAT, "%s:%d: expected 'key = value'", path, no);
            break;
        }
        char *k = s, *v = eq + 1;
        for (char *e = eq; e > k && (e[-1] == ' ' || e[-1] == '\t'); e--)
            e[-1] = '\0';
        *eq = '\0';
        v += strspn(v, " \t");
        for (size_t n = strlen(v); n && (v[n - 1] == ' ' || v[n - 1] == '\t'); n--)
            v[n - 1] = '\0';
        if ((!strcmp(k, "server_key") || !strcmp(k, "key")) && strlen(v) >= cap)
            rc = sep_fail(SEP_EINVAL, "%s:%d: %s: a value of %zu bytes (at most %zu)", path,
                          no, k, strlen(v), cap - 1);
        else if (!strcmp(k, "server_key"))
            snprintf(server, cap, "%s", v);
        else if (!strcmp(k, "key"))
            snprintf(key, cap, "%s", v);
        else
            rc = sep_fail(SEP_EINVAL, "%s:%d: unknown key '%.64s' (server_key, key)", path, no,
                          k);
    }
    sep_lines_close(&f);
    return rc;
}

int ctl_keys_apply(void *sock, const char *endpoint, int *curve)
{
    *curve = 0;
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return SEP_OK;
    char dir[4096], conf_server[4200] = "", conf_key[4200] = "", dflt[4200];
    const char *server = opt_server_key, *key = opt_key;
    if (!server && getenv("SEPD_SERVER_KEY") && *getenv("SEPD_SERVER_KEY"))
        server = getenv("SEPD_SERVER_KEY");
    if (!key && getenv("SEPD_KEY") && *getenv("SEPD_KEY"))
        key = getenv("SEPD_KEY");
    int rc, have_dir = (!server || !key) && ctl_config_dir(dir, sizeof dir) == SEP_OK;
    if (have_dir && (rc = ctl_config_read(dir, conf_server, conf_key, sizeof conf_server)))
        return rc;
    if (!server && conf_server[0])
        server = conf_server;
    if (!key && conf_key[0])
        key = conf_key;
    char dflt_server[4200];
    if (!server && have_dir) {
        snprintf(dflt_server, sizeof dflt_server, "%s/server.pub", dir);
        if (access(dflt_server, R_OK) == 0)
            server = dflt_server;
    }
    if (!server)
        return SEP_OK; /* no CURVE: sepd decides whether it takes that */
    if (!key && have_dir) {
        snprintf(dflt, sizeof dflt, "%s/sepctl.secret", dir);
        if (access(dflt, R_OK) == 0)
            key = dflt;
    }
    if (!key)
        return sep_fail(SEP_EINVAL, "a server key but no key of this client: give --key FILE "
                        "(sepctl keygen makes one), $SEPD_KEY or key = in sepctl.conf");
    char server_pub[SEP_KEY_Z85 + 1], msg[600];
    sep_keypair_t kp;
    if ((rc = sep_key_public(server, server_pub))) {
        snprintf(msg, sizeof msg, "%s", sep_errmsg());
        return sep_fail(rc, "server key: %s", msg);
    }
    if ((rc = sep_key_pair(key, &kp))) {
        snprintf(msg, sizeof msg, "%s", sep_errmsg());
        return sep_fail(rc, "key: %s", msg);
    }
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_pub, SEP_KEY_Z85) ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, kp.pub, SEP_KEY_Z85) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp.sec, SEP_KEY_Z85))
        return sep_fail(SEP_EIO, "CURVE: %s", zmq_strerror(errno));
    memset(&kp, 0, sizeof kp);
    *curve = 1;
    return SEP_OK;
}

int ctl_handshake_failed(int event, unsigned value, int curve, int shook, int tcp)
{
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        return sep_fail(SEP_EINVAL, "sepd refused this client: its key is not on sepd's "
                        "allow-list (ZAP status %u)", value);
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
        value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        return sep_fail(SEP_EINVAL, curve ? "sepd does not use CURVE at this endpoint"
                                          : "sepd requires CURVE at this endpoint: give "
                                            "--server-key and --key (see sepctl(1))");
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
        return sep_fail(SEP_EINVAL, "the handshake with sepd failed (protocol error 0x%x)",
                        value);
    if (event != ZMQ_EVENT_DISCONNECTED || shook || !tcp)
        return SEP_OK;
    if (curve)
        return sep_fail(SEP_EINVAL, "sepd closed the connection during the CURVE handshake: "
                        "is --server-key sepd's public key?");
    return sep_fail(SEP_EINVAL, "sepd closed the connection before the handshake completed: "
                    "it requires CURVE? (give --server-key and --key, see sepctl(1))");
    return SEP_OK;
}

int ctl_keygen(int argc, char **argv)
{
    static const struct option opts[] = { { "out", required_argument, 0, 'o' },
                                          { "name", required_argument, 0, 'n' },
                                          { 0, 0, 0, 0 } };
    const char *out = NULL, *name = "sepctl";
    char dir[4096];
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'o')
            out = optarg;
        else if (c == 'n')
            name = optarg;
        else {
            fprintf(stderr, "sepctl: keygen [--out DIR] [--name NAME]\n");
            return EXIT_USAGE;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "sepctl: keygen: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!out) {
        if (ctl_config_dir(dir, sizeof dir)) {
            fprintf(stderr, "sepctl: keygen: %s (give --out DIR)\n", sep_errmsg());
            return EXIT_RUNTIME;
        }
        out = dir;
    }
    sep_keypair_t kp;
    if (sep_key_generate(out, name, &kp)) {
        fprintf(stderr, "sepctl: keygen: %s\n", sep_errmsg());
        return EXIT_RUNTIME;
    }
    memset(kp.sec, 0, sizeof kp.sec);
    printf("%s\n", kp.pub);
    fprintf(stderr, "sepctl: wrote %s/%s.pub (public: give it to sepd's allowed_keys) and "
            "%s/%s.secret (secret, mode 0600)\n", out, name, out, name);
    return fflush(stdout) == 0 ? 0 : EXIT_RUNTIME;
}
