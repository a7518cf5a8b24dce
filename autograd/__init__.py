"""autograd: a small reverse-mode automatic differentiation engine on NumPy or CuPy.

Read in this order — the engine core first: backend.py (which array library), tensor.py (Tensor and backward),
function.py (how an operation declares its backward), ops.py (the primitives and their derivatives), gradcheck.py
(how we know they are right), parallel.py (how a batch is split across the CPU cores).

API conveniences, out of the learner's path: dtypes.py (the dtype policy: ``as_data``, Python floats → float32,
``lift``, no silent mixing of float dtypes), api.py (the checked public functions ``add`` … ``matmul``),
tensor_methods.py (Tensor's operators and methods: ``x + y``, ``x.sum()``, ``x.T``, ``x.shape`` ...) and grad_mode.py
(``no_grad``).
"""
from autograd.backend import BACKEND, xp, to_numpy, asarray, scatter_add, manual_seed
from autograd.grad_mode import no_grad, is_grad_enabled
from autograd.tensor import Tensor
from autograd.function import Function, Context
from autograd.ops import sum_to
from autograd.api import (add, sub, mul, div, neg, pow, exp, log, tanh, relu, sum, mean, max, reshape, permute,
                          transpose, getitem, concatenate, stack, where, masked_fill, matmul)
from autograd import tensor_methods  # noqa: F401  (attaches x + y, x.sum(), x.T, x.shape ... to Tensor)
from autograd.gradcheck import gradcheck, GradcheckError
from autograd.parallel import get_num_threads, set_num_threads

__all__ = ["get_num_threads", "set_num_threads", "BACKEND", "xp", "to_numpy", "asarray", "scatter_add", "manual_seed",
           "Tensor", "no_grad", "is_grad_enabled", "Function", "Context", "sum_to", "add", "sub", "mul", "div", "neg",
           "pow", "exp", "log", "tanh", "relu", "sum", "mean", "max", "reshape", "permute", "transpose", "getitem",
           "concatenate", "stack", "where", "masked_fill", "matmul", "gradcheck", "GradcheckError"]
