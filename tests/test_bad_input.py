"""Mistakes a learner makes, each rejected clearly — and rejected BEFORE anything changed.

Every test below is one distinct mistake (its entry points parametrized). Each asserts three things:
  1. the exception type;
  2. a message that names the argument and says what was expected and what was got (matched by regex);
  3. that no state changed, where there is state: parameters (bit for bit), their ``.grad`` (a gradient from an
     earlier backward is in place, so "unchanged" is not just "still None"), the optimizer's state (step count, lr,
     m, v), layer modes and ``attention_weights``, and both of autograd's random streams (a rejected call must not
     have drawn a dropout mask).

58 distinct mistakes, numbered as the tests are (test_01 … test_58). Eight of them (43, 51–54, 58, and the
Transformer entries of 15 and 29) were first written as strict xfails that exposed gaps in the library; the gaps
were fixed and the marks dropped.

 masks and lengths       1 attn_mask of the wrong shape             2 integer attn_mask
                         3 float attn_mask of another float dtype   4 3-D attn_mask to MultiHeadAttention (PyTorch's
                                                                      (B·h, L, S) layout)
                         5 valid_lens longer than the keys          6 negative valid_lens
                         7 valid_lens for another batch size        8 float valid_lens
                         9 valid_lens (B, L) for another L          10 is_causal together with attn_mask
                        11 an attn_mask that requires grad          12 valid_lens as a plain int
 shapes                 13 query/key feature size mismatch          14 key/value length mismatch
                        15 num_heads not dividing embed_dim         16 a query without its batch axis
                        17 Linear input of the wrong width          18 dropout_p passed positionally (PyTorch order)
                        19 LayerNorm over the wrong width           20 a per-head mask to talking heads
                        21 a sequence longer than the positional table
 dtypes                 22 float64 input into a float32 Linear      23 integer input into Linear
                        24 float + int tensors                      25 float32 + float64 tensors
                        26 an integer tensor requiring grad         27 embedding with float ids
                        28 a NumPy array where a Tensor is needed
 token ids              29 token id >= vocab                        30 negative token id
 loss                   31 cross_entropy target out of range        32 target of float dtype (one-hot / probabilities)
                        33 target of the wrong shape                34 (B, T, V) logits with (B, T) targets
                        35 unknown reduction                        36 label_smoothing outside [0, 1]
 autograd               37 backward on a non-scalar without grad    38 backward through a freed graph
                        39 backward with a grad of the wrong shape  40 backward on a loss made under no_grad
                        41 gradcheck with float32 inputs            42 a CuPy array on the NumPy backend
                        43 backward through a PARTLY freed graph (grads of other leaves change first)
 state                  44 load_state_dict: a missing entry         45 load_state_dict: an unexpected entry
                        46 load_state_dict: a misshaped entry       47 load_state_dict: another dtype
 optimizer              48 an empty parameter list (a spent generator)   49 a negative learning rate
                        50 optimizer load_state_dict of another optimizer or misshaped buffers
                        51 a single Tensor instead of a list of parameters
                        52 Adam betas outside [0, 1)         53 the same parameter listed twice
                        54 a NaN learning rate
 configuration          55 dropout p >= 1                           56 greedy_decode beyond the positional table
                        57 an unknown backend name (subprocess)     58 softmax over an axis that x lacks
"""
import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck, no_grad
from minattn import (SGD, Adam, Dropout, LayerNorm, Linear, MultiHeadAttention, TalkingHeadsAttention, Transformer,
                     checkpoint, manual_seed)
from minattn import functional as F
from minattn.module import Module
from minattn.optim import Optimizer
from tests.conftest import host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- "nothing changed" -----------------------------------------------------------------------------------------------
def _copy(a):
    return None if a is None else host(a).copy()


