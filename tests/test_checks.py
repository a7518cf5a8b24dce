"""The one vocabulary of argument checks (autograd/checks.py), and the defects of issue 14 it closes.

Part 1 tests the vocabulary itself: every check returns the normalised value or raises TypeError (the wrong kind
of thing) / ValueError (the right kind, a wrong value), with one message format,
``{where}: {name} must be {expected}, got {received}``.

Part 2 has one regression test per kind of defect found by calling the public API with thousands of random wrong
arguments and comparing with PyTorch (issue 14). Each asserts the exception type, a message naming the argument,
and — where there is state — that nothing changed: parameters, ``.grad``, optimizer state, both random streams of
``autograd.backend`` (their ``bit_generator.state``), stored attention weights and the training mode (``unchanged``
from tests/test_bad_input.py). Where PyTorch accepts a call and gives a sensible result (an empty feature axis in
attention, ``is_causal`` with L ≠ S, the softmax of a 0-d tensor), minattn now gives the same result instead of an
error; those tests compare with PyTorch when it is installed and with the formula otherwise.

  1 a training-mode Transformer forward with malformed src_valid_lens drew dropout before raising
  2 greedy_decode with malformed src_valid_lens replaced the stored attention weights before raising
  3 malformed shapes accepted when two lengths happen to match (per-query src_valid_lens with S == T; a cache
    write that broadcasts; a negative position offset)
  4 a non-integer bos_id / pad_id truncated, or failing later without naming the argument
  5 Tensor.sum(axis=True) meaning axis 1
  6 a scale given as a string or a one-element list accepted
  7 a 2-tuple scale broadcast over the features
  8 SGD / Adam hyperparameters PyTorch refuses (negative or NaN momentum, weight decay, eps; Nesterov without
    momentum), which the checkpoint loader then refused, breaking save/load
  9 the warm-up schedule with embed_dim <= 0 (ZeroDivisionError or a complex lr) or a NaN warm-up
 10 ZeroDivisionError / "math domain error" from layer constructors given zero or negative sizes (and a bad later
    argument found only after an earlier sub-layer drew its parameters)
 11 an internal error from softmax on a 0-d tensor
 12 ZeroDivisionError from attention with an empty feature axis, where PyTorch returns a result
 13 NumPy's own messages passed through for bad axis / shape arguments
 14 a checkpoint whose member is not an array: AttributeError instead of ValueError naming the file
"""
import math
import zipfile

import numpy as np
import pytest

from autograd import Tensor, backend, checks, concatenate, no_grad, stack, where
from minattn import (GPT, SGD, Adam, AdditiveAttention, CosineSchedule, Embedding, KVCache, LayerNorm, Linear,
                     MultiHeadAttention, Parameter, PositionalEncoding, PositionWiseFFN, TalkingHeadsAttention,
                     Transformer, WarmupSchedule, checkpoint, clip_grad_norm_, manual_seed)
from minattn import functional as F
from tests.conftest import host
from tests.test_bad_input import f32, ids, unchanged

FORMAT = r"^{where}: {name} must be .+, got .+$"


def message(where, name):
    """The regex of a message in the checks' format, from ``where`` about argument ``name`` (both regexes)."""
    return FORMAT.format(where=where, name=name)


def lens(array):
    return backend.asarray(np.asarray(array, dtype=np.int64))


@pytest.fixture
def net(rng):
    """(transformer, optimizer): 1+1 layers, dropout 0.1, training mode, after one Adam step, grads and attention
    weights in place."""
    manual_seed(1)
    model = Transformer(10, 10, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=1, num_decoder_layers=1,
                        dropout=0.1, max_len=6)
    optimizer = Adam(model.parameters(), lr=0.01)
    src, tgt = ids(rng.integers(3, 10, (2, 4))), ids(rng.integers(3, 10, (2, 4)))
    for _ in range(2):
        logits = model(src, tgt, lens([4, 2]))
        optimizer.zero_grad()
        F.cross_entropy(logits.reshape(-1, 10), tgt.data.reshape(-1)).backward()
        if optimizer.step_count == 0:
            optimizer.step()
    assert model.training and all(p.grad is not None for p in model.parameters())
    return model, optimizer


# ---------------------------------------------------------------------------------------------------------------------
# Part 1: the vocabulary
# ---------------------------------------------------------------------------------------------------------------------
def test_the_message_format_names_where_the_argument_what_was_expected_and_what_came():
    with pytest.raises(ValueError) as err:
        checks.positive_int("in_features", 0, "Linear")
    assert str(err.value) == "Linear: in_features must be an int >= 1, got 0 (int)"
    with pytest.raises(TypeError) as err:
        checks.finite_float("scale", "0.5", where="scaled_dot_product_attention")
    assert str(err.value) == "scaled_dot_product_attention: scale must be a finite number, got '0.5' (str)"
    with pytest.raises(TypeError) as err:
        checks.tensor("x", np.ones((2, 3), np.float32), "linear", floating=True)
    assert str(err.value) == "linear: x must be a floating minattn Tensor, got ndarray of shape (2, 3), dtype float32"
    with pytest.raises(ValueError) as err:
        checks.int_ids("ids", np.array([3, 10, 5]), 10, "embedding")
    assert str(err.value).startswith("embedding: ids must be ids in [0, 10), got values in [3, 10] (ndarray")


