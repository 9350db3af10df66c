/* sepctl: the command line of sepd.
 *
 *   sepctl tokenize [--model DIR]          text on stdin, ids on stdout
 *   sepctl eval [--model DIR] [options]    perplexity of a text (stdin or --ids)
 *   sepctl open|feed|generate|... NAME     sessions of a running sepd (remote.c)
 *
 * Exit codes: see ctl.h.
 */
#include "ctl.h"
#include "err.h"
#include "paths.h"
#include "backend.h"
#include "model.h"
#include "separators.h"
#include "stream.h"
#include "tokenizer.h"
#include "utf8.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>


static const char *usage_text =
    "usage: sepctl COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  tokenize [--model DIR]        encode stdin, print the ids on one line\n"
    "  eval [--model DIR] [cache options] [--max-tokens N] [--ids FILE]\n"
    "       [--nll-out FILE] [--kv-out FILE] [--seps-out FILE] [--json] [--threads T]\n"
    "       [--chunk K] [--per-token] [--device cpu|cuda|auto] [--precision fp32|bf16]\n"
    "                                score a text (stdin, or ids from FILE)\n"
    "  separators [--model DIR] [--separators X]\n"
    "                                print the separator ids, ascending\n"
    "  keygen [--out DIR] [--name NAME]\n"
    "                                a CURVE key pair: DIR/NAME.pub and NAME.secret\n"
    "                                (DIR: $XDG_CONFIG_HOME/sepd; NAME: sepctl)\n"
    "  version                       print the version\n"
    "\n"
    "session commands (a running sepd; --socket ENDPOINT, else $SEPD_SOCKET, else\n"
    "the default ipc socket; --json on each for scripts; over tcp --server-key KEY\n"
    "and --key SECRET_FILE, else $SEPD_SERVER_KEY and $SEPD_KEY, else sepctl.conf):\n"
    "  open NAME [cache options] [--archive off|f32|bf16] [--shared]\n"
    "                                open a session\n"
    "  feed NAME [--nll-out FILE] [--from-committed] [--retry]\n"
    "                                stream stdin into it (progress on a terminal)\n"
    "  generate NAME -n N [--temperature T] [--top-k K] [--top-p P] [--min-p M]\n"
    "           [--repetition-penalty R] [--presence-penalty A] [--frequency-penalty F]\n"
    "           [--penalty-window W] [--seed S] [--nll-out FILE] [--stop STRING]...\n"
    "           [--ignore-eos]\n"
    "                                continue its text, streaming it out, to n tokens,\n"
    "                                the model's eos or a stop string\n"
    "  ls | info NAME | stats        sessions, one session, the daemon\n"
    "  suspend NAME | resume NAME    move its caches out of the workers and back\n"
    "  flush NAME | close NAME [--nll-out FILE]\n"
    "                                score the held-back tail now / and end it\n"
    "  seps NAME [--from P] [--to Q] [--export FILE]\n"
    "                                its archive of evicted separators\n"
    "  export NAME FILE | import FILE [NAME]\n"
    "                                a suspended session to a file, and back\n"
    "  share NAME [--off]            let every client use it (--off: its owner alone)\n"
    "\n"
    "cache options: --method full|streaming|sepllm (sepllm) --init A (4)\n"
    "  --seps S (64) --window W (256; streaming: C - A) --capacity C (800)\n"
    "  --no-shift --separators auto|rule|llama3|gpt_neox|falcon|LIST (auto)\n"
    "\n"
    "DIR defaults to $SEPD_MODEL, else the bundled books-llama-16m.\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "sepctl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", usage_text);
    return EXIT_USAGE;
}

/* The message, and the error's name unless the message says it already
 * ("invalid UTF-8 at byte N (...)" needs no "(invalid UTF-8)" after it). */
static int runtime_error(int rc)
{
    const char *msg = sep_errmsg(), *name = sep_strerror(rc);
    if (strstr(msg, name))
        fprintf(stderr, "sepctl: %s\n", msg);
    else
        fprintf(stderr, "sepctl: %s (%s)\n", msg, name);
    return EXIT_RUNTIME;
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

static int ctl_tok_load(const char *model_dir, sep_tok_t **tok)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    return sep_tok_load(tok, path);
}

