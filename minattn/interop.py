"""A bridge to PyTorch: ``to_torch(module)`` builds the equivalent ``torch.nn.Module``, ``from_torch(torch_module)``
the equivalent minattn module. Weights are copied, never shared; neither library's random stream is drawn from.

    from minattn import interop
    twin = interop.to_torch(model)          # minattn.GPT → interop.TorchGPT, a torch.nn.Module, in model's dtype
    logits = twin(torch.as_tensor(ids))     # the same logits (B, T, V) as model(ids), to rounding
    again = interop.from_torch(twin)        # → a new minattn.GPT with the twin's weights

PyTorch is optional for minattn: this is the only module that imports it, and ``import minattn`` does not import this
module (``from minattn import interop`` does, and raises ImportError naming PyTorch when it is not installed).

What converts (both ways) and how the parameters are named; E = embed_dim, E_kv = the key/value width:

    minattn                               torch
    Linear(in, out, bias)                 nn.Linear(in, out, bias)
      weight (out, in), bias (out,)         weight, bias
    LayerNorm(d, eps)                     nn.LayerNorm(d, eps)     (from torch: elementwise_affine=False or
      weight (d,), bias (d,)                weight, bias             bias=False give γ = 1, β = 0 here)
    Embedding(V, D)                       nn.Embedding(V, D)       (from torch: no padding_idx, max_norm,
      weight (V, D)                         weight                   scale_grad_by_freq — they change the math)
    MultiHeadAttention(E, h, dropout,     nn.MultiheadAttention(E, h, dropout, bias, kdim, vdim, batch_first=True)
        bias, kdim, vdim)
      W_q.weight (E, E)                     in_proj_weight[0:E]       or q_proj_weight when kdim or vdim != E
      W_k.weight (E, kdim)                  in_proj_weight[E:2E]      or k_proj_weight
      W_v.weight (E, vdim)                  in_proj_weight[2E:3E]     or v_proj_weight
      W_q.bias, W_k.bias, W_v.bias          in_proj_bias[0:E], in_proj_bias[E:2E], in_proj_bias[2E:3E]
      W_o.weight, W_o.bias                  out_proj.weight, out_proj.bias
    Transformer (minattn/transformer.py)  TorchTransformer (below): the same attribute names throughout
                                          (encoder_blocks.0.residual1.norm.weight, …); each MultiHeadAttention is an
                                          nn.MultiheadAttention, its names mapped as above
    GPT (minattn/gpt.py)                  TorchGPT (below): likewise; with rope, alibi, a window or num_kv_heads the
                                          blocks' attention is TorchAttention (below), whose names are minattn's
                                          (W_q.weight → W_q.weight …)

``parameter_map(module)`` lists the pairs for any supported minattn module, e.g. to compare gradients.

Refused, with a ValueError naming the option, because nn.MultiheadAttention has no such thing: rope, alibi, window,
num_kv_heads != num_heads (grouped-query attention), qk_norm, share_qk, and, in a Transformer, talking-heads attention.
(TorchGPT alone mirrors rope, alibi, window and num_kv_heads, with TorchAttention.) From torch: add_bias_kv and
add_zero_attn of nn.MultiheadAttention, and any module type not listed above (TypeError).

Masks: minattn's boolean masks mean True = TAKE PART (as F.scaled_dot_product_attention), nn.MultiheadAttention's mean
True = MASKED (attn_mask and key_padding_mask alike): invert with ``~``. ``key_padding_mask(valid_lens, S)`` turns
minattn's valid_lens (B,) into nn.MultiheadAttention's key_padding_mask (B, S). A query whose keys are all masked
gets 0 from minattn's attention; nn.MultiheadAttention gives 0 on its scaled_dot_product_attention path
(need_weights=False, while recording gradients) but NaN with need_weights=True and on its inference fast path.

Dropout sits in the same places in both, but the two libraries draw different masks: outputs agree in eval mode (or
with dropout 0), not in training with dropout.

Source: PyTorch docs, torch.nn.MultiheadAttention (in_proj_weight "(3 * embed_dim, embed_dim)", the q, k, v
projections stacked in that order; q/k/v_proj_weight when kdim or vdim differ from embed_dim; the masks' True =
"not allowed to attend"); torch.nn.functional.scaled_dot_product_attention (enable_gqa repeats each key/value head
for h / h_kv consecutive query heads).
"""
import contextlib

try:
    import torch
    from torch import nn
    from torch.nn import functional as TF
except ImportError as err:   # pragma: no cover - exercised only where PyTorch is absent
    raise ImportError("minattn.interop needs PyTorch (pip install torch); the rest of minattn does not") from err

from autograd import backend
from autograd.backend import host as np
from autograd.tensor import Tensor
from minattn.attention import MultiHeadAttention
from minattn.gpt import GPT, POSITIONS
from minattn.layers import Embedding, LayerNorm, Linear, sinusoidal_positions
from minattn.masks import alibi_slopes
from minattn.talking_heads import TalkingHeadsAttention
from minattn.transformer import Transformer

