"""LinearReLUFunction (minattn/fused/linear.py): z = max(x Wᵀ + b, 0) in one node, and ``F.linear_relu``.

Checked as every fused op is (tests/test_fused.py), in float64:
  (a) gradcheck: the hand-written backward against central differences, x of 1, 2 and 3 axes, with and without a
      bias — on inputs drawn with every pre-activation at least 0.1 away from ReLU's kink (a finite difference
      straddling 0 would measure neither side's slope);
  (b) fused = composed: values and every gradient equal those of ``linear_relu_reference`` (engine primitives) to
      1e-10;
  (c) the value equals NumPy's ``np.maximum(x @ W.T + b, 0)``, and the gradients NumPy's dy = dz ∘ [y > 0],
      dx = dy W, dW = dyᵀ x, db = Σ_rows dy.
The kink itself separately: where a pre-activation is exactly 0 the gradient is 0 (the subgradient ops.ReLU and
PyTorch take). Then the public ``F.linear_relu``: exactly ``F.linear(...).relu()`` in float64 (values and gradients,
bit for bit), float32 kept float32, gradients only for the inputs that ask, and ``F.linear``'s argument checks with
its own name in the message; and PositionWiseFFN, which now uses it, against its composition
``dense2(dropout(dense1(x).relu()))`` in eval and in training (the same dropout draws from the same seed).
"""
import numpy as np
import pytest

from autograd import Tensor, backend, gradcheck, ops
from minattn import Linear, PositionWiseFFN, manual_seed
from minattn import functional as F
from minattn.fused import linear as linear_module
from minattn.fused.linear import LinearReLUFunction, linear_relu_reference
from tests.conftest import host, t64

TIGHT = dict(rtol=1e-12, atol=1e-12)
AGREE = dict(rtol=1e-10, atol=1e-10)
KINK_MARGIN = 0.1                        # |x Wᵀ + b| at least this for a gradcheck (its step is 1e-6)
SHAPES = [(4,), (5, 4), (2, 3, 4)]       # x: 1-D, 2-D, 3-D; in_features = 4, out_features = 3 below
CASES = [(shape, with_bias) for shape in SHAPES for with_bias in (True, False)]
IDS = [f"x{shape}-{'bias' if with_bias else 'no bias'}" for shape, with_bias in CASES]


# --- helpers ---------------------------------------------------------------------------------------------------------
def dev(a):
    """A NumPy array moved to the backend."""
    return backend.asarray(a)


def numpy_forward(x, w, b=None):
    """The pre-activation y = x Wᵀ + b and z = max(y, 0), from NumPy alone."""
    y = np.einsum("...i,oi->...o", x, w) + (0.0 if b is None else b)
    return y, np.maximum(y, 0.0)


def numpy_backward(x, w, y, g):
    """(dx, dW, db) of z = max(y, 0), y = x Wᵀ + b, for the cotangent g, from NumPy alone."""
    dy = g * (y > 0)                                                     # the subgradient 0 at y = 0
    rows_x, rows_dy = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    return dy @ w, rows_dy.T @ rows_x, rows_dy.sum(axis=0)


def away_from_the_kink(rng, x_shape, out_features=3, with_bias=True):
    """[x, W(, b)] drawn until every pre-activation is at least KINK_MARGIN from 0, some positive and some
    negative (so that the test sees both sides of the ReLU)."""
    for _ in range(1000):
        arrays = [rng.standard_normal(x_shape), rng.standard_normal((out_features, x_shape[-1]))]
        arrays += [rng.standard_normal(out_features)] if with_bias else []
        y, _ = numpy_forward(*arrays)
        if np.abs(y).min() >= KINK_MARGIN and (y > 0).any() and (y < 0).any():
            return arrays
    raise AssertionError("no draw away from the kink in 1000 tries")