def snapshot(*things):
    """Everything observable about ``things`` (Modules, Optimizers, Tensors) and autograd's random streams."""
    state = {"rng": json.dumps(checkpoint.rng_state())}
    for i, thing in enumerate(things):
        if isinstance(thing, Module):
            for name, p in thing.named_parameters():
                state[f"{i}:{name}"] = _copy(p.data)
                state[f"{i}:{name}.grad"] = _copy(p.grad)
            for name, m in thing.named_modules():
                state[f"{i}:{name}.training"] = m.training
                if hasattr(m, "attention_weights"):
                    state[f"{i}:{name}.attention_weights"] = id(m.attention_weights)
        elif isinstance(thing, Optimizer):
            opt_state = thing.state_dict()
            for key, value in opt_state.items():
                if key in thing.buffers:
                    for j, a in enumerate(value):
                        state[f"{i}:{key}[{j}]"] = None if a is None else a.copy()
                else:
                    state[f"{i}:{key}"] = value
            for j, p in enumerate(thing.params):
                state[f"{i}:param[{j}]"] = _copy(p.data)
        elif isinstance(thing, Tensor):
            state[f"{i}:data"] = _copy(thing.data)
            state[f"{i}:grad"] = _copy(thing.grad)
            state[f"{i}:requires_grad"] = thing.requires_grad
            node = thing._node   # the Node itself, and what it holds: a freed graph shows here
            state[f"{i}:node"] = None if node is None else (id(node), node.function, id(node.ctx), node.ctx.freed,
                                                            tuple(map(id, node.inputs)))
        else:
            raise TypeError(f"snapshot: cannot observe {type(thing).__name__}")
    return state


def assert_same(before, after):
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), f"{key}: {a!r} became {b!r}"
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), f"{key} changed"
        else:
            assert a == b, f"{key} changed: {a!r} -> {b!r}"


@contextlib.contextmanager
def unchanged(*things):
    """Assert that the block changes nothing observable about ``things`` (see ``snapshot``)."""
    before = snapshot(*things)
    yield
    assert_same(before, snapshot(*things))


# --- fixtures: a layer and a model mid-training, gradients in place --------------------------------------------------
def f32(rng, *shape):
    return Tensor(backend.asarray(rng.standard_normal(shape).astype(np.float32)))


@pytest.fixture
def mha(rng):
    """(layer, optimizer, x): MultiHeadAttention(8, 2, dropout=0.1) after two Adam steps, with .grad and
    attention_weights from a third forward/backward; x is (2, 3, 8) float32."""
    manual_seed(0)
    layer = MultiHeadAttention(8, 2, dropout=0.1)
    optimizer = Adam(layer.parameters(), lr=0.01)
    x = f32(rng, 2, 3, 8)
    for _ in range(2):
        optimizer.zero_grad()
        layer(x, x, x).sum().backward()
        optimizer.step()
    layer(x, x, x).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    return layer, optimizer, x