@pytest.mark.parametrize("value, error", [(True, TypeError), (2.0, TypeError), ("3", TypeError), ([3], TypeError),
                                          (np.array(3), TypeError), (None, TypeError), (0, ValueError),
                                          (-2, ValueError)])
def test_positive_int_refuses_bools_floats_strings_lists_arrays_and_values_below_one(value, error):
    with pytest.raises(error, match=message("f", "n")):
        checks.positive_int("n", value, "f")


def test_integer_checks_return_python_ints():
    assert checks.positive_int("n", np.int64(3)) == 3 and type(checks.positive_int("n", np.int64(3))) is int
    assert checks.integer("k", -4, low=-5, high=5) == -4


@pytest.mark.parametrize("value, error", [(float("nan"), ValueError), (float("inf"), ValueError),
                                          (-float("inf"), ValueError), (True, TypeError), ("1", TypeError),
                                          ([1.0], TypeError), ((1.0,), TypeError), (1j, TypeError),
                                          (np.array([1.0]), TypeError)])
def test_finite_float_refuses_nan_inf_bools_strings_and_one_element_containers(value, error):
    with pytest.raises(error, match=message("f", "x")):
        checks.finite_float("x", value, where="f")


def test_finite_float_bounds_and_normalisation():
    assert checks.finite_float("x", np.float32(0.5), 0, 1) == 0.5 and type(checks.finite_float("x", 1)) is float
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"x must be a finite number in \(0, 1\), got"):
            checks.finite_float("x", bad, 0, 1, low_open=True, high_open=True)
    assert checks.probability("p", 0.0) == 0.0
    with pytest.raises(ValueError, match=r"p must be a finite number in \[0, 1\), got 1 \(int\)"):
        checks.probability("p", 1)
    assert checks.probability("p", 1, include_one=True) == 1.0


def test_boolean_one_of_pair_number():
    assert checks.boolean("flag", np.bool_(True)) is True
    for bad in (0, 1, "yes", None):
        with pytest.raises(TypeError, match=r"flag must be True or False"):
            checks.boolean("flag", bad)
    assert checks.one_of("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"mode must be one of 'a', 'b', got 'c' \(str\)"):
        checks.one_of("mode", "c", ("a", "b"))
    with pytest.raises(TypeError, match=r"mode must be one of 'a', 'b', got 1 \(int\)"):
        checks.one_of("mode", 1, ("a", "b"))
    assert checks.pair("betas", [0.1, 0.2]) == (0.1, 0.2)
    with pytest.raises(TypeError, match=r"betas must be a pair"):
        checks.pair("betas", 0.9)
    with pytest.raises(ValueError, match=r"betas must be a pair"):
        checks.pair("betas", (0.9,))
    assert math.isinf(checks.number("value", -math.inf))
    with pytest.raises(TypeError, match=r"value must be a real number, got True \(bool\)"):
        checks.number("value", True)


def test_axes_shapes_and_permutations():
    assert checks.axis("axis", -1, 3) == 2
    assert checks.axes("axis", None, 3) == (0, 1, 2)
    assert checks.axes("axis", [2, 0], 3) == (0, 2)
    with pytest.raises(ValueError, match=r"axis must be a tuple of distinct axes"):
        checks.axes("axis", (0, -3), 3)
    with pytest.raises(ValueError, match=r"axis must be an axis of a tensor with 0 axes \(it has none\)"):
        checks.axis("axis", 0, 0)
    assert checks.shape("shape", (2, -1), 6) == (2, 3)
    assert checks.shape("shape", 6, 6) == (6,)
    for bad, error in [((2, 2), ValueError), ((-1, -1), ValueError), ((0, -1), ValueError), ((4, -1), ValueError),
                       ((2.0, 3), TypeError), ((True, 6), TypeError), ("23", TypeError)]:
        with pytest.raises(error, match=message("reshape", "shape")):
            checks.shape("shape", bad, 6, "reshape")
    assert checks.permutation("axes", (-1, 0, 1), 3) == (2, 0, 1)
    with pytest.raises(ValueError, match=r"axes must be a permutation of the 3 axes"):
        checks.permutation("axes", (0, 0, 1), 3)


def test_dtypes_and_integer_arrays():
    assert checks.floating_dtype("dtype", "float64") == np.float64
    for bad in ("int64", "foo", None):
        with pytest.raises(TypeError, match=r"dtype must be a"):
            checks.floating_dtype("dtype", bad)
    with pytest.raises(TypeError, match=r"ids must be integers, got ndarray of shape \(2,\), dtype bool"):
        checks.integer_array("ids", np.array([True, False]))
    assert host(checks.lengths("lens", [1, 2], batch=2, maximum=3)).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"lens must be lengths of shape \(2,\), got ndarray of shape \(2, 3\)"):
        checks.lengths("lens", np.ones((2, 3), np.int64), batch=2, maximum=3)      # no queries: (batch,) only
    checks.lengths("lens", np.ones((2, 3), np.int64), batch=2, maximum=3, queries=3)