def forward_backward(fn, arrays, cotangent, requires=None, dtype=np.float64):
    """fn on fresh tensors of ``arrays`` (``requires``: which require grad, default all), backward with
    ``cotangent``. Returns (output, [gradient or None per input]) on the host."""
    requires = [True] * len(arrays) if requires is None else requires
    tensors = [Tensor(dev(np.asarray(a, dtype=dtype)), requires_grad=r) for a, r in zip(arrays, requires)]
    out = fn(*tensors)
    out.backward(dev(np.asarray(cotangent, dtype=dtype)))
    return host(out), [None if t.grad is None else host(t.grad) for t in tensors]


def fused(*t):
    return LinearReLUFunction.apply(*t)


def functional(x, w, b=None):
    return F.linear_relu(x, w, b)


def linear_then_relu(x, w, b=None):
    return F.linear(x, w, b).relu()


# --- (a) gradcheck ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape,with_bias", CASES, ids=IDS)
def test_linear_relu_gradcheck(rng, x_shape, with_bias):
    arrays = away_from_the_kink(rng, x_shape, with_bias=with_bias)
    assert gradcheck(fused, [t64(a) for a in arrays])


@pytest.mark.parametrize("requires", [(False, True, True), (True, False, False), (False, False, True)],
                         ids=["x constant", "only x", "only bias"])
def test_linear_relu_gradcheck_of_some_inputs(rng, requires):
    arrays = away_from_the_kink(rng, (2, 3, 4))
    assert gradcheck(fused, [t64(a, requires_grad=r) for a, r in zip(arrays, requires)])


# --- (b) fused = reference, (c) = NumPy ------------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape,with_bias", CASES, ids=IDS)
def test_linear_relu_fused_equals_reference_and_numpy(rng, x_shape, with_bias):
    arrays = [rng.standard_normal(x_shape), rng.standard_normal((3, 4))] + ([rng.standard_normal(3)] * with_bias)
    y, expected = numpy_forward(*arrays)
    assert (y > 0).any() and (y < 0).any()                              # both sides of the ReLU are exercised
    g = rng.standard_normal(y.shape)
    out_f, grads_f = forward_backward(fused, arrays, g)
    out_r, grads_r = forward_backward(lambda *t: linear_relu_reference(*t), arrays, g)
    assert out_f.shape == x_shape[:-1] + (3,)
    np.testing.assert_allclose(out_f, out_r, **AGREE)
    for i, (gf, gr) in enumerate(zip(grads_f, grads_r)):
        np.testing.assert_allclose(gf, gr, **AGREE, err_msg=f"gradient of input {i}")
    np.testing.assert_allclose(out_f, expected, **TIGHT)
    for i, (got, want) in enumerate(zip(grads_f, numpy_backward(arrays[0], arrays[1], y, g))):
        np.testing.assert_allclose(got, want, **TIGHT, err_msg=f"gradient of input {i} against NumPy")


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no bias"])
def test_linear_relu_leaves_its_inputs_as_they_were(rng, with_bias):
    """The ReLU works in place in the product the forward made, never in x, W or b (nor in the cotangent)."""
    arrays = [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))] + ([rng.standard_normal(3)] * with_bias)
    tensors = [t64(a) for a in arrays]
    g = dev(rng.standard_normal((3, 3)))
    g_before = host(g).copy()
    F.linear_relu(*tensors).backward(g)
    for i, (t, a) in enumerate(zip(tensors, arrays)):
        np.testing.assert_array_equal(host(t), a, err_msg=f"input {i} changed")
    np.testing.assert_array_equal(host(g), g_before)


