"""minattn.checkpoint and the optimizers' state_dict / load_state_dict.

  * round trip: parameters, SGD's velocity, Adam's m, v, step count, lr and hyperparameters come back bit for bit,
    and the next training step from the restored pair equals the next step from the original;
  * extra metadata (step, config, RNG states as JSON) round-trips, and ``rng_state`` / ``set_rng_state`` replay both
    of autograd's random streams;
  * atomic writes: numpy.savez failing half-way (or the process dying half-way) leaves the previous checkpoint intact
    and loadable, and no temporary file behind (after an exception); flush + fsync happen before the rename;
  * bad files: truncated, corrupted, a text file, a .npy, a foreign .npz, a checkpoint of another model or
    optimizer — each a ValueError naming the path, with the model AND the optimizer unchanged;
  * loading never unpickles: numpy.load is called with allow_pickle=False, and a file carrying a pickled object
    whose unpickling would run code is refused without running it.
"""
import io
import json
import os
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from autograd import Tensor, backend
from minattn import SGD, Adam, Linear, Module, ModuleList, checkpoint, manual_seed
from minattn import functional as F
from tests.conftest import host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Net(Module):
    """Two Linear layers and a frozen-by-default third (its parameters get no gradient: SGD velocity stays None)."""

    def __init__(self, width=4, dtype=None):
        super().__init__()
        self.blocks = ModuleList([Linear(3, width, dtype=dtype), Linear(width, 2, dtype=dtype)])
        self.unused = Linear(2, 2, dtype=dtype)

    def forward(self, x):
        return self.blocks[1](self.blocks[0](x).relu())


def train_steps(net, optimizer, steps, seed=0):
    rng = np.random.default_rng(seed)
    dtype = net.blocks[0].weight.dtype
    for _ in range(steps):
        x = Tensor(backend.asarray(rng.standard_normal((5, 3)).astype(dtype)))
        target = backend.asarray(rng.integers(0, 2, 5))
        loss = F.cross_entropy(net(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def params_of(net):
    return {name: host(p).copy() for name, p in net.named_parameters()}


def optimizer_snapshot(optimizer):
    state = optimizer.state_dict()
    return {k: ([None if a is None else a.copy() for a in v] if k in optimizer.buffers else v)
            for k, v in state.items()}


def assert_same_params(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def assert_same_optimizer_state(a, b):
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], list) and a[key] and (a[key][0] is None or hasattr(a[key][0], "shape")):
            assert len(a[key]) == len(b[key])
            for x, y in zip(a[key], b[key]):
                assert (x is None) == (y is None), key
                if x is not None:
                    assert x.dtype == y.dtype
                    np.testing.assert_array_equal(x, y, err_msg=key)
        else:
            assert a[key] == b[key], key


def make(optimizer_name, seed, dtype=None):
    manual_seed(seed)
    net = Net(dtype=dtype)
    if optimizer_name == "sgd":
        return net, SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    return net, Adam(net.parameters(), lr=0.01, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.001)


# --- round trip ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", [None, "float64"])
def test_round_trip_restores_model_and_optimizer_bit_for_bit(tmp_path, optimizer_name, dtype):
    net, opt = make(optimizer_name, 1, dtype)
    train_steps(net, opt, 3)
    path = tmp_path / "ckpt.npz"
    assert checkpoint.save(path, net, opt, step=3) == str(path)

    other, other_opt = make(optimizer_name, 2, dtype)              # different initial weights and fresh state
    other_opt.lr = 123.0
    extra = checkpoint.load(path, other, other_opt)
    assert extra == {"step": 3}
    assert_same_params(params_of(net), params_of(other))
    assert_same_optimizer_state(optimizer_snapshot(opt), optimizer_snapshot(other_opt))
    assert other_opt.step_count == 3 and other_opt.lr == opt.lr
    if optimizer_name == "sgd":
        assert other_opt.velocity[-1] is None                      # the unused layer never got a velocity

    train_steps(net, opt, 2, seed=7)                               # the same next steps from both
    train_steps(other, other_opt, 2, seed=7)
    assert_same_params(params_of(net), params_of(other))


def test_restored_buffers_are_copies_not_views_of_the_state(tmp_path):
    net, opt = make("adam", 1)
    train_steps(net, opt, 1)
    state = opt.state_dict()
    other, other_opt = make("adam", 2)
    other_opt.load_state_dict(state)
    state["m"][0][...] = 42.0                                      # editing the dict afterwards changes nothing
    assert not np.any(host(other_opt.m[0]) == 42.0)
    assert not np.shares_memory(host(other_opt.v[0]), state["v"][0])


def test_state_dict_is_a_host_copy():
    net, opt = make("adam", 1)
    train_steps(net, opt, 1)
    state = opt.state_dict()
    assert state["type"] == "Adam" and state["step_count"] == 1 and state["betas"] == [0.8, 0.95]
    assert all(type(a) is np.ndarray for a in state["m"] + state["v"])
    state["v"][0][...] = -1.0
    assert np.all(host(opt.v[0]) >= 0)


def test_extra_metadata_round_trips(tmp_path):
    net, opt = make("adam", 1)
    data_rng = np.random.default_rng([5, 1])
    data_rng.random(3)
    extra = {"step": 1200, "config": {"embed_dim": 64, "task": "copy", "dropout": 0.1, "qk_norm": False,
                                      "num_heads_v": None},
             "data_rng": data_rng.bit_generator.state, "rng": checkpoint.rng_state(),
             "loss_curve": {"step": [10, 20], "loss": [2.7725887222397811, 0.1 + 0.2]}, "note": "Grüße ∑"}
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, net, opt, **extra)
    assert checkpoint.load(path, net, opt) == extra                # floats exact, 128-bit ints exact, unicode
    assert checkpoint.read_extra(path) == extra
    restored = np.random.default_rng(0)
    restored.bit_generator.state = checkpoint.read_extra(path)["data_rng"]
    np.testing.assert_array_equal(restored.random(4), data_rng.random(4))


