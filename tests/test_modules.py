"""Module / Parameter / ModuleList (minattn/module.py), the layers (minattn/layers.py) and the Transformer.

Checks: registration of parameters and submodules, dotted names ('W_q.weight', 'blocks.0.weight'), zero_grad,
train()/eval() reaching every submodule, state_dict / load_state_dict round trip and its all-or-nothing checks
(missing key, extra key, wrong shape or dtype: raise, model unchanged); layer shapes and values against NumPy
(Linear, LayerNorm, Embedding, the sinusoidal table with base 10000, PositionWiseFFN); the Transformer's forward
shape and greedy_decode; float32 by default with no float64 upcast anywhere in a forward + backward.
"""
import numpy as np
import pytest

from autograd import Tensor, backend, manual_seed
from minattn import (Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, MultiHeadAttention, Parameter,
                     PositionalEncoding, PositionWiseFFN, Transformer)
from minattn import functional as F
from tests import numpy_reference as ref
from tests.conftest import host, t64


class Net(Module):
    def __init__(self):
        super().__init__()
        self.scale = Parameter(backend.asarray(np.ones(3)), dtype="float32")
        self.W_q = Linear(3, 4)
        self.blocks = ModuleList([Linear(4, 4, bias=False), LayerNorm(4)])
        self.drop = Dropout(0.5)
        self.not_a_parameter = Tensor(backend.asarray(np.zeros(2)))

    def forward(self, x):
        h = self.W_q(x * self.scale)
        for block in self.blocks:
            h = block(h)
        return self.drop(h)


NET_NAMES = ["scale", "W_q.weight", "W_q.bias", "blocks.0.weight", "blocks.1.weight", "blocks.1.bias"]


def test_named_parameters_and_registration():
    manual_seed(0)
    net = Net()
    assert [name for name, _ in net.named_parameters()] == NET_NAMES
    assert len(list(net.parameters())) == 6
    assert net.num_parameters() == 3 + 12 + 4 + 16 + 4 + 4
    assert [name for name, _ in net.named_modules()] == ["", "W_q", "blocks", "blocks.0", "blocks.1", "drop"]
    assert len(net.blocks) == 2 and isinstance(net.blocks[1], LayerNorm)
    assert all(p.requires_grad for p in net.parameters())


def test_reassigning_an_attribute_unregisters_it():
    net = Net()
    net.W_q = None
    assert [name for name, _ in net.named_parameters()] == ["scale", "blocks.0.weight", "blocks.1.weight",
                                                            "blocks.1.bias"]
    net.blocks.append(Linear(2, 2))
    assert "blocks.2.weight" in dict(net.named_parameters())


def test_shared_parameter_listed_once():
    class Tied(Module):
        def __init__(self):
            super().__init__()
            self.a = Linear(2, 2)
            self.b = Linear(2, 2)
            self.b.weight = self.a.weight
    assert len(list(Tied().parameters())) == 3


def test_missing_super_init_raises():
    class Bad(Module):
        def __init__(self):
            self.w = Parameter(np.ones(2))
    with pytest.raises(RuntimeError):
        Bad()


def test_zero_grad(rng):
    net = Net()
    x = Tensor(rng.standard_normal((5, 3)), dtype="float32")
    net.eval()
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_train_eval_reach_every_submodule():
    net = Net()
    assert all(m.training for _, m in net.named_modules())
    assert net.eval() is net
    assert not any(m.training for _, m in net.named_modules())
    net.train()
    assert all(m.training for _, m in net.named_modules())
    net.train(False)
    assert not any(m.training for _, m in net.named_modules())


def test_state_dict_round_trip(rng):
    manual_seed(1)
    a = Net()
    manual_seed(2)
    b = Net()
    state = a.state_dict()
    assert list(state) == NET_NAMES
    assert all(isinstance(v, np.ndarray) for v in state.values())
    state["scale"][...] = 7.0                              # a copy: editing it does not touch the model
    assert np.all(host(a.scale) == 1.0)
    state = a.state_dict()
    b.load_state_dict(state)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(host(pa), host(pb), err_msg=name)
    x = Tensor(rng.standard_normal((2, 3)), dtype="float32")
    a.eval()
    b.eval()
    np.testing.assert_array_equal(host(a(x)), host(b(x)))


