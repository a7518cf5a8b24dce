"""Grouped-query and multi-query attention: h query heads sharing h_kv key/value heads.

  (a) ``scaled_dot_product_attention(enable_gqa=True)`` = attention with K and V repeated per query head (Llama's
      ``repeat_kv`` order: query head i uses key/value head i // (h / h_kv)), in value and in every gradient — the
      repeated path's gradients come from autograd through getitem, which adds the repeats' gradients up; float64
      gradcheck; PyTorch's ``enable_gqa=True`` when torch is installed;
  (b) ``MultiHeadAttention(num_kv_heads=...)``: a NumPy transcription per head; h_kv = h is plain MHA; the flash path
      equals the dense one; W_k and W_v project to h_kv·d_h;
  (c) errors: head counts that do not divide, share_qk with fewer key heads, heads that differ without enable_gqa.
"""
import importlib.util

import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck, ops
from minattn import MultiHeadAttention, manual_seed
from minattn import functional as F
from minattn.fused.attention import attention_reference
from tests.conftest import host, mha_dense_and_flash, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)
CASES = [(8, 2), (8, 1), (6, 3), (4, 4)]        # (h, h_kv): GQA, MQA, an odd group, plain MHA


def repeated(x, heads):
    """x (..., h_kv, S, ·) with each key/value head repeated for its h / h_kv query heads, through getitem (so
    autograd adds the repeats' gradients): head i is x's head i // (h / h_kv)."""
    group = heads // x.shape[-3]
    index = backend.asarray(np.arange(heads) // group)
    return ops.getitem(x, (Ellipsis, index, slice(None), slice(None)))


def _inputs(rng, heads, kv_heads, with_mask):
    q = rng.standard_normal((2, heads, 5, 4))
    k, v = rng.standard_normal((2, kv_heads, 7, 4)), rng.standard_normal((2, kv_heads, 7, 3))
    mask = None
    if with_mask:
        mask = rng.random((2, heads, 5, 7)) > 0.4
        mask[0, 0, 1] = False                                             # one fully masked row
    return q, k, v, mask


@pytest.mark.parametrize("heads, kv_heads", CASES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_gqa_equals_attention_with_repeated_keys_and_values(rng, heads, kv_heads, with_mask):
    """Values and the gradients of q, k, v equal those of the same attention on K, V repeated per query head."""
    q, k, v, mask = _inputs(rng, heads, kv_heads, with_mask)
    cotangent = backend.asarray(rng.standard_normal((2, heads, 5, 3)))
    grouped = [t64(a) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*grouped, attn_mask=None if mask is None else backend.asarray(mask),
                                         enable_gqa=True)
    out.backward(cotangent)
    plain = [t64(a) for a in (q, k, v)]
    expected = attention_reference(plain[0], repeated(plain[1], heads), repeated(plain[2], heads),
                                   mask=None if mask is None else backend.asarray(mask), scale=1 / np.sqrt(4))
    expected.backward(cotangent)
    np.testing.assert_allclose(host(out), host(expected), **TIGHT)
    for name, a, b in zip("qkv", grouped, plain):
        np.testing.assert_allclose(host(a.grad), host(b.grad), **TIGHT, err_msg=f"d{name}")
    if with_mask:
        np.testing.assert_array_equal(host(out)[0, 0, 1], 0.0)             # the fully masked row: 0, no NaN


@pytest.mark.parametrize("heads, kv_heads", [(8, 2), (6, 1)])
def test_gqa_gradcheck(rng, heads, kv_heads):
    """float64 gradcheck of q, k, v through the grouped path (K, V broadcast over their group: sum_to's rule)."""
    q, k, v, mask = _inputs(rng, heads, kv_heads, with_mask=True)
    mask = backend.asarray(mask)
    assert gradcheck(lambda *t: F.scaled_dot_product_attention(*t, attn_mask=mask, enable_gqa=True),
                     [t64(a) for a in (q, k, v)])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed (never needed)")
@pytest.mark.parametrize("heads, kv_heads", CASES)
def test_gqa_equals_pytorch_enable_gqa(rng, heads, kv_heads):
    """PyTorch ≥ 2.5's scaled_dot_product_attention(enable_gqa=True): the same output and gradients to 1e-12."""
    import torch
    q, k, v, mask = _inputs(rng, heads, kv_heads, with_mask=True)
    mask[0, 0, 1] = True                          # PyTorch gives NaN for a fully masked row; we give 0 (documented)
    cotangent = rng.standard_normal((2, heads, 5, 3))
    ours = [t64(a) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ours, attn_mask=backend.asarray(mask), enable_gqa=True)
    out.backward(backend.asarray(cotangent))
    theirs = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    expected = torch.nn.functional.scaled_dot_product_attention(*theirs, attn_mask=torch.tensor(mask), enable_gqa=True)
    expected.backward(torch.tensor(cotangent))
    np.testing.assert_allclose(host(out), expected.detach().numpy(), **TIGHT)
    for name, a, b in zip("qkv", ours, theirs):
        np.testing.assert_allclose(host(a.grad), b.grad.numpy(), **TIGHT, err_msg=f"d{name}")


def _numpy_gqa_layer(layer, x):
    """MultiHeadAttention(num_kv_heads) self-attention written out in NumPy: per query head i, key/value head
    i // (h / h_kv), softmax(q kᵀ / √d) v, heads concatenated, W_o."""
    def proj(linear, a):
        return a @ host(linear.weight).T + host(linear.bias)
    h, h_kv, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
    q, k, v = proj(layer.W_q, x), proj(layer.W_k, x), proj(layer.W_v, x)       # (B, L, h·d), (B, L, h_kv·d) ×2
    heads = []
    for i in range(h):
        j = i // (h // h_kv)
        s = q[..., i * d:(i + 1) * d] @ k[..., j * d:(j + 1) * d].transpose(0, 2, 1) / np.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        heads.append((p / p.sum(-1, keepdims=True)) @ v[..., j * d:(j + 1) * d])
    return proj(layer.W_o, np.concatenate(heads, axis=-1))


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 1), (4, 4)])
def test_multi_head_attention_num_kv_heads_equals_the_per_head_loop(rng, heads, kv_heads):
    """MultiHeadAttention(8, h, num_kv_heads=h_kv) in float64 = the per-head NumPy loop; W_k, W_v are (h_kv·d_h, 8);
    the attention weights have every query head: (B, h, L, S)."""
    manual_seed(0)
    layer = MultiHeadAttention(8, heads, num_kv_heads=kv_heads, dtype="float64")
    assert layer.W_k.weight.shape == layer.W_v.weight.shape == (kv_heads * 8 // heads, 8)
    x = rng.standard_normal((2, 5, 8))
    out = layer(t64(x), t64(x), t64(x))
    np.testing.assert_allclose(host(out), _numpy_gqa_layer(layer, x), **TIGHT)
    assert layer.attention_weights.shape == (2, heads, 5, 5)


def test_num_kv_heads_equal_to_num_heads_is_plain_multi_head_attention(rng):
    """num_kv_heads = num_heads draws the same parameters in the same order and computes the same thing."""
    x = t64(rng.standard_normal((2, 5, 8)))
    manual_seed(3)
    plain = MultiHeadAttention(8, 4, dtype="float64")
    manual_seed(3)
    same = MultiHeadAttention(8, 4, num_kv_heads=4, dtype="float64")
    np.testing.assert_array_equal(host(plain(x, x, x)), host(same(x, x, x)))


def test_gqa_flash_path_equals_dense_path(rng):
    """attn_impl='flash' with num_kv_heads groups the heads the same way: output and gradients as the dense path."""
    runs = mha_dense_and_flash(rng.standard_normal((2, 9, 8)), 8, 4, seed=1, num_kv_heads=2, block_size=4)
    grads = [(out, x_grad, host(layer.W_k.weight.grad)) for out, x_grad, layer in runs]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(num_kv_heads=3), ValueError, r"num_kv_heads must be a divisor of num_heads=4, got 3"),
    (dict(num_kv_heads=0), ValueError, r"num_kv_heads must be an int >= 1, got 0"),
    (dict(num_kv_heads=2.0), TypeError, r"num_kv_heads must be an int >= 1, got 2.0"),
    (dict(num_kv_heads=2, share_qk=True), ValueError, r"num_kv_heads must be num_heads=4 with share_qk \(W_k is "
                                                      r"W_q\), got 2"),
])
def test_bad_num_kv_heads_raise_before_any_parameter_is_drawn(kwargs, error, message):
    """ValueError naming the numbers (TypeError for a float); the parameter stream is untouched (the next layer
    draws the same weights)."""
    manual_seed(5)
    with pytest.raises(error, match=message):
        MultiHeadAttention(8, 4, **kwargs)
    after_error = host(MultiHeadAttention(8, 4).W_q.weight)
    manual_seed(5)
    np.testing.assert_array_equal(after_error, host(MultiHeadAttention(8, 4).W_q.weight))


