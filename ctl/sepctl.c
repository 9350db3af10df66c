/* sepctl: the command line of sepd.
 *
 *   sepctl tokenize [--model DIR]          text on stdin, ids on stdout
 *   sepctl eval [--model DIR] [options]    perplexity of a text (stdin or --ids)
 *
 * Exit codes: 0 success, 1 a runtime error (bad model, bad input, no
 * memory), 2 a usage error.
 */
#include "err.h"
#include "backend.h"
#include "model.h"
#include "stream.h"
#include "tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

static const char *usage_text =
    "usage: sepctl COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  tokenize [--model DIR]        encode stdin, print the ids on one line\n"
    "  eval [--model DIR] [--method full] [--max-tokens N] [--ids FILE]\n"
    "       [--nll-out FILE] [--json] [--threads T] [--chunk K]\n"
    "                                score a text (stdin, or ids from FILE)\n"
    "  version                       print the version\n"
    "\n"
    "DIR defaults to $SEPD_MODEL, else the bundled books-llama-16m.\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "sepctl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", usage_text);
    return EXIT_USAGE;
}

static int runtime_error(int rc)
{
    fprintf(stderr, "sepctl: %s (%s)\n", sep_errmsg(), sep_strerror(rc));
    return EXIT_RUNTIME;
}

/* The model folder: --model, else $SEPD_MODEL, else the installed bundled
 * model, else the one in the source tree (running from a build). */
static const char *ctl_model_dir(const char *opt)
{
    if (opt)
        return opt;
    const char *env = getenv("SEPD_MODEL");
    if (env && *env)
        return env;
    if (access(SEP_BUNDLED_MODEL "/config.json", R_OK) == 0)
        return SEP_BUNDLED_MODEL;
    return SEP_SOURCE_MODEL;
}

/* Read all of f into a malloc'ed buffer. */
static int ctl_slurp(FILE *f, const char *what, char **buf, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    if (!b)
        return sep_fail(SEP_ENOMEM, "%s: out of memory", what);
    for (;;) {
        if (n == cap) {
            char *nb = cap < ((size_t)1 << 40) ? realloc(b, cap * 2) : NULL;
            if (!nb) {
                free(b);
                return sep_fail(SEP_ENOMEM, "%s: out of memory after %zu bytes", what, n);
            }
            b = nb;
            cap *= 2;
        }
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                free(b);
                return sep_fail(SEP_EIO, "%s: read error: %s", what, strerror(errno));
            }
            break;
        }
    }
    *buf = b;
    *len = n;
    return SEP_OK;
}

/* Parse whitespace-separated non-negative ids. */
static int ctl_parse_ids(const char *path, const char *text, size_t len,
                         int32_t **ids, size_t *n)
{
    size_t cap = 1024, k = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v)
        return sep_fail(SEP_ENOMEM, "%s: out of memory", path);
    size_t i = 0;
    while (i < len) {
        if (strchr(" \t\r\n", text[i])) {
            i++;
            continue;
        }
        long val = 0;
        size_t start = i;
        while (i < len && text[i] >= '0' && text[i] <= '9' && val <= INT32_MAX)
            val = val * 10 + (text[i++] - '0');
        if (i == start || val > INT32_MAX || (i < len && !strchr(" \t\r\n", text[i]))) {
            free(v);
            return sep_fail(SEP_EFORMAT, "%s: byte %zu: not a token id", path, start);
        }
        if (k == cap) {
            int32_t *nv = realloc(v, cap * 2 * sizeof *v);
            if (!nv) {
                free(v);
                return sep_fail(SEP_ENOMEM, "%s: out of memory", path);
            }
            v = nv;
            cap *= 2;
        }
        v[k++] = (int32_t)val;
    }
    *ids = v;
    *n = k;
    return SEP_OK;
}

static int ctl_tokenize_stdin(const char *model_dir, int32_t **ids, size_t *n)
{
    char path[4096], *text = NULL;
    size_t len;
    sep_tok_t *tok = NULL;
    int rc;
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    if ((rc = sep_tok_load(&tok, path)) || (rc = ctl_slurp(stdin, "stdin", &text, &len)))
        goto done;
    rc = sep_tok_encode(tok, text, len, ids, n);
done:
    free(text);
    sep_tok_destroy(&tok);
    return rc;
}

static int cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, 0, 'm' }, { 0, 0, 0, 0 } };
    const char *model = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c != 'm')
            return usage_error("tokenize: bad option", "");
        model = optarg;
    }
    if (optind != argc)
        return usage_error("tokenize: unexpected argument '%s'", argv[optind]);
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = ctl_tokenize_stdin(ctl_model_dir(model), &ids, &n);
    if (rc)
        return runtime_error(rc);
    for (size_t i = 0; i < n; i++)
        printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(ids);
    return fflush(stdout) == 0 ? 0 : EXIT_RUNTIME;
}

