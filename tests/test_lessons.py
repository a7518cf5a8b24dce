"""The identities the four lessons (demos/lesson_*.py) teach, checked on random inputs in float64 to ~1e-12.

  weight sharing  Linear on (B, L, d) = Linear at each position = a 1×1 convolution; it commutes with permuting
                  positions; its parameter count does not depend on L.
  heads           h separate Linear(d, d/h) = one Linear(d, d) split by transpose_qkv; a loop over heads = the
                  batched MultiHeadAttention (1-D and 2-D valid_lens); transpose_output inverts transpose_qkv.
  positions       self-attention without positions is permutation-equivariant, with the sinusoidal table it is not;
                  PE(pos + k) = R_k PE(pos) with R_k a fixed block-diagonal rotation.
  padding         a padded batch with valid_lens = each sequence alone, unpadded, on the real positions.
Independent of the demos' code: the references here are written with NumPy.
"""
import math

import numpy as np
import pytest

from autograd import backend, manual_seed, no_grad
from minattn import Linear, MultiHeadAttention, PositionalEncoding
from minattn.attention import transpose_output, transpose_qkv
from minattn.layers import sinusoidal_positions
from minattn.transformer import EncoderBlock
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)


def self_attend(layer, x):
    """layer(x, x, x) on a host float64 array; host result."""
    t = t64(x, requires_grad=False)
    with no_grad():
        return host(layer(t, t, t))


# --- weight sharing ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 5, 6, 3), (1, 1, 4, 4), (3, 9, 5, 7)])   # (B, L, d_in, d_out)
def test_linear_per_position_equals_whole_equals_1x1_convolution(rng, shape):
    batch, length, d_in, d_out = shape
    manual_seed(int(rng.integers(1000)))
    layer = Linear(d_in, d_out, dtype="float64")
    x = rng.standard_normal((batch, length, d_in))
    with no_grad():
        whole = host(layer(t64(x, requires_grad=False)))                                     # (B, L, d_out)
        per_position = np.stack([host(layer(t64(x[b, t], requires_grad=False)))
                                 for b in range(batch) for t in range(length)]).reshape(batch, length, d_out)
    W, bias = host(layer.weight), host(layer.bias)
    kernel = W[:, :, None]                                                                   # (d_out, d_in, 1)
    x_cf = x.transpose(0, 2, 1)                                                              # (B, d_in, L)
    conv = np.empty((batch, d_out, length))
    for t in range(length):                 # y[b, o, t] = bias[o] + Σ_i Σ_{j<1} kernel[o, i, j] x[b, i, t + j]
        conv[:, :, t] = bias + np.einsum("oij,bij->bo", kernel, x_cf[:, :, t: t + 1])
    np.testing.assert_allclose(per_position, whole, **TIGHT)
    np.testing.assert_allclose(conv.transpose(0, 2, 1), whole, **TIGHT)


def test_projection_commutes_with_permuting_positions(rng):
    manual_seed(3)
    layer = Linear(6, 4, dtype="float64")
    x = rng.standard_normal((3, 8, 6))
    perm = rng.permutation(8)
    with no_grad():
        np.testing.assert_allclose(host(layer(t64(x[:, perm], requires_grad=False))),
                                   host(layer(t64(x, requires_grad=False)))[:, perm], **TIGHT)


def test_one_attention_layer_serves_every_length(rng):
    manual_seed(0)
    layer = MultiHeadAttention(8, 2, dtype="float64")
    count = layer.num_parameters()
    assert layer.W_q.num_parameters() == 8 * 8 + 8 and count == 4 * (8 * 8 + 8)
    for length in (4, 400):
        assert self_attend(layer, rng.standard_normal((1, length, 8))).shape == (1, length, 8)
        assert layer.num_parameters() == count