@pytest.fixture
def model(rng):
    """(transformer, optimizer): a 1+1-layer Transformer over 10 tokens, max_len 6, one Adam step, grads in place."""
    manual_seed(1)
    net = Transformer(10, 10, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=1, num_decoder_layers=1,
                      dropout=0.1, max_len=6)
    optimizer = Adam(net.parameters(), lr=0.01)
    src = Tensor(backend.asarray(rng.integers(3, 10, (2, 4))))
    tgt = Tensor(backend.asarray(rng.integers(3, 10, (2, 5))))
    for _ in range(2):
        logits = net(src, tgt, backend.asarray(np.array([4, 2])))
        loss = F.cross_entropy(logits.reshape(-1, 10), tgt.data.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        if optimizer.step_count == 0:
            optimizer.step()
    return net, optimizer


def ids(array):
    return Tensor(backend.asarray(np.asarray(array, dtype=np.int64)))


# ---------------------------------------------------------------------------------------------------------------------
# masks and lengths
# ---------------------------------------------------------------------------------------------------------------------
def test_01_attn_mask_of_the_wrong_shape(mha):
    layer, opt, x = mha
    with unchanged(layer, opt), pytest.raises(ValueError, match=r"MultiHeadAttention: attn_mask must be broadcastable "
                                                                r"to the scores' \(L, S\) = \(3, 3\), got ndarray of "
                                                                r"shape \(3, 4\)"):
        layer(x, x, x, attn_mask=backend.asarray(np.ones((3, 4), dtype=bool)))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_02_integer_attn_mask(mha, dtype):
    layer, opt, x = mha
    pattern = rf"attn_mask must be boolean \(True = take part\) or float .*, got ndarray of shape \(3, 3\), dtype " \
              rf"{dtype.__name__}"
    with unchanged(layer, opt), pytest.raises(TypeError, match=pattern):
        layer(x, x, x, attn_mask=backend.asarray(np.ones((3, 3), dtype=dtype)))


def test_03_float_attn_mask_of_another_float_dtype(mha):
    layer, opt, x = mha
    with unchanged(layer, opt), pytest.raises(TypeError, match=r"attn_mask must be boolean, or float of the scores' "
                                                               r"dtype float32, got ndarray .*dtype float64"):
        layer(x, x, x, attn_mask=backend.asarray(np.zeros((3, 3))))


def test_04_three_d_attn_mask_in_pytorch_layout(mha):
    layer, opt, x = mha
    pattern = r"attn_mask must be \(L, S\), \(B, 1, L, S\) or \(B, h, L, S\): a 3-D mask is ambiguous.*, got " \
              r"ndarray of shape \(4, 3, 3\)"
    with unchanged(layer, opt), pytest.raises(ValueError, match=pattern):
        layer(x, x, x, attn_mask=backend.asarray(np.ones((4, 3, 3), dtype=bool)))   # (B·h, L, S)


def test_05_valid_lens_longer_than_the_keys(mha):
    layer, opt, x = mha
    pattern = r"valid_lens must be lengths in \[0, 3\], got values in \[2, 4\]"
    with unchanged(layer, opt), pytest.raises(ValueError, match=pattern):
        layer(x, x, x, valid_lens=backend.asarray(np.array([4, 2])))


def test_06_negative_valid_lens(mha):
    layer, opt, x = mha
    with unchanged(layer, opt), pytest.raises(ValueError, match=r"valid_lens must be lengths in \[0, 3\], got values "
                                                                r"in \[-1, 2\]"):
        layer(x, x, x, valid_lens=backend.asarray(np.array([-1, 2])))


def test_07_valid_lens_for_another_batch_size(mha):
    layer, opt, x = mha
    with unchanged(layer, opt), pytest.raises(ValueError, match=r"valid_lens must be lengths of shape \(2,\) or "
                                                                r"\(2, 3\), got ndarray of shape \(3,\)"):
        layer(x, x, x, valid_lens=backend.asarray(np.array([1, 2, 3])))


@pytest.mark.parametrize("call", ["layer", "masked_softmax"])
def test_08_float_valid_lens(mha, call):
    layer, opt, x = mha
    lens = backend.asarray(np.array([1.0, 2.0]))
    with unchanged(layer, opt), pytest.raises(TypeError, match=r"valid_lens must be integers, got ndarray of shape "
                                                               r"\(2,\), dtype float64"):
        if call == "layer":
            layer(x, x, x, valid_lens=lens)
        else:
            F.masked_softmax(Tensor(backend.asarray(np.zeros((2, 3, 3), dtype=np.float32))), lens)


def test_09_per_query_valid_lens_for_another_number_of_queries(mha):
    layer, opt, x = mha
    with unchanged(layer, opt), pytest.raises(ValueError, match=r"valid_lens must be lengths of shape \(2,\) or "
                                                                r"\(2, 3\), got ndarray of shape \(2, 5\)"):
        layer(x, x, x, valid_lens=backend.asarray(np.ones((2, 5), dtype=np.int64)))


@pytest.mark.parametrize("call", ["layer", "sdpa"])
def test_10_is_causal_together_with_attn_mask(mha, call):
    layer, opt, x = mha
    mask = backend.asarray(np.tril(np.ones((3, 3), dtype=bool)))
    with unchanged(layer, opt, x), pytest.raises(ValueError, match=r"attn_mask must be None with is_causal=True \(pass "
                                                                    r"either attn_mask or is_causal=True, not both"):
        if call == "layer":
            layer(x, x, x, attn_mask=mask, is_causal=True)
        else:
            F.scaled_dot_product_attention(x, x, x, mask, is_causal=True)


def test_11_attn_mask_that_requires_grad(mha):
    layer, opt, x = mha
    bias = Tensor(backend.asarray(np.zeros((3, 3), dtype=np.float32)), requires_grad=True)
    with unchanged(layer, opt, bias), pytest.raises(TypeError, match=r"attn_mask must be a constant \(it would get no "
                                                                    r"gradient"):
        layer(x, x, x, attn_mask=bias)


def test_12_valid_lens_as_a_plain_int(mha):
    layer, opt, x = mha
    with unchanged(layer, opt), pytest.raises(ValueError, match=r"valid_lens must be lengths of shape \(2,\) or "
                                                                r"\(2, 3\), got 2 \(int\)"):
        layer(x, x, x, valid_lens=2)


# ---------------------------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["layer", "sdpa"])
def test_13_query_key_feature_size_mismatch(mha, rng, call):
    layer, opt, x = mha
    key = f32(rng, 2, 3, 6)
    if call == "layer":
        with unchanged(layer, opt), pytest.raises(ValueError, match=r"key must be \(batch, length, 8\), got Tensor "
                                                                    r"of shape \(2, 3, 6\)"):
            layer(x, key, key)
    else:
        with unchanged(x, key), pytest.raises(ValueError, match=r"key must be \(\.\.\., S, 8\): the last axis E of "
                                                                r"query \(2, 3, 8\), got Tensor of shape \(2, 3, 6\)"):
            F.scaled_dot_product_attention(x, key, x)


@pytest.mark.parametrize("call", ["layer", "sdpa"])
def test_14_key_value_length_mismatch(mha, rng, call):
    layer, opt, x = mha
    key, value = f32(rng, 2, 5, 8), f32(rng, 2, 4, 8)
    fn = layer if call == "layer" else F.scaled_dot_product_attention
    with unchanged(layer, opt), pytest.raises(ValueError, match=r"value must be \((batch|\.\.\.), 5, (vdim|Ev)\): "
                                                                r"the length (axis )?S of key \(2, 5, 8\), got Tensor "
                                                                r"of shape \(2, 4, 8\)"):
        fn(x, key, value)


@pytest.mark.parametrize("make", [lambda: MultiHeadAttention(10, 3), lambda: TalkingHeadsAttention(10, 3),
                                  lambda: Transformer(5, 5, embed_dim=10, num_heads=4)],
                         ids=["mha", "talking_heads", "transformer"])
def test_15_num_heads_not_dividing_embed_dim(make):
    with unchanged(), pytest.raises(ValueError, match=r"num_heads must be a divisor of embed_dim=10.*, got [34]"):
        make()                                                      # unchanged(): no draw from the random streams


def test_16_query_without_its_batch_axis(mha):
    layer, opt, x = mha
    pattern = r"query must be \(batch, length, 8\), got Tensor of shape \(3, 8\)"
    with unchanged(layer, opt), pytest.raises(ValueError, match=pattern):
        layer(x[0], x, x)


def test_17_linear_input_of_the_wrong_width(rng):
    lin = Linear(4, 3)
    with unchanged(lin), pytest.raises(ValueError, match=r"x must be \(\.\.\., in_features=4\), got Tensor of "
                                                    r"shape \(2, 5\)"):
        lin(f32(rng, 2, 5))


def test_18_dropout_p_passed_positionally_in_pytorchs_order(mha):
    """PyTorch's order is (q, k, v, attn_mask, dropout_p, is_causal): here everything after attn_mask is keyword-only,
    so a ported call fails instead of silently meaning something else."""
    layer, opt, x = mha
    with unchanged(x), pytest.raises(TypeError, match=r"scaled_dot_product_attention\(\) takes from 3 to 4 "
                                                      r"positional arguments but 5 were given"):
        F.scaled_dot_product_attention(x, x, x, None, 0.1)


def test_19_layer_norm_over_the_wrong_width(rng):
    norm = LayerNorm(4)
    with unchanged(norm), pytest.raises(ValueError, match=r"x must be \(\.\.\., 4\) to match the weight of shape "
                                                     r"\(4,\), got Tensor of shape \(2, 3\)"):
        norm(f32(rng, 2, 3))


def test_20_a_per_head_mask_to_talking_heads(rng):
    manual_seed(2)
    layer = TalkingHeadsAttention(8, 2)
    x = f32(rng, 2, 3, 8)
    with unchanged(layer), pytest.raises(ValueError, match=r"attn_mask must be \(L, S\) or \(B, 1, L, S\): talking "
                                                           r"heads mix the heads.*, got ndarray of shape "
                                                           r"\(2, 2, 3, 3\)"):
        layer(x, x, x, attn_mask=backend.asarray(np.ones((2, 2, 3, 3), dtype=bool)))


def test_21_a_sequence_longer_than_the_positional_table(model):
    net, opt = model
    with unchanged(net, opt), pytest.raises(ValueError, match=r"src must be \(batch, S <= 6\) token ids, got "
                                                            r"ndarray of shape \(1, 7\)"):
        net(ids([[3] * 7]), ids([[3] * 2]), backend.asarray(np.array([7])))


# ---------------------------------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------------------------------
def test_22_float64_input_into_a_float32_linear(rng):
    lin = Linear(4, 3)
    x = Tensor(backend.asarray(rng.standard_normal((2, 4))))      # NumPy's default float64
    with unchanged(lin, x), pytest.raises(TypeError, match=r"x must be of weight's dtype float32 \(cast one "
                                                          r"explicitly\), got Tensor of shape \(2, 4\), dtype float64"):
        lin(x)


def test_23_integer_input_into_linear():
    lin = Linear(4, 3)
    with unchanged(lin), pytest.raises(TypeError, match=r"x must be a floating minattn Tensor, got Tensor of "
                                                   r"shape \(2, 4\), dtype int64"):
        lin(ids(np.ones((2, 4))))


@pytest.mark.parametrize("order", ["float_first", "int_first"])
def test_24_float_and_int_tensors_mixed(order):
    a = Tensor(backend.asarray(np.ones(3, dtype=np.float32)), requires_grad=True)
    b = ids([1, 2, 3])
    with unchanged(a, b), pytest.raises(TypeError, match=r"operands have dtypes (float32 and int64|int64 and float32); "
                                                         r"cast one explicitly"):
        a + b if order == "float_first" else b * a


def test_25_float32_and_float64_tensors_mixed(rng):
    a = Tensor(backend.asarray(np.ones(3, dtype=np.float32)), requires_grad=True)
    b = Tensor(backend.asarray(rng.standard_normal(3)), requires_grad=True)
    with unchanged(a, b), pytest.raises(TypeError, match=r"operands have dtypes float32 and float64"):
        a @ b


@pytest.mark.parametrize("data", [[1, 2], np.ones(3, dtype=np.int32), np.ones(3, dtype=bool)],
                         ids=["python_ints", "int32", "bool"])
def test_26_integer_tensor_requiring_grad(data):
    with unchanged(), pytest.raises(TypeError, match=r"requires_grad must be False for a tensor of dtype "
                                                   r"(int|bool).* \(only floating tensors can require grad\)"):
        Tensor(data, requires_grad=True)


def test_27_embedding_with_float_ids(model):
    net, opt = model
    float_ids = Tensor(backend.asarray(np.array([[3.0, 4.0]], dtype=np.float32)))
    with unchanged(net, opt), pytest.raises(TypeError, match=r"embedding: ids must be integers, got Tensor of shape "
                                                             r"\(1, 2\), dtype float32"):
        net.src_embedding(float_ids)


@pytest.mark.parametrize("call", ["linear", "cross_entropy", "mha"])
def test_28_a_numpy_array_where_a_tensor_is_needed(mha, call):
    layer, opt, x = mha
    array = np.ones((2, 3, 8), dtype=np.float32)
    with unchanged(layer, opt), pytest.raises(TypeError, match=r"(x|logits|query) must be a floating minattn Tensor, "
                                                             r"got ndarray"):
        if call == "linear":
            layer.W_q(array)
        elif call == "cross_entropy":
            F.cross_entropy(array[0], np.zeros(3, dtype=np.int64))
        else:
            layer(array, x, x)


# ---------------------------------------------------------------------------------------------------------------------
# token ids
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["src", "tgt", "greedy_src"])
def test_29_token_id_not_below_the_vocabulary_size(model, where):
    net, opt = model
    good, bad = ids([[3, 4, 5]]), ids([[3, 10, 5]])
    with unchanged(net, opt), pytest.raises(ValueError, match=r"(src|tgt_in) must be ids in \[0, 10\), got values "
                                                              r"in \[3, 10\]"):
        if where == "src":
            net(bad, good)
        elif where == "tgt":
            net(good, bad)
        else:
            net.greedy_decode(bad, backend.asarray(np.array([3])), 1, 2, 4)


