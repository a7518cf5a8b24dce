"""Property-based fuzzing of the public API (hypothesis): valid calls give PyTorch's numbers, invalid calls are
refused by name and change nothing.

Default run: at most 9566 cases (9491 without PyTorch) — the sum of max_examples over the tests below: 8056
invalid calls, 8 for each of the 1007 kinds of mistake over 39 entry points (each kind its own parametrized case, so
every kind is tried on every run), plus 1510 valid calls. At most: hypothesis stops once a small search space is
exhausted (a constructor's mistake with nothing else to draw runs once), so about 7,000 run in practice.
``MINATTN_FUZZ_SCALE`` (a positive number, default 1) multiplies every test's count: MINATTN_FUZZ_SCALE=10 for a
deeper sweep.
``test_docstring_counts_the_cases`` keeps these numbers true.

Invalid calls — ``test_invalid_call_is_refused_by_name_and_changes_nothing[<entry point>-<kind>]``, one mistake
per call, amid random shapes, values and models mid-training:
  entry points   Tensor() and Tensor.sum / mean / max / reshape / transpose / permute; F.linear, linear_relu, softmax,
                 log_softmax, masked_softmax, scaled_dot_product_attention, layer_norm, cross_entropy, embedding,
                 dropout; the Linear, Embedding, LayerNorm, Dropout, MultiHeadAttention, Transformer and GPT
                 constructors; the forwards of Linear, LayerNorm, Embedding, MultiHeadAttention, Transformer and GPT;
                 Transformer.greedy_decode, GPT.generate; SGD, Adam, WarmupSchedule, CosineSchedule, clip_grad_norm_;
                 checkpoint.save and checkpoint.load (of a damaged file)
  mistakes       Tensor(): data that is not numbers (object array, str, None, ragged list, dict), an unknown
                 dtype, requires_grad on integers or as a string;
                 tensors: not a Tensor (NumPy array, nested list, None), int / bool / object dtype, float32 or
                 float16 among float64, wrong rank (0-d, 1-D, 3-D), a wrong last axis, length or batch, an
                 attn_mask of the wrong shape or dtype or requiring grad, grouped-query heads that do not divide;
                 sizes, counts, ids and axes: bool, float, str, one-element list, None, NaN, negative, zero (which
                 PyTorch may accept instead), out of range, repeated, an empty axis tuple (PyTorch reduces every
                 axis: that result or a refusal); token ids and class targets out of range, of float or bool dtype,
                 of the wrong shape; valid_lens of float / bool dtype, the wrong shape, batch or range; scale as a
                 str, list, tuple, complex or array; boolean flags given as strings; hyper-parameters PyTorch
                 refuses (negative or NaN lr, momentum, weight_decay, eps; betas outside [0, 1) or not two numbers;
                 nesterov without momentum; dropout p outside [0, 1)), and their wrong types; a few PyTorch
                 silently misuses (a negative or NaN layer-norm eps, clip_grad_norm_'s max_norm negative or NaN);
                 schedules with embed_dim <= 0, NaN or non-positive warm-up, a negative or NaN factor,
                 min_lr > max_lr; a parameter list that is a Tensor, empty, repeats a
                 parameter or holds a non-Tensor; a checkpoint whose model or optimizer member has another dtype or
                 shape, is a string, is missing or unexpected, whose optimizer JSON holds a bad value, whose marker
                 or extra entry is damaged; save/load given None, an int or the wrong object, extra metadata that
                 JSON cannot hold.
  contract       TypeError, ValueError or RuntimeError whose message names the argument (as a word; for
                 checkpoint.load of a damaged file, the path); no warning; and nothing observable changed —
                 every parameter's data and .grad, optimizer state_dict and attributes, schedule state,
                 attention_weights, .training of every submodule, autograd.backend's host and device random streams
                 (the generator objects and their bit_generator.state), grad mode, NumPy's errstate, the thread
                 count, and the bytes of an existing checkpoint file. Where PyTorch answers the call instead (0-d
                 softmax, zero sizes, axis=(), clip_grad_norm_ of a single Tensor) its answer is accepted too.

Valid calls — one test per family, the expected numbers from PyTorch in float64 where it is installed, from
float64 NumPy (tests/numpy_reference.py; gradients by central differences) otherwise:
  reductions over every form of axis and keepdims (lengths 0 included); reshape / transpose / permute / .T and
  their gradients; F.linear and Linear; softmax, log_softmax, masked_softmax; scaled_dot_product_attention with
  broadcast batches, L, S and E of 0, boolean / float / −inf masks of every broadcastable shape, is_causal (L ≠ S),
  sliding windows, scale, grouped-query heads — output, weights and gradients; layer_norm (γ, β, residual, eps) and
  LayerNorm; cross_entropy ((N, C[, d]), N = 0, ignore_index, label smoothing, reductions; every-row-ignored mean
  is 0 as documented); embedding; dropout (0 or x / (1 − p), draws only when it drops); MultiHeadAttention (GQA,
  qk_norm, share_qk, kdim/vdim, bias, dense/flash, RoPE, ALiBi, window, valid_lens, masks) against a composition of
  the reference ops from its own parameters; Transformer forward and greedy_decode (cached or not) and GPT forward
  and generate (greedy token for token; sampling: same seed same tokens, no random stream moved) likewise; SGD and
  Adam steps with gradients present or None; WarmupSchedule and CosineSchedule against their formulas;
  clip_grad_norm_ (max_norm 0, int, inf); NaN / ±inf in the data (PyTorch only: its results, and no warning);
  sizes, ids and max_len as NumPy integers too. Every valid call must also be silent (no warning, forward or
  backward).

Checkpoints: every SGD / Adam configuration the constructor accepts (hyper-parameters drawn as floats, ints, NumPy
scalars, bools; betas as a tuple, list or array) is saved with minattn.checkpoint after 0–2 steps and loaded into a
fresh model and a default optimizer: parameters bit for bit, optimizer state equal, the next step identical.

Reading a failure: pytest's node id names the test (for invalid calls, the entry point and the number of the kind
of mistake); hypothesis's "Draw" line prints the call — argument shapes and dtypes, small integer arrays in full —
followed by "<- argument: what is wrong; the error must name ..."; the assertion lists each problem (the exception
seen, the message, the warning, each changed observable).
"""
import json
import math
import os
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st
from hypothesis.database import InMemoryExampleDatabase

import autograd
from autograd import Tensor, backend
from minattn import (GPT, SGD, Adam, CosineSchedule, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList,
                     MultiHeadAttention, Transformer, WarmupSchedule, checkpoint, clip_grad_norm_, manual_seed)
from minattn import functional as F
from minattn.optim import Optimizer
from tests import numpy_reference as npref
from tests.conftest import host

try:
    import torch
except ImportError:   # PyTorch is optional: the NumPy references below stand in for it
    torch = None

REFERENCE = "PyTorch" if torch is not None else "NumPy"
"""Which library computes the expected numbers of valid calls."""


# =====================================================================================================================
# how many cases: MINATTN_FUZZ_SCALE
# =====================================================================================================================
def fuzz_scale():
    """MINATTN_FUZZ_SCALE, a positive number (default 1): every test tries that many times its default cases."""
    raw = os.environ.get("MINATTN_FUZZ_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        scale = float("nan")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"MINATTN_FUZZ_SCALE must be a positive number, got {raw!r}")
    return scale


def example_database():
    """Where hypothesis keeps failing examples: the active profile's database, or one in memory where the profile has
    none (hypothesis's "ci" profile, loaded when the CI variable is set, says database=None).

    Why never None: hypothesis's pytest plugin wraps a parametrized test's settings in one more settings object per
    case, each falling back to the one before, and a None database is looked up through the whole chain again on
    every access (a found one is cached). After ~950 cases of test_invalid_call_... that lookup passed the recursion
    limit (RecursionError, then every later case failed; hypothesis 6.170 under CI=true)."""
    database = settings.default.database
    return InMemoryExampleDatabase() if database is None else database


def fuzz(max_examples):
    """hypothesis settings for a test that tries ``max_examples`` cases at scale 1 (``max_examples`` × the scale,
    at least 1, in general). The default count is kept on the test, for ``test_docstring_counts_the_cases``."""
    def decorate(test):
        wrapped = settings(max_examples=max(1, round(max_examples * fuzz_scale())), deadline=None,
                           database=example_database(),
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                  HealthCheck.filter_too_much])(test)
        wrapped.default_cases = max_examples
        return wrapped
    return decorate


# =====================================================================================================================
# describing a call (what a failure report prints) and observing state
# =====================================================================================================================
def describe(value):
    """A short, readable stand-in for ``value`` in a failure report: shapes and dtypes, small integer arrays in full."""
    if isinstance(value, Tensor):
        shown = _array_text(value.data)
        return f"Tensor({shown}{', requires_grad' if value.requires_grad else ''})"
    if backend.is_array(value) or isinstance(value, np.ndarray):
        return f"array({_array_text(value)})"
    if isinstance(value, Module):
        return f"<{type(value).__name__}>"
    if isinstance(value, Optimizer):
        return f"<{type(value).__name__} over {len(value.params)} params>"
    if isinstance(value, (list, tuple)) and any(isinstance(v, (Tensor, np.ndarray)) for v in value):
        inner = ", ".join(describe(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, np.generic):
        return f"np.{type(value).__name__}({value.item()!r})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _array_text(a):
    a = backend.to_numpy(a)
    if a.dtype.kind in "iub" and a.size <= 8:
        return f"{a.tolist()!r}, {a.dtype}"
    return f"shape {a.shape}, {a.dtype}"


class Call:
    """One call of a public entry point: ``entry`` (what the report prints, e.g. "F.softmax"), the function and its
    arguments; for a refused call, ``names`` (the error message must contain one of them as a word), ``mistake``
    (what is wrong, in words) and ``state`` (objects whose every observable must survive the refusal)."""

    def __init__(self, entry, fn, *args, names=(), mistake="", state=(), accept=None, **kwargs):
        self.entry, self.fn, self.args, self.kwargs = entry, fn, args, kwargs
        self.names, self.mistake, self.state = tuple(names), mistake, tuple(state)
        self.accept = accept   # for a call PyTorch answers: check(result) -> None, raising AssertionError
        self.kinds = None      # for a refused call: how many kinds of mistake its builder knows

    def run(self):
        return self.fn(*self.args, **self.kwargs)

    def __repr__(self):
        parts = [describe(a) for a in self.args] + [f"{k}={describe(v)}" for k, v in self.kwargs.items()]
        text = f"{self.entry}({', '.join(parts)})"
        if self.mistake:
            text += f"   <- {self.mistake}; the error must name {' or '.join(map(repr, self.names))}"
        return text


def _host_copy(a):
    return None if a is None else backend.to_numpy(a).copy()


def rng_streams():
    """autograd.backend's two random streams: which generator object, and its ``bit_generator.state``."""
    host, device = backend.host_rng(), backend.device_rng()
    device_state = getattr(getattr(device, "bit_generator", None), "state", None)   # CuPy's shows none
    return {"host random stream": (id(host), host.bit_generator.state),
            "device random stream": (id(device), device_state)}


def observe(*things):
    """Every observable of ``things`` (Modules, Optimizers, schedules, Tensors, files) and of the process-wide state
    (both random streams, grad mode, NumPy's error settings, the thread count), as comparable host values."""
    state = dict(rng_streams())
    state["grad mode"] = autograd.is_grad_enabled()
    state["numpy errstate"] = np.geterr()
    state["num_threads"] = autograd.get_num_threads()
    for i, thing in enumerate(things):
        tag = f"#{i} {type(thing).__name__}"
        if isinstance(thing, Module):
            for name, p in thing.named_parameters():
                state[f"{tag} {name}"] = _host_copy(p.data)
                state[f"{tag} {name}.grad"] = _host_copy(p.grad)
            for name, m in thing.named_modules():
                state[f"{tag} {name or '(root)'}.training"] = m.training
                if hasattr(m, "attention_weights"):
                    w = m.attention_weights
                    state[f"{tag} {name}.attention_weights"] = (id(w), None if w is None else
                                                                _host_copy(getattr(w, "data", w)))
        elif isinstance(thing, Optimizer):
            state[f"{tag} state_dict"] = thing.state_dict()
            state[f"{tag} attributes"] = {k: v for k, v in vars(thing).items() if not k.startswith("_")
                                          and k not in ("params", "m", "v", "velocity")}
            for j, p in enumerate(thing.params):
                state[f"{tag} param[{j}]"] = _host_copy(p.data)
                state[f"{tag} param[{j}].grad"] = _host_copy(p.grad)
        elif isinstance(thing, (WarmupSchedule, CosineSchedule)):
            state[f"{tag} attributes"] = {k: v for k, v in vars(thing).items() if k != "optimizer"}
            state[f"{tag} optimizer.lr"] = thing.optimizer.lr
        elif isinstance(thing, Tensor):
            state[f"{tag} data"] = _host_copy(thing.data)
            state[f"{tag} grad"] = _host_copy(thing.grad)
            state[f"{tag} requires_grad"] = thing.requires_grad
            state[f"{tag} node"] = id(thing._node)
        elif isinstance(thing, os.PathLike):
            folder = os.path.dirname(os.fspath(thing))
            state[f"{tag} folder"] = sorted(os.listdir(folder))
            state[f"{tag} bytes"] = None
            if os.path.exists(thing):
                with open(thing, "rb") as f:
                    state[f"{tag} bytes"] = f.read()
        else:
            raise TypeError(f"observe: cannot observe {type(thing).__name__}")
    return state


def same(a, b):
    """Equal as observed: arrays bit for bit (dtype and shape too), containers element by element, NaN == NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def changes(before, after):
    """The observables that differ, in words."""
    keys = list(before) + [k for k in after if k not in before]
    return [f"{k} changed" for k in keys if k not in before or k not in after or not same(before[k], after[k])]


ERRORS = (TypeError, ValueError, RuntimeError)
"""What a refusal may raise (an argument's type, its value, or the call as a whole)."""


def names_any(names, message):
    """True if one of ``names`` appears in ``message`` as a word (not inside a longer identifier)."""
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message) for n in names)


def expect_refusal(call):
    """The call raises TypeError / ValueError / RuntimeError whose message names the argument, warns nothing, and
    changes nothing observable (see ``observe``). A call with ``accept`` may instead return PyTorch's answer."""
    before = observe(*call.state)
    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call.run()
        except ERRORS as err:
            if not names_any(call.names, str(err)):
                problems.append(f"the message does not name {' or '.join(map(repr, call.names))}: "
                                f"{type(err).__name__}: {err}")
            problems += changes(before, observe(*call.state))
        except Exception as err:   # noqa: BLE001  (any other exception is the finding)
            problems.append(f"raised {type(err).__name__} ({err}), not TypeError / ValueError / RuntimeError")
            problems += changes(before, observe(*call.state))
        else:
            if call.accept is None:
                problems.append(f"was accepted: returned {describe(result)}")
                problems += changes(before, observe(*call.state))
            else:
                try:
                    call.accept(result)
                except AssertionError as err:
                    problems.append(f"accepted it, but the result is not PyTorch's: {err}")
    problems += [f"warned {w.category.__name__}: {w.message}" for w in caught]
    assert not problems, f"{call!r}\n    " + "\n    ".join(problems)


