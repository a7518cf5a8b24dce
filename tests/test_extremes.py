"""Logits of ±1e4: softmax, masked softmax, scaled dot-product attention and cross-entropy stay finite — outputs and
gradients — and float32 agrees with float64.

Why ±1e4: exp(1e4) overflows in every float type (float64 stops at exp(709), float32 at exp(88)), so these only
pass because each op subtracts the row maximum before exponentiating (and masks with -inf before that). No warning
may be raised either: the suite turns every warning into an error (pytest.ini), so an overflow, an inf − inf or a
0/0 inside an op fails the test even when the result happens to come out finite.

How float32 is compared with float64, and the tolerances:
  * The inputs are chosen EXACTLY representable in float32 — logits ±1e4 + k/16 (at most 18 significant bits; float32
    has 24), attention queries and keys small integers with scale 1/2 (so Q Kᵀ · scale is an exact integer ≤ 2e4
    in both types), values and cotangents drawn in float32. Both dtypes therefore see identical numbers, and every
    difference is arithmetic rounding inside the op, not input rounding (casting a generic float64 logit near 1e4
    to float32 alone moves it by up to 5e-4, which would change a weight by 0.05% before any arithmetic).
  * After the max is subtracted (exact: Sterbenz), float32 exp, sum and divide each add a relative error of about
    one unit in the last place, 2^-24 ≈ 6e-8, so a probability is off by a few 1e-8 relative at worst. Tolerances:
      probabilities and softmax / cross-entropy gradients (|·| ≤ 1) .. atol 1e-6 (>10× the ≤8e-8 seen)
      losses of size up to ~2e4 ........................................ rtol 1e-6 (float32 resolves 6e-8 of it)
      attention output and dV, sums of S or L terms of size |V|, |dO| .. atol 1e-6 × max(1, largest |value|)
                                                                         (worst seen over 300 seeds: 3.5e-7)
      dQ = scale · dS K and dK = scale · dSᵀ Q, with |K|, |Q| ≤ 100 .... atol 1e-6 × scale · max|K or Q| · max|dP|,
                                                                         dP = dO Vᵀ: the size of the terms summed
                                                                         (worst seen over 300 seeds: 5e-8 × that)
    A regression that recomputes exp(x) without the shift, or that rounds through float16, misses these by orders.
"""
import numpy as np
import pytest

from autograd import Tensor, backend
from minattn import functional as F
from tests.conftest import host

DTYPES = (np.float32, np.float64)
PROB = dict(rtol=0, atol=1e-6)      # probabilities, outputs, gradients of O(1)
LOSS = dict(rtol=1e-6, atol=0)      # losses up to ~2e4


def big_logits(rng, shape):
    """±1e4 + k/16 (k in [-64, 64]): exact in float32; row 0 all -1e4-ish and row 1 all +1e4-ish when there are
    enough rows, so both saturated extremes are covered."""
    sign = rng.choice([-1.0, 1.0], size=shape)
    x = sign * 1e4 + rng.integers(-64, 65, size=shape) / 16
    flat = x.reshape(-1, shape[-1])
    if flat.shape[0] >= 2:
        flat[0] = -1e4 + rng.integers(-64, 65, size=shape[-1]) / 16
        flat[1] = 1e4 + rng.integers(-64, 65, size=shape[-1]) / 16
    assert np.array_equal(x.astype(np.float32).astype(np.float64), x)   # exactly representable
    return x


def f32_exact(rng, shape):
    """Standard-normal values rounded to float32 first (cotangents, values): the same numbers in both dtypes."""
    return rng.standard_normal(shape).astype(np.float32).astype(np.float64)


def run_both(fn, arrays, cotangent=None):
    """fn on float32 and on float64 copies of ``arrays``; returns {dtype: (output, [grads])} as float64 host arrays."""
    results = {}
    for dtype in DTYPES:
        inputs = [Tensor(backend.asarray(a.astype(dtype)), requires_grad=True) for a in arrays]
        out = fn(*inputs)
        assert out.dtype == dtype
        out.backward(None if cotangent is None else backend.asarray(cotangent.astype(dtype)))
        results[dtype] = (host(out).astype(np.float64), [host(t.grad).astype(np.float64) for t in inputs])
    return results


def assert_finite_and_agree(results, out_tol, grad_tols=None):
    """Everything finite; float32 = float64 within ``out_tol`` (output) and ``grad_tols[i]`` (gradient i; PROB)."""
    (out32, grads32), (out64, grads64) = results[np.float32], results[np.float64]
    for array in [out32, out64, *grads32, *grads64]:
        assert np.isfinite(array).all()
    np.testing.assert_allclose(out32, out64, **out_tol)
    for i, (g32, g64) in enumerate(zip(grads32, grads64)):
        tol = grad_tols[i] if grad_tols is not None else PROB
        np.testing.assert_allclose(g32, g64, **tol, err_msg=f"gradient {i}")


