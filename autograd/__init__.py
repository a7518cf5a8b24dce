"""autograd: a small reverse-mode automatic differentiation engine on NumPy or CuPy.

Read in this order: backend.py (which array library), tensor.py (Tensor and backward), function.py (how an operation
declares its backward), ops.py (the primitives and their derivatives), gradcheck.py (how we know they are right),
parallel.py (how a batch is split across the CPU cores).
"""
from autograd.backend import BACKEND, xp, to_numpy, asarray, scatter_add, manual_seed
from autograd.tensor import Tensor, no_grad, is_grad_enabled
from autograd.function import Function, Context
from autograd.ops import (sum_to, add, sub, mul, div, neg, pow, exp, log, tanh, relu, sum, mean, max, reshape,
                          permute, transpose, getitem, concatenate, stack, where, masked_fill, matmul)
from autograd.gradcheck import gradcheck, GradcheckError
from autograd.parallel import get_num_threads, set_num_threads

__all__ = ["get_num_threads", "set_num_threads", "BACKEND", "xp", "to_numpy", "asarray", "scatter_add", "manual_seed", "Tensor", "no_grad",
           "is_grad_enabled", "Function", "Context", "sum_to", "add", "sub", "mul", "div", "neg", "exp", "log",
           "tanh", "relu", "mean", "reshape", "permute", "transpose", "getitem", "concatenate", "stack",
           "where", "masked_fill", "matmul", "gradcheck", "GradcheckError"]
