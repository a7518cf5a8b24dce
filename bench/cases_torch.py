"""The same workloads in PyTorch (CPU, eager, float32): the yardstick for minattn's times.

Imported only when PyTorch is importable and --no-torch is not given; nothing in minattn needs it.
Each builder returns ``run()`` (one forward + backward, or one training step), gradients reset to None each call.
"""
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as TF



def _leaf(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).requires_grad_()


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def matmul_run(size):
    """torch.matmul on (size, size) float32 matrices: what PyTorch's own BLAS reaches."""
    gen = torch.Generator().manual_seed(0)
    a, b = _randn(gen, size, size), _randn(gen, size, size)
    return lambda: torch.matmul(a, b)


def sdpa(batch, length, embed_dim, heads, impl="explicit", seed=0):
    """q, k, v (B, h, L, d) leaves. impl 'explicit': softmax((q · scale) kᵀ) v written out (matmul, softmax,
    matmul — the algorithm minattn implements); 'sdpa': torch.nn.functional.scaled_dot_product_attention."""
    gen = torch.Generator().manual_seed(seed)
    head_dim = embed_dim // heads
    q, k, v = (_leaf(gen, batch, heads, length, head_dim) for _ in range(3))     # (B, h, L, d)
    cotangent = _randn(gen, batch, heads, length, head_dim)                      # (B, h, L, d)
    scale = 1 / math.sqrt(head_dim)

    def explicit():
        p = torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)             # (B, h, L, L)
        return p @ v                                                             # (B, h, L, d)

    forward = explicit if impl == "explicit" else (lambda: TF.scaled_dot_product_attention(q, k, v))

    def run():
        q.grad = k.grad = v.grad = None
        forward().backward(cotangent)

    return run


def _layer_run(layer, call, batch, length, embed_dim, gen):
    x = _leaf(gen, batch, length, embed_dim)                                     # (B, L, E)
    cotangent = _randn(gen, batch, length, embed_dim)                            # (B, L, E)
    layer.train()

    def run():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        call(layer, x).backward(cotangent)

    return run


def mha(batch, length, embed_dim, heads, need_weights=True, seed=0):
    """nn.MultiheadAttention(E, h, batch_first=True) self-attention. need_weights=True takes PyTorch's explicit
    path (baddbmm, softmax, bmm; weights returned, as minattn keeps them); False takes its SDPA path."""
    torch.manual_seed(seed)
    layer = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
    call = lambda m, x: m(x, x, x, need_weights=need_weights)[0]                 # noqa: E731
    return _layer_run(layer, call, batch, length, embed_dim, torch.Generator().manual_seed(seed))


