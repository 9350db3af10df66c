/* separators.c: separator presets, the rule, and user lists. */
#include "separators.h"
#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    int min_vocab, max_vocab;  /* vocabulary sizes of that tokenizer family */
    int marks[6];              /* ids of . , ? ! ; : */
    int ids[24];
    int n;
} preset_t;

/* The lists of the authors' Streaming-SepLLM code (docs/sepllm.md). */
static const preset_t presets[] = {
    { "llama3", 128000, 128512, { 13, 11, 30, 0, 26, 25 },
      { 13, 11, 30, 0, 26, 25, 198, 220, 662, 1174, 949, 758, 2652, 551, 720, 256, 262 }, 17 },
    { "gpt_neox", 50254, 50304, { 15, 13, 32, 2, 28, 27 },
      { 15, 13, 32, 2, 28, 27, 209, 186, 187, 964, 1157, 3736, 2195, 3706, 1163, 2490,
        50276, 586, 4928, 50275 }, 20 },
    { "falcon", 65024, 65024, { 25, 23, 42, 12, 38, 37 },
      { 25, 23, 42, 12, 38, 37, 193, 4610, 204, 258, 1212, 23787, 466 }, 13 },
};
#define N_PRESETS (sizeof presets / sizeof presets[0])

static const char *const rule_texts[] = {
    ".", ",", "?", "!", ";", ":", "\n", "\t", " ",
    " .", " ,", " ?", " !", " ;", " :", " \n", "  ", "   ", "\n ", " \n ",
};
#define N_RULE (sizeof rule_texts / sizeof rule_texts[0])

/* Does token id decode to exactly text (len bytes)? */
static int sepset_token_is(const sep_tok_t *tok, int id, const char *text, size_t len)
{
    char *t = NULL;
    size_t n = 0;
    int same = sep_tok_token_text(tok, id, &t, &n) == SEP_OK && n == len &&
               memcmp(t, text, len) == 0;
    free(t);
    return same;
}

static void sepset_add(sep_sepset_t *set, int id)
{
    if (id >= 0 && id < set->n_vocab && !set->is_sep[id]) {
        set->is_sep[id] = 1;
        set->count++;
    }
}

/* Every id whose own text is one of texts[0..n) (lengths lens). */
static int sepset_add_texts(sep_sepset_t *set, const sep_tok_t *tok, const char *const *texts,
                            const size_t *lens, size_t n)
{
    for (int id = 0; id < sep_tok_vocab_size(tok); id++) {
        char *t = NULL;
        size_t len = 0;
        int rc = sep_tok_token_text(tok, id, &t, &len);
        if (rc == SEP_ERANGE)
            continue; /* a hole in the id space */
        if (rc)
            return rc;
        for (size_t i = 0; i < n; i++)
            if (len == lens[i] && memcmp(t, texts[i], len) == 0) {
                sepset_add(set, id);
                break;
            }
        free(t);
    }
    return SEP_OK;
}

static int sepset_rule(sep_sepset_t *set, const sep_tok_t *tok)
{
    size_t lens[N_RULE];
    for (size_t i = 0; i < N_RULE; i++)
        lens[i] = strlen(rule_texts[i]);
    snprintf(set->name, sizeof set->name, "rule");
    return sepset_add_texts(set, tok, rule_texts, lens, N_RULE);
}

static int sepset_preset(sep_sepset_t *set, const preset_t *p)
{
    for (int i = 0; i < p->n; i++) {
        if (p->ids[i] >= set->n_vocab)
            return sep_fail(SEP_EINVAL, "separators %s: id %d is outside this vocabulary (%d)",
                            p->name, p->ids[i], set->n_vocab);
        sepset_add(set, p->ids[i]);
    }
    snprintf(set->name, sizeof set->name, "%s", p->name);
    return SEP_OK;
}

/* The preset whose tokenizer tok is, or NULL. */
static const preset_t *sepset_detect(const sep_tok_t *tok, int n_vocab)
{
    static const char marks[] = ".,?!;:";
    for (size_t p = 0; p < N_PRESETS; p++) {
        if (n_vocab < presets[p].min_vocab || n_vocab > presets[p].max_vocab)
            continue;
        int all = 1;
        for (int i = 0; i < 6 && all; i++)
            all = sepset_token_is(tok, presets[p].marks[i], &marks[i], 1);
        if (all)
            return &presets[p];
    }
    return NULL;
}