# --- the kink: a pre-activation exactly 0 ----------------------------------------------------------------------------
def test_gradient_at_a_pre_activation_of_exactly_zero_is_zero(rng):
    """Small integers, so that x Wᵀ + b is exact: y = [[0, 1, 1], [-2, 0, 0], [-2, 6, -2]]. Where y = 0 the value is
    0 and the gradient 0 (ops.ReLU's and PyTorch's subgradient); elsewhere NumPy's formulas; and every number equals
    that of ``linear(...).relu()`` and of the reference."""
    x = np.array([[1.0, 2.0], [0.0, 1.0], [2.0, -1.0]])
    w = np.array([[1.0, 1.0], [2.0, -1.0], [0.0, 1.0]])
    b = np.array([-3.0, 1.0, -1.0])
    y = x @ w.T + b
    np.testing.assert_array_equal(y, [[0, 1, 1], [-2, 0, 0], [-2, 6, -2]])
    g = rng.standard_normal(y.shape)
    out, grads = forward_backward(fused, [x, w, b], g)
    np.testing.assert_array_equal(out, np.maximum(y, 0.0))
    dy = g * (y > 0)
    np.testing.assert_array_equal(dy[y == 0], 0.0)
    for got, want in zip(grads, numpy_backward(x, w, y, g)):
        np.testing.assert_allclose(got, want, **TIGHT)
    for other in (linear_then_relu, lambda *t: linear_relu_reference(*t)):
        out_o, grads_o = forward_backward(other, [x, w, b], g)
        np.testing.assert_array_equal(out, out_o)
        for got, want in zip(grads, grads_o):
            np.testing.assert_allclose(got, want, **TIGHT)


def test_a_row_of_zeros_at_the_kink_gets_no_gradient():
    """A single pre-activation at 0 (no bias): dx, dW and db are all 0, as for ops.relu of 0."""
    x, w = np.zeros((1, 2)), np.array([[1.0, -1.0]])
    _, (dx, dw) = forward_backward(fused, [x, w], np.ones((1, 1)))
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dw, 0.0)
    zero = t64(np.zeros(1))
    ops.relu(zero).backward(dev(np.ones(1)))
    np.testing.assert_array_equal(host(zero.grad), 0.0)                  # the rule the fused op follows


# --- F.linear_relu ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape,with_bias", CASES + [((1, 1, 4), True), ((0, 4), True), ((2, 0, 4), False)],
                         ids=IDS + ["size-1 axes", "no rows", "no rows, 3-D"])
def test_functional_equals_linear_then_relu_exactly(rng, x_shape, with_bias):
    """float64: the same numbers bit for bit, values and gradients (the same products in the same order)."""
    arrays = [rng.standard_normal(x_shape), rng.standard_normal((3, 4))] + ([rng.standard_normal(3)] * with_bias)
    g = rng.standard_normal(x_shape[:-1] + (3,))
    out, grads = forward_backward(functional, arrays, g)
    out_c, grads_c = forward_backward(linear_then_relu, arrays, g)
    assert out.shape == out_c.shape == x_shape[:-1] + (3,)
    np.testing.assert_array_equal(out, out_c)
    for i, (got, want) in enumerate(zip(grads, grads_c)):
        assert got.shape == want.shape == np.shape(arrays[i])
        np.testing.assert_array_equal(got, want, err_msg=f"gradient of input {i}")


def test_functional_makes_one_node(rng):
    """One node, LinearReLUFunction's, whose inputs are x, W and b themselves (no Linear node, no ReLU node)."""
    x, w, b = t64(rng.standard_normal((2, 4))), t64(rng.standard_normal((3, 4))), t64(rng.standard_normal(3))
    out = F.linear_relu(x, w, b)
    assert out._node.function is LinearReLUFunction
    assert len(out._node.inputs) == 3 and all(a is e for a, e in zip(out._node.inputs, (x, w, b)))
    assert F.linear_relu(x, w)._node.inputs[0] is x


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no bias"])
def test_functional_keeps_float32(rng, with_bias):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    arrays = [x, w] + ([b] * with_bias)
    y, expected = numpy_forward(*arrays)
    g = rng.standard_normal(y.shape)
    out, grads = forward_backward(functional, arrays, g, dtype=np.float32)
    assert out.dtype == np.float32
    assert [gr.dtype for gr in grads] == [np.float32] * len(arrays)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    y32, _ = numpy_forward(*(a.astype(np.float32) for a in arrays))   # the mask of the float32 pre-activation
    for got, want in zip(grads, numpy_backward(x, w, y32, g)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("requires", [(False, True, True), (True, False, True), (True, True, False),
                                      (False, False, True), (True, False, False), (False, True)],
                         ids=["x constant", "W constant", "b constant", "only b", "only x", "no bias, x constant"])
def test_functional_gives_gradients_only_where_asked(rng, monkeypatch, requires):
    """Only the inputs that require grad get one (the others keep None), equal to NumPy's; and the backward's math
    is told which are asked for (``needs``), so it computes no other."""
    told = []
    real = linear_module.linear_relu_backward

    def recording(x, z, grad_z, weight, needs):
        told.append(tuple(needs))
        return real(x, z, grad_z, weight, needs)

    monkeypatch.setattr(linear_module, "linear_relu_backward", recording)
    arrays = [rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)][:len(requires)]
    y, _ = numpy_forward(*arrays)
    g = rng.standard_normal(y.shape)
    _, grads = forward_backward(functional, arrays, g, requires=list(requires))
    expected = numpy_backward(arrays[0], arrays[1], y, g)
    for i, (got, want, asked) in enumerate(zip(grads, expected, requires)):
        if asked:
            np.testing.assert_allclose(got, want, **TIGHT, err_msg=f"gradient of input {i}")
        else:
            assert got is None, f"input {i} got a gradient it did not ask for"
    assert told and set(told) == {tuple(requires) + (False,) * (3 - len(requires))}, told


