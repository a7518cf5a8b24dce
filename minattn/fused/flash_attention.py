"""FlashAttention's algorithm, written plainly in array code: attention computed tile by tile, never holding the
(L, S) matrix of weights; the backward recomputes each tile instead of reading it back. And its twin from primitives.

This is the algorithm, not the speed: on a GPU FlashAttention is fast because each tile stays in on-chip SRAM inside one
CUDA kernel. Here every tile is a handful of NumPy / CuPy calls, so what you can see (and measure) is the memory: the
largest array is one (B_q, B_k) tile per batch element and head, not the (L, S) matrix.
"""
from autograd import checks, ops, parallel
from autograd.backend import rowdot, rowmax, rowsum, xp
from autograd.function import Function
from autograd.ops import sum_to
from autograd.tensor import Tensor
from minattn import masks


class FlashAttentionFunction(Function):
    """Attention(Q, K, V) = softmax(Q Kᵀ · scale + bias, masked) V in tiles: the output of ScaledDotProductAttention
    with memory O(L + S) instead of O(L·S) per head.

    The dense ScaledDotProductAttentionFunction keeps P (..., L, S) for its backward. Here the queries are cut into
    blocks Q_i of B_q rows and the keys/values into blocks K_j, V_j of B_k rows (B_q = B_k = block_size); a query block
    meets the key blocks one after another and the softmax is built up as they come ("online softmax"). Below, a is
    one score, m a row's running max, ℓ its running sum, Õ its running (unnormalised) output.

    Forward:  for each query block i:    m = −∞, ℓ = 0, Õ = 0                       (..., B_q, 1), (.., B_q, Ev)
                for each key block j:
                  A_ij = Q_i K_jᵀ · scale + bias_ij, masked → −∞                     (..., B_q, B_k) one tile of scores
                  m_new = max(m, rowmax(A_ij))                                        (..., B_q, 1)
                  P̃_ij = exp(A_ij − m_new)                                           (..., B_q, B_k)
                  ℓ = exp(m − m_new) · ℓ + rowsum(P̃_ij)                              (..., B_q, 1)
                  Õ = exp(m − m_new) · Õ + P̃_ij V_j                                  (..., B_q, Ev)
                  m = m_new
                O_i = Õ / ℓ,   LSE_i = m + log ℓ   (the row's logsumexp)              (..., B_q, Ev), (..., B_q, 1)
              Why the rescaling is exact: after some key blocks, ℓ = Σ_seen exp(a − m) and Õ = Σ_seen exp(a − m) v,
              with m the max of the scores seen. When the max grows to m_new, each term already summed should read
              exp(a − m_new) = exp(a − m) · exp(m − m_new): ONE factor per row, applied to ℓ and Õ, fixes the whole
              past. After the last block, m is the row's true max, ℓ softmax's denominator Σ_j exp(a_j − m) and Õ
              its numerator Σ_j exp(a_j − m) v_j, so Õ/ℓ = softmax(A) V: exact, not an approximation (only the
              order of the floating-point additions differs from the dense path). The shift by the max is what keeps
              exp from overflowing, as in SoftmaxFunction; the running max is what lets a tile use it before it knows
              the row's true max. And LSE = m + log ℓ = log Σ_j exp(a_j), so exp(a − LSE) = exp(a − m)/ℓ = P: one number
              per row is all the backward needs to rebuild any tile of P.
    Backward: Δ = rowsum(dO ∘ O)                                                      (..., L, 1)  once
              for each key block j, for each query block i:
                  P_ij = exp(A_ij − LSE_i)              recomputed from Q, K, LSE (..., B_q, B_k)
                  dV_j += P_ijᵀ dO_i                                                  (..., B_k, Ev)
                  dP_ij = dO_i V_jᵀ                                                   (..., B_q, B_k)
                  dA_ij = P_ij ∘ (dP_ij − Δ_i)             softmax's backward         (..., B_q, B_k)
                  dQ_i += dA_ij K_j · scale                                           (..., B_q, E)
                  dK_j += dA_ijᵀ Q_i · scale                                          (..., B_k, E)
              Why Δ = rowsum(dO ∘ O) (the papers' D): softmax's backward (SoftmaxFunction) subtracts, per row,
              Σ_j dP_ij P_ij, a sum
              over ALL S keys, while a tile holds only B_k of them. But dP = dO Vᵀ, so
                  Σ_j dP_ij P_ij = Σ_j P_ij Σ_c dO_ic V_jc = Σ_c dO_ic (Σ_j P_ij V_jc) = Σ_c dO_ic O_ic,
              a sum over the Ev output features of two arrays we already hold: no P needed, computed once per row.
              dQ and dK: A = (Q · scale) Kᵀ, and a matrix product's rule ∂(XY) = ∂X Y + X ∂Y.
    Saved:    Q, K, V (the inputs themselves, not copies), O (..., L, Ev) and LSE (..., L, 1): never the (L, S) matrix.
              The price is one more Q Kᵀ per tile in the backward (recomputing P), a quarter more in the backward
              (five matrix products instead of four).
    Masks:    ``mask`` (bool, True = take part) and ``bias`` (float, added) are sliced to each tile: [..., rows, cols].
              ``causal``: query r sees keys c <= r (top-left). A tile entirely above the diagonal (its first key
              after its last query) is skipped in both passes — no arithmetic at all, about half the work when L = S;
              a tile across the diagonal gets the comparison rows >= cols as its mask.
              ``window`` w (with causal; sliding-window attention, Mistral): query r sees keys r − w + 1 … r. A tile
              entirely before every row's window is skipped too — at L ≫ w the work falls from O(L²) to O(L·w) —
              and a tile across the window's edge gets rows − cols < w as its mask.
    Fully masked rows: every score of the row is −∞, so m stays −∞ and ℓ = 0. We subtract 0 instead of m = −∞ (never
              −∞ − (−∞) = NaN), divide by 1 instead of ℓ = 0 (O = 0), and save L = −∞ (log of an empty sum); the
              backward again subtracts 0 for such a row, so P = exp(−∞) = 0 and every gradient through it is 0. Output
              0, gradients 0, no NaN and no warning, as in the dense path.
    Dropout:  not supported (``dropout_p`` > 0 raises ValueError). FlashAttention applies dropout inside each tile
              and, in the backward, regenerates the same random keep-mask from the saved random-generator state; that
              bookkeeping would hide the algorithm here. Use the dense path for attention dropout.
    Shapes:   Q (..., L, E), K (..., S, E), V (..., S, Ev) → O (..., L, Ev); batch axes broadcast (the gradients are
              summed back with sum_to); mask and bias broadcastable to (..., L, S); L queries, S keys.
    Source:   Dao et al. 2022, FlashAttention (Algorithm 1 forward, Algorithm 4 backward with D = rowsum(dO ∘ O));
              Dao 2023, FlashAttention-2 (Algorithms 1 and 2: unnormalised Õ, only L saved, loop orders used here);
              Milakov & Gimelshein 2018, online normaliser calculation for softmax.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask=None, bias=None, scale=1.0, causal=False, block_size=128, dropout_p=0.0,
                window=None):
        _check_options(block_size, dropout_p)
        options = dict(scale=scale, causal=causal, block_size=block_size, window=window)
        out, lse = parallel.map_batch(flash_forward, q, k, v, mask, bias, one_chunk_per_thread=True,
                                      **options)                  # (..., L, Ev), (..., L, 1); tiles: small memory
        ctx.save_for_backward(q, k, v, out, lse, mask, bias)
        ctx.options = options
        return out

    @staticmethod
    def backward(ctx, grad_o):
        q, k, v, out, lse, mask, bias = ctx.saved
        return parallel.map_batch(flash_backward, q, k, v, out, lse, mask, bias, grad_o, grads_for=(q, k, v),
                                  one_chunk_per_thread=True, **ctx.options)   # (..., L, E), (..., S, E), (..., S, Ev)


def flash_forward(q, k, v, mask, bias, scale, causal, block_size, window=None):
    """The forward's loops (see FlashAttentionFunction) on whole arrays: returns O (..., L, Ev) and LSE (..., L, 1)."""
    num_queries, num_keys, value_dim = q.shape[-2], k.shape[-2], v.shape[-1]
    batch = masks.batch_shape(q, k, v, mask, bias)                                   # (...)
    mask, bias = _to_scores_shape(mask, num_queries, num_keys), _to_scores_shape(bias, num_queries, num_keys)
    out = xp.empty(batch + (num_queries, value_dim), dtype=q.dtype)                 # (..., L, Ev)  O, block by block
    lse = xp.empty(batch + (num_queries, 1), dtype=q.dtype)                         # (..., L, 1)   LSE, block by block
    for i0, i1 in _blocks(num_queries, block_size):
        rows = slice(i0, i1)
        q_i = q[..., rows, :] * scale                                               # (..., B_q, E)
        m = xp.full(batch + (i1 - i0, 1), -xp.inf, dtype=q.dtype)                  # (..., B_q, 1) running max
        l = xp.zeros(batch + (i1 - i0, 1), dtype=q.dtype)                           # (..., B_q, 1) running sum
        acc = xp.zeros(batch + (i1 - i0, value_dim), dtype=q.dtype)                 # (..., B_q, Ev) running Õ
        last_key = min(num_keys, i1) if causal else num_keys                        # causal: no key after query i1-1
        first_key = _first_key_block(i0, window, block_size)                         # window: none before i0-w+1
        for j0, j1 in _blocks(last_key, block_size, first_key):
            cols = slice(j0, j1)
            a = _tile_scores(q_i, k[..., cols, :], mask, bias, causal, rows, cols, window)   # (..., B_q, B_k)
            m_new = xp.maximum(m, rowmax(a))                                          # (..., B_q, 1)
            shift = xp.where(xp.isfinite(m_new), m_new, 0)                           # (..., B_q, 1) −∞ → 0
            p_tilde = xp.exp(a - shift)                                              # (..., B_q, B_k) P̃, 0 where masked
            rescale = xp.exp(m - shift)                                              # (..., B_q, 1), 0 while m = −∞
            l = rescale * l + rowsum(p_tilde)                                        # (..., B_q, 1)
            acc = rescale * acc + p_tilde @ v[..., cols, :]                          # (..., B_q, Ev)
            m = m_new                                                                # (..., B_q, 1)
        seen = l > 0                                                                 # (..., B_q, 1) a key took part
        l_safe = xp.where(seen, l, 1)                                                # (..., B_q, 1) ℓ = 0 → 1
        out[..., rows, :] = acc / l_safe                                             # (..., B_q, Ev)  O_i = Õ / ℓ
        lse[..., rows, :] = xp.where(seen, m + xp.log(l_safe), -xp.inf)              # (..., B_q, 1)   LSE_i = m + log ℓ
    return out, lse