def test_enable_gqa_errors(rng):
    """Heads that do not divide, or key and value with different head counts: ValueError naming the shapes; heads
    that differ without enable_gqa do not broadcast (as in PyTorch)."""
    q = Tensor(rng.standard_normal((2, 6, 5, 4)))
    k, v = Tensor(rng.standard_normal((2, 4, 7, 4))), Tensor(rng.standard_normal((2, 4, 7, 3)))
    with pytest.raises(ValueError, match=r"key, value must be one number of heads dividing query's 6 \(enable_gqa\)"):
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    with pytest.raises(ValueError, match=r"key, value must be one number of heads dividing query's 6"):
        F.scaled_dot_product_attention(q, Tensor(rng.standard_normal((2, 2, 7, 4))), v, enable_gqa=True)
    with pytest.raises(ValueError, match=r"query, key, value must be batch axes that broadcast together"):
        F.scaled_dot_product_attention(q, Tensor(rng.standard_normal((2, 2, 7, 4))),
                                       Tensor(rng.standard_normal((2, 2, 7, 3))))
    with pytest.raises(ValueError, match=r"query must be \(\.\.\., heads, length, features\)"):
        F.scaled_dot_product_attention(Tensor(rng.standard_normal((5, 4))), Tensor(rng.standard_normal((7, 4))),
                                       Tensor(rng.standard_normal((7, 3))), enable_gqa=True)