def test_30_negative_token_id(model):
    net, opt = model
    with unchanged(net, opt), pytest.raises(ValueError, match=r"src must be ids in \[0, 10\), got values in "
                                                              r"\[-1, 5\]"):
        net(ids([[3, -1, 5]]), ids([[3, 4]]))


# ---------------------------------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def logits(rng):
    return Tensor(backend.asarray(rng.standard_normal((4, 5)).astype(np.float32)), requires_grad=True)


@pytest.mark.parametrize("bad,shown", [(5, r"\[0, 5\]"), (-3, r"\[-3, 2\]")])
def test_31_cross_entropy_target_out_of_range(logits, bad, shown):
    target = backend.asarray(np.array([0, 1, bad, 2]))
    with unchanged(logits), pytest.raises(ValueError, match=rf"target must be class ids in \[0, 5\) or "
                                                            rf"ignore_index=-100, got values in {shown}"):
        F.cross_entropy(logits, target)


@pytest.mark.parametrize("target", [np.eye(5)[[0, 1, 2, 3]], np.array([0.0, 1.0, 2.0, 2.0])],
                         ids=["one_hot", "float_ids"])
def test_32_cross_entropy_target_of_float_dtype(logits, target):
    with unchanged(logits), pytest.raises(TypeError, match=r"target must be integers, got ndarray of shape .*, "
                                                        r"dtype float64"):
        F.cross_entropy(logits, backend.asarray(target))