def test_matching_dtype_sequences_and_broadcastable():
    x = Tensor(np.zeros((2, 3, 4), np.float32))
    assert checks.matching_dtype("x", x, np.float32, "weight's") is x
    with pytest.raises(TypeError, match=r"^Linear: x must be of weight's dtype float64 \(cast one explicitly\), got "
                                        r"Tensor of shape \(2, 3, 4\), dtype float32$"):
        checks.matching_dtype("x", x, np.float64, "weight's", "Linear")
    assert checks.sequences("x", x, 4, np.float32) is x and checks.sequences("x", x) is x
    with pytest.raises(ValueError, match=r"^x must be \(batch, length, 5\), got Tensor of shape \(2, 3, 4\)"):
        checks.sequences("x", x, 5)
    with pytest.raises(ValueError, match=r"^x must be \(batch, length, features\), got Tensor of shape \(3, 4\)"):
        checks.sequences("x", Tensor(np.zeros((3, 4), np.float32)))
    with pytest.raises(TypeError, match=r"^x must be of the parameters' dtype float64"):
        checks.sequences("x", x, 4, np.float64)
    with pytest.raises(TypeError, match=r"^x must be a floating minattn Tensor, got ndarray"):
        checks.sequences("x", np.zeros((2, 3, 4), np.float32))
    assert checks.broadcastable("b", ((2, 1, 4), (3, 1)), "broadcastable", None) == (2, 3, 4)
    with pytest.raises(ValueError, match=r"^add: b must be broadcastable with a, got shapes \(2, 3\), \(4,\)$"):
        checks.broadcastable("b", ((2, 3), (4,)), "broadcastable with a", None, "add", received="shapes (2, 3), (4,)")


# ---------------------------------------------------------------------------------------------------------------------
# Part 2: the defects of issue 14, one test (or one parametrized family) each
# ---------------------------------------------------------------------------------------------------------------------
MALFORMED_SRC_VALID_LENS = {
    "per_query": (lens([[1, 2, 3, 4]] * 2), ValueError),     # (B, S): accepted by the encoder, not the decoder
    "other_batch": (lens([1, 2, 3]), ValueError),
    "too_long": (lens([5, 2]), ValueError),
    "negative": (lens([-1, 2]), ValueError),
    "float": (backend.asarray(np.array([1.0, 2.0])), TypeError),
    "plain_int": (2, ValueError),
}


@pytest.mark.parametrize("case", MALFORMED_SRC_VALID_LENS)
def test_01_training_forward_with_malformed_src_valid_lens_draws_no_dropout(net, rng, case):
    model, optimizer = net
    bad, error = MALFORMED_SRC_VALID_LENS[case]
    src, tgt = ids(rng.integers(3, 10, (2, 4))), ids(rng.integers(3, 10, (2, 4)))
    with unchanged(model, optimizer), pytest.raises(error, match=message("Transformer", "src_valid_lens")):
        model(src, tgt, bad)
    assert model.training


@pytest.mark.parametrize("case", MALFORMED_SRC_VALID_LENS)
def test_02_greedy_decode_with_malformed_src_valid_lens_keeps_the_attention_weights(net, rng, case):
    model, optimizer = net
    bad, error = MALFORMED_SRC_VALID_LENS[case]
    src = ids(rng.integers(3, 10, (2, 4)))
    for use_cache in (True, False):
        with unchanged(model, optimizer), \
                pytest.raises(error, match=message(r"Transformer\.greedy_decode", "src_valid_lens")):
            model.greedy_decode(src, bad, 1, 2, 4, use_cache=use_cache)
    assert model.training                                            # the mode it had


def test_03_malformed_shapes_are_refused_even_when_two_lengths_match(net, rng):
    model, optimizer = net
    src, tgt = ids(rng.integers(3, 10, (2, 4))), ids(rng.integers(3, 10, (2, 4)))   # S == T == 4
    with unchanged(model, optimizer), pytest.raises(ValueError, match=message("Transformer", "src_valid_lens")):
        model(src, tgt, lens([[4, 4, 4, 4], [2, 2, 2, 2]]))          # per-query lengths: read per TARGET position
    with unchanged(model, optimizer), pytest.raises(ValueError, match=message("Transformer", "tgt_in")):
        model(src, ids(rng.integers(3, 10, (1, 4))))                 # another batch: used to fail after the encoder
    with unchanged(model, optimizer), pytest.raises(ValueError, match=message("Transformer", "tgt_in")):
        model(src, ids(rng.integers(3, 10, (2, 7))))                 # longer than the positional table
    encoding = PositionalEncoding(8, dropout=0.5)
    with unchanged(encoding), pytest.raises(ValueError, match=message("PositionalEncoding", "offset")):
        encoding(f32(rng, 2, 3, 8), offset=-2)                       # P[-2:1] was an empty slice, broadcast
    cache = KVCache(4)
    k = backend.asarray(np.ones((1, 2, 1, 8)))
    cache.append(k, k)
    for bad_k, bad_v in [(backend.asarray(np.ones((1, 2, 1, 1))), k),   # d_h 1 would broadcast into 8
                         (k, backend.asarray(np.ones((1, 2, 1, 1)))),
                         (k, backend.asarray(np.ones((1, 1, 1, 8))))]:
        with pytest.raises(ValueError, match=message(r"KVCache\.append", "[kv]")):
            cache.append(bad_k, bad_v)
        assert cache.length == 1


@pytest.mark.parametrize("name, value, error", [("bos_id", 1.5, TypeError), ("bos_id", "1", TypeError),
                                                ("bos_id", True, TypeError), ("pad_id", 0.0, TypeError),
                                                ("pad_id", np.float64(0), TypeError), ("eos_id", None, TypeError),
                                                ("pad_id", 10, ValueError), ("bos_id", -1, ValueError)])
