"""minattn: attention, from scratch, on the ``autograd`` engine — every gradient written by hand and checked.

Read in this order: module.py (Module, Parameter), fused/ (each operation with its backward), functional.py (the
checked public functions), masks.py, layers.py, attention.py (MultiHeadAttention), talking_heads.py, additive.py,
transformer.py, optim.py, tasks.py.

Threads (NumPy backend): attention, Linear and flash attention split their batch over ``get_num_threads()`` threads
(default: every core), and importing minattn holds NumPy's BLAS to ONE thread for the whole process, your own NumPy
code included — ``set_num_threads(1)`` gives it back. Why: autograd/parallel.py.
"""
from autograd import Tensor, no_grad, manual_seed, to_numpy, asarray, BACKEND, get_num_threads, set_num_threads
from minattn import functional
from minattn.module import Module, Parameter, ModuleList
from minattn.layers import Linear, Embedding, LayerNorm, Dropout, PositionalEncoding, PositionWiseFFN
from minattn.attention import MultiHeadAttention
from minattn.additive import AdditiveAttention
from minattn.talking_heads import TalkingHeadsAttention
from minattn.transformer import Transformer
from minattn.optim import SGD, Adam, WarmupSchedule, clip_grad_norm_
from minattn.checkpoint import save, load

__all__ = ["get_num_threads", "set_num_threads", "Tensor", "no_grad", "manual_seed", "to_numpy", "asarray", "BACKEND", "functional", "Module", "Parameter",
           "ModuleList", "Linear", "Embedding", "LayerNorm", "Dropout", "PositionalEncoding", "PositionWiseFFN",
           "MultiHeadAttention", "AdditiveAttention", "TalkingHeadsAttention", "Transformer", "SGD", "Adam",
           "WarmupSchedule", "clip_grad_norm_", "save", "load"]