def normwise(size):
    """atol 1e-6 relative to the natural size of the terms summed (see the module docstring)."""
    return dict(rtol=0, atol=1e-6 * max(1.0, float(size)))


# --- softmax ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7,), (4, 6), (2, 3, 5, 8)])
def test_softmax_of_huge_logits(rng, shape):
    x = big_logits(rng, shape)
    results = run_both(F.softmax, [x], f32_exact(rng, shape))
    assert_finite_and_agree(results, PROB)
    p = results[np.float64][0]
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=0, atol=1e-12)
    # where one logit leads by ~2e4 the row is one-hot: exp(-2e4) is exactly 0 in both dtypes
    lead = np.sort(x, axis=-1)
    one_hot = (lead[..., -1] - lead[..., -2]) > 50
    assert np.all(p.max(-1)[one_hot] == 1.0)


def test_softmax_of_huge_logits_along_a_middle_axis(rng):
    x = big_logits(rng, (3, 5, 4))
    results = run_both(lambda t: F.softmax(t, axis=1), [x], f32_exact(rng, x.shape))
    assert_finite_and_agree(results, PROB)
    np.testing.assert_allclose(results[np.float32][0].sum(1), 1.0, rtol=0, atol=1e-6)


# --- masked softmax --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_query", [False, True])
def test_masked_softmax_of_huge_logits_with_empty_rows(rng, per_query):
    batch, length_q, length_k = 4, 3, 6
    x = big_logits(rng, (batch, length_q, length_k))
    lens = rng.integers(0, length_k + 1, size=(batch, length_q) if per_query else (batch,))
    lens[0] = 0                                                     # a fully masked row (or sequence)
    results = run_both(lambda t: F.masked_softmax(t, backend.asarray(lens)), [x], f32_exact(rng, x.shape))
    assert_finite_and_agree(results, PROB)
    p, (grad,) = results[np.float32]
    lens_b = np.broadcast_to(lens[:, None] if not per_query else lens, (batch, length_q))
    masked = np.arange(length_k) >= lens_b[..., None]
    assert np.all(p[masked] == 0.0) and np.all(grad[masked] == 0.0)  # exactly 0, not 1e-30
    np.testing.assert_allclose(p.sum(-1), (lens_b > 0).astype(float), rtol=0, atol=1e-6)


def test_masked_softmax_where_the_mask_hides_the_largest_logit(rng):
    """The masked +1e4 must not set the shift: the visible -1e4 logits still give a proper distribution."""
    x = np.full((1, 1, 4), -1e4) + np.array([0.0, 0.5, 1.0, 0.0])
    x[..., 3] = 1e4                                                  # the largest logit, hidden by valid_len 3
    results = run_both(lambda t: F.masked_softmax(t, backend.asarray(np.array([3]))), [x],
                       f32_exact(rng, x.shape))
    assert_finite_and_agree(results, PROB)
    expected = np.exp([0.0, 0.5, 1.0]) / np.exp([0.0, 0.5, 1.0]).sum()
    np.testing.assert_allclose(results[np.float32][0][0, 0, :3], expected, rtol=1e-6)


# --- scaled dot-product attention ------------------------------------------------------------------------------------
def attention_inputs(rng, batch=(2, 3), length_q=5, length_k=6, e=4, ev=3):
    """Integer q, k in [-100, 100]: with scale 1/2 every logit is an exact integer, up to ±2e4."""
    q = rng.integers(-100, 101, batch + (length_q, e)).astype(np.float64)
    k = rng.integers(-100, 101, batch + (length_k, e)).astype(np.float64)
    v = f32_exact(rng, batch + (length_k, ev))
    return q, k, v


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float_minus_inf", "causal"])
def test_sdpa_with_logits_of_1e4(rng, mask_kind):
    q, k, v = attention_inputs(rng)
    logits = (q @ k.swapaxes(-1, -2)) * 0.5
    assert np.abs(logits).max() > 5e3                                # the regime this file is about
    call = {"scale": 0.5}
    if mask_kind == "bool":
        mask = rng.random((2, 1, 5, 6)) < 0.7
        mask[0, 0, 2] = False                                        # a fully masked query row
        call["attn_mask"] = backend.asarray(mask)
    elif mask_kind == "causal":
        call["is_causal"] = True
    cotangent = f32_exact(rng, (2, 3, 5, 3))
    if mask_kind == "float_minus_inf":                               # a float mask must match the query dtype
        bias = np.where(rng.random((5, 6)) < 0.3, -np.inf, rng.integers(-8, 9, (5, 6)) / 4)
        results = {}
        for dtype in DTYPES:
            inputs = [Tensor(backend.asarray(a.astype(dtype)), requires_grad=True) for a in (q, k, v)]
            out = F.scaled_dot_product_attention(*inputs, attn_mask=backend.asarray(bias.astype(dtype)), scale=0.5)
            out.backward(backend.asarray(cotangent.astype(dtype)))
            results[dtype] = (host(out).astype(np.float64), [host(t.grad).astype(np.float64) for t in inputs])
    else:
        results = run_both(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, **call), [q, k, v], cotangent)
    out64, _ = results[np.float64]
    d_p = np.abs(cotangent @ v.swapaxes(-1, -2)).max()                # dP = dO Vᵀ
    assert_finite_and_agree(results, normwise(np.abs(out64).max()),
                            [normwise(0.5 * np.abs(k).max() * d_p), normwise(0.5 * np.abs(q).max() * d_p),
                             normwise(np.abs(results[np.float64][1][2]).max())])


