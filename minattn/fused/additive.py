"""Additive (Bahdanau) attention, fused, with the backward written by hand; and its twin from primitives.

Additive attention scores a query q against a key k with a one-hidden-layer network instead of a dot product:
score(q, k) = w_vᵀ tanh(W_q q + W_k k). The projections W_q, W_k are ordinary Linear layers applied outside (they
act on L queries and S keys separately); what is new, and fused here, is everything after them: the broadcast sum
over every (query, key) pair, the tanh, the scoring vector w_v, the masked softmax and the weighted sum of values.
"""
from autograd import ops, parallel
from autograd.backend import xp
from autograd.function import Function
from autograd.ops import sum_to
from minattn.fused.softmax import softmax_, softmax_backward_, softmax_reference


def additive_attention_forward(qp, kp, v, mask, bias, dropout_mask, w_v):
    """The forward of AdditiveAttentionFunction on whole arrays: returns (O, F, P)."""
    features = xp.tanh(qp[..., :, None, :] + kp[..., None, :, :])   # (..., L, S, H)  F = tanh(Z)
    p = softmax_(features @ w_v, mask, bias)                         # (..., L, S)     P = softmax(F w_v + bias)
    p_used = p if dropout_mask is None else p * dropout_mask         # (..., L, S)     P ∘ D
    return p_used @ v, features, p                                   # (..., L, Ev)    O = (P ∘ D) V


def additive_attention_backward(qp, kp, v, p, dropout_mask, features, grad_o, w_v, needs):
    """The backward of AdditiveAttentionFunction on whole arrays: (dQp, dKp, dV, dw_v); None where ``needs`` (four
    bools, in that order) does not ask."""
    p_used = p if dropout_mask is None else p * dropout_mask         # (..., L, S)
    dv = sum_to(p_used.swapaxes(-1, -2) @ grad_o, v.shape) if needs[2] else None   # (..., S, Ev)  dV = (P ∘ D)ᵀ dO
    if not (needs[0] or needs[1] or needs[3]):
        return None, None, dv, None
    dp = grad_o @ v.swapaxes(-1, -2)                                 # (..., L, S)     dO Vᵀ
    if dropout_mask is not None:
        dp *= dropout_mask                                           # (..., L, S)     dP = (dO Vᵀ) ∘ D
    da = sum_to(softmax_backward_(p, dp), features.shape[:-1])       # (..., L, S)     dA = P ∘ (dP − Σ dP ∘ P),
                                                                     #                 summed to F's batch axes
    dw_v = xp.tensordot(da, features, axes=da.ndim) if needs[3] else None   # (H,)  dw_v = Σ_{..., i, j} dA_ij F_ij
    dz = da[..., None] * w_v * (1 - features * features)             # (..., L, S, H)  dZ = dA w_v ∘ (1 − F²)
    dqp = sum_to(dz.sum(axis=-2), qp.shape) if needs[0] else None    # (..., L, H)     dQp = Σ_j dZ_ij
    dkp = sum_to(dz.sum(axis=-3), kp.shape) if needs[1] else None    # (..., S, H)     dKp = Σ_i dZ_ij
    return dqp, dkp, dv, dw_v


