"""FlashAttentionFunction (minattn/fused/flash_attention.py), ``F.flash_attention`` and MultiHeadAttention(attn_impl=
"flash"), checked against the dense path.

  (a) flash = dense: forward values and the gradients of q, k and v equal those of ScaledDotProductAttentionFunction
      to 1e-12 in float64, over block sizes 1, 3 and 128 (so L and S are never multiples of the block), L ≠ S, Ev ≠ E,
      broadcast batch axes, boolean masks, float masks with −inf, causal (L = S, L < S, L > S) and fully masked rows;
  (b) flash = its ``flash_attention_reference`` twin (the same tiled forward in engine primitives, autograd's gradient);
  (c) gradcheck of the hand-written backward;
  (d) what makes it FlashAttention: only the inputs, O and the logsumexp are saved; tiles above the causal diagonal
      are never read; the traced peak memory of forward + backward is a fraction of the dense path's;
  (e) the functional form and the layer: same results and errors as the dense path, float32 stays float32.
"""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from autograd import Tensor, backend, gradcheck, manual_seed
from minattn import functional as F
from minattn.attention import MultiHeadAttention
from minattn.fused.attention import ScaledDotProductAttentionFunction
from minattn.fused.flash_attention import FlashAttentionFunction, flash_attention_reference
from tests import numpy_reference as ref
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)
BLOCK_SIZES = [1, 3, 128]


def dev(a):
    """A NumPy array moved to the backend, or None."""
    return None if a is None else backend.asarray(a)


def _row_mask(shape, rng, p=0.35):
    """A random boolean mask (True = take part) in which every row keeps its first key."""
    mask = rng.random(shape) > p
    mask[..., 0] = True
    return mask


def _case(name, rng):
    """(q, k, v, mask, bias, causal) host arrays for a named case."""
    q, k, v = rng.standard_normal((2, 7, 4)), rng.standard_normal((2, 10, 4)), rng.standard_normal((2, 10, 3))
    mask = bias = None
    causal = False
    if name == "plain, L != S, Ev != E":
        pass
    elif name == "L = S = 1":
        q, k, v = rng.standard_normal((3, 1, 2)), rng.standard_normal((3, 1, 2)), rng.standard_normal((3, 1, 5))
    elif name == "batch broadcast":
        q = rng.standard_normal((2, 3, 5, 4))
        k, v = rng.standard_normal((1, 3, 8, 4)), rng.standard_normal((2, 1, 8, 2))
    elif name == "bool mask (L, S)":
        mask = _row_mask((7, 10), rng)
    elif name == "bool mask (B, 1, S)":
        mask = _row_mask((2, 1, 10), rng)
    elif name == "bool mask (B, L, 1)":
        mask = np.array([True, False])[:, None, None].repeat(7, axis=1)          # sequence 1: every row masked
    elif name == "bool mask adds a batch axis":
        q, k, v = rng.standard_normal((5, 4)), rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
        mask = _row_mask((3, 5, 6), rng)
    elif name == "float mask with -inf":
        bias = rng.standard_normal((2, 7, 10))
        bias[rng.random((2, 7, 10)) < 0.3] = -np.inf
        bias[..., 0] = 0.5
        bias[1, 4] = -np.inf                                                        # a fully masked row
    elif name == "fully masked rows":
        mask = _row_mask((2, 7, 10), rng)
        mask[0, 0] = mask[1, 3] = mask[1, 6] = False
    elif name == "causal, L = S":
        q, k, v = rng.standard_normal((2, 9, 4)), rng.standard_normal((2, 9, 4)), rng.standard_normal((2, 9, 3))
        causal = True
    elif name == "causal, L < S":
        causal = True
    elif name == "causal, L > S":
        q, k, v = rng.standard_normal((2, 11, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 3))
        causal = True
    elif name == "causal and bool mask with a fully masked row":
        mask = _row_mask((2, 1, 10), rng)
        mask[1, 0, 0] = False                                                       # query 0 of sequence 1 sees none
        causal = True
    elif name == "large logits":
        q = q * 300.0
    else:
        raise KeyError(name)
    return q, k, v, mask, bias, causal