def run_valid(call):
    """Run a valid call: it must not raise and must not warn. Returns its result."""
    note(f"valid call: {call!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call.run()
        except Exception as err:   # noqa: BLE001
            raise AssertionError(f"{call!r}\n    a valid call was refused: {type(err).__name__}: {err}") from err
    assert not caught, f"{call!r}\n    warned: " + "; ".join(f"{w.category.__name__}: {w.message}" for w in caught)
    return result


# =====================================================================================================================
# the references: PyTorch where installed, NumPy otherwise — float64, host arrays in and out
# =====================================================================================================================
TIGHT = dict(rtol=1e-9, atol=1e-11)            # float64 against float64: only the order of additions differs
NUMERIC = dict(rtol=1e-5, atol=1e-7)           # against central differences of the NumPy reference (no PyTorch)


def _np_softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def _np_log_softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _np_masked_softmax(scores, mask):
    return npref.softmax_rows(scores, mask)


def _np_attention(q, k, v, mask=None, bias=None, scale=None, group=1):
    """(output, weights) of softmax(q kᵀ·scale + bias, mask) v; key/value heads (axis -3) repeated ``group`` times."""
    if group > 1:
        k, v = np.repeat(k, group, axis=-3), np.repeat(v, group, axis=-3)
    e = q.shape[-1]
    scale = (1 / math.sqrt(e) if e else 1.0) if scale is None else scale
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        shape = np.broadcast_shapes(scores.shape, mask.shape)
        scores, mask = np.broadcast_to(scores, shape), np.broadcast_to(mask, shape)
    weights = npref.softmax_rows(scores, mask) if scores.size else np.zeros(scores.shape)
    return np.matmul(weights, v), weights


def _np_cross_entropy(logits, target, ignore_index, label_smoothing, reduction):
    if logits.ndim > 2:   # (N, C, d...) → one row per position
        c = logits.shape[1]
        rows = np.moveaxis(logits, 1, -1).reshape(-1, c)
        loss, _ = npref.cross_entropy(rows, target.reshape(-1), ignore_index, label_smoothing, reduction)
        return loss.reshape(target.shape) if reduction == "none" else loss
    loss, _ = npref.cross_entropy(logits, target, ignore_index, label_smoothing, reduction)
    return loss


def _safe_masked_softmax_torch(scores, mask):
    """softmax over the last axis with mask (True = take part); a fully masked row → 0, with a finite gradient."""
    mask = torch.broadcast_to(torch.as_tensor(mask), scores.shape)
    alive = mask.any(-1, keepdim=True)
    filled = torch.where(mask, scores, torch.tensor(-math.inf, dtype=scores.dtype))
    filled = torch.where(alive, filled, torch.zeros((), dtype=scores.dtype))   # dead rows: anything finite
    return torch.softmax(filled, -1) * mask


def _torch_attention_weights(q, k, v, mask=None, bias=None, scale=None, group=1):
    if group > 1:
        k = k.repeat_interleave(group, dim=-3)
    e = q.shape[-1]
    scale = (1 / math.sqrt(e) if e else 1.0) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + torch.as_tensor(bias)
    keep = scores > -math.inf
    if mask is not None:
        keep = keep & torch.as_tensor(mask)
    return _safe_masked_softmax_torch(scores, keep)


# Each op: (NumPy implementation, PyTorch implementation); arrays first, then keyword constants.
def _op_linear():
    def np_(x, w, b=None):
        return x @ w.T + (0 if b is None else b)

    def th(x, w, b=None):
        return torch.nn.functional.linear(x, w, b)
    return np_, th


def _op_sdpa():
    def np_(q, k, v, mask=None, bias=None, scale=None, group=1):
        return _np_attention(q, k, v, mask, bias, scale, group)[0]

    def th(q, k, v, mask=None, bias=None, scale=None, group=1):
        attn_mask = None
        if mask is not None:
            attn_mask = torch.as_tensor(mask)
        if bias is not None:
            b = torch.as_tensor(bias)
            attn_mask = b if attn_mask is None else torch.where(attn_mask, b, torch.tensor(-math.inf,
                                                                                          dtype=b.dtype))
        if attn_mask is not None and attn_mask.dim() < 2:     # (S,): PyTorch's kernel wants the query axis too
            attn_mask = attn_mask.reshape(1, -1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale,
                                                                enable_gqa=group > 1)
    return np_, th


OPS = {
    "linear": _op_linear(),
    "softmax": (_np_softmax, lambda x, axis: torch.softmax(x, axis)),
    "log_softmax": (_np_log_softmax, lambda x, axis: torch.log_softmax(x, axis)),
    "masked_softmax": (_np_masked_softmax, _safe_masked_softmax_torch),
    "sdpa": _op_sdpa(),
    "sdpa_weights": (lambda q, k, v, mask=None, bias=None, scale=None, group=1:
                     _np_attention(q, k, v, mask, bias, scale, group)[1], _torch_attention_weights),
    "layer_norm": (lambda x, w, b, eps: npref.layer_norm(x, w, b, eps),
                   lambda x, w, b, eps: torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, eps)),
    "cross_entropy": (_np_cross_entropy,
                      lambda z, target, ignore_index, label_smoothing, reduction: torch.nn.functional.cross_entropy(
                          z, torch.as_tensor(target), ignore_index=ignore_index, label_smoothing=label_smoothing,
                          reduction=reduction)),
    "embedding": (lambda w, ids: w[ids], lambda w, ids: torch.nn.functional.embedding(torch.as_tensor(ids), w)),
    "sum": (lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims),
            lambda x, axis, keepdims: x.sum(dim=axis, keepdim=keepdims)),
    "mean": (lambda x, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims),
             lambda x, axis, keepdims: x.mean(dim=axis, keepdim=keepdims)),
    "max": (lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims),
            lambda x, axis, keepdims: x.amax(dim=axis, keepdim=keepdims)),
    "reshape": (lambda x, shape: x.reshape(shape), lambda x, shape: x.reshape(shape)),
    "permute": (lambda x, axes: np.transpose(x, axes), lambda x, axes: x.permute(axes)),
}


def reference(op, arrays, cotangent=None, **constants):
    """(output, gradients) of ``op`` on float64 host ``arrays`` (None entries pass through and get no gradient):
    PyTorch's forward and autograd where it is installed; else the NumPy forward, and its gradient by central
    differences. ``gradients`` is None without a ``cotangent``."""
    np_fn, th_fn = OPS[op]
    if torch is not None:
        inputs = [None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=cotangent is not None)
                  for a in arrays]
        with torch.set_grad_enabled(cotangent is not None):
            out = th_fn(*inputs, **constants)
        grads = None
        if cotangent is not None:
            live = [t for t in inputs if t is not None]
            got = torch.autograd.grad(out, live, torch.as_tensor(cotangent), allow_unused=True)
            got = iter(got)
            grads = []
            for a, t in zip(arrays, inputs):
                if t is None:
                    grads.append(None)
                    continue
                g = next(got)
                grads.append(np.zeros_like(a) if g is None else g.numpy())
        return out.detach().numpy(), grads
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = np.asarray(np_fn(*arrays, **constants), dtype=np.float64)
        grads = None if cotangent is None else _numeric_vjp(lambda *a: np_fn(*a, **constants), arrays, cotangent)
    return out, grads


def _numeric_vjp(fn, arrays, cotangent, h=1e-6):
    """Central differences of Σ fn(arrays) ∘ cotangent, element by element (the arrays are small)."""
    grads = []
    for i, a in enumerate(arrays):
        if a is None:
            grads.append(None)
            continue
        g = np.zeros_like(a)
        for idx in np.ndindex(*a.shape):
            plus, minus = list(arrays), list(arrays)
            plus[i], minus[i] = a.copy(), a.copy()
            plus[i][idx] += h
            minus[i][idx] -= h
            g[idx] = (np.sum(fn(*plus) * cotangent) - np.sum(fn(*minus) * cotangent)) / (2 * h)
        grads.append(g)
    return grads


def forward(op, *arrays, **constants):
    """The reference output alone (PyTorch's where installed)."""
    return reference(op, list(arrays), **constants)[0]


def assert_close(actual, expected, what, tolerance=TIGHT):
    actual = backend.to_numpy(actual.data if isinstance(actual, Tensor) else actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, {REFERENCE} gives {expected.shape}"
    np.testing.assert_allclose(actual.astype(np.float64), expected, equal_nan=True, err_msg=f"{what} vs {REFERENCE}",
                               **tolerance)


def grad_tolerance():
    return TIGHT if torch is not None else NUMERIC


def backward(call, out, cotangent):
    """``out.backward(cotangent)`` for the result of a valid call: it must not raise and must not warn."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out.backward(backend.asarray(cotangent))
        except Exception as err:   # noqa: BLE001
            raise AssertionError(f"{call!r}\n    its backward raised {type(err).__name__}: {err}") from err
    assert not caught, f"{call!r}\n    its backward warned: " + "; ".join(f"{w.category.__name__}: {w.message}"
                                                                      for w in caught)


def check_grads(call, leaves, op, arrays, cotangent, **constants):
    """Run ``call`` (valid: no error, no warning), compare its result with the reference's, backpropagate
    ``cotangent`` and compare each leaf's .grad with the reference's gradient of the matching array."""
    out = run_valid(call)
    expected_out, expected = reference(op, arrays, cotangent, **constants)
    assert_close(out, expected_out, repr(call))
    backward(call, out, cotangent)
    for i, (leaf, g) in enumerate(zip(leaves, expected)):
        if leaf is None or g is None:
            continue
        assert leaf.grad is not None, f"{call!r}: input {i} got no gradient"
        assert_close(leaf.grad, g, f"{call!r}: gradient of input {i}", grad_tolerance())
    return out


# =====================================================================================================================
# building inputs
# =====================================================================================================================
seeds = st.integers(0, 2**32 - 1)


def tensor(a, dtype=np.float64, requires_grad=False):
    """A backend Tensor of ``a`` in ``dtype``."""
    return Tensor(backend.asarray(np.asarray(a, dtype=dtype)), requires_grad=requires_grad)


def with_state(model, loss_of):
    """Put ``model`` mid-training: a forward and backward in training mode, so every parameter has a .grad and the
    attention layers hold attention_weights (what a refused call must leave as they are)."""
    model.train()
    loss_of(model).backward()
    return model


class Mistake:
    """One wrong argument: ``arg`` = ``value``, described by ``label``; the error must name one of ``names``."""

    def __init__(self, arg, label, value, names=None, accept=None, also=None):
        self.arg, self.label, self.value = arg, label, value
        self.names = (arg,) if names is None else tuple(names)
        self.accept = accept
        self.also = also or {}   # other arguments the mistake needs (e.g. attn_mask for "is_causal with a mask")
        self.kinds = None        # how many kinds of mistake its builder knows (set by draw_mistake)


def draw_mistake(mistakes, pick):
    """Mistake number ``pick`` of ``mistakes``, in the order of their labels. Which mistake is not left to hypothesis:
    every kind is its own parametrized case (hypothesis covers only about half of a 60-item ``sampled_from`` in 180
    cases), and hypothesis draws the shapes, values and models around it. ``kinds`` records how many there are."""
    labels = {f"{m.arg}: {m.label}": m for m in mistakes}
    assert len(labels) == len(mistakes), "mistake labels must be unique"
    chosen = labels[sorted(labels)[pick]]
    chosen.kinds = len(labels)
    return chosen


def object_tensor(a):
    """A Tensor holding an object array — or, where Tensor() refuses to make one, the object array itself."""
    try:
        return Tensor(np.asarray(a, dtype=object))
    except ERRORS:
        return np.asarray(a, dtype=object)


def wrong_tensors(arg, t, float_mismatch=True, names=None, optional=False):
    """What a float64 Tensor argument ``arg`` must not be: not a Tensor (None too, unless ``optional``), a dtype that
    is not floating, or (when the other operands fix the dtype) another float dtype."""
    a = host(t)
    out = [Mistake(arg, "a NumPy array, not a Tensor", a.copy(), names),
           Mistake(arg, "a nested list, not a Tensor", a.tolist(), names)]
    if not optional:
        out.append(Mistake(arg, "None", None, names))
    out += [Mistake(arg, "int64 dtype", tensor(np.round(a), np.int64), names),
           Mistake(arg, "bool dtype", tensor(a > 0, bool), names)]
    if backend.BACKEND == "numpy":
        out.append(Mistake(arg, "object dtype", object_tensor(a), names))
    if float_mismatch:
        out += [Mistake(arg, "float32 among float64", tensor(a, np.float32), names),
                Mistake(arg, "float16 among float64", tensor(a, np.float16), names)]
    return out


WRONG_INT_TYPES = [("a bool", True), ("False", False), ("a float", 2.0), ("a fractional float", 2.5),
                   ("a string", "2"), ("a one-element list", [2]), ("None", None), ("NaN", float("nan"))]
"""What a size, a token id or a count must not be (its value aside)."""


def wrong_ints(arg, names=None, negative=(-1, -3), also=()):
    """Mistakes for an integer argument: wrong Python types, and negative values."""
    out = [Mistake(arg, label, value, names) for label, value in WRONG_INT_TYPES]
    out += [Mistake(arg, f"negative ({v})", v, names) for v in negative]
    return out + list(also)


def zero_size(arg, names=None):
    """A size (or depth) of 0: PyTorch builds such a layer; refusing it by name is as good (never a
    ZeroDivisionError)."""
    return Mistake(arg, "zero", 0, names, accept=lambda result: None)


WRONG_PROBABILITIES = [("negative", -0.1), ("one", 1.0), ("above one", 1.5), ("NaN", float("nan")),
                       ("a string", "0.1"), ("None", None), ("a one-element list", [0.1])]


def wrong_nonnegatives(arg, names=None):
    """Mistakes for a non-negative real hyper-parameter (lr, momentum, weight_decay, eps, max_norm ...)."""
    return [Mistake(arg, label, value, names) for label, value in
            [("negative", -0.1), ("NaN", float("nan")), ("a string", "0.1"), ("None", None),
             ("a one-element list", [0.1]), ("a complex number", 0.1j)]]


def call_with(entry, fn, args, kwargs, mistake, state=()):
    """``fn(*args, **kwargs)`` with ``mistake`` applied (a keyword argument replaced)."""
    kwargs = dict(kwargs, **mistake.also)
    kwargs[mistake.arg] = mistake.value
    call = Call(entry, fn, *args, names=mistake.names, mistake=f"{mistake.arg}: {mistake.label}", state=state,
                accept=mistake.accept, **kwargs)
    call.kinds = mistake.kinds
    return call


def call_positional(entry, fn, mistake, state=()):
    """``fn(mistake.value)``: the mistake is the one positional argument (a module's input)."""
    call = Call(entry, fn, mistake.value, names=mistake.names, mistake=f"{mistake.arg}: {mistake.label}",
                state=state, accept=mistake.accept)
    call.kinds = mistake.kinds
    return call


# =====================================================================================================================
# invalid calls, one builder per entry point
# =====================================================================================================================
def _reduction_accepting_all_axes(op, x, keepdims):
    """PyTorch reduces EVERY axis for dim=() — a result to accept for axis=() (refusing it by name is as good)."""
    def check(result):
        axes = tuple(range(x.ndim))
        assert_close(result, forward(op, host(x), axis=axes, keepdims=keepdims), f"{op}(axis=())")
    return check


@st.composite
def bad_reduction(draw, op, pick):
    rng = np.random.default_rng(draw(seeds))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    x = tensor(rng.standard_normal(shape), requires_grad=draw(st.booleans()))
    keepdims = draw(st.booleans())
    mistakes = [Mistake("axis", "a bool", True), Mistake("axis", "a float", 0.0), Mistake("axis", "a string", "0"),
                Mistake("axis", "out of range", ndim + draw(st.integers(0, 2))),
                Mistake("axis", "out of range, negative", -ndim - 1 - draw(st.integers(0, 2))),
                Mistake("axis", "a tuple holding a float", (0.0,)), Mistake("axis", "a nested tuple", ((0,),)),
                Mistake("axis", "empty: ()", (), accept=_reduction_accepting_all_axes(op, x, keepdims)),
                Mistake("keepdims", "a string", "yes"),
                Mistake("axis", "a tuple holding a bool", (0, True) if ndim > 1 else (True,)),
                Mistake("axis", "a repeated axis", (0, -ndim))]
    if op == "max":
        empty = list(shape) or [0]
        empty[-1] = 0
        x_empty = tensor(np.zeros(empty))
        mistakes.append(Mistake("axis", "over an axis of length 0", -1, names=("axis", "x", "empty")))
    m = draw_mistake(mistakes, pick)
    target = x_empty if m.label == "over an axis of length 0" else x
    kwargs = {"axis": None, "keepdims": keepdims}
    return call_with(f"Tensor.{op}", getattr(target, op), (), kwargs, m, state=(target,))


@st.composite
def bad_tensor(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    a = rng.standard_normal(tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))))
    mistakes = [Mistake("data", "an object array", np.asarray(a, dtype=object)),
                Mistake("data", "a string", "1.0"), Mistake("data", "None", None),
                Mistake("data", "a ragged list", [[1.0, 2.0], [3.0]]), Mistake("data", "a dict", {"a": 1.0}),
                Mistake("dtype", "an unknown name", "float33"), Mistake("dtype", "an int", 3),
                Mistake("dtype", "object", object),
                Mistake("requires_grad", "on integer data", True, also={"data": np.round(a).astype(np.int64)},
                        names=("requires_grad", "dtype", "floating")),
                Mistake("requires_grad", "a string", "yes")]
    m = draw_mistake(mistakes, pick)
    return call_with("Tensor", Tensor, (), {"data": a, "requires_grad": False, "dtype": None}, m)


@st.composite
def bad_reshape(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    shape = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 3))))
    x = tensor(rng.standard_normal(shape), requires_grad=True)
    n = x.size
    mistakes = [Mistake("shape", label, value) for label, value in
                [("of another size", (n + 1,)), ("two -1", (-1, -1)), ("a -2", (-2, -n) if n > 1 else (-2,)),
                 ("a bool", (True, n)), ("a float", (float(n),)), ("a string", (str(n),)), ("None", (None,)),
                 ("a nested tuple", ((n,), 1))]]
    m = draw_mistake(mistakes, pick)
    args = m.value if draw(st.booleans()) else (m.value,)   # x.reshape(2, 3) or x.reshape((2, 3))
    call = Call("Tensor.reshape", x.reshape, *args, names=m.names, mistake=f"shape: {m.label}", state=(x,))
    call.kinds = m.kinds
    return call


@st.composite
def bad_transpose(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    ndim = draw(st.integers(0, 3))
    x = tensor(rng.standard_normal(tuple(draw(st.integers(1, 3)) for _ in range(ndim))), requires_grad=True)
    names = ("axis0", "axis1", "axis")
    mistakes = [Mistake(which, label, value, names) for which in ("axis0", "axis1") for label, value in
                [("out of range", ndim + draw(st.integers(0, 2))), ("out of range, negative", -ndim - 1),
                 ("a bool", True), ("a float", 0.0), ("a string", "0"), ("None", None)]]
    mistakes.append(Mistake("axis0", "the default -2 on a tensor with fewer than 2 axes", -2, names))
    m = draw_mistake(mistakes, pick)
    if m.label.startswith("the default"):
        x = tensor(rng.standard_normal(tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 1))))))
    return call_with("Tensor.transpose", x.transpose, (), {"axis0": -2, "axis1": -1}, m, state=(x,))


