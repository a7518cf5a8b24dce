"""Talking-heads attention (minattn/fused/talking_heads.py, minattn/talking_heads.py), MultiHeadAttention's qk_norm
option (minattn/attention.py) and the attention= choice of the Transformer (minattn/transformer.py).

Checks, in float64 against independent NumPy written here (never against the code under test):
  * ``mix_heads`` / ``mix_heads_backward`` equal np.einsum over the heads axis;
  * ``TalkingHeadsFunction``: gradcheck over head counts h_k ≠ h ≠ h_v, head sizes, with and without the biases
    b_l, b_w, a boolean mask with a fully masked query row, a float attn_bias with -inf entries and a fixed dropout
    multiplier; fused = composed (``talking_heads_reference``) for the output and every input gradient to 1e-12;
    the output equals the paper's algorithm written with einsum;
  * ``TalkingHeadsAttention``: equals the paper's Algorithm 2 in einsum with masks; with P_l = P_w = I and no
    biases equals MultiHeadAttention (outputs and input gradients); equals a NumPy transcription of timm's CaiT
    ``TalkingHeadAttn`` (with and without a qkv bias); with bias=True every masked key gets weight exactly 0 after
    P_w, rows sum to 1 (0 when fully masked), a fully masked query row gives W_o's bias and no NaN anywhere;
    gradcheck w.r.t. inputs and ALL parameters; argument errors; dropout only in training;
  * MultiHeadAttention(qk_norm=True) equals per-head LayerNorm of q and k then attention in NumPy, and gradchecks;
  * ``make_attention`` / Transformer(attention='talking-heads') build the right layers and train in float32;
  * a float32 layer with a -inf float mask stays float32, and under no_grad gives the same output.
"""
import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck, manual_seed, no_grad
from minattn import MultiHeadAttention, TalkingHeadsAttention, Transformer
from minattn import functional as F
from minattn.fused.talking_heads import TalkingHeadsFunction, mix_heads, mix_heads_backward, talking_heads_reference
from minattn.transformer import make_attention
from tests import numpy_reference as ref
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)


def dev(a):
    """A NumPy array moved to the backend (masks, biases, dropout multipliers, valid_lens)."""
    return backend.asarray(a)


def params_of(layer):
    """Host copies of every parameter, by dotted name."""
    return {name: host(p) for name, p in layer.named_parameters()}


def set_param(param, value):
    """Overwrite a parameter's values in place (shape checked)."""
    value = np.asarray(value, dtype=np.float64)
    assert param.shape == value.shape
    param.data[...] = dev(value)


# ---------------------------------------------------------------------------------------------------------------------
# Independent NumPy: the paper's Algorithm 2 (Shazeer et al. 2020) with einsum, plus masks
# ---------------------------------------------------------------------------------------------------------------------
def numpy_talking_heads(q, k, v, p_l, p_w, b_l=None, b_w=None, mask=None, attn_bias=None, scale=1.0, dropout_mask=None):
    """The talking-heads core. q (..., h_k, n, d), k (..., h_k, m, d), v (..., h_v, m, d).

    p_l[h_k, h] and p_w[h, h_v] in the paper's (in, out) layout. mask (bool, True = take part) and attn_bias
    (float, added to the mixed logits) are the same for every head. Returns (O, W, U) with W the softmax weights
    (..., h, n, m) and U the mixed weights (..., h_v, n, m), re-masked: a masked key gets U = 0.
    """
    J = np.einsum("...knd,...kmd->...knm", q * scale, k)                 # J[n, m, h_k]
    logits = np.einsum("...knm,kh->...hnm", J, p_l)                      # L[n, m, h] = J P_l
    if b_l is not None:
        logits = logits + b_l[:, None, None]
    take = np.ones(logits.shape[:-3] + (1,) + logits.shape[-2:], dtype=bool)
    if mask is not None:
        take = take & mask
    if attn_bias is not None:
        logits = logits + attn_bias
        take = take & (np.asarray(attn_bias) > -np.inf)
    W = ref.softmax_rows(logits, take)                                   # softmax over m; masked → 0
    U = np.einsum("...hnm,hv->...vnm", W, p_w)                           # U[n, m, h_v] = W P_w
    if b_w is not None:
        U = U + b_w[:, None, None]
    U = np.where(take, U, 0.0)
    used = U * dropout_mask if dropout_mask is not None else U
    O = np.einsum("...vnm,...vmd->...vnd", used, v)                      # O[n, d_v, h_v] = U V
    return O, W, U