def test_04_non_integer_token_ids_for_greedy_decode(net, rng, name, value, error):
    model, optimizer = net
    kwargs = {"bos_id": 1, "eos_id": 2, "pad_id": 0, name: value}
    with unchanged(model, optimizer), pytest.raises(error, match=message(r"Transformer\.greedy_decode", name)):
        model.greedy_decode(ids(rng.integers(3, 10, (2, 4))), lens([4, 2]), max_len=4, **kwargs)


@pytest.mark.parametrize("method", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis", [True, False, 1.0, (0, True), "1"])
def test_05_a_bool_or_float_axis_is_not_an_axis(rng, method, axis):
    x = Tensor(backend.asarray(rng.standard_normal((2, 3))), requires_grad=True)
    with unchanged(x), pytest.raises(TypeError, match=message(method, r"axis(\[1\])?")):
        getattr(x, method)(axis=axis)


SCALES = {"string": "0.5", "one_element_list": [0.5], "pair": (0.5, 0.5), "array": np.array([0.5]), "bool": True,
          "nan": float("nan")}


@pytest.mark.parametrize("kind", SCALES)
@pytest.mark.parametrize("fn", ["scaled_dot_product_attention", "flash_attention", "attention"])
def test_06_07_a_scale_must_be_one_finite_number(rng, kind, fn):
    q = Tensor(backend.asarray(rng.standard_normal((2, 3, 2))), requires_grad=True)
    error = ValueError if kind == "nan" else TypeError
    with unchanged(q), pytest.raises(error, match=message(fn, "scale")):
        getattr(F, fn)(q, q, q, scale=SCALES[kind])


BAD_HYPERPARAMETERS = [
    (SGD, {"momentum": -0.1}, ValueError, "momentum"), (SGD, {"momentum": float("nan")}, ValueError, "momentum"),
    (SGD, {"weight_decay": -1e-4}, ValueError, "weight_decay"),
    (SGD, {"weight_decay": float("nan")}, ValueError, "weight_decay"),
    (SGD, {"nesterov": True}, ValueError, "momentum"), (SGD, {"nesterov": 1, "momentum": 0.9}, TypeError, "nesterov"),
    (SGD, {"momentum": True}, TypeError, "momentum"), (SGD, {"lr": "0.1"}, TypeError, "lr"),
    (SGD, {"lr": -0.1}, ValueError, "lr"), (Adam, {"eps": -1e-8}, ValueError, "eps"),
    (Adam, {"eps": float("nan")}, ValueError, "eps"), (Adam, {"weight_decay": -0.1}, ValueError, "weight_decay"),
    (Adam, {"weight_decay": float("nan")}, ValueError, "weight_decay"), (Adam, {"betas": 0.9}, TypeError, "betas"),
    (Adam, {"betas": (0.9,)}, ValueError, "betas"), (Adam, {"betas": (float("nan"), 0.9)}, ValueError, r"betas\[0\]"),
    (Adam, {"betas": (0.9, 1.0)}, ValueError, r"betas\[1\]"), (Adam, {"lr": float("inf")}, ValueError, "lr"),
]


@pytest.mark.parametrize("cls, kwargs, error, name", BAD_HYPERPARAMETERS,
                         ids=[f"{c.__name__}-{k}" for c, k, _, _ in BAD_HYPERPARAMETERS])
def test_08_optimizer_hyperparameters_pytorch_refuses(net, cls, kwargs, error, name):
    model, _ = net
    with unchanged(model), pytest.raises(error, match=message(cls.__name__, name)):
        cls(model.parameters(), **kwargs)


@pytest.mark.parametrize("cls, kwargs, error, name", BAD_HYPERPARAMETERS,
                         ids=[f"{c.__name__}-{k}" for c, k, _, _ in BAD_HYPERPARAMETERS])
def test_08_pytorch_refuses_the_same_hyperparameters(cls, kwargs, error, name):
    """PyTorch 2.x refuses the same values, with five exceptions where minattn is stricter: SGD's ``momentum < 0``
    and ``weight_decay < 0`` tests let NaN through, and it takes an infinite lr, ``nesterov=1`` and
    ``momentum=True`` — values no run means, and that minattn's checkpoint loader could not take back either."""
    torch = pytest.importorskip("torch")
    pytorch_accepts = {("SGD", "{'momentum': nan}"), ("SGD", "{'weight_decay': nan}"), ("Adam", "{'lr': inf}"),
                       ("SGD", "{'nesterov': 1, 'momentum': 0.9}"), ("SGD", "{'momentum': True}")}
    build = getattr(torch.optim, cls.__name__)
    if (cls.__name__, repr(kwargs)) in pytorch_accepts:            # the documented difference: PyTorch takes it
        build([torch.zeros(2, requires_grad=True)], **kwargs)
        return
    with pytest.raises(Exception):                                  # ValueError, TypeError or IndexError there
        build([torch.zeros(2, requires_grad=True)], **kwargs)


GOOD_HYPERPARAMETERS = [(SGD, {"lr": 0.1}), (SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
                        (SGD, {"lr": 0, "momentum": 2.0, "weight_decay": 0.5}), (Adam, {"betas": (0.0, 0.5)}),
                        (Adam, {"lr": 0.0, "eps": 0.0, "weight_decay": 1e-2}), (Adam, {"betas": [0.9, 0.99]})]


@pytest.mark.parametrize("cls, kwargs", GOOD_HYPERPARAMETERS,
                         ids=[f"{c.__name__}-{k}" for c, k in GOOD_HYPERPARAMETERS])
def test_08_every_accepted_configuration_round_trips(net, tmp_path, cls, kwargs):
    """What the constructor accepts, state_dict / load_state_dict and a checkpoint file take back unchanged."""
    model, _ = net
    optimizer = cls(model.parameters(), **kwargs)
    optimizer.step()
    state = optimizer.state_dict()
    again = cls(model.parameters())
    again.load_state_dict(state)
    path = checkpoint.save(tmp_path / "ckpt.npz", model, optimizer)
    third = cls(model.parameters())
    checkpoint.load(path, model, third)
    for other in (again, third):
        restored = other.state_dict()
        for key, value in state.items():
            if key in optimizer.buffers:
                assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(value, restored[key]))
            else:
                assert restored[key] == value, key


@pytest.mark.parametrize("kwargs, error, name", [({"embed_dim": 0}, ValueError, "embed_dim"),
                                                 ({"embed_dim": -4}, ValueError, "embed_dim"),
                                                 ({"embed_dim": 2.5}, TypeError, "embed_dim"),
                                                 ({"warmup_steps": float("nan")}, TypeError, "warmup_steps"),
                                                 ({"warmup_steps": 0}, ValueError, "warmup_steps"),
                                                 ({"factor": float("nan")}, ValueError, "factor"),
                                                 ({"optimizer": None}, TypeError, "optimizer")])
def test_09_warmup_schedule_arguments(net, kwargs, error, name):
    model, optimizer = net
    lr = optimizer.lr
    args = {"optimizer": optimizer, "embed_dim": 8, "warmup_steps": 4, "factor": 1.0, **kwargs}
    with unchanged(model, optimizer), pytest.raises(error, match=message("WarmupSchedule", name)):
        WarmupSchedule(**args)
    assert optimizer.lr == lr
    with pytest.raises(ValueError, match=message(r"WarmupSchedule\.lr_at", "t")):
        WarmupSchedule(optimizer, 8, 4).lr_at(0)
    with pytest.raises(ValueError, match=message(r"CosineSchedule\.lr_at", "t")):
        CosineSchedule(optimizer, 1.0, 0, 4).lr_at(0)


CONSTRUCTORS = {
    "Linear_zero": (lambda: Linear(0, 3), ValueError, "Linear", "in_features"),
    "Linear_negative": (lambda: Linear(-1, 3), ValueError, "Linear", "in_features"),
    "Linear_float": (lambda: Linear(2.5, 3), TypeError, "Linear", "in_features"),
    "Linear_bool": (lambda: Linear(4, True), TypeError, "Linear", "out_features"),
    "Linear_int_dtype": (lambda: Linear(4, 3, dtype="int64"), TypeError, "Linear", "dtype"),
    "Embedding_zero": (lambda: Embedding(0, 3), ValueError, "Embedding", "num_embeddings"),
    "LayerNorm_zero": (lambda: LayerNorm(0), ValueError, "LayerNorm", "normalized_shape"),
    "LayerNorm_nan_eps": (lambda: LayerNorm(4, eps=float("nan")), ValueError, "LayerNorm", "eps"),
    "PositionalEncoding_zero": (lambda: PositionalEncoding(0), ValueError, "PositionalEncoding", "embed_dim"),
    "FFN_zero": (lambda: PositionWiseFFN(4, 0), ValueError, "PositionWiseFFN", "ffn_hidden"),
    "FFN_late_dropout": (lambda: PositionWiseFFN(4, 8, dropout=1.5), ValueError, "PositionWiseFFN", "dropout"),
    "MHA_zero": (lambda: MultiHeadAttention(0, 1), ValueError, "MultiHeadAttention", "embed_dim"),
    "MHA_zero_heads": (lambda: MultiHeadAttention(8, 0), ValueError, "MultiHeadAttention", "num_heads"),
    "MHA_bad_kv_heads": (lambda: MultiHeadAttention(8, 4, num_kv_heads=3), ValueError, "MultiHeadAttention",
                         "num_kv_heads"),
    "TalkingHeads_zero": (lambda: TalkingHeadsAttention(0, 1), ValueError, "TalkingHeadsAttention", "embed_dim"),
    "Additive_zero": (lambda: AdditiveAttention(4, 0, 8), ValueError, "AdditiveAttention", "key_size"),
    "GPT_zero_max_len": (lambda: GPT(10, 0), ValueError, "GPT", "max_len"),
    "GPT_late_ffn": (lambda: GPT(10, 8, embed_dim=8, num_heads=2, ffn_hidden=-1), ValueError, "GPT", "ffn_hidden"),
    "GPT_bad_init": (lambda: GPT(10, 8, embed_dim=8, num_heads=2, init="xavier"), ValueError, "GPT", "init"),
    "Transformer_zero": (lambda: Transformer(5, 5, embed_dim=0, num_heads=1), ValueError, "MultiHeadAttention",
                         "embed_dim"),
    "Transformer_late_option": (lambda: Transformer(5, 5, embed_dim=8, num_heads=4,
                                                    attention_options={"num_kv_heads": 3}),
                                ValueError, "MultiHeadAttention", "num_kv_heads"),
    "Transformer_zero_layers": (lambda: Transformer(5, 5, num_decoder_layers=0), ValueError, "Transformer",
                                "num_decoder_layers"),
}


@pytest.mark.parametrize("case", CONSTRUCTORS)
def test_10_constructors_name_a_bad_size_and_draw_nothing(case):
    make, error, where, name = CONSTRUCTORS[case]
    manual_seed(3)
    with unchanged(), pytest.raises(error, match=message(where, name)):   # unchanged(): both random streams
        make()


def test_11_softmax_of_a_0d_tensor_is_one_as_in_pytorch():
    x = Tensor(backend.asarray(np.float64(2.5)), requires_grad=True)
    for fn, expected in ((F.softmax, 1.0), (F.log_softmax, 0.0), (F.masked_softmax, 1.0)):
        out = fn(x)
        assert out.shape == () and host(out) == expected
    for axis in (0, -1):
        assert host(F.softmax(x, axis=axis)) == 1.0
    F.softmax(x).backward()
    assert host(x.grad) == 0.0
    for axis, error in ((1, ValueError), (-2, ValueError), (True, TypeError)):
        with unchanged(x), pytest.raises(error, match=message("softmax", "axis")):
            F.softmax(x, axis=axis)
    torch = pytest.importorskip("torch")
    assert torch.softmax(torch.tensor(2.5), dim=-1).item() == 1.0 and torch.log_softmax(torch.tensor(2.5), 0) == 0


def _masked_mean(v, keep):
    """softmax(0 + mask) V: the mean of the values of the keys each query keeps (0 where it keeps none)."""
    weights = keep / np.maximum(keep.sum(-1, keepdims=True), 1)                  # (..., L, S)
    return weights @ v


@pytest.mark.parametrize("options", [{}, {"is_causal": True}, {"scale": 2.0}, {"mask": True}])
@pytest.mark.parametrize("fn", ["scaled_dot_product_attention", "flash_attention"])
def test_12_attention_with_an_empty_feature_axis_is_the_masked_mean_of_the_values(rng, options, fn):
    q, k = np.zeros((2, 3, 0)), np.zeros((2, 4, 0))
    v = rng.standard_normal((2, 4, 5))
    keep = np.ones((3, 4), dtype=bool)
    kwargs = dict(options)
    if kwargs.pop("mask", False):
        keep = rng.random((3, 4)) < 0.6
        keep[:, 0] = True
        kwargs["attn_mask"] = backend.asarray(keep)
    elif options.get("is_causal"):
        keep = np.tril(keep)
    vt = Tensor(backend.asarray(v), requires_grad=True)
    qt, kt = Tensor(backend.asarray(q), requires_grad=True), Tensor(backend.asarray(k), requires_grad=True)
    out = getattr(F, fn)(qt, kt, vt, **kwargs)
    np.testing.assert_allclose(host(out), _masked_mean(v, keep), rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert qt.grad.shape == (2, 3, 0) and kt.grad.shape == (2, 4, 0)
    np.testing.assert_allclose(host(vt.grad), np.broadcast_to(
        (keep / keep.sum(-1, keepdims=True)).sum(0)[:, None], (2, 4, 5)), rtol=1e-12)
    torch = pytest.importorskip("torch")
    torch_kwargs = {key: (torch.from_numpy(keep) if key == "attn_mask" else value) for key, value in kwargs.items()}
    expected = torch.nn.functional.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), **torch_kwargs)
    np.testing.assert_allclose(host(out), expected.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("length_q, length_k", [(3, 5), (5, 3)])
@pytest.mark.parametrize("fn", ["scaled_dot_product_attention", "flash_attention"])
def test_12_is_causal_with_l_not_s_is_pytorchs_top_left_triangle(rng, length_q, length_k, fn):
    q, k = rng.standard_normal((2, length_q, 4)), rng.standard_normal((2, length_k, 4))
    v = rng.standard_normal((2, length_k, 3))
    out = host(getattr(F, fn)(*(Tensor(backend.asarray(a)) for a in (q, k, v)), is_causal=True))
    keep = np.tril(np.ones((length_q, length_k), dtype=bool))                    # key j <= query i
    scores = np.where(keep, q @ k.swapaxes(-1, -2) / 2.0, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(out, (weights / weights.sum(-1, keepdims=True)) @ v, rtol=1e-12, atol=1e-12)
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), is_causal=True)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-12, atol=1e-12)


