"""Additive attention (Bahdanau et al. 2015), the layer: learned projections around the fused additive core."""
from autograd import checks
from autograd.backend import read_only
from autograd.tensor import Tensor
from minattn import functional as F
from minattn import masks
from minattn.fused.additive import AdditiveAttentionFunction
from minattn.layers import Linear, parameter_dtype
from minattn.module import Module


def _squeeze_heads(array):
    """A mask or bias from ``masks.attention_masks`` for scores (B, 1, L, S) → one for (B, L, S)."""
    if array is not None and array.ndim == 4:
        return array[:, 0]                                               # (B|1, 1, L|1, S|1) → (B|1, L|1, S|1)
    return array                                                         # (L|1, S|1), (S|1) or None: already fits


class AdditiveAttention(Module):
    """Attention whose scores come from a small network: score(q, k) = w_vᵀ tanh(W_q q + W_k k).

    The first attention of neural machine translation: the decoder state (the query) and each encoder state (a
    key) are projected to ``num_hiddens`` features, added, squashed by tanh and read out by the vector w_v; a masked
    softmax over the keys turns the scores into weights, which average the values.

        Qp = queries W_qᵀ   (B, L, H),   Kp = keys W_kᵀ   (B, S, H)
        A_ij = w_vᵀ tanh(Qp_i + Kp_j)   (B, L, S),   P = softmax over j (masked),   out = P V   (B, L, Ev)

    Unlike the dot product, queries and keys may have different sizes (query_size ≠ key_size): each has its own
    projection. Every (query, key) pair gets an H-vector of hidden features, so the layer builds a (B, L, S, H)
    tensor where dot-product attention builds (B, L, S) — see ``demos/additive_vs_dot.py`` for what that costs.

    Args:
        query_size, key_size: feature sizes of queries and keys. (d2l's older signature puts key_size FIRST:
            ``AdditiveAttention(key_size, query_size, num_hiddens, dropout)`` — pass keywords when porting.)
        num_hiddens (H): width of the scorer's hidden layer.
        dropout: dropout on the attention weights, in training mode (as d2l).
        dtype: of the parameters (float32 by default).
    Sublayers (no biases, as in d2l): ``W_q = Linear(query_size, H)``, ``W_k = Linear(key_size, H)``,
        ``w_v = Linear(H, 1)``.
    Shapes: queries (B, L, query_size), keys (B, S, key_size), values (B, S, Ev) → (B, L, Ev).
        ``attention_weights`` after a call: (B, L, S), before dropout, kept for plotting (detached and read-only:
        ``backend.read_only``; a copy on CuPy).
    Masks: ``valid_lens`` (B,) or (B, L) as d2l's ``masked_softmax``; ``attn_mask`` boolean (True = take part) or
        float (added to the scores), broadcastable to (B, L, S) — or to (B, 1, L, S), the one-head layout of
        ``masks.attention_masks``. A query whose keys are all masked gets weights 0 and output 0 (d2l's −1e6 fill
        would make it attend uniformly to the padding instead).
    Raises: TypeError for a non-tensor input or a dtype other than the parameters'; ValueError naming the argument
        and both shapes for a wrong feature size, a batch or length mismatch, or a mask that does not fit.
    Source: Bahdanau, Cho & Bengio 2015 (eq. 6, appendix A.1.2); d2l §11.3.2 (AdditiveAttention).
    """

    def __init__(self, query_size, key_size, num_hiddens, dropout=0.0, dtype=None):
        super().__init__()
        where = "AdditiveAttention"
        query_size = checks.positive_int("query_size", query_size, where)
        key_size = checks.positive_int("key_size", key_size, where)
        num_hiddens = checks.positive_int("num_hiddens", num_hiddens, where)
        dropout = checks.probability("dropout", dropout, where)
        parameter_dtype(dtype, where)                                    # before W_q draws its weight
        self.query_size, self.key_size, self.num_hiddens, self.dropout = query_size, key_size, num_hiddens, dropout
        self.W_q = Linear(query_size, num_hiddens, bias=False, dtype=dtype)
        self.W_k = Linear(key_size, num_hiddens, bias=False, dtype=dtype)
        self.w_v = Linear(num_hiddens, 1, bias=False, dtype=dtype)
        self.attention_weights = None

    def forward(self, queries, keys, values, valid_lens=None, attn_mask=None):
        """Score every query against every key, softmax over the keys, average the values.

        Args:
            queries (B, L, query_size), keys (B, S, key_size), values (B, S, Ev): Tensors of the parameters' dtype.
            valid_lens: None, (B,) or (B, L) integers: keys at index >= valid_len are padding (d2l).
            attn_mask: None, boolean (True = take part) or float (added), broadcastable to (B, L, S).
        Returns:
            (B, L, Ev). Sets ``attention_weights`` (B, L, S).
        """
        where = "AdditiveAttention"
        self._check(queries, keys, values)
        batch, num_queries, num_keys = queries.shape[0], queries.shape[1], keys.shape[1]
        if attn_mask is not None and getattr(attn_mask, "ndim", 0) == 3:
            masks.check_batch_broadcast(attn_mask, (queries.shape[0], queries.shape[1], keys.shape[1]), "attn_mask",
                                        where)
            attn_mask = attn_mask.reshape((attn_mask.shape[0], 1) + tuple(attn_mask.shape[1:]))  # (B, 1, L, S)
        mask, bias = masks.attention_masks(batch, 1, num_queries, num_keys, queries.dtype,
                                           valid_lens, attn_mask, where=where)   # broadcastable to (B, 1, L, S)
        mask, bias = _squeeze_heads(mask), _squeeze_heads(bias)           # broadcastable to (B, L, S)
        drop = None
        if self.training and self.dropout > 0:
            drop = F.dropout_mask((batch, num_queries, num_keys), self.dropout, queries.dtype)   # (B, L, S)  D
        qp = self.W_q(queries)                                            # (B, L, H)
        kp = self.W_k(keys)                                               # (B, S, H)
        w_v = self.w_v.weight.reshape(self.num_hiddens)                   # (1, H) → (H,)
        out, ctx = AdditiveAttentionFunction.apply_with_ctx(qp, kp, w_v, values, mask=mask, bias=bias,
                                                            dropout_mask=drop)   # (B, L, Ev)
        self.attention_weights = Tensor(read_only(ctx.attention_weights))     # P: (B, L, S), before dropout
        return out                                                        # (B, L, Ev)

    def _check(self, queries, keys, values):
        """TypeError / ValueError naming the argument, before any arithmetic."""
        where, dtype = "AdditiveAttention", self.W_q.weight.dtype
        for name, t, features in (("queries", queries, self.query_size), ("keys", keys, self.key_size),
                                  ("values", values, None)):
            checks.sequences(name, t, features, dtype, where=where)
        if not queries.shape[0] == keys.shape[0] == values.shape[0]:
            checks.fail("keys, values", f"of queries' batch size {queries.shape[0]}", keys, where,
                        received=f"keys {keys.shape}, values {values.shape}")
        if keys.shape[1] != values.shape[1]:
            checks.fail("values", f"(batch, {keys.shape[1]}, Ev): the length S of keys {keys.shape}", values, where)

    def extra_repr(self):
        """The constructor arguments, for repr."""
        return (f"query_size={self.query_size}, key_size={self.key_size}, num_hiddens={self.num_hiddens}, "
                f"dropout={self.dropout}")
