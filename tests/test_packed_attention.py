"""PackedSelfAttentionFunction (minattn/fused/packed_attention.py) and MultiHeadAttention's packed self-attention path.

  (a) the Function, in float64, for no mask, a causal boolean mask (1, 1, L, L), a float bias (B, h, L, L) with -inf
      entries, a fixed dropout multiplier, a fully masked query row, and all of them at once, also with size-1 axes:
      gradcheck; fused = ``packed_self_attention_reference`` in value and in the gradient of qkv to 1e-10; its output
      and attention weights = a per-head NumPy computation on slices of qkv (tests/numpy_reference.py); a fully masked
      query row gives a zero output row, a zero gradient to its q and no NaN; ``split_heads`` gives views of qkv in
      the [Q | K | V] layout, ``join_heads`` puts the heads side by side;
  (b) MultiHeadAttention: the packed path (query is key is value) = the three-product path, forced either by a key
      that is another Tensor with the same data or by ``_packs`` monkeypatched to False: output, attention_weights,
      every parameter's gradient, the input's gradient (summed over both tensors) and the random stream after the
      call — with valid_lens, is_causal, attn_mask, ALiBi, no biases, a sliding window, eval, and training with
      dropout (same seed: same draws, same outputs); float32 stays float32; gradcheck through the packed path;
  (c) ``_packs`` is False for cross-attention, share_qk, GQA, qk_norm and rope, and those layers never take the packed
      path; neither does a call with a KVCache (whose prefill equals the packed forward) nor attn_impl='flash' (still
      equal to dense, which does take it);
  (d) GPT: logits and every parameter's gradient equal with and without the packed path (every block takes it).
"""
import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck, manual_seed
from minattn import GPT, KVCache, Linear, MultiHeadAttention, no_grad
from minattn import functional as F
from minattn.fused.packed_attention import (PackedSelfAttentionFunction, join_heads, packed_self_attention_reference,
                                            split_heads)
from tests import numpy_reference as ref
from tests.conftest import host, mha_dense_and_flash, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)
AGREE = dict(rtol=1e-10, atol=1e-10)
FLOAT32 = dict(rtol=1e-5, atol=1e-6)


def dev(a):
    """A host array moved to the backend, or None."""
    return None if a is None else backend.asarray(a)


# ---------------------------------------------------------------------------------------------------------------------
# (a) the Function
# ---------------------------------------------------------------------------------------------------------------------
FUNCTION_CASES = ["no mask", "causal bool mask (1, 1, L, L)", "float bias (B, h, L, L) with -inf", "dropout_mask",
                  "fully masked query row", "all at once, scale 0.7"]
SHAPES = {"B=2, L=3, h=2, d=2": (2, 3, 2, 2), "size-1 axes: B=1, L=1, h=1, d=1": (1, 1, 1, 1),
          "B=1, L=4, h=3, d=1": (1, 4, 3, 1)}