def _snapshot(net):
    return {name: host(p).copy() for name, p in net.named_parameters()}


@pytest.mark.parametrize("problem", ["missing", "extra", "shape", "dtype"])
def test_load_state_dict_checks_everything_first(problem):
    manual_seed(3)
    net = Net()
    before = _snapshot(net)
    state = {name: (value + 1.0).astype(value.dtype) for name, value in net.state_dict().items()}   # all different
    if problem == "missing":
        del state["blocks.1.bias"]
        error = KeyError
    elif problem == "extra":
        state["blocks.2.weight"] = np.zeros((4, 4), dtype=np.float32)
        error = KeyError
    elif problem == "shape":
        state["blocks.1.bias"] = np.zeros(5, dtype=np.float32)
        error = ValueError
    else:
        state["blocks.1.bias"] = np.zeros(4, dtype=np.float64)
        error = ValueError
    with pytest.raises(error) as err:
        net.load_state_dict(state)
    assert "blocks" in str(err.value)
    after = _snapshot(net)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_linear_shapes_and_values(rng):
    manual_seed(4)
    layer = Linear(4, 3)
    assert host(layer.weight).shape == (3, 4) and host(layer.bias).shape == (3,)
    bound = 1 / np.sqrt(4)
    assert np.all(np.abs(host(layer.weight)) <= bound) and np.all(np.abs(host(layer.bias)) <= bound)
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    out = layer(Tensor(x))
    assert out.shape == (2, 5, 3) and out.dtype == np.float32
    expected = x.astype(np.float64) @ host(layer.weight).T.astype(np.float64) + host(layer.bias)
    np.testing.assert_allclose(host(out), expected, rtol=1e-5, atol=1e-6)
    assert Linear(4, 3, bias=False).bias is None
    assert [n for n, _ in Linear(4, 3, bias=False).named_parameters()] == ["weight"]


