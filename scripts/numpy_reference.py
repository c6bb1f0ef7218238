#!/usr/bin/env python3
# Independent check of the model forward: a NumPy llama straight from GGUF weights, llama.cpp
# style (interleaved RoPE on the permuted q/k rows as stored). Needs `pip install numpy gguf`.
# Compare with: cargo run --release --example dump_logits -- MODEL IDS OUT.bin exact
# (with CANDLE_DEQUANTIZE_ALL=1 the float path matches it to float rounding).
# Usage: scripts/numpy_reference.py MODEL.gguf 1,2,3 OUT.npy
import sys, numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
r = GGUFReader(sys.argv[1])
W = {}
for t in r.tensors:
    W[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
f = {k: v.contents() for k, v in r.fields.items() if not k.startswith('tokenizer.ggml')}
L = f['llama.block_count']; H = f['llama.attention.head_count']; KV = f['llama.attention.head_count_kv']
D = f['llama.embedding_length']; hd = D // H; eps = f['llama.attention.layer_norm_rms_epsilon']; theta = f['llama.rope.freq_base']
ids = [int(x) for x in sys.argv[2].split(',')]
T = len(ids)
def rms(x, w): return x / np.sqrt((x*x).mean(-1, keepdims=True) + eps) * w
def rope_i(x):  # x (T, heads, hd), interleaved pairs
    pos = np.arange(T)[:, None]
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = pos * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x); out[..., 0::2] = x0*c - x1*s; out[..., 1::2] = x0*s + x1*c
    return out
x = W['token_embd.weight'][ids]
for l in range(L):
    p = f'blk.{l}.'
    h = rms(x, W[p+'attn_norm.weight'])
    q = (h @ W[p+'attn_q.weight'].T).reshape(T, H, hd); k = (h @ W[p+'attn_k.weight'].T).reshape(T, KV, hd); v = (h @ W[p+'attn_v.weight'].T).reshape(T, KV, hd)
    q, k = rope_i(q), rope_i(k)
    rep = H // KV
    k = np.repeat(k, rep, axis=1); v = np.repeat(v, rep, axis=1)
    s = np.einsum('thd,shd->hts', q, k) / np.sqrt(hd)
    s = s + np.triu(np.full((T, T), -np.inf), 1)[None]
    s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
    o = np.einsum('hts,shd->thd', s, v).reshape(T, D)
    x = x + o @ W[p+'attn_output.weight'].T
    h = rms(x, W[p+'ffn_norm.weight'])
    g = h @ W[p+'ffn_gate.weight'].T; u = h @ W[p+'ffn_up.weight'].T
    x = x + ((g / (1 + np.exp(-g))) * u) @ W[p+'ffn_down.weight'].T
x = rms(x, W['output_norm.weight'])
logits = x @ W['token_embd.weight'].T
np.save(sys.argv[3], logits)
print('argmax per position', logits.argmax(-1).tolist())
