"""MultiHeadAttention (minattn/attention.py) against an independent per-head NumPy implementation.

Checks: the d2l example's shapes and masked weights; output and weights equal a loop over heads in NumPy (slices of
W_q / W_k / W_v, concatenation, W_o) with valid_lens (1-D, 2-D), is_causal, a float attn_mask and kdim/vdim
cross-attention; gradcheck of the whole layer w.r.t. query, key, value and every parameter; permutation equivariance
of self-attention; argument errors; and, where PyTorch is installed, equality with nn.MultiheadAttention.
"""
import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck, manual_seed
from minattn import MultiHeadAttention
from tests import numpy_reference as ref
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)


def params_of(layer):
    return {name: host(p) for name, p in layer.named_parameters()}


def keys_mask(batch, num_q, num_k, valid_lens=None, is_causal=False):
    """bool (B, L, S), True = take part, built key by key from d2l valid_lens and the causal rule j <= i."""
    mask = np.ones((batch, num_q, num_k), dtype=bool)
    for b in range(batch):
        for i in range(num_q):
            for j in range(num_k):
                if valid_lens is not None:
                    n = valid_lens[b] if np.ndim(valid_lens) == 1 else valid_lens[b][i]
                    mask[b, i, j] &= j < n
                if is_causal:
                    mask[b, i, j] &= j <= i
    return mask


def numpy_mha(layer, query, key, value, mask=None, bias=None):
    """Per-head multi-head attention in NumPy: head_i = Attention(Q W_q^(i), K W_k^(i), V W_v^(i)), concat, W_o.

    ``mask``: None or bool broadcastable to (B, h, L, S), True = take part; ``bias``: None or float (L, S).
    """
    p = params_of(layer)
    dh = layer.head_dim
    if mask is not None:
        mask = np.broadcast_to(mask, (query.shape[0], layer.num_heads, query.shape[1], key.shape[1]))
    heads, weights = [], []
    for i in range(layer.num_heads):
        rows = slice(i * dh, (i + 1) * dh)        # head i's rows of each projection matrix (y = x Wᵀ + b)
        q = query @ p["W_q.weight"][rows].T + p["W_q.bias"][rows]
        k = key @ p["W_k.weight"][rows].T + p["W_k.bias"][rows]
        v = value @ p["W_v.weight"][rows].T + p["W_v.bias"][rows]
        out_i, w_i = ref.attention(q, k, v, mask=None if mask is None else mask[:, i], bias=bias)   # scale 1/√d_h
        heads.append(out_i)
        weights.append(w_i)
    concat = np.concatenate(heads, axis=-1)                          # (B, L, E)
    return concat @ p["W_o.weight"].T + p["W_o.bias"], np.stack(weights, axis=1)   # (B, L, E), (B, h, L, S)


def test_d2l_example_shapes_and_masked_weights(rng):
    manual_seed(0)
    layer = MultiHeadAttention(100, 5)
    layer.eval()
    queries = Tensor(rng.standard_normal((2, 4, 100)), dtype="float32")
    keys = Tensor(rng.standard_normal((2, 6, 100)), dtype="float32")
    out = layer(queries, keys, keys, valid_lens=backend.asarray(np.array([3, 2])))
    assert out.shape == (2, 4, 100) and out.dtype == np.float32
    w = host(layer.attention_weights)
    assert w.shape == (2, 5, 4, 6)
    assert np.all(w[0, :, :, 3:] == 0) and np.all(w[1, :, :, 2:] == 0)
    assert np.all(w[0, :, :, :3] > 0) and np.all(w[1, :, :, :2] > 0)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-6)


MHA_CASES = {
    "no mask": dict(),
    "valid_lens (B,)": dict(valid_lens=np.array([4, 2])),
    "valid_lens (B, L) with a 0": dict(valid_lens=np.array([[1, 2, 3], [5, 0, 4]])),
    "is_causal": dict(is_causal=True),
    "bool attn_mask (B, h, L, S)": dict(attn_mask="bool"),
    "float attn_mask (L, S)": dict(attn_mask="float"),
    "valid_lens and bool attn_mask (L, S)": dict(valid_lens=np.array([3, 5]), attn_mask="bool2d"),
}