def flash_backward(q, k, v, out, lse, mask, bias, grad_o, scale, causal, block_size, window=None):
    """The backward's loops (see FlashAttentionFunction) on whole arrays: returns (dQ, dK, dV)."""
    num_queries, num_keys = q.shape[-2], k.shape[-2]
    batch = out.shape[:-2]                                                           # (...)
    mask, bias = _to_scores_shape(mask, num_queries, num_keys), _to_scores_shape(bias, num_queries, num_keys)
    delta = rowdot(grad_o, out)                                                      # (..., L, 1)  Δ = rowsum(dO ∘ O)
    lse = xp.where(xp.isfinite(lse), lse, 0)                                         # (..., L, 1)  fully masked: 0
    dq = xp.zeros(batch + q.shape[-2:], dtype=q.dtype)                               # (..., L, E)
    dk = xp.zeros(batch + k.shape[-2:], dtype=k.dtype)                               # (..., S, E)
    dv = xp.zeros(batch + v.shape[-2:], dtype=v.dtype)                               # (..., S, Ev)
    for j0, j1 in _blocks(num_keys, block_size):
        cols = slice(j0, j1)
        k_j, v_j = k[..., cols, :], v[..., cols, :]                                  # (..., B_k, E), (..., B_k, Ev)
        first_query = (j0 // block_size) * block_size if causal else 0              # causal: no query before key j0
        last_query = num_queries if window is None else min(num_queries, j1 + window - 1)   # window: none after
        for i0, i1 in _blocks(last_query, block_size, first_query):
            rows = slice(i0, i1)
            q_i = q[..., rows, :] * scale                                            # (..., B_q, E)
            a = _tile_scores(q_i, k_j, mask, bias, causal, rows, cols, window)       # (..., B_q, B_k)
            p = xp.exp(a - lse[..., rows, :])                                        # (..., B_q, B_k)  P recomputed
            do_i = grad_o[..., rows, :]                                              # (..., B_q, Ev)
            dv[..., cols, :] += p.swapaxes(-1, -2) @ do_i                            # (..., B_k, Ev)
            dp = do_i @ v_j.swapaxes(-1, -2)                                         # (..., B_q, B_k)
            da = p * (dp - delta[..., rows, :])                                      # (..., B_q, B_k)  dA
            dq[..., rows, :] += da @ k_j                                             # (..., B_q, E)  · scale below
            dk[..., cols, :] += da.swapaxes(-1, -2) @ q_i                            # (..., B_k, E)  q_i has the scale
    dq *= scale                                                                      # (..., L, E)
    return sum_to(dq, q.shape), sum_to(dk, k.shape), sum_to(dv, v.shape)   # each summed over its broadcast axes


def _check_options(block_size, dropout_p):
    """TypeError / ValueError unless block_size is a positive int and dropout_p is 0 (see the Function's docstring)."""
    checks.positive_int("block_size", block_size, "FlashAttentionFunction")
    if dropout_p != 0:
        checks.fail("dropout_p", "0 (flash attention has no dropout; use the dense attention path for it)", dropout_p,
                    "FlashAttentionFunction")


def _to_scores_shape(array, num_queries, num_keys):
    """``array`` (or None) with its last two axes broadcast to (L, S) — a view, no copy — so that a tile can slice
    it."""
    if array is None:
        return None
    return xp.broadcast_to(array, array.shape[:-2] + (num_queries, num_keys))      # (..., L, S)


def _blocks(n, size, start=0):
    """[(start, stop)] of the blocks of ``size`` covering start..n-1; the last one may be shorter."""
    return [(i, min(i + size, n)) for i in range(start, n, size)]


def _first_key_block(first_row, window, block_size):
    """The first key block a query block starting at ``first_row`` needs: 0, or with a sliding ``window`` the block
    holding key first_row − window + 1 (every key before it is outside every row's window)."""
    if window is None:
        return 0
    return max(0, first_row - window + 1) // block_size * block_size


def _tile_scores(q_i, k_j, mask, bias, causal, rows, cols, window=None):
    """One tile of scores A_ij = Q̃_i K_jᵀ + bias[rows, cols], −∞ where masked (by ``mask``, ``causal``: key after
    query, ``window``: key window or more before the query). ``q_i`` already carries the scale."""
    a = q_i @ k_j.swapaxes(-1, -2)                                                   # (..., B_q, B_k)
    if bias is not None:
        a = a + bias[..., rows, cols]                                                # (..., B_q, B_k)
    tile_mask = None if mask is None else mask[..., rows, cols]                      # (..., B_q, B_k)
    if causal and cols.stop - 1 > rows.start:                      # the tile reaches above the diagonal
        below = xp.arange(rows.start, rows.stop)[:, None] >= xp.arange(cols.start, cols.stop)   # (B_q, B_k)
        tile_mask = below if tile_mask is None else tile_mask & below                    # (..., B_q, B_k)
    if window is not None and (rows.stop - 1) - cols.start >= window:   # the tile reaches past some row's window
        near = xp.arange(rows.start, rows.stop)[:, None] - xp.arange(cols.start, cols.stop) < window   # (B_q, B_k)
        tile_mask = near if tile_mask is None else tile_mask & near                      # (..., B_q, B_k)
    if tile_mask is not None:
        a = xp.where(tile_mask, a, -xp.inf)                                          # (..., B_q, B_k)
    return a


def flash_attention_reference(q, k, v, mask=None, bias=None, scale=1.0, causal=False, block_size=128):
    """The same tiled forward (online softmax) composed from engine primitives; autograd gives its gradient.

    Autograd differentiates through the recurrence op by op, storing every tile it made — the memory FlashAttention
    avoids — so this twin checks the hand-written recomputing backward against plain autograd. The running max m is
    taken from the data as a constant: the result is invariant to a per-row shift, so holding m fixed changes no
    gradient (as in ``softmax_reference``). Arguments as ``FlashAttentionFunction``; q, k, v are Tensors.
    """
    num_queries, num_keys, value_dim = q.shape[-2], k.shape[-2], v.shape[-1]
    batch = masks.batch_shape(q, k, v, mask, bias)                                     # (...)
    mask, bias = _to_scores_shape(mask, num_queries, num_keys), _to_scores_shape(bias, num_queries, num_keys)
    blocks = []
    for i0, i1 in _blocks(num_queries, block_size):
        rows = slice(i0, i1)
        q_i = q[..., rows, :] * scale                                                # (..., B_q, E)
        m = xp.full(batch + (i1 - i0, 1), -xp.inf, dtype=q.dtype)                  # (..., B_q, 1) a constant
        l = Tensor(xp.zeros(batch + (i1 - i0, 1), dtype=q.dtype))                   # (..., B_q, 1)
        acc = Tensor(xp.zeros(batch + (i1 - i0, value_dim), dtype=q.dtype))         # (..., B_q, Ev)
        for j0, j1 in _blocks(min(num_keys, i1) if causal else num_keys, block_size):
            cols = slice(j0, j1)
            a = ops.matmul(q_i, ops.transpose(k[..., cols, :]))                      # (..., B_q, B_k)
            if bias is not None:
                a = a + Tensor(bias[..., rows, cols])                                # (..., B_q, B_k)
            tile_mask = None if mask is None else mask[..., rows, cols]                   # (..., B_q, B_k)
            if causal:
                below = xp.arange(i0, i1)[:, None] >= xp.arange(j0, j1)             # (B_q, B_k)
                tile_mask = below if tile_mask is None else tile_mask & below
            if tile_mask is not None:
                a = ops.masked_fill(a, ~tile_mask, -xp.inf)                          # (..., B_q, B_k)
            m_new = xp.maximum(m, a.data.max(axis=-1, keepdims=True))               # (..., B_q, 1)
            shift = xp.where(xp.isfinite(m_new), m_new, 0)                           # (..., B_q, 1)
            p_tilde = ops.exp(a - Tensor(shift))                                     # (..., B_q, B_k)
            rescale = Tensor(xp.exp(m - shift))                                      # (..., B_q, 1)
            l = rescale * l + p_tilde.sum(axis=-1, keepdims=True)                    # (..., B_q, 1)
            acc = rescale * acc + ops.matmul(p_tilde, v[..., cols, :])                     # (..., B_q, Ev)
            m = m_new
        l_safe = ops.where(l.data == 0, xp.ones((), dtype=l.dtype), l)               # (..., B_q, 1)
        blocks.append(acc / l_safe)                                                  # (..., B_q, Ev)
    if not blocks:                                                                   # L = 0: nothing to attend from
        return Tensor(xp.zeros(batch + (0, value_dim), dtype=q.dtype))
    return ops.concatenate(blocks, axis=-2)                                          # (..., L, Ev)