__all__ = ["to_torch", "from_torch", "parameter_map", "key_padding_mask", "TorchTransformer", "TorchGPT",
           "TorchAttention"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --- the twins: minattn's structure, layer for layer, in torch --------------------------------------------------------
class TorchPositionalEncoding(nn.Module):
    """minattn's PositionalEncoding: x + P[offset : offset + L], then dropout; P minattn's own sinusoidal table
    (``layers.sinusoidal_positions``, computed in float64 and stored in the twin's dtype — float32 by default — as a
    non-persistent buffer: not in state_dict, as minattn's table is no parameter). Shapes: x (B, L, d) → (B, L, d).
    ValueError if offset + L > max_len. Source: Vaswani et al. 2017, §3.5."""

    def __init__(self, embed_dim, dropout=0.0, max_len=1000, dtype=None):
        super().__init__()
        self.embed_dim, self.max_len = embed_dim, max_len
        table = torch.as_tensor(backend.to_numpy(sinusoidal_positions(max_len, embed_dim)))   # (max_len, d) float64
        self.register_buffer("P", table.to(dtype or torch.float32), persistent=False)          # (max_len, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, offset=0):
        """x (B, L, d) → x + P[offset : offset + L], then dropout."""
        if x.ndim != 3 or x.shape[-1] != self.embed_dim or offset + x.shape[1] > self.max_len:
            raise ValueError(f"PositionalEncoding expects (batch, L <= {self.max_len - offset}, {self.embed_dim}); "
                             f"got {tuple(x.shape)}")
        return self.dropout(x + self.P[offset: offset + x.shape[1]].to(x.dtype))


class TorchPositionWiseFFN(nn.Module):
    """minattn's PositionWiseFFN: dense2(dropout(relu(dense1(x)))). Shapes: (..., d) → (..., d)."""

    def __init__(self, embed_dim, ffn_hidden, dropout=0.0, dtype=None):
        super().__init__()
        self.dense1 = nn.Linear(embed_dim, ffn_hidden, dtype=dtype)
        self.dense2 = nn.Linear(ffn_hidden, embed_dim, dtype=dtype)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        """x (..., d) → (..., d)."""
        return self.dense2(self.dropout(torch.relu(self.dense1(x))))


class TorchResidual(nn.Module):
    """minattn's Residual: LayerNorm(x + Dropout(sublayer(x))) (post-norm), or x + Dropout(sublayer(LayerNorm(x)))
    with ``norm_first``. Shapes: x (B, L, d) → (B, L, d)."""

    def __init__(self, embed_dim, dropout, norm_first, dtype=None):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, dtype=dtype)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x, sublayer):
        """x (B, L, d), sublayer: a callable (B, L, d) → (B, L, d)."""
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


def _mha(embed_dim, num_heads, dropout, dtype):
    return nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True, dtype=dtype)


def _causal(length, device):
    """nn.MultiheadAttention's causal mask: bool (L, L), True above the diagonal = MASKED."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class TorchEncoderBlock(nn.Module):
    """minattn's EncoderBlock: self-attention (keys past valid_lens masked), then the FFN, each in a TorchResidual."""

    def __init__(self, embed_dim, num_heads, ffn_hidden, dropout=0.0, norm_first=False, dtype=None):
        super().__init__()
        self.attention = _mha(embed_dim, num_heads, dropout, dtype)
        self.residual1 = TorchResidual(embed_dim, dropout, norm_first, dtype)
        self.ffn = TorchPositionWiseFFN(embed_dim, ffn_hidden, dropout, dtype)
        self.residual2 = TorchResidual(embed_dim, dropout, norm_first, dtype)

    def forward(self, x, valid_lens=None):
        """x (B, S, d), valid_lens None or (B,) → (B, S, d)."""
        padding = key_padding_mask(valid_lens, x.shape[1], x.device)                     # (B, S) True = PAD
        x = self.residual1(x, lambda h: self.attention(h, h, h, key_padding_mask=padding, need_weights=False)[0])
        return self.residual2(x, self.ffn)                                               # (B, S, d)


class TorchDecoderBlock(nn.Module):
    """minattn's DecoderBlock: causal self-attention, cross-attention to the memory (keys past the source's valid
    lengths masked), then the FFN, each in a TorchResidual."""

    def __init__(self, embed_dim, num_heads, ffn_hidden, dropout=0.0, norm_first=False, dtype=None):
        super().__init__()
        self.self_attention = _mha(embed_dim, num_heads, dropout, dtype)
        self.residual1 = TorchResidual(embed_dim, dropout, norm_first, dtype)
        self.cross_attention = _mha(embed_dim, num_heads, dropout, dtype)
        self.residual2 = TorchResidual(embed_dim, dropout, norm_first, dtype)
        self.ffn = TorchPositionWiseFFN(embed_dim, ffn_hidden, dropout, dtype)
        self.residual3 = TorchResidual(embed_dim, dropout, norm_first, dtype)

    def forward(self, x, memory, memory_valid_lens=None):
        """x (B, T, d), memory (B, S, d), memory_valid_lens None or (B,) → (B, T, d)."""
        causal = _causal(x.shape[1], x.device)                                           # (T, T) True = masked
        padding = key_padding_mask(memory_valid_lens, memory.shape[1], x.device)         # (B, S) True = PAD
        x = self.residual1(x, lambda h: self.self_attention(h, h, h, attn_mask=causal, need_weights=False)[0])
        x = self.residual2(x, lambda h: self.cross_attention(h, memory, memory, key_padding_mask=padding,
                                                             need_weights=False)[0])       # (B, T, d)
        return self.residual3(x, self.ffn)                                               # (B, T, d)