def numpy_th_layer(layer, query, key, value, mask=None, attn_bias=None):
    """The whole layer as Algorithm 2: P_q[d_X, d_k, h_k], P_k, P_v, P_o[d_Y, d_v, h_v] taken from the Linear
    weights (rows head-major: row = head·d + j), einsum projections, the core above, einsum output projection."""
    p = params_of(layer)
    h_k, h_v, d = layer.num_heads_qk, layer.num_heads_v, layer.head_dim

    def project(name, heads, x):                                         # x (B, n, d_in) → (B, heads, n, d)
        P = p[name + ".weight"].reshape(heads, d, -1).transpose(2, 1, 0)    # P[d_in, d, heads]
        out = np.einsum("bnx,xdh->bhnd", x, P)
        if name + ".bias" in p:
            out = out + p[name + ".bias"].reshape(heads, d)[None, :, None, :]
        return out

    q, k, v = project("W_q", h_k, query), project("W_k", h_k, key), project("W_v", h_v, value)
    O, W, U = numpy_talking_heads(q, k, v, p["proj_l.weight"].T, p["proj_w.weight"].T, p.get("proj_l.bias"),
                                  p.get("proj_w.bias"), mask, attn_bias, scale=1 / np.sqrt(d))
    P_o = p["W_o.weight"].reshape(-1, h_v, d).transpose(0, 2, 1)         # P_o[d_Y, d_v, h_v]
    Y = np.einsum("bhnd,ydh->bny", O, P_o)
    if "W_o.bias" in p:
        Y = Y + p["W_o.bias"]
    return Y, W, U


def keys_mask(batch, num_q, num_k, valid_lens=None, is_causal=False):
    """bool (B, 1, L, S), True = take part, key by key from d2l valid_lens and the causal rule j <= i."""
    mask = np.ones((batch, 1, num_q, num_k), dtype=bool)
    for b in range(batch):
        for i in range(num_q):
            for j in range(num_k):
                if valid_lens is not None:
                    n = valid_lens[b] if np.ndim(valid_lens) == 1 else valid_lens[b][i]
                    mask[b, 0, i, j] &= j < n
                if is_causal:
                    mask[b, 0, i, j] &= j <= i
    return mask