@st.composite
def bad_permute(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    ndim = draw(st.integers(1, 3))
    x = tensor(rng.standard_normal(tuple(draw(st.integers(1, 3)) for _ in range(ndim))), requires_grad=True)
    perm = list(range(ndim))
    mistakes = [Mistake("axes", label, value) for label, value in
                [("one axis too few", perm[:-1]), ("one axis too many", perm + [ndim]),
                 ("a repeated axis", [0] * max(ndim, 2)), ("out of range", perm[:-1] + [ndim]),
                 ("a bool", [True] + perm[1:]), ("a float", [float(a) for a in perm]),
                 ("a string", [str(a) for a in perm]), ("None", [None] * ndim)]]
    m = draw_mistake(mistakes, pick)
    args = tuple(m.value) if draw(st.booleans()) else (tuple(m.value),)   # x.permute(1, 0) or x.permute((1, 0))
    call = Call("Tensor.permute", x.permute, *args, names=m.names, mistake=f"axes: {m.label}", state=(x,))
    call.kinds = m.kinds
    return call


@st.composite
def bad_linear(draw, pick, name="linear"):
    """F.linear (or F.linear_relu: the same arguments and checks) with mistake number ``pick``."""
    rng = np.random.default_rng(draw(seeds))
    batch = tuple(draw(st.integers(1, 2)) for _ in range(draw(st.integers(0, 2))))
    n_in, n_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    x = tensor(rng.standard_normal(batch + (n_in,)), requires_grad=True)
    w = tensor(rng.standard_normal((n_out, n_in)), requires_grad=True)
    b = tensor(rng.standard_normal(n_out), requires_grad=True)
    mistakes = (wrong_tensors("x", x) + wrong_tensors("weight", w) + wrong_tensors("bias", b, optional=True)
                + [Mistake("x", "its last axis is not in_features", tensor(rng.standard_normal(batch + (n_in + 1,)))),
                   Mistake("x", "0-d", tensor(1.0)),
                   Mistake("weight", "1-D", tensor(rng.standard_normal(n_in))),
                   Mistake("weight", "3-D", tensor(rng.standard_normal((1, n_out, n_in)))),
                   Mistake("bias", "of the wrong length", tensor(rng.standard_normal(n_out + 1))),
                   Mistake("bias", "2-D", tensor(rng.standard_normal((1, n_out))))])
    m = draw_mistake(mistakes, pick)
    return call_with(f"F.{name}", getattr(F, name), (), {"x": x, "weight": w, "bias": b}, m, state=(x, w, b))


@st.composite
def bad_softmax(draw, fn_name, pick):
    fn = getattr(F, fn_name)
    rng = np.random.default_rng(draw(seeds))
    ndim = draw(st.integers(1, 3))
    x = tensor(rng.standard_normal(tuple(draw(st.integers(1, 3)) for _ in range(ndim))), requires_grad=True)
    expected_0d = 1.0 if fn_name == "softmax" else 0.0

    def scalar_answer(result):
        assert_close(result, np.float64(expected_0d), f"{fn_name} of a 0-d tensor")

    mistakes = wrong_tensors("x", x, float_mismatch=False) + [
        Mistake("axis", "a bool", True), Mistake("axis", "a float", 0.0), Mistake("axis", "a string", "0"),
        Mistake("axis", "None", None), Mistake("axis", "a one-element list", [0]), Mistake("axis", "a tuple", (0,)),
        Mistake("axis", "out of range", ndim + draw(st.integers(0, 2))),
        Mistake("axis", "out of range, negative", -ndim - 1),
        Mistake("x", "0-d (PyTorch: 1 for softmax, 0 for log_softmax)", tensor(2.0), names=("x", "axis"),
                accept=scalar_answer)]
    m = draw_mistake(mistakes, pick)
    return call_with(f"F.{fn_name}", fn, (), {"x": x, "axis": -1}, m, state=(x,))


@st.composite
def bad_masked_softmax(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    b, length_q, length_k = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    heads = (draw(st.integers(1, 2)),) if draw(st.booleans()) else ()
    scores = tensor(rng.standard_normal((b,) + heads + (length_q, length_k)), requires_grad=True)
    lens = rng.integers(0, length_k + 1, b)

    def scalar_answer(result):
        assert_close(result, np.float64(1.0), "masked_softmax of a 0-d tensor")

    mistakes = [Mistake("valid_lens", "float dtype", backend.asarray(lens.astype(np.float64))),
                Mistake("valid_lens", "bool dtype", backend.asarray(lens > 0)),
                Mistake("valid_lens", "object dtype", np.asarray(lens, dtype=object)),
                Mistake("valid_lens", "a list of floats", [float(v) for v in lens]),
                Mistake("valid_lens", "a string", "2"),
                Mistake("valid_lens", "a length above the number of keys", backend.asarray(
                    np.full(b, length_k + 1))),
                Mistake("valid_lens", "a negative length", backend.asarray(np.full(b, -1))),
                Mistake("valid_lens", "one row too many", backend.asarray(rng.integers(0, length_k + 1, b + 1))),
                Mistake("valid_lens", "(batch, queries) for another number of queries",
                        backend.asarray(rng.integers(0, length_k + 1, (b, length_q + 1)))),
                Mistake("valid_lens", "3-D", backend.asarray(rng.integers(0, length_k + 1, (b, length_q, 1)))),
                Mistake("valid_lens", "a plain int", 1),
                Mistake("scores", "2-D with valid_lens", tensor(rng.standard_normal((length_q, length_k)))),
                Mistake("scores", "int64 dtype", tensor(np.round(host(scores)), np.int64)),
                Mistake("scores", "a NumPy array", host(scores).copy()),
                Mistake("scores", "0-d, no valid_lens (PyTorch's softmax: 1)", tensor(2.0), accept=scalar_answer,
                        also={"valid_lens": None})]
    m = draw_mistake(mistakes, pick)
    return call_with("F.masked_softmax", F.masked_softmax, (), {"scores": scores, "valid_lens": backend.asarray(lens)},
                     m, state=(scores,))


@st.composite
def bad_sdpa(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    b, heads = draw(st.integers(2, 3)), draw(st.sampled_from([2, 4]))   # b >= 2: a batch of b + 1 cannot broadcast
    length_q, length_k, e, ev = (draw(st.integers(1, 3)) for _ in range(4))
    gqa = heads == 4                                      # 4 query heads over 2 key/value heads, or 2 over 2
    q = tensor(rng.standard_normal((b, heads, length_q, e)), requires_grad=True)
    k = tensor(rng.standard_normal((b, 2, length_k, e)), requires_grad=True)
    v = tensor(rng.standard_normal((b, 2, length_k, ev)), requires_grad=True)
    good_mask = backend.asarray(rng.random((length_q, length_k)) < 0.7)
    kwargs = {"query": q, "key": k, "value": v, "attn_mask": good_mask if draw(st.booleans()) else None,
              "is_causal": False, "scale": None, "dropout_p": 0.0, "enable_gqa": gqa, "window": None}
    no_mask = {"attn_mask": None}
    causal = {"attn_mask": None, "is_causal": True}
    mistakes = (wrong_tensors("query", q) + wrong_tensors("key", k) + wrong_tensors("value", v) + [
        Mistake("key", "another feature size E", tensor(rng.standard_normal(k.shape[:-1] + (e + 1,))),
                names=("query", "key")),
        Mistake("value", "another length S", tensor(rng.standard_normal(v.shape[:-2] + (length_k + 1, ev))),
                names=("key", "value")),
        Mistake("key", "1-D", tensor(rng.standard_normal(e))),
        Mistake("key", "3 key/value heads for 2 or 4 query heads", tensor(rng.standard_normal((b, 3, length_k, e))),
                names=("enable_gqa", "key", "heads"), also={"enable_gqa": True, "value": tensor(
                    rng.standard_normal((b, 3, length_k, ev)))}),
        Mistake("value", "other heads than key's", tensor(rng.standard_normal((b, 1, length_k, ev))),
                names=("enable_gqa", "value", "heads"), also={"enable_gqa": True}),
        Mistake("query", "2-D with enable_gqa (no heads axis)", tensor(rng.standard_normal((length_q, e))),
                names=("query", "enable_gqa", "heads"), also={"enable_gqa": True}),
        Mistake("attn_mask", "of the wrong shape", backend.asarray(np.ones((length_q + 1, length_k), bool))),
        Mistake("attn_mask", "int64 dtype", backend.asarray(np.ones((length_q, length_k), np.int64))),
        Mistake("attn_mask", "float32 for float64 scores", backend.asarray(np.zeros((length_q, length_k),
                                                                                    np.float32))),
        Mistake("attn_mask", "object dtype", np.ones((length_q, length_k), dtype=object)),
        Mistake("attn_mask", "a Tensor that requires grad", tensor(np.zeros((length_q, length_k)),
                                                                   requires_grad=True)),
        Mistake("attn_mask", "a string", "causal"),
        Mistake("is_causal", "together with attn_mask", True, names=("attn_mask", "is_causal"),
                also={"attn_mask": good_mask}),
        Mistake("is_causal", "a string", "yes", also=no_mask),
        Mistake("scale", "a string", "0.5"), Mistake("scale", "a one-element list", [0.5]),
        Mistake("scale", "a 2-tuple", (0.5, 0.5)), Mistake("scale", "a complex number", 0.5j),
        Mistake("scale", "a NumPy array", np.array([0.5])),
        Mistake("enable_gqa", "a string", "yes"),
        Mistake("need_weights", "a string", "yes")]
        + [Mistake("dropout_p", label, value) for label, value in WRONG_PROBABILITIES]
        + [Mistake("window", label, value, also=causal) for label, value in
           [("zero", 0), ("negative", -1), ("a bool", True), ("a float", 2.0), ("a string", "2")]]
        + [Mistake("window", "without is_causal", 2, also=no_mask)])
    mistakes.append(Mistake("attn_mask", "a batch that does not broadcast", backend.asarray(
        np.ones((b + 1, 1, length_q, length_k), bool))))
    mistakes.append(Mistake("key", "a batch that does not broadcast", tensor(rng.standard_normal(
        (b + 1,) + k.shape[1:])), names=("query", "key", "value", "batch")))
    m = draw_mistake(mistakes, pick)
    return call_with("F.scaled_dot_product_attention", F.scaled_dot_product_attention, (), kwargs, m,
                     state=(q, k, v))


@st.composite
def bad_layer_norm(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    shape = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))) + (draw(st.integers(1, 4)),)
    d = shape[-1]
    x = tensor(rng.standard_normal(shape), requires_grad=True)
    w, b = tensor(rng.standard_normal(d), requires_grad=True), tensor(rng.standard_normal(d), requires_grad=True)
    r = tensor(rng.standard_normal(shape), requires_grad=True)
    mistakes = (wrong_tensors("x", x) + wrong_tensors("weight", w, optional=True)
                + wrong_tensors("bias", b, optional=True) + wrong_tensors("residual", r, optional=True)
                + wrong_nonnegatives("eps") + [
                    Mistake("x", "0-d", tensor(1.0)),
                    Mistake("weight", "of the wrong length", tensor(rng.standard_normal(d + 1))),
                    Mistake("bias", "2-D", tensor(rng.standard_normal((1, d)))),
                    Mistake("residual", "of another shape", tensor(rng.standard_normal(shape[:-1] + (d + 1,))))])
    m = draw_mistake(mistakes, pick)
    kwargs = {"x": x, "weight": w, "bias": b, "eps": 1e-5, "residual": r if draw(st.booleans()) else None}
    return call_with("F.layer_norm", F.layer_norm, (), kwargs, m, state=(x, w, b, r))


@st.composite
def bad_cross_entropy(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    extra = (draw(st.integers(1, 3)),) if draw(st.booleans()) else ()
    logits = tensor(rng.standard_normal((n, c) + extra), requires_grad=True)
    target = rng.integers(0, c, (n,) + extra)
    mistakes = wrong_tensors("logits", logits, float_mismatch=False) + [
        Mistake("logits", "1-D", tensor(rng.standard_normal(c)), names=("logits", "target")),
        Mistake("target", "float dtype", backend.asarray(target.astype(np.float64))),
        Mistake("target", "bool dtype", backend.asarray(target > 0)),
        Mistake("target", "one-hot probabilities", backend.asarray(np.eye(c)[target.reshape(-1)])),
        Mistake("target", "an id equal to the number of classes", backend.asarray(np.full_like(target, c))),
        Mistake("target", "a negative id", backend.asarray(np.full_like(target, -1))),
        Mistake("target", "of the wrong shape", backend.asarray(rng.integers(0, c, n + 1)),
                names=("target", "logits")),
        Mistake("target", "None", None), Mistake("target", "a string", "0"),
        Mistake("ignore_index", "a float", -100.0), Mistake("ignore_index", "a string", "-100"),
        Mistake("ignore_index", "None", None), Mistake("ignore_index", "a bool", True),
        Mistake("reduction", "unknown", "avg"), Mistake("reduction", "None", None),
        Mistake("reduction", "an int", 1)] + [
        Mistake("label_smoothing", label, value) for label, value in
        [("negative", -0.1), ("above one", 1.5), ("NaN", float("nan")), ("a string", "0.1"), ("None", None),
         ("a one-element list", [0.1])]]
    m = draw_mistake(mistakes, pick)
    kwargs = {"logits": logits, "target": backend.asarray(target), "ignore_index": -100, "label_smoothing": 0.0,
              "reduction": "mean"}
    return call_with("F.cross_entropy", F.cross_entropy, (), kwargs, m, state=(logits,))


@st.composite
def bad_embedding(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    vocab, d = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    ids = rng.integers(0, vocab, tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 2)))))
    w = tensor(rng.standard_normal((vocab, d)), requires_grad=True)
    mistakes = [Mistake("ids", "float dtype", tensor(ids, np.float64)),
                Mistake("ids", "bool dtype", tensor(ids > 0, bool)),
                Mistake("ids", "object dtype", np.asarray(ids, dtype=object)),
                Mistake("ids", "an id equal to the vocabulary size", tensor(np.full_like(ids, vocab), np.int64)),
                Mistake("ids", "a negative id", tensor(np.full_like(ids, -1), np.int64)),
                Mistake("ids", "None", None), Mistake("ids", "a string", "0"),
                Mistake("weight", "1-D", tensor(rng.standard_normal(vocab))),
                Mistake("weight", "int64 dtype", tensor(np.ones((vocab, d)), np.int64)),
                Mistake("weight", "a NumPy array", rng.standard_normal((vocab, d))),
                Mistake("weight", "None", None)]
    m = draw_mistake(mistakes, pick)
    return call_with("F.embedding", F.embedding, (), {"ids": tensor(ids, np.int64), "weight": w}, m, state=(w,))


@st.composite
def bad_dropout(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    x = tensor(rng.standard_normal(tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(1, 2))))),
               requires_grad=True)
    mistakes = [Mistake("p", label, value, names=("p", "dropout")) for label, value in WRONG_PROBABILITIES] + [
        Mistake("x", "a NumPy array", host(x).copy()), Mistake("x", "a nested list", host(x).tolist()),
        Mistake("x", "None", None), Mistake("x", "int64 dtype", tensor(np.round(host(x)), np.int64)),
        Mistake("training", "a string", "yes")]
    m = draw_mistake(mistakes, pick)
    kwargs = {"x": x, "p": draw(st.sampled_from([0.0, 0.5])), "training": True}
    return call_with("F.dropout", F.dropout, (), kwargs, m, state=(x,))


WRONG_DTYPES = [("an integer dtype", "int64"), ("bool", "bool"), ("an unknown name", "float33"), ("an int", 3),
                ("complex", "complex128")]


@st.composite
def bad_linear_module(draw, pick):
    mistakes = (wrong_ints("in_features", also=[zero_size("in_features")])
                + wrong_ints("out_features", also=[zero_size("out_features")])
                + [Mistake("dtype", label, value) for label, value in WRONG_DTYPES])
    m = draw_mistake(mistakes, pick)
    kwargs = {"in_features": draw(st.integers(1, 3)), "out_features": draw(st.integers(1, 3)), "dtype": "float64"}
    return call_with("Linear", Linear, (), kwargs, m)


@st.composite
def bad_embedding_module(draw, pick):
    mistakes = (wrong_ints("num_embeddings", also=[zero_size("num_embeddings")])
                + wrong_ints("embedding_dim", also=[zero_size("embedding_dim")])
                + [Mistake("dtype", label, value) for label, value in WRONG_DTYPES])
    m = draw_mistake(mistakes, pick)
    kwargs = {"num_embeddings": draw(st.integers(1, 4)), "embedding_dim": draw(st.integers(1, 3)), "dtype": "float64"}
    return call_with("Embedding", Embedding, (), kwargs, m)


@st.composite
def bad_layer_norm_module(draw, pick):
    mistakes = (wrong_ints("normalized_shape", also=[zero_size("normalized_shape")])
                + wrong_nonnegatives("eps") + [Mistake("dtype", label, value) for label, value in WRONG_DTYPES])
    m = draw_mistake([mk for mk in mistakes if mk.label != "a one-element list"], pick)  # PyTorch takes [D]
    return call_with("LayerNorm", LayerNorm, (), {"normalized_shape": draw(st.integers(1, 4)), "eps": 1e-5,
                                                  "dtype": "float64"}, m)


def bad_dropout_module(pick):
    m = draw_mistake([Mistake("p", label, value, names=("p", "dropout")) for label, value in WRONG_PROBABILITIES],
                     pick)
    return st.just(call_with("Dropout", Dropout, (), {"p": 0.5}, m))   # nothing else to draw: one case