class TorchTransformer(nn.Module):
    """minattn's encoder–decoder Transformer (minattn/transformer.py) in PyTorch, layer for layer, with the same
    attribute names: token embeddings (not scaled by √d) + the sinusoidal table, post-norm (or ``norm_first``)
    blocks of nn.MultiheadAttention and a ReLU FFN, with ``norm_first`` an encoder_norm and a final_norm, then the
    output Linear. Dropout in attention weights, residual branches, FFN and positions, as minattn places it.

    Args: as ``minattn.Transformer`` (multi-head attention only); dtype a torch dtype (float32 by default).
    Shapes: src (B, S), tgt_in (B, T) integer tensors, src_valid_lens None or (B,) integers (a tensor or array;
    keys at index >= valid_len are padding) → logits (B, T, tgt_vocab_size).
    Built directly, it is initialised as PyTorch initialises each layer; ``to_torch`` copies a minattn model in.
    """

    def __init__(self, src_vocab_size, tgt_vocab_size, embed_dim=64, num_heads=4, ffn_hidden=128,
                 num_encoder_layers=2, num_decoder_layers=2, dropout=0.0, max_len=256, norm_first=False, dtype=None):
        super().__init__()
        self.config = dict(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, embed_dim=embed_dim,
                           num_heads=num_heads, ffn_hidden=ffn_hidden, num_encoder_layers=num_encoder_layers,
                           num_decoder_layers=num_decoder_layers, dropout=dropout, max_len=max_len,
                           norm_first=norm_first)
        self.src_embedding = nn.Embedding(src_vocab_size, embed_dim, dtype=dtype)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, embed_dim, dtype=dtype)
        self.positions = TorchPositionalEncoding(embed_dim, dropout, max_len, dtype=dtype)
        args = (embed_dim, num_heads, ffn_hidden, dropout, norm_first, dtype)
        self.encoder_blocks = nn.ModuleList(TorchEncoderBlock(*args) for _ in range(num_encoder_layers))
        self.decoder_blocks = nn.ModuleList(TorchDecoderBlock(*args) for _ in range(num_decoder_layers))
        self.encoder_norm = nn.LayerNorm(embed_dim, dtype=dtype) if norm_first else None
        self.final_norm = nn.LayerNorm(embed_dim, dtype=dtype) if norm_first else None
        self.output = nn.Linear(embed_dim, tgt_vocab_size, dtype=dtype)

    def encode(self, src, src_valid_lens=None):
        """src (B, S) ids → memory (B, S, d)."""
        x = self.positions(self.src_embedding(_as_torch(src)))                    # (B, S, d)
        for block in self.encoder_blocks:
            x = block(x, src_valid_lens)                                          # (B, S, d)
        return self.encoder_norm(x) if self.encoder_norm is not None else x

    def decode(self, tgt_in, memory, src_valid_lens=None):
        """tgt_in (B, T) ids, memory (B, S, d) → logits (B, T, V)."""
        y = self.positions(self.tgt_embedding(_as_torch(tgt_in)))                 # (B, T, d)
        for block in self.decoder_blocks:
            y = block(y, memory, src_valid_lens)                                  # (B, T, d)
        if self.final_norm is not None:
            y = self.final_norm(y)
        return self.output(y)                                                     # (B, T, V)

    def forward(self, src, tgt_in, src_valid_lens=None):
        """Teacher forcing: src (B, S), tgt_in (B, T) ids, src_valid_lens None or (B,) → logits (B, T, V)."""
        return self.decode(tgt_in, self.encode(src, src_valid_lens), src_valid_lens)

    @torch.no_grad()
    def greedy_decode(self, src, src_valid_lens, bos_id, eos_id, max_len, pad_id=0):
        """minattn's ``Transformer.greedy_decode`` in torch: up to ``max_len`` tokens per sequence, each the argmax
        given the ones before (the decoder re-run on the whole prefix each step, no cache); after a sequence's EOS
        only ``pad_id``. Returns an int64 tensor (B, max_len) (padded with pad_id if every sequence ended early).
        Runs in eval mode, without recording gradients, and restores the mode. ValueError if max_len exceeds the
        positional table."""
        if not 1 <= max_len <= self.positions.max_len:
            raise ValueError(f"max_len must be in [1, {self.positions.max_len}] (the positional table); got {max_len}")
        was_training = self.training
        self.eval()
        try:
            memory = self.encode(src, src_valid_lens)                                         # (B, S, d)
            batch = memory.shape[0]
            ys = torch.full((batch, 1), bos_id, dtype=torch.int64, device=memory.device)      # (B, 1)
            done = torch.zeros(batch, dtype=torch.bool, device=memory.device)                 # (B,)
            for _ in range(max_len):
                nxt = self.decode(ys, memory, src_valid_lens)[:, -1].argmax(dim=-1)           # (B,)
                nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)                    # (B,)
                ys = torch.cat([ys, nxt[:, None]], dim=1)                                     # (B, t + 1)
                done |= nxt == eos_id
                if bool(done.all()):
                    break
        finally:
            self.train(was_training)
        out = ys[:, 1:]
        return torch.cat([out, out.new_full((batch, max_len - out.shape[1]), pad_id)], dim=1)   # (B, max_len)


