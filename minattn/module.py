"""Module and Parameter: the containers of a model, as PyTorch's ``nn.Module`` and ``nn.Parameter``.

Assigning a Parameter or a Module to an attribute registers it (``self.W_q = Linear(...)``), so ``parameters()``
finds every weight of a model, ``state_dict()`` names them by their attribute path ("encoder.blocks.0.attention.W_q.
weight"), and ``train()`` / ``eval()`` reach every submodule.
"""
from autograd import backend, checks
from autograd.tensor import Tensor, as_data


class Parameter(Tensor):
    """A Tensor that is a model's weight: ``requires_grad=True``, found by ``Module.parameters()``, and owning its
    array (``data`` is copied, so an optimizer's in-place update never reaches the array it was made from)."""

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)
        if self.data is data or (isinstance(data, Tensor) and self.data is data.data):
            self.data = self.data.copy()   # optimizers update in place: never write into the caller's array


class Module:
    """Base class of layers and models. Subclasses set attributes in ``__init__`` and define ``forward``.

    ``module(*args)`` calls ``forward``. ``training`` is True after construction and ``train()``, False after
    ``eval()`` (dropout reads it).
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() before setting {name}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        """The computation; every subclass defines it."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def named_parameters(self, prefix=""):
        """Yield (dotted name, Parameter) for this module and every submodule, in registration order."""
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self):
        """Every Parameter of the model (each once)."""
        seen = set()
        for _, p in self.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                yield p

    def named_modules(self, prefix=""):
        """Yield (dotted name, Module) for this module ('' ) and every submodule."""
        yield prefix.rstrip("."), self
        for name, m in self._modules.items():
            yield from m.named_modules(prefix + name + ".")

    def zero_grad(self):
        """Forget every parameter's accumulated gradient (set ``.grad`` to None)."""
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        """Set training mode (dropout active) on this module and every submodule; returns self. TypeError, changing
        nothing, unless mode is True or False."""
        mode = checks.boolean("mode", mode, f"{type(self).__name__}.train")
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Set evaluation mode (dropout off); returns self."""
        return self.train(False)

    def num_parameters(self):
        """Total number of scalar weights."""
        return sum(p.size for p in self.parameters())

    def state_dict(self):
        """{dotted name: host NumPy copy of the parameter} — what ``numpy.savez`` can write."""
        return {name: backend.to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy arrays from ``state`` into the parameters of the same names.

        Everything is checked before anything is written: a missing or unexpected name, or a shape or dtype that
        differs, raises KeyError / ValueError listing every problem, and the model is left unchanged (TypeError if
        ``state`` is not a dict).
        """
        checks.instance("state", state, dict, "a dict {name: array} (from state_dict())",
                        f"{type(self).__name__}.load_state_dict")
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        arrays = {name: as_data(state[name]) for name in own}
        bad = [f"{n}: expected {own[n].shape} {own[n].dtype}, got {a.shape} {a.dtype}"
               for n, a in arrays.items() if a.shape != own[n].shape or a.dtype != own[n].dtype]
        if bad:
            raise ValueError("load_state_dict: " + "; ".join(bad))
        for name, p in own.items():
            p.data[...] = arrays[name]

    def __repr__(self):
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        return f"{type(self).__name__}({extra}\n" + "\n".join(lines) + "\n)"

    def extra_repr(self):
        """The constructor arguments shown by repr (subclasses override)."""
        return ""


class ModuleList(Module):
    """A list of modules, registered under their indices ("0", "1", ...) so their parameters are found."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        """Add ``module`` at the end (TypeError unless it is a Module)."""
        checks.instance("module", module, Module, "a minattn Module", "ModuleList.append")
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