static int ctl_tokenize_stdin(const sep_tok_t *tok, int32_t **ids, size_t *n)
{
    char *text = NULL;
    size_t len;
    int rc = ctl_slurp(stdin, "stdin", &text, &len);
    if (!rc)
        rc = sep_tok_encode(tok, text, len, ids, n);
    free(text);
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
    sep_tok_t *tok = NULL;
    int rc = ctl_tok_load(model ? model : sep_default_model(), &tok);
    if (!rc)
        rc = ctl_tokenize_stdin(tok, &ids, &n);
    sep_tok_destroy(&tok);
    if (rc)
        return runtime_error(rc);
    for (size_t i = 0; i < n; i++)
        printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(ids);
    return fflush(stdout) == 0 ? 0 : EXIT_RUNTIME;
}

/* Parse a positive int option value in [lo, hi]. */
int ctl_int_opt(const char *name, const char *arg, long lo, long hi, long *out)
{
    if (sep_parse_long(name, arg, lo, hi, out)) {
        fprintf(stderr, "sepctl: --%s\n", sep_errmsg());
        return -1;
    }
    return 0;
}

typedef struct {
    const char *model, *ids_path, *nll_out, *kv_out, *seps_out, *separators, *device,
        *precision;
    long max_tokens, threads, chunk;
    int json;
    sep_policy_t policy;
} eval_opts_t;

int ctl_cache_opt(int c, const char *arg, sep_policy_t *p, int *window_given,
                         const char **separators)
{
    long v;
    switch (c) {
    case 'M':
        if (sep_method_parse(arg, &p->method)) {
            fprintf(stderr, "sepctl: --method: %s\n", sep_errmsg());
            return -1;
        }
        return 0;
    case 'A': if (ctl_int_opt("init", arg, 0, 1 << 24, &v)) return -1; p->a = (int)v; return 0;
    case 'S': if (ctl_int_opt("seps", arg, 0, 1 << 24, &v)) return -1; p->s = (int)v; return 0;
    case 'W': if (ctl_int_opt("window", arg, 0, 1 << 24, &v)) return -1; p->w = (int)v;
              *window_given = 1; return 0;
    case 'C': if (ctl_int_opt("capacity", arg, 1, 1 << 24, &v)) return -1; p->c = (int)v; return 0;
    case 'N': p->shift = 0; return 0;
    case 'X': *separators = arg; return 0;
    default: return 1;
    }
}

int ctl_policy_done(sep_policy_t *p, int window_given)
{
    if (p->method == SEP_METHOD_STREAMING && !window_given)
        p->w = p->c - p->a;
    /* check the numbers now, before any loading; the separator set comes
     * with the tokenizer */
    sep_policy_t numbers = *p;
    static const uint8_t one = 1;
    numbers.is_sep = &one;
    numbers.n_vocab = 1;
    if (sep_policy_check(&numbers)) {
        fprintf(stderr, "sepctl: %s\n", sep_errmsg());
        return -1;
    }
    return 0;
}

static int eval_parse(int argc, char **argv, eval_opts_t *o)
{
    static const struct option opts[] = {
        { "model", required_argument, 0, 'm' }, CTL_CACHE_OPTIONS,
        { "max-tokens", required_argument, 0, 'n' }, { "ids", required_argument, 0, 'i' },
        { "nll-out", required_argument, 0, 'o' }, { "json", no_argument, 0, 'j' },
        { "threads", required_argument, 0, 't' }, { "chunk", required_argument, 0, 'c' },
        { "per-token", no_argument, 0, 'p' }, { "kv-out", required_argument, 0, 'k' },
        { "device", required_argument, 0, 'd' }, { "precision", required_argument, 0, 'P' },
        { "seps-out", required_argument, 0, 'e' }, { 0, 0, 0, 0 } };
    int c, window_given = 0, r;
    *o = (eval_opts_t){ .max_tokens = -1, .threads = 0, .chunk = 512,
                        .policy = { .method = SEP_METHOD_SEPLLM, .a = 4, .s = 64, .w = 256,
                                    .c = 800, .shift = 1 } };
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if ((r = ctl_cache_opt(c, optarg, &o->policy, &window_given, &o->separators)) < 0)
            return EXIT_USAGE;
        if (r == 0)
            continue;
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'i': o->ids_path = optarg; break;
        case 'o': o->nll_out = optarg; break;
        case 'k': o->kv_out = optarg; break;
        case 'e': o->seps_out = optarg; break;
        case 'd': o->device = optarg; break;
        case 'P': o->precision = optarg; break;
        case 'j': o->json = 1; break;
        case 'p': o->chunk = 1; break;
        case 'n': if (ctl_int_opt("max-tokens", optarg, 1, INT64_MAX / 2, &o->max_tokens)) return EXIT_USAGE; break;
        case 't': if (ctl_int_opt("threads", optarg, 1, 1024, &o->threads)) return EXIT_USAGE; break;
        case 'c': if (ctl_int_opt("chunk", optarg, 1, 1 << 16, &o->chunk)) return EXIT_USAGE; break;
        default: return usage_error("eval: bad option", "");
        }
    }
    if (optind != argc)
        return usage_error("eval: unexpected argument '%s'", argv[optind]);
    return ctl_policy_done(&o->policy, window_given) ? EXIT_USAGE : 0;
}

