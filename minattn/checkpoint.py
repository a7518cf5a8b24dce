"""Checkpoints: a model, its optimizer and the run's metadata in one ``.npz`` file — written atomically, read safely.

    checkpoint.save("runs/x/checkpoint.npz", model, optimizer, step=1200, config={...}, rng=checkpoint.rng_state())
    extra = checkpoint.load("runs/x/checkpoint.npz", model, optimizer)      # {"step": 1200, "config": {...}, ...}

What the file holds (``numpy.savez``, one zip member per entry; names are ``numpy.load(path).files``):

    "__minattn__"               JSON {"format": "minattn-checkpoint", "version": 1}: what tells ours from other .npz
    "model/<dotted name>"       each parameter, as ``Module.state_dict()`` names it, in its own dtype
    "optimizer/state"           JSON: the optimizer's type, lr, step count and hyperparameters, the model names of
                                its parameters (in its order) and which buffer entries exist
    "optimizer/<buffer>/<i>"    SGD's velocity or Adam's m and v for parameter i
    "extra"                     JSON of the keyword arguments given to ``save`` (step, config, RNG states, ...)

Safety, by construction:
  * Atomic write: the file is written to a temporary file in the same folder, flushed and ``os.fsync``-ed, then
    ``os.replace``-d over ``path`` — one rename, atomic on POSIX and Windows. A crash or an error mid-write leaves
    the previous checkpoint as it was (an error also removes the temporary file; a killed process may leave one
    ``.<name>.*.tmp`` beside it, which nothing reads).
  * Loading never executes code: ``numpy.load(..., allow_pickle=False)``; metadata is JSON in string arrays, never
    pickled objects. A file with a pickled (object) array is refused.
  * Loading checks everything before changing anything: a truncated or foreign file, or a checkpoint of another
    model or optimizer, raises ValueError naming the path, and the model and optimizer are left unchanged.

Exact resume also needs the random streams: ``rng_state()`` captures ``autograd.backend``'s generators (the host one
that initialises parameters, the device one that draws dropout masks) as JSON-able dicts (numpy's
``Generator.bit_generator.state``) and ``set_rng_state`` puts them back. On CuPy the device stream (cuRAND) is not
captured, so a resumed CuPy run with dropout draws different masks.
"""
import json
import os
import secrets

from autograd import backend, checks
from autograd.backend import host as np
from minattn.module import Module
from minattn.optim import Optimizer

FORMAT = {"format": "minattn-checkpoint", "version": 1}
MARKER = "__minattn__"
ZIP_MAGIC = b"PK\x03\x04"   # how every .npz (a zip archive) begins


# --- writing ---------------------------------------------------------------------------------------------------------
def save(path, model, optimizer=None, **extra):
    """Write ``model`` (and ``optimizer``'s state, and ``extra``) to ``path`` atomically; returns ``path``.

    Args:
        path: the file to write (used as given: no ``.npz`` is appended). Its folder must exist.
        model: a ``Module``; its ``state_dict()`` is saved.
        optimizer: None, or an ``SGD`` / ``Adam`` over parameters of ``model`` (saved by their names in the model, so
            loading checks the optimizer belongs to the same parameters).
        extra: JSON-serialisable metadata (numbers, strings, lists, dicts, None), returned by ``load`` — as JSON
            returns it: floats and ints exactly, tuples as lists, dict keys as strings.
    Raises (before anything is written): TypeError naming an ``extra`` entry JSON cannot hold, or for a path,
    model or optimizer of the wrong type; ValueError if the optimizer holds a parameter that is not the model's.
    OSError from the file system (the old file stays intact).
    """
    path = _check_arguments("save", path, model, optimizer)
    arrays = {MARKER: _json_array(FORMAT)}
    for name, value in model.state_dict().items():
        arrays["model/" + name] = value
    if optimizer is not None:
        arrays.update(_optimizer_arrays(model, optimizer))
    for key, value in extra.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            checks.fail(key, "JSON-serialisable (numbers, strings, lists and dicts, e.g. array.tolist())", value,
                        "save", TypeError, received=f"{checks.describe(value)} ({err})")
    arrays["extra"] = _json_array(extra)
    _write_atomically(path, arrays)
    return path