def test_rng_state_replays_both_of_autograds_streams():
    manual_seed(11)
    backend.host_rng().random(5)
    state = json.loads(json.dumps(checkpoint.rng_state()))        # as it comes back from a checkpoint
    first = (backend.host_rng().random(4), host(backend.random_uniform((4,))))
    manual_seed(99)                                                # anything in between
    checkpoint.set_rng_state(state)
    second = (backend.host_rng().random(4), host(backend.random_uniform((4,))))
    np.testing.assert_array_equal(first[0], second[0])
    if backend.BACKEND == "numpy":
        np.testing.assert_array_equal(first[1], second[1])
    else:
        assert state["device"] is None                            # cuRAND's state is not captured (documented)


def test_save_writes_exactly_the_path_given(tmp_path):
    net, _ = make("sgd", 1)
    checkpoint.save(tmp_path / "model.ckpt", net)                  # no ".npz" appended, unlike numpy.savez(path)
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt"]
    checkpoint.load(tmp_path / "model.ckpt", net)


def test_file_layout_is_documented_names(tmp_path):
    net, opt = make("adam", 1)
    checkpoint.save(tmp_path / "c.npz", net, opt, step=1)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        names = set(f.files)
        assert json.loads(str(f["__minattn__"])) == {"format": "minattn-checkpoint", "version": 1}
        assert all(f[name].dtype != object for name in names)      # nothing pickled
    assert {"model/" + n for n, _ in net.named_parameters()} <= names
    assert {"optimizer/state", "extra", "optimizer/m/0", "optimizer/v/5"} <= names


# --- atomic writes ---------------------------------------------------------------------------------------------------
def failing_savez(written_fraction, error):
    """A numpy.savez that writes the first ``written_fraction`` of the real file, then raises ``error``."""
    real = np.savez

    def savez(file, *args, **kwds):
        buffer = io.BytesIO()
        real(buffer, *args, **kwds)
        data = buffer.getvalue()
        file.write(data[: int(len(data) * written_fraction)])
        file.flush()
        raise error

    return savez


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
def test_a_write_failing_midway_leaves_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch, error, fraction):
    net, opt = make("adam", 1)
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, net, opt, step=1)
    before_bytes = path.read_bytes()
    before_params = params_of(net)
    train_steps(net, opt, 2)                                       # the model moves on; the next save fails
    monkeypatch.setattr(np, "savez", failing_savez(fraction, error))
    with pytest.raises(type(error)):
        checkpoint.save(path, net, opt, step=3)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["checkpoint.npz"]              # no temporary file left behind
    assert path.read_bytes() == before_bytes                       # the old checkpoint, byte for byte
    fresh, fresh_opt = make("adam", 5)
    assert checkpoint.load(path, fresh, fresh_opt) == {"step": 1}
    assert_same_params(params_of(fresh), before_params)