# ---------------------------------------------------------------------------------------------------------------------
# 1. mix_heads and its backward
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
def test_mix_heads_and_backward_equal_einsum(rng, batch):
    h_in, h_out, L, S = 3, 5, 4, 2
    w = rng.standard_normal((h_out, h_in))
    x = rng.standard_normal(batch + (h_in, L, S))
    g = rng.standard_normal(batch + (h_out, L, S))
    out = host(mix_heads(dev(w), dev(x)))
    np.testing.assert_allclose(out, np.einsum("oi,...ils->...ols", w, x), **TIGHT)
    d_w, d_x = mix_heads_backward(dev(w), dev(x), dev(g))
    g_flat, x_flat = g.reshape(-1, h_out, L, S), x.reshape(-1, h_in, L, S)          # batch axes → one axis b
    np.testing.assert_allclose(host(d_w), np.einsum("bols,bils->oi", g_flat, x_flat), **TIGHT)
    np.testing.assert_allclose(host(d_x), np.einsum("oi,...ols->...ils", w, g), **TIGHT)
    d_w2, d_x2 = mix_heads_backward(dev(w), dev(x), dev(g), need_x=False)
    assert d_x2 is None
    np.testing.assert_allclose(host(d_w2), host(d_w), **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# 2. TalkingHeadsFunction: gradcheck, fused = composed, forward = NumPy
# ---------------------------------------------------------------------------------------------------------------------
HEADS = {"h_k=2 h=3 h_v=4 d=2": (2, 3, 4, 2), "h_k=3 h=1 h_v=2 d=1": (3, 1, 2, 1), "h_k=h=h_v=4 d=3": (4, 4, 4, 3)}
MASKINGS = ["none", "bool mask with a fully masked row", "float bias with -inf", "dropout mask", "all at once"]
B, L, S = 2, 3, 4


def _core_case(rng, heads, with_bias, masking):
    """(arrays, constants) for TalkingHeadsFunction: arrays = [q, k, v, w_l, w_w(, b_l, b_w)] in PyTorch layout."""
    h_k, h, h_v, d = heads
    arrays = [rng.standard_normal((B, h_k, L, d)), rng.standard_normal((B, h_k, S, d)),
              rng.standard_normal((B, h_v, S, d)), rng.standard_normal((h, h_k)), rng.standard_normal((h_v, h))]
    if with_bias:
        arrays += [rng.standard_normal(h), rng.standard_normal(h_v)]
    const = dict(scale=1 / np.sqrt(d))
    if masking in ("bool mask with a fully masked row", "all at once"):
        mask = rng.random((B, 1, L, S)) > 0.4
        mask[0, 0, 1, :] = False                                         # a query that sees no key
        mask[1, 0, 0, :] = True
        const["mask"] = mask
    if masking in ("float bias with -inf", "all at once"):
        bias = rng.standard_normal((L, S))
        bias[0, 2] = bias[1, 0] = -np.inf
        if masking == "float bias with -inf":
            bias[2, :] = -np.inf                                         # a query whose every key gets -inf
        const["attn_bias"] = bias
    if masking in ("dropout mask", "all at once"):
        const["dropout_mask"] = (rng.random((B, h_v, L, S)) > 0.3) / 0.7
    return arrays, const


def _fused(const):
    backend_const = {name: (dev(a) if isinstance(a, np.ndarray) else a) for name, a in const.items()}
    return lambda *t: TalkingHeadsFunction.apply(*t, **backend_const)


def _composed(const):
    backend_const = {name: (dev(a) if isinstance(a, np.ndarray) else a) for name, a in const.items()}

    def fn(q, k, v, w_l, w_w, b_l=None, b_w=None):
        return talking_heads_reference(q, k, v, w_l, w_w, b_l, b_w, **backend_const)
    return fn


@pytest.mark.parametrize("masking", MASKINGS)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no bias", "b_l, b_w"])
@pytest.mark.parametrize("heads", list(HEADS))
def test_talking_heads_function_gradcheck(rng, heads, with_bias, masking):
    arrays, const = _core_case(rng, HEADS[heads], with_bias, masking)
    with ref.strict_floats():
        assert gradcheck(_fused(const), [t64(a) for a in arrays], max_elements=1000)


@pytest.mark.parametrize("masking", MASKINGS)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no bias", "b_l, b_w"])
@pytest.mark.parametrize("heads", list(HEADS))
def test_talking_heads_function_fused_equals_composed_and_numpy(rng, heads, with_bias, masking):
    arrays, const = _core_case(rng, HEADS[heads], with_bias, masking)
    fused_in, composed_in = [t64(a) for a in arrays], [t64(a) for a in arrays]
    with ref.strict_floats():
        out_f = _fused(const)(*fused_in)
        out_c = _composed(const)(*composed_in)
        g = rng.standard_normal(out_f.shape)
        out_f.backward(dev(g))
        out_c.backward(dev(g))
    np.testing.assert_allclose(host(out_f), host(out_c), **TIGHT)
    for i, (a, b) in enumerate(zip(fused_in, composed_in)):
        assert a.grad is not None and b.grad is not None, i
        assert np.all(np.isfinite(host(a.grad))), i
        np.testing.assert_allclose(host(a.grad), host(b.grad), **TIGHT, err_msg=f"gradient of input {i}")
    q, k, v, w_l, w_w = arrays[:5]
    b_l, b_w = (arrays[5], arrays[6]) if with_bias else (None, None)
    with ref.strict_floats():
        expected, _, _ = numpy_talking_heads(q, k, v, w_l.T, w_w.T, b_l, b_w, const.get("mask"),
                                             const.get("attn_bias"), const["scale"], const.get("dropout_mask"))
    np.testing.assert_allclose(host(out_f), expected, **TIGHT)
    if masking == "bool mask with a fully masked row":
        np.testing.assert_array_equal(host(out_f)[0, :, 1], 0.0)        # sees no key: output 0, every value head
        np.testing.assert_array_equal(host(fused_in[0].grad)[0, :, 1], 0.0)   # and no gradient reaches q there


def test_talking_heads_function_identity_mix_is_attention(rng):
    """h_k = h = h_v, P_l = P_w = I, no biases: per-head scaled dot-product attention (the textbook formula)."""
    q, k, v = rng.standard_normal((2, 3, 4, 2)), rng.standard_normal((2, 3, 5, 2)), rng.standard_normal((2, 3, 5, 2))
    mask = rng.random((2, 1, 4, 5)) > 0.3
    out = TalkingHeadsFunction.apply(t64(q), t64(k), t64(v), t64(np.eye(3)), t64(np.eye(3)), mask=dev(mask),
                                     scale=1 / np.sqrt(2))
    expected, _ = ref.attention(q, k, v, mask=mask)
    np.testing.assert_allclose(host(out), expected, **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# The layer against Algorithm 2 in NumPy, with masks
# ---------------------------------------------------------------------------------------------------------------------
LAYER_MASKS = {
    "no mask": lambda rng: (dict(), None, None),
    "valid_lens (B,)": lambda rng: (dict(valid_lens=np.array([5, 2])), keys_mask(2, 3, 5, [5, 2]), None),
    "valid_lens (B, L) with a 0": lambda rng: (dict(valid_lens=np.array([[1, 0, 3], [5, 2, 4]])),
                                               keys_mask(2, 3, 5, [[1, 0, 3], [5, 2, 4]]), None),
    "is_causal": lambda rng: (dict(is_causal=True), keys_mask(2, 3, 5, is_causal=True), None),
    "bool attn_mask (L, S) with an empty row": lambda rng: _bool_mask(rng, (3, 5)),
    "bool attn_mask (B, 1, L, S)": lambda rng: _bool_mask(rng, (2, 1, 3, 5)),
    "float attn_mask (L, S) with -inf": lambda rng: _float_mask(rng),
}


def _bool_mask(rng, shape):
    m = rng.random(shape) > 0.4
    m[..., 0, :] = False                                                 # query 0 sees no key
    m[..., 1, 3] = True
    return dict(attn_mask=m), m, None


def _float_mask(rng):
    bias = rng.standard_normal((3, 5))
    bias[0, 1] = bias[1, 3] = bias[1, 4] = -np.inf
    bias[2, :] = -np.inf                                                 # query 2 sees no key
    return dict(attn_mask=bias), None, bias


def _layer_kwargs(kw):
    return {name: (dev(a) if isinstance(a, np.ndarray) else a) for name, a in kw.items()}


def _full_mask(mask, bias, shape=(2, 1, 3, 5)):
    """bool (B, 1, L, S): True where a key takes part (bool mask and finite bias)."""
    take = np.ones(shape, dtype=bool)
    if mask is not None:
        take &= mask
    if bias is not None:
        take &= bias > -np.inf
    return take


def _th_layer(seed, bias=True, **kw):
    manual_seed(seed)
    layer = TalkingHeadsAttention(6, 3, num_heads_qk=2, num_heads_v=4, bias=bias, dtype="float64", **kw)
    if bias:     # a clearly non-zero bias on P_w: without the re-mask every masked key would get weight
        set_param(layer.proj_w.bias, np.array([0.7, -1.1, 0.9, 1.3]))
    return layer


@pytest.mark.parametrize("with_bias", [False, True], ids=["no bias", "bias"])
@pytest.mark.parametrize("case", list(LAYER_MASKS))
def test_layer_equals_algorithm_2_in_numpy(rng, case, with_bias):
    layer = _th_layer(11, bias=with_bias)
    kw, mask, bias = LAYER_MASKS[case](rng)
    q, kv = rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 5, 6))
    with ref.strict_floats():
        out = layer(t64(q), t64(kv), t64(kv), **_layer_kwargs(kw))
        expected, W, U = numpy_th_layer(layer, q, kv, kv, mask, bias)
    assert out.shape == (2, 3, 6) and out.dtype == np.float64
    assert layer.attention_weights.shape == (2, 3, 3, 5) and layer.mixed_weights.shape == (2, 4, 3, 5)
    np.testing.assert_allclose(host(out), expected, **TIGHT)
    np.testing.assert_allclose(host(layer.attention_weights), W, **TIGHT)
    np.testing.assert_allclose(host(layer.mixed_weights), U, **TIGHT)