@pytest.mark.parametrize("shape,shown", [((3,), r"\(3,\)"), ((4, 1), r"\(4, 1\)")])
def test_33_cross_entropy_target_of_the_wrong_shape(logits, shape, shown):
    target = backend.asarray(np.zeros(shape, dtype=np.int64))
    pattern = rf"target must be \(4,\) to match logits \(N, C, \.\.\.\) of shape \(4, 5\), got ndarray of shape " \
              rf"{shown}"
    with unchanged(logits), pytest.raises(ValueError, match=pattern):
        F.cross_entropy(logits, target)


def test_34_classes_last_logits_with_sequence_targets(rng):
    """PyTorch wants (N, C, d1): passing the decoder's (B, T, V) logits with (B, T) targets is refused (unless
    T == V, which no shape check can catch — reshape to (B·T, V) as the copy-task demo does)."""
    logits = Tensor(backend.asarray(rng.standard_normal((2, 4, 7)).astype(np.float32)), requires_grad=True)
    target = backend.asarray(rng.integers(0, 7, (2, 4)))
    with unchanged(logits), pytest.raises(ValueError, match=r"target must be \(2, 7\) to match logits \(N, C, "
                                                            r"\.\.\.\) of shape \(2, 4, 7\), got ndarray of shape "
                                                            r"\(2, 4\)"):
        F.cross_entropy(logits, target)


