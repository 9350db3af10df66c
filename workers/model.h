/* model.h: a checkpoint's weights on a backend and its forward pass.
 *
 * sep_model_load() reads config.json and the safetensors of a Hugging Face
 * folder, checks every tensor's presence, dtype and shape against the
 * config and places the weights on the backend: matrices stream to it as
 * stored (bf16, f16 or f32), read into its stage buffers while it copies
 * and converts the pieces before (backend.h, weight_fill); vectors are
 * converted to fp32 here.
 * sep_model_forward() runs a batch of chunks, one per stream: each chunk's
 * tokens attend causally to their stream's cache plus the chunk's earlier
 * tokens, their K/V are appended to the cache, and each token's NLL of
 * its target (the next token) is returned. A batch shares every weight
 * read across its streams. One forward runs at a time per model.
 *
 * For pipeline parallelism a model can be one stage: a contiguous range
 * of the checkpoint's layers, its caches holding those layers only. The
 * first stage embeds the ids, the last scores; between stages the hidden
 * states pass through host memory. Every stage plans the chunks against
 * its own caches from the ids alone, so the stages agree, and a split
 * model computes bit for bit what the whole one does on the same backend.
 *
 * A chunk may ask for the separators its compactions evict (archive):
 * after the forward, sep_model_evicted() lists them with their K and V
 * rows of the stage's layers, for the separator archive.
 */
#ifndef SEP_MODEL_H
#define SEP_MODEL_H

#include <stdint.h>

#include "backend.h"
#include "cache.h"
#include "config.h"

typedef struct {
    float *norm1_w, *norm1_b; /* (dim) input norm; bias NULL for RMSNorm */
    sep_weight_t *wqkv;       /* (q_dim + 2*kv_dim, dim): q rows, then k, then v */
    float *bqkv;              /* (q_dim + 2*kv_dim) or NULL */
    sep_weight_t *wo;         /* (dim, q_dim) */
    float *bo;                /* (dim) or NULL */
    float *norm2_w, *norm2_b; /* (dim) post-attention norm */
    sep_weight_t *w_up;       /* llama: (2*ffn, dim) gate rows then up rows; neox: (ffn, dim) */
    float *b_up;              /* (2*ffn) or (ffn) or NULL */
    sep_weight_t *w_down;     /* (dim, ffn) */
    float *b_down;            /* (dim) or NULL */
} sep_layer_t;

/* The separators the compactions of one forward evicted, for the chunks
 * that asked (sep_chunk_t.archive), with their rows of every layer the
 * model (the stage) holds as they were at the eviction: the unrotated key
 * when the cache keeps one (shift on), else the stored key, rotated at the
 * entry's stream position; and the value. Entries ordered by chunk, then
 * stream position. Layer l is the checkpoint's layer layer0 + l. */
typedef struct {
    int n;            /* separators evicted by the last forward, over its archiving chunks */
    int n_layers;     /* layers of k and v: the stage's */
    int kv_dim;       /* floats a row */
    int32_t *chunk;   /* (n) the chunk of the batch each came from */
    int64_t *pos;     /* (n) stream position */
    int32_t *id;      /* (n) token id */
    float *k, *v;     /* (n_layers, n, kv_dim) host: layer l's rows at k + (l * n + e) * kv_dim */
} sep_evicted_t;

