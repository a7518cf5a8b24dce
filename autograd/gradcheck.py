"""gradcheck: compare every hand-written backward with central differences, in float64.

For inputs x (float64 tensors) and a function y = f(x), draw a fixed random cotangent w of y's shape and take the
scalar φ(x) = Σ w ∘ f(x). The backward pass gives ∇φ(x) = Jᵀw for every input at once; central differences give

    ∂φ/∂x_i ≈ (φ(x + ε e_i) − φ(x − ε e_i)) / 2ε          error O(ε²) from the Taylor series, plus rounding ~ 1e-16/ε

  * small inputs (at most ``max_elements`` elements in all): every element i of every input, one by one, so each
    entry of Jᵀw is checked against its own difference quotient; with two cotangents w this checks the full
    Jacobian J except on a set of w of probability zero;
  * large inputs: ``directions`` random directions v, comparing ⟨∇φ, v⟩ with (φ(x + εv) − φ(x − εv)) / 2ε (the check
    of chainer's ``check_backward`` and HIPS autograd's ``check_vjp``).

A mismatch raises GradcheckError naming the worst element: input, index, analytic, numeric, absolute and relative
error. Tolerances (float64, ε = 1e-6): |analytic − numeric| ≤ atol + rtol·|numeric| with atol = 1e-5, rtol = 1e-3
— PyTorch's gradcheck defaults; rounding alone is ~1e-10 here, so a wrong derivative shows up orders above them.
"""
from autograd import backend, checks
from autograd.backend import xp
from autograd.tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Raised by gradcheck when an analytic gradient disagrees with its numerical estimate."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, max_elements=400, directions=6, cotangents=2, seed=0):
    """Check the gradients of ``fn`` with respect to every input that requires grad.

    Args:
        fn: callable taking the tensors in ``inputs`` and returning one Tensor (any shape).
        inputs: list of Tensors; those with ``requires_grad`` are checked and must be float64.
        eps, atol, rtol: step and tolerances (see the module docstring).
        max_elements: up to this many checked elements in all, check element by element; above, by directions.
        directions: random directions per cotangent in the large-input mode.
        cotangents: number of random output cotangents w.
        seed: seed of the host generator that draws w and v.

    Returns True. Raises GradcheckError with the worst element on a mismatch; TypeError for a non-float64 input;
    TypeError / ValueError (``autograd.checks``) for a bad option.
    """
    where = "gradcheck"
    if not callable(fn):
        checks.fail("fn", "a callable", fn, where, TypeError)
    checks.instance("inputs", inputs, (list, tuple), "a list of Tensors", where)
    eps = checks.positive_float("eps", eps, where)
    atol, rtol = checks.nonnegative_float("atol", atol, where), checks.nonnegative_float("rtol", rtol, where)
    max_elements = checks.nonnegative_int("max_elements", max_elements, where)
    directions = checks.positive_int("directions", directions, where)
    cotangents = checks.positive_int("cotangents", cotangents, where)
    seed = checks.nonnegative_int("seed", seed, where)
    inputs = list(inputs)
    checked = [x for x in inputs if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        checks.fail("inputs", "a list with at least one Tensor that requires grad", inputs, where)
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor) and x.requires_grad and x.dtype != backend.float64:
            checks.fail(f"inputs[{i}]", "float64 (rounding in float32 swamps the difference)", x, where, TypeError)
    originals = [x.data for x in checked]
    try:
        _gradcheck(fn, inputs, checked, eps, atol, rtol, max_elements, directions, cotangents, seed)
    finally:
        for x, data in zip(checked, originals):   # the caller's arrays (and layouts) back, gradients cleared
            x.data, x.grad = data, None
    return True


def _gradcheck(fn, inputs, checked, eps, atol, rtol, max_elements, directions, cotangents, seed):
    for x in checked:
        x.data = x.data.copy()     # perturb a private C-contiguous copy: a flat view of it writes through
    rng = backend.new_host_rng(seed)
    total = sum(x.size for x in checked)
    with no_grad():
        out_shape = fn(*inputs).shape
    for _ in range(cotangents):
        w = backend.asarray(rng.standard_normal(out_shape))

        def phi():
            with no_grad():
                return float((fn(*inputs).data * w).sum())

        for x in checked:
            x.grad = None
        out = fn(*inputs)
        if not out.requires_grad:
            raise GradcheckError("gradcheck: the output does not depend on any input that requires grad")
        out.backward(w)
        analytic = [x.grad if x.grad is not None else xp.zeros_like(x.data) for x in checked]
        if total <= max_elements:
            _check_elementwise(phi, checked, analytic, eps, atol, rtol)
        else:
            _check_directions(phi, checked, analytic, eps, atol, rtol, rng, directions)


def _check_elementwise(phi, checked, analytic, eps, atol, rtol):
    worst = None
    for k, (x, grad) in enumerate(zip(checked, analytic)):
        flat = x.data.reshape(-1)          # a view: writing into it perturbs x in place
        grad = backend.to_numpy(grad).reshape(-1)
        for i in range(flat.size):
            original = flat[i].item()
            flat[i] = original + eps
            plus = phi()
            flat[i] = original - eps
            minus = phi()
            flat[i] = original
            numeric = (plus - minus) / (2 * eps)
            worst = _worse(worst, k, _unravel(i, x.shape), float(grad[i]), numeric, atol, rtol)
    _raise_if_bad(worst, atol, rtol)


def _check_directions(phi, checked, analytic, eps, atol, rtol, rng, directions):
    worst = None
    for d in range(directions):
        vs = [backend.asarray(rng.standard_normal(x.shape)) for x in checked]
        originals = [x.data.copy() for x in checked]
        for x, v, x0 in zip(checked, vs, originals):
            x.data[...] = x0 + eps * v
        plus = phi()
        for x, v, x0 in zip(checked, vs, originals):
            x.data[...] = x0 - eps * v
        minus = phi()
        for x, x0 in zip(checked, originals):
            x.data[...] = x0
        numeric = (plus - minus) / (2 * eps)
        predicted = sum(float((g * v).sum()) for g, v in zip(analytic, vs))
        worst = _worse(worst, "all", f"direction {d}", predicted, numeric, atol, rtol)
    _raise_if_bad(worst, atol, rtol)


def _worse(worst, which, index, analytic, numeric, atol, rtol):
    excess = abs(analytic - numeric) - (atol + rtol * abs(numeric))
    if worst is None or excess > worst[0]:
        return excess, which, index, analytic, numeric
    return worst


def _raise_if_bad(worst, atol, rtol):
    excess, which, index, analytic, numeric = worst
    if excess > 0:
        abs_err = abs(analytic - numeric)
        rel_err = abs_err / max(abs(numeric), 1e-300)
        raise GradcheckError(f"gradcheck failed at input {which}, index {index}: analytic {analytic:.10g}, numeric "
                             f"{numeric:.10g}, abs error {abs_err:.3g}, rel error {rel_err:.3g} "
                             f"(atol {atol}, rtol {rtol})")


def _unravel(flat_index, shape):
    index = []
    for n in reversed(shape):
        flat_index, i = divmod(flat_index, n)
        index.append(i)
    return tuple(reversed(index))
