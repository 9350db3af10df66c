/* zclient: a scripted raw client of sepd, for tests of the protocol that
 * sepctl would never exercise (requests without reading, several ops on
 * one connection, malformed or oversize frames). It reads one command a
 * line from stdin and prints each reply's header on a line of its own,
 * followed by one line per frame ("  frame I: N bytes").
 *
 *   send JSON [FRAME...]    FRAME: - (empty), =TEXT, @FILE, a:N (N bytes 'a'),
 *                           x:HEX (bytes in hex)
 *   recv [N [MS]]           N replies (1), each within MS ms (10000): else exit 1
 *   drain MS                every reply until MS ms pass without one
 *   sleep MS
 *   quit                    exit at once, unread replies and all
 *
 *   zclient ENDPOINT < SCRIPT
 *
 * Exit: 0 at the end of the script or quit, 1 on a timeout (a reply, or a
 * send that cannot go out within 10 s) or a bad line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static char *frame_bytes(const char *arg, size_t *len)
{
    char *buf = NULL;
    if (strcmp(arg, "-") == 0) {
        *len = 0;
        return strdup("");
    }
    if (arg[0] == '=') {
        *len = strlen(arg + 1);
        return strdup(arg + 1);
    }
    if (strncmp(arg, "a:", 2) == 0) {
        *len = (size_t)strtoull(arg + 2, NULL, 10);
        if ((buf = malloc(*len + 1)))
            memset(buf, 'a', *len);
        return buf;
    }
    if (strncmp(arg, "x:", 2) == 0) {
        size_t n = strlen(arg + 2) / 2;
        if (!(buf = malloc(n + 1)))
            return NULL;
        for (size_t i = 0; i < n; i++) {
            unsigned v;
            if (sscanf(arg + 2 + 2 * i, "%2x", &v) != 1) {
                free(buf);
                return NULL;
            }
            buf[i] = (char)v;
        }
        *len = n;
        return buf;
    }
    if (arg[0] == '@') {
        FILE *f = fopen(arg + 1, "rb");
        if (!f)
            return NULL;
        fseek(f, 0, SEEK_END);
        long sz = ftell(f);
        fseek(f, 0, SEEK_SET);
        if (sz >= 0 && (buf = malloc((size_t)sz + 1)))
            *len = fread(buf, 1, (size_t)sz, f);
        fclose(f);
        return buf;
    }
    return NULL;
}

/* Print one reply; 0, or -1 when none came within ms. */
static int show_reply(void *s, int ms)
{
    zmq_pollitem_t it = { .socket = s, .events = ZMQ_POLLIN };
    if (zmq_poll(&it, 1, ms) <= 0)
        return -1;
    int more = 1, i = 0;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, s, 0) < 0)
            return -1;
        if (i == 0)
            printf("%.*s\n", (int)zmq_msg_size(&part), (const char *)zmq_msg_data(&part));
        else
            printf("  frame %d: %zu bytes\n", i - 1, zmq_msg_size(&part));
        more = zmq_msg_more(&part);
        zmq_msg_close(&part);
        i++;
    }
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: zclient ENDPOINT < SCRIPT\n");
        return 2;
    }
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_DEALER);
    /* a send waits at most 10 s (a DEALER without its peer, sepd gone,
     * would wait for ever): a test never hangs on zclient */
    int linger = 0, sndtimeo = 10000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
    if (zmq_connect(s, argv[1]) != 0) {
        fprintf(stderr, "zclient: connect: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    static char line[1 << 20];
    int rc = 0;
    while (!rc && fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        char *words[16];
        int n = 0;
        for (char *w = strtok(line, " "); w && n < 16; w = strtok(NULL, " "))
            words[n++] = w;
        if (n == 0 || words[0][0] == '#')
            continue;
        if (strcmp(words[0], "send") == 0 && n >= 2) {
            for (int i = 1; i < n; i++) {
                size_t len = strlen(words[i]);
                char *data = i == 1 ? strdup(words[i]) : frame_bytes(words[i], &len);
                if (!data) {
                    fprintf(stderr, "zclient: bad frame '%s'\n", words[i]);
                    return 1;
                }
                int sent = zmq_send(s, data, len, i + 1 < n ? ZMQ_SNDMORE : 0);
                free(data);
                if (sent < 0) {
                    fprintf(stderr, "zclient: send: %s\n", zmq_strerror(zmq_errno()));
                    return 1;
                }
            }
        } else if (strcmp(words[0], "recv") == 0) {
            int k = n > 1 ? atoi(words[1]) : 1, ms = n > 2 ? atoi(words[2]) : 10000;
            for (int i = 0; i < k; i++)
                if (show_reply(s, ms)) {
                    fprintf(stderr, "zclient: no reply %d of %d within %d ms\n", i + 1, k, ms);
                    rc = 1;
                    break;
                }
        } else if (strcmp(words[0], "drain") == 0 && n == 2) {
            while (show_reply(s, atoi(words[1])) == 0)
                ;
        } else if (strcmp(words[0], "sleep") == 0 && n == 2) {
            usleep((useconds_t)atoi(words[1]) * 1000);
        } else if (strcmp(words[0], "quit") == 0) {
            break;
        } else {
            fprintf(stderr, "zclient: bad line '%s'\n", words[0]);
            rc = 1;
        }
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    return rc;
}