CASES = ["plain, L != S, Ev != E", "L = S = 1", "batch broadcast", "bool mask (L, S)", "bool mask (B, 1, S)",
         "bool mask (B, L, 1)", "bool mask adds a batch axis", "float mask with -inf", "fully masked rows",
         "causal, L = S", "causal, L < S", "causal, L > S", "causal and bool mask with a fully masked row",
         "large logits"]


def _dense_mask(mask, causal, num_queries, num_keys):
    """The dense path's single boolean mask: ``mask`` AND the top-left causal triangle when ``causal``."""
    if not causal:
        return mask
    tril = np.tril(np.ones((num_queries, num_keys), dtype=bool))
    return tril if mask is None else mask & tril


def _fns(mask, bias, causal, scale, block_size, num_queries, num_keys):
    """(flash, dense) callables on q, k, v tensors for one case."""
    dense_mask = _dense_mask(mask, causal, num_queries, num_keys)

    def flash(q, k, v):
        return FlashAttentionFunction.apply(q, k, v, mask=dev(mask), bias=dev(bias), scale=scale, causal=causal,
                                            block_size=block_size)

    def dense(q, k, v):
        return ScaledDotProductAttentionFunction.apply(q, k, v, mask=dev(dense_mask), bias=dev(bias), scale=scale)
    return flash, dense


def _run(fn, arrays, cotangent):
    """fn on fresh float64 tensors; backward with ``cotangent``. Returns (output, [grad of each input])."""
    tensors = [t64(a) for a in arrays]
    out = fn(*tensors)
    out.backward(dev(cotangent))
    return host(out), [host(t.grad) for t in tensors]


def _assert_same(fn_a, fn_b, arrays, rng):
    """Forward values and every input gradient of fn_a and fn_b agree to 1e-12 (float64); returns fn_a's."""
    with ref.strict_floats():
        shape = fn_a(*[t64(a, requires_grad=False) for a in arrays]).shape
        w = rng.standard_normal(shape)
        out_a, grads_a = _run(fn_a, arrays, w)
        out_b, grads_b = _run(fn_b, arrays, w)
    np.testing.assert_allclose(out_a, out_b, **TIGHT)
    for name, ga, gb, a in zip("qkv", grads_a, grads_b, arrays):
        assert ga.shape == np.shape(a)
        assert np.isfinite(ga).all()
        np.testing.assert_allclose(ga, gb, **TIGHT, err_msg=f"gradient of {name}")
    return out_a, grads_a


# ---------------------------------------------------------------------------------------------------------------------
# (a), (b), (c): agreement and gradcheck
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("case", CASES)
def test_flash_equals_dense(rng, case, block_size):
    q, k, v, mask, bias, causal = _case(case, rng)
    flash, dense = _fns(mask, bias, causal, 0.7, block_size, q.shape[-2], k.shape[-2])
    out, _ = _assert_same(flash, dense, [q, k, v], rng)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("case", ["batch broadcast", "float mask with -inf", "fully masked rows", "causal, L < S",
                                  "causal, L > S", "causal and bool mask with a fully masked row"])
def test_flash_equals_its_composed_twin(rng, case):
    q, k, v, mask, bias, causal = _case(case, rng)
    kw = dict(mask=dev(mask), bias=dev(bias), scale=0.7, causal=causal, block_size=3)
    _assert_same(lambda *t: FlashAttentionFunction.apply(*t, **kw), lambda *t: flash_attention_reference(*t, **kw),
                 [q, k, v], rng)


@pytest.mark.parametrize("case", ["bool mask (B, 1, S)", "float mask with -inf", "fully masked rows",
                                  "causal, L > S", "causal and bool mask with a fully masked row"])
def test_flash_gradcheck(rng, case):
    q, k, v, mask, bias, causal = _case(case, rng)
    flash, _ = _fns(mask, bias, causal, 0.7, 3, q.shape[-2], k.shape[-2])
    with ref.strict_floats():
        assert gradcheck(flash, [t64(q), t64(k), t64(v)], max_elements=200)


