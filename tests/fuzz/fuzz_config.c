/* fuzz_config.c: the config.json reader (workers/config.c).
 *
 * Input: config.json, optionally followed by "\n--file--\n" and a
 * generation_config.json. A config that loads must be one the engine can
 * size: positive dimensions, head_dim * heads consistent with what the
 * reader promises, rotary dims within head_dim, eos ids in the
 * vocabulary; its rotary frequencies are computed. */
#define _GNU_SOURCE
#include "fuzz.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "err.h"

#define FZ_CUT "\n--file--\n"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/generation_config.json", fuzz_dir());
    unlink(path);
    const uint8_t *cut = memmem(data, size, FZ_CUT, strlen(FZ_CUT));
    fuzz_write("config.json", data, cut ? (size_t)(cut - data) : size);
    if (cut)
        fuzz_write("generation_config.json", cut + strlen(FZ_CUT),
                   size - (size_t)(cut - data) - strlen(FZ_CUT));
    sep_config_t cfg;
    if (sep_config_load(&cfg, fuzz_dir())) {
        FUZZ_CHECK(sep_errmsg()[0], "a failed load names its cause");
        return 0;
    }
    FUZZ_CHECK(cfg.n_layers > 0 && cfg.dim > 0 && cfg.n_heads > 0 && cfg.n_kv_heads > 0 &&
               cfg.head_dim > 0 && cfg.ffn_dim > 0 && cfg.vocab > 0,
               "dimensions positive (layers %d dim %d heads %d/%d head_dim %d ffn %d vocab %d)",
               cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim,
               cfg.vocab);
    FUZZ_CHECK(cfg.n_heads % cfg.n_kv_heads == 0, "heads %d a multiple of kv heads %d",
               cfg.n_heads, cfg.n_kv_heads);
    FUZZ_CHECK(cfg.rot_dim >= 0 && cfg.rot_dim <= cfg.head_dim && cfg.rot_dim % 2 == 0,
               "rot_dim %d within head_dim %d", cfg.rot_dim, cfg.head_dim);
    FUZZ_CHECK(cfg.n_eos >= 0 && cfg.n_eos <= SEP_EOS_MAX, "n_eos %d", cfg.n_eos);
    for (int i = 0; i < cfg.n_eos; i++)
        FUZZ_CHECK(cfg.eos[i] >= 0 && cfg.eos[i] < cfg.vocab, "eos %d in vocab %d", cfg.eos[i],
                   cfg.vocab);
    FUZZ_CHECK(cfg.window >= 0 && cfg.window_layers >= 0 && cfg.window_layers <= cfg.n_layers,
               "window %d on %d of %d layers", cfg.window, cfg.window_layers, cfg.n_layers);
    FUZZ_CHECK(memchr(cfg.arch_name, 0, sizeof cfg.arch_name), "arch_name terminated");
    if (cfg.rot_dim <= 4096) {
        double *f = malloc((size_t)(cfg.rot_dim / 2 + 1) * sizeof *f);
        FUZZ_CHECK(f, "memory");
        sep_config_rope_freqs(&cfg, f);
        free(f);
    }
    return 0;
}