@st.composite
def bad_module_forward(draw, kind, pick):
    """A mistake in the input of Linear / LayerNorm / Embedding mid-training."""
    rng = np.random.default_rng(draw(seeds))
    manual_seed(draw(st.integers(0, 99)))
    batch = tuple(draw(st.integers(1, 2)) for _ in range(draw(st.integers(1, 2))))
    if kind == "Embedding":
        vocab = draw(st.integers(1, 4))
        layer = Embedding(vocab, 3, dtype="float64")
        good = rng.integers(0, vocab, batch)
        with_state(layer, lambda m: m(tensor(good, np.int64)).sum())
        mistakes = [Mistake("ids", "float dtype", tensor(good, np.float64)),
                    Mistake("ids", "an id equal to the vocabulary size", tensor(np.full(batch, vocab), np.int64)),
                    Mistake("ids", "a negative id", tensor(np.full(batch, -1), np.int64)),
                    Mistake("ids", "None", None), Mistake("ids", "bool dtype", tensor(good > 0, bool))]
        m = draw_mistake(mistakes, pick)
        return call_positional("Embedding.forward", layer, m, state=(layer,))
    width = draw(st.integers(1, 3))
    layer = Linear(width, 2, dtype="float64") if kind == "Linear" else LayerNorm(width, dtype="float64")
    x = tensor(rng.standard_normal(batch + (width,)))
    with_state(layer, lambda m: m(x).sum())
    wider = tensor(rng.standard_normal(batch + (width + 1,)))
    mistakes = wrong_tensors("x", x) + [Mistake("x", "another width", wider), Mistake("x", "0-d", tensor(1.0))]
    m = draw_mistake(mistakes, pick)
    return call_positional(f"{kind}.forward", layer, m, state=(layer,))


def bad_mha_constructor(pick):
    mistakes = (wrong_ints("embed_dim", names=("embed_dim",), negative=(-4,))
                + wrong_ints("num_heads", names=("num_heads",), also=[Mistake("num_heads", "zero", 0),
                                                                      Mistake("num_heads", "not dividing embed_dim", 3,
                                                                              names=("num_heads", "embed_dim"))])
                + [Mistake("dropout", label, value) for label, value in WRONG_PROBABILITIES]
                + [Mistake("num_kv_heads", label, value) for label, value in
                   [("zero", 0), ("not dividing num_heads", 3), ("a bool", True), ("a float", 2.0), ("a string", "2"),
                    ("negative", -2)]]
                + [Mistake(arg, label, value) for arg in ("kdim", "vdim") for label, value in
                   [("zero", 0), ("negative", -1), ("a float", 2.0), ("a string", "4"), ("a bool", True)]]
                + [Mistake("attn_impl", "unknown", "fast"), Mistake("attn_impl", "None", None),
                   Mistake("block_size", "zero", 0), Mistake("block_size", "a bool", True),
                   Mistake("block_size", "a float", 2.0),
                   Mistake("window", "zero", 0), Mistake("window", "a bool", True), Mistake("window", "a float", 2.0),
                   Mistake("window", "a string", "2"),
                   Mistake("rope_base", "zero", 0.0), Mistake("rope_base", "negative", -1.0),
                   Mistake("rope_base", "NaN", float("nan")), Mistake("rope_base", "a string", "10000"),
                   Mistake("share_qk", "with kdim != embed_dim", True, names=("share_qk", "kdim"), also={"kdim": 3}),
                   Mistake("share_qk", "with num_kv_heads != num_heads", True, names=("share_qk", "num_kv_heads"),
                           also={"num_kv_heads": 1}),
                   Mistake("rope", "with an odd head dimension", True, names=("rope", "head"),
                           also={"embed_dim": 6}),
                   Mistake("attn_impl", "flash with dropout", "flash", names=("attn_impl", "dropout"),
                           also={"dropout": 0.1})]
                + [Mistake("dtype", label, value) for label, value in WRONG_DTYPES])
    m = draw_mistake(mistakes, pick)
    kwargs = {"embed_dim": 4, "num_heads": 2, "dtype": "float64", "rope": m.arg == "rope_base"}
    return st.just(call_with("MultiHeadAttention", MultiHeadAttention, (), kwargs, m))   # nothing else to draw


def mha_mid_training(draw, rng, **options):
    """A float64 MultiHeadAttention(4, 2, dropout=0.3) in training mode with .grad and attention_weights in place."""
    manual_seed(draw(st.integers(0, 99)))
    layer = MultiHeadAttention(4, 2, dropout=0.3, dtype="float64", **options)
    x = tensor(rng.standard_normal((2, 3, 4)))
    with_state(layer, lambda m: m(x, x, x, is_causal=True).sum())
    return layer, x