/* Where eval's ids come from: an ids file, read whole, or text on stdin,
 * tokenized as it arrives (sep_tok_encode_prefix) so that memory stays
 * flat over a text of any length. */
typedef struct {
    const sep_tok_t *tok;
    int from_text;
    char *buf;              /* text held back, then the next read */
    size_t len, cap;
    size_t base;            /* where buf starts in the input */
    size_t dropped;         /* bytes of a character the input ends inside */
    int at, eof;
    int32_t *ids;           /* ids file: all of them; text: the last batch */
    size_t n, off;
} eval_src_t;

#define EVAL_READ (1 << 16) /* bytes of text read at a time */

static int eval_src_open(eval_src_t *src, const eval_opts_t *o, const sep_tok_t *tok)
{
    *src = (eval_src_t){ .tok = tok, .at = SEP_TOK_START };
    if (!o->ids_path) {
        src->from_text = 1;
        src->cap = EVAL_READ + SEP_TOK_HOLD_MAX;
        if (!(src->buf = malloc(src->cap)))
            return sep_fail(SEP_ENOMEM, "eval: out of memory");
        return SEP_OK;
    }
    FILE *f = fopen(o->ids_path, "rb");
    if (!f)
        return sep_fail(SEP_EIO, "%s: %s", o->ids_path, strerror(errno));
    char *text = NULL;
    size_t len = 0;
    int rc = ctl_slurp(f, o->ids_path, &text, &len);
    fclose(f);
    if (!rc)
        rc = ctl_parse_ids(o->ids_path, text, len, &src->ids, &src->n);
    free(text);
    return rc;
}

/* The next ids (*n == 0 at the end); they stay valid until the next call. */
static int eval_src_next(eval_src_t *src, const int32_t **ids, size_t *n)
{
    if (!src->from_text) {
        *ids = src->ids + src->off;
        *n = src->n - src->off;
        src->off = src->n;
        return SEP_OK;
    }
    *ids = NULL;
    *n = 0;
    while (*n == 0 && !(src->eof && src->len == 0)) {
        if (!src->eof) {
            size_t got = fread(src->buf + src->len, 1, src->cap - src->len, stdin);
            if (got == 0 && ferror(stdin))
                return sep_fail(SEP_EIO, "stdin: read error: %s", strerror(errno));
            src->len += got;
            src->eof = got == 0;
        }
        /* The text is checked here, not by the tokenizer, which sees only
         * buf: a bad byte is named by its place in the whole input. An
         * input that ends inside a character loses that character's bytes,
         * the rule sepd is to share when a session's text ends, so that
         * their NLLs agree. */
        size_t ok;
        if (sep_utf8_scan(src->buf, src->len, &ok)) {
            char why[128];
            return sep_fail(SEP_EUTF8, "stdin: invalid UTF-8 at byte %zu (%s)", src->base + ok,
                            sep_utf8_why(src->buf + ok, src->len - ok, why, sizeof why));
        }
        if (src->eof) {
            src->dropped = src->len - ok;
            src->len = ok;
        }
        /* a non-final call leaves at most SEP_TOK_HOLD_MAX bytes, so the
         * buffer always has room for the next read */
        size_t used;
        free(src->ids);
        src->ids = NULL;
        int rc = sep_tok_encode_prefix(src->tok, src->buf, src->len, src->eof, &src->at,
                                       &src->ids, n, &used);
        if (rc)
            return rc;
        memmove(src->buf, src->buf + used, src->len - used);
        src->len -= used;
        src->base += used;
        *ids = src->ids;
    }
    return SEP_OK;
}