def test_layer_head_dim_and_cross_attention_equal_numpy(rng):
    """head_dim given (E not divisible by h), kdim/vdim ≠ E, L ≠ S, proj_bias=False."""
    manual_seed(12)
    layer = TalkingHeadsAttention(5, 3, num_heads_qk=1, num_heads_v=2, head_dim=3, kdim=4, vdim=2, bias=True,
                                  proj_bias=False, dtype="float64")
    names = {name for name, _ in layer.named_parameters()}
    assert names == {"W_q.weight", "W_k.weight", "W_v.weight", "W_o.weight", "proj_l.weight", "proj_l.bias",
                     "proj_w.weight", "proj_w.bias"}
    assert host(layer.W_q.weight).shape == (3, 5) and host(layer.W_k.weight).shape == (3, 4)
    assert host(layer.W_v.weight).shape == (6, 2) and host(layer.W_o.weight).shape == (5, 6)
    assert host(layer.proj_l.weight).shape == (3, 1) and host(layer.proj_w.weight).shape == (2, 3)
    q, k, v = rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 6, 2))
    lens = np.array([6, 3])
    out = layer(t64(q), t64(k), t64(v), valid_lens=dev(lens))
    expected, W, U = numpy_th_layer(layer, q, k, v, keys_mask(2, 4, 6, lens))
    np.testing.assert_allclose(host(out), expected, **TIGHT)
    np.testing.assert_allclose(host(layer.mixed_weights), U, **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Identity mixing = MultiHeadAttention
# ---------------------------------------------------------------------------------------------------------------------
MHA_EQUIV = {
    "valid_lens (B,)": lambda rng: dict(valid_lens=np.array([4, 2])),
    "valid_lens (B, L) with a 0": lambda rng: dict(valid_lens=np.array([[1, 2, 3], [5, 0, 4]])),
    "is_causal": lambda rng: dict(is_causal=True),
    "bool attn_mask (L, S)": lambda rng: dict(attn_mask=rng.random((3, 5)) > 0.4),
    "cross-attention kdim/vdim": lambda rng: dict(),
}


@pytest.mark.parametrize("case", list(MHA_EQUIV))
def test_identity_mixing_equals_multi_head_attention(rng, case):
    cross = case.startswith("cross")
    kdim, vdim = (4, 3) if cross else (None, None)
    manual_seed(13)
    mha = MultiHeadAttention(6, 3, kdim=kdim, vdim=vdim, dtype="float64")
    th = TalkingHeadsAttention(6, 3, bias=False, kdim=kdim, vdim=vdim, dtype="float64")
    for name in ("W_q", "W_k", "W_v", "W_o"):
        for part in ("weight", "bias"):
            set_param(getattr(getattr(th, name), part), host(getattr(getattr(mha, name), part)))
    set_param(th.proj_l.weight, np.eye(3))
    set_param(th.proj_w.weight, np.eye(3))
    kw = _layer_kwargs(MHA_EQUIV[case](rng))
    q = rng.standard_normal((2, 3, 6))
    k = rng.standard_normal((2, 5, kdim or 6))
    v = rng.standard_normal((2, 5, vdim or 6)) if cross else k
    g = rng.standard_normal((2, 3, 6))
    results = []
    for layer in (mha, th):
        qt, kt, vt = t64(q), t64(k), t64(v)
        with ref.strict_floats():
            out = layer(qt, kt, vt, **kw)
            out.backward(dev(g))
        results.append((host(out), host(layer.attention_weights), host(qt.grad), host(kt.grad), host(vt.grad)))
    for what, a, b in zip(("output", "weights", "d query", "d key", "d value"), *results):
        np.testing.assert_allclose(b, a, **TIGHT, err_msg=what)
    np.testing.assert_allclose(host(th.mixed_weights), results[1][1], **TIGHT)      # U = W when P_w = I


# ---------------------------------------------------------------------------------------------------------------------
# 4. timm's CaiT TalkingHeadAttn
# ---------------------------------------------------------------------------------------------------------------------
def numpy_timm_talking_head_attn(x, num_heads, qkv_w, qkv_b, proj_l_w, proj_l_b, proj_w_w, proj_w_b, proj_w_, proj_b):
    """timm models/cait.py TalkingHeadAttn.forward, line by line in NumPy (no dropout)."""
    B_, N, C = x.shape
    scale = (C // num_heads) ** -0.5
    qkv = (x @ qkv_w.T + qkv_b).reshape(B_, N, 3, num_heads, C // num_heads).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * scale, qkv[1], qkv[2]
    attn = q @ k.swapaxes(-2, -1)
    attn = (attn.transpose(0, 2, 3, 1) @ proj_l_w.T + proj_l_b).transpose(0, 3, 1, 2)
    attn = np.exp(attn - attn.max(axis=-1, keepdims=True))
    attn = attn / attn.sum(axis=-1, keepdims=True)                      # softmax(dim=-1)
    attn = (attn.transpose(0, 2, 3, 1) @ proj_w_w.T + proj_w_b).transpose(0, 3, 1, 2)
    out = (attn @ v).swapaxes(1, 2).reshape(B_, N, C)
    return out @ proj_w_.T + proj_b


@pytest.mark.parametrize("qkv_bias", [True, False], ids=["qkv_bias", "no qkv_bias"])
@pytest.mark.parametrize("embed_dim,heads", [(8, 4), (6, 2)])
def test_layer_equals_timm_cait_talking_head_attn(rng, embed_dim, heads, qkv_bias):
    E = embed_dim
    qkv_w, qkv_b = rng.standard_normal((3 * E, E)) * 0.4, rng.standard_normal(3 * E) * 0.4
    if not qkv_bias:
        qkv_b = np.zeros(3 * E)
    pl_w, pl_b = rng.standard_normal((heads, heads)), rng.standard_normal(heads)
    pw_w, pw_b = rng.standard_normal((heads, heads)), rng.standard_normal(heads)
    proj_w, proj_b = rng.standard_normal((E, E)), rng.standard_normal(E)
    manual_seed(14)
    layer = TalkingHeadsAttention(E, heads, bias=True, dtype="float64")
    for i, name in enumerate(("W_q", "W_k", "W_v")):
        set_param(getattr(layer, name).weight, qkv_w[i * E:(i + 1) * E])
        set_param(getattr(layer, name).bias, qkv_b[i * E:(i + 1) * E])
    set_param(layer.W_o.weight, proj_w)
    set_param(layer.W_o.bias, proj_b)
    set_param(layer.proj_l.weight, pl_w)
    set_param(layer.proj_l.bias, pl_b)
    set_param(layer.proj_w.weight, pw_w)
    set_param(layer.proj_w.bias, pw_b)
    x = rng.standard_normal((2, 5, E))
    out = layer(t64(x), t64(x), t64(x))
    expected = numpy_timm_talking_head_attn(x, heads, qkv_w, qkv_b, pl_w, pl_b, pw_w, pw_b, proj_w, proj_b)
    np.testing.assert_allclose(host(out), expected, **TIGHT)


# ---------------------------------------------------------------------------------------------------------------------
# 5. Masks with bias=True: masked keys get exactly 0 after P_w; fully masked rows are 0 and NaN-free
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [c for c in LAYER_MASKS if c != "no mask"])
def test_masked_keys_get_zero_weight_after_p_w(rng, case):
    layer = _th_layer(15)
    kw, mask, bias = LAYER_MASKS[case](rng)
    take = _full_mask(mask, bias)[:, 0]                                  # (B, L, S)
    query, kv = t64(rng.standard_normal((2, 3, 6))), t64(rng.standard_normal((2, 5, 6)))
    with ref.strict_floats():
        out = layer(query, kv, kv, **_layer_kwargs(kw))
        out.backward(dev(rng.standard_normal(out.shape)))
    W, U = host(layer.attention_weights), host(layer.mixed_weights)   # (B, h, L, S), (B, h_v, L, S)
    masked = np.broadcast_to(~take[:, None], U.shape)
    assert masked.any()
    assert np.all(U[masked] == 0.0)                                      # exactly 0, despite b_w ≠ 0
    assert np.all(W[np.broadcast_to(~take[:, None], W.shape)] == 0.0)
    np.testing.assert_allclose(W.sum(axis=-1), np.broadcast_to(take.any(axis=-1)[:, None], W.shape[:-1]) * 1.0,
                               **TIGHT)
    # where a key does take part, U carries the bias: it is not zeroed by accident
    assert np.all(U[np.broadcast_to(take[:, None], U.shape)] != 0.0)
    empty = ~take.any(axis=-1)                                           # (B, L): queries that see no key
    o = host(out)
    assert np.all(np.isfinite(o))
    for b, i in zip(*np.nonzero(empty)):
        np.testing.assert_allclose(o[b, i], host(layer.W_o.bias), **TIGHT)
        assert np.all(U[b, :, i] == 0.0)
    for name, t in [("query", query), ("key/value", kv)] + list(layer.named_parameters()):
        assert t.grad is not None, name
        assert np.all(np.isfinite(host(t.grad))), name
    if empty.any():
        b, i = np.argwhere(empty)[0]
        np.testing.assert_array_equal(host(query.grad)[b, i], 0.0)      # no gradient reaches an empty query


@pytest.mark.parametrize("case", ["valid_lens (B, L) with a 0", "bool attn_mask (L, S) with an empty row",
                                  "float attn_mask (L, S) with -inf"])
def test_a_fully_masked_query_row_exists_in_the_case(rng, case):
    """Guard for the test above: each of these cases does contain a query that sees no key."""
    _, mask, bias = LAYER_MASKS[case](rng)
    assert (~_full_mask(mask, bias).any(axis=-1)).any()


# ---------------------------------------------------------------------------------------------------------------------
# 6. Layer gradcheck: inputs and ALL parameters
# ---------------------------------------------------------------------------------------------------------------------
GRADCHECK_MASKS = {
    "valid_lens (B,)": lambda: dict(valid_lens=dev(np.array([2, 1]))),
    "valid_lens (B, L) with a 0": lambda: dict(valid_lens=dev(np.array([[1, 0, 2], [2, 1, 1]]))),
    "is_causal": lambda: dict(is_causal=True),
}


@pytest.mark.parametrize("masking", list(GRADCHECK_MASKS))
def test_layer_gradcheck_inputs_and_all_parameters(rng, masking):
    manual_seed(16)
    layer = TalkingHeadsAttention(4, 3, num_heads_qk=2, num_heads_v=4, head_dim=2, bias=True, dtype="float64")
    params = list(layer.parameters())
    assert len(params) == 12
    kw = GRADCHECK_MASKS[masking]()
    q, k, v = (t64(rng.standard_normal(s)) for s in ((2, 3, 4), (2, 2, 4), (2, 2, 4)))
    with ref.strict_floats():
        assert gradcheck(lambda q_, k_, v_, *ps: layer(q_, k_, v_, **kw), [q, k, v] + params, max_elements=1000)


def test_layer_gradcheck_cross_attention(rng):
    manual_seed(17)
    layer = TalkingHeadsAttention(4, 3, num_heads_qk=2, num_heads_v=4, head_dim=2, bias=True, kdim=3, vdim=5,
                                  dtype="float64")
    q, k, v = (t64(rng.standard_normal(s)) for s in ((2, 2, 4), (2, 3, 3), (2, 3, 5)))
    with ref.strict_floats():
        assert gradcheck(lambda q_, k_, v_, *ps: layer(q_, k_, v_, valid_lens=dev(np.array([3, 1]))),
                         [q, k, v] + list(layer.parameters()), max_elements=1000)


# ---------------------------------------------------------------------------------------------------------------------
# 7. Errors
# ---------------------------------------------------------------------------------------------------------------------
def test_layer_errors(rng):
    layer = TalkingHeadsAttention(6, 3, dtype="float64")
    x, kv = t64(rng.standard_normal((2, 3, 6))), t64(rng.standard_normal((2, 5, 6)))
    with pytest.raises(ValueError):                                      # a per-head mask: heads are mixed
        layer(x, kv, kv, attn_mask=dev(np.ones((2, 3, 3, 5), dtype=bool)))
    with pytest.raises(ValueError):
        layer(x, kv, kv, attn_mask=dev(np.zeros((1, 3, 3, 5))))
    with pytest.raises(ValueError, match="a 3-D mask is ambiguous"):
        layer(x, kv, kv, attn_mask=dev(np.ones((2, 3, 5), dtype=bool)))
    with pytest.raises(ValueError):
        layer(x, kv, kv, attn_mask=dev(np.ones((3, 5), dtype=bool)), is_causal=True)
    with pytest.raises(ValueError):                                      # key and value lengths differ
        layer(x, kv, t64(rng.standard_normal((2, 4, 6))))
    with pytest.raises(TypeError):
        layer(Tensor(rng.standard_normal((2, 3, 6)), dtype="float32"), kv, kv)
    # the shapes that ARE allowed: (L, S) and (B, 1, L, S)
    layer(x, kv, kv, attn_mask=dev(np.ones((3, 5), dtype=bool)))
    layer(x, kv, kv, attn_mask=dev(np.ones((2, 1, 3, 5), dtype=bool)))


def test_constructor_errors():
    with pytest.raises(ValueError) as err:
        TalkingHeadsAttention(10, 3)
    assert "10" in str(err.value) and "3" in str(err.value)
    assert TalkingHeadsAttention(10, 3, head_dim=2).head_dim == 2        # head_dim given: no divisibility needed
    for counts in (dict(num_heads=0), dict(num_heads=2, num_heads_qk=0), dict(num_heads=2, num_heads_v=0)):
        with pytest.raises(ValueError):
            TalkingHeadsAttention(4, **counts)
    for p in (1.0, -0.1):
        with pytest.raises(ValueError):
            TalkingHeadsAttention(4, 2, dropout=p)


# ---------------------------------------------------------------------------------------------------------------------
# 8. MultiHeadAttention(qk_norm=True)
# ---------------------------------------------------------------------------------------------------------------------
def numpy_mha_qk_norm(layer, query, key, value, mask=None):
    """Per head: q = LN(query W_q^(i)), k = LN(key W_k^(i)) over d_h with the layer's γ, β; then attention; concat."""
    p = params_of(layer)
    dh = layer.head_dim
    heads = []
    for i in range(layer.num_heads):
        rows = slice(i * dh, (i + 1) * dh)
        q = ref.layer_norm(query @ p["W_q.weight"][rows].T + p["W_q.bias"][rows], p["q_norm.weight"], p["q_norm.bias"])
        k = ref.layer_norm(key @ p["W_k.weight"][rows].T + p["W_k.bias"][rows], p["k_norm.weight"], p["k_norm.bias"])
        v = value @ p["W_v.weight"][rows].T + p["W_v.bias"][rows]
        heads.append(ref.attention(q, k, v, mask=None if mask is None else mask[:, 0])[0])
    return np.concatenate(heads, axis=-1) @ p["W_o.weight"].T + p["W_o.bias"]


def _qk_norm_layer(rng, seed, **kw):
    manual_seed(seed)
    layer = MultiHeadAttention(6, 2, qk_norm=True, dtype="float64", **kw)
    for norm in (layer.q_norm, layer.k_norm):                            # non-trivial γ, β
        set_param(norm.weight, 1 + 0.5 * rng.standard_normal(3))
        set_param(norm.bias, 0.3 * rng.standard_normal(3))
    return layer


@pytest.mark.parametrize("masking", ["none", "valid_lens", "is_causal"])
def test_qk_norm_equals_numpy(rng, masking):
    layer = _qk_norm_layer(rng, 18)
    q, kv = rng.standard_normal((2, 3, 6)) * 3, rng.standard_normal((2, 5, 6)) * 3
    kw, mask = {}, None
    if masking == "valid_lens":
        kw, mask = dict(valid_lens=dev(np.array([4, 2]))), keys_mask(2, 3, 5, [4, 2])
    elif masking == "is_causal":
        kw, mask = dict(is_causal=True), keys_mask(2, 3, 5, is_causal=True)
    with ref.strict_floats():
        out = layer(t64(q), t64(kv), t64(kv), **kw)
    np.testing.assert_allclose(host(out), numpy_mha_qk_norm(layer, q, kv, kv, mask), **TIGHT)


def test_qk_norm_cross_attention_equals_numpy(rng):
    layer = _qk_norm_layer(rng, 19, kdim=4, vdim=3)
    q, k, v = rng.standard_normal((2, 3, 6)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 3))
    np.testing.assert_allclose(host(layer(t64(q), t64(k), t64(v))), numpy_mha_qk_norm(layer, q, k, v), **TIGHT)


def test_qk_norm_gradcheck_including_norm_parameters(rng):
    manual_seed(20)
    layer = MultiHeadAttention(4, 2, qk_norm=True, dtype="float64")
    for norm in (layer.q_norm, layer.k_norm):
        set_param(norm.weight, 1 + 0.5 * rng.standard_normal(2))
        set_param(norm.bias, 0.3 * rng.standard_normal(2))
    names = [name for name, _ in layer.named_parameters()]
    assert {"q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias"} <= set(names) and len(names) == 12
    q, k, v = (t64(rng.standard_normal(s)) for s in ((2, 3, 4), (2, 2, 4), (2, 2, 4)))
    with ref.strict_floats():
        assert gradcheck(lambda q_, k_, v_, *ps: layer(q_, k_, v_, valid_lens=dev(np.array([2, 1]))),
                         [q, k, v] + list(layer.parameters()), max_elements=1000)


def test_no_qk_norm_parameters_without_the_option():
    layer = MultiHeadAttention(4, 2)
    names = [name for name, _ in layer.named_parameters()]
    assert len(names) == 8 and not any("norm" in name for name in names)
    assert layer.q_norm is None and layer.k_norm is None


# ---------------------------------------------------------------------------------------------------------------------
# 9. make_attention and the Transformer's attention= option
# ---------------------------------------------------------------------------------------------------------------------
def test_make_attention_returns_the_right_classes():
    mha = make_attention("mha", 8, 2, dropout=0.1, dtype="float64", qk_norm=True)
    assert type(mha) is MultiHeadAttention and mha.dropout == 0.1 and mha.q_norm is not None
    assert all(p.dtype == np.float64 for p in mha.parameters())
    th = make_attention("talking-heads", 8, 2, dropout=0.2, num_heads_qk=3, num_heads_v=5, bias=True)
    assert type(th) is TalkingHeadsAttention and th.dropout == 0.2
    assert (th.num_heads, th.num_heads_qk, th.num_heads_v, th.head_dim) == (2, 3, 5, 4)
    assert th.proj_l.bias is not None and all(p.dtype == np.float32 for p in th.parameters())
    with pytest.raises(ValueError):
        make_attention("bogus", 8, 2)


def test_transformer_with_talking_heads_trains_in_float32(rng):
    manual_seed(21)
    model = Transformer(11, 13, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=1, num_decoder_layers=1,
                        dropout=0.1, attention="talking-heads", attention_options={"num_heads_qk": 2, "num_heads_v": 4})
    layers = [model.encoder_blocks[0].attention, model.decoder_blocks[0].self_attention,
              model.decoder_blocks[0].cross_attention]
    for layer in layers:
        assert type(layer) is TalkingHeadsAttention
        assert (layer.num_heads, layer.num_heads_qk, layer.num_heads_v) == (2, 2, 4)
    src = dev(rng.integers(3, 11, (2, 5)))
    tgt = dev(rng.integers(3, 11, (2, 6)))
    lens = dev(np.array([5, 3]))
    model.train()
    logits = model(src, tgt, lens)
    assert logits.shape == (2, 6, 13) and logits.dtype == np.float32
    loss = F.cross_entropy(logits.permute(0, 2, 1), dev(rng.integers(0, 13, (2, 6))))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.dtype == np.float32, name
        assert np.all(np.isfinite(host(p.grad))), name
    weights = model.cross_attention_weights()
    assert len(weights) == 1 and weights[0].shape == (2, 2, 6, 5)
    assert np.all(host(weights[0])[1, :, :, 3:] == 0)                    # padding keys of sequence 1
    assert np.all(host(layers[2].mixed_weights)[1, :, :, 3:] == 0)


def test_transformer_attention_option_errors():
    with pytest.raises(ValueError):
        Transformer(11, 13, embed_dim=8, num_heads=2, attention="bogus")
    model = Transformer(11, 13, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=1, num_decoder_layers=1,
                        attention="mha", attention_options={"qk_norm": True})
    assert model.encoder_blocks[0].attention.q_norm is not None


# ---------------------------------------------------------------------------------------------------------------------
# 10. Dropout only in training
# ---------------------------------------------------------------------------------------------------------------------
def test_layer_dropout_only_in_training(rng):
    manual_seed(22)
    layer = TalkingHeadsAttention(6, 3, num_heads_qk=2, num_heads_v=4, bias=True, dropout=0.5, dtype="float64")
    manual_seed(22)
    plain = TalkingHeadsAttention(6, 3, num_heads_qk=2, num_heads_v=4, bias=True, dropout=0.0, dtype="float64")
    for (name, a), (_, b) in zip(layer.named_parameters(), plain.named_parameters()):
        np.testing.assert_array_equal(host(a), host(b), err_msg=name)
    x = rng.standard_normal((2, 4, 6))
    expected = host(plain(t64(x), t64(x), t64(x)))
    np.testing.assert_allclose(expected, numpy_th_layer(plain, x, x, x)[0], **TIGHT)
    layer.train()
    first = host(layer(t64(x), t64(x), t64(x)))
    u_train = host(layer.mixed_weights)
    second = host(layer(t64(x), t64(x), t64(x)))
    assert not np.allclose(first, second)
    assert not np.allclose(first, expected)
    np.testing.assert_allclose(u_train, host(plain.mixed_weights), **TIGHT)   # mixed_weights: before dropout
    layer.eval()
    e1, e2 = host(layer(t64(x), t64(x), t64(x))), host(layer(t64(x), t64(x), t64(x)))
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_allclose(e1, expected, **TIGHT)


def test_layer_in_float32_and_under_no_grad(rng):
    """float32 parameters and a float32 -inf mask keep float32 throughout; no_grad still records the weights."""
    manual_seed(23)
    layer = TalkingHeadsAttention(6, 3, num_heads_qk=2, num_heads_v=4, bias=True)
    bias = rng.standard_normal((3, 5)).astype(np.float32)
    bias[:, 4] = -np.inf
    x = Tensor(rng.standard_normal((2, 3, 6)), dtype="float32", requires_grad=True)
    kv = Tensor(rng.standard_normal((2, 5, 6)), dtype="float32")
    out = layer(x, kv, kv, attn_mask=dev(bias))
    assert out.dtype == np.float32 and layer.mixed_weights.dtype == np.float32
    assert np.all(host(layer.mixed_weights)[..., 4] == 0.0)
    out.sum().backward()
    assert x.grad.dtype == np.float32 and all(p.grad.dtype == np.float32 for p in layer.parameters())
    with no_grad():
        again = layer(x, kv, kv, attn_mask=dev(bias))
    assert not again.requires_grad
    np.testing.assert_array_equal(host(again), host(out))
    assert np.all(host(layer.mixed_weights)[..., 4] == 0.0)
