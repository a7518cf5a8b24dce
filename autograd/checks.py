"""Argument checks: the one vocabulary every public function, constructor and method of autograd/ and minattn/
checks its arguments with (an API convenience, out of the learner's path).

Each check takes the argument's name, its value and what it needs to know (a range, a size, a number of axes),
returns the value normalised — a Python ``int`` or ``float``, a tuple, a backend array — and otherwise raises with one
message format:

    {where}: {name} must be {expected}, got {received}

``where`` is the entry point ("Linear", "scaled_dot_product_attention", "SGD"; omitted when None), ``expected`` what
was wanted, ``received`` what came: a value with its type ("nan (float)", "'0.5' (str)", "[0.5] (list)", "True
(bool)"), or an array's type, shape and dtype ("Tensor of shape (2, 3), dtype float32"). ``describe`` writes it.

    TypeError   the kind of thing is wrong: a str or a list where a number is meant, a bool where an int is meant
                (True would pass as 1), a float where an int is meant, an integer array where floats are meant.
    ValueError  the kind is right, the value is not: NaN or inf where a finite number is meant, a size below 1, an
                axis out of range, a shape that does not fit, a name that is not one of the choices.

The rule for callers: check every argument first, before anything changes — parameters, ``.grad``, optimizer
state, stored attention weights, the random streams of ``autograd.backend`` (a dropout draw, a parameter draw), the
training mode. A rejected call then leaves everything as it was. A check that needs a sentence of its own (two
arguments that must agree) still raises through ``fail``, so every message has the same shape.

The vocabulary:

    numbers          integer, positive_int, nonnegative_int, real, finite_float, nonnegative_float, positive_float,
                     probability, number, boolean, one_of, pair, instance, dtype, floating_dtype
    axes and shapes  axis, axes, permutation, shape, broadcastable
    arrays           tensor, matching_dtype, sequences ((batch, length, features) tensors), integer_array,
                     int_ids (ids in [0, size)), lengths (d2l's valid_lens)
    messages         fail (the one format), describe, values_text; is_int, is_real (tests without raising)

This module knows numbers, arrays and tensors, nothing of attention: minattn builds its own checks (valid lengths,
token ids, masks) from these.
"""
import math
import numbers

from autograd import backend
from autograd.tensor import Tensor, as_data


# --- the message -----------------------------------------------------------------------------------------------------
def describe(value):
    """What a message says was received: an array's type, shape and dtype; a short repr and the type otherwise.

    Examples: ``Tensor of shape (2, 3), dtype float32``, ``nan (float)``, ``'0.5' (str)``, ``[0.5] (list)``, ``None``,
    ``a Transformer`` (an object of another kind: its type).
    """
    if value is None:
        return "None"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if isinstance(shape, tuple) and dtype is not None and not isinstance(value, numbers.Number):
        return f"{type(value).__name__} of shape {shape}, dtype {dtype}"
    if not isinstance(value, (numbers.Number, str, bytes, list, tuple, dict, set)):
        return f"a {type(value).__name__}"                          # a Module, a generator ...: its type says it
    text = " ".join(repr(value).split())
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def fail(name, expected, value, where=None, error=ValueError, received=None):
    """Raise ``error`` (ValueError by default) with the one message format; never returns.

    ``received`` replaces ``describe(value)`` where a summary says more (e.g. "values in [3, 10]" for ids).
    """
    received = describe(value) if received is None else received
    raise error(f"{where + ': ' if where else ''}{name} must be {expected}, got {received}")