SHAPE_MISTAKES = {
    "reshape_size": (lambda x, y: x.reshape(5, 5), ValueError, "reshape", "shape"),
    "reshape_str": (lambda x, y: x.reshape(("a",)), TypeError, "reshape", "shape"),
    "reshape_float": (lambda x, y: x.reshape(4.0, 6), TypeError, "reshape", "shape"),
    "concatenate_axis": (lambda x, y: concatenate([x, x], axis=5), ValueError, "concatenate", "axis"),
    "concatenate_shapes": (lambda x, y: concatenate([x, y], axis=0), ValueError, "concatenate", "tensors"),
    "stack_axis": (lambda x, y: stack([x, x], axis=-5), ValueError, "stack", "axis"),
    "stack_shapes": (lambda x, y: stack([x, y]), ValueError, "stack", "tensors"),
    "transpose_axis": (lambda x, y: x.transpose(0, 7), ValueError, "transpose", "axis1"),
    "permute_axes": (lambda x, y: x.permute(0, 1), ValueError, "permute", "axes"),
    "sum_axis_range": (lambda x, y: x.sum(axis=3), ValueError, "sum", "axis"),
    "add_broadcast": (lambda x, y: x + y, ValueError, "add", "b"),
    "mul_broadcast": (lambda x, y: y * x, ValueError, "mul", "b"),
    "matmul_inner": (lambda x, y: x @ y, ValueError, "matmul", "b"),
    "matmul_batch": (lambda x, y: x @ Tensor(backend.asarray(np.ones((3, 4, 2)))), ValueError, "matmul", "b"),
    "where_broadcast": (lambda x, y: where(backend.asarray(np.ones(5, dtype=bool)), x, x), ValueError, "where",
                        "condition, a, b"),
    "masked_fill_value": (lambda x, y: x.masked_fill(backend.asarray(np.ones((2, 3, 4), dtype=bool)), "0"),
                          TypeError, "masked_fill", "value"),
}


