"""Tied Q/K (``share_qk=True``) in MultiHeadAttention and TalkingHeadsAttention, and the identity behind lesson 4.

Checks: a tied layer has no W_k and projects keys with W_q (against NumPy); with W_q = W_k the self-attention scores
per head are a Gram matrix — symmetric and positive semi-definite — which shows in the layer's own attention
weights as P_ij P_jk P_ki = P_ji P_kj P_ik (the scores cancel around every cycle) and P_ii P_jj >= P_ij P_ji
(s_ii + s_jj >= 2 s_ij); an untied layer breaks both. Plus the two lessons that train models, on tiny budgets.
"""
import itertools

import numpy as np
import pytest

from autograd import backend, manual_seed
from demos import lesson_attention_maps, lesson_tied_qk
from minattn import MultiHeadAttention, TalkingHeadsAttention
from tests.conftest import host, t64


def _weights(share_qk, seed=0):
    manual_seed(seed)
    layer = MultiHeadAttention(12, 3, share_qk=share_qk, dtype="float64")
    x = t64(np.random.default_rng(seed).standard_normal((2, 6, 12)))
    layer(x, x, x)
    return host(layer.attention_weights), layer, x


def test_tied_layer_has_no_key_projection_and_uses_w_q_for_keys():
    p, layer, x = _weights(True)
    names = dict(layer.named_parameters())
    assert not any(n.startswith("W_k") for n in names)
    xs = host(x)
    wq, bq = host(names["W_q.weight"]), host(names["W_q.bias"])
    q = (xs @ wq.T + bq).reshape(2, 6, 3, 4).transpose(0, 2, 1, 3)          # (B, h, L, d_h)
    s = q @ q.transpose(0, 1, 3, 2) / 2.0                                   # keys = queries; scale 1/√4
    expected = np.exp(s - s.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tied_weights_balance_around_every_cycle_and_favour_self_pairs(seed):
    p, _, _ = _weights(True, seed)                                           # (B, h, L, L)
    length = p.shape[-1]
    for i, j, k in itertools.permutations(range(length), 3):
        forward = p[..., i, j] * p[..., j, k] * p[..., k, i]
        backward = p[..., j, i] * p[..., k, j] * p[..., i, k]
        np.testing.assert_allclose(forward, backward, rtol=1e-10)
    diag = np.diagonal(p, axis1=-2, axis2=-1)                                # (B, h, L)
    self_pairs = diag[..., :, None] * diag[..., None, :]                     # P_ii P_jj
    assert (self_pairs >= p * p.swapaxes(-1, -2) * (1 - 1e-12)).all()


def test_untied_weights_break_both():
    p, _, _ = _weights(False)
    cycle = abs(p[..., 0, 1] * p[..., 1, 2] * p[..., 2, 0] - p[..., 1, 0] * p[..., 2, 1] * p[..., 0, 2])
    assert cycle.max() > 1e-4
    diag = np.diagonal(p, axis1=-2, axis2=-1)
    assert (diag[..., :, None] * diag[..., None, :] < p * p.swapaxes(-1, -2)).any()


def test_share_qk_needs_keys_of_the_model_width():
    with pytest.raises(ValueError, match="share_qk"):
        MultiHeadAttention(8, 2, kdim=4, share_qk=True)
    with pytest.raises(ValueError, match="share_qk"):
        TalkingHeadsAttention(8, 2, kdim=4, share_qk=True)


def test_tied_talking_heads_with_identity_mixing_equals_tied_mha():
    manual_seed(0)
    mha = MultiHeadAttention(8, 2, share_qk=True, dtype="float64")
    th = TalkingHeadsAttention(8, 2, share_qk=True, dtype="float64")
    assert not any(n.startswith("W_k") for n, _ in th.named_parameters())
    for name in ("W_q", "W_v", "W_o"):
        for part in ("weight", "bias"):
            getattr(getattr(th, name), part).data[...] = getattr(getattr(mha, name), part).data
    th.proj_l.weight.data[...] = backend.asarray(np.eye(2))
    th.proj_w.weight.data[...] = backend.asarray(np.eye(2))
    x = t64(np.random.default_rng(1).standard_normal((2, 5, 8)), requires_grad=False)
    np.testing.assert_allclose(host(th(x, x, x, is_causal=True)), host(mha(x, x, x, is_causal=True)),
                               rtol=1e-12, atol=1e-12)


def test_lesson_tied_qk_tiny_run(tmp_path):
    results = lesson_tied_qk.main(["--seeds", "1", "--steps", "20", "--copy-steps", "10", "--out", str(tmp_path)])
    tied, separate = results["identity"]["tied"], results["identity"]["separate"]
    assert tied["max_asymmetry"] < 1e-12 and tied["min_eigenvalue"] > -1e-10 and tied["worst_pair_gap"] > -1e-10
    assert separate["max_asymmetry"] > 1e-3 and separate["worst_pair_gap"] < 0
    assert (tmp_path / "predecessor_attention.png").stat().st_size > 0 and (tmp_path / "results.json").exists()


def test_lesson_attention_maps_tiny_run(tmp_path):
    results = lesson_attention_maps.main(["--steps", "20", "--layers", "1", "--num-heads", "2", "--out",
                                          str(tmp_path)])
    for task in ("copy", "reverse"):
        heads = results[task]["aligned_weight"]
        assert len(heads) == 1 and len(heads[0]) == 2 and all(0 <= a <= 1 for a in heads[0])
        assert (tmp_path / f"attention_maps_{task}.png").stat().st_size > 0


def test_tied_qk_with_qk_norm_normalises_q_and_k_alike_and_stays_symmetric():
    manual_seed(0)
    layer = MultiHeadAttention(8, 2, share_qk=True, qk_norm=True, dtype="float64")
    names = [n for n, _ in layer.named_parameters()]
    assert any(n.startswith("q_norm") for n in names) and not any(n.startswith("k_norm") for n in names)
    layer.q_norm.weight.data[...] = backend.asarray(np.array([1.0, -1.0, 2.0, 0.5]))   # a trained-looking norm
    layer.q_norm.bias.data[...] = backend.asarray(np.array([0.5, -0.3, 0.2, 0.1]))
    x = t64(np.random.default_rng(3).standard_normal((1, 5, 8)), requires_grad=False)
    layer(x, x, x)
    p = host(layer.attention_weights)
    cycle = p[..., 0, 1] * p[..., 1, 2] * p[..., 2, 0] - p[..., 1, 0] * p[..., 2, 1] * p[..., 0, 2]
    np.testing.assert_allclose(cycle, 0, atol=1e-14)


def test_talking_heads_rejects_a_bad_head_dim_and_names_per_head_masks():
    with pytest.raises(ValueError, match="head_dim"):
        TalkingHeadsAttention(8, 4, head_dim=0)
    layer = TalkingHeadsAttention(8, 2, dtype="float64")
    x = t64(np.ones((1, 3, 8)), requires_grad=False)
    with pytest.raises(ValueError, match="one mask must serve every head"):
        layer(x, x, x, attn_mask=np.ones((1, 2, 3, 3), dtype=bool))