def test_sdpa_need_weights_with_logits_of_1e4_are_one_hot_or_zero(rng):
    q, k, v = attention_inputs(rng, batch=(2,))
    mask = np.ones((2, 5, 6), dtype=bool)
    mask[1, 3] = False
    for dtype in DTYPES:
        ts = [Tensor(backend.asarray(a.astype(dtype))) for a in (q, k, v)]
        _, weights = F.scaled_dot_product_attention(*ts, attn_mask=backend.asarray(mask), scale=0.5,
                                                    need_weights=True)
        w = host(weights)
        assert np.isfinite(w).all()
        np.testing.assert_array_equal(w[1, 3], 0.0)                 # the masked row: zeros, no NaN
        rows = w.reshape(-1, 6)[np.abs(w.reshape(-1, 6).sum(-1)) > 0]
        np.testing.assert_allclose(rows.sum(-1), 1.0, rtol=0, atol=1e-6)


# --- cross-entropy ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_with_logits_of_1e4(rng, reduction, label_smoothing):
    rows, classes = 20, 9
    x = big_logits(rng, (rows, classes))
    target = rng.integers(0, classes, rows)
    target[::5] = -100                                               # ignored rows
    target[1] = int(np.argmin(x[1]))                                 # a target far below the max: loss ≈ 2e4
    cotangent = f32_exact(rng, (rows,)) if reduction == "none" else None
    results = run_both(lambda t: F.cross_entropy(t, backend.asarray(target), reduction=reduction,
                                                 label_smoothing=label_smoothing), [x], cotangent)
    assert_finite_and_agree(results, LOSS)
    loss64 = results[np.float64][0]
    assert np.max(loss64) > 1e3                                      # some rows really are ~1e4 wrong
    # the loss of a kept row is logsumexp(z) − z_t: compare with the exact value where smoothing is off
    if label_smoothing == 0.0 and reduction == "none":
        lse = x.max(-1) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1))
        kept = target != -100
        np.testing.assert_allclose(loss64[kept], (lse - x[np.arange(rows), np.where(kept, target, 0)])[kept],
                                   rtol=1e-12)


def test_cross_entropy_on_an_n_c_d_layout_with_logits_of_1e4(rng):
    x = big_logits(rng, (3, 4, 5)).transpose(0, 2, 1).copy()       # (N, C, d1) = (3, 5, 4): classes on axis 1
    target = rng.integers(0, 5, (3, 4))
    results = run_both(lambda t: F.cross_entropy(t, backend.asarray(target)), [x])
    assert_finite_and_agree(results, LOSS)


def test_cross_entropy_with_a_minus_inf_logit_ignores_that_class():
    """A class at -inf has probability 0: the loss is logsumexp over the others minus the target's logit, its
    gradient finite (0 at that class). Without label smoothing there is no 0 · log 0 = 0 · (−inf) term to give NaN."""
    logits = Tensor(backend.asarray(np.array([[0.5, -np.inf, 1.0]])), requires_grad=True)
    loss = F.cross_entropy(logits, backend.asarray(np.array([0])))
    np.testing.assert_allclose(host(loss), np.log(np.exp(0.5) + np.exp(1.0)) - 0.5, rtol=1e-15)
    loss.backward()
    p = np.exp([0.5, 1.0]) / np.exp([0.5, 1.0]).sum()
    np.testing.assert_allclose(host(logits.grad), [[p[0] - 1, 0.0, p[1]]], rtol=1e-15, atol=1e-15)


def test_softmax_of_a_row_with_plus_inf_is_nan_as_pytorchs():
    """exp(inf − inf) is NaN: a row holding +inf has no defined softmax, and PyTorch gives NaN in every entry (an
    unmasked row whose max is +inf is shifted by it, not by 0 as a fully masked row is)."""
    out = host(F.softmax(Tensor(backend.asarray(np.array([[np.inf, 1.0], [0.0, 1.0]])))))
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