@pytest.mark.parametrize("case", SHAPE_MISTAKES)
def test_13_axis_and_shape_mistakes_are_named_in_our_words(case):
    call, error, where, name = SHAPE_MISTAKES[case]
    x = Tensor(backend.asarray(np.ones((2, 3, 4))), requires_grad=True)
    y = Tensor(backend.asarray(np.ones((3, 5))), requires_grad=True)
    with unchanged(x, y), pytest.raises(error, match=message(where, name)):
        call(x, y)


def _replace_member_with_raw_bytes(path, member):
    """Rewrite the .npz at ``path`` with ``member`` (e.g. 'model/x.npy') stored as raw bytes under a name without
    .npy: ``numpy.load`` then hands it back as ``bytes``, not an array."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            if name == member:
                archive.writestr(member[:-len(".npy")], b"not an array")
            else:
                archive.writestr(name, data)


@pytest.mark.parametrize("member", ["model/output.bias.npy", "optimizer/m/0.npy", "extra.npy"])
def test_14_a_checkpoint_member_that_is_not_an_array(net, tmp_path, member):
    model, optimizer = net
    path = checkpoint.save(tmp_path / "ckpt.npz", model, optimizer, step=3)
    _replace_member_with_raw_bytes(path, member)
    with unchanged(model, optimizer), pytest.raises(ValueError, match=r"ckpt\.npz is not a minattn checkpoint: its "
                                                                      r"entries \['.*'\] are not arrays"):
        checkpoint.load(path, model, optimizer)
    with pytest.raises(ValueError, match=r"ckpt\.npz"):
        checkpoint.read_extra(path)


# ---------------------------------------------------------------------------------------------------------------------
# checks added with the vocabulary: entry points that checked late, or not at all
# ---------------------------------------------------------------------------------------------------------------------
def test_checkpoint_and_module_entry_points_check_their_types(net, tmp_path):
    model, optimizer = net
    with unchanged(model, optimizer):
        with pytest.raises(TypeError, match=message("save", "model")):
            checkpoint.save(tmp_path / "x.npz", optimizer)
        with pytest.raises(TypeError, match=message("load", "optimizer")):
            checkpoint.load(tmp_path / "x.npz", model, model)
        with pytest.raises(TypeError, match=message(r"Transformer\.train", "mode")):
            model.train("eval")
        with pytest.raises(TypeError, match=message(r"Transformer\.load_state_dict", "state")):
            model.load_state_dict(list(model.state_dict().items()))
        with pytest.raises(ValueError, match=message("set_rng_state", r"state\['device'\]")):
            checkpoint.set_rng_state({"host": checkpoint.rng_state()["host"], "device": {"bit_generator": "?"}})
    assert not (tmp_path / "x.npz").exists()


def test_generate_and_cached_attention_check_before_anything_changes(rng):
    manual_seed(0)
    model = GPT(11, 8, embed_dim=8, num_heads=2, num_layers=1, dropout=0.1)
    prompt = backend.asarray(rng.integers(0, 11, (2, 3)))
    for kwargs, error, name in [({"seed": -1}, ValueError, "seed"), ({"temperature": float("nan")}, ValueError,
                                                                     "temperature"),
                                ({"top_k": 2.0}, TypeError, "top_k"), ({"max_new_tokens": True}, TypeError,
                                                                       "max_new_tokens")]:
        with unchanged(model), pytest.raises(error, match=message(r"GPT\.generate", name)):
            model.generate(prompt, **{"max_new_tokens": 2, **kwargs})
    assert model.training
    layer = MultiHeadAttention(8, 2)
    cache = KVCache(4)
    x = f32(rng, 2, 3, 8)
    with no_grad():
        with unchanged(layer), pytest.raises(ValueError, match=message("MultiHeadAttention", "valid_lens")):
            layer(x, x, x, valid_lens=lens([4, 1]), is_causal=True, cache=cache)
    assert cache.length == 0 and cache.position == 0                # nothing written before the refusal


def test_a_maximum_over_an_empty_axis_is_refused_by_name(rng):
    """A maximum over an axis of length 0 has no value: refused (PyTorch refuses it too), naming axis, not NumPy's
    "zero-size array to reduction operation maximum"."""
    x = Tensor(backend.asarray(rng.standard_normal((2, 0, 3))), requires_grad=True)
    for axis in (None, 1, (0, 1)):
        with unchanged(x), pytest.raises(ValueError, match=message("max", "axis")):
            x.max(axis=axis)
    assert x.max(axis=2).shape == (2, 0)                                  # over a non-empty axis: an empty result


def test_clip_grad_norm_takes_an_infinite_max_norm_as_pytorch(rng):
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    params = [Parameter(backend.asarray(np.zeros(g.shape))) for g in grads]
    for p, g in zip(params, grads):
        p.grad = backend.asarray(g.copy())
    total = clip_grad_norm_(params, float("inf"))                         # measure, clip nothing
    assert float(total) == pytest.approx(np.sqrt(sum((g ** 2).sum() for g in grads)), rel=1e-12)
    assert all(np.array_equal(host(p.grad), g) for p, g in zip(params, grads))
    for bad, error in ((float("nan"), ValueError), (-1.0, ValueError), ("1", TypeError)):
        with pytest.raises(error, match=message("clip_grad_norm_", "max_norm")):
            clip_grad_norm_(params, bad)


def test_empty_axes_give_empty_results_and_gradients_as_pytorch():
    """Valid calls PyTorch answers with an empty result: the softmax family over an empty axis, attention with no
    queries, an embedding lookup of no ids — forward and backward (they used to hit a reshape of (-1, 0))."""
    for fn in (F.softmax, F.log_softmax):
        x = Tensor(backend.asarray(np.ones((2, 0))), requires_grad=True)
        out = fn(x, axis=1)
        out.sum().backward()
        assert out.shape == (2, 0) and x.grad.shape == (2, 0)
    q = Tensor(backend.asarray(np.ones((1, 1, 0, 0))), requires_grad=True)
    v = Tensor(backend.asarray(np.ones((1, 1, 0, 1))), requires_grad=True)
    out = F.scaled_dot_product_attention(q, q, v)
    out.sum().backward()
    assert out.shape == (1, 1, 0, 1) and v.grad.shape == (1, 1, 0, 1)
    weight = Tensor(backend.asarray(np.ones((3, 2))), requires_grad=True)
    out = F.embedding(backend.asarray(np.zeros(0, dtype=np.int64)), weight)
    out.sum().backward()
    assert out.shape == (0, 2) and np.array_equal(host(weight.grad), np.zeros((3, 2)))


@pytest.mark.parametrize("data, error", [("abc", TypeError), (None, TypeError), ([1 + 2j], TypeError),
                                         ([[1.0, 2.0], [3.0]], ValueError)])
def test_tensor_data_must_be_numbers_of_one_shape(data, error):
    with pytest.raises(error, match=message("Tensor", "data")):
        Tensor(data)
    with pytest.raises(TypeError, match=message("Tensor", "requires_grad")):
        Tensor([1.0], requires_grad="yes")
    with pytest.raises(TypeError, match=message("Tensor", "dtype")):
        Tensor([1.0], dtype="real")


def test_decoder_memory_of_another_width_or_dtype_is_refused_before_self_attention(net, rng):
    """A memory of the wrong width or dtype is refused by the decoder block and by decode before the self-attention
    runs: no dropout drawn (training mode), no attention weights replaced, no self-attention cache written."""
    model, optimizer = net
    block, x = model.decoder_blocks[0], f32(rng, 2, 3, 8)
    bad_memories = {"width": f32(rng, 2, 5, 6),
                    "dtype": Tensor(backend.asarray(rng.standard_normal((2, 5, 8))))}             # float64
    for kind, memory in bad_memories.items():
        error = ValueError if kind == "width" else TypeError
        own = KVCache(6)
        with unchanged(model, optimizer), pytest.raises(error, match=message("DecoderBlock", "memory")):
            block(x, memory, caches=(own, KVCache(6, static=True)))
        assert own.length == 0
    with unchanged(model, optimizer), pytest.raises(TypeError, match=message(r"Transformer\.decode", "memory")):
        model.decode(ids(rng.integers(3, 10, (2, 3))), bad_memories["dtype"])


def test_every_cache_is_checked_before_the_first_block_writes(rng):
    """GPT.forward and Transformer.decode look at every block's cache (type, room) before block 0 appends."""
    manual_seed(0)
    gpt = GPT(11, 16, embed_dim=16, num_heads=2, num_layers=2)
    tokens = ids(rng.integers(0, 11, (1, 3)))
    for caches, error, name in (([KVCache(16), "oops"], TypeError, r"caches\[1\]"),
                                ([KVCache(16), KVCache(2)], ValueError, "ids")):
        with no_grad(), unchanged(gpt), pytest.raises(error, match=message("GPT", name)):
            gpt(tokens, caches)
        assert caches[0].length == 0
    manual_seed(0)
    model = Transformer(10, 10, embed_dim=8, num_heads=2, ffn_hidden=16, num_encoder_layers=1, num_decoder_layers=2,
                        max_len=6).eval()
    memory = f32(rng, 1, 4, 8)
    tgt = ids(rng.integers(3, 10, (1, 3)))
    first = (KVCache(6), KVCache(6, static=True))
    for caches, error, name in (([first, KVCache(6)], TypeError, r"caches\[1\]"),
                                ([first, (KVCache(2), KVCache(6, static=True))], ValueError, "tgt_in"),
                                ([first, (KVCache(6), KVCache(2, static=True))], ValueError, "memory")):
        with no_grad(), unchanged(model), pytest.raises(error, match=message(r"Transformer\.decode", name)):
            model.decode(tgt, memory, caches=caches)
        assert first[0].length == 0 and first[1].length == 0