def test_functional_without_any_input_requiring_grad_records_nothing(rng):
    x, w = Tensor(dev(rng.standard_normal((2, 4)))), Tensor(dev(rng.standard_normal((3, 4))))
    out = F.linear_relu(x, w)
    assert not out.requires_grad and out._node is None


def _bad_calls(rng):
    """(label, arguments, error, the argument named): F.linear's mistakes, each to make in F.linear_relu too."""
    x32 = Tensor(rng.standard_normal((2, 3, 4)).astype(np.float32))
    w32, b32 = Tensor(rng.standard_normal((5, 4)).astype(np.float32)), Tensor(rng.standard_normal(5).astype(np.float32))
    return [
        ("x float32, W float64", (x32, Tensor(rng.standard_normal((5, 4))), None), TypeError, "x"),
        ("x float64, W float32", (Tensor(rng.standard_normal((2, 4))), w32, b32), TypeError, "x"),
        ("bias float64, W float32", (x32, w32, Tensor(rng.standard_normal(5))), TypeError, "bias"),
        ("x of int64", (Tensor(np.ones((2, 4), dtype=np.int64)), w32, b32), TypeError, "x"),
        ("x a NumPy array", (np.ones((2, 4), dtype=np.float32), w32, b32), TypeError, "x"),
        ("weight None", (x32, None, b32), TypeError, "weight"),
        ("bias a list", (x32, w32, [0.0] * 5), TypeError, "bias"),
        ("x's last axis is not in_features", (Tensor(np.ones((2, 3), dtype=np.float32)), w32, b32), ValueError, "x"),
        ("x 0-d", (Tensor(np.float32(1.0)), w32, b32), ValueError, "x"),
        ("bias of the wrong length", (x32, w32, Tensor(np.ones(4, dtype=np.float32))), ValueError, "bias"),
        ("bias 2-D", (x32, w32, Tensor(np.ones((1, 5), dtype=np.float32))), ValueError, "bias"),
        ("weight 1-D", (x32, Tensor(np.ones(4, dtype=np.float32)), None), ValueError, "weight"),
        ("weight 3-D", (x32, Tensor(np.ones((1, 5, 4), dtype=np.float32)), b32), ValueError, "weight"),
    ]


BAD_LABELS = [label for label, *_ in _bad_calls(np.random.default_rng(0))]


@pytest.mark.parametrize("label", BAD_LABELS)
def test_functional_refuses_what_linear_refuses_naming_the_argument(rng, label):
    """The same exception type as F.linear, a message in the checks' format naming the argument and saying
    ``linear_relu`` (F.linear's message with its own name)."""
    _, args, error, name = next(c for c in _bad_calls(rng) if c[0] == label)
    with pytest.raises(error, match=rf"^linear_relu: {name} must be .+, got .+$") as fused_error:
        F.linear_relu(*args)
    with pytest.raises(error) as linear_error:
        F.linear(*args)
    assert type(fused_error.value) is type(linear_error.value)
    assert str(fused_error.value) == "linear_relu" + str(linear_error.value)[len("linear"):]