class AdditiveAttentionFunction(Function):
    """Attention with additive scores, score_ij = w_vᵀ tanh(Qp_i + Kp_j), forward and backward in one node.

    Forward:  Z = Qp[..., :, None, :] + Kp[..., None, :, :]   (..., L, S, H)  every query beside every key
              F = tanh(Z)                                      (..., L, S, H)  the hidden layer of the scorer
              A = F w_v + bias                                 (..., L, S)     the attention scores
              P = softmax(A), masked                           (..., L, S)     masked keys → 0; fully masked row → 0
              O = (P ∘ D) V                                    (..., L, Ev)    D = dropout keep-mask / (1 − p), or 1
    Backward: dV = (P ∘ D)ᵀ dO                                 (..., S, Ev)
              dP = (dO Vᵀ) ∘ D                                 (..., L, S)
              dA = P ∘ (dP − Σ_j dP ∘ P)                       (..., L, S)     softmax's backward (SoftmaxFunction)
              dw_v = Σ_{..., i, j} dA_ij F_ij                  (H,)            A_ij = Σ_h F_ijh w_h: ∂A_ij/∂w_h = F_ijh
              dF = dA[..., None] ∘ w_v                         (..., L, S, H)  ∂A_ij/∂F_ijh = w_h
              dZ = dF ∘ (1 − F²)                               (..., L, S, H)  tanh' = 1 − tanh², from the saved F
              dQp = Σ_j dZ_ij,  dKp = Σ_i dZ_ij                (..., L, H), (..., S, H)
              Qp_i was added to S keys (and Kp_j to L queries): the gradient of a broadcast is the sum over the
              axis it was broadcast along — sum_to's rule, written out.
    A fully masked row has P = 0, hence dA = 0 and no gradient reaches Qp, Kp or w_v from it: output 0, no NaN.
    Saved:    F, w_v, V, P (and D). F is (..., L, S, H): H times the (..., L, S) matrix that dot-product attention
              keeps — the price of a learned scorer, paid in memory and in elementwise work.
    Shapes:   Qp = q W_qᵀ (..., L, H), Kp = k W_kᵀ (..., S, H), w_v (H,), V (..., S, Ev) — batch axes broadcast;
              mask (bool, True = take part) and bias (float, added) broadcastable to the scores (..., L, S);
              ``dropout_mask``: the dropout multiplier D, (..., L, S), or None.
    Executed by ``parallel.map_batch`` (chunks of the batch; w_v given whole to each chunk, its gradient added up).
    Source:   Bahdanau, Cho & Bengio 2015, "Neural Machine Translation by Jointly Learning to Align and Translate",
              eq. 6 and appendix A.1.2; d2l §11.3.2 (AdditiveAttention)
    """

    @staticmethod
    def forward(ctx, qp, kp, w_v, v, mask=None, bias=None, dropout_mask=None):
        out, features, p = parallel.map_batch(additive_attention_forward, qp, kp, v, mask, bias, dropout_mask,
                                              w_v=w_v)                   # (..., L, Ev), F, P
        ctx.save_for_backward(qp, kp, v, p, dropout_mask, features, w_v)
        ctx.attention_weights = p
        return out

    @staticmethod
    def backward(ctx, grad_o):
        qp, kp, v, p, dropout_mask, features, w_v = ctx.saved
        needs = ctx.needs_input_grad                                      # (Qp, Kp, w_v, V)
        dqp, dkp, dv, dw_v = parallel.map_batch(
            additive_attention_backward, qp, kp, v, p, dropout_mask, features, grad_o,
            core_ndim=(2, 2, 2, 2, 2, 3, 2), w_v=w_v, needs=(needs[0], needs[1], needs[3], needs[2]),
            grads_for=(qp, kp, v, w_v))
        return dqp, dkp, dw_v, dv


def additive_attention_reference(qp, kp, w_v, v, mask=None, bias=None, dropout_mask=None):
    """The same attention composed from engine primitives: reshape, add (broadcast), tanh, matmul, softmax_reference.

    Each primitive's backward runs in turn, so the broadcast sums of dQp and dKp come from Add's ``sum_to``.
    """
    qp4 = ops.reshape(qp, qp.shape[:-1] + (1, qp.shape[-1]))                # (..., L, 1, H)
    kp4 = ops.reshape(kp, kp.shape[:-2] + (1,) + kp.shape[-2:])              # (..., 1, S, H)
    features = ops.tanh(qp4 + kp4)                                           # (..., L, S, H)
    scores = ops.matmul(features, w_v)                                       # (..., L, S)
    p = softmax_reference(scores, mask, bias)                                # (..., L, S)
    if dropout_mask is not None:
        p = p * ops.lift(dropout_mask, p)                                            # (..., L, S)
    return ops.matmul(p, v)                                                  # (..., L, Ev)
