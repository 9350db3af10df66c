/* config.h: the architecture of a checkpoint, from its config.json.
 *
 * Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)
 * and GPT-NeoX (GPTNeoXForCausalLM). Fields are read where Hugging Face
 * writes them, in both the older layout (top-level rope_theta,
 * rope_scaling, rotary_pct, rotary_emb_base) and the newer one
 * (rope_parameters.{rope_theta, rope_type, partial_rotary_factor, ...}).
 * An unknown architecture, activation or rope type, or a missing or
 * inconsistent field, is an error naming config.json and the field.
 *
 * The end-of-sequence ids come from eos_token_id (an id, a list of ids,
 * or null for none) of generation_config.json beside config.json when
 * that file names one, else of config.json, as transformers' generate
 * takes them. Each must lie in the vocabulary.
 * Sliding-window attention, as transformers 5.17 applies it: Mistral's
 * sliding_window (absent: 4096, the config class's default; null: none)
 * on every layer (layer_types is not read); Qwen2's sliding_window when
 * use_sliding_window is true, on the layers from max_window_layers on
 * (default 28), or on those that layer_types calls "sliding_attention"
 * when it is given. A query of such a layer attends to the window newest
 * keys, itself included (position q sees keys q - window + 1 .. q).
 */
#ifndef SEP_CONFIG_H
#define SEP_CONFIG_H

#define SEP_EOS_MAX 16      /* end-of-sequence ids of one model, at most */

typedef enum {
    SEP_ARCH_LLAMA = 1, /* RMSNorm, SwiGLU MLP, separate q/k/v projections */
    SEP_ARCH_NEOX = 2,  /* LayerNorm with bias, GELU MLP, fused qkv */
} sep_arch_t;

typedef enum {
    SEP_ACT_SILU = 1,  /* llama: silu(gate) * up */
    SEP_ACT_GELU,      /* exact erf GELU ("gelu") */
    SEP_ACT_GELU_TANH, /* tanh approximation ("gelu_new", "gelu_fast", "gelu_pytorch_tanh") */
} sep_act_t;

typedef struct {
    sep_arch_t arch;
    char arch_name[64];     /* architectures[0], e.g. "Qwen2ForCausalLM" */
    int n_layers;
    int dim;                /* hidden_size */
    int n_heads;
    int n_kv_heads;         /* num_key_value_heads (= n_heads when absent) */
    int head_dim;           /* head_dim, else dim / n_heads */
    int ffn_dim;            /* intermediate_size */
    int vocab;              /* vocab_size */
    int max_pos;            /* max_position_embeddings (0 when absent) */
    float norm_eps;         /* rms_norm_eps or layer_norm_eps */
    sep_act_t act;          /* hidden_act */
    int tied_embeddings;    /* tie_word_embeddings (llama default 0, Qwen2/stories as given) */
    int qkv_bias;           /* q/k/v projections have biases (Qwen2; llama attention_bias) */
    int o_bias;             /* o_proj has a bias (llama attention_bias) */
    int mlp_bias;           /* llama mlp_bias */
    int parallel_residual;  /* neox use_parallel_residual (default 1) */
    /* rotary embedding */
    int rot_dim;            /* rotated dims per head: head_dim, or partial for neox */
    double rope_theta;
    int rope_llama3;        /* rope_type "llama3" (Llama-3.1 scaling) */
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_max_pos;  /* original_max_position_embeddings */
    int n_eos;              /* end-of-sequence ids (0: none) */
    int eos[SEP_EOS_MAX];   /* (n_eos) in the order the file lists them */
    /* sliding-window attention */
    int window;             /* keys a query of a sliding layer sees; 0: no layer slides */
    int window_layers;      /* layers that slide: n_layers, or fewer (the others attend
                               to every key); 0 when window is 0 */
    char window_keys[64];   /* the config.json keys they come from, for messages */
} sep_config_t;

/* Parse dir/config.json (and dir/generation_config.json when present)
 * into cfg. */
int sep_config_load(sep_config_t *cfg, const char *dir);

/* Inverse frequencies of the rotary embedding, rot_dim/2 of them, with
 * llama3 scaling applied when set (as transformers computes them). */
void sep_config_rope_freqs(const sep_config_t *cfg, double *inv_freq);

#endif