def test_35_cross_entropy_unknown_reduction(logits):
    with unchanged(logits), pytest.raises(ValueError, match=r"reduction must be one of 'mean', 'sum', 'none', "
                                                            r"got 'avg' \(str\)"):
        F.cross_entropy(logits, backend.asarray(np.zeros(4, dtype=np.int64)), reduction="avg")


@pytest.mark.parametrize("smoothing", [-0.1, 1.5])
def test_36_label_smoothing_outside_0_1(logits, smoothing):
    with unchanged(logits), pytest.raises(ValueError, match=rf"label_smoothing must be a finite number in "
                                                            rf"\[0, 1\], got {smoothing} \(float\)"):
        F.cross_entropy(logits, backend.asarray(np.zeros(4, dtype=np.int64)), label_smoothing=smoothing)


# ---------------------------------------------------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------------------------------------------------
def test_37_backward_on_a_non_scalar_without_grad(mha):
    layer, opt, x = mha
    out = layer(x, x, x)                                            # (2, 3, 8): forgot the .sum() / loss
    with unchanged(layer, opt), pytest.raises(RuntimeError, match=r"backward\(\) without a gradient needs a "
                                                                  r"one-element tensor; got shape \(2, 3, 8\)"):
        out.backward()


def test_38_backward_through_a_freed_graph(mha):
    layer, opt, x = mha
    loss = layer(x, x, x).sum()
    loss.backward()                                                 # frees the graph
    with unchanged(layer, opt), pytest.raises(RuntimeError, match=r"a second time.*retain_graph=True"):
        loss.backward()


def test_39_backward_with_a_grad_of_the_wrong_shape(mha):
    layer, opt, x = mha
    out = layer(x, x, x)
    with unchanged(layer, opt), pytest.raises(RuntimeError, match=r"grad has shape \(2, 3\), expected \(2, 3, 8\)"):
        out.backward(backend.asarray(np.ones((2, 3), dtype=np.float32)))


def test_40_backward_on_a_loss_made_under_no_grad(mha):
    layer, opt, x = mha
    with no_grad():
        loss = layer(x, x, x).sum()                                  # e.g. copied from the evaluation loop
    with unchanged(layer, opt), pytest.raises(RuntimeError, match=r"does not require grad \(no graph was recorded\)"):
        loss.backward()


def test_41_gradcheck_with_float32_inputs():
    x = Tensor(backend.asarray(np.ones(3, dtype=np.float32)), requires_grad=True)
    with unchanged(x), pytest.raises(TypeError, match=r"gradcheck: inputs\[0\] must be float64 .*, got "
                                                   r"Tensor of shape \(3,\), dtype float32"):
        gradcheck(lambda t: t * 2.0, [x])