@st.composite
def bad_mha_forward(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    layer, x = mha_mid_training(draw, rng)
    b, length = x.shape[:2]
    mistakes = (wrong_tensors("query", x) + wrong_tensors("key", x) + wrong_tensors("value", x) + [
        Mistake("query", "2-D (no batch axis)", tensor(rng.standard_normal((length, 4)))),
        Mistake("query", "another width", tensor(rng.standard_normal((b, length, 5)))),
        Mistake("key", "another batch size", tensor(rng.standard_normal((b + 1, length, 4))),
                names=("key", "query", "batch")),
        Mistake("value", "another length", tensor(rng.standard_normal((b, length + 1, 4))), names=("key", "value")),
        Mistake("valid_lens", "float dtype", backend.asarray(np.array([1.0] * b))),
        Mistake("valid_lens", "a length above the number of keys", backend.asarray(np.full(b, length + 1))),
        Mistake("valid_lens", "a negative length", backend.asarray(np.full(b, -1))),
        Mistake("valid_lens", "one row too many", backend.asarray(np.ones(b + 1, np.int64))),
        Mistake("valid_lens", "(batch, queries) for another number of queries", backend.asarray(
            np.ones((b, length + 1), np.int64))),
        Mistake("valid_lens", "a plain int", 2), Mistake("valid_lens", "a string", "2"),
        Mistake("attn_mask", "of the wrong shape", backend.asarray(np.ones((length, length + 1), bool))),
        Mistake("attn_mask", "int64 dtype", backend.asarray(np.ones((length, length), np.int64))),
        Mistake("attn_mask", "float32 for float64 scores", backend.asarray(np.zeros((length, length), np.float32))),
        Mistake("attn_mask", "3-D, PyTorch's (B*h, L, S)", backend.asarray(np.ones((b * 2, length, length), bool))),
        Mistake("attn_mask", "a Tensor that requires grad", tensor(np.zeros((length, length)), requires_grad=True)),
        Mistake("is_causal", "a string", "yes"),
        Mistake("is_causal", "together with attn_mask", True, names=("attn_mask", "is_causal"),
                also={"attn_mask": backend.asarray(np.ones((length, length), bool))})])
    m = draw_mistake(mistakes, pick)
    kwargs = {"query": x, "key": x, "value": x}
    return call_with("MultiHeadAttention.forward", layer, (), kwargs, m, state=(layer,))


TRANSFORMER = dict(src_vocab_size=6, tgt_vocab_size=5, embed_dim=4, num_heads=2, ffn_hidden=4, num_encoder_layers=1,
                   num_decoder_layers=1, dropout=0.2, max_len=5, dtype="float64")


def bad_transformer_constructor(pick):
    mistakes = (wrong_ints("src_vocab_size", also=[zero_size("src_vocab_size")])
                + wrong_ints("tgt_vocab_size", also=[zero_size("tgt_vocab_size")])
                + wrong_ints("embed_dim", negative=(-4,))
                + wrong_ints("num_heads", also=[Mistake("num_heads", "zero", 0),
                                                Mistake("num_heads", "not dividing embed_dim", 3,
                                                        names=("num_heads", "embed_dim"))])
                + wrong_ints("ffn_hidden", also=[zero_size("ffn_hidden")])
                + wrong_ints("num_encoder_layers", also=[zero_size("num_encoder_layers")])
                + wrong_ints("num_decoder_layers", also=[zero_size("num_decoder_layers")])
                + wrong_ints("max_len", also=[zero_size("max_len")])
                + [Mistake("dropout", label, value) for label, value in WRONG_PROBABILITIES]
                + [Mistake("attention", "unknown", "linear"), Mistake("attention", "None", None)]
                + [Mistake("dtype", label, value) for label, value in WRONG_DTYPES])
    m = draw_mistake(mistakes, pick)
    return st.just(call_with("Transformer", Transformer, (), TRANSFORMER, m))   # nothing else to draw


def transformer_mid_training(draw, rng):
    manual_seed(draw(st.integers(0, 99)))
    net = Transformer(**TRANSFORMER)
    src, tgt = rng.integers(0, 6, (2, 3)), rng.integers(0, 5, (2, 3))
    with_state(net, lambda m: m(tensor(src, np.int64), tensor(tgt, np.int64),
                                backend.asarray(np.array([3, 2]))).sum())
    return net, src, tgt


def wrong_ids(arg, vocab, good, names=None):
    """Mistakes for a tensor of token ids ``good`` (host ints) over a vocabulary of ``vocab``."""
    shape = good.shape
    return [Mistake(arg, "float dtype", tensor(good, np.float64), names),
            Mistake(arg, "bool dtype", tensor(good > 0, bool), names),
            Mistake(arg, "an id equal to the vocabulary size", tensor(np.full(shape, vocab), np.int64), names),
            Mistake(arg, "a negative id", tensor(np.full(shape, -1), np.int64), names),
            Mistake(arg, "1-D (no batch axis)", tensor(good[0], np.int64), names),
            Mistake(arg, "3-D", tensor(good[..., None], np.int64), names),
            Mistake(arg, "None", None, names)]


def wrong_valid_lens(arg, batch, length):
    return [Mistake(arg, "float dtype", backend.asarray(np.full(batch, 1.0))),
            Mistake(arg, "bool dtype", backend.asarray(np.ones(batch, bool))),
            Mistake(arg, "a length above the source length", backend.asarray(np.full(batch, length + 1))),
            Mistake(arg, "a negative length", backend.asarray(np.full(batch, -1))),
            Mistake(arg, "one row too many", backend.asarray(np.ones(batch + 1, np.int64))),
            Mistake(arg, "2-D of the wrong width", backend.asarray(np.ones((batch, length + 2), np.int64))),
            Mistake(arg, "a plain int", 2), Mistake(arg, "a string", "2")]


@st.composite
def bad_transformer_forward(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    net, src, tgt = transformer_mid_training(draw, rng)
    too_long = rng.integers(0, 5, (2, 6))
    mistakes = (wrong_ids("src", 6, src) + wrong_ids("tgt_in", 5, tgt)
                + wrong_valid_lens("src_valid_lens", 2, src.shape[1])
                + [Mistake("src", "longer than max_len", tensor(too_long, np.int64), names=("src", "max_len")),
                   Mistake("tgt_in", "longer than max_len", tensor(too_long, np.int64), names=("tgt_in", "max_len"))])
    m = draw_mistake(mistakes, pick)
    kwargs = {"src": tensor(src, np.int64), "tgt_in": tensor(tgt, np.int64),
              "src_valid_lens": backend.asarray(np.array([3, 1]))}
    return call_with("Transformer.forward", net, (), kwargs, m, state=(net,))


@st.composite
def bad_greedy_decode(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    net, src, _ = transformer_mid_training(draw, rng)
    mistakes = (wrong_ids("src", 6, src) + wrong_valid_lens("src_valid_lens", 2, src.shape[1])
                + [Mistake(arg, label, value) for arg in ("bos_id", "eos_id", "pad_id")
                   for label, value in WRONG_INT_TYPES + [("negative", -1), ("equal to the vocabulary size", 5)]]
                + wrong_ints("max_len", also=[Mistake("max_len", "zero", 0),
                                              Mistake("max_len", "beyond the positional table", 6)])
                + [Mistake("use_cache", "a string", "yes")])
    m = draw_mistake(mistakes, pick)
    kwargs = {"src": tensor(src, np.int64), "src_valid_lens": backend.asarray(np.array([3, 1])), "bos_id": 1,
              "eos_id": 2, "max_len": 4, "pad_id": 0}
    return call_with("Transformer.greedy_decode", net.greedy_decode, (), kwargs, m, state=(net,))


GPT_CONFIG = dict(vocab_size=5, max_len=5, embed_dim=4, num_heads=2, num_layers=1, dropout=0.2, dtype="float64")


def bad_gpt_constructor(pick):
    mistakes = (wrong_ints("vocab_size", also=[zero_size("vocab_size")])
                + wrong_ints("max_len", also=[zero_size("max_len")])
                + wrong_ints("embed_dim", negative=(-4,))
                + wrong_ints("num_heads", also=[Mistake("num_heads", "zero", 0),
                                                Mistake("num_heads", "not dividing embed_dim", 3,
                                                        names=("num_heads", "embed_dim"))])
                + wrong_ints("num_layers", also=[zero_size("num_layers")])
                + [Mistake("ffn_hidden", label, value) for label, value in
                   [("zero", 0), ("negative", -1), ("a float", 2.0), ("a string", "8"), ("a bool", True)]]
                + [Mistake("dropout", label, value) for label, value in WRONG_PROBABILITIES]
                + [Mistake("positions", "unknown", "absolute"), Mistake("positions", "None", None),
                   Mistake("init", "unknown", "xavier"),
                   Mistake("num_kv_heads", "not dividing num_heads", 3), Mistake("num_kv_heads", "zero", 0),
                   Mistake("window", "zero", 0), Mistake("window", "a float", 2.0)]
                + [Mistake("dtype", label, value) for label, value in WRONG_DTYPES])
    m = draw_mistake(mistakes, pick)
    return st.just(call_with("GPT", GPT, (), GPT_CONFIG, m))   # nothing else to draw


def gpt_mid_training(draw, rng, positions=("learned", "sinusoidal", "rope", "alibi")):
    manual_seed(draw(st.integers(0, 99)))
    positions = draw(st.sampled_from(positions))
    net = GPT(**GPT_CONFIG, positions=positions)
    ids = rng.integers(0, 5, (2, 3))
    with_state(net, lambda m: m(tensor(ids, np.int64)).sum())
    return net, ids


@st.composite
def bad_gpt_forward(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    net, ids = gpt_mid_training(draw, rng, positions=("learned", "sinusoidal"))   # a table of max_len positions
    mistakes = wrong_ids("ids", 5, ids) + [Mistake("ids", "longer than max_len", tensor(
        rng.integers(0, 5, (2, 6)), np.int64), names=("ids", "max_len"))]
    m = draw_mistake(mistakes, pick)
    return call_positional("GPT.forward", net, m, state=(net,))


@st.composite
def bad_generate(draw, pick):
    rng = np.random.default_rng(draw(seeds))
    net, ids = gpt_mid_training(draw, rng)
    mistakes = (wrong_ids("idx", 5, ids) + [Mistake("idx", "no tokens: (B, 0)", tensor(np.zeros((2, 0)), np.int64))]
                + wrong_ints("max_new_tokens")
                + [Mistake("temperature", label, value) for label, value in
                   [("negative", -1.0), ("NaN", float("nan")), ("infinite", float("inf")), ("a string", "1"),
                    ("None", None), ("a bool", True)]]
                + [Mistake("top_k", label, value) for label, value in
                   [("zero", 0), ("negative", -1), ("a float", 2.0), ("a string", "2"), ("a bool", True)]]
                + [Mistake("top_p", label, value) for label, value in
                   [("zero", 0.0), ("above one", 1.5), ("NaN", float("nan")), ("a string", "0.9"), ("a bool", True)]]
                + [Mistake("seed", label, value) for label, value in
                   [("a string", "0"), ("a float", 1.5), ("negative", -1), ("a list of strings", ["a"])]])
    m = draw_mistake(mistakes, pick)
    kwargs = {"idx": tensor(ids, np.int64), "max_new_tokens": 2, "temperature": 1.0, "top_k": None, "top_p": None,
              "seed": 0}
    return call_with("GPT.generate", net.generate, (), kwargs, m, state=(net,))


class TwoLayers(Module):
    """A small model for the optimizer tests: two float Linear layers and an unused one (its grads stay None)."""

    def __init__(self, dtype="float64"):
        super().__init__()
        self.blocks = ModuleList([Linear(3, 4, dtype=dtype), Linear(4, 2, dtype=dtype)])
        self.unused = Linear(2, 2, dtype=dtype)

    def forward(self, x):
        return self.blocks[1](self.blocks[0](x).relu())


def model_with_grads(draw, dtype="float64"):
    manual_seed(draw(st.integers(0, 99)))
    model = TwoLayers(dtype)
    rng = np.random.default_rng(draw(seeds))
    with_state(model, lambda m: m(tensor(rng.standard_normal((5, 3)), dtype)).sum())
    return model


@st.composite
def bad_optimizer(draw, kind, pick):
    model = model_with_grads(draw)
    params = list(model.parameters())
    spare = tensor(np.ones(3), requires_grad=True)
    mistakes = (wrong_nonnegatives("lr", names=("lr", "learning rate"))
                + [Mistake("params", label, value) for label, value in
                   [("a single Tensor", params[0]), ("empty", []), ("a parameter twice", params + params[:1]),
                    ("an int", 3), ("None", None), ("a list holding a NumPy array", [np.ones(3)]),
                    ("a list holding None", [spare, None])]]
                + wrong_nonnegatives("weight_decay"))
    if kind == "SGD":
        mistakes += wrong_nonnegatives("momentum") + [
            Mistake("nesterov", "without momentum", True, names=("nesterov", "momentum"))]
        kwargs = {"params": params, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}
    else:
        mistakes += wrong_nonnegatives("eps") + [Mistake("betas", label, value) for label, value in
                                                 [("beta1 = 1", (1.0, 0.999)), ("beta2 negative", (0.9, -0.1)),
                                                  ("beta1 NaN", (float("nan"), 0.999)), ("one number", (0.9,)),
                                                  ("three numbers", (0.9, 0.99, 0.9)), ("a float", 0.9),
                                                  ("None", None), ("strings", ("0.9", "0.999")),
                                                  ("beta2 above one", (0.9, 1.5))]]
        kwargs = {"params": params, "lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    m = draw_mistake(mistakes, pick)
    return call_with(kind, SGD if kind == "SGD" else Adam, (), kwargs, m, state=(model,))


@st.composite
def bad_schedule(draw, kind, pick):
    model = model_with_grads(draw)
    optimizer = Adam(model.parameters(), lr=0.5)
    if kind == "WarmupSchedule":
        mistakes = (wrong_ints("embed_dim", also=[Mistake("embed_dim", "zero", 0)])
                    + [Mistake("warmup_steps", label, value) for label, value in
                       [("zero", 0), ("negative", -1), ("NaN", float("nan")), ("a string", "4000"), ("None", None),
                        ("a fractional float", 2.5), ("a bool", True)]]
                    + [Mistake("factor", label, value) for label, value in
                       [("negative", -1.0), ("NaN", float("nan")), ("a string", "1"), ("None", None)]]
                    + [Mistake("optimizer", "None", None), Mistake("optimizer", "a model", model)])
        kwargs = {"optimizer": optimizer, "embed_dim": 8, "warmup_steps": 4, "factor": 1.0}
        fn = WarmupSchedule
    else:
        mistakes = ([Mistake(arg, label, value) for arg in ("warmup_steps", "decay_steps") for label, value in
                     [("negative", -1), ("a float", 2.0), ("a bool", True), ("a string", "3"), ("None", None)]]
                    + [Mistake("decay_steps", "not above warmup_steps", 2, names=("decay_steps", "warmup_steps"))]
                    + [Mistake(arg, label, value) for arg in ("max_lr", "min_lr") for label, value in
                       [("negative", -0.1), ("NaN", float("nan")), ("infinite", float("inf")), ("a string", "0.1"),
                        ("None", None), ("a bool", True)]]
                    + [Mistake("min_lr", "above max_lr", 2.0, names=("min_lr", "max_lr")),
                       Mistake("optimizer", "None", None)])
        kwargs = {"optimizer": optimizer, "max_lr": 1.0, "warmup_steps": 2, "decay_steps": 5, "min_lr": 0.1}
        fn = CosineSchedule
    m = draw_mistake(mistakes, pick)
    return call_with(kind, fn, (), kwargs, m, state=(model, optimizer))


@st.composite
def bad_clip(draw, pick):
    model = model_with_grads(draw)
    mistakes = wrong_nonnegatives("max_norm") + [
        Mistake("parameters", "an int", 3), Mistake("parameters", "None", None),
        Mistake("parameters", "a list holding a NumPy array", [np.ones(3)]),
        Mistake("parameters", "a single Tensor (PyTorch clips it)", next(model.parameters()),
                accept=lambda result: None)]
    m = draw_mistake(mistakes, pick)
    if m.label.startswith("a single Tensor"):
        p = m.value
        g, norm = host(p.grad).copy(), float(np.linalg.norm(host(p.grad)))

        def clipped_like_pytorch(result):
            assert_close(np.float64(float(result)), np.float64(norm), "clip_grad_norm_(single Tensor) norm")
            assert_close(p.grad, g * min(1.0, 0.5 / (norm + 1e-6)), "clip_grad_norm_(single Tensor) gradient")
        m.accept = clipped_like_pytorch
    kwargs = {"parameters": list(model.parameters()), "max_norm": 0.5}
    return call_with("clip_grad_norm_", clip_grad_norm_, (), kwargs, m, state=(model,))


def make_optimizer(model, kind):
    if kind == "SGD":
        return SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    return Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.001)


def train_step(model, optimizer, rng):
    dtype = model.blocks[0].weight.dtype
    optimizer.zero_grad()
    model(tensor(rng.standard_normal((5, 3)), dtype)).sum().backward()
    optimizer.step()


def fresh_file(folder, stem):
    return folder / f"{stem}-{os.urandom(6).hex()}.npz"


def read_members(path):
    with np.load(path, allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


def write_members(path, members):
    with open(path, "wb") as f:
        np.savez(f, **members)


_NOT_ANYTHING = [("a string", "abc"), ("None", None), ("a list", [1]), ("an object", {"a": 1})]
_NOT_A_NUMBER = _NOT_ANYTHING + [("negative", -1), ("NaN", float("nan")), ("a bool", True)]
BAD_JSON_VALUES = {
    "type": [("another optimizer's", "RMSprop"), ("None", None), ("a number", 3)],
    "lr": _NOT_A_NUMBER, "momentum": _NOT_A_NUMBER, "weight_decay": _NOT_A_NUMBER, "eps": _NOT_A_NUMBER,
    "step_count": _NOT_A_NUMBER + [("a fraction", 0.5)],
    "nesterov": _NOT_ANYTHING + [("an int", 1), ("NaN", float("nan"))],
    "betas": _NOT_ANYTHING + [("one number", [0.9]), ("beta1 = 1", [1.0, 0.9]), ("beta1 NaN", [float("nan"), 0.9]),
                              ("a number", 0.5)],
    "param_names": _NOT_ANYTHING + [("empty", [])],
    "buffers": _NOT_ANYTHING + [("a flag list that is too short", {"m": [True], "v": [True], "velocity": [True]})],
}
"""Values that an optimizer-state JSON field must not hold (by field)."""


@st.composite
def bad_load(draw, folder, pick):
    """checkpoint.load of a damaged file (or with wrong arguments) into a model and optimizer mid-training."""
    rng = np.random.default_rng(draw(seeds))
    kind, dtype = draw(st.sampled_from(["SGD", "Adam"])), draw(st.sampled_from(["float32", "float64"]))
    manual_seed(draw(st.integers(0, 99)))
    model = TwoLayers(dtype)
    optimizer = make_optimizer(model, kind)
    train_step(model, optimizer, rng)
    good = fresh_file(folder, "good")
    checkpoint.save(good, model, optimizer, step=1)
    manual_seed(draw(st.integers(100, 199)))
    target = TwoLayers(dtype)
    target_optimizer = make_optimizer(target, kind)
    train_step(target, target_optimizer, rng)
    with_state(target, lambda m: m(tensor(rng.standard_normal((2, 3)), dtype)).sum())

    members = read_members(good)
    meta = json.loads(str(members["optimizer/state"]))
    model_names = sorted(k for k in members if k.startswith("model/"))
    buffer_names = sorted(k for k in members if k.startswith("optimizer/") and k != "optimizer/state")
    mistakes = [Mistake("file", f"{what}: {change}", (what, change), names=()) for what, changes in
                [("model member", ["other dtype", "other shape", "a string", "0-d", "bool", "removed",
                                   "an unexpected extra member"]),
                 ("optimizer state", ["a bad value", "removed", "the whole entry a list", "the whole entry a number"]),
                 ("optimizer buffer", ["other dtype", "other shape", "a string", "removed"]),
                 ("marker", ["not JSON", "another version", "a number array", "removed"]),
                 ("extra", ["not JSON", "a JSON list", "a number array", "removed"])] for change in changes]
    mistakes += [Mistake("path", "None", None), Mistake("path", "an int", 3),
                 Mistake("model", "None", None), Mistake("model", "an optimizer", target_optimizer),
                 Mistake("optimizer", "a model", target), Mistake("optimizer", "a string", "adam")]
    m = draw_mistake(mistakes, pick)
    if m.arg != "file":
        kwargs = {"path": good, "model": target, "optimizer": target_optimizer}
        return call_with("checkpoint.load", checkpoint.load, (), kwargs, m, state=(target, target_optimizer, good))
    what, change = m.value
    path = fresh_file(folder, "damaged")
    if what in ("model member", "optimizer buffer"):
        name = draw(st.sampled_from(model_names if what == "model member" else buffer_names))
        a = members[name]
        if change == "other dtype":
            members[name] = a.astype(np.float16)
        elif change == "other shape":
            members[name] = np.zeros(a.shape + (1,), a.dtype)
        elif change == "a string":
            members[name] = np.array("not an array")
        elif change == "0-d":
            members[name] = np.array(1.0, a.dtype)
        elif change == "bool":
            members[name] = a > 0
        elif change == "removed":
            del members[name]
        else:
            members["model/blocks.2.weight"] = a
    elif what == "optimizer state":
        key = draw(st.sampled_from(sorted(meta)))
        name = f"optimizer/state[{key!r}]"
        if change == "removed":
            del meta[key]
        elif change == "the whole entry a list":
            meta = [meta]
        elif change == "the whole entry a number":
            meta = 3
        else:
            bad = dict(BAD_JSON_VALUES.get(key, _NOT_ANYTHING))
            label = draw(st.sampled_from(sorted(bad)))
            change = f"{label}: {bad[label]!r}"
            meta[key] = bad[label]
        members["optimizer/state"] = np.array(json.dumps(meta))
    else:
        name = "__minattn__" if what == "marker" else "extra"
        members[name] = {"not JSON": np.array("{"), "a JSON list": np.array("[1, 2]"), "a number array": np.ones(3),
                         "another version": np.array(json.dumps({"format": "minattn-checkpoint", "version": 2})),
                         "removed": None}[change]
        if members[name] is None:
            del members[name]
    write_members(path, members)
    call = Call("checkpoint.load", checkpoint.load, path, target, target_optimizer, names=(str(path),),
                mistake=f"the file's {name}: {change}", state=(target, target_optimizer, path))
    call.kinds = m.kinds
    return call


class NotJSON:
    def __repr__(self):
        return "NotJSON()"


@st.composite
def bad_save(draw, folder, pick):
    """checkpoint.save with an argument it cannot write: the file already there stays byte for byte."""
    rng = np.random.default_rng(draw(seeds))
    manual_seed(draw(st.integers(0, 99)))
    model = TwoLayers()
    optimizer = make_optimizer(model, draw(st.sampled_from(["SGD", "Adam"])))
    train_step(model, optimizer, rng)
    path = fresh_file(folder, "existing")
    checkpoint.save(path, model, optimizer, step=1)
    stranger = Adam([tensor(np.ones(3), requires_grad=True)])
    mistakes = [Mistake("path", "None", None), Mistake("path", "an int", 3),
                Mistake("model", "None", None), Mistake("model", "an optimizer", optimizer),
                Mistake("optimizer", "a model", model), Mistake("optimizer", "a string", "adam"),
                Mistake("optimizer", "over parameters of another model", stranger)]
    mistakes += [Mistake("weights", label, value) for label, value in
                 [("an array (extra metadata must be JSON)", np.ones(3)), ("a set", {1, 2}), ("bytes", b"x"),
                  ("an object", NotJSON()), ("a Tensor", tensor(np.ones(2)))]]
    m = draw_mistake(mistakes, pick)
    kwargs = {"path": path, "model": model, "optimizer": optimizer}
    return call_with("checkpoint.save", checkpoint.save, (), kwargs, m, state=(model, optimizer, path))


INVALID = {
    "Tensor": (lambda folder, pick: bad_tensor(pick), 10),
    "Tensor.sum": (lambda folder, pick: bad_reduction("sum", pick), 11),
    "Tensor.mean": (lambda folder, pick: bad_reduction("mean", pick), 11),
    "Tensor.max": (lambda folder, pick: bad_reduction("max", pick), 12),
    "Tensor.reshape": (lambda folder, pick: bad_reshape(pick), 8),
    "Tensor.transpose": (lambda folder, pick: bad_transpose(pick), 13),
    "Tensor.permute": (lambda folder, pick: bad_permute(pick), 8),
    "F.linear": (lambda folder, pick: bad_linear(pick), 29),
    "F.linear_relu": (lambda folder, pick: bad_linear(pick, "linear_relu"), 29),
    "F.softmax": (lambda folder, pick: bad_softmax("softmax", pick), 15),
    "F.log_softmax": (lambda folder, pick: bad_softmax("log_softmax", pick), 15),
    "F.masked_softmax": (lambda folder, pick: bad_masked_softmax(pick), 15),
    "F.scaled_dot_product_attention": (lambda folder, pick: bad_sdpa(pick), 60),
    "F.layer_norm": (lambda folder, pick: bad_layer_norm(pick), 39),
    "F.cross_entropy": (lambda folder, pick: bad_cross_entropy(pick), 28),
    "F.embedding": (lambda folder, pick: bad_embedding(pick), 11),
    "F.dropout": (lambda folder, pick: bad_dropout(pick), 12),
    "Linear": (lambda folder, pick: bad_linear_module(pick), 27),
    "Embedding": (lambda folder, pick: bad_embedding_module(pick), 27),
    "LayerNorm": (lambda folder, pick: bad_layer_norm_module(pick), 20),
    "Dropout": (lambda folder, pick: bad_dropout_module(pick), 7),
    "Linear.forward": (lambda folder, pick: bad_module_forward("Linear", pick), 10),
    "LayerNorm.forward": (lambda folder, pick: bad_module_forward("LayerNorm", pick), 10),
    "Embedding.forward": (lambda folder, pick: bad_module_forward("Embedding", pick), 5),
    "MultiHeadAttention": (lambda folder, pick: bad_mha_constructor(pick), 66),
    "MultiHeadAttention.forward": (lambda folder, pick: bad_mha_forward(pick), 42),
    "Transformer": (lambda folder, pick: bad_transformer_constructor(pick), 101),
    "Transformer.forward": (lambda folder, pick: bad_transformer_forward(pick), 24),
    "Transformer.greedy_decode": (lambda folder, pick: bad_greedy_decode(pick), 58),
    "GPT": (lambda folder, pick: bad_gpt_constructor(pick), 78),
    "GPT.forward": (lambda folder, pick: bad_gpt_forward(pick), 8),
    "GPT.generate": (lambda folder, pick: bad_generate(pick), 38),
    "SGD": (lambda folder, pick: bad_optimizer("SGD", pick), 26),
    "Adam": (lambda folder, pick: bad_optimizer("Adam", pick), 34),
    "WarmupSchedule": (lambda folder, pick: bad_schedule("WarmupSchedule", pick), 24),
    "CosineSchedule": (lambda folder, pick: bad_schedule("CosineSchedule", pick), 25),
    "clip_grad_norm_": (lambda folder, pick: bad_clip(pick), 10),
    "checkpoint.load": (lambda folder, pick: bad_load(folder, pick), 29),
    "checkpoint.save": (lambda folder, pick: bad_save(folder, pick), 12),
}
"""Every public entry point fuzzed with invalid arguments: its name → ((scratch folder, pick) → a strategy of Calls
with mistake number ``pick``, the number of kinds of mistake its builder knows). Adding a kind of mistake to a
builder fails test_invalid_call_... with the new number to write here."""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for the checkpoint files of this module (module-scoped: hypothesis runs many cases per test)."""
    return tmp_path_factory.mktemp("fuzz")


INVALID_CASES = [(entry, pick) for entry, (_, kinds) in INVALID.items() for pick in range(kinds)]


@pytest.mark.parametrize("entry,pick", INVALID_CASES, ids=[f"{entry}-{pick}" for entry, pick in INVALID_CASES])
@fuzz(8)
@given(data=st.data())
def test_invalid_call_is_refused_by_name_and_changes_nothing(entry, pick, scratch, data):
    """Mistake number ``pick`` of the entry point's builder, in random surroundings (shapes, values, a model mid-
    training); the report's Draw line shows the call and what is wrong in it."""
    make, kinds = INVALID[entry]
    call = data.draw(make(scratch, pick), label=entry)
    assert call.kinds == kinds, f"the {entry} builder now knows {call.kinds} kinds of mistake: write it in INVALID"
    expect_refusal(call)


# =====================================================================================================================
# valid calls: PyTorch's numbers (NumPy's without it), no warning
# =====================================================================================================================
def axis_forms(draw, ndim):
    """A valid ``axis`` for a reduction over a tensor of ``ndim`` axes, in every form PyTorch takes: None, an int
    (negative too, a NumPy int), a tuple or list of distinct axes. Returns (axis as passed, the axes as a tuple)."""
    form = draw(st.sampled_from(["None", "int", "np.int64", "tuple", "list"] if ndim else ["None"]))
    if form == "None":
        return None, tuple(range(ndim))
    if form in ("int", "np.int64"):
        a = draw(st.integers(-ndim, ndim - 1))
        return (a if form == "int" else np.int64(a)), (a % ndim,)
    chosen = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    signed = [a - ndim if draw(st.booleans()) else a for a in chosen]
    return (tuple(signed) if form == "tuple" else signed), tuple(sorted(chosen))


@fuzz(150)
@given(op=st.sampled_from(["sum", "mean", "max"]), seed=seeds, data=st.data())
def test_reductions_give_pytorchs_result(op, seed, data):
    """Tensor.sum / mean / max over every form of axis, keepdims either way, lengths 0 included (sum and mean)."""
    rng = np.random.default_rng(seed)
    ndim = data.draw(st.integers(0, 3), label="ndim")
    low = 1 if op == "max" else 0
    shape = tuple(data.draw(st.integers(low, 3)) for _ in range(ndim))
    axis, axes = axis_forms(data.draw, ndim)
    keepdims = data.draw(st.booleans(), label="keepdims")
    a = rng.standard_normal(shape)
    x = tensor(a, requires_grad=True)
    out_shape = np.sum(a, axis=axes, keepdims=keepdims).shape
    cotangent = rng.standard_normal(out_shape)
    check_grads(Call(f"Tensor.{op}", getattr(x, op), axis=axis, keepdims=keepdims), [x], op, [a], cotangent,
                axis=axes, keepdims=keepdims)


@fuzz(90)
@given(seed=seeds, data=st.data())
def test_reshape_transpose_permute_give_pytorchs_result(seed, data):
    rng = np.random.default_rng(seed)
    ndim = data.draw(st.integers(1, 3), label="ndim")
    shape = tuple(data.draw(st.integers(0 if data.draw(st.booleans()) else 1, 3)) for _ in range(ndim))
    a = rng.standard_normal(shape)
    x = tensor(a, requires_grad=True)
    kind = data.draw(st.sampled_from(["reshape", "transpose", "permute", "T"]), label="method")
    if kind == "reshape":
        sizes = list(np.random.default_rng(seed).permutation(list(shape))) if a.size else [0, *shape[1:]]
        sizes = [int(s) for s in sizes]
        if sizes and a.size and data.draw(st.booleans(), label="with -1"):
            sizes[data.draw(st.integers(0, len(sizes) - 1))] = -1
        sizes = [np.int64(s) for s in sizes] if data.draw(st.booleans(), label="NumPy ints") else sizes
        form = data.draw(st.sampled_from(["*ints", "tuple", "list"]), label="form")
        args = tuple(sizes) if form == "*ints" else (tuple(sizes),) if form == "tuple" else (list(sizes),)
        call = Call("Tensor.reshape", x.reshape, *args)
        op, constants = "reshape", {"shape": tuple(int(s) for s in sizes)}
    elif kind == "permute":
        perm = [int(p) for p in rng.permutation(ndim)]
        signed = [p - ndim if data.draw(st.booleans()) else p for p in perm]
        args = tuple(signed) if data.draw(st.booleans(), label="*axes") else (tuple(signed),)
        call = Call("Tensor.permute", x.permute, *args)
        op, constants = "permute", {"axes": tuple(perm)}
    else:
        if ndim < 2:
            return
        a0 = data.draw(st.integers(-ndim, ndim - 1)) if kind == "transpose" else -2
        a1 = data.draw(st.integers(-ndim, ndim - 1)) if kind == "transpose" else -1
        axes = list(range(ndim))
        axes[a0], axes[a1] = axes[a1], axes[a0]
        call = Call("Tensor.transpose", x.transpose, a0, a1) if kind == "transpose" \
            else Call("Tensor.T", lambda: x.T)
        op, constants = "permute", {"axes": tuple(axes)}
    expected = forward(op, a, **constants)
    check_grads(call, [x], op, [a], rng.standard_normal(expected.shape), **constants)


@fuzz(90)
@given(seed=seeds, data=st.data())
def test_linear_gives_pytorchs_result(seed, data):
    """F.linear and the Linear module (sizes as ints or NumPy ints), batch axes of any length (0 included)."""
    rng = np.random.default_rng(seed)
    batch = tuple(data.draw(st.integers(0, 3)) for _ in range(data.draw(st.integers(0, 2), label="batch axes")))
    n_in, n_out = data.draw(st.integers(1, 4), label="in"), data.draw(st.integers(1, 4), label="out")
    has_bias = data.draw(st.booleans(), label="bias")
    a = rng.standard_normal(batch + (n_in,))
    x = tensor(a, requires_grad=True)
    if data.draw(st.booleans(), label="module"):
        size = data.draw(st.sampled_from([int, np.int64]), label="size type")
        manual_seed(seed % 1000)
        layer = run_valid(Call("Linear", Linear, size(n_in), size(n_out), bias=has_bias, dtype="float64"))
        w, b = layer.weight, layer.bias
        call = Call("Linear.forward", layer, x)
    else:
        w = tensor(rng.standard_normal((n_out, n_in)), requires_grad=True)
        b = tensor(rng.standard_normal(n_out), requires_grad=True) if has_bias else None
        call = Call("F.linear", F.linear, x, w, b)
    arrays = [a, host(w), None if b is None else host(b)]
    check_grads(call, [x, w, b], "linear", arrays, rng.standard_normal(batch + (n_out,)))


@fuzz(150)
@given(seed=seeds, data=st.data())
def test_softmax_family_gives_pytorchs_result(seed, data):
    """F.softmax / F.log_softmax over any axis (lengths 0 included), F.masked_softmax with valid_lens (B,) or (B, L)."""
    rng = np.random.default_rng(seed)
    kind = data.draw(st.sampled_from(["softmax", "log_softmax", "masked_softmax"]), label="function")
    if kind == "masked_softmax":
        b, length_q, length_k = (data.draw(st.integers(1, 3)) for _ in range(3))
        heads = (data.draw(st.integers(1, 2)),) if data.draw(st.booleans(), label="heads axis") else ()
        a = rng.standard_normal((b,) + heads + (length_q, length_k)) * 3
        per_query = data.draw(st.booleans(), label="per query")
        lens = rng.integers(0, length_k + 1, (b, length_q) if per_query else (b,))
        if data.draw(st.booleans(), label="as a list"):
            lens_arg = lens.tolist()
        else:
            lens_arg = backend.asarray(lens.astype(data.draw(st.sampled_from([np.int64, np.int32, np.uint8]))))
        x = tensor(a, requires_grad=True)
        full = np.broadcast_to(lens[:, None] if not per_query else lens, (b, length_q))
        mask = np.arange(length_k) < full[..., None]                            # (B, L, S)
        mask = mask.reshape((b,) + (1,) * len(heads) + (length_q, length_k))
        call = Call("F.masked_softmax", F.masked_softmax, x, lens_arg)
        check_grads(call, [x], "masked_softmax", [a], rng.standard_normal(a.shape), mask=mask)
        return
    ndim = data.draw(st.integers(1, 3), label="ndim")
    shape = tuple(data.draw(st.integers(0 if data.draw(st.booleans()) else 1, 3)) for _ in range(ndim))
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    a = rng.standard_normal(shape) * 3
    x = tensor(a, requires_grad=True)
    call = Call(f"F.{kind}", getattr(F, kind), x, axis=axis)
    check_grads(call, [x], kind, [a], rng.standard_normal(shape), axis=axis)


def causal_band(length_q, length_k, window=None):
    """PyTorch's is_causal mask (top-left aligned), cut to a sliding window: key j for query i iff i−w < j ≤ i."""
    i, j = np.arange(length_q)[:, None], np.arange(length_k)[None, :]
    return (j <= i) & (True if window is None else (i - j < window))


@fuzz(180)
@given(seed=seeds, data=st.data())
def test_scaled_dot_product_attention_gives_pytorchs_result(seed, data):
    """Batch axes that broadcast, lengths and feature sizes 0 included, boolean / float (−inf included) masks of
    every broadcastable shape, is_causal (L ≠ S too) with and without a window, scale (default, negative, a NumPy
    float, an int), grouped-query heads; output, weights and the three gradients."""
    rng = np.random.default_rng(seed)
    draw = data.draw
    b = draw(st.integers(1, 2), label="batch")
    length_q, length_k = draw(st.integers(0, 4), label="L"), draw(st.integers(0, 4), label="S")
    e, ev = draw(st.integers(0, 3), label="E"), draw(st.integers(1, 3), label="Ev")
    gqa = draw(st.booleans(), label="enable_gqa")
    heads = draw(st.sampled_from([1, 2, 4]), label="heads")
    kv_heads = draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0])) if gqa else heads
    kv_batch = draw(st.sampled_from([b, 1]), label="key/value batch")
    q_a = rng.standard_normal((b, heads, length_q, e))
    k_a = rng.standard_normal((kv_batch, kv_heads, length_k, e))
    v_a = rng.standard_normal((kv_batch, kv_heads, length_k, ev))
    if not gqa and draw(st.booleans(), label="no heads axis"):
        q_a, k_a, v_a = q_a[:, 0], k_a[:, 0], v_a[:, 0]
    batch_axes = q_a.shape[:-2]
    kind = draw(st.sampled_from(["none", "bool", "float", "float -inf", "causal", "causal window"]), label="mask")
    kwargs, mask, bias = {}, None, None
    if kind in ("bool", "float", "float -inf"):
        lead = tuple(draw(st.sampled_from([1, n])) for n in batch_axes[len(batch_axes) - draw(
            st.integers(0, len(batch_axes))):])
        last = tuple(draw(st.sampled_from([1, n])) for n in (length_q, length_k))
        shape = lead + (last if lead or draw(st.booleans(), label="2-D tail") else last[1:])
        if kind == "bool":
            mask = rng.random(shape) < 0.7
            kwargs["attn_mask"] = backend.asarray(mask)
        else:
            bias = rng.standard_normal(shape)
            if kind == "float -inf":
                bias[rng.random(shape) < 0.3] = -np.inf
            kwargs["attn_mask"] = tensor(bias) if draw(st.booleans(), label="mask as Tensor") else backend.asarray(bias)
    elif kind.startswith("causal"):
        kwargs["is_causal"] = True
        window = draw(st.integers(1, 3), label="window") if kind == "causal window" else None
        if window is not None:
            kwargs["window"] = window
        mask = causal_band(length_q, length_k, window)
    scale_kind = draw(st.sampled_from(["default", "float", "negative", "np.float64", "int"]), label="scale")
    scale = {"default": None, "float": 0.7, "negative": -0.4, "np.float64": np.float64(0.3), "int": 1}[scale_kind]
    if scale is not None:
        kwargs["scale"] = scale
    if gqa:
        kwargs["enable_gqa"] = True
    q, k, v = (tensor(a, requires_grad=True) for a in (q_a, k_a, v_a))
    group = heads // kv_heads if gqa else 1
    constants = dict(mask=mask, bias=bias, scale=None if scale is None else float(scale), group=group)
    out_shape = np.broadcast_shapes(q_a.shape[:-1], k_a.shape[:-2] + (1,)) + (ev,) if not gqa else \
        np.broadcast_shapes(q_a.shape[:-3], k_a.shape[:-3]) + (heads, length_q, ev)
    call = Call("F.scaled_dot_product_attention", F.scaled_dot_product_attention, q, k, v, **kwargs)
    check_grads(call, [q, k, v], "sdpa", [q_a, k_a, v_a], rng.standard_normal(out_shape), **constants)
    out, weights = run_valid(Call("F.scaled_dot_product_attention", F.scaled_dot_product_attention, q, k, v,
                                  need_weights=True, **kwargs))
    assert_close(weights, forward("sdpa_weights", q_a, k_a, v_a, **constants), f"{call!r}: weights")


@fuzz(75)
@given(seed=seeds, data=st.data())
def test_layer_norm_gives_pytorchs_result(seed, data):
    """F.layer_norm with or without γ, β and a residual; the LayerNorm module (size an int or a NumPy int)."""
    rng = np.random.default_rng(seed)
    shape = tuple(data.draw(st.integers(0, 3)) for _ in range(data.draw(st.integers(0, 2)))) + \
        (data.draw(st.integers(1, 5), label="D"),)
    d = shape[-1]
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.1] + ([0.0] if d > 1 else [])), label="eps")
    a, r_a = rng.standard_normal(shape), rng.standard_normal(shape)
    x = tensor(a, requires_grad=True)
    use_residual = data.draw(st.booleans(), label="residual")
    r = tensor(r_a, requires_grad=True) if use_residual else None
    if data.draw(st.booleans(), label="module"):
        size = data.draw(st.sampled_from([int, np.int64]), label="size type")
        layer = run_valid(Call("LayerNorm", LayerNorm, size(d), eps=eps, dtype="float64"))
        layer.weight.data[...] = backend.asarray(rng.standard_normal(d))
        w, b = layer.weight, layer.bias
        call = Call("LayerNorm.forward", layer, x, residual=r)
    else:
        w = tensor(rng.standard_normal(d), requires_grad=True) if data.draw(st.booleans(), label="weight") else None
        b = tensor(rng.standard_normal(d), requires_grad=True) if data.draw(st.booleans(), label="bias") else None
        call = Call("F.layer_norm", F.layer_norm, x, w, b, eps, residual=r)
    w_a = np.ones(d) if w is None else host(w)
    b_a = np.zeros(d) if b is None else host(b)
    out = run_valid(call)
    summed = a + r_a if use_residual else a
    cotangent = rng.standard_normal(shape)
    expected, grads = reference("layer_norm", [summed, w_a, b_a], cotangent, eps=eps)
    assert_close(out, expected, repr(call))
    backward(call, out, cotangent)
    assert_close(x.grad, grads[0], f"{call!r}: dx", grad_tolerance())
    if use_residual:
        assert_close(r.grad, grads[0], f"{call!r}: d residual", grad_tolerance())
    for t, g, name in ((w, grads[1], "dweight"), (b, grads[2], "dbias")):
        if t is not None:
            assert_close(t.grad, g, f"{call!r}: {name}", grad_tolerance())