/* A user list: "13,11,198" or ".,\,,\n" (see the header). */
static int sepset_list(sep_sepset_t *set, const sep_tok_t *tok, const char *spec)
{
    size_t n_items = 1;
    for (const char *p = spec; *p; p++)
        n_items += *p == ',' && (p == spec || p[-1] != '\\');
    char *buf = malloc(strlen(spec) + 1);
    char **texts = calloc(n_items, sizeof *texts);
    size_t *lens = calloc(n_items, sizeof *lens);
    size_t n_texts = 0;
    int rc = SEP_OK;
    if (!buf || !texts || !lens) {
        rc = sep_fail(SEP_ENOMEM, "separators: out of memory");
        goto done;
    }
    char *out = buf;
    for (const char *p = spec;; p++) {
        if (*p == '\\') {
            char e = p[1];
            char v = e == 'n' ? '\n' : e == 't' ? '\t' : e == 's' ? ' ' :
                     e == ',' ? ',' : e == '\\' ? '\\' : 0;
            if (!v) {
                rc = sep_fail(SEP_EINVAL, "separators '%s': unknown escape at byte %td",
                              spec, p - spec);
                goto done;
            }
            *out++ = v;
            p++;
            continue;
        }
        if (*p && *p != ',') {
            *out++ = *p;
            continue;
        }
        /* end of an item: buf holds it, terminated for strspn and strtol */
        size_t len = (size_t)(out - buf);
        *out = '\0';
        if (len == 0) {
            rc = sep_fail(SEP_EINVAL, "separators '%s': empty item at byte %td", spec, p - spec);
            goto done;
        }
        int digits = strspn(buf, "0123456789") == len && len <= 9;
        if (digits) {
            long id = strtol(buf, NULL, 10);
            if (id >= set->n_vocab) {
                rc = sep_fail(SEP_EINVAL, "separators: id %ld is outside the vocabulary (%d)",
                              id, set->n_vocab);
                goto done;
            }
            sepset_add(set, (int)id);
        } else {
            if (!(texts[n_texts] = malloc(len))) {
                rc = sep_fail(SEP_ENOMEM, "separators: out of memory");
                goto done;
            }
            memcpy(texts[n_texts], buf, len);
            lens[n_texts++] = len;
        }
        out = buf;
        if (!*p)
            break;
    }
    rc = sepset_add_texts(set, tok, (const char *const *)texts, lens, n_texts);
    if (!rc && set->count == 0)
        rc = sep_fail(SEP_EINVAL, "separators '%s': no token of this vocabulary matches", spec);
    snprintf(set->name, sizeof set->name, "list");
done:
    for (size_t i = 0; texts && i < n_texts; i++)
        free(texts[i]);
    free(texts);
    free(lens);
    free(buf);
    return rc;
}

int sep_sepset_build(sep_sepset_t *set, const sep_tok_t *tok, const char *spec, int n_vocab)
{
    memset(set, 0, sizeof *set);
    int rc = sep_tok_check_vocab(tok, n_vocab);
    if (rc)
        return rc;
    set->n_vocab = n_vocab;
    set->is_sep = calloc((size_t)set->n_vocab, 1);
    if (!set->is_sep)
        return sep_fail(SEP_ENOMEM, "separators: out of memory");
    if (!spec || !*spec || strcmp(spec, "auto") == 0) {
        /* a preset is the tokenizer's: its size, not the model's */
        const preset_t *p = sepset_detect(tok, sep_tok_vocab_size(tok));
        rc = p ? sepset_preset(set, p) : sepset_rule(set, tok);
    } else if (strcmp(spec, "rule") == 0) {
        rc = sepset_rule(set, tok);
    } else {
        const preset_t *named = NULL;
        for (size_t p = 0; p < N_PRESETS; p++)
            if (strcmp(spec, presets[p].name) == 0)
                named = &presets[p];
        rc = named ? sepset_preset(set, named) : sepset_list(set, tok, spec);
    }
    if (rc)
        sep_sepset_free(set);
    return rc;
}

int sep_sepset_preset(sep_sepset_t *set, const char *name, int n_vocab)
{
    memset(set, 0, sizeof *set);
    for (size_t p = 0; p < N_PRESETS; p++) {
        if (strcmp(name, presets[p].name) != 0)
            continue;
        set->n_vocab = n_vocab;
        if (!(set->is_sep = calloc((size_t)n_vocab, 1)))
            return sep_fail(SEP_ENOMEM, "separators: out of memory");
        int rc = sepset_preset(set, &presets[p]);
        if (rc)
            sep_sepset_free(set);
        return rc;
    }
    return sep_fail(SEP_EINVAL, "separators '%s': expected llama3, gpt_neox or falcon", name);
}

void sep_sepset_free(sep_sepset_t *set)
{
    free(set->is_sep);
    memset(set, 0, sizeof *set);
}