class FakeCupyArray:
    """Stands in for a cupy.ndarray (CuPy is not installed here): as_data recognises the other backend's arrays by
    the module of their type, so this exercises exactly the check a real CuPy array meets."""
    shape, dtype, ndim = (2,), np.dtype("int64"), 1


FakeCupyArray.__module__ = "cupy._core.core"


@pytest.mark.skipif(backend.BACKEND != "numpy", reason="on the CuPy backend the foreign array is a NumPy array, which "
                                                       "is copied to the device by design")
@pytest.mark.parametrize("call", ["Tensor", "operand", "valid_lens", "embedding_ids", "cross_entropy_target"])
def test_42_a_cupy_array_on_the_numpy_backend(mha, model, call):
    layer, opt, x = mha
    net, net_opt = model
    fake = FakeCupyArray()
    with unchanged(layer, opt, net, net_opt, x), \
            pytest.raises(TypeError, match=r"got a cupy\._core\.core array while MINATTN_BACKEND=numpy; move it to "
                                           r"the host first"):
        if call == "Tensor":
            Tensor(fake)
        elif call == "operand":
            x + fake
        elif call == "valid_lens":
            layer(x, x, x, valid_lens=fake)
        elif call == "embedding_ids":
            net.src_embedding(fake)
        else:
            F.cross_entropy(x[0], fake)


def test_43_backward_through_a_partly_freed_graph_changes_no_gradient():
    x = Tensor(backend.asarray(np.ones(3)), requires_grad=True)
    y = Tensor(backend.asarray(np.ones(3)), requires_grad=True)
    h = y * 2.0
    h.sum().backward()                                              # frees h's node
    loss = x.sum() + h.sum()                                        # a new graph that reuses the freed h
    with unchanged(x, y), pytest.raises(RuntimeError, match=r"retain_graph"):
        loss.backward()                                             # today: raises, but only after x.grad = 1


# ---------------------------------------------------------------------------------------------------------------------
# state dicts
# ---------------------------------------------------------------------------------------------------------------------
def broken_state(net, problem):
    state = {name: (value + 1).astype(value.dtype) for name, value in net.state_dict().items()}   # all different
    last = list(state)[-1]                                          # so a write-as-you-go would have changed the rest
    if problem == "missing":
        del state[last]
    elif problem == "unexpected":
        state["decoder_blocks.1.ffn.dense1.weight"] = np.zeros((16, 8), dtype=np.float32)
    elif problem == "misshaped":
        state[last] = np.zeros(11, dtype=np.float32)
    else:
        state[last] = state[last].astype(np.float64)
    return state, last


def test_44_load_state_dict_with_a_missing_entry(model):
    net, opt = model
    state, last = broken_state(net, "missing")
    with unchanged(net, opt), pytest.raises(KeyError, match=rf"missing \['{last}'\], unexpected \[\]"):
        net.load_state_dict(state)


def test_45_load_state_dict_with_an_unexpected_entry(model):
    net, opt = model
    state, _ = broken_state(net, "unexpected")
    with unchanged(net, opt), pytest.raises(KeyError, match=r"missing \[\], unexpected "
                                                            r"\['decoder_blocks\.1\.ffn\.dense1\.weight'\]"):
        net.load_state_dict(state)


def test_46_load_state_dict_with_a_misshaped_entry(model):
    net, opt = model
    state, last = broken_state(net, "misshaped")
    pattern = rf"{last}: expected \(10,\) float32, got \(11,\) float32"
    with unchanged(net, opt), pytest.raises(ValueError, match=pattern):
        net.load_state_dict(state)


def test_47_load_state_dict_with_another_dtype(model):
    net, opt = model
    state, last = broken_state(net, "dtype")
    pattern = rf"{last}: expected \(10,\) float32, got \(10,\) float64"
    with unchanged(net, opt), pytest.raises(ValueError, match=pattern):
        net.load_state_dict(state)


# ---------------------------------------------------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [SGD, Adam])
def test_48_optimizer_given_an_empty_parameter_list(model, make):
    net, _ = model
    params = net.parameters()                                       # a generator ...
    Adam(params)                                                    # ... spent by a first optimizer
    with unchanged(net), pytest.raises(ValueError, match=r"params must be a non-empty list of Tensors \(a spent "
                                                       r"generator is empty\), got \[\]"):
        make(params)