class TalkingHeadAttn(nn.Module):
    """timm's CaiT ``TalkingHeadAttn`` (timm/models/cait.py), without dropout, with biases in qkv and proj to
    match minattn's TalkingHeadsAttention(E, h, bias=True, proj_bias=True)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_l = nn.Linear(num_heads, num_heads)
        self.proj_w = nn.Linear(num_heads, num_heads)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]                           # (B, h, N, d)
        attn = q @ k.transpose(-2, -1)                                           # (B, h, N, N)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)        # mix heads before the softmax
        attn = attn.softmax(dim=-1)
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)        # mix heads after it
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)                          # (B, N, C)
        return self.proj(x)


def talking_heads(batch, length, embed_dim, heads, seed=0):
    """timm-style talking heads (square, with biases)."""
    torch.manual_seed(seed)
    return _layer_run(TalkingHeadAttn(embed_dim, heads), lambda m, x: m(x), batch, length, embed_dim,
                      torch.Generator().manual_seed(seed))


class Seq2Seq(nn.Module):
    """minattn's Transformer in PyTorch: token embeddings + the sinusoidal table (no √d), post-norm
    nn.TransformerEncoderLayer / nn.TransformerDecoderLayer (ReLU FFN, no dropout, no final norms — minattn's
    post-norm model has none), then a Linear to the vocabulary. Padding keys are masked in encoder self-attention
    and in cross-attention; the decoder's self-attention is causal."""

    def __init__(self, vocab_size, embed_dim, num_heads, ffn_hidden, layers, max_len, positions):
        super().__init__()
        self.src_embedding = nn.Embedding(vocab_size, embed_dim)
        self.tgt_embedding = nn.Embedding(vocab_size, embed_dim)
        self.register_buffer("P", torch.as_tensor(positions[:max_len], dtype=torch.float32))   # (max_len, d)
        kw = dict(dim_feedforward=ffn_hidden, dropout=0.0, batch_first=True, norm_first=False)
        self.encoder = nn.ModuleList(nn.TransformerEncoderLayer(embed_dim, num_heads, **kw) for _ in range(layers))
        self.decoder = nn.ModuleList(nn.TransformerDecoderLayer(embed_dim, num_heads, **kw) for _ in range(layers))
        self.output = nn.Linear(embed_dim, vocab_size)

    def forward(self, src, tgt_in, src_padding):
        """src (B, S), tgt_in (B, T) ids; src_padding (B, S) bool, True = PAD → logits (B, T, V)."""
        x = self.src_embedding(src) + self.P[: src.shape[1]]                     # (B, S, d)
        for layer in self.encoder:
            x = layer(x, src_key_padding_mask=src_padding)                       # (B, S, d)
        length = tgt_in.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length)          # (T, T) float, -inf above
        y = self.tgt_embedding(tgt_in) + self.P[:length]                         # (B, T, d)
        for layer in self.decoder:
            y = layer(y, x, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=src_padding)
        return self.output(y)                                                    # (B, T, V)


def copy_step(args, batch, positions, seed=0):
    """One training step of the PyTorch model on the same batch as minattn's: forward, cross_entropy
    (ignore_index=PAD), zero_grad, backward, clip_grad_norm_, Adam(betas=(0.9, 0.98), eps=1e-9)."""
    from minattn import tasks

    torch.manual_seed(seed)
    model = Seq2Seq(args.vocab_size, args.embed_dim, args.num_heads, args.ffn_hidden, args.layers,
                    args.max_len + 1, positions).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    src = torch.as_tensor(np.asarray(batch.src))                                 # (B, S)
    tgt_in = torch.as_tensor(np.asarray(batch.tgt_in))                           # (B, T)
    tgt_out = torch.as_tensor(np.asarray(batch.tgt_out))                         # (B, T)
    padding = torch.arange(src.shape[1])[None, :] >= torch.as_tensor(np.asarray(batch.src_valid_lens))[:, None]

    def run():
        logits = model(src, tgt_in, padding)                                     # (B, T, V)
        loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=tasks.PAD)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()

    return run


def char_lm_trainer(model, beta2, lr_at):
    """(step(x, y), val_loss(batches), num_parameters) for a PyTorch model of demos.char_lm's GPT — the demo's own
    model converted by ``interop.to_torch`` (an interop.TorchGPT: pre-LN blocks of causal nn.MultiheadAttention, a
    ReLU FFN, tied output; the same weights to start from) — trained with Adam (β₂ = ``beta2``), the learning rate
    ``lr_at(t)`` at step t and clipping at 1, as demos.char_lm."""
    model.train()
    vocab_size = model.token_embedding.num_embeddings
    optimizer = torch.optim.Adam(model.parameters(), betas=(0.9, beta2))
    steps_taken = [0]

    def step(x, y):
        logits = model(torch.as_tensor(x))
        loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(y).reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        steps_taken[0] += 1
        for group in optimizer.param_groups:
            group["lr"] = lr_at(steps_taken[0])
        optimizer.step()

    def val_loss(batches):
        model.eval()
        with torch.no_grad():
            losses = [TF.cross_entropy(model(torch.as_tensor(x)).reshape(-1, vocab_size),
                                       torch.as_tensor(y).reshape(-1)).item() for x, y in batches]
        model.train()
        return float(np.mean(losses))

    return step, val_loss, sum(p.numel() for p in model.parameters())