def test_a_process_killed_midway_leaves_the_old_checkpoint_loadable(tmp_path):
    """A real crash: the child writes half the file and dies (os._exit: no cleanup, no finally)."""
    net, opt = make("adam", 1)
    path = tmp_path / "checkpoint.npz"
    checkpoint.save(path, net, opt, step=1)
    before = path.read_bytes()
    child = (
        "import io, os, numpy as np\n"
        "from minattn import Linear, checkpoint\n"
        "real = np.savez\n"
        "def dying(file, *a, **k):\n"
        "    b = io.BytesIO(); real(b, *a, **k); file.write(b.getvalue()[:len(b.getvalue()) // 2]); file.flush()\n"
        "    os._exit(3)\n"
        "np.savez = dying\n"
        f"checkpoint.save({str(path)!r}, Linear(3, 4), step=2)\n"
    )
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert path.read_bytes() == before
    leftovers = [n for n in os.listdir(tmp_path) if n != "checkpoint.npz"]
    assert all(n.startswith(".checkpoint.npz.") and n.endswith(".tmp") for n in leftovers)   # ignored by load
    assert checkpoint.load(path, *make("adam", 2)) == {"step": 1}


def test_bytes_are_flushed_and_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.getsize(a))),
                                                      real_replace(a, b))[1])
    net, opt = make("sgd", 1)
    checkpoint.save(tmp_path / "c.npz", net, opt)
    assert events[0] == "fsync" and events[1][0] == "replace"      # data on disk, then the atomic rename
    assert events[1][1] == os.path.getsize(tmp_path / "c.npz") > 0