def test_fully_masked_rows_give_zero_output_zero_gradients_and_lse_minus_inf(rng):
    q, k, v, mask, _, _ = _case("fully masked rows", rng)
    g = np.zeros((2, 7, 3))
    g[0, 0] = g[1, 3] = g[1, 6] = rng.standard_normal(3)   # only the fully masked rows receive a gradient
    tensors = [t64(a) for a in (q, k, v)]
    with ref.strict_floats():
        out, ctx = FlashAttentionFunction.apply_with_ctx(*tensors, mask=dev(mask), block_size=3)
        lse = host(ctx.saved[4])
        out.backward(dev(g))
    for row in [(0, 0), (1, 3), (1, 6)]:
        np.testing.assert_array_equal(host(out)[row], 0.0)
        assert lse[row] == -np.inf
    assert np.isfinite(np.delete(lse.reshape(-1), [0, 10, 13])).all()
    for t in tensors:
        np.testing.assert_array_equal(host(t.grad), 0.0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.integers(0, 9), st.integers(1, 9), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 5), st.sampled_from(["none", "bool", "float", "causal"]), st.integers(0, 2**31 - 1))
def test_flash_equals_dense_on_random_shapes_blocks_and_masks(batch, num_q, num_k, e, ev, block_size, masking, seed):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((batch, num_q, e)), rng.standard_normal((batch, num_k, e))
    v = rng.standard_normal((batch, num_k, ev))
    takes_part = rng.random((batch, num_q, num_k)) > rng.choice([0.0, 0.5, 0.9])   # rows may lose every key
    mask = takes_part if masking == "bool" else None
    bias = np.where(takes_part, rng.standard_normal(takes_part.shape), -np.inf) if masking == "float" else None
    flash, dense = _fns(mask, bias, masking == "causal", 1 / np.sqrt(e), block_size, num_q, num_k)
    _assert_same(flash, dense, [q, k, v], rng)


# ---------------------------------------------------------------------------------------------------------------------
# (d): what makes it FlashAttention
# ---------------------------------------------------------------------------------------------------------------------
def test_saves_only_the_inputs_the_output_and_the_logsumexp(rng):
    q, k, v = (t64(rng.standard_normal((2, 7, 4))), t64(rng.standard_normal((2, 10, 4))),
               t64(rng.standard_normal((2, 10, 3))))
    out, ctx = FlashAttentionFunction.apply_with_ctx(q, k, v, scale=0.5, block_size=3)
    saved_q, saved_k, saved_v, saved_out, lse, mask, bias = ctx.saved
    assert saved_q is q.data and saved_k is k.data and saved_v is v.data and saved_out is out.data   # no copies
    assert lse.shape == (2, 7, 1) and mask is None and bias is None
    scores = 0.5 * host(q) @ host(k).swapaxes(-1, -2)                              # (2, 7, 10)
    peak = scores.max(-1)
    np.testing.assert_allclose(host(lse)[..., 0], peak + np.log(np.exp(scores - peak[..., None]).sum(-1)), **TIGHT)


def test_causal_tiles_above_the_diagonal_are_never_read(rng):
    """L = 4 queries, S = 8 keys, blocks of 4: keys 4..7 come after every query, so their tile is skipped in both
    passes — NaN there cannot leak into the output or the gradients (a masked tile that was computed would give
    0 · NaN = NaN in P V)."""
    q, k, v = rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 8, 3)), rng.standard_normal((1, 8, 2))
    k[:, 4:] = v[:, 4:] = np.nan
    tensors = [t64(a) for a in (q, k, v)]
    with ref.strict_floats():
        out = FlashAttentionFunction.apply(*tensors, causal=True, block_size=4)
        out.backward(dev(rng.standard_normal((1, 4, 2))))
    expected, _ = ref.attention(q, k[:, :4], v[:, :4], mask=np.tril(np.ones((4, 4), dtype=bool)), scale=1.0)
    np.testing.assert_allclose(host(out), expected, **TIGHT)
    for t in tensors:
        assert np.isfinite(host(t.grad)).all()
    np.testing.assert_array_equal(host(tensors[1].grad)[:, 4:], 0.0)
    np.testing.assert_array_equal(host(tensors[2].grad)[:, 4:], 0.0)