@fuzz(150)
@given(seed=seeds, data=st.data())
def test_cross_entropy_gives_pytorchs_result(seed, data):
    """(N, C) and (N, C, d) logits, N = 0 included; targets with ignored rows (ignore_index −100, −1 or a class id),
    label smoothing in [0, 1], every reduction. Documented deviation kept: with every row ignored the mean is 0."""
    rng = np.random.default_rng(seed)
    n, c = data.draw(st.integers(0, 4), label="N"), data.draw(st.integers(1, 4), label="C")
    extra = (data.draw(st.integers(1, 3), label="d1"),) if data.draw(st.booleans(), label="(N, C, d1)") else ()
    ignore_index = data.draw(st.sampled_from([-100, -1] + list(range(c))), label="ignore_index")
    smoothing = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]), label="label_smoothing")
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    a = rng.standard_normal((n, c) + extra) * 2
    target = rng.integers(0, c, (n,) + extra)
    target[rng.random(target.shape) < 0.3] = ignore_index
    target_arg = backend.asarray(target.astype(data.draw(st.sampled_from([np.int64, np.int32]), label="target dtype")))
    logits = tensor(a, requires_grad=True)
    kwargs = dict(ignore_index=ignore_index, label_smoothing=smoothing, reduction=reduction)
    call = Call("F.cross_entropy", F.cross_entropy, logits, target_arg, **kwargs)
    cotangent = rng.standard_normal(target.shape if reduction == "none" else ())
    if reduction == "mean" and not (target != ignore_index).any():             # every row ignored: 0, gradient 0
        out = run_valid(call)
        assert_close(out, np.float64(0.0), repr(call))
        backward(call, out, cotangent)
        assert_close(logits.grad, np.zeros_like(a), f"{call!r}: gradient")
        return
    check_grads(call, [logits], "cross_entropy", [a], cotangent, target=target, **kwargs)


@fuzz(60)
@given(seed=seeds, data=st.data())
def test_embedding_gives_pytorchs_result(seed, data):
    """F.embedding and the Embedding module with ids of any shape (0-d, empty) and integer dtype."""
    rng = np.random.default_rng(seed)
    vocab, d = data.draw(st.integers(1, 5), label="vocab"), data.draw(st.integers(1, 3), label="D")
    shape = tuple(data.draw(st.integers(0, 3)) for _ in range(data.draw(st.integers(0, 2), label="ids ndim")))
    ids = rng.integers(0, vocab, shape)
    ids_arg = tensor(ids, data.draw(st.sampled_from([np.int64, np.int32, np.uint8]), label="ids dtype"))
    if data.draw(st.booleans(), label="module"):
        size = data.draw(st.sampled_from([int, np.int64]), label="size type")
        layer = run_valid(Call("Embedding", Embedding, size(vocab), size(d), dtype="float64"))
        w, call = layer.weight, Call("Embedding.forward", layer, ids_arg)
    else:
        w = tensor(rng.standard_normal((vocab, d)), requires_grad=True)
        call = Call("F.embedding", F.embedding, ids_arg, w)
    check_grads(call, [w], "embedding", [host(w)], rng.standard_normal(shape + (d,)), ids=ids.astype(np.int64))


@fuzz(60)
@given(seed=seeds, p=st.sampled_from([0.0, 0.25, 0.5, 0.9]), training=st.booleans(), module=st.booleans(),
       data=st.data())
def test_dropout_zeroes_or_scales_and_draws_only_when_it_drops(seed, p, training, module, data):
    """Each element 0 or x / (1 − p); eval mode or p = 0 is the identity and draws nothing from either stream."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(tuple(data.draw(st.integers(0, 4)) for _ in range(data.draw(st.integers(0, 3)))))
    x = tensor(a, requires_grad=True)
    if module:
        layer = run_valid(Call("Dropout", Dropout, p))
        layer.train(training)
        call = Call("Dropout.forward", layer, x)
    else:
        call = Call("F.dropout", F.dropout, x, p, training)
    before = rng_streams()
    out = host(run_valid(call))
    after = rng_streams()
    assert out.shape == a.shape, f"{call!r}: shape {out.shape}"
    assert same(before["host random stream"], after["host random stream"]), f"{call!r} drew from the host stream"
    drops = training and p > 0 and a.size > 0
    if not drops:
        np.testing.assert_array_equal(out, a, err_msg=f"{call!r}: not the identity")
        assert same(before, after), f"{call!r}: drew from a random stream without dropping anything"
        return
    kept = out != 0
    np.testing.assert_allclose(out[kept], a[kept] / (1 - p), rtol=1e-12, err_msg=f"{call!r}: kept values")


# --- the layers and models, composed from the reference ops (PyTorch's where installed) ------------------------------
def ref_linear(P, name, x):
    return forward("linear", x, P[f"{name}.weight"], P.get(f"{name}.bias"))


def ref_layer_norm(P, name, x, eps=1e-5):
    return forward("layer_norm", x, P[f"{name}.weight"], P[f"{name}.bias"], eps=eps)


def ref_ffn(P, name, x):
    return ref_linear(P, f"{name}.dense2", np.maximum(ref_linear(P, f"{name}.dense1", x), 0))


def ref_rope(x, base, offset=0):
    """Rotary embedding, GPT-NeoX's rotate_half layout: channels (i, i + d/2) turned by (offset + m)·base^(−2i/d)."""
    d, length = x.shape[-1], x.shape[-2]
    half = d // 2
    angle = (offset + np.arange(length))[:, None] * base ** (-2 * np.arange(half) / d)[None, :]   # (L, d/2)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle), x2 * np.cos(angle) + x1 * np.sin(angle)], -1)