def _text(bound):
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _range_text(low, high, low_open=False, high_open=False):
    """" in [low, high]", " >= low", " < high" ... for a message (open bounds with parentheses or strict signs)."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{_text(low)}, {_text(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {_text(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_text(high)}"
    return ""


# --- numbers ---------------------------------------------------------------------------------------------------------
def is_int(value):
    """True for a Python or NumPy integer that is not a bool (True would pass as 1)."""
    return type(value) is int or (isinstance(value, numbers.Integral)                 # the common case first
                                  and not isinstance(value, (bool, backend.host.bool_)))


def is_real(value):
    """True for a Python or NumPy real number that is not a bool (a str, a list, an array or a complex is not)."""
    return type(value) in (float, int) or (isinstance(value, numbers.Real)
                                           and not isinstance(value, (bool, backend.host.bool_)))


def integer(name, value, low=None, high=None, where=None):
    """``value`` as a Python int, after checking it is an int (not a bool, not a float) in [low, high].

    TypeError for another type, ValueError outside the range (either bound may be None).
    """
    expected = "an int" + _range_text(low, high)
    if not is_int(value):
        fail(name, expected, value, where, TypeError)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        fail(name, expected, value, where)
    return value


def positive_int(name, value, where=None):
    """``value`` as an int >= 1 (a size, a count: features, heads, layers, steps)."""
    return integer(name, value, low=1, where=where)


def nonnegative_int(name, value, where=None):
    """``value`` as an int >= 0 (an offset, a seed, a number of new tokens)."""
    return integer(name, value, low=0, where=where)


def real(name, value, low=None, high=None, *, low_open=False, high_open=False, where=None, finite=False):
    """``value`` as a Python float, after checking it is a real number (not a bool, str, list or array), not NaN,
    within the bounds — ``low`` <= value (< with ``low_open``), value <= ``high`` (< with ``high_open``) — and,
    with ``finite``, not ±inf. TypeError for another type; ValueError for NaN or a value outside the bounds.
    """
    expected = ("a finite number" if finite else "a number") + _range_text(low, high, low_open, high_open)
    if not is_real(value):
        fail(name, expected, value, where, TypeError)
    number = float(value)
    if math.isnan(number) or (finite and math.isinf(number)):
        fail(name, expected, value, where)
    if low is not None and (number <= low if low_open else number < low):
        fail(name, expected, value, where)
    if high is not None and (number >= high if high_open else number > high):
        fail(name, expected, value, where)
    return number


def finite_float(name, value, low=None, high=None, *, low_open=False, high_open=False, where=None):
    """``value`` as a Python float, after checking it is a real number (not a bool, str, list or array), finite, and
    within the bounds: ``low`` <= value (< with ``low_open``), value <= ``high`` (< with ``high_open``).

    TypeError for another type; ValueError for NaN, ±inf or a value outside the bounds.
    """
    return real(name, value, low, high, low_open=low_open, high_open=high_open, where=where, finite=True)


def nonnegative_float(name, value, where=None):
    """``value`` as a finite float >= 0 (a learning rate, a momentum, a weight decay, an epsilon)."""
    return finite_float(name, value, low=0, where=where)


def positive_float(name, value, where=None):
    """``value`` as a finite float > 0 (a base, a standard deviation, a norm bound)."""
    return finite_float(name, value, low=0, low_open=True, where=where)


def probability(name, value, where=None, include_one=False):
    """``value`` as a float in [0, 1) — a dropout probability, where 1 would drop everything — or, with
    ``include_one``, in [0, 1] (label smoothing, top_p)."""
    return finite_float(name, value, 0, 1, high_open=not include_one, where=where)


def number(name, value, where=None):
    """``value`` unchanged, after checking it is a real number (inf and NaN allowed: a fill value, an exponent).

    TypeError for a bool, a str, a list, an array or a complex."""
    if not is_real(value):
        fail(name, "a real number", value, where, TypeError)
    return value


def boolean(name, value, where=None):
    """``value`` as a bool, after checking it is True or False (NumPy's bool too); TypeError for 0, 1, 'yes', None."""
    if not isinstance(value, (bool, backend.host.bool_)):
        fail(name, "True or False", value, where, TypeError)
    return bool(value)


def one_of(name, value, choices, where=None):
    """``value``, after checking it is one of ``choices`` (a tuple). TypeError when it is not even of their type
    (e.g. not a str), ValueError otherwise; the message lists the choices."""
    expected = "one of " + ", ".join(map(repr, choices))
    if not any(type(value) is type(c) and value == c for c in choices):
        kinds = {type(c) for c in choices}
        fail(name, expected, value, where, ValueError if type(value) in kinds else TypeError)
    return value


def dtype(name, value, where=None):
    """``value`` ('float32', 'float64', a NumPy dtype ...) as a dtype object; TypeError for what NumPy cannot read."""
    try:
        if value is None:               # numpy.dtype(None) is float64: a default the caller must choose, not us
            raise TypeError
        return backend.dtype_of(value)
    except (TypeError, ValueError):
        fail(name, "a dtype ('float32', 'float64', 'int64' ...)", value, where, TypeError)


def floating_dtype(name, value, where=None):
    """``value`` as a floating dtype object (float16/32/64): a parameter's dtype. TypeError otherwise."""
    found = dtype(name, value, where)
    if not backend.is_floating(found):
        fail(name, "a floating dtype ('float32', 'float64')", value, where, TypeError)
    return found


def pair(name, value, where=None):
    """``value`` as a 2-tuple, after checking it is a list or tuple of two items (Adam's betas)."""
    if not isinstance(value, (list, tuple)):
        fail(name, "a pair (a tuple of 2)", value, where, TypeError)
    if len(value) != 2:
        fail(name, "a pair (a tuple of 2)", value, where)
    return tuple(value)


def instance(name, value, kinds, expected, where=None):
    """``value``, after checking ``isinstance(value, kinds)``; TypeError saying ``expected`` otherwise."""
    if not isinstance(value, kinds):
        fail(name, expected, value, where, TypeError)
    return value


# --- axes and shapes -------------------------------------------------------------------------------------------------
def axis(name, value, ndim, where=None):
    """``value`` as an axis in [0, ndim), after checking it is an int in [-ndim, ndim) (negative counts from the end).

    TypeError for a bool (``axis=True`` is not axis 1), a float, a tuple; ValueError out of range.
    """
    expected = f"an axis of a tensor with {ndim} axes, an int in [{-ndim}, {ndim})" if ndim else \
        "an axis of a tensor with 0 axes (it has none)"
    if not is_int(value):
        fail(name, expected, value, where, TypeError)
    if not -ndim <= value < ndim:
        fail(name, expected, value, where)
    return int(value) % ndim


def axes(name, value, ndim, where=None):
    """``value`` — None (every axis), an axis, or a tuple or list of distinct axes — as a sorted tuple of axes in
    [0, ndim). An empty tuple or list is every axis too, as PyTorch's ``dim=()`` (NumPy would reduce no axis).
    TypeError / ValueError as ``axis``; ValueError for an axis given twice."""
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        return tuple(range(ndim))
    if not isinstance(value, (tuple, list)):
        return (axis(name, value, ndim, where),)
    found = tuple(axis(f"{name}[{i}]", a, ndim, where) for i, a in enumerate(value))
    if len(set(found)) != len(found):
        fail(name, "a tuple of distinct axes", value, where)
    return tuple(sorted(found))


def permutation(name, value, ndim, where=None):
    """``value`` as a tuple of axes in [0, ndim) that orders every axis once (negative axes count from the end)."""
    if not isinstance(value, (tuple, list)):
        fail(name, f"a permutation of the {ndim} axes (a tuple)", value, where, TypeError)
    found = tuple(axis(f"{name}[{i}]", a, ndim, where) for i, a in enumerate(value))
    if sorted(found) != list(range(ndim)):
        fail(name, f"a permutation of the {ndim} axes", value, where)
    return found


def shape(name, value, size=None, where=None):
    """``value`` (an int or a tuple or list of ints, one of them may be -1) as a tuple; with ``size``, checked to hold
    exactly ``size`` elements and the -1 resolved. TypeError for a non-int entry (a bool or float included),
    ValueError for an entry below -1, two -1s, or a shape that does not hold ``size`` elements."""
    if type(value) is tuple and all(type(n) is int and n >= 0 for n in value) and (
            size is None or math.prod(value) == size):
        return value                                       # the common case, a tuple of sizes that fits: fast
    entries = (value,) if is_int(value) else value
    if not isinstance(entries, (tuple, list)) or not all(is_int(n) for n in entries):
        fail(name, "a tuple of ints (a shape)", value, where, TypeError)
    entries = tuple(int(n) for n in entries)
    if any(n < -1 for n in entries) or entries.count(-1) > 1:
        fail(name, "a tuple of sizes >= 0 with at most one -1 (a shape)", value, where)
    if size is None:
        return entries
    known = math.prod(n for n in entries if n != -1)
    if -1 in entries:
        if known == 0 or size % known:
            fail(name, f"a shape that holds {size} elements", value, where)
        entries = tuple(size // known if n == -1 else n for n in entries)
    elif known != size:
        fail(name, f"a shape that holds {size} elements", value, where)
    return entries


def broadcastable(name, shapes, expected, value, where=None, received=None):
    """The NumPy broadcast of ``shapes`` (tuples); ValueError in the one format (``name`` must be ``expected``, got
    ``received`` or ``value`` described) when they do not broadcast: NumPy's own message names no argument."""
    try:
        return backend.broadcast_shape(*shapes)
    except ValueError:
        fail(name, expected, value, where, received=received)


# --- tensors and integer arrays --------------------------------------------------------------------------------------
def tensor(name, value, where=None, floating=False):
    """``value``, after checking it is a Tensor (and, with ``floating``, of a floating dtype); TypeError otherwise.

    A NumPy array is refused too: wrap it as ``Tensor(array)`` (the dtype policy decides how, not a silent cast).
    """
    if not isinstance(value, Tensor):
        fail(name, "a floating minattn Tensor" if floating else "a minattn Tensor", value, where, TypeError)
    if floating and not backend.is_floating(value.dtype):
        fail(name, "a floating minattn Tensor", value, where, TypeError)
    return value


def matching_dtype(name, value, dtype, whose, where=None):
    """``value`` (a Tensor or array), after checking its dtype is ``dtype`` (a dtype, its name or its type; not
    None); ``whose`` says where that dtype comes from ("weight's", "query's", "the parameters'"). TypeError otherwise:
    nothing is cast silently."""
    if value.dtype != dtype:
        fail(name, f"of {whose} dtype {backend.dtype_of(dtype)} (cast one explicitly)", value, where, TypeError)
    return value


def sequences(name, value, features=None, dtype=None, whose="the parameters'", where=None):
    """``value``, after checking it is a floating Tensor (batch, length, features) — any feature size when
    ``features`` is None — of ``dtype`` when one is given (``matching_dtype``, with ``whose``). TypeError for another
    kind or dtype, ValueError for another shape."""
    tensor(name, value, where, floating=True)
    if value.ndim != 3 or (features is not None and value.shape[-1] != features):
        fail(name, f"(batch, length, {'features' if features is None else features})", value, where)
    if dtype is not None:
        matching_dtype(name, value, dtype, whose, where)
    return value


def integer_array(name, value, where=None):
    """``value`` (a Tensor, backend or NumPy array, nested list or number) as a backend array of an integer dtype.

    TypeError for a float or bool array, a string, or an array of the other backend (``dtypes.as_data``).
    """
    try:
        array = as_data(value)
    except (TypeError, ValueError) as err:
        fail(name, "integers (an array, a Tensor or a list)", value, where, TypeError,
             received=f"{describe(value)} ({err})")
    if array.dtype.kind not in "iu":
        fail(name, "integers", value, where, TypeError)
    return array


def values_text(array):
    """"values in [min, max]" for a non-empty array (a device sync on CuPy), for messages about ranges."""
    return f"values in [{int(array.min())}, {int(array.max())}] ({describe(array)})"


def int_ids(name, value, size, where=None):
    """``value`` as a backend integer array whose every entry lies in [0, size) — token ids, class ids, rows of a
    table. TypeError as ``integer_array``; ValueError naming the range found (CuPy would wrap a bad id silently).
    One read of the device per call: a single ``any`` over the out-of-range test (the range is read only to word the
    error)."""
    ids = integer_array(name, value, where)
    if ids.size and bool(((ids < 0) | (ids >= size)).any()):
        fail(name, f"ids in [0, {size})", value, where, received=values_text(ids))
    return ids


def lengths(name, value, batch=None, maximum=None, queries=None, where=None):
    """``value`` as a backend integer array of lengths in [0, maximum]: shape (batch,) — one per sequence — or, when
    ``queries`` is given, also (batch, queries) — one per query (d2l's ``valid_lens``).

    ``batch`` / ``maximum`` None: not checked. TypeError as ``integer_array``; ValueError for another shape (a plain
    int included) or a length out of range. One read of the device for the range, as ``int_ids``.
    """
    lens = integer_array(name, value, where)
    b = "batch" if batch is None else batch
    expected = f"({b},)" + ("" if queries is None else f" or ({b}, {queries})")
    ok = lens.ndim == 1 or (lens.ndim == 2 and queries is not None and lens.shape[1] == queries)
    if not ok or (batch is not None and lens.shape[0] != batch):
        fail(name, f"lengths of shape {expected}", value, where)
    if maximum is not None and lens.size and bool(((lens < 0) | (lens > maximum)).any()):
        fail(name, f"lengths in [0, {maximum}]", value, where, received=values_text(lens))
    return lens