def _traced_peak(fn, arrays, cotangent):
    """Peak bytes traced by tracemalloc during fn(*tensors) and its backward (NumPy reports its buffers to it)."""
    tensors = [Tensor(backend.asarray(a), requires_grad=True) for a in arrays]
    tracemalloc.start()
    try:
        fn(*tensors).backward(cotangent)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.skipif(backend.BACKEND != "numpy", reason="tracemalloc sees host (NumPy) buffers, not GPU memory")
def test_peak_memory_of_flash_is_a_fraction_of_dense(rng):
    arrays = [rng.standard_normal((1, 1, 1024, 32)).astype(np.float32) for _ in range(3)]
    cotangent = backend.asarray(rng.standard_normal((1, 1, 1024, 32)).astype(np.float32))
    dense = _traced_peak(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), arrays, cotangent)
    flash = _traced_peak(lambda q, k, v: F.flash_attention(q, k, v, block_size=128), arrays, cotangent)
    assert dense > 1024 * 1024 * 4                 # at least one (L, S) float32 matrix
    assert flash < 0.25 * dense, f"flash peak {flash} bytes vs dense {dense}"


# ---------------------------------------------------------------------------------------------------------------------
# (e): the functional form and the layer
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", ["none", "bool", "float", "causal", "causal L > S", "scale"])
def test_functional_flash_equals_sdpa(rng, kwargs):
    num_k = 9 if kwargs == "causal L > S" else 13
    q, k, v = (rng.standard_normal((2, 1, 11, 4)), rng.standard_normal((2, 2, num_k, 4)),
               rng.standard_normal((1, 2, num_k, 5)))
    kw = dict(none={}, bool=dict(attn_mask=dev(_row_mask((2, 1, 11, num_k), rng))),
              float=dict(attn_mask=dev(np.where(rng.random((11, num_k)) < 0.5, -np.inf, 0.1))),
              causal=dict(is_causal=True), scale=dict(scale=0.3))[kwargs.split(" ")[0]]
    _assert_same(lambda *t: F.flash_attention(*t, **kw, block_size=4),
                 lambda *t: F.scaled_dot_product_attention(*t, **kw), [q, k, v], rng)


def test_functional_float32_stays_float32(rng):
    tensors = [Tensor(rng.standard_normal((2, 5, 4)), dtype="float32", requires_grad=True) for _ in range(3)]
    bias = dev(np.where(rng.random((5, 5)) < 0.3, -np.inf, 0.0).astype(np.float32))
    out = F.flash_attention(*tensors, attn_mask=bias, block_size=2)
    out.backward(dev(np.ones((2, 5, 4), dtype=np.float32)))
    assert out.dtype == np.float32 and all(t.grad.dtype == np.float32 for t in tensors)
    dense = F.scaled_dot_product_attention(*[Tensor(t.data) for t in tensors], attn_mask=bias)
    np.testing.assert_allclose(host(out), host(dense), rtol=1e-5, atol=1e-6)