def _mha_inputs(rng, case, embed_dim=6, heads=3, num_q=3, num_k=5):
    """(query, key/value, layer kwargs, NumPy mask (B, h, L, S) or None, NumPy bias or None) for a named case."""
    kw = dict(MHA_CASES[case])
    numpy_mask = np.ones((2, heads, num_q, num_k), dtype=bool)
    bias = None
    if kw.get("attn_mask") in ("bool", "bool2d"):
        m = rng.random((2, heads, num_q, num_k) if kw["attn_mask"] == "bool" else (num_q, num_k)) > 0.3
        m[..., 0] = True
        kw["attn_mask"] = backend.asarray(m)
        numpy_mask &= m
    elif kw.get("attn_mask") == "float":
        bias = rng.standard_normal((num_q, num_k))
        kw["attn_mask"] = backend.asarray(bias)
    numpy_mask &= keys_mask(2, num_q, num_k, kw.get("valid_lens"), kw.get("is_causal", False))[:, None]
    if kw.get("valid_lens") is not None:
        kw["valid_lens"] = backend.asarray(kw["valid_lens"])
    q = rng.standard_normal((2, num_q, embed_dim))
    kv = rng.standard_normal((2, num_k, embed_dim))
    return q, kv, kw, numpy_mask, bias


@pytest.mark.parametrize("case", list(MHA_CASES))
def test_mha_equals_per_head_numpy(rng, case):
    manual_seed(1)
    layer = MultiHeadAttention(6, 3, dtype="float64")
    q, kv, kw, mask, bias = _mha_inputs(rng, case)
    with ref.strict_floats():
        out = layer(t64(q), t64(kv), t64(kv), **kw)
    expected, expected_w = numpy_mha(layer, q, kv, kv, mask=mask, bias=bias)
    assert out.dtype == np.float64
    np.testing.assert_allclose(host(out), expected, **TIGHT)
    np.testing.assert_allclose(host(layer.attention_weights), expected_w, **TIGHT)


def test_mha_fully_masked_query_gets_only_output_bias(rng):
    manual_seed(1)
    layer = MultiHeadAttention(6, 3, dtype="float64")
    q, kv, kw, _, _ = _mha_inputs(rng, "valid_lens (B, L) with a 0")       # query 1 of sequence 1 sees no key
    out = layer(t64(q), t64(kv), t64(kv), **kw)
    np.testing.assert_allclose(host(out)[1, 1], host(layer.W_o.bias), **TIGHT)
    np.testing.assert_array_equal(host(layer.attention_weights)[1, :, 1], 0.0)


def test_mha_cross_attention_kdim_vdim(rng):
    manual_seed(2)
    layer = MultiHeadAttention(8, 2, kdim=5, vdim=3, dtype="float64")
    assert host(layer.W_k.weight).shape == (8, 5) and host(layer.W_v.weight).shape == (8, 3)
    q, k, v = rng.standard_normal((2, 4, 8)), rng.standard_normal((2, 6, 5)), rng.standard_normal((2, 6, 3))
    lens = np.array([6, 3])
    out = layer(t64(q), t64(k), t64(v), valid_lens=backend.asarray(lens))
    assert out.shape == (2, 4, 8)
    expected, expected_w = numpy_mha(layer, q, k, v, mask=keys_mask(2, 4, 6, lens)[:, None])
    np.testing.assert_allclose(host(out), expected, **TIGHT)
    np.testing.assert_allclose(host(layer.attention_weights), expected_w, **TIGHT)