static void eval_src_close(eval_src_t *src)
{
    free(src->buf);
    free(src->ids);
}

static int eval_open_out(const char *path, FILE **f)
{
    *f = NULL;
    if (path && !(*f = fopen(path, "w")))
        return sep_fail(SEP_EIO, "%s: %s", path, strerror(errno));
    return SEP_OK;
}

static int eval_close_out(const char *path, FILE **f)
{
    int bad = *f && (ferror(*f) | (fclose(*f) != 0));
    *f = NULL;
    return bad ? sep_fail(SEP_EIO, "%s: %s", path, strerror(errno)) : SEP_OK;
}

/* --seps-out: a line "POSITION ID" for each separator a chunk evicted. */
static void eval_evicted(const sep_evicted_t *ev, void *arg)
{
    for (int e = 0; e < ev->n; e++)
        fprintf(arg, "%lld %d\n", (long long)ev->pos[e], ev->id[e]);
}

/* Score ids in pieces as the source yields them, writing each piece's
 * NLLs, cache sizes and (sf) evicted separators as it goes. */
static int eval_run(const eval_opts_t *o, eval_src_t *src, sep_model_t *m, sep_stream_t *s,
                    FILE *nf, FILE *kf, FILE *sf)
{
    size_t limit = o->max_tokens >= 0 ? (size_t)o->max_tokens + 1 : SIZE_MAX, total = 0;
    size_t cap = 0;
    float *nll = NULL;
    int32_t *kv = NULL;
    int rc = SEP_OK;
    while (total < limit) {
        const int32_t *ids;
        size_t n, scored;
        if ((rc = eval_src_next(src, &ids, &n)) || n == 0)
            break;
        if (n > limit - total)
            n = limit - total;
        if (n > cap) {
            float *nn = realloc(nll, n * sizeof *nll);
            if (nn)
                nll = nn;
            int32_t *nk = realloc(kv, n * sizeof *kv);
            if (nk)
                kv = nk;
            if (!nn || !nk) {
                rc = sep_fail(SEP_ENOMEM, "eval: out of memory for %zu NLLs", n);
                break;
            }
            cap = n;
        }
        s->on_evict = sf ? eval_evicted : NULL;
        s->evict_arg = sf;
        rc = sep_stream_feed(m, s, ids, n, nll, kv, &scored);
        if (rc)
            break;
        for (size_t i = 0; nf && i < scored; i++)
            fprintf(nf, "%.9g\n", nll[i]); /* 9 digits: the float exactly */
        for (size_t i = 0; kf && i < scored; i++)
            fprintf(kf, "%d\n", kv[i]);
        total += n;
    }
    free(nll);
    free(kv);
    if (!rc && s->tokens == 0)
        rc = sep_fail(SEP_EINVAL, "eval: the text has %zu token(s); at least 2 are needed", total);
    return rc;
}