def _function_case(name, rng, batch=2, length=3, heads=2, head_dim=2):
    """(qkv (B, L, 3·h·d) host array, heads, keyword arguments as host arrays) for a named case. A fully masked row is
    query L // 2 of the last sequence, in every head."""
    full = (batch, heads, length, length)
    kw = dict(scale=1 / np.sqrt(head_dim))
    if name in ("causal bool mask (1, 1, L, L)", "all at once, scale 0.7"):
        kw["mask"] = np.tril(np.ones((length, length), dtype=bool))[None, None]
    if name in ("float bias (B, h, L, L) with -inf", "all at once, scale 0.7"):
        bias = rng.standard_normal(full)
        bias[..., 1:][rng.random(bias[..., 1:].shape) < 0.3] = -np.inf        # key 0 stays finite: no dead row
        kw["bias"] = bias
    if name in ("dropout_mask", "all at once, scale 0.7"):
        kw["dropout_mask"] = (rng.random(full) >= 0.3) / 0.7                   # 0 or 1 / (1 − p)
    if name == "fully masked query row":
        mask = np.ones((batch, 1, length, length), dtype=bool)
        mask[-1, 0, length // 2] = False                                       # this query sees no key
        kw["mask"] = mask
    if name == "all at once, scale 0.7":
        kw["scale"] = 0.7
    if name not in FUNCTION_CASES:
        raise KeyError(name)
    return rng.standard_normal((batch, length, 3 * heads * head_dim)), heads, kw


def _on_device(kw):
    return {key: (dev(value) if isinstance(value, np.ndarray) else value) for key, value in kw.items()}


def numpy_packed(qkv, heads, mask=None, bias=None, scale=None, dropout_mask=None):
    """Per-head attention in NumPy: head i's q, k and v are the features [i·d, (i+1)·d) of the first, second and
    third E = h·d features of qkv; the heads' outputs side by side. Returns (out (B, L, E), weights (B, h, L, L))."""
    batch, length, features = qkv.shape
    e = features // 3
    d = e // heads
    full = (batch, heads, length, length)

    def head(a, i):
        return None if a is None else np.broadcast_to(a, full)[:, i]

    outs, weights = [], []
    for i in range(heads):
        cols = slice(i * d, (i + 1) * d)
        q, k, v = qkv[..., :e][..., cols], qkv[..., e:2 * e][..., cols], qkv[..., 2 * e:][..., cols]
        out_i, w_i = ref.attention(q, k, v, mask=head(mask, i), bias=head(bias, i), scale=scale,
                                   dropout_mask=head(dropout_mask, i))
        outs.append(out_i)
        weights.append(w_i)
    return np.concatenate(outs, axis=-1), np.stack(weights, axis=1)


def _fused(heads, kw):
    return lambda x: PackedSelfAttentionFunction.apply(x, num_heads=heads, **kw)


def _composed(heads, kw):
    return lambda x: packed_self_attention_reference(x, heads, **kw)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("case", FUNCTION_CASES)
def test_function_gradcheck(rng, case, shape):
    qkv, heads, kw = _function_case(case, rng, *SHAPES[shape])
    assert gradcheck(_fused(heads, _on_device(kw)), [t64(qkv)])


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("case", FUNCTION_CASES)
def test_function_equals_reference_and_per_head_numpy(rng, case, shape):
    qkv, heads, kw = _function_case(case, rng, *SHAPES[shape])
    kw_d = _on_device(kw)
    x_f, x_c = t64(qkv), t64(qkv)
    out_f, ctx = PackedSelfAttentionFunction.apply_with_ctx(x_f, num_heads=heads, **kw_d)
    out_c = packed_self_attention_reference(x_c, heads, **kw_d)
    assert out_f.shape == out_c.shape == qkv.shape[:2] + (qkv.shape[2] // 3,) and out_f.dtype == np.float64
    np.testing.assert_allclose(host(out_f), host(out_c), **AGREE)
    with ref.strict_floats():
        expected, expected_w = numpy_packed(qkv, heads, **kw)
    np.testing.assert_allclose(host(out_f), expected, **TIGHT)
    np.testing.assert_allclose(host(ctx.attention_weights), expected_w, **TIGHT)   # (B, h, L, L), before dropout
    w = rng.standard_normal(out_f.shape)
    out_f.backward(dev(w))
    out_c.backward(dev(w))
    assert host(x_f.grad).shape == qkv.shape and np.isfinite(host(x_f.grad)).all()
    np.testing.assert_allclose(host(x_f.grad), host(x_c.grad), **AGREE)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_function_fully_masked_query_row(rng, shape):
    """The query that sees no key: output row 0 in every head, weights 0, no NaN anywhere, and no gradient reaches
    its q (nothing depends on it); the gradient of every other entry stays finite."""
    qkv, heads, kw = _function_case("fully masked query row", rng, *SHAPES[shape])
    batch, length, features = qkv.shape
    x = t64(qkv)
    out, ctx = PackedSelfAttentionFunction.apply_with_ctx(x, num_heads=heads, **_on_device(kw))
    out_h, row = host(out), length // 2
    assert np.isfinite(out_h).all()
    np.testing.assert_array_equal(out_h[-1, row], 0.0)
    np.testing.assert_array_equal(host(ctx.attention_weights)[-1, :, row], 0.0)
    out.backward(dev(rng.standard_normal(out.shape)))
    grad = host(x.grad)
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[-1, row, :features // 3], 0.0)           # dQ of that query, every head


def test_function_large_logits_stay_finite(rng):
    qkv, heads, kw = _function_case("causal bool mask (1, 1, L, L)", rng)
    qkv = qkv * 40.0                                                           # scores of order 1e3
    kw_d = _on_device(kw)
    x_f, x_c = t64(qkv), t64(qkv)
    out_f, out_c = _fused(heads, kw_d)(x_f), _composed(heads, kw_d)(x_c)
    assert np.isfinite(host(out_f)).all()
    np.testing.assert_allclose(host(out_f), numpy_packed(qkv, heads, **kw)[0], rtol=1e-10, atol=1e-9)
    w = rng.standard_normal(out_f.shape)
    out_f.backward(dev(w))
    out_c.backward(dev(w))
    assert np.isfinite(host(x_f.grad)).all()
    np.testing.assert_allclose(host(x_f.grad), host(x_c.grad), rtol=1e-10, atol=1e-8)


def test_split_heads_are_views_in_the_packed_layout(rng):
    """Q, K, V (B, h, L, d) are the thirds of qkv's features, head i the features [i·d, (i+1)·d) of each third; on
    NumPy they are views (writing through them writes qkv); join_heads puts the heads back side by side."""
    batch, length, heads, d = 2, 3, 3, 2
    qkv_h = rng.standard_normal((batch, length, 3 * heads * d))
    qkv = dev(qkv_h)
    parts = split_heads(qkv, heads)
    e = heads * d
    for n, part in enumerate(parts):
        assert part.shape == (batch, heads, length, d)
        for i in range(heads):
            np.testing.assert_array_equal(host(part)[:, i], qkv_h[..., n * e + i * d:n * e + (i + 1) * d])
        np.testing.assert_array_equal(host(join_heads(part)), qkv_h[..., n * e:(n + 1) * e])
    if backend.BACKEND == "numpy":
        assert all(np.shares_memory(part, qkv) for part in parts)
        parts[2][1, 2, 0, 1] = 123.0                                           # V of head 2, batch 1, query 0
        assert qkv[1, 0, 2 * e + 2 * d + 1] == 123.0


def test_function_gradient_of_a_strided_qkv(rng):
    """qkv that is not C-contiguous (a swapaxes view): the same values and gradient as a contiguous copy."""
    base = rng.standard_normal((4, 2, 12))                                     # (L, B, 3·h·d)
    strided = Tensor(dev(base).swapaxes(0, 1), requires_grad=True)
    contiguous = t64(base.swapaxes(0, 1))
    w = dev(rng.standard_normal((2, 4, 4)))
    outs = [PackedSelfAttentionFunction.apply(x, num_heads=2, scale=0.5) for x in (strided, contiguous)]
    for out in outs:
        out.backward(w)
    np.testing.assert_allclose(host(outs[0]), host(outs[1]), **TIGHT)
    np.testing.assert_allclose(host(strided.grad), host(contiguous.grad), **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# (b) MultiHeadAttention: packed path = three-product path
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def packed_calls(monkeypatch):
    """A list that receives the layer of every call of ``MultiHeadAttention._packed_self_attention``."""
    calls = []
    real = MultiHeadAttention._packed_self_attention

    def spy(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MultiHeadAttention, "_packed_self_attention", spy)
    return calls


BATCH, LENGTH, EMBED, HEADS = 2, 5, 8, 2


def _bool_mask(rng):
    mask = rng.random((BATCH, HEADS, LENGTH, LENGTH)) > 0.4
    mask[..., 0] = True
    return dev(mask)


def _float_mask(rng):
    bias = rng.standard_normal((LENGTH, LENGTH))
    bias[:, 1:][rng.random((LENGTH, LENGTH - 1)) < 0.3] = -np.inf
    bias[3, :] = -np.inf                                                       # query 3 sees no key
    return dev(bias)


MHA_CASES = {          # name → (layer options, call keywords from rng, training)
    "no mask": (dict(), lambda rng: dict(), False),
    "is_causal": (dict(), lambda rng: dict(is_causal=True), False),
    "valid_lens (B,)": (dict(), lambda rng: dict(valid_lens=dev(np.array([5, 2]))), False),
    "valid_lens (B, L) with a 0": (dict(), lambda rng: dict(valid_lens=dev(np.array([[1, 2, 3, 4, 5],
                                                                                     [5, 0, 2, 1, 3]]))), False),
    "bool attn_mask (B, h, L, L)": (dict(), lambda rng: dict(attn_mask=_bool_mask(rng)), False),
    "float attn_mask (L, L) with -inf": (dict(), lambda rng: dict(attn_mask=_float_mask(rng)), False),
    "alibi": (dict(alibi=True), lambda rng: dict(), False),
    "alibi, is_causal, valid_lens": (dict(alibi=True),
                                     lambda rng: dict(is_causal=True, valid_lens=dev(np.array([4, 5]))), False),
    "bias=False, is_causal": (dict(bias=False), lambda rng: dict(is_causal=True), False),
    "window=2": (dict(window=2), lambda rng: dict(is_causal=True), False),
    "dropout 0.3, eval": (dict(dropout=0.3), lambda rng: dict(is_causal=True), False),
    "dropout 0.3, training": (dict(dropout=0.3), lambda rng: dict(), True),
    "dropout 0.3, training, is_causal, valid_lens": (dict(dropout=0.3),
                                                     lambda rng: dict(is_causal=True, valid_lens=dev(np.array([3, 5]))),
                                                     True),
}
PATHS = ["two tensors", "_packs False"]


def _run_mha(layer, x, call, w, path, seed=11):
    """Forward and backward (cotangent w) of ``layer`` on host x as self-attention, after ``manual_seed(seed)``, by
    ``path``: "packed" (one Tensor for query, key and value), "two tensors" (key and value another Tensor with x's
    data: the three-product path; x's gradient is the sum of both tensors') or "_packs False" (one Tensor, and
    ``MultiHeadAttention._packs`` monkeypatched to False). Returns a dict of host arrays: out, weights, x_grad,
    params (name → gradient), next_draw (the next uniform numbers of the dropout stream)."""
    layer.zero_grad()
    manual_seed(seed)
    query = Tensor(dev(x), requires_grad=True)
    key = Tensor(dev(x.copy()), requires_grad=True) if path == "two tensors" else query
    with pytest.MonkeyPatch.context() as patch:
        if path == "_packs False":
            patch.setattr(MultiHeadAttention, "_packs", lambda self, q, k, v: False)
        elif path != "two tensors":
            assert path == "packed" and layer._packs(query, key, key)
        out = layer(query, key, key, **call)
    out.backward(dev(np.asarray(w, dtype=x.dtype)))
    x_grad = host(query.grad) + (host(key.grad) if key is not query else 0)
    return dict(out=host(out), weights=host(layer.attention_weights), x_grad=x_grad,
                params={name: host(p.grad) for name, p in layer.named_parameters()},
                next_draw=host(backend.random_uniform((8,), backend.float64)))


def _assert_same_run(got, expected, **tolerance):
    tolerance = tolerance or TIGHT
    for key in ("out", "weights", "x_grad"):
        assert got[key].shape == expected[key].shape and got[key].dtype == expected[key].dtype, key
        np.testing.assert_allclose(got[key], expected[key], **tolerance, err_msg=key)
    assert got["params"].keys() == expected["params"].keys()
    for name, grad in got["params"].items():
        assert grad.dtype == expected["params"][name].dtype, name
        np.testing.assert_allclose(grad, expected["params"][name], **tolerance, err_msg=name)
    np.testing.assert_array_equal(got["next_draw"], expected["next_draw"])      # as many random draws taken


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", list(MHA_CASES))
def test_mha_packed_path_equals_three_products(rng, packed_calls, case, path):
    options, call_for, training = MHA_CASES[case]
    manual_seed(1)
    layer = MultiHeadAttention(EMBED, HEADS, dtype="float64", **options).train(training)
    x = rng.standard_normal((BATCH, LENGTH, EMBED))
    call = call_for(rng)
    w = rng.standard_normal((BATCH, LENGTH, EMBED))
    packed = _run_mha(layer, x, call, w, "packed")
    assert packed_calls == [layer]
    three = _run_mha(layer, x, call, w, path)
    assert packed_calls == [layer]                                             # the three-product path really ran
    assert np.isfinite(packed["out"]).all() and np.isfinite(packed["x_grad"]).all()
    assert packed["weights"].shape == (BATCH, HEADS, LENGTH, LENGTH)
    _assert_same_run(packed, three)
    if training:                                                               # dropout really dropped something
        eval_out = _run_mha(layer.eval(), x, call, w, "packed")["out"]
        assert not np.allclose(packed["out"], eval_out)
        again = _run_mha(layer.train(), x, call, w, "packed")                  # same seed, same draws
        np.testing.assert_array_equal(again["out"], packed["out"])
        different = _run_mha(layer, x, call, w, "packed", seed=12)
        assert not np.allclose(different["out"], packed["out"])


@pytest.mark.parametrize("batch, length", [(BATCH, 0), (0, LENGTH)])
def test_mha_packed_path_with_an_empty_batch_or_length(rng, packed_calls, batch, length):
    """No sequence, or sequences of no token: forward and backward run (the backward once could not infer a -1 axis
    of an empty gradient), with the three-product path's empty results and zero parameter gradients."""
    manual_seed(1)
    layer = MultiHeadAttention(EMBED, HEADS, dtype="float64")
    x, w = np.zeros((batch, length, EMBED)), np.zeros((batch, length, EMBED))
    packed = _run_mha(layer, x, {}, w, "packed")
    assert packed_calls == [layer] and packed["out"].shape == (batch, length, EMBED)
    _assert_same_run(packed, _run_mha(layer, x, {}, w, "two tensors"))
    assert all(not grad.any() for grad in packed["params"].values())


def test_mha_packed_fully_masked_query_gets_only_output_bias(rng, packed_calls):
    manual_seed(2)
    layer = MultiHeadAttention(EMBED, HEADS, dtype="float64")
    x = t64(rng.standard_normal((BATCH, LENGTH, EMBED)))
    out = layer(x, x, x, valid_lens=dev(np.array([[1, 2, 3, 4, 5], [5, 0, 2, 1, 3]])))
    assert packed_calls == [layer]
    np.testing.assert_allclose(host(out)[1, 1], host(layer.W_o.bias), **TIGHT)
    np.testing.assert_array_equal(host(layer.attention_weights)[1, :, 1], 0.0)


def test_mha_packed_attention_weights_are_detached_and_read_only(rng, packed_calls):
    manual_seed(2)
    layer = MultiHeadAttention(EMBED, HEADS, dtype="float64")
    x = t64(rng.standard_normal((BATCH, LENGTH, EMBED)))
    layer(x, x, x, is_causal=True).sum().backward()
    weights = layer.attention_weights
    assert packed_calls == [layer] and not weights.requires_grad
    np.testing.assert_allclose(host(weights).sum(axis=-1), 1.0, **TIGHT)
    np.testing.assert_array_equal(np.triu(host(weights), k=1), 0.0)
    if backend.BACKEND == "numpy":
        with pytest.raises(ValueError):
            weights.data[0, 0, 0, 0] = 1.0


@pytest.mark.parametrize("path", PATHS)
def test_mha_packed_path_keeps_float32(rng, packed_calls, path):
    """float32 parameters and input: the packed path's output, weights and every gradient are float32 (no upcast on
    the way) and agree with the three-product path; with dropout in training, from the same draws."""
    manual_seed(3)
    layer = MultiHeadAttention(EMBED, HEADS, dropout=0.2)                      # float32 by default
    assert layer.W_q.weight.dtype == np.float32
    x = rng.standard_normal((BATCH, LENGTH, EMBED)).astype(np.float32)
    w = rng.standard_normal((BATCH, LENGTH, EMBED)).astype(np.float32)
    call = dict(is_causal=True, valid_lens=dev(np.array([5, 3])))
    packed = _run_mha(layer, x, call, w, "packed")
    three = _run_mha(layer, x, call, w, path)
    assert len(packed_calls) == 1
    for key in ("out", "weights", "x_grad"):
        assert packed[key].dtype == np.float32, key
    assert all(g.dtype == np.float32 for g in packed["params"].values())
    _assert_same_run(packed, three, **FLOAT32)


@pytest.mark.parametrize("options, call", [
    (dict(), dict()),
    (dict(), dict(valid_lens=np.array([[1, 0, 2], [2, 1, 3]]))),
    (dict(alibi=True, bias=False), dict(is_causal=True)),
], ids=["no mask", "valid_lens (B, L) with a 0", "alibi, no biases, is_causal"])
def test_mha_packed_path_gradcheck(rng, packed_calls, options, call):
    manual_seed(4)
    layer = MultiHeadAttention(4, 2, dtype="float64", **options)
    call = _on_device(call)
    x = t64(rng.standard_normal((2, 3, 4)))
    assert gradcheck(lambda x_, *ps: layer(x_, x_, x_, **call), [x] + list(layer.parameters()))
    assert packed_calls and all(c is layer for c in packed_calls)


# ---------------------------------------------------------------------------------------------------------------------
# (c) when the packed path is not taken
# ---------------------------------------------------------------------------------------------------------------------
PACKS = {              # name → (layer options, packs)
    "plain": (dict(), True),
    "num_kv_heads = num_heads": (dict(num_kv_heads=4), True),
    "alibi, no biases, window": (dict(alibi=True, bias=False, window=3), True),
    "share_qk": (dict(share_qk=True), False),
    "GQA: num_kv_heads=2": (dict(num_kv_heads=2), False),
    "MQA: num_kv_heads=1": (dict(num_kv_heads=1), False),
    "qk_norm": (dict(qk_norm=True), False),
    "rope": (dict(rope=True), False),
}


@pytest.mark.parametrize("case", list(PACKS))
def test_packs_only_for_plain_self_attention(rng, packed_calls, case):
    options, packs = PACKS[case]
    manual_seed(5)
    layer = MultiHeadAttention(8, 4, dtype="float64", **options)
    x = t64(rng.standard_normal((2, 5, 8)))
    twin = t64(host(x))                                                        # equal data, another Tensor
    assert layer._packs(x, x, x) is packs
    assert not layer._packs(x, twin, twin) and not layer._packs(x, x, twin) and not layer._packs(x, twin, x)
    out = layer(x, x, x, is_causal=True)
    assert packed_calls == ([layer] if packs else [])
    out.sum().backward()
    assert np.isfinite(host(out)).all() and np.isfinite(host(x.grad)).all()
    layer(x, twin, twin, is_causal=True)                                       # equal data is not the same tensor
    assert packed_calls == ([layer] if packs else [])


class _Shifted(Linear):
    """A Linear whose forward adds 1: a module a user put in place of a projection."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + 1.0


def _replace_w_v(layer):
    shifted = _Shifted(8, 8, dtype="float64")
    shifted.weight, shifted.bias = layer.W_v.weight, layer.W_v.bias
    layer.W_v = shifted


def _patch_w_q_forward(layer):
    real = layer.W_q.forward
    layer.W_q.forward = lambda x: real(x) * 2.0                              # set on the instance


def _give_w_v_a_bias(layer):                                                  # a layer made with bias=False
    layer.W_v = Linear(8, 8, dtype="float64")


def _drop_w_k_bias(layer):                                                    # a layer made with biases
    layer.W_k = Linear(8, 8, bias=False, dtype="float64")


def _w_v_in_float32(layer):                                                        # a float32 W_v in a float64 layer
    layer.W_v = Linear(8, 8, dtype="float32")


REPLACED = {"W_v a Linear subclass": (dict(), _replace_w_v),
            "W_q.forward set on the instance": (dict(), _patch_w_q_forward),
            "bias=False, then a W_v with a bias": (dict(bias=False), _give_w_v_a_bias),
            "biases, then a W_k without": (dict(), _drop_w_k_bias)}


@pytest.mark.parametrize("case", list(REPLACED))
def test_replaced_projections_never_pack_and_keep_their_forward(rng, packed_calls, case):
    """A projection put in place of W_q, W_k or W_v (another kind, another forward, a bias where the others have none
    or the reverse) turns the packed path off: the call equals the three-product path, the new forward included."""
    options, replace = REPLACED[case]
    manual_seed(7)
    layer = MultiHeadAttention(8, 2, dtype="float64", **options)
    replace(layer)
    x = t64(rng.standard_normal((2, 5, 8)))
    assert not layer._packs(x, x, x)
    out = layer(x, x, x, is_causal=True)
    assert packed_calls == []
    twin = t64(host(x))
    np.testing.assert_array_equal(host(out), host(layer(x, twin, twin, is_causal=True)))


def test_projection_of_another_dtype_never_packs(rng):
    layer = MultiHeadAttention(8, 2, dtype="float64")
    _w_v_in_float32(layer)
    x = t64(rng.standard_normal((2, 5, 8)))
    assert not layer._packs(x, x, x)


def test_cross_attention_never_packs(rng, packed_calls):
    manual_seed(6)
    layer = MultiHeadAttention(8, 2, kdim=5, vdim=3, dtype="float64")
    q, k, v = (t64(rng.standard_normal(shape)) for shape in ((2, 4, 8), (2, 6, 5), (2, 6, 3)))
    assert not layer._packs(q, k, v)
    layer(q, k, v).sum().backward()
    same_width = MultiHeadAttention(8, 2, dtype="float64")
    memory = t64(rng.standard_normal((2, 6, 8)))
    assert not same_width._packs(q, memory, memory)
    same_width(q, memory, memory)
    assert packed_calls == []


@pytest.mark.parametrize("options", [dict(), dict(alibi=True), dict(window=3)], ids=["plain", "alibi", "window"])
def test_flash_never_packs_and_equals_dense(rng, packed_calls, options):
    """attn_impl='flash' on self-attention keeps its own path; the dense layer (same parameters) takes the packed one,
    and the two agree in output and input gradient (is_causal, float64)."""
    x = rng.standard_normal((2, 7, 8))
    (out_d, grad_d, dense), (out_f, grad_f, flash) = mha_dense_and_flash(x, 8, 2, seed=7, block_size=3, **options)
    assert packed_calls == [dense]
    assert flash.attention_weights is None
    np.testing.assert_allclose(out_f, out_d, **AGREE)
    np.testing.assert_allclose(grad_f, grad_d, **AGREE)


def test_a_cache_never_packs_and_its_prefill_equals_the_packed_forward(rng, packed_calls):
    manual_seed(8)
    layer = MultiHeadAttention(8, 2, dtype="float64").eval()
    x = t64(rng.standard_normal((2, 5, 8)), requires_grad=False)
    with no_grad():
        packed = layer(x, x, x, is_causal=True)
        assert packed_calls == [layer]
        cached = layer(x, x, x, is_causal=True, cache=KVCache(8))
    assert packed_calls == [layer]
    np.testing.assert_allclose(host(cached), host(packed), **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# (d) GPT
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [dict(), dict(positions="alibi", window=3), dict(dropout=0.2)],
                         ids=["learned", "alibi, window", "dropout, training"])
def test_gpt_forward_backward_equal_with_and_without_packing(rng, packed_calls, options):
    vocab, num_layers = 11, 2
    manual_seed(0)
    model = GPT(vocab, 8, embed_dim=8, num_heads=2, num_layers=num_layers, dtype="float64", **options)
    ids, targets = dev(rng.integers(0, vocab, (2, 6))), dev(rng.integers(0, vocab, 12))

    def step():
        model.zero_grad()
        manual_seed(5)
        logits = model(Tensor(ids))
        F.cross_entropy(logits.reshape(-1, vocab), targets).backward()
        return host(logits), {name: host(p.grad) for name, p in model.named_parameters()}

    logits, grads = step()
    assert len(packed_calls) == num_layers
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MultiHeadAttention, "_packs", lambda self, q, k, v: False)
        logits_3, grads_3 = step()
    assert len(packed_calls) == num_layers
    np.testing.assert_allclose(logits, logits_3, **TIGHT)
    assert grads.keys() == grads_3.keys()
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, grads_3[name], **TIGHT, err_msg=name)