GRADCHECK_MASKS = {
    "valid_lens": lambda: dict(valid_lens=backend.asarray(np.array([2, 1]))),
    "valid_lens (B, L) with a 0": lambda: dict(valid_lens=backend.asarray(np.array([[1, 0, 2], [2, 1, 1]]))),
    "is_causal": lambda: dict(is_causal=True),
}


@pytest.mark.parametrize("masking", list(GRADCHECK_MASKS))
def test_mha_gradcheck_inputs_and_parameters(rng, masking):
    manual_seed(3)
    layer = MultiHeadAttention(4, 2, dtype="float64")
    kw = GRADCHECK_MASKS[masking]()
    q, k, v = (t64(rng.standard_normal(s)) for s in ((2, 3, 4), (2, 2, 4), (2, 2, 4)))
    params = list(layer.parameters())
    assert len(params) == 8
    with ref.strict_floats():
        assert gradcheck(lambda q_, k_, v_, *ps: layer(q_, k_, v_, **kw), [q, k, v] + params)


def test_mha_gradcheck_cross_attention(rng):
    manual_seed(4)
    layer = MultiHeadAttention(4, 2, kdim=3, vdim=2, dtype="float64")
    q, k, v = (t64(rng.standard_normal(s)) for s in ((1, 2, 4), (1, 3, 3), (1, 3, 2)))
    assert gradcheck(lambda q_, k_, v_, *ps: layer(q_, k_, v_), [q, k, v] + list(layer.parameters()))


def test_self_attention_is_permutation_equivariant(rng):
    manual_seed(5)
    layer = MultiHeadAttention(8, 2, dtype="float64")
    x = rng.standard_normal((2, 5, 8))
    perm = np.array([3, 0, 4, 1, 2])
    out = host(layer(t64(x), t64(x), t64(x)))
    out_perm = host(layer(t64(x[:, perm]), t64(x[:, perm]), t64(x[:, perm])))
    np.testing.assert_allclose(out_perm, out[:, perm], **TIGHT)
    # permuting only the key/value positions (together) leaves every query's output unchanged
    out_kv = host(layer(t64(x), t64(x[:, perm]), t64(x[:, perm])))
    np.testing.assert_allclose(out_kv, out, **TIGHT)


def test_mha_dropout_only_in_training(rng):
    manual_seed(6)
    layer = MultiHeadAttention(4, 2, dropout=0.5, dtype="float64")
    x = rng.standard_normal((2, 3, 4))
    layer.eval()
    expected, _ = numpy_mha(layer, x, x, x)
    np.testing.assert_allclose(host(layer(t64(x), t64(x), t64(x))), expected, **TIGHT)
    layer.train()
    assert not np.allclose(host(layer(t64(x), t64(x), t64(x))), expected)


def test_mha_errors(rng):
    with pytest.raises(ValueError) as err:
        MultiHeadAttention(10, 3)
    assert "10" in str(err.value) and "3" in str(err.value)
    with pytest.raises(ValueError):
        MultiHeadAttention(8, 0)
    layer = MultiHeadAttention(4, 2, dtype="float64")
    x, kv = t64(rng.standard_normal((2, 3, 4))), t64(rng.standard_normal((2, 5, 4)))
    causal = backend.asarray(np.ones((3, 5), dtype=bool))
    with pytest.raises(ValueError):
        layer(x, kv, kv, attn_mask=causal, is_causal=True)
    for lens in ([6, 1], [-1, 2], [1, 2, 3]):
        with pytest.raises(ValueError):
            layer(x, kv, kv, valid_lens=backend.asarray(np.array(lens)))
    with pytest.raises(ValueError):                        # feature size is not embed_dim
        layer(t64(rng.standard_normal((2, 3, 5))), kv, kv)
    with pytest.raises(ValueError):                        # not (B, L, E)
        layer(t64(rng.standard_normal((3, 4))), kv, kv)
    with pytest.raises(ValueError):                        # key and value lengths differ
        layer(x, kv, t64(rng.standard_normal((2, 4, 4))))
    with pytest.raises(TypeError):                         # dtype differs from the parameters'
        layer(Tensor(rng.standard_normal((2, 3, 4)), dtype="float32"), kv, kv)
    with pytest.raises(ValueError):                        # attn_mask batch does not broadcast to (B, h, L, S)
        layer(x, kv, kv, attn_mask=backend.asarray(np.ones((3, 2, 3, 5), dtype=bool)))


