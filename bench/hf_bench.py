#!/usr/bin/env python3
"""Hugging Face transformers on a model shape, for comparison with sepd (GPU machine).

  hf_bench.py [--shape llama3-8b] [--prefill 4096] [--steps 64]

Random weights in bf16 on the GPU, full attention: the tokens/s of one
prefill of N tokens, and of a one-token-per-step loop with the KV cache."""
import argparse, time
import torch, transformers as T

SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      rope_theta=500000.0, max_position_embeddings=8192),
}

ap = argparse.ArgumentParser()
ap.add_argument("--shape", default="llama3-8b")
ap.add_argument("--prefill", type=int, default=4096)
ap.add_argument("--steps", type=int, default=64)
a = ap.parse_args()
torch.manual_seed(0)
cfg = T.LlamaConfig(**SHAPES[a.shape])
with torch.device("cuda"):
    m = T.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
ids = torch.randint(0, cfg.vocab_size, (1, a.prefill + a.steps), device="cuda")
with torch.no_grad():
    m(ids[:, :128])  # warm up
    torch.cuda.synchronize()
    t = time.time()
    out = m(ids[:, : a.prefill], use_cache=True)
    torch.cuda.synchronize()
    pre = a.prefill / (time.time() - t)
    past = out.past_key_values
    t = time.time()
    for i in range(a.steps):
        out = m(ids[:, a.prefill + i : a.prefill + i + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
    torch.cuda.synchronize()
    step = a.steps / (time.time() - t)
print(f"hf {a.shape} bf16 {torch.cuda.get_device_name()}: prefill {a.prefill} tokens "
      f"{pre:.0f} tokens/s; one token per step {step:.1f} tokens/s "
      f"(torch {torch.__version__}, transformers {T.__version__})")