# --- heads -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d, h", [(12, 3), (100, 5), (8, 8), (6, 1)])
def test_h_small_projections_equal_one_big_projection_split_by_transpose_qkv(rng, d, h):
    manual_seed(d + h)
    small = [Linear(d, d // h, dtype="float64") for _ in range(h)]
    big = Linear(d, d, dtype="float64")
    big.weight.data[...] = backend.asarray(np.concatenate([host(s.weight) for s in small], axis=0))
    big.bias.data[...] = backend.asarray(np.concatenate([host(s.bias) for s in small], axis=0))
    x = t64(rng.standard_normal((2, 5, d)), requires_grad=False)
    with no_grad():
        separately = np.stack([host(s(x)) for s in small], axis=1)                      # (B, h, L, d/h)
        split = host(transpose_qkv(big(x), h))                                          # (B, h, L, d/h)
    assert split.shape == (2, h, 5, d // h)
    np.testing.assert_allclose(separately, split, **TIGHT)
    assert sum(s.num_parameters() for s in small) == big.num_parameters()


def loop_over_heads(layer, query, key, value, valid_lens):
    """NumPy: head_i = softmax(masked(Q_i K_iᵀ / √d_h)) V_i with head i's rows of W_q, W_k, W_v; concat; W_o."""
    p = {name: host(t) for name, t in layer.named_parameters()}
    dh, (batch, num_q, _), num_k = layer.head_dim, query.shape, key.shape[1]
    lens = np.broadcast_to(np.asarray(valid_lens).reshape(batch, -1), (batch, num_q))   # (B, L)
    takes_part = np.arange(num_k)[None, None, :] < lens[:, :, None]                           # (B, L, S)
    heads, weights = [], []
    for i in range(layer.num_heads):
        rows = slice(i * dh, (i + 1) * dh)
        q = query @ p["W_q.weight"][rows].T + p["W_q.bias"][rows]
        k = key @ p["W_k.weight"][rows].T + p["W_k.bias"][rows]
        v = value @ p["W_v.weight"][rows].T + p["W_v.bias"][rows]
        s = np.where(takes_part, q @ k.transpose(0, 2, 1) / math.sqrt(dh), -np.inf)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        w = e / e.sum(axis=-1, keepdims=True)
        heads.append(w @ v)
        weights.append(w)
    return np.concatenate(heads, axis=-1) @ p["W_o.weight"].T + p["W_o.bias"], np.stack(weights, axis=1)


@pytest.mark.parametrize("valid_lens", [[3, 2], [[1, 2, 3, 3], [1, 2, 2, 6]]], ids=["(B,)", "(B, L)"])
def test_loop_over_heads_equals_batched_multi_head_attention(rng, valid_lens):
    manual_seed(1)
    layer = MultiHeadAttention(100, 5, dtype="float64")
    query, key = rng.standard_normal((2, 4, 100)), rng.standard_normal((2, 6, 100))
    lens = np.array(valid_lens)
    with no_grad():
        out = host(layer(t64(query, False), t64(key, False), t64(key, False), valid_lens=backend.asarray(lens)))
    expected_out, expected_w = loop_over_heads(layer, query, key, key, lens)
    np.testing.assert_allclose(out, expected_out, **TIGHT)
    weights = host(layer.attention_weights)
    np.testing.assert_allclose(weights, expected_w, **TIGHT)
    seen = (weights > 0).sum(axis=-1)                                                   # (B, h, L)
    np.testing.assert_array_equal(seen, np.broadcast_to(lens.reshape(2, 1, -1), seen.shape))


@pytest.mark.parametrize("shape, h", [((2, 4, 100), 5), ((1, 1, 6), 3), ((3, 7, 8), 8)])
def test_transpose_output_inverts_transpose_qkv(rng, shape, h):
    x = t64(rng.standard_normal(shape), requires_grad=False)
    split = transpose_qkv(x, h)
    assert split.shape == (shape[0], h, shape[1], shape[2] // h)
    np.testing.assert_array_equal(host(transpose_output(split)), host(x))
    y = t64(rng.standard_normal((shape[0], h, shape[1], shape[2] // h)), requires_grad=False)
    np.testing.assert_array_equal(host(transpose_qkv(transpose_output(y), h)), host(y))
    # head i holds features i·d_h .. (i+1)·d_h − 1 of every position
    dh = shape[2] // h
    for i in range(h):
        np.testing.assert_array_equal(host(split)[:, i], host(x)[:, :, i * dh:(i + 1) * dh])


# --- positions ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_self_attention_without_positions_is_permutation_equivariant_and_with_them_is_not(seed):
    rng = np.random.default_rng(seed)
    manual_seed(seed)
    layer = MultiHeadAttention(16, 4, dtype="float64")
    pe = PositionalEncoding(16, max_len=50, dtype="float64")
    x = rng.standard_normal((2, 7, 16))
    perm = np.roll(np.arange(7), 1 + seed)                      # moves every position
    np.testing.assert_allclose(self_attend(layer, x[:, perm]), self_attend(layer, x)[:, perm], **TIGHT)

    def with_pe(a):
        return host(pe(t64(a, requires_grad=False)))

    moved = np.abs(self_attend(layer, with_pe(x[:, perm])) - self_attend(layer, with_pe(x))[:, perm]).max()
    assert moved > 1e-3


def rotation(k, d):
    """Block-diagonal R_k: block i = [[cos kω_i, sin kω_i], [−sin kω_i, cos kω_i]], ω_i = 10000^(−2i/d)."""
    R = np.zeros((d, d))
    for i in range(d // 2):
        a = k * 10000.0 ** (-2 * i / d)
        R[2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = [[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]
    return R


@pytest.mark.parametrize("d", [4, 16, 64])
@pytest.mark.parametrize("k", [1, 3, 10, 47])
def test_shifting_the_positional_table_is_a_fixed_rotation(d, k):
    table = host(sinusoidal_positions(120, d))                                          # (120, d)
    R = rotation(k, d)
    np.testing.assert_allclose(table[k:], table[:-k] @ R.T, **TIGHT)                    # every pos at once
    np.testing.assert_allclose(R @ R.T, np.eye(d), **TIGHT)                             # a rotation
    dots = (table[:-k] * table[k:]).sum(axis=1)                                         # PE(pos)·PE(pos + k)
    np.testing.assert_allclose(dots, np.cos(k * 10000.0 ** (-np.arange(0, d, 2) / d)).sum(), **TIGHT)


# --- padding -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths", [[5, 3, 7, 2], [1, 4], [6, 6, 1]])
def test_padded_batch_with_valid_lens_equals_each_sequence_alone(rng, lengths):
    manual_seed(sum(lengths))
    d, width = 8, max(lengths)
    mha = MultiHeadAttention(d, 2, dtype="float64")
    blocks = [EncoderBlock(d, 2, 16, dtype="float64") for _ in range(2)]

    def encoder(x, valid_lens=None):
        for block in blocks:
            x = block(x, valid_lens)
        return x

    sequences = [rng.standard_normal((n, d)) for n in lengths]
    x = rng.standard_normal((len(lengths), width, d))                   # random filler as padding
    for b, s in enumerate(sequences):
        x[b, : len(s)] = s
    lens = backend.asarray(np.array(lengths))
    xt = t64(x, requires_grad=False)
    with no_grad():
        padded_mha = host(mha(xt, xt, xt, valid_lens=lens))
        padded_encoder = host(encoder(xt, lens))
        unmasked = host(mha(xt, xt, xt))
        for b, s in enumerate(sequences):
            st = t64(s[None], requires_grad=False)
            n = len(s)
            np.testing.assert_allclose(padded_mha[b, :n], host(mha(st, st, st))[0], **TIGHT)
            np.testing.assert_allclose(padded_encoder[b, :n], host(encoder(st))[0], **TIGHT)
            if n < width:   # without the mask the filler leaks into the real positions
                assert np.abs(unmasked[b, :n] - host(mha(st, st, st))[0]).max() > 1e-3