static int cmd_eval(int argc, char **argv)
{
    eval_opts_t o;
    int urc = eval_parse(argc, argv, &o);
    if (urc)
        return urc;
    const char *model_dir = o.model ? o.model : sep_default_model();
    sep_backend_t *be = NULL;
    sep_model_t *m = NULL;
    sep_stream_t *s = NULL;
    sep_tok_t *tok = NULL;
    sep_sepset_t seps = { 0 };
    eval_src_t src = { 0 };
    FILE *nf = NULL, *kf = NULL, *sf = NULL;
    int rc;
    if ((rc = ctl_tok_load(model_dir, &tok)) || (rc = eval_src_open(&src, &o, tok)) ||
        (rc = sep_backend_new(&be, o.device, o.precision, (int)o.threads)) ||
        (rc = sep_model_load(&m, model_dir, be, (int)o.chunk)))
        goto fail;
    /* the separator table spans the model's vocabulary, which may be
     * larger than the tokenizer's */
    if ((rc = sep_sepset_build(&seps, tok, o.separators, m->cfg.vocab))) {
        rc = sep_fail(rc, "%s: %s", model_dir, sep_errmsg());
        goto fail;
    }
    o.policy.is_sep = seps.is_sep;
    o.policy.n_vocab = seps.n_vocab;
    if ((rc = sep_stream_new(&s, m, &o.policy)) ||
        (rc = eval_open_out(o.nll_out, &nf)) || (rc = eval_open_out(o.kv_out, &kf)) ||
        (rc = eval_open_out(o.seps_out, &sf)))
        goto fail;
    double t0 = sep_now();
    if ((rc = eval_run(&o, &src, m, s, nf, kf, sf)) || (rc = eval_close_out(o.nll_out, &nf)) ||
        (rc = eval_close_out(o.kv_out, &kf)) || (rc = eval_close_out(o.seps_out, &sf)))
        goto fail;
    double secs = sep_now() - t0;
    if (src.dropped)
        fprintf(stderr, "sepctl: note: the text ends inside a UTF-8 character; its last %zu "
                "byte(s) were not scored\n", src.dropped);
    double ppl = exp(s->nll_sum / (double)s->tokens);
    double avg_kv = (double)s->kv_sum / (double)s->tokens;
    struct rusage ru;
    long rss_kib = getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
    if (o.json)
        /* 17 digits: scripts read back the very doubles */
        printf("{\"tokens\": %lld, \"ppl\": %.17g, \"avg_kv\": %.17g, \"max_kv\": %lld, "
               "\"seconds\": %.17g, \"tokens_per_s\": %.1f, \"peak_rss_kib\": %ld}\n",
               (long long)s->tokens, ppl, avg_kv, (long long)s->kv_max, secs, s->tokens / secs,
               rss_kib);
    else
        printf("tokens %lld  ppl %.4f  avg_kv %.2f  max_kv %lld  seconds %.3f  tokens/s %.1f\n",
               (long long)s->tokens, ppl, avg_kv, (long long)s->kv_max, secs, s->tokens / secs);
fail:
    if (nf)
        fclose(nf);
    if (kf)
        fclose(kf);
    if (sf)
        fclose(sf);
    eval_src_close(&src);
    sep_stream_destroy(&s);
    sep_model_destroy(&m);
    sep_backend_destroy(&be);
    sep_sepset_free(&seps);
    sep_tok_destroy(&tok);
    if (rc)
        return runtime_error(rc);
    return fflush(stdout) == 0 ? 0 : EXIT_RUNTIME;
}

static int cmd_separators(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, 0, 'm' }, { "separators", required_argument, 0, 'X' },
        { 0, 0, 0, 0 } };
    const char *model = NULL, *spec = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'm')
            model = optarg;
        else if (c == 'X')
            spec = optarg;
        else
            return usage_error("separators: bad option", "");
    }
    if (optind != argc)
        return usage_error("separators: unexpected argument '%s'", argv[optind]);
    sep_tok_t *tok = NULL;
    sep_sepset_t seps = { 0 };
    sep_config_t cfg;
    const char *dir = model ? model : sep_default_model();
    int rc = ctl_tok_load(dir, &tok);
    if (!rc)
        rc = sep_config_load(&cfg, dir);
    if (!rc && (rc = sep_sepset_build(&seps, tok, spec, cfg.vocab)))
        rc = sep_fail(rc, "%s: %s", dir, sep_errmsg());
    sep_tok_destroy(&tok);
    if (rc)
        return runtime_error(rc);
    for (int id = 0, first = 1; id < seps.n_vocab; id++)
        if (seps.is_sep[id]) {
            printf(first ? "%d" : " %d", id);
            first = 0;
        }
    printf("\n");
    sep_sepset_free(&seps);
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
    if (strcmp(cmd, "separators") == 0)
        return cmd_separators(argc, argv);
    if (strcmp(cmd, "keygen") == 0)
        return ctl_keygen(argc, argv);
    static const char *remote[] = { "open", "feed", "generate", "ls", "info", "stats",
                                    "suspend", "resume", "flush", "close", "seps",
                                    "export", "import", "share" };
    for (size_t i = 0; i < sizeof remote / sizeof remote[0]; i++)
        if (strcmp(cmd, remote[i]) == 0)
            return ctl_remote(cmd, argc, argv);
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