/* Scratch of one forward, sized for max_tokens rows. */
typedef struct {
    int max_tokens;
    float *x;        /* (max_tokens, dim) residual stream */
    float *h;        /* (max_tokens, dim) normed input */
    float *o;        /* (max_tokens, dim) attention or mlp output */
    float *qkv;      /* (max_tokens, q_dim + 2*kv_dim) */
    float *att;      /* (max_tokens, q_dim) */
    float *ff;       /* (max_tokens, 2*ffn) */
    float *act;      /* (max_tokens, ffn) */
    int logit_rows;  /* rows of logits a block */
    float *logits;   /* (logit_rows, vocab); NULL but on the last stage */
    float *k_raw;    /* (max_tokens, kv_dim) unrotated keys of the batch */
    float *cs;       /* (max_tokens, rot_dim) rope cos|sin, backend memory */
    int64_t *pos;    /* (max_tokens) rotary position of each row, host */
    int32_t *rows;   /* (max_tokens) host scratch for indices and targets */
    float *nll;      /* (logit_rows) host: a block's NLLs, or its greedy tokens' */
    int32_t *next;   /* (logit_rows) host: a block's picked tokens */
    sep_pick_t *picks; /* (logit_rows) host: how each row of a block picks */
    float *pre_cs;   /* (pre_cs_cap, rot_dim) rope cos|sin of the prefix rows of a
                        forward's compactions (shift on), backend: row pre_at[j] + i
                        at the rope position of row i of plan j's prefix rows */
    int pre_cs_cap;
    int64_t *pre_pos;  /* (pre_pos_cap) host: those positions, plan after plan */
    size_t pre_pos_cap;
    int32_t *pre_at;   /* (n_plans) row of pre_cs of each plan's first prefix row */
    sep_plan_t *plans; /* (n_plans) compaction plan of each chunk of a batch */
    int n_plans;
    /* A round runs the r-th run of segments of each chunk: a run of one
     * segment as an attention problem over the cache's rows (probs), a
     * longer one as a run problem (runs) whose segments after the first
     * see their prefixes copied out (and re-rotated) to run_k / run_v */
    sep_attn_t *probs; /* (n_plans) attention problems of one round */
    sep_attn_run_t *runs; /* (n_plans) run problems of one round */
    float *run_k, *run_v; /* (run_cap, kv_dim) backend: the prefixes of a round's runs,
                             chunk after chunk */
    int run_cap;
    size_t run_bytes;     /* the most bytes of run_k and run_v a round's runs may
                             take, shared by its chunks (model.c: 256 MiB) */
    sep_attn_keys_t *keys; /* (keys_cap) backend: the keys of each query of the
                              forward's runs of several segments, chunk after chunk */
    int keys_cap;
    sep_attn_keys_t *keys_host; /* (keys_host_cap) host: the same, as written */
    size_t keys_host_cap;
    int32_t *keys_at;  /* (n_plans) each chunk's first entry of keys */
    int32_t *keys_next; /* (n_plans) a layer's attention: each chunk's next entry */
    sep_rows_t *appends; /* (6 * n_plans) K, V and raw-K rows a round moves down
                            and appends, or the raw keys a compaction re-rotates */
    sep_gather_t *gathers; /* (4 * n_plans) the compactions that end a round, then
                              the copies of the separators they evict; before the
                              round's attention, the prefixes its runs copy out */
    sep_rope_t *rotations; /* (n_plans) their prefix keys at their new positions, or
                              the prefixes copied out */
    /* the separator archive: what a forward's compactions evict from the
     * chunks that archive, copied out on the backend before each
     * compaction moves rows, downloaded once at the end */
    int32_t *arch_at;      /* (n_plans) each chunk's first entry in the forward's list,
                              -1 when it does not archive */
    int arch_n;            /* entries of the forward in flight */
    int arch_cap;          /* entries per layer arch_k and arch_v hold */
    float *arch_k, *arch_v; /* (n_layers, arch_cap, kv_dim) backend: the rows of the
                               forward in flight, layer l's at (l * arch_n + e) * kv_dim */
    size_t host_caps[5];   /* elements evicted's chunk, pos, id, k and v hold */
    sep_evicted_t evicted; /* what the last forward evicted */
} sep_run_t;

typedef struct {
    sep_config_t cfg;
    sep_backend_t *be;
    int q_dim, kv_dim, qkv_dim;
    int layer0, layer1;           /* the checkpoint layers [layer0, layer1) held */
    sep_weight_t *embed;          /* (vocab, dim); NULL unless layer0 == 0 */
    sep_weight_t *lm_head;        /* (vocab, dim); == embed when tied; NULL unless
                                     layer1 == cfg.n_layers (the last stage) */
    float *norm_w, *norm_b;       /* (dim) final norm, last stage; bias NULL for RMSNorm */
    sep_layer_t *layers;          /* (layer1 - layer0): layers[i] is layer layer0 + i */
    double *inv_freq;             /* (rot_dim / 2) rotary frequencies, host */
    double load_s;                /* seconds sep_model_load_stage took (0: synthetic) */
    uint64_t load_bytes;          /* checkpoint bytes it read: the stage's tensors */
    sep_run_t run;
} sep_model_t;