@pytest.mark.skipif(os.name != "posix", reason="file modes are a POSIX notion")
def test_the_checkpoint_gets_the_permissions_of_an_ordinary_file(tmp_path):
    """Not tempfile.mkstemp's 0o600: a checkpoint others may read is as readable as any file the user writes."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    net, _ = make("sgd", 1)
    checkpoint.save(tmp_path / "c.npz", net)
    assert stat.S_IMODE(os.stat(tmp_path / "c.npz").st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_save_checks_its_inputs_before_writing_anything(tmp_path):
    net, opt = make("adam", 1)
    path = tmp_path / "c.npz"
    checkpoint.save(path, net, opt, step=1)
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"save: weights must be JSON-serialisable"):
        checkpoint.save(path, net, opt, weights=np.ones(3))        # an array: not JSON (use .tolist())
    stranger = Adam([Tensor(np.ones(3, dtype=np.float32), requires_grad=True)])
    with pytest.raises(ValueError, match=r"optimizer must be an optimizer over parameters of the model.*\[\d+\] "
                                         r"\(by position\) are not the model's"):
        checkpoint.save(path, net, stranger)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.npz"]


# --- bad files: ValueError naming the path, nothing changed ----------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    """A good checkpoint of a trained Net + Adam, and a different Net + Adam (with gradients) to load into."""
    net, opt = make("adam", 1)
    train_steps(net, opt, 2)
    path = tmp_path / "good.npz"
    checkpoint.save(path, net, opt, step=2)
    target, target_opt = make("adam", 2)
    train_steps(target, target_opt, 1, seed=3)
    return path, target, target_opt


def assert_load_refused(path, model, optimizer, pattern):
    """load raises ValueError naming ``path`` and matching ``pattern``; model, grads and optimizer unchanged."""
    before = (params_of(model), {n: None if p.grad is None else host(p.grad).copy()
                                 for n, p in model.named_parameters()}, optimizer_snapshot(optimizer))
    with pytest.raises(ValueError, match=pattern) as err:
        checkpoint.load(path, model, optimizer)
    assert str(path) in str(err.value)
    assert_same_params(params_of(model), before[0])
    for name, p in model.named_parameters():
        g = before[1][name]
        assert (p.grad is None) == (g is None)
        if g is not None:
            np.testing.assert_array_equal(host(p.grad), g)
    assert_same_optimizer_state(optimizer_snapshot(optimizer), before[2])
    return err.value


@pytest.mark.parametrize("cut_at", [0, 4, 40, 0.5, -22, -1])
def test_truncated_file(saved, tmp_path, cut_at):
    path, model, opt = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: int(len(data) * cut_at) if isinstance(cut_at, float) else cut_at])
    assert_load_refused(cut, model, opt, r"not a (readable )?minattn checkpoint|truncated or corrupt")


def test_corrupted_bytes_inside_an_array(saved, tmp_path):
    path, model, opt = saved
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model/blocks.0.weight.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 128 + 4   # past the .npy header
    data[start:start + 4] = bytes(b ^ 0xFF for b in data[start:start + 4])             # flip bits in the weights
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    assert_load_refused(bad, model, opt, r"truncated or corrupt.*CRC")


@pytest.mark.parametrize("kind", ["text", "empty", "npy", "pickle", "foreign_npz", "npz_with_bad_marker"])
def test_foreign_files(saved, tmp_path, kind):
    _, model, opt = saved
    path = tmp_path / f"foreign.{kind}"
    if kind == "text":
        path.write_text("step,loss\n1,2.77\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    elif kind == "pickle":
        import pickle
        path.write_bytes(pickle.dumps({"model/blocks.0.weight": np.ones((4, 3))}))
    elif kind == "foreign_npz":                                    # a .npz with the right shapes but not ours
        with open(path, "wb") as f:
            np.savez(f, **{n: a for n, a in model.state_dict().items()})
    else:
        with open(path, "wb") as f:
            np.savez(f, __minattn__=np.array("{not json"))
    assert_load_refused(path, model, opt, r"not a minattn checkpoint")


def test_a_checkpoint_of_another_model(saved, tmp_path):
    _, model, opt = saved
    manual_seed(3)
    wider = Net(width=5)
    path = tmp_path / "wider.npz"
    checkpoint.save(path, wider, Adam(wider.parameters()))
    err = assert_load_refused(path, model, opt, r"does not fit")
    assert "blocks.0.weight" in str(err) and "(4, 3)" in str(err) and "(5, 3)" in str(err)


def test_a_checkpoint_of_another_dtype(saved, tmp_path):
    _, model, opt = saved
    wide, wide_opt = make("adam", 3, dtype="float64")
    path = tmp_path / "f64.npz"
    checkpoint.save(path, wide, wide_opt)
    assert_load_refused(path, model, opt, r"does not fit.*float32.*float64")


def test_model_fits_but_optimizer_does_not_leaves_both_unchanged(saved, tmp_path):
    """The model part alone would load: it must not, since the optimizer part is refused."""
    path, model, _ = saved
    sgd = SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, sgd, 1)
    assert_load_refused(path, model, sgd, r"state must be the state of an optimizer of this one's type, SGD, got the "
                                          r"state of an optimizer of type Adam")


def test_optimizer_over_other_parameters(saved):
    path, model, _ = saved
    subset = Adam(list(model.parameters())[:2])
    assert_load_refused(path, model, subset, r"saved for parameters")


def test_checkpoint_without_optimizer_state(saved, tmp_path):
    _, model, opt = saved
    path = tmp_path / "model_only.npz"
    checkpoint.save(path, model)
    assert_load_refused(path, model, opt, r"holds no optimizer state")
    assert checkpoint.load(path, model) == {}                      # without an optimizer it loads


def test_missing_file_is_file_not_found(tmp_path):
    net, opt = make("adam", 1)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "nope.npz", net, opt)


# --- no pickle, ever -------------------------------------------------------------------------------------------------
EXECUTED = []


def _mark_executed():
    EXECUTED.append(True)
    return "pwned"


class Payload:
    """Unpickling this calls _mark_executed: the code a malicious checkpoint would smuggle in."""

    def __reduce__(self):
        return (_mark_executed, ())


def test_load_calls_numpy_load_with_allow_pickle_false(saved, monkeypatch):
    path, model, opt = saved
    calls = []
    real = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    checkpoint.load(path, model, opt)
    checkpoint.read_extra(path)
    assert calls and all(kwargs.get("allow_pickle") is False for kwargs in calls)


def test_a_pickled_object_array_is_refused_without_running_it(saved, tmp_path):
    path, model, opt = saved
    evil = tmp_path / "evil.npz"
    with open(evil, "wb") as f:                                    # our marker and entries, plus a pickled object
        with np.load(path, allow_pickle=False) as good:
            entries = {name: good[name] for name in good.files}
        entries["extra"] = np.array([Payload()], dtype=object)
        np.savez(f, **entries)
    EXECUTED.clear()
    assert_load_refused(evil, model, opt, r"truncated or corrupt.*allow_pickle|pickled")
    assert EXECUTED == []


def test_damaged_optimizer_metadata_is_a_value_error_naming_the_path(tmp_path):
    """A file that passes the format check but whose optimizer JSON is malformed: ValueError, nothing changed."""
    from minattn import Adam, Linear, load, save
    manual_seed(0)
    model = Linear(2, 2)
    optimizer = Adam(model.parameters())
    path = tmp_path / "damaged.npz"
    save(path, model, optimizer)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["optimizer/state"]))
    meta["buffers"] = [1]
    arrays["optimizer/state"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")[:20]):
        load(path, model, optimizer)
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.numpy(), before[n])
