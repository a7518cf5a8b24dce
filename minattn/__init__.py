"""minattn: attention, from scratch, on the ``autograd`` engine — every gradient written by hand and checked.

Read in this order: module.py (Module, Parameter), fused/ (each operation with its backward), functional.py (the
checked public functions), masks.py, layers.py, attention.py (MultiHeadAttention), talking_heads.py, additive.py,
transformer.py, optim.py, tasks.py.

Threads (NumPy backend): every fused op (attention, Linear, LayerNorm, cross-entropy, talking heads, additive and
flash attention) cuts big work along its batch over ``get_num_threads()`` threads (default: the BLAS's thread count,
i.e. every core; small work runs on one). While a fused op runs, NumPy's BLAS is held to one thread, and it is given
its own count back right after: importing or using minattn leaves every thread pool as it was. See
autograd/parallel.py.
"""
from autograd import BACKEND, Tensor, asarray, get_num_threads, manual_seed, no_grad, set_num_threads, to_numpy
from minattn import functional
from minattn.additive import AdditiveAttention
from minattn.attention import MultiHeadAttention
from minattn.cache import KVCache
from minattn.checkpoint import load, save
from minattn.gpt import GPT
from minattn.layers import Dropout, Embedding, LayerNorm, Linear, PositionalEncoding, PositionWiseFFN
from minattn.module import Module, ModuleList, Parameter
from minattn.optim import SGD, Adam, CosineSchedule, WarmupSchedule, clip_grad_norm_
from minattn.talking_heads import TalkingHeadsAttention
from minattn.transformer import Transformer

__all__ = ["get_num_threads", "set_num_threads", "Tensor", "no_grad", "manual_seed", "to_numpy", "asarray", "BACKEND",
           "functional", "Module", "Parameter", "ModuleList", "Linear", "Embedding", "LayerNorm", "Dropout",
           "PositionalEncoding", "PositionWiseFFN", "MultiHeadAttention", "AdditiveAttention", "TalkingHeadsAttention",
           "Transformer", "GPT", "KVCache", "SGD", "Adam", "WarmupSchedule", "CosineSchedule", "clip_grad_norm_",
           "save", "load"]