def test_49_negative_learning_rate(model):
    net, _ = model
    with unchanged(net), pytest.raises(ValueError, match=r"SGD: lr must be a finite number >= 0, got -0.1"):
        SGD(net.parameters(), lr=-0.1)


@pytest.mark.parametrize("problem", ["other_optimizer", "misshaped_buffer"])
def test_50_optimizer_load_state_dict_that_does_not_fit(model, problem):
    net, opt = model
    if problem == "other_optimizer":
        state = SGD(net.parameters(), momentum=0.9).state_dict()
        error, pattern = ValueError, (r"state must be the state of an optimizer of this one's type, Adam, got the "
                                      r"state of an optimizer of type SGD")
    else:
        state = opt.state_dict()
        state["v"][3] = np.zeros((2, 2), dtype=np.float32)
        state["step_count"] = -1
        error, pattern = ValueError, (r"step_count must be an int >= 0, got -1 \(int\); .*v\[3\] must be an array "
                                      r"of \([\d, ]+\) float32 \(its parameter's\), got ndarray of shape \(2, 2\), "
                                      r"dtype float32")
    with unchanged(net, opt), pytest.raises(error, match=pattern):
        opt.load_state_dict(state)


def test_51_optimizer_given_a_single_tensor():
    w = Tensor(backend.asarray(np.ones(3, dtype=np.float32)), requires_grad=True)
    with unchanged(w), pytest.raises(TypeError, match=r"params must be an iterable of Tensors.*, got Tensor "
                                                   r"of shape \(3,\)"):
        SGD(w, lr=0.1)


@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, -0.5)])
def test_52_adam_betas_outside_0_1(model, betas):
    net, _ = model
    with unchanged(net), pytest.raises(ValueError, match=r"betas\[[01]\] must be a finite number in \[0, 1\)"):
        Adam(net.parameters(), betas=betas)


def test_53_the_same_parameter_listed_twice(model):
    net, _ = model
    params = list(net.parameters())
    with unchanged(net), pytest.raises(ValueError, match=r"params\[\d+\] must be a parameter not listed "
                                                       r"before \(it is params\[0\]"):
        SGD(params + params[:1], lr=0.1)


def test_54_a_nan_learning_rate(model):
    net, _ = model
    with unchanged(net), pytest.raises(ValueError, match=r"SGD: lr must be a finite number >= 0, got nan"):
        SGD(net.parameters(), lr=float("nan"))


# ---------------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["functional", "module", "mha", "sdpa"])
@pytest.mark.parametrize("p", [1.0, 1.5])
def test_55_dropout_probability_of_one_or_more(mha, call, p):
    layer, opt, x = mha
    with unchanged(layer, opt, x), pytest.raises(ValueError, match=rf"(p|dropout|dropout_p) must be a finite number in "
                                                                   rf"\[0, 1\), got {p} \(float\)"):
        if call == "functional":
            F.dropout(x, p)
        elif call == "module":
            Dropout(p)
        elif call == "mha":
            MultiHeadAttention(8, 2, dropout=p)
        else:
            F.scaled_dot_product_attention(x, x, x, dropout_p=p)


@pytest.mark.parametrize("max_len", [7, 0])
def test_56_greedy_decode_beyond_the_positional_table(model, max_len):
    net, opt = model
    net.train()
    with unchanged(net, opt), pytest.raises(ValueError, match=rf"greedy_decode: max_len must be an int in \[1, 6\], "
                                                              rf"got {max_len} \(int\)"):
        net.greedy_decode(ids([[3, 4]]), backend.asarray(np.array([2])), 1, 2, max_len)
    assert net.training                                             # the mode it had


@pytest.mark.parametrize("name", ["torch", "gpu", "numpy2"])
def test_57_an_unknown_backend_name(name):
    env = dict(os.environ, MINATTN_BACKEND=name)
    result = subprocess.run([sys.executable, "-c", "import minattn"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0, "an unknown backend must fail at import, not fall back to NumPy"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: ")
    assert f"MINATTN_BACKEND={name!r} is not a backend; valid values are numpy, cupy" in last


def test_58_softmax_over_an_axis_that_x_lacks(logits):
    with unchanged(logits), pytest.raises(ValueError, match=r"softmax: axis must be an axis of a tensor with 2 "
                                                         r"axes, an int in \[-2, 2\), got 2"):
        F.softmax(logits, axis=2)