def ref_alibi_slopes(n):
    """Press et al. 2022's slopes: 2^(−8/n)^(i+1) for n a power of two; else the nearest power below, then every
    other slope of twice that (the paper's reference code)."""
    def power_of_two(k):
        return [(2 ** (-8 / k)) ** (i + 1) for i in range(k)]
    below = 2 ** int(math.floor(math.log2(n)))
    return np.array(power_of_two(below) + power_of_two(2 * below)[0::2][:n - below])


def ref_positions(max_len, d):
    """The sinusoidal table: P[pos, 2i] = sin(pos / 10000^(2i/d)), P[pos, 2i+1] = cos(same)."""
    i = np.arange(d)
    angle = np.arange(max_len)[:, None] / 10000.0 ** ((i - i % 2) / d)[None, :]
    return np.where(i % 2 == 0, np.sin(angle), np.cos(angle))


def ref_mha(P, name, cfg, query, key, value, valid_lens=None, attn_mask=None, is_causal=False):
    """(output, weights (B, h, L, S)) of a MultiHeadAttention with parameters P[name.*] and configuration cfg."""
    e, h = cfg["embed_dim"], cfg["num_heads"]
    kv = cfg.get("num_kv_heads") or h
    dh = e // h
    b, length_q, length_k = query.shape[0], query.shape[1], key.shape[1]
    q = ref_linear(P, f"{name}W_q", query).reshape(b, length_q, h, dh).transpose(0, 2, 1, 3)
    k = ref_linear(P, f"{name}{'W_q' if cfg.get('share_qk') else 'W_k'}", key)
    k = k.reshape(b, length_k, kv, dh).transpose(0, 2, 1, 3)
    v = ref_linear(P, f"{name}W_v", value).reshape(b, length_k, kv, dh).transpose(0, 2, 1, 3)
    if cfg.get("qk_norm"):
        q = ref_layer_norm(P, f"{name}q_norm", q)
        k = ref_layer_norm(P, f"{name}{'q_norm' if cfg.get('share_qk') else 'k_norm'}", k)
    if cfg.get("rope"):
        base = cfg.get("rope_base", 10000.0)
        q, k = ref_rope(q, base), ref_rope(k, base)
    mask, bias = np.ones((b, h, length_q, length_k), bool), None
    if valid_lens is not None:
        lens = np.asarray(valid_lens)
        lens = lens[:, None] if lens.ndim == 1 else lens                        # (B, 1 | L)
        mask = mask & (np.arange(length_k) < lens[:, :, None])[:, None]        # (B, 1, 1 | L, S)
    if attn_mask is not None:
        if attn_mask.dtype == bool:
            mask = mask & attn_mask
        else:
            bias = attn_mask
    if is_causal:
        mask = mask & causal_band(length_q, length_k, cfg.get("window"))
    if cfg.get("alibi"):
        distance = np.abs(np.arange(length_q)[:, None] - np.arange(length_k)[None, :])
        slopes = -ref_alibi_slopes(h)[:, None, None] * distance                # (h, L, S)
        bias = slopes if bias is None else bias + slopes
    constants = dict(mask=mask, bias=bias, scale=1 / math.sqrt(dh), group=h // kv)
    out = forward("sdpa", q, k, v, **constants)
    weights = forward("sdpa_weights", q, k, v, **constants)
    out = out.transpose(0, 2, 1, 3).reshape(b, length_q, e)
    return ref_linear(P, f"{name}W_o", out), weights


def ref_transformer(P, cfg, src, tgt, valid_lens=None):
    """Logits (B, T, V) of a Transformer in evaluation mode."""
    d, norm_first = cfg["embed_dim"], cfg.get("norm_first", False)
    table = ref_positions(cfg["max_len"], d)
    attention = dict(embed_dim=d, num_heads=cfg["num_heads"])

    def sublayer(x, name, f):
        if norm_first:
            return x + f(ref_layer_norm(P, f"{name}.norm", x))
        return ref_layer_norm(P, f"{name}.norm", x + f(x))

    x = P["src_embedding.weight"][src] + table[:src.shape[1]]
    for i in range(cfg["num_encoder_layers"]):
        block = f"encoder_blocks.{i}."
        x = sublayer(x, block + "residual1", lambda h: ref_mha(P, block + "attention.", attention, h, h, h,
                                                               valid_lens)[0])
        x = sublayer(x, block + "residual2", lambda h: ref_ffn(P, block + "ffn", h))
    memory = ref_layer_norm(P, "encoder_norm", x) if norm_first else x
    y = P["tgt_embedding.weight"][tgt] + table[:tgt.shape[1]]
    for i in range(cfg["num_decoder_layers"]):
        block = f"decoder_blocks.{i}."
        y = sublayer(y, block + "residual1", lambda h: ref_mha(P, block + "self_attention.", attention, h, h, h,
                                                               is_causal=True)[0])
        y = sublayer(y, block + "residual2", lambda h: ref_mha(P, block + "cross_attention.", attention, h, memory,
                                                               memory, valid_lens)[0])
        y = sublayer(y, block + "residual3", lambda h: ref_ffn(P, block + "ffn", h))
    if norm_first:
        y = ref_layer_norm(P, "final_norm", y)
    return ref_linear(P, "output", y)


def ref_greedy(P, cfg, src, valid_lens, bos_id, eos_id, max_len, pad_id):
    """greedy_decode by re-running the reference on the whole prefix each step."""
    ys = np.full((src.shape[0], 1), bos_id)
    done = np.zeros(src.shape[0], bool)
    for _ in range(max_len):
        nxt = ref_transformer(P, cfg, src, ys, valid_lens)[:, -1].argmax(-1)
        nxt = np.where(done, pad_id, nxt)
        ys = np.concatenate([ys, nxt[:, None]], axis=1)
        done |= nxt == eos_id
        if done.all():
            break
    out = ys[:, 1:]
    return np.concatenate([out, np.full((out.shape[0], max_len - out.shape[1]), pad_id)], axis=1)


def ref_gpt(P, cfg, ids):
    """Logits (B, T, V) of a GPT in evaluation mode."""
    d, positions = cfg["embed_dim"], cfg.get("positions", "learned")
    x = P["token_embedding.weight"][ids]
    if positions == "learned":
        x = x + P["position_embedding.weight"][:ids.shape[1]]
    elif positions == "sinusoidal":
        x = x + ref_positions(cfg["max_len"], d)[:ids.shape[1]]
    attention = dict(embed_dim=d, num_heads=cfg["num_heads"], num_kv_heads=cfg.get("num_kv_heads"),
                     rope=positions == "rope", alibi=positions == "alibi", window=cfg.get("window"))
    for i in range(cfg["num_layers"]):
        block = f"blocks.{i}."
        h = ref_layer_norm(P, block + "norm1", x)
        x = x + ref_mha(P, block + "attention.", attention, h, h, h, is_causal=True)[0]
        x = x + ref_ffn(P, block + "ffn", ref_layer_norm(P, block + "norm2", x))
    x = ref_layer_norm(P, "final_norm", x)
    return forward("linear", x, P["token_embedding.weight"] if cfg.get("tie_weights", True) else P["output.weight"])


def float64_state(model):
    return {name: a.astype(np.float64) for name, a in model.state_dict().items()}


@fuzz(90)
@given(seed=seeds, data=st.data())
def test_multi_head_attention_gives_the_reference_result(seed, data):
    """MultiHeadAttention over its options (GQA, qk_norm, share_qk, kdim/vdim, bias, dense/flash, rope, ALiBi,
    window) and masks (valid_lens (B,) / (B, L), boolean / float attn_mask of 2 or 4 axes, is_causal): the output
    and attention_weights equal the composition of the reference ops from the layer's own parameters."""
    rng = np.random.default_rng(seed)
    draw = data.draw
    h = draw(st.sampled_from([1, 2, 4]), label="num_heads")
    rope = draw(st.booleans(), label="rope")
    dh = 2 if rope else draw(st.integers(1, 3), label="head_dim")
    e = h * dh
    kv = draw(st.sampled_from([None] + [k for k in (1, 2, 4) if h % k == 0]), label="num_kv_heads")
    share_qk = kv in (None, h) and draw(st.booleans(), label="share_qk")
    kdim = None if share_qk else draw(st.sampled_from([None, 1, 3]), label="kdim")
    vdim = draw(st.sampled_from([None, 2]), label="vdim")
    impl = draw(st.sampled_from(["dense", "flash"]), label="attn_impl")
    is_causal = draw(st.booleans(), label="is_causal")
    window = draw(st.sampled_from([None, 1, 2]), label="window") if is_causal else None
    size = draw(st.sampled_from([int, np.int64]), label="size type")
    cfg = dict(embed_dim=e, num_heads=h, num_kv_heads=kv, share_qk=share_qk, qk_norm=draw(st.booleans()),
               rope=rope, alibi=draw(st.booleans(), label="alibi"), window=window)
    options = dict(dropout=0.0 if impl == "flash" else draw(st.sampled_from([0.0, 0.3])), bias=draw(st.booleans()),
                   kdim=kdim, vdim=vdim, qk_norm=cfg["qk_norm"], share_qk=share_qk, dtype="float64", attn_impl=impl,
                   block_size=draw(st.integers(1, 3)), num_kv_heads=kv, rope=rope, alibi=cfg["alibi"], window=window)
    manual_seed(seed % 1000)
    layer = run_valid(Call("MultiHeadAttention", MultiHeadAttention, size(e), size(h), **options))
    layer.eval()
    b, length_q, length_k = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    query = rng.standard_normal((b, length_q, e))
    key = rng.standard_normal((b, length_k, kdim or e))
    value = rng.standard_normal((b, length_k, vdim or e))
    kwargs = {"is_causal": is_causal}
    lens = None
    if draw(st.booleans(), label="valid_lens"):
        lens = rng.integers(0, length_k + 1, (b, length_q) if draw(st.booleans()) else (b,))
        kwargs["valid_lens"] = backend.asarray(lens)
    mask = None
    if not is_causal and draw(st.booleans(), label="attn_mask"):
        shape = draw(st.sampled_from([(length_q, length_k), (b, 1, length_q, length_k), (b, h, length_q, length_k)]))
        mask = rng.random(shape) < 0.7 if draw(st.booleans(), label="boolean mask") else rng.standard_normal(shape)
        kwargs["attn_mask"] = backend.asarray(mask)
    call = Call("MultiHeadAttention.forward", layer, tensor(query), tensor(key), tensor(value), **kwargs)
    out = run_valid(call)
    P = float64_state(layer)
    expected, weights = ref_mha(P, "", cfg, query, key, value, lens, mask, is_causal)
    assert_close(out, expected, repr(call))
    if impl == "dense":
        assert_close(layer.attention_weights, weights, f"{call!r}: attention_weights")
    else:
        assert layer.attention_weights is None, f"{call!r}: flash keeps no attention_weights"


@fuzz(30)
@given(seed=seeds, data=st.data())
def test_transformer_forward_and_greedy_decode_give_the_reference_result(seed, data):
    """Transformer (post- or pre-norm, 1–2 layers each side, sizes as ints or NumPy ints) in evaluation mode: the
    logits, and greedy_decode (cached or not; ids and max_len as ints or NumPy ints) token for token."""
    rng = np.random.default_rng(seed)
    draw = data.draw
    size = draw(st.sampled_from([int, np.int64]), label="size type")
    h = draw(st.sampled_from([1, 2]), label="num_heads")
    cfg = dict(src_vocab_size=draw(st.integers(2, 6)), tgt_vocab_size=draw(st.integers(3, 6)),
               embed_dim=h * draw(st.integers(1, 3)), num_heads=h, ffn_hidden=draw(st.integers(1, 5)),
               num_encoder_layers=draw(st.integers(1, 2)), num_decoder_layers=draw(st.integers(1, 2)),
               max_len=draw(st.integers(3, 6)), norm_first=draw(st.booleans(), label="norm_first"))
    manual_seed(seed % 1000)
    sized = {k: size(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in cfg.items()}
    net = run_valid(Call("Transformer", Transformer, **sized, dropout=draw(st.sampled_from([0.0, 0.2])),
                         dtype="float64"))
    net.eval()
    b = draw(st.integers(1, 2), label="batch")
    src = rng.integers(0, cfg["src_vocab_size"], (b, draw(st.integers(1, cfg["max_len"]), label="S")))
    tgt = rng.integers(0, cfg["tgt_vocab_size"], (b, draw(st.integers(1, cfg["max_len"]), label="T")))
    lens = rng.integers(0, src.shape[1] + 1, b) if draw(st.booleans(), label="src_valid_lens") else None
    lens_arg = None if lens is None else backend.asarray(lens)
    P = float64_state(net)
    call = Call("Transformer.forward", net, tensor(src, np.int64), tensor(tgt, np.int64), lens_arg)
    assert_close(run_valid(call), ref_transformer(P, cfg, src, tgt, lens), repr(call))
    v = cfg["tgt_vocab_size"]
    bos, eos, pad = (int(t) for t in rng.integers(0, v, 3))
    id_type = draw(st.sampled_from([int, np.int64]), label="ids and max_len type")
    max_len = draw(st.integers(1, cfg["max_len"]), label="max_len")
    net.train(draw(st.booleans(), label="called in training mode"))
    was_training = net.training
    call = Call("Transformer.greedy_decode", net.greedy_decode, tensor(src, np.int64), lens_arg, id_type(bos),
                id_type(eos), id_type(max_len), pad_id=id_type(pad), use_cache=draw(st.booleans(), label="use_cache"))
    tokens = run_valid(call)
    expected = ref_greedy(P, cfg, src, lens, bos, eos, max_len, pad)
    np.testing.assert_array_equal(np.asarray(tokens), expected, err_msg=repr(call))
    assert net.training == was_training, f"{call!r}: the training mode was not restored"


@fuzz(40)
@given(seed=seeds, data=st.data())
def test_gpt_forward_and_generate_give_the_reference_result(seed, data):
    """GPT over positions (learned, sinusoidal, rope, alibi), GQA, window, tied or not, init: the logits; generate
    greedy (temperature 0, or top_k = 1) token for token; sampling: the same seed gives the same tokens, every token
    is in the vocabulary, and neither of autograd's random streams moves."""
    rng = np.random.default_rng(seed)
    draw = data.draw
    h = draw(st.sampled_from([1, 2, 4]), label="num_heads")
    positions = draw(st.sampled_from(["learned", "sinusoidal", "rope", "alibi"]), label="positions")
    dh = 2 if positions == "rope" else draw(st.integers(1, 2), label="head_dim")
    cfg = dict(vocab_size=draw(st.integers(2, 6)), max_len=draw(st.integers(2, 6)), embed_dim=h * dh, num_heads=h,
               num_layers=draw(st.integers(1, 2)), positions=positions,
               num_kv_heads=draw(st.sampled_from([None] + [k for k in (1, 2) if h % k == 0])),
               window=draw(st.sampled_from([None, 1, 2])), tie_weights=draw(st.booleans()))
    options = dict(ffn_hidden=draw(st.sampled_from([None, 3])), dropout=draw(st.sampled_from([0.0, 0.2])),
                   init=draw(st.sampled_from(["pytorch", "gpt2"])), dtype="float64")
    manual_seed(seed % 1000)
    net = run_valid(Call("GPT", GPT, **cfg, **options))
    net.eval()
    P = float64_state(net)
    bounded = positions in ("learned", "sinusoidal")
    b, t = draw(st.integers(1, 2)), draw(st.integers(1, cfg["max_len"] if bounded else cfg["max_len"] + 2))
    ids = rng.integers(0, cfg["vocab_size"], (b, t))
    call = Call("GPT.forward", net, tensor(ids, np.int64))
    assert_close(run_valid(call), ref_gpt(P, cfg, ids), repr(call))
    new = draw(st.integers(0, max(0, cfg["max_len"] - t + 1) if bounded else 3), label="max_new_tokens")
    net.train(draw(st.booleans(), label="called in training mode"))
    was_training = net.training
    greedy = draw(st.sampled_from(["temperature 0", "top_k 1", "sampled"]), label="decoding")
    kwargs = {"temperature": 0.0} if greedy == "temperature 0" else {"top_k": 1} if greedy == "top_k 1" else \
        {"temperature": draw(st.sampled_from([0.5, 1.0, 2.0])), "top_k": draw(st.sampled_from([None, 2])),
         "top_p": draw(st.sampled_from([None, 0.5, 1.0]))}
    streams = rng_streams()
    call = Call("GPT.generate", net.generate, tensor(ids, np.int64), new, seed=seed % 1000, **kwargs)
    tokens = np.asarray(run_valid(call))
    assert same(streams, rng_streams()), f"{call!r}: moved one of autograd's random streams"
    assert net.training == was_training, f"{call!r}: the training mode was not restored"
    assert tokens.shape == (b, t + new), f"{call!r}: shape {tokens.shape}"
    np.testing.assert_array_equal(tokens[:, :t], ids, err_msg=f"{call!r}: the prompt changed")
    assert ((0 <= tokens) & (tokens < cfg["vocab_size"])).all(), f"{call!r}: a token outside the vocabulary"
    if greedy == "sampled":
        np.testing.assert_array_equal(np.asarray(net.generate(tensor(ids, np.int64), new, seed=seed % 1000,
                                                              **kwargs)), tokens, err_msg=f"{call!r}: same seed")
        return
    expected = ids
    for _ in range(new):
        last = ref_gpt(P, cfg, expected)[:, -1]                                   # (B, V)
        top = np.sort(last, axis=-1)
        if greedy == "top_k 1" and last.shape[-1] > 1 and (top[:, -1] - top[:, -2] < 1e-9).any():
            break       # tied for first: top_k keeps every tied token (as nanoGPT's does), so any may be drawn
        expected = np.concatenate([expected, last.argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(tokens[:, :expected.shape[1]], expected, err_msg=repr(call))


# --- optimizers, schedules, clipping ---------------------------------------------------------------------------------
def ref_optimizer_steps(kind, config, params, grads):
    """PyTorch's SGD / Adam (dampening 0, no amsgrad) on float64 host copies: ``grads[t][i]`` is parameter i's
    gradient at step t, or None (that parameter is skipped, and — Adam — its own step count does not advance).
    Returns the parameters after each step."""
    if torch is not None:
        ts = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
        opt = torch.optim.SGD(ts, **config) if kind == "SGD" else torch.optim.Adam(ts, **config)
        history = []
        for step in grads:
            for t, g in zip(ts, step):
                t.grad = None if g is None else torch.tensor(g)
            opt.step()
            history.append([t.detach().numpy().copy() for t in ts])
        return history
    ps = [p.copy() for p in params]
    state = [{} for _ in ps]
    history = []
    for step in grads:
        for p, g, s in zip(ps, step, state):
            if g is None:
                continue
            g = g + config.get("weight_decay", 0.0) * p
            if kind == "SGD":
                mu = config.get("momentum", 0.0)
                if mu:
                    s["buf"] = g.copy() if "buf" not in s else mu * s["buf"] + g
                    g = g + mu * s["buf"] if config.get("nesterov") else s["buf"]
                p -= config["lr"] * g
                continue
            b1, b2 = config.get("betas", (0.9, 0.999))
            s["t"] = s.get("t", 0) + 1
            s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
            s["v"] = b2 * s.get("v", 0) + (1 - b2) * g * g
            denom = np.sqrt(s["v"]) / math.sqrt(1 - b2 ** s["t"]) + config.get("eps", 1e-8)
            p -= config["lr"] / (1 - b1 ** s["t"]) * s["m"] / denom
        history.append([p.copy() for p in ps])
    return history


@fuzz(90)
@given(kind=st.sampled_from(["SGD", "Adam"]), seed=seeds, data=st.data())
def test_optimizers_take_pytorchs_steps(kind, seed, data):
    """SGD (momentum, weight decay, Nesterov) and Adam (betas, eps, weight decay) over 1–3 parameters for 1–3 steps,
    each parameter's gradient present or None at each step (SGD; Adam: present, see below): the parameters after
    every step equal PyTorch's."""
    rng = np.random.default_rng(seed)
    draw = data.draw
    shapes = [tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))) for _ in range(draw(
        st.integers(1, 3), label="parameters"))]
    if kind == "SGD":
        momentum = draw(st.sampled_from([0.0, 0.5, 0.9, 1.2]), label="momentum")
        config = dict(lr=draw(st.sampled_from([0.0, 0.1, 1.0])), momentum=momentum,
                      weight_decay=draw(st.sampled_from([0.0, 0.01, 0.5])),
                      nesterov=momentum > 0 and draw(st.booleans(), label="nesterov"))
    else:
        config = dict(lr=draw(st.sampled_from([0.0, 0.01, 0.3])),
                      betas=(draw(st.sampled_from([0.0, 0.5, 0.9])), draw(st.sampled_from([0.0, 0.9, 0.999]))),
                      eps=draw(st.sampled_from([1e-8, 1e-3, 1.0])), weight_decay=draw(st.sampled_from([0.0, 0.1])))
    values = [rng.standard_normal(s) for s in shapes]
    steps = draw(st.integers(1, 3), label="steps")
    # Adam: every gradient present. minattn's Adam counts t optimizer-wide, PyTorch's per parameter (a documented
    # difference, see Adam's docstring): they part only when a parameter missed a gradient at an earlier step.
    all_present = kind == "Adam" or draw(st.booleans(), label="every gradient present")
    grads = [[rng.standard_normal(s) if all_present or rng.random() < 0.6 else None for s in shapes]
             for _ in range(steps)]
    params = [tensor(v, requires_grad=True) for v in values]
    optimizer = run_valid(Call(kind, SGD if kind == "SGD" else Adam, params, **config))
    expected = ref_optimizer_steps(kind, config, values, grads)
    for t, (step, want) in enumerate(zip(grads, expected)):
        for p, g in zip(params, step):
            p.grad = None if g is None else backend.asarray(g.copy())
        run_valid(Call(f"{kind}.step", optimizer.step))
        for i, (p, w) in enumerate(zip(params, want)):
            assert_close(p, w, f"{kind}({config}) step {t + 1}, parameter {i} (gradients present: "
                               f"{[[g is not None for g in s] for s in grads[:t + 1]]})")


@fuzz(45)
@given(kind=st.sampled_from(["WarmupSchedule", "CosineSchedule"]), data=st.data())
def test_schedules_give_their_formulas(kind, data):
    """WarmupSchedule: lr = factor · d^−½ · min(t^−½, t · warmup^−3/2); CosineSchedule: nanoGPT's warm-up, half
    cosine and floor — each step() sets the optimizer's lr to the formula's value at t = 1, 2, …"""
    draw = data.draw
    optimizer = SGD([tensor(np.ones(2), requires_grad=True)], lr=0.5)
    if kind == "WarmupSchedule":
        d, warmup, factor = draw(st.integers(1, 64)), draw(st.integers(1, 6)), draw(st.sampled_from([0.0, 0.5, 2.0]))
        schedule = run_valid(Call(kind, WarmupSchedule, optimizer, d, warmup, factor))

        def lr(t):
            return factor * d ** -0.5 * min(t ** -0.5, t * warmup ** -1.5)
        horizon = warmup + 3
    else:
        warmup = draw(st.integers(0, 4))
        decay = warmup + draw(st.integers(1, 4))
        max_lr = draw(st.sampled_from([0.0, 0.1, 1.0]))
        min_lr = draw(st.sampled_from([0.0, max_lr / 2, max_lr]))
        schedule = run_valid(Call(kind, CosineSchedule, optimizer, max_lr, warmup, decay, min_lr=min_lr))

        def lr(t):
            if t <= warmup:
                return max_lr * t / warmup
            if t > decay:
                return min_lr
            return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * (t - warmup) / (decay - warmup)))
        horizon = decay + 2
    for t in range(1, horizon + 1):
        got = run_valid(Call(f"{kind}.step", schedule.step))
        assert math.isclose(got, lr(t), rel_tol=1e-12, abs_tol=1e-15), f"{kind} step {t}: {got} != {lr(t)}"
        assert optimizer.lr == got, f"{kind} step {t}: the optimizer's lr is {optimizer.lr}, step() returned {got}"