def _rotate_half(x, base):
    """RoPE, rotate_half layout (GPT-NeoX, Hugging Face): channel i paired with i + d/2, the pair at position m turned
    by m · base^(−2i/d). x (B, h, L, d) → (B, h, L, d). Source: Su et al. 2021, eq. 34."""
    length, dim = x.shape[-2], x.shape[-1]
    theta = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)                  # (d/2,)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * theta                    # (L, d/2)
    cos, sin = torch.cos(angles).to(x.dtype), torch.sin(angles).to(x.dtype)                # (L, d/2) each
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]                                         # (B, h, L, d/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)                   # (B, h, L, d)


class TorchAttention(nn.Module):
    """minattn's MultiHeadAttention with the options nn.MultiheadAttention lacks, used by TorchGPT's blocks: grouped
    key/value heads (``num_kv_heads``), rotary positions (``rope``, rotate_half layout, ``rope_base``), ALiBi
    biases (``alibi``) and a sliding causal window (``window``). Parameters W_q, W_k, W_v, W_o (nn.Linear), named as
    minattn's. Attention itself is torch's F.scaled_dot_product_attention (enable_gqa for num_kv_heads < h).

    Shapes: query (B, L, E), key and value (B, S, E) → (B, L, E); W_k, W_v: E → h_kv · d_h.
    ValueError if embed_dim % num_heads, num_heads % num_kv_heads, or a window without is_causal.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, num_kv_heads=None, rope=False,
                 rope_base=10000.0, alibi=False, window=None, dtype=None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if embed_dim % num_heads or num_heads % num_kv_heads:
            raise ValueError(f"embed_dim={embed_dim}, num_heads={num_heads}, num_kv_heads={num_kv_heads}: each must "
                             "divide the one before")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim, self.dropout = embed_dim // num_heads, dropout
        self.rope, self.rope_base, self.alibi, self.window = rope, rope_base, alibi, window
        kv_dim = num_kv_heads * self.head_dim
        self.W_q = nn.Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        self.W_k = nn.Linear(embed_dim, kv_dim, bias=bias, dtype=dtype)
        self.W_v = nn.Linear(embed_dim, kv_dim, bias=bias, dtype=dtype)
        self.W_o = nn.Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)

    def forward(self, query, key, value, is_causal=False):
        """query (B, L, E), key, value (B, S, E) → (B, L, E); ``is_causal``: query i sees keys 0..i (and, with a
        window w, keys i − w + 1..i only)."""
        if self.window is not None and not is_causal:
            raise ValueError(f"this layer has a sliding window ({self.window}), which is causal: pass is_causal=True")
        batch, length, num_keys = query.shape[0], query.shape[1], key.shape[1]
        q = self.W_q(query).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)   # (B, h, L, d_h)
        k = self.W_k(key).view(batch, num_keys, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, h_kv, S, d_h)
        v = self.W_v(value).view(batch, num_keys, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, h_kv, S, d_h)
        if self.rope:
            q = _rotate_half(q, self.rope_base)                                                  # (B, h, L, d_h)
            k = _rotate_half(k, self.rope_base)                                               # (B, h_kv, S, d_h)
        distance = (torch.arange(length, device=q.device)[:, None]
                    - torch.arange(num_keys, device=q.device)[None, :])                          # (L, S)  i − j
        allowed = None                                                                           # True = take part
        if is_causal:
            allowed = distance >= 0 if self.window is None else (distance >= 0) & (distance < self.window)   # (L, S)
        mask = allowed
        if self.alibi:
            slopes = torch.as_tensor(alibi_slopes(self.num_heads), dtype=q.dtype, device=q.device)          # (h,)
            mask = -slopes[:, None, None] * distance.abs().to(q.dtype)                                     # (h, L, S)
            if allowed is not None:
                mask = mask.masked_fill(~allowed, float("-inf"))                                           # (h, L, S)
        out = TF.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                              enable_gqa=self.num_kv_heads != self.num_heads)           # (B, h, L, d_h)
        return self.W_o(out.transpose(1, 2).reshape(batch, length, self.embed_dim))                    # (B, L, E)


class TorchGPTBlock(nn.Module):
    """minattn's GPTBlock: x + attention(LN(x)) (causal), then x + FFN(LN(x)). Shapes: (B, T, d) → (B, T, d)."""

    def __init__(self, embed_dim, num_heads, ffn_hidden, dropout=0.0, dtype=None, **attention_options):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, dtype=dtype)
        self.attention = TorchAttention(embed_dim, num_heads, dropout, dtype=dtype, **attention_options) \
            if attention_options else _mha(embed_dim, num_heads, dropout, dtype)
        self.norm2 = nn.LayerNorm(embed_dim, dtype=dtype)
        self.ffn = TorchPositionWiseFFN(embed_dim, ffn_hidden, dropout, dtype)

    def forward(self, x):
        """x (B, T, d) → (B, T, d)."""
        h = self.norm1(x)                                                                          # (B, T, d)
        if isinstance(self.attention, TorchAttention):
            x = x + self.attention(h, h, h, is_causal=True)                                        # (B, T, d)
        else:
            x = x + self.attention(h, h, h, attn_mask=_causal(x.shape[1], x.device), need_weights=False)[0]
        return x + self.ffn(self.norm2(x))                                                         # (B, T, d)