# ---------------------------------------------------------------------------------------------------------------------
# Against PyTorch (skipped where torch is not installed)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("masking", ["none", "valid_lens", "is_causal"])
@pytest.mark.parametrize("cross", [False, True])
def test_mha_equals_pytorch(rng, masking, cross):
    torch = pytest.importorskip("torch")
    embed_dim, heads, num_q, num_k = 8, 2, 3, 4
    kdim, vdim = (5, 3) if cross else (embed_dim, embed_dim)
    manual_seed(7)
    ours = MultiHeadAttention(embed_dim, heads, kdim=kdim, vdim=vdim, dtype="float64")
    theirs = torch.nn.MultiheadAttention(embed_dim, heads, batch_first=True, kdim=kdim, vdim=vdim,
                                         dtype=torch.float64)
    p = {name: torch.from_numpy(a.copy()) for name, a in params_of(ours).items()}
    with torch.no_grad():
        if cross:
            theirs.q_proj_weight.copy_(p["W_q.weight"])
            theirs.k_proj_weight.copy_(p["W_k.weight"])
            theirs.v_proj_weight.copy_(p["W_v.weight"])
        else:
            theirs.in_proj_weight.copy_(torch.cat([p["W_q.weight"], p["W_k.weight"], p["W_v.weight"]]))
        theirs.in_proj_bias.copy_(torch.cat([p["W_q.bias"], p["W_k.bias"], p["W_v.bias"]]))
        theirs.out_proj.weight.copy_(p["W_o.weight"])
        theirs.out_proj.bias.copy_(p["W_o.bias"])
    q = rng.standard_normal((2, num_q, embed_dim))
    k, v = rng.standard_normal((2, num_k, kdim)), rng.standard_normal((2, num_k, vdim))
    ours_kw, theirs_kw = {}, {}
    if masking == "valid_lens":
        lens = np.array([4, 2])
        ours_kw["valid_lens"] = backend.asarray(lens)
        theirs_kw["key_padding_mask"] = torch.from_numpy(np.arange(num_k)[None, :] >= lens[:, None])   # True = pad
    elif masking == "is_causal":
        ours_kw["is_causal"] = True
        theirs_kw["attn_mask"] = torch.from_numpy(np.triu(np.ones((num_q, num_k), dtype=bool), k=1))  # True = masked
    qt, kt, vt = t64(q), t64(k), t64(v)
    out = ours(qt, kt, vt, **ours_kw)
    tq, tk, tv = (torch.from_numpy(a.copy()).requires_grad_() for a in (q, k, v))
    t_out, t_w = theirs(tq, tk, tv, need_weights=True, average_attn_weights=False, **theirs_kw)
    np.testing.assert_allclose(host(out), t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(host(ours.attention_weights), t_w.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(out.shape)
    out.backward(backend.asarray(g))
    t_out.backward(torch.from_numpy(g))
    for mine, theirs_grad in ((qt, tq), (kt, tk), (vt, tv)):
        np.testing.assert_allclose(host(mine.grad), theirs_grad.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(host(ours.W_o.weight.grad), theirs.out_proj.weight.grad.numpy(), rtol=1e-10,
                               atol=1e-12)


def test_a_3d_attn_mask_is_refused_as_ambiguous():
    layer = MultiHeadAttention(8, 2, dtype="float64")
    x = t64(np.ones((2, 3, 8)))
    with pytest.raises(ValueError, match="a 3-D mask is ambiguous"):
        layer(x, x, x, attn_mask=np.ones((2, 3, 3), dtype=bool))