def _optimizer_arrays(model, optimizer):
    names = {id(p): name for name, p in model.named_parameters()}
    strangers = [i for i, p in enumerate(optimizer.params) if id(p) not in names]
    if strangers:
        checks.fail("optimizer", "an optimizer over parameters of the model (the checkpoint matches them up by name)",
                    optimizer, "save", received=f"an optimizer whose parameters {strangers} (by position) are not "
                    "the model's")
    state = optimizer.state_dict()
    meta = {key: value for key, value in state.items() if key not in optimizer.buffers}
    meta["param_names"] = [names[id(p)] for p in optimizer.params]
    meta["buffers"] = {name: [a is not None for a in state[name]] for name in optimizer.buffers}
    arrays = {"optimizer/state": _json_array(meta)}
    for name in optimizer.buffers:
        for i, array in enumerate(state[name]):
            if array is not None:
                arrays[f"optimizer/{name}/{i}"] = array
    return arrays


def _write_atomically(path, arrays):
    """Temporary file in the same folder → savez → flush → fsync → os.replace; the temporary file never survives an
    exception."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temporary(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:          # KeyboardInterrupt included: never leave a half-written temporary file behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)


def _create_temporary(folder, name):
    """A new, empty ``.<name>.<random>.tmp`` in ``folder``, opened for writing: (fd, path).

    Created with O_EXCL (never an existing file) and mode 0o666 filtered by the umask, so the checkpoint gets the
    permissions of any file the user writes (tempfile.mkstemp would make it 0o600).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {os.path.join(folder, name)}")


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_array(value):
    """A 0-d unicode array holding ``value`` as JSON (no pickling needed to read it back)."""
    return np.array(json.dumps(value))


# --- reading ---------------------------------------------------------------------------------------------------------
def load(path, model, optimizer=None):
    """Restore ``model`` (and ``optimizer``) from the checkpoint at ``path``; returns the ``extra`` dict of ``save``.

    Everything is read and checked before anything is written. Raises FileNotFoundError for a missing file and
    ValueError naming ``path`` when the file is truncated or corrupt, is not a minattn checkpoint, does not fit the
    model (missing, unexpected or misshaped parameters), or holds no or mismatching optimizer state; in every such
    case the model and the optimizer are unchanged. TypeError for a path, model or optimizer of the wrong type.
    """
    path = _check_arguments("load", path, model, optimizer)
    arrays = _read(path)
    extra = _extra(path, arrays)
    model_state = {name[len("model/"):]: a for name, a in arrays.items() if name.startswith("model/")}
    _check_model_fits(path, model, model_state)     # first, so a misfit is reported by parameter name
    try:
        optimizer_state = _optimizer_state(path, arrays, model, optimizer) if optimizer is not None else None
        checked = optimizer._checked_state(optimizer_state) if optimizer is not None else None
        model.load_state_dict(model_state)          # checks every name, shape and dtype before writing any
    except (AttributeError, KeyError, TypeError, ValueError) as err:   # a damaged file's metadata included
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise ValueError(f"{path}: the checkpoint does not fit: {message}") from err
    if optimizer is not None:
        optimizer._apply_state(checked)             # checked above: cannot fail
    return extra


def _check_arguments(where, path, model, optimizer):
    """``path`` as a str, after checking it is a path and model / optimizer are a Module / an Optimizer (or None)."""
    checks.instance("path", path, (str, bytes, os.PathLike), "a path (str or os.PathLike)", where)
    checks.instance("model", model, Module, "a minattn Module", where)
    if optimizer is not None:
        checks.instance("optimizer", optimizer, Optimizer, "an Optimizer (SGD, Adam) or None", where)
    return os.fspath(path)


def read_extra(path):
    """The ``extra`` metadata of the checkpoint at ``path`` without touching any model (e.g. to compare configs)."""
    checks.instance("path", path, (str, bytes, os.PathLike), "a path (str or os.PathLike)", "read_extra")
    path = os.fspath(path)
    return _extra(path, _read(path))


def _read(path):
    """Every entry of the file, read into memory; ValueError naming ``path`` if that fails or it is not ours."""
    # We open the file ourselves and hand numpy the open file: numpy.load(path) leaks its handle when the zip
    # directory is unreadable (a truncated file), and the `with` closes it on every path.
    with open(path, "rb") as f:         # FileNotFoundError as it is: the clearest message there is
        magic = f.read(len(ZIP_MAGIC))
        if magic != ZIP_MAGIC:          # a text file, a .npy, a pickle: refuse before numpy guesses what it is
            raise ValueError(f"{path} is not a minattn checkpoint (not a .npz file: it starts with {magic!r})")
        f.seek(0)
        try:
            archive = np.load(f, allow_pickle=False)
        except Exception as err:        # BadZipFile: the zip directory at the end of the file is cut off or damaged
            raise ValueError(f"{path} is not a readable minattn checkpoint, truncated or not a .npz "
                             f"({type(err).__name__}: {err})") from err
        try:
            arrays = {name: archive[name] for name in archive.files}
        except Exception as err:        # a member cut short or corrupted (zlib / CRC errors), or a pickled array
            raise ValueError(f"{path} is truncated or corrupt ({type(err).__name__}: {err})") from err
        finally:
            archive.close()
    not_arrays = sorted(name for name, a in arrays.items() if not isinstance(a, np.ndarray))
    if not_arrays:                      # numpy.load returns a member that is not a .npy file as raw bytes
        raise ValueError(f"{path} is not a minattn checkpoint: its entries {not_arrays} are not arrays (.npy)")
    marker = arrays.get(MARKER)
    try:
        ours = marker is not None and json.loads(str(marker)) == FORMAT
    except ValueError:
        ours = False
    if not ours:
        raise ValueError(f"{path} is not a minattn checkpoint version {FORMAT['version']} (its entries: "
                         f"{sorted(arrays)[:8]}{' ...' if len(arrays) > 8 else ''})")
    return arrays