def test_functional_errors(rng):
    q = Tensor(rng.standard_normal((2, 5, 4)))
    k = Tensor(rng.standard_normal((2, 6, 4)))
    with pytest.raises(ValueError, match="not both"):
        F.flash_attention(q, k, k, attn_mask=dev(np.ones((5, 6), dtype=bool)), is_causal=True)
    with pytest.raises(ValueError, match="dropout"):
        F.flash_attention(q, k, k, dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout"):
        FlashAttentionFunction.apply(q, k, k, dropout_p=0.1)
    for bad, error in ((0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="block_size must be an int >= 1"):
            F.flash_attention(q, k, k, block_size=bad)
    with pytest.raises(ValueError, match="broadcast"):
        F.flash_attention(q, k, k, attn_mask=dev(np.ones((3, 5, 6), dtype=bool)))
    with pytest.raises(ValueError, match="the last axis E of query"):
        F.flash_attention(q, Tensor(rng.standard_normal((2, 6, 3))), k)
    with pytest.raises(TypeError, match="dtype"):
        F.flash_attention(q, Tensor(rng.standard_normal((2, 6, 4)), dtype="float32"), k)
    with pytest.raises(TypeError, match="positional"):
        F.flash_attention(q, k, k, None, True)                                     # ported PyTorch positional call


MHA_CASES = {
    "no mask": lambda rng, num_q: dict(),
    "valid_lens (B,)": lambda rng, num_q: dict(valid_lens=np.array([4, 2])),
    "valid_lens (B, L) with a 0": lambda rng, num_q: dict(valid_lens=np.arange(2 * num_q).reshape(2, num_q) % 6),
    "is_causal": lambda rng, num_q: dict(is_causal=True),
    "is_causal and valid_lens": lambda rng, num_q: dict(is_causal=True, valid_lens=np.array([5, 1])),
    "float attn_mask (L, S) with -inf and valid_lens": lambda rng, num_q: dict(
        attn_mask=np.where(rng.random((num_q, 5)) < 0.3, -np.inf, rng.standard_normal((num_q, 5))),
        valid_lens=np.array([3, 5])),
    "bool attn_mask (B, h, L, S)": lambda rng, num_q: dict(attn_mask=_row_mask((2, 3, num_q, 5), rng)),
}


@pytest.mark.parametrize("cross", [False, True], ids=["self, L = S", "cross, L != S"])
@pytest.mark.parametrize("case", list(MHA_CASES))
def test_mha_flash_equals_mha_dense(rng, case, cross):
    num_q = 3 if cross else 5
    kw = {name: dev(a) if isinstance(a, np.ndarray) else a for name, a in MHA_CASES[case](rng, num_q).items()}
    manual_seed(3)
    dense = MultiHeadAttention(6, 3, dtype="float64")
    flash = MultiHeadAttention(6, 3, dtype="float64", attn_impl="flash", block_size=2)
    flash.load_state_dict(dense.state_dict())
    q = rng.standard_normal((2, num_q, 6))
    kv = q if not cross else rng.standard_normal((2, 5, 6))
    w = rng.standard_normal((2, num_q, 6))
    results = []
    for layer in (dense, flash):
        tq, tkv = t64(q), t64(kv)
        with ref.strict_floats():
            out = layer(tq, tkv, tkv, **kw)
            out.backward(dev(w))
        results.append([host(out), host(tq.grad), host(tkv.grad)] +
                       [host(p.grad) for _, p in sorted(layer.named_parameters())])
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, **TIGHT)
    assert flash.attention_weights is None and dense.attention_weights is not None


def test_mha_flash_float32_stays_float32(rng):
    layer = MultiHeadAttention(8, 2, attn_impl="flash", block_size=3)
    x = Tensor(rng.standard_normal((2, 7, 8)), dtype="float32", requires_grad=True)
    out = layer(x, x, x, is_causal=True)
    out.backward(dev(np.ones((2, 7, 8), dtype=np.float32)))
    assert out.dtype == np.float32 and x.grad.dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in layer.parameters())
    assert "attn_impl='flash'" in repr(layer)


def test_mha_errors():
    with pytest.raises(ValueError, match="'dense', 'flash'"):
        MultiHeadAttention(8, 2, attn_impl="sparse")
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadAttention(8, 2, dropout=0.1, attn_impl="flash")
    MultiHeadAttention(8, 2, dropout=0.1, attn_impl="dense")                         # dense keeps its dropout
    layer = MultiHeadAttention(8, 2, attn_impl="flash")
    x = Tensor(np.zeros((1, 3, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="not both"):
        layer(x, x, x, attn_mask=dev(np.ones((3, 3), dtype=bool)), is_causal=True)


def test_mha_rejects_a_bad_block_size_at_construction():
    from minattn import MultiHeadAttention
    with pytest.raises(ValueError, match="block_size"):
        MultiHeadAttention(8, 2, attn_impl="flash", block_size=0)