# --- PositionWiseFFN, which now uses F.linear_relu -------------------------------------------------------------------
def _graph_functions(out):
    """The Function classes of every node in out's graph."""
    seen, stack, found = set(), [out], []
    while stack:
        t = stack.pop()
        if t._node is None or id(t) in seen:
            continue
        seen.add(id(t))
        found.append(t._node.function)
        stack.extend(t._node.inputs)
    return found


@pytest.mark.parametrize("training", [False, True], ids=["eval", "training, dropout 0.5"])
def test_position_wise_ffn_equals_its_composition(rng, training):
    """Output, x's gradient and every parameter's gradient equal those of dense2(dropout(dense1(x).relu())) built
    from the FFN's own sub-modules, bit for bit in float64; in training both draw the same dropout multiplier from
    the same seed."""
    manual_seed(3)
    ffn = PositionWiseFFN(4, 8, dropout=0.5, dtype="float64").train(training)
    x = rng.standard_normal((2, 3, 4))
    g = dev(rng.standard_normal((2, 3, 4)))
    runs = []
    for forward in (ffn, lambda t: ffn.dense2(ffn.dropout(ffn.dense1(t).relu()))):
        ffn.zero_grad()
        manual_seed(11)
        t = t64(x)
        out = forward(t)
        out.backward(g)
        runs.append((host(out), host(t.grad), {n: host(p.grad) for n, p in ffn.named_parameters()}))
    (out, dx, grads), (out_c, dx_c, grads_c) = runs
    np.testing.assert_array_equal(out, out_c)
    np.testing.assert_array_equal(dx, dx_c)
    assert sorted(grads) == sorted(grads_c) == ["dense1.bias", "dense1.weight", "dense2.bias", "dense2.weight"]
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads_c[name], err_msg=name)
    ffn.eval()
    out_eval = host(ffn(t64(x)))
    if training:   # the dropout really dropped: the training output is not the eval one
        assert not np.allclose(out, out_eval)
    else:
        np.testing.assert_array_equal(out, out_eval)


def test_position_wise_ffn_uses_one_linear_relu_node(rng):
    """Its first layer is LinearReLUFunction's single node (no separate ReLU node)."""
    ffn = PositionWiseFFN(4, 8, dtype="float64")
    functions = _graph_functions(ffn(t64(rng.standard_normal((2, 4)))))
    assert functions.count(LinearReLUFunction) == 1
    assert ops.ReLU not in functions


def test_ffn_calls_a_module_put_in_place_of_dense1():
    """A module that replaces dense1 (a subclass of Linear, as LoRA-style wrappers are) has its forward called: the
    fused path is taken for a plain Linear only."""
    class Shifted(Linear):
        def forward(self, x):
            return F.linear(x, self.weight, self.bias) + 1.0

    manual_seed(0)
    ffn = PositionWiseFFN(4, 6, dtype="float64")
    x = Tensor(np.random.default_rng(1).standard_normal((2, 3, 4)))
    plain = ffn(x).data
    shifted = Shifted(4, 6, dtype="float64")
    shifted.weight, shifted.bias = ffn.dense1.weight, ffn.dense1.bias
    ffn.dense1 = shifted
    expected = ffn.dense2((F.linear(x, shifted.weight, shifted.bias) + 1.0).relu()).data
    np.testing.assert_allclose(ffn(x).data, expected, rtol=1e-12, atol=1e-12)
    assert np.abs(ffn(x).data - plain).max() > 1e-3


def test_ffn_calls_a_forward_set_on_the_instance_of_dense1():
    """A forward set on the dense1 instance (a patch, a hook) is called too: the fused path is for a plain Linear."""
    manual_seed(0)
    ffn = PositionWiseFFN(4, 6, dtype="float64")
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 4)))
    real = ffn.dense1.forward
    ffn.dense1.forward = lambda t: real(t) - 0.5
    expected = ffn.dense2((F.linear(x, ffn.dense1.weight, ffn.dense1.bias) - 0.5).relu()).data
    np.testing.assert_allclose(ffn(x).data, expected, rtol=1e-12, atol=1e-12)