/* Parse a positive int option value in [lo, hi]. */
static int ctl_int_opt(const char *name, const char *arg, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || *end || end == arg || v < lo || v > hi) {
        fprintf(stderr, "sepctl: --%s: '%s' is not a whole number in %ld..%ld\n", name, arg, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static double ctl_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
    const char *model, *ids_path, *nll_out, *method;
    long max_tokens, threads, chunk;
    int json;
} eval_opts_t;

static int eval_parse(int argc, char **argv, eval_opts_t *o)
{
    static const struct option opts[] = {
        { "model", required_argument, 0, 'm' }, { "method", required_argument, 0, 'M' },
        { "max-tokens", required_argument, 0, 'n' }, { "ids", required_argument, 0, 'i' },
        { "nll-out", required_argument, 0, 'o' }, { "json", no_argument, 0, 'j' },
        { "threads", required_argument, 0, 't' }, { "chunk", required_argument, 0, 'c' },
        { 0, 0, 0, 0 } };
    int c;
    *o = (eval_opts_t){ .method = "full", .max_tokens = -1, .threads = 0, .chunk = 512 };
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'M': o->method = optarg; break;
        case 'i': o->ids_path = optarg; break;
        case 'o': o->nll_out = optarg; break;
        case 'j': o->json = 1; break;
        case 'n': if (ctl_int_opt("max-tokens", optarg, 1, INT64_MAX / 2, &o->max_tokens)) return EXIT_USAGE; break;
        case 't': if (ctl_int_opt("threads", optarg, 1, 1024, &o->threads)) return EXIT_USAGE; break;
        case 'c': if (ctl_int_opt("chunk", optarg, 1, 1 << 16, &o->chunk)) return EXIT_USAGE; break;
        default: return usage_error("eval: bad option", "");
        }
    }
    if (optind != argc)
        return usage_error("eval: unexpected argument '%s'", argv[optind]);
    if (strcmp(o->method, "full") != 0)
        return usage_error("eval: --method '%s': this build knows 'full'", o->method);
    return 0;
}

static int eval_load_ids(const eval_opts_t *o, const char *model_dir, int32_t **ids, size_t *n)
{
    if (!o->ids_path)
        return ctl_tokenize_stdin(model_dir, ids, n);
    FILE *f = fopen(o->ids_path, "rb");
    if (!f)
        return sep_fail(SEP_EIO, "%s: %s", o->ids_path, strerror(errno));
    char *text = NULL;
    size_t len = 0;
    int rc = ctl_slurp(f, o->ids_path, &text, &len);
    fclose(f);
    if (!rc)
        rc = ctl_parse_ids(o->ids_path, text, len, ids, n);
    free(text);
    return rc;
}

static int cmd_eval(int argc, char **argv)
{
    eval_opts_t o;
    int urc = eval_parse(argc, argv, &o);
    if (urc)
        return urc;
    const char *model_dir = ctl_model_dir(o.model);
    sep_backend_t *be = NULL;
    sep_model_t *m = NULL;
    sep_stream_t *s = NULL;
    int32_t *ids = NULL;
    float *nll = NULL;
    FILE *nf = NULL;
    size_t n = 0, scored = 0;
    int rc;
    if ((rc = eval_load_ids(&o, model_dir, &ids, &n)))
        goto fail;
    if (o.max_tokens >= 0 && (size_t)o.max_tokens + 1 < n)
        n = (size_t)o.max_tokens + 1;
    if (n < 2) {
        rc = sep_fail(SEP_EINVAL, "eval: the text has %zu token(s); at least 2 are needed", n);
        goto fail;
    }
    if ((rc = sep_backend_cpu_new(&be, (int)o.threads)) ||
        (rc = sep_model_load(&m, model_dir, be, (int)o.chunk)) ||
        (rc = sep_stream_new(&s, m)))
        goto fail;
    if (!(nll = malloc(n * sizeof *nll))) {
        rc = sep_fail(SEP_ENOMEM, "eval: out of memory for %zu NLLs", n);
        goto fail;
    }
    double t0 = ctl_now();
    if ((rc = sep_stream_feed(m, s, ids, n, nll, &scored)))
        goto fail;
    double secs = ctl_now() - t0;
    if (o.nll_out) {
        if (!(nf = fopen(o.nll_out, "w"))) {
            rc = sep_fail(SEP_EIO, "%s: %s", o.nll_out, strerror(errno));
            goto fail;
        }
        for (size_t i = 0; i < scored; i++)
            fprintf(nf, "%.6f\n", nll[i]);
        if (fclose(nf) != 0) {
            nf = NULL;
            rc = sep_fail(SEP_EIO, "%s: %s", o.nll_out, strerror(errno));
            goto fail;
        }
        nf = NULL;
    }
    double ppl = exp(s->nll_sum / (double)s->tokens);
    double avg_kv = (double)s->kv_sum / (double)s->tokens;
    if (o.json)
        printf("{\"tokens\": %lld, \"ppl\": %.6f, \"avg_kv\": %.4f, \"max_kv\": %lld, "
               "\"seconds\": %.4f, \"tokens_per_s\": %.1f}\n",
               (long long)s->tokens, ppl, avg_kv, (long long)s->kv_max, secs, s->tokens / secs);
    else
        printf("tokens %lld  ppl %.4f  avg_kv %.2f  max_kv %lld  seconds %.3f  tokens/s %.1f\n",
               (long long)s->tokens, ppl, avg_kv, (long long)s->kv_max, secs, s->tokens / secs);
fail:
    if (nf)
        fclose(nf);
    free(nll);
    free(ids);
    sep_stream_destroy(&s);
    sep_model_destroy(&m);
    sep_backend_destroy(&be);
    if (rc)
        return runtime_error(rc);
    return fflush(stdout) == 0 ? 0 : EXIT_RUNTIME;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage_error("no command given%s", "");
    const char *cmd = argv[1];
    /* the command's options start after its name */
    argc--;
    argv++;
    if (strcmp(cmd, "tokenize") == 0)
        return cmd_tokenize(argc, argv);
    if (strcmp(cmd, "eval") == 0)
        return cmd_eval(argc, argv);
    if (strcmp(cmd, "version") == 0) {
        printf("sepctl %s\n", PACKAGE_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        printf("%s", usage_text);
        return 0;
    }
    return usage_error("unknown command '%s'", cmd);
}