@fuzz(60)
@given(seed=seeds, data=st.data())
def test_clip_grad_norm_gives_pytorchs_result(seed, data):
    """Joint L2 norm of every gradient (None skipped), each scaled by min(1, max_norm / (norm + 1e-6)); max_norm 0,
    an int and inf included; parameters as a list or a generator."""
    rng = np.random.default_rng(seed)
    draw = data.draw
    shapes = [tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))) for _ in range(draw(
        st.integers(1, 3)))]
    grads = [rng.standard_normal(s) * draw(st.sampled_from([0.1, 1.0, 10.0])) if draw(st.booleans()) else None
             for s in shapes]
    max_norm = draw(st.sampled_from([0.0, 0.5, 1, 5.0, float("inf")]), label="max_norm")
    params = [tensor(np.zeros(s), requires_grad=True) for s in shapes]
    for p, g in zip(params, grads):
        p.grad = None if g is None else backend.asarray(g.copy())
    given_as = draw(st.sampled_from(["list", "generator"]), label="parameters as")
    arg = params if given_as == "list" else (p for p in params)
    norm = run_valid(Call("clip_grad_norm_", clip_grad_norm_, arg, max_norm))
    present = [g for g in grads if g is not None]
    if torch is not None:
        ts = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
        for t, g in zip(ts, grads):
            t.grad = None if g is None else torch.tensor(g)
        expected_norm = float(torch.nn.utils.clip_grad_norm_(ts, max_norm))
        expected = [None if t.grad is None else t.grad.numpy() for t in ts]
    else:
        expected_norm = math.sqrt(sum(float((g * g).sum()) for g in present))
        scale = min(1.0, max_norm / (expected_norm + 1e-6))
        expected = [None if g is None else g * scale for g in grads]
    assert math.isclose(float(norm), expected_norm, rel_tol=1e-12, abs_tol=1e-300), \
        f"clip_grad_norm_(max_norm={max_norm}) returned {float(norm)}, {REFERENCE} {expected_norm}"
    for i, (p, g) in enumerate(zip(params, expected)):
        assert (p.grad is None) == (g is None), f"parameter {i}: a gradient appeared or vanished"
        if g is not None:
            assert_close(p.grad, g, f"clip_grad_norm_(max_norm={max_norm}): gradient {i}")


# --- checkpoints: every configuration a constructor accepts comes back -----------------------------------------------
def hyper_numbers(low=0.0, high=2.0):
    """Non-negative numbers in every form a caller may hold one: float, int, NumPy scalars, bool."""
    return st.one_of(st.floats(low, high, allow_nan=False), st.integers(int(math.ceil(low)), int(high)),
                     st.sampled_from([np.float64(0.5), np.float32(0.25), np.int64(1), True, False]))


def draw_config(draw, kind):
    config = {"lr": draw(hyper_numbers(), label="lr"), "weight_decay": draw(hyper_numbers(), label="weight_decay")}
    if kind == "SGD":
        config["momentum"] = draw(hyper_numbers(), label="momentum")
        config["nesterov"] = draw(st.sampled_from([False, True, 0, 1, np.bool_(True)]), label="nesterov")
    else:
        beta = st.one_of(st.floats(0, 0.999), st.sampled_from([0, np.float32(0.9), np.float64(0.99)]))
        pair = (draw(beta, label="beta1"), draw(beta, label="beta2"))
        config["betas"] = draw(st.sampled_from(["tuple", "list", "array"]).map(
            lambda form: pair if form == "tuple" else list(pair) if form == "list" else np.array(pair)),
            label="betas")
        config["eps"] = draw(hyper_numbers(1e-12, 1.0), label="eps")
    return {k: v for k, v in config.items() if draw(st.booleans()) or k == "lr"}   # some left at their default


def same_number(a, b):
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return len(a) == len(b) and all(same_number(x, y) for x, y in zip(a, b))
    return a == b


@fuzz(75)
@given(kind=st.sampled_from(["SGD", "Adam"]), dtype=st.sampled_from(["float32", "float64"]), seed=seeds,
       data=st.data())
def test_checkpoint_round_trips_every_configuration_the_constructors_accept(kind, dtype, seed, data, scratch):
    """Draw an optimizer configuration (hyper-parameters as floats, ints, NumPy scalars, bools; betas as a tuple, a
    list or an array); if the constructor accepts it, train 0–2 steps, save model + optimizer, load them into a
    fresh model and an optimizer built with the defaults: parameters and optimizer state come back (hyper-parameters
    equal as numbers, buffers bit for bit), and the next step is the same from both."""
    rng = np.random.default_rng(seed)
    config = draw_config(data.draw, kind)
    cls = SGD if kind == "SGD" else Adam
    manual_seed(seed % 1000)
    model = TwoLayers(dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            optimizer = cls(model.parameters(), **config)
    except ERRORS:
        return                                        # refused: whether by name is test_invalid_call_...'s business
    note(f"{kind}({', '.join(f'{k}={describe(v)}' for k, v in config.items())}) was accepted")
    for _ in range(data.draw(st.integers(0, 2), label="steps before saving")):
        train_step(model, optimizer, rng)
    saved = optimizer.state_dict()
    path = fresh_file(scratch, "round-trip")
    run_valid(Call("checkpoint.save", checkpoint.save, path, model, optimizer, step=1, tag="fuzz"))
    manual_seed(seed % 1000 + 1)
    fresh = TwoLayers(dtype)
    fresh_optimizer = cls(fresh.parameters())
    extra = run_valid(Call("checkpoint.load", checkpoint.load, path, fresh, fresh_optimizer))
    assert extra == {"step": 1, "tag": "fuzz"}, f"extra came back as {extra}"
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert same(host(a), host(b)), f"{kind}{config}: parameter {name} did not come back"
    loaded = fresh_optimizer.state_dict()
    assert loaded.keys() == saved.keys(), f"state keys {sorted(loaded)} != {sorted(saved)}"
    for key in saved:
        if key in fresh_optimizer.buffers:
            assert all(same(x, y) for x, y in zip(saved[key], loaded[key])), f"{kind}{config}: {key} changed"
        else:
            assert same_number(saved[key], loaded[key]), f"{kind}{config}: {key} {saved[key]!r} -> {loaded[key]!r}"
    step_rng = np.random.default_rng(seed + 1)
    train_step(model, optimizer, step_rng)
    train_step(fresh, fresh_optimizer, np.random.default_rng(seed + 1))
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert same(host(a), host(b)), f"{kind}{config}: the step after loading differs at {name}"


# --- NaN and inf in the data: PyTorch propagates them; so must we, silently ------------------------------------------
@pytest.mark.skipif(torch is None, reason="what NaN and inf give is PyTorch's to define: its numbers are the oracle")
@fuzz(75)
@given(op=st.sampled_from(["linear", "softmax", "log_softmax", "layer_norm", "sdpa", "cross_entropy", "sum", "mean",
                           "max"]), seed=seeds, data=st.data())
def test_nan_and_inf_in_the_data_give_pytorchs_result_without_a_warning(op, seed, data):
    """Inputs holding NaN, +inf or −inf (a data value, not an argument to refuse): the output equals PyTorch's,
    NaN where it has NaN, and nothing warns (an overflow or invalid-value RuntimeWarning inside an op included)."""
    rng = np.random.default_rng(seed)
    poison = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="value")

    def poisoned(*shape):
        a = rng.standard_normal(shape)
        a.reshape(-1)[rng.integers(0, a.size, max(1, a.size // 4))] = poison
        return a

    n, d = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    if op == "linear":
        x, w, b = poisoned(n, d), rng.standard_normal((2, d)), rng.standard_normal(2)
        call, expected = Call("F.linear", F.linear, tensor(x), tensor(w), tensor(b)), forward(op, x, w, b)
    elif op in ("softmax", "log_softmax"):
        x = poisoned(n, d)
        call, expected = Call(f"F.{op}", getattr(F, op), tensor(x)), forward(op, x, axis=-1)
        if op == "softmax":                 # documented: a row with every entry −inf (all masked) gives 0, not NaN
            expected[np.all(x == -np.inf, axis=-1)] = 0.0
    elif op == "layer_norm":
        x = poisoned(n, d)
        call = Call("F.layer_norm", F.layer_norm, tensor(x))
        expected = forward(op, x, np.ones(d), np.zeros(d), eps=1e-5)
    elif op == "sdpa":
        q, k, v = poisoned(1, n, d), rng.standard_normal((1, 3, d)), rng.standard_normal((1, 3, 2))
        which = data.draw(st.sampled_from(["query", "key", "value"]), label="poisoned")
        if which == "key":
            q, k = rng.standard_normal((1, n, d)), poisoned(1, 3, d)
        elif which == "value":
            q, v = rng.standard_normal((1, n, d)), poisoned(1, 3, 2)
        call = Call("F.scaled_dot_product_attention", F.scaled_dot_product_attention, tensor(q), tensor(k),
                    tensor(v))
        expected = forward("sdpa", q, k, v)
    elif op == "cross_entropy":
        z, target = poisoned(n, d), rng.integers(0, d, n)
        call = Call("F.cross_entropy", F.cross_entropy, tensor(z), backend.asarray(target))
        expected = forward(op, z, target=target, ignore_index=-100, label_smoothing=0.0, reduction="mean")
    else:
        x = poisoned(n, d)
        axis = data.draw(st.sampled_from([None, 0, -1]), label="axis")
        axes = (0, 1) if axis is None else (axis % 2,)
        call, expected = Call(f"Tensor.{op}", getattr(tensor(x), op), axis=axis), forward(op, x, axis=axes,
                                                                                          keepdims=False)
    assert_close(run_valid(call), expected, repr(call))


# =====================================================================================================================
# the docstring's count
# =====================================================================================================================
def test_docstring_counts_the_cases():
    """The module docstring quotes the default number of cases (Σ max_examples × parametrizations at scale 1)."""
    total = without_torch = 0
    for obj in list(globals().values()):
        cases = getattr(obj, "default_cases", None)
        if cases is None:
            continue
        marks = getattr(obj, "pytestmark", [])
        for mark in marks:
            if mark.name == "parametrize":
                cases *= len(mark.args[1])
        total += cases
        if not any(mark.name == "skipif" for mark in marks):
            without_torch += cases
    assert f"{total} cases" in __doc__, f"the docstring should say {total} cases"
    assert f"{without_torch} without PyTorch" in __doc__, f"the docstring should say {without_torch} without PyTorch"