/* One stream's part of a batch. */
typedef struct {
    sep_cache_t *cache;     /* the stream's cache; K/V of ids are appended */
    const int32_t *ids;     /* (n) tokens */
    int n;
    const int32_t *targets; /* (n) token to score after each, < 0: none; NULL: none */
    float *nll;             /* (n) out: -log p(targets[i]) (left alone where none) */
    int32_t *kv;            /* (n) out, or NULL: cache entries after each token's
                               K/V is appended, before any compaction */
    float *logits;          /* (vocab) out or NULL: host logits of the chunk's last
                               token (last stage only; other stages leave it alone) */
    int32_t *next;          /* (1) out or NULL: the token after the chunk, picked from
                               those logits where they are computed (backend.h, pick)
                               as pick says; -1 when they hold a NaN or +inf or no id
                               it may take is finite (last stage only, as logits) */
    float *next_nll;        /* (1) out, with next: -log p(next) */
    const sep_pick_t *pick; /* with next: how; NULL: greedy (the argmax, lowest id on
                               ties, over the whole vocabulary); a pick out of range
                               fails the forward (SEP_EINVAL) before it runs */
    int archive;            /* 1: collect the separators this chunk's compactions evict
                               (sep_model_evicted) */
} sep_chunk_t;

/* Load dir; max_tokens bounds the rows of one forward. */
int sep_model_load(sep_model_t **out, const char *dir, sep_backend_t *be, int max_tokens);

/* Load the stage of dir's layers [layer0, layer1) (0 <= layer0 < layer1 <=
 * n_layers, else SEP_EINVAL): with the embedding when layer0 == 0, with
 * the final norm and lm_head (the embedding, when tied) when layer1 ==
 * n_layers. cfg.n_layers stays the checkpoint's count. */
int sep_model_load_stage(sep_model_t **out, const char *dir, sep_backend_t *be, int max_tokens,
                         int layer0, int layer1);

/* A model of a public checkpoint's shape with random weights, no files:
 * "llama3-8b", "pythia-6.9b" or "llama-70b-layer" (for speed at size). */
int sep_model_synthetic(sep_model_t **out, const char *shape, sep_backend_t *be,
                        int max_tokens);
/* The stage [layer0, layer1) of a synthetic shape, as sep_model_load_stage. */
int sep_model_synthetic_stage(sep_model_t **out, const char *shape, sep_backend_t *be,
                              int max_tokens, int layer0, int layer1);
void sep_model_destroy(sep_model_t **self_p);

/* Re-rotate the keys of c (shift on) from its unrotated keys at its
 * slots, slot i at rope position i, as a cache that was never compacted
 * would hold them (rope_off := n_seen - n): the same attention in other
 * roundings. Rotations far down a stream and near its start can so be
 * compared (tests); a cache without raw keys is left as it is. Fails
 * only for memory. */
int sep_model_cache_rebase(sep_model_t *m, sep_cache_t *c);

/* A cache for this model's (this stage's) layers under policy (its separator set must
 * outlive the cache). On a model with a sliding window (cfg.window): full
 * attention keeps the window - 1 newest entries before each token at
 * their stream positions when every layer slides, which is transformers'
 * window exactly, and is SEP_EUNSUPPORTED when only some layers do;
 * streaming and sepllm, whose queries see at most c + 1 keys, need c
 * below the window (SEP_EUNSUPPORTED otherwise) and are then unaffected. */
int sep_model_cache_new(const sep_model_t *m, const sep_policy_t *policy, sep_cache_t **out);

/* Run a batch (chunks of distinct caches, at most max_tokens tokens).
 * Each chunk is planned against its cache's policy: compactions inside a
 * chunk happen at the same tokens, with the same results, as in the
 * one-token-per-step loop. Bad ids, too many tokens or no memory fail
 * before any cache changes; a device fault (SEP_EIO from the backend's
 * sync) leaves the batch's caches undefined, to be restored from a
 * snapshot or dropped. */
int sep_model_forward(sep_model_t *m, sep_chunk_t *chunks, int n_chunks);

/* The same batch through a stage. x_in: host (n_total, dim) hidden states
 * entering layer0, NULL exactly when layer0 == 0 (the stage embeds the
 * ids); x_out: host (n_total, dim) hidden states leaving layer1 - 1, NULL
 * exactly when the stage is the last (which scores NLLs and logits);
 * n_total is the sum of the chunks' n. Every stage fills the kv counts
 * and commits its caches. A wrong x_in or x_out is SEP_EINVAL, before any
 * cache changes. sep_model_forward() is this on a whole model. */
int sep_model_forward_stage(sep_model_t *m, sep_chunk_t *chunks, int n_chunks,
                            const float *x_in, float *x_out);

/* What the last forward (stage) evicted from its archiving chunks, valid
 * until the next forward; n is 0 after a forward that failed. The list
 * comes from the plans, so every stage of a split model lists the same
 * entries, each with its own layers' rows. */
const sep_evicted_t *sep_model_evicted(const sep_model_t *m);

#endif