def _json_entry(path, arrays, key):
    if key not in arrays:
        raise ValueError(f"{path}: the checkpoint has no {key!r} entry")
    try:
        return json.loads(str(arrays[key]))
    except ValueError as err:
        raise ValueError(f"{path}: the {key!r} entry is not valid JSON ({err})") from err


def _extra(path, arrays):
    extra = _json_entry(path, arrays, "extra")
    if not isinstance(extra, dict):
        raise ValueError(f"{path}: the 'extra' entry is not a JSON object")
    return extra


def _check_model_fits(path, model, state):
    """ValueError naming ``path`` and every missing, unexpected or misshaped parameter (what load_state_dict checks,
    done here first so that the optimizer's state is never checked against a model it cannot belong to)."""
    own = dict(model.named_parameters())
    problems = [f"missing {name}" for name in own if name not in state]
    problems += [f"unexpected {name}" for name in state if name not in own]
    problems += [f"{name}: expected {own[name].shape} {own[name].dtype}, got {a.shape} {a.dtype}"
                 for name, a in state.items() if name in own and (a.shape != own[name].shape
                                                                   or a.dtype != own[name].dtype)]
    if problems:
        raise ValueError(f"{path}: the checkpoint does not fit the model: " + "; ".join(problems))


def _optimizer_state(path, arrays, model, optimizer):
    """The optimizer's ``state_dict`` rebuilt from the file, after checking it is for these very parameters."""
    if "optimizer/state" not in arrays:
        raise ValueError(f"{path} holds no optimizer state (it was saved without an optimizer)")
    meta = _json_entry(path, arrays, "optimizer/state")
    names = {id(p): name for name, p in model.named_parameters()}
    ours = [names.get(id(p), f"<not a parameter of the model, position {i}>") for i, p in enumerate(optimizer.params)]
    saved = meta.pop("param_names", None)
    if saved != ours:
        raise ValueError(f"{path}: the optimizer was saved for parameters {saved}, this one holds {ours}")
    present = meta.pop("buffers", {})
    state = dict(meta)
    for name, flags in present.items():
        state[name] = [arrays.get(f"optimizer/{name}/{i}") if flag else None for i, flag in enumerate(flags)]
        if any(flag and a is None for flag, a in zip(flags, state[name])):
            raise ValueError(f"{path}: optimizer buffer {name!r} is missing entries")
    return state


# --- random streams --------------------------------------------------------------------------------------------------
def rng_state():
    """The states of ``autograd.backend``'s generators: {"host": ..., "device": ... or None on CuPy}, JSON-able."""
    return {"host": backend.host_rng().bit_generator.state,
            "device": backend.device_rng().bit_generator.state if backend.BACKEND == "numpy" else None}


def set_rng_state(state):
    """Put back what ``rng_state`` returned (the device stream only on NumPy, where it was captured). TypeError /
    ValueError, changing neither stream, unless ``state`` is such a dict."""
    checks.instance("state", state, dict, "a dict from rng_state()", "set_rng_state")
    if "host" not in state:
        checks.fail("state", "a dict from rng_state() (with a 'host' entry)", state, "set_rng_state")
    device = state.get("device") is not None and backend.BACKEND == "numpy"
    for name in ("host", "device") if device else ("host",):
        try:                           # each state tried on a scratch generator first: a bad one changes nothing
            backend.new_host_rng(0).bit_generator.state = state[name]
        except (TypeError, ValueError, KeyError) as err:
            checks.fail(f"state[{name!r}]", "a generator state from rng_state()", state[name], "set_rng_state",
                        received=f"{checks.describe(state[name])} ({err})")
    backend.host_rng().bit_generator.state = state["host"]
    if device:
        backend.device_rng().bit_generator.state = state["device"]