class TorchGPT(nn.Module):
    """minattn's GPT (minattn/gpt.py) in PyTorch, layer for layer, with the same attribute names: token embedding,
    learned (``position_embedding``) or sinusoidal (``sinusoids``) positions, pre-LN TorchGPTBlocks of causal
    attention and a ReLU FFN (no dropout on the residual branches, as minattn), final_norm, then the logits: x Eᵀ
    with ``tie_weights`` (no output parameter), else ``output`` (nn.Linear, no bias).

    The blocks' attention is nn.MultiheadAttention for learned and sinusoidal positions without ``num_kv_heads``
    or ``window``; otherwise TorchAttention (rope, alibi, grouped key/value heads, a sliding window).
    Args: as ``minattn.GPT``; dtype a torch dtype (float32 by default).
    Shapes: ids (B, T) integer tensor (T <= max_len with learned or sinusoidal positions) → logits (B, T, V).
    ValueError for an unknown ``positions``, or a sequence longer than the position table.
    """

    def __init__(self, vocab_size, max_len, embed_dim=64, num_heads=4, num_layers=2, ffn_hidden=None, dropout=0.0,
                 positions="learned", num_kv_heads=None, window=None, tie_weights=True, dtype=None):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(map(repr, POSITIONS))}; got {positions!r}")
        num_kv_heads = None if num_kv_heads == num_heads else num_kv_heads
        self.config = dict(vocab_size=vocab_size, max_len=max_len, embed_dim=embed_dim, num_heads=num_heads,
                           num_layers=num_layers, ffn_hidden=ffn_hidden or 4 * embed_dim, dropout=dropout,
                           positions=positions, num_kv_heads=num_kv_heads, window=window, tie_weights=tie_weights)
        self.vocab_size, self.max_len, self.positions = vocab_size, max_len, positions
        self.token_embedding = nn.Embedding(vocab_size, embed_dim, dtype=dtype)
        self.position_embedding = nn.Embedding(max_len, embed_dim, dtype=dtype) if positions == "learned" else None
        self.sinusoids = TorchPositionalEncoding(embed_dim, 0.0, max_len, dtype=dtype) if positions == "sinusoidal" \
            else None
        options = {}
        if positions in ("rope", "alibi") or num_kv_heads is not None or window is not None:
            options = dict(num_kv_heads=num_kv_heads, window=window, rope=positions == "rope",
                           alibi=positions == "alibi")
        self.blocks = nn.ModuleList(TorchGPTBlock(embed_dim, num_heads, ffn_hidden or 4 * embed_dim, dropout, dtype,
                                                  **options) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(embed_dim, dtype=dtype)
        self.output = None if tie_weights else nn.Linear(embed_dim, vocab_size, bias=False, dtype=dtype)

    def forward(self, ids):
        """ids (B, T) integers → logits (B, T, vocab_size)."""
        ids = _as_torch(ids)
        x = self.token_embedding(ids)                                                    # (B, T, d)
        if self.position_embedding is not None:
            if ids.shape[1] > self.max_len:
                raise ValueError(f"learned positions cover {self.max_len} tokens; got {ids.shape[1]}")
            x = x + self.position_embedding(torch.arange(ids.shape[1], device=ids.device))   # (B, T, d)
        if self.sinusoids is not None:
            x = self.sinusoids(x)                                                        # (B, T, d)
        for block in self.blocks:
            x = block(x)                                                                 # (B, T, d)
        x = self.final_norm(x)                                                           # (B, T, d)
        if self.output is None:
            return TF.linear(x, self.token_embedding.weight)                             # (B, T, V)  x Eᵀ: tied
        return self.output(x)                                                            # (B, T, V)


# --- helpers ----------------------------------------------------------------------------------------------------------
def _as_torch(x):
    """A torch tensor of ``x`` (a torch tensor as it is; a minattn Tensor, NumPy/CuPy array or list copied to host)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, Tensor):
        x = x.data
    return torch.as_tensor(backend.to_numpy(x))


def key_padding_mask(valid_lens, num_keys, device=None):
    """minattn's ``valid_lens`` (B,) → nn.MultiheadAttention's ``key_padding_mask``: bool (B, S), True where key
    index >= valid_len (padding, MASKED — the opposite of minattn's True = take part). None → None.

    valid_lens: a torch tensor, minattn Tensor, NumPy array or list of integers. Raises ValueError for another
    shape than (B,) (valid_lens (B, L), one per query, has no key_padding_mask: build an attn_mask (B·h, L, S)),
    TypeError for non-integers.
    """
    if valid_lens is None:
        return None
    lens = _as_torch(valid_lens).to(device)
    if lens.dtype.is_floating_point or lens.dtype == torch.bool or lens.dtype.is_complex:
        raise TypeError(f"valid_lens must be integers, got dtype {lens.dtype}")
    if lens.ndim != 1:
        raise ValueError(f"valid_lens must be (batch,) for a key_padding_mask; got shape {tuple(lens.shape)}")
    return torch.arange(num_keys, device=lens.device)[None, :] >= lens[:, None]    # (B, S)


def _minattn_dtype(module):
    """'float64' if every parameter of the minattn module is float64, else 'float32'."""
    dtypes = {str(p.dtype) for p in module.parameters()}
    return "float64" if dtypes == {"float64"} else "float32"


def _torch_dtype(name):
    """A torch float dtype from 'float32' / 'float64' / torch.float32 / torch.float64."""
    if name in (torch.float32, torch.float64):
        return name
    if str(name) in _DTYPES:
        return _DTYPES[str(name)]
    raise ValueError(f"dtype must be float32 or float64; got {name!r}")


@contextlib.contextmanager
def _minattn_rng_kept():
    """Build minattn modules without moving manual_seed's stream (their random init is overwritten at once)."""
    state = backend.host_rng().bit_generator.state
    try:
        yield
    finally:
        backend.host_rng().bit_generator.state = state


def _mha_refusals(mha):
    """The options of a minattn MultiHeadAttention that nn.MultiheadAttention cannot express (names and values)."""
    out = []
    if mha.rope:
        out.append("rope=True")
    if mha.alibi:
        out.append("alibi=True")
    if mha.window is not None:
        out.append(f"window={mha.window}")
    if mha.num_kv_heads != mha.num_heads:
        out.append(f"num_kv_heads={mha.num_kv_heads} != num_heads={mha.num_heads}")
    if mha.q_norm is not None:
        out.append("qk_norm=True")
    if mha.W_k is None:
        out.append("share_qk=True")
    return out


def _is_plain(mha):
    return not _mha_refusals(mha)


def _check_plain(mha, where):
    refused = _mha_refusals(mha)
    if refused:
        raise ValueError(f"to_torch: {where} has {', '.join(refused)}, which nn.MultiheadAttention cannot express")


def parameter_map(module):
    """How a supported minattn module's parameters are named in its torch twin: a list of
    ``(minattn_name, torch_name, rows)``, one per minattn parameter, in ``named_parameters`` order. ``rows`` is None
    (the whole torch parameter) or (start, stop): the rows of a packed torch parameter (nn.MultiheadAttention's
    in_proj_weight / in_proj_bias). For example, MultiHeadAttention(8, 2):
        ("W_q.weight", "in_proj_weight", (0, 8)), ("W_q.bias", "in_proj_bias", (0, 8)), ("W_k.weight",
        "in_proj_weight", (8, 16)), …, ("W_o.weight", "out_proj.weight", None), ("W_o.bias", "out_proj.bias", None).
    The table is in the module docstring. Inside a TorchGPT's TorchAttention the names are minattn's.
    """
    attention = {name: m for name, m in module.named_modules() if isinstance(m, MultiHeadAttention)}
    out = []
    for name, _ in module.named_parameters():
        prefix, _, rest = name.rpartition(".")
        owner, _, layer = prefix.rpartition(".")
        mha = attention.get(owner) if layer in ("W_q", "W_k", "W_v", "W_o") else None
        if mha is None or not _is_plain(mha):
            out.append((name, name, None))
            continue
        head = owner + "." if owner else ""
        if layer == "W_o":
            out.append((name, f"{head}out_proj.{rest}", None))
            continue
        index = "qkv".index(layer[-1])
        span = (index * mha.embed_dim, (index + 1) * mha.embed_dim)
        packed = mha.kdim == mha.embed_dim and mha.vdim == mha.embed_dim
        if rest == "bias":
            out.append((name, head + "in_proj_bias", span))
        elif packed:
            out.append((name, head + "in_proj_weight", span))
        else:
            out.append((name, f"{head}{layer[-1]}_proj_weight", None))
    return out


def _copy_in(module, twin):
    """Copy every minattn parameter into the twin (cast to the twin's dtype); check every twin parameter is set."""
    params, own = dict(twin.named_parameters()), dict(module.named_parameters())
    filled = set()
    with torch.no_grad():
        for name, torch_name, rows in parameter_map(module):
            target = params[torch_name] if rows is None else params[torch_name][rows[0]:rows[1]]
            target.copy_(torch.as_tensor(backend.to_numpy(own[name].data)))   # copy_ casts to the twin's dtype
            filled.add(torch_name)
    missing = sorted(set(params) - filled)
    if missing:   # a twin that grew parameters minattn lacks: a bug here, not the caller's
        raise RuntimeError(f"to_torch: the torch twin's parameters {missing} have no minattn counterpart")
    for name, m in module.named_modules():   # LayerNorm's eps is a setting, not a parameter
        if isinstance(m, LayerNorm):
            twin.get_submodule(name).eps = m.eps
        if isinstance(m, MultiHeadAttention) and m.rope:
            twin.get_submodule(name).rope_base = m.rope_base
    return twin


def _copy_out(twin, module):
    """Copy the twin's weights into the minattn skeleton ``module`` (checked by ``load_state_dict``)."""
    params = dict(twin.named_parameters())
    used = set()
    own = dict(module.named_parameters())
    state = {}
    for name, torch_name, rows in parameter_map(module):
        if torch_name not in params:
            raise ValueError(f"from_torch: the torch module has no parameter {torch_name!r} (for minattn's {name!r})")
        value = params[torch_name].detach()
        value = value if rows is None else value[rows[0]:rows[1]]
        state[name] = backend.asarray(value.to("cpu", _DTYPES[str(own[name].dtype)]).numpy())
        used.add(torch_name)
    extra = sorted(set(params) - used)
    if extra:
        raise ValueError(f"from_torch: the torch module's parameters {extra} have no minattn counterpart")
    module.load_state_dict(state)
    for name, m in module.named_modules():
        if isinstance(m, LayerNorm):
            m.eps = twin.get_submodule(name).eps
        if isinstance(m, MultiHeadAttention) and m.rope:
            m.rope_base = twin.get_submodule(name).rope_base
    return module


# --- minattn → torch --------------------------------------------------------------------------------------------------
def to_torch(module, dtype=None):
    """An equivalent ``torch.nn.Module`` for a minattn module, with its weights copied (not shared).

    Args:
        module: a minattn Linear, LayerNorm, Embedding, MultiHeadAttention, Transformer or GPT.
        dtype: 'float32' / 'float64' (or torch.float32 / torch.float64); default: float64 if the module is float64,
            else float32.
    Returns (on the CPU, in the module's train/eval mode):
        Linear → nn.Linear; LayerNorm → nn.LayerNorm (same eps); Embedding → nn.Embedding;
        MultiHeadAttention → nn.MultiheadAttention(E, h, dropout, bias, kdim, vdim, batch_first=True): call it as
            ``twin(query, key, value, key_padding_mask=..., attn_mask=..., need_weights=False)[0]``, masks with
            True = MASKED (``key_padding_mask(valid_lens, S)``; a causal mask is ``~minattn_mask``);
        Transformer → TorchTransformer; GPT → TorchGPT (same call signatures, torch tensors in and out).
    The parameter names are mapped as the module docstring's table says (``parameter_map``).
    Torch's random stream is left as it was (the twin's own initialisation runs on a forked stream).
    Raises:
        TypeError for another kind of module (naming it and the supported ones);
        ValueError, naming the option and the layer, for what nn.MultiheadAttention cannot express: rope, alibi,
        window, num_kv_heads != num_heads, qk_norm, share_qk (TorchGPT mirrors the first four); talking-heads
        attention in a Transformer; a dtype other than float32 / float64.
    """
    torch_dtype = _torch_dtype(dtype if dtype is not None else _minattn_dtype(module))
    with torch.random.fork_rng(devices=[]):
        twin = _build_twin(module, torch_dtype)
    _copy_in(module, twin)
    return twin.train(module.training)


def _build_twin(module, dtype):
    kind = type(module)
    if kind is Linear:
        return nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, dtype=dtype)
    if kind is LayerNorm:
        if module.weight.ndim != 1:   # minattn normalises the last axis only; nn.LayerNorm would normalise them all
            raise ValueError(f"to_torch: LayerNorm with normalized_shape={module.normalized_shape} (weight "
                             f"{module.weight.shape}) has no nn.LayerNorm equivalent; give it one axis")
        return nn.LayerNorm(module.weight.shape[0], eps=module.eps, dtype=dtype)
    if kind is Embedding:
        return nn.Embedding(module.num_embeddings, module.embedding_dim, dtype=dtype)
    if kind is MultiHeadAttention:
        _check_plain(module, "MultiHeadAttention")
        return nn.MultiheadAttention(module.embed_dim, module.num_heads, dropout=module.dropout,
                                     bias=module.W_q.bias is not None, kdim=module.kdim, vdim=module.vdim,
                                     batch_first=True, dtype=dtype)
    if kind is Transformer:
        return _transformer_twin(module, dtype)
    if kind is GPT:
        return _gpt_twin(module, dtype)
    raise TypeError(f"to_torch: module must be a minattn Linear, LayerNorm, Embedding, MultiHeadAttention, "
                    f"Transformer or GPT; got {kind.__name__}")


def _transformer_twin(model, dtype):
    for name, m in model.named_modules():
        if isinstance(m, TalkingHeadsAttention):
            raise ValueError(f"to_torch: Transformer.{name} is talking-heads attention (attention='talking-heads'), "
                             "which nn.MultiheadAttention cannot express")
        if isinstance(m, MultiHeadAttention):
            _check_plain(m, f"Transformer.{name}")
            if m.W_q.bias is None:
                raise ValueError(f"to_torch: Transformer.{name} has bias=False; TorchTransformer's attention layers "
                                 "have biases")
    blocks = list(model.encoder_blocks) + list(model.decoder_blocks)
    attention = (getattr(blocks[0], "attention", None) or blocks[0].self_attention) if blocks else None
    num_heads = attention.num_heads if attention is not None else 1
    ffn_hidden = blocks[0].ffn.dense1.out_features if blocks else 1
    return TorchTransformer(model.src_embedding.num_embeddings, model.tgt_embedding.num_embeddings, model.embed_dim,
                            num_heads, ffn_hidden, len(model.encoder_blocks), len(model.decoder_blocks),
                            model.positions.dropout.p, model.positions.max_len, model.encoder_norm is not None,
                            dtype=dtype)


def _gpt_twin(model, dtype):
    attention = model.blocks[0].attention if len(model.blocks) else None
    for i, block in enumerate(model.blocks):
        refused = [r for r in _mha_refusals(block.attention) if r in ("qk_norm=True", "share_qk=True")]
        if refused:
            raise ValueError(f"to_torch: GPT.blocks.{i}.attention has {', '.join(refused)}, which TorchGPT does "
                             "not mirror")
    num_heads = attention.num_heads if attention is not None else 1
    num_kv_heads = attention.num_kv_heads if attention is not None else None
    ffn_hidden = model.blocks[0].ffn.dense1.out_features if len(model.blocks) else None
    dropout = attention.dropout if attention is not None else 0.0
    return TorchGPT(model.vocab_size, model.max_len, model.embed_dim, num_heads, len(model.blocks), ffn_hidden,
                    dropout, model.positions, num_kv_heads, attention.window if attention is not None else None,
                    tie_weights=model.output is None, dtype=dtype)


# --- torch → minattn --------------------------------------------------------------------------------------------------
_FROM = ("nn.Linear, nn.LayerNorm, nn.Embedding, nn.MultiheadAttention, minattn.interop.TorchTransformer or "
         "minattn.interop.TorchGPT")


def from_torch(torch_module, dtype=None):
    """A new minattn module equivalent to ``torch_module``, with its weights copied (not shared).

    Args:
        torch_module: nn.Linear → Linear; nn.LayerNorm (one normalised axis) → LayerNorm (same eps; without
            elementwise_affine or bias: γ = 1, β = 0); nn.Embedding (no padding_idx, max_norm,
            scale_grad_by_freq) → Embedding; nn.MultiheadAttention (batch_first or not, bias or not, kdim / vdim)
            → MultiHeadAttention, which always takes batch-first (B, L, E) inputs; TorchTransformer → Transformer;
            TorchGPT → GPT. Exactly these classes: a subclass may compute something else, so it is refused.
        dtype: 'float32' / 'float64' of the result; default: the torch module's (which must then be one of them;
            float32 for a module without parameters, e.g. nn.LayerNorm(elementwise_affine=False)).
    Returns the minattn module, in the torch module's train/eval mode. minattn's random stream (manual_seed) is
    left as it was.
    Parameter names are mapped as the module docstring's table says (``parameter_map``).
    Raises:
        TypeError naming ``torch_module`` and the supported classes for another class or a non-module, and naming
        ``dtype`` for parameters that are not float32 / float64 when no dtype is given;
        ValueError naming the option for what minattn cannot express: nn.MultiheadAttention's add_bias_kv or
        add_zero_attn, nn.Embedding's padding_idx, max_norm or scale_grad_by_freq, a multi-axis nn.LayerNorm.
    """
    if not isinstance(torch_module, nn.Module):
        raise TypeError(f"from_torch: torch_module must be a torch.nn.Module ({_FROM}); got "
                        f"{type(torch_module).__name__}")
    if dtype is None:
        dtypes = {p.dtype for p in torch_module.parameters()}
        if not dtypes <= set(_DTYPES.values()):
            raise TypeError(f"from_torch: torch_module has parameters of dtype {sorted(map(str, dtypes))}; pass "
                            "dtype='float32' or 'float64' to convert them")
        dtype = "float64" if dtypes == {torch.float64} else "float32"
    name = {torch.float32: "float32", torch.float64: "float64"}[_torch_dtype(dtype)]
    with _minattn_rng_kept():
        module = _build_minattn(torch_module, name)
    if type(torch_module) is nn.LayerNorm:
        _copy_layer_norm(torch_module, module)
    else:
        _copy_out(torch_module, module)
    return module.train(torch_module.training)


def _build_minattn(m, dtype):
    kind = type(m)
    if kind in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dtype)
    if kind is nn.LayerNorm:
        if len(m.normalized_shape) != 1:
            raise ValueError(f"from_torch: minattn's LayerNorm normalises the last axis only; got nn.LayerNorm with "
                             f"normalized_shape={tuple(m.normalized_shape)}")
        return LayerNorm(m.normalized_shape[0], eps=m.eps, dtype=dtype)
    if kind is nn.Embedding:
        for option, value, neutral in (("padding_idx", m.padding_idx, None), ("max_norm", m.max_norm, None),
                                       ("scale_grad_by_freq", m.scale_grad_by_freq, False)):
            if value != neutral:
                raise ValueError(f"from_torch: nn.Embedding has {option}={value!r}, which minattn's Embedding "
                                 f"cannot express (expected {neutral!r})")
        return Embedding(m.num_embeddings, m.embedding_dim, dtype=dtype)
    if kind is nn.MultiheadAttention:
        for option, value in (("add_bias_kv", m.bias_k is not None), ("add_zero_attn", m.add_zero_attn)):
            if value:
                raise ValueError(f"from_torch: nn.MultiheadAttention has {option}=True, which minattn's "
                                 "MultiHeadAttention cannot express (expected False)")
        return MultiHeadAttention(m.embed_dim, m.num_heads, m.dropout, bias=m.in_proj_bias is not None,
                                  kdim=m.kdim, vdim=m.vdim, dtype=dtype)
    if kind is TorchTransformer:
        return Transformer(**m.config, dtype=dtype)
    if kind is TorchGPT:
        return GPT(**m.config, dtype=dtype)
    raise TypeError(f"from_torch: torch_module must be one of {_FROM} (exactly: a subclass may compute something "
                    f"else); got {kind.__module__}.{kind.__qualname__}")


def _copy_layer_norm(m, module):
    """nn.LayerNorm → LayerNorm: γ and β, or 1 and 0 where torch has none (elementwise_affine=False, bias=False)."""
    own = dict(module.named_parameters())
    state = {}
    for name in ("weight", "bias"):
        p = getattr(m, name)
        dtype = own[name].dtype
        value = np.ones(own[name].shape, dtype) if name == "weight" else np.zeros(own[name].shape, dtype)
        if p is not None:
            value = p.detach().to("cpu", _DTYPES[str(dtype)]).numpy()
        state[name] = backend.asarray(value)
    module.load_state_dict(state)