def test_layer_norm_module(rng):
    layer = LayerNorm(6, dtype="float64")
    np.testing.assert_array_equal(host(layer.weight), 1.0)
    np.testing.assert_array_equal(host(layer.bias), 0.0)
    x = 2 * rng.standard_normal((2, 3, 6)) + 5
    out = layer(t64(x))
    assert out.shape == (2, 3, 6)
    np.testing.assert_allclose(host(out), ref.layer_norm(x, 1.0, 0.0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(out).mean(axis=-1), 0.0, atol=1e-12)


def test_embedding_module(rng):
    manual_seed(5)
    emb = Embedding(7, 4)
    ids = np.array([[0, 6, 2], [3, 3, 1]])
    out = emb(backend.asarray(ids))
    assert out.shape == (2, 3, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(host(out), host(emb.weight)[ids])
    with pytest.raises(ValueError):
        emb(backend.asarray(np.array([7])))


def test_positional_encoding_table_is_the_sin_cos_formula():
    d, max_len = 6, 50
    pe = PositionalEncoding(d, max_len=max_len, dtype="float64")
    table = np.zeros((max_len, d))
    for pos in range(max_len):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            table[pos, 2 * i] = np.sin(angle)
            table[pos, 2 * i + 1] = np.cos(angle)
    x = np.zeros((2, 10, d))
    out = pe(t64(x))
    assert out.shape == (2, 10, d)
    np.testing.assert_allclose(host(out)[0], table[:10], rtol=0, atol=1e-12)
    np.testing.assert_allclose(host(out)[1], table[:10], rtol=0, atol=1e-12)
    np.testing.assert_allclose(host(pe.P), table, rtol=0, atol=1e-12)
    assert list(pe.parameters()) == []


def test_positional_encoding_adds_and_checks_shape(rng):
    pe = PositionalEncoding(4, max_len=8)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    out = pe(Tensor(x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(host(out), x + host(pe.P)[:5], rtol=1e-6)
    with pytest.raises(ValueError):
        pe(Tensor(np.zeros((1, 9, 4), dtype=np.float32)))        # longer than max_len
    with pytest.raises(ValueError):
        pe(Tensor(np.zeros((1, 5, 3), dtype=np.float32)))        # wrong width


def test_position_wise_ffn(rng):
    manual_seed(6)
    ffn = PositionWiseFFN(4, 8, dtype="float64")
    assert [n for n, _ in ffn.named_parameters()] == ["dense1.weight", "dense1.bias", "dense2.weight", "dense2.bias"]
    x = rng.standard_normal((2, 3, 4))
    out = ffn(t64(x))
    assert out.shape == (2, 3, 4)
    p = {n: host(v) for n, v in ffn.named_parameters()}
    hidden = np.maximum(x @ p["dense1.weight"].T + p["dense1.bias"], 0.0)
    np.testing.assert_allclose(host(out), hidden @ p["dense2.weight"].T + p["dense2.bias"], rtol=1e-12, atol=1e-12)


def test_dropout_module_modes(rng):
    manual_seed(7)
    drop = Dropout(0.5)
    x = Tensor(np.ones((50, 50), dtype=np.float32))
    assert np.any(host(drop(x)) == 0)
    drop.eval()
    np.testing.assert_array_equal(host(drop(x)), 1.0)
    with pytest.raises(ValueError):
        Dropout(1.0)


def _batch(rng, batch=2, src_len=5, tgt_len=6, vocab=11):
    src = rng.integers(3, vocab, (batch, src_len))
    tgt = rng.integers(3, vocab, (batch, tgt_len))
    return backend.asarray(src), backend.asarray(tgt), backend.asarray(np.array([5, 3]))


def test_transformer_forward_shape(rng):
    manual_seed(8)
    model = Transformer(11, 13, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=2, num_decoder_layers=1)
    src, tgt, lens = _batch(rng)
    logits = model(src, tgt, lens)
    assert logits.shape == (2, 6, 13) and logits.dtype == np.float32
    weights = model.cross_attention_weights()
    assert len(weights) == 1 and weights[0].shape == (2, 2, 6, 5)
    assert np.all(host(weights[0])[1, :, :, 3:] == 0)          # padding keys of sequence 1 get no weight


def test_transformer_checks_each_id_and_length_argument_once_per_call(rng, monkeypatch):
    """Each range check of ids or lengths is a read of the device on CuPy: the public entry points check src,
    tgt_in and src_valid_lens once, then run unchecked private paths — encode and decode do not check them again,
    and greedy_decode does not re-check the tokens it makes itself. (Before: forward checked each of them twice,
    greedy_decode tgt_in and src_valid_lens at every token.) The layers inside (the blocks, the attention, the
    embeddings) still check what they are given, as any caller's."""
    from autograd import checks
    names = []
    for check in ("int_ids", "lengths"):
        def counted(name, *args, _check=getattr(checks, check), **kwargs):
            names.append(name)
            return _check(name, *args, **kwargs)
        monkeypatch.setattr(checks, check, counted)
    manual_seed(8)
    model = Transformer(11, 13, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=2, num_decoder_layers=2)
    src, tgt, lens = _batch(rng)
    model(src, tgt, lens)
    assert (names.count("src"), names.count("tgt_in"), names.count("src_valid_lens")) == (1, 1, 1)
    names.clear()
    for use_cache in (True, False):
        model.greedy_decode(src, lens, bos_id=1, eos_id=2, max_len=5, use_cache=use_cache)
        assert (names.count("src"), names.count("tgt_in"), names.count("src_valid_lens")) == (1, 0, 1)
        names.clear()


def test_transformer_greedy_decode(rng):
    manual_seed(9)
    model = Transformer(11, 13, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=1, num_decoder_layers=1,
                        dropout=0.1)
    src, _, lens = _batch(rng)
    model.train()
    out = model.greedy_decode(src, lens, bos_id=1, eos_id=2, max_len=7)
    assert isinstance(out, np.ndarray)
    assert out.shape == (2, 7) and out.dtype.kind == "i"
    assert np.all((out >= 0) & (out < 13))
    assert model.training and all(m.training for _, m in model.named_modules())   # previous mode restored
    # greedy: the first token is the argmax of the eval-mode logits after BOS
    model.eval()
    first = host(model(src, backend.asarray(np.ones((2, 1), dtype=np.int64)), lens))[:, -1].argmax(axis=-1)
    np.testing.assert_array_equal(out[:, 0], first)


def test_transformer_greedy_decode_stops_at_eos_and_pads(rng):
    manual_seed(11)
    model = Transformer(11, 13, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=1, num_decoder_layers=1)
    src, _, lens = _batch(rng)
    bias = host(model.output.bias).copy()
    bias[2] = 1e3                                              # EOS always wins: every sequence ends at once
    model.output.bias.data[...] = backend.asarray(bias)
    out = model.greedy_decode(src, lens, bos_id=1, eos_id=2, max_len=5, pad_id=0)
    np.testing.assert_array_equal(out, [[2, 0, 0, 0, 0], [2, 0, 0, 0, 0]])
    bias[2], bias[7] = 0.0, 1e3                                # token 7 always wins: no EOS, max_len tokens
    model.output.bias.data[...] = backend.asarray(bias)
    np.testing.assert_array_equal(model.greedy_decode(src, lens, bos_id=1, eos_id=2, max_len=4), np.full((2, 4), 7))


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_float32_everywhere(rng, norm_first):
    manual_seed(10)
    model = Transformer(11, 13, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=1, num_decoder_layers=2,
                        dropout=0.1, norm_first=norm_first)
    assert all(p.dtype == np.float32 for p in model.parameters())
    src, tgt, lens = _batch(rng)
    model.train()
    logits = model(src, tgt, lens)
    assert logits.dtype == np.float32
    target = rng.integers(0, 13, (2, 6))
    target[1, 4:] = -100
    loss = F.cross_entropy(logits.permute(0, 2, 1), backend.asarray(target), label_smoothing=0.1)
    assert loss.dtype == np.float32
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.dtype == np.float32, name
        assert np.all(np.isfinite(host(p.grad))), name


def test_layers_default_to_float32():
    layers = [Linear(3, 2), LayerNorm(3), Embedding(4, 3), PositionWiseFFN(3, 5), MultiHeadAttention(4, 2)]
    for layer in layers:
        for name, p in layer.named_parameters():
            assert p.dtype == np.float32, (type(layer).__name__, name)
    assert PositionalEncoding(4).P.dtype == np.float32


def test_parameter_owns_its_array():
    a = backend.asarray(np.zeros(3, dtype=np.float32))
    p = Parameter(a)
    p.data -= 1
    np.testing.assert_array_equal(host(a), np.zeros(3))


def test_pre_norm_transformer_normalises_the_encoder_output():
    manual_seed(0)
    model = Transformer(7, 7, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=1, num_decoder_layers=1,
                        norm_first=True)
    memory = host(model.encode(Tensor(np.array([[3, 4, 5]])), np.array([3])))
    np.testing.assert_allclose(memory.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(memory.std(-1), 1, atol=1e-2)


def test_greedy_decode_checks_its_arguments_and_restores_the_mode():
    manual_seed(0)
    model = Transformer(7, 7, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=1, num_decoder_layers=1,
                        max_len=5)
    src = Tensor(np.array([[3, 4, 5]]))
    with pytest.raises(ValueError, match="max_len"):
        model.greedy_decode(src, np.array([3]), 1, 2, max_len=6)
    with pytest.raises(ValueError, match="eos_id"):
        model.greedy_decode(src, np.array([3]), 1, 9, max_len=4)
    with pytest.raises(ValueError, match="valid_lens"):
        model.greedy_decode(src, np.array([3, 3]), 1, 2, max_len=4)
    assert model.training
