"""Talking-heads attention (Shazeer et al. 2020): multi-head attention whose heads talk across the softmax."""
import math

from autograd import checks
from autograd.backend import read_only
from autograd.tensor import Tensor
from minattn import functional as F
from minattn import masks
from minattn.attention import check_qkv, transpose_output, transpose_qkv
from minattn.fused.talking_heads import TalkingHeadsFunction
from minattn.layers import Linear, parameter_dtype
from minattn.module import Module


class TalkingHeadsAttention(Module):
    """Attention with learned mixing across heads before and after the softmax, in the paper's general form.

        Q = query W_q → h_k heads,  K = key W_k → h_k heads,  V = value W_v → h_v heads   (d_k = d_v = head_dim)
        J = Q Kᵀ / √d_k (per head)  →  A = P_l J  (h_k → h heads)  →  mask  →  W = softmax(A)
        →  U = P_w W  (h → h_v heads), re-masked  →  O = U V (per value head)  →  concat  →  W_o

    Args:
        embed_dim (E): width of query and output; num_heads (h): softmax heads.
        num_heads_qk (h_k), num_heads_v (h_v): query/key heads and value heads (default h each).
        bias: learn biases for P_l and P_w (timm's CaiT has them; the paper and mesh_tensorflow don't).
        dropout: on the mixed weights U, in training (timm: attn_drop after proj_w).
        head_dim: d_k = d_v (default E / h; then E must be divisible by h).
        proj_bias: biases in W_q, W_k, W_v, W_o.
        kdim, vdim: widths of key and value inputs (default E). dtype: of the parameters (float32).
        share_qk: W_k is W_q (no W_k parameter), as in MultiHeadAttention; needs kdim = E.
    Parameters: ``W_q`` (h_k·d, E), ``W_k`` (h_k·d, kdim), ``W_v`` (h_v·d, vdim), ``W_o`` (E, h_v·d) — Linear layers;
        ``proj_l`` = P_l, a Linear(h_k, h): weight (h, h_k), the paper's P_l[h_k, h] transposed;
        ``proj_w`` = P_w, a Linear(h, h_v): weight (h_v, h). Init: PyTorch's Linear default for every one.
    Shapes: query (B, L, E), key (B, S, kdim), value (B, S, vdim) → (B, L, E). After a call, for plotting
        (detached, read-only; copies on CuPy): ``attention_weights`` W (B, h, L, S) before P_w, ``mixed_weights``
        U (B, h_v, L, S) after P_w — the weights that actually multiply the values.
    Masks: as MultiHeadAttention (valid_lens, attn_mask, is_causal), applied to the logits AFTER P_l, and again to
        U after P_w so that a masked key gets weight exactly 0 even with a bias on P_w. A mask must be the same for
        every head — (L, S), (B, 1, L, S) or valid_lens — since heads are mixed. A fully masked query row gives 0.
        Only a boolean False or a float -inf removes a key: a finite float (even -1e9) is a bias on the logits, and
        b_w can still give that key weight after P_w.
    Equivalences (tested): with h_k = h = h_v, P_l = P_w = I and no biases it is MultiHeadAttention with the same
        W_q/W_k/W_v/W_o. With bias=True and square P_l, P_w it computes timm's CaiT ``TalkingHeadAttn``:
        timm ``qkv.weight`` rows [0:E], [E:2E], [2E:3E] → ``W_q``, ``W_k``, ``W_v`` weights (``qkv.bias`` likewise;
        zeros when qkv_bias=False); ``proj`` → ``W_o``; ``proj_l`` → ``proj_l``; ``proj_w`` → ``proj_w``.
    Raises: ValueError if embed_dim % num_heads != 0 (without head_dim), a head count < 1, dropout outside [0, 1),
        inputs or masks of the wrong shape (a per-head mask included); TypeError for mismatched dtypes.
    Source: Shazeer et al. 2020, arXiv 2003.02436, Algorithm 2; timm models/cait.py.
    """

    def __init__(self, embed_dim, num_heads, num_heads_qk=None, num_heads_v=None, bias=False, dropout=0.0,
                 head_dim=None, proj_bias=True, kdim=None, vdim=None, share_qk=False, dtype=None):
        super().__init__()
        self.check_arguments(embed_dim, num_heads, num_heads_qk, num_heads_v, bias, dropout, head_dim, proj_bias,
                             kdim, vdim, share_qk, dtype)                  # before any parameter is drawn
        num_heads_qk = num_heads if num_heads_qk is None else num_heads_qk
        num_heads_v = num_heads if num_heads_v is None else num_heads_v
        head_dim = embed_dim // num_heads if head_dim is None else head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.num_heads_qk, self.num_heads_v, self.dropout = num_heads_qk, num_heads_v, float(dropout)
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.W_q = Linear(embed_dim, num_heads_qk * head_dim, bias=proj_bias, dtype=dtype)
        self.W_k = None if share_qk else Linear(self.kdim, num_heads_qk * head_dim, bias=proj_bias, dtype=dtype)
        self.W_v = Linear(self.vdim, num_heads_v * head_dim, bias=proj_bias, dtype=dtype)
        self.W_o = Linear(num_heads_v * head_dim, embed_dim, bias=proj_bias, dtype=dtype)
        self.proj_l = Linear(num_heads_qk, num_heads, bias=bias, dtype=dtype)     # P_l
        self.proj_w = Linear(num_heads, num_heads_v, bias=bias, dtype=dtype)      # P_w
        self.attention_weights = None
        self.mixed_weights = None

    @staticmethod
    def check_arguments(embed_dim, num_heads, num_heads_qk=None, num_heads_v=None, bias=False, dropout=0.0,
                        head_dim=None, proj_bias=True, kdim=None, vdim=None, share_qk=False, dtype=None):
        """Check the constructor's arguments (the same signature) without building anything: TypeError /
        ValueError naming the first bad one (``autograd.checks``); called before any parameter is drawn."""
        where = "TalkingHeadsAttention"
        embed_dim = checks.positive_int("embed_dim", embed_dim, where)
        num_heads = checks.positive_int("num_heads", num_heads, where)
        for name, count in (("num_heads_qk", num_heads_qk), ("num_heads_v", num_heads_v)):
            if count is not None:
                checks.positive_int(name, count, where)
        if head_dim is None and embed_dim % num_heads:
            checks.fail("num_heads", f"a divisor of embed_dim={embed_dim} (or pass head_dim)", num_heads, where)
        if head_dim is not None:
            checks.positive_int("head_dim", head_dim, where)
        checks.probability("dropout", dropout, where)
        for name, flag in (("bias", bias), ("proj_bias", proj_bias), ("share_qk", share_qk)):
            checks.boolean(name, flag, where)
        kdim = embed_dim if kdim is None else checks.positive_int("kdim", kdim, where)
        if vdim is not None:
            checks.positive_int("vdim", vdim, where)
        if share_qk and kdim != embed_dim:
            checks.fail("kdim", f"embed_dim={embed_dim} with share_qk (W_k is W_q)", kdim, where)
        parameter_dtype(dtype, where)

    def forward(self, query, key, value, valid_lens=None, attn_mask=None, is_causal=False):
        """query (B, L, E), key (B, S, kdim), value (B, S, vdim) → (B, L, E); masks as MultiHeadAttention.

        Everything is checked before anything changes (no dropout drawn, no weights kept)."""
        where = "TalkingHeadsAttention"
        check_qkv(query, key, value, self.embed_dim, self.kdim, self.vdim, where, self.W_q.weight.dtype)
        is_causal = checks.boolean("is_causal", is_causal, where)
        batch, num_queries, num_keys = query.shape[0], query.shape[1], key.shape[1]
        if attn_mask is not None and getattr(attn_mask, "ndim", 0) == 4 and attn_mask.shape[1] != 1:
            checks.fail("attn_mask", "(L, S) or (B, 1, L, S): talking heads mix the heads, so one mask must serve "
                        "every head", attn_mask, where)
        mask, attn_bias = masks.attention_masks(batch, 1, num_queries, num_keys, query.dtype,
                                                valid_lens, attn_mask, is_causal, where=where)   # -> (B, 1, L, S)
        q = transpose_qkv(self.W_q(query), self.num_heads_qk)              # (B, h_k, L, d)
        W_k = self.W_q if self.W_k is None else self.W_k                    # tied Q/K: the same projection
        k = transpose_qkv(W_k(key), self.num_heads_qk)                     # (B, h_k, S, d)
        v = transpose_qkv(self.W_v(value), self.num_heads_v)               # (B, h_v, S, d)
        drop = None
        if self.training and self.dropout > 0:
            drop = F.dropout_mask((batch, self.num_heads_v, num_queries, num_keys), self.dropout, query.dtype)  # D
        biases = [self.proj_l.bias, self.proj_w.bias] if self.proj_l.bias is not None else []
        out, ctx = TalkingHeadsFunction.apply_with_ctx(
            q, k, v, self.proj_l.weight, self.proj_w.weight, *biases, mask=mask, attn_bias=attn_bias,
            scale=1 / math.sqrt(self.head_dim), dropout_mask=drop)         # (B, h_v, L, d)
        self.attention_weights = Tensor(read_only(ctx.attention_weights))  # W: (B, h, L, S)
        self.mixed_weights = Tensor(read_only(ctx.mixed_weights))          # U: (B, h_v, L, S), before dropout
        return self.W_o(transpose_output(out))                             # (B, L, E)

    def extra_repr(self):
        """The constructor arguments, for repr."""
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_heads_qk={self.num_heads_qk}, "
                f"num_heads_v={self.num_heads_v}, head_dim={self.head_dim}, bias={self.proj_l.bias is not None}")
