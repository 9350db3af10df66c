/* zsend: send one raw multipart message to sepd and print the reply's
 * header (tests of malformed input). Each argument is a frame; "@FILE"
 * sends a file's bytes, "-" an empty frame. Exit 0 when a reply came
 * within 10 s, 1 otherwise.
 *
 *   zsend ENDPOINT FRAME...
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static char *zsend_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    *len = buf ? fread(buf, 1, 1 << 20, f) : 0;
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: zsend ENDPOINT FRAME...\n");
        return 2;
    }
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, tmo = 10000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    if (zmq_connect(s, argv[1]) != 0) {
        fprintf(stderr, "zsend: connect: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    for (int i = 2; i < argc; i++) {
        size_t len = strlen(argv[i]);
        char *data = argv[i];
        if (argv[i][0] == '@' && !(data = zsend_read(argv[i] + 1, &len))) {
            fprintf(stderr, "zsend: cannot read %s\n", argv[i] + 1);
            return 1;
        }
        if (strcmp(argv[i], "-") == 0)
            len = 0;
        zmq_send(s, data, len, i + 1 < argc ? ZMQ_SNDMORE : 0);
        if (data != argv[i])
            free(data);
    }
    char buf[65536];
    int n = zmq_recv(s, buf, sizeof buf - 1, 0);
    if (n < 0) {
        fprintf(stderr, "zsend: no reply: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    buf[n < (int)sizeof buf - 1 ? n : (int)sizeof buf - 1] = '\0';
    printf("%s\n", buf);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return 0;
}
