"""The building blocks: Linear, Embedding, LayerNorm, Dropout, PositionalEncoding, PositionWiseFFN.

Parameters are drawn from the host generator (``autograd.backend.host_rng``, seeded by ``minattn.manual_seed``) in
float64 and stored as float32 unless ``dtype`` says otherwise, so a seed gives the same model on NumPy and CuPy.
Every constructor checks all its arguments (``autograd.checks``) before it draws anything: a rejected size or
dtype leaves the random streams as they were.
"""
import math

from autograd import backend, checks
from autograd.backend import xp
from minattn import functional as F
from minattn.module import Module, Parameter


def parameter_dtype(dtype, where=None):
    """The dtype parameters are stored in: float32 for None, else ``dtype`` checked to be a floating dtype."""
    return backend.float32 if dtype is None else checks.floating_dtype("dtype", dtype, where)


class Linear(Module):
    """y = x Wᵀ + b (PyTorch's ``nn.Linear``).

    Args:
        in_features, out_features: sizes of the last axis in and out.
        bias: learn an additive bias b (out_features,).
        dtype: of the parameters; float32 by default.
    Shapes: x (..., in_features) → y (..., out_features); weight W (out_features, in_features).
    Init: W and b uniform in ±1/√in_features (PyTorch's default).
    Raises (constructor) TypeError / ValueError for sizes that are not ints >= 1, a non-bool bias or a non-float
    dtype; (call) ValueError if x does not end in in_features, TypeError if x's dtype is not the weight's.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        in_features = checks.positive_int("in_features", in_features, "Linear")
        out_features = checks.positive_int("out_features", out_features, "Linear")
        bias, dtype = checks.boolean("bias", bias, "Linear"), parameter_dtype(dtype, "Linear")
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        rng = backend.host_rng()
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)), dtype=dtype)
        self.bias = Parameter(rng.uniform(-bound, bound, (out_features,)), dtype=dtype) if bias else None

    def forward(self, x):
        """Apply the affine map (fused Function, see ``minattn.fused.linear``)."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        """The constructor arguments, for repr."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table: integer ids (any shape) → rows of ``weight`` (num_embeddings, embedding_dim).

    Init: N(0, 1), as PyTorch. Raises ValueError for an id outside [0, num_embeddings), TypeError for non-integers;
    (constructor) TypeError / ValueError for sizes that are not ints >= 1 or a non-float dtype.
    """

    def __init__(self, num_embeddings, embedding_dim, dtype=None):
        super().__init__()
        num_embeddings = checks.positive_int("num_embeddings", num_embeddings, "Embedding")
        embedding_dim = checks.positive_int("embedding_dim", embedding_dim, "Embedding")
        dtype = parameter_dtype(dtype, "Embedding")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(backend.host_rng().standard_normal((num_embeddings, embedding_dim)), dtype=dtype)

    def forward(self, ids):
        """ids (...) → (..., embedding_dim)."""
        return F.embedding(ids, self.weight)

    def extra_repr(self):
        """The constructor arguments, for repr."""
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalise the last axis to mean 0, variance 1, then scale by γ (``weight``) and shift by β (``bias``).

    Shapes: x (..., normalized_shape) → same. Init γ = 1, β = 0. Source: Ba et al. 2016; PyTorch ``nn.LayerNorm``.
    Raises TypeError / ValueError unless normalized_shape is an int >= 1, eps a finite number >= 0, dtype a float.
    """

    def __init__(self, normalized_shape, eps=1e-5, dtype=None):
        super().__init__()
        normalized_shape = checks.positive_int("normalized_shape", normalized_shape, "LayerNorm")
        eps = checks.nonnegative_float("eps", eps, "LayerNorm")
        dtype = parameter_dtype(dtype, "LayerNorm")
        self.normalized_shape, self.eps = normalized_shape, eps
        self.weight = Parameter(xp.ones(normalized_shape), dtype=dtype)
        self.bias = Parameter(xp.zeros(normalized_shape), dtype=dtype)

    def forward(self, x, residual=None):
        """LayerNorm(x), or LayerNorm(x + residual) in one node (fused Function, see ``minattn.fused.layer_norm``)."""
        return F.layer_norm(x, self.weight, self.bias, self.eps, residual=residual)

    def extra_repr(self):
        """The constructor arguments, for repr."""
        return f"{self.normalized_shape}, eps={self.eps}"


class Dropout(Module):
    """Zero each element with probability p and scale the rest by 1/(1 − p) in training; identity in eval()."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = checks.probability("p", p, "Dropout")

    def forward(self, x):
        """x → x ∘ mask / (1 − p) (training) or x (eval)."""
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        """The constructor arguments, for repr."""
        return f"p={self.p}"


def sinusoidal_positions(max_len, embed_dim):
    """The table P (max_len, embed_dim): P[pos, 2i] = sin(pos / 10000^(2i/d)), P[pos, 2i+1] = cos(same), float64.

    Source: Vaswani et al. 2017, §3.5 (base 10000); d2l §11.6.3. TypeError / ValueError unless both are ints >= 1.
    """
    max_len = checks.positive_int("max_len", max_len, "sinusoidal_positions")
    embed_dim = checks.positive_int("embed_dim", embed_dim, "sinusoidal_positions")
    pos = xp.arange(max_len, dtype=backend.float64)[:, None]                  # (max_len, 1)
    freq = 10000.0 ** (-xp.arange(0, embed_dim, 2, dtype=backend.float64) / embed_dim)   # (ceil(d/2),)
    table = xp.zeros((max_len, embed_dim), dtype=backend.float64)
    table[:, 0::2] = xp.sin(pos * freq)                                       # even columns
    table[:, 1::2] = xp.cos(pos * freq[: embed_dim // 2])                     # odd columns
    return table


class PositionalEncoding(Module):
    """Add the sinusoidal position table to a batch of embeddings, then dropout.

    Shapes: x (batch, L, embed_dim) → same; P[:L] is broadcast over the batch. No parameters.
    Raises ValueError if L > max_len or the last axis is not embed_dim (before any dropout is drawn);
    (constructor) TypeError / ValueError for sizes that are not ints >= 1, dropout outside [0, 1), a non-float dtype.
    """

    def __init__(self, embed_dim, dropout=0.0, max_len=1000, dtype=None):
        super().__init__()
        embed_dim = checks.positive_int("embed_dim", embed_dim, "PositionalEncoding")
        dropout = checks.probability("dropout", dropout, "PositionalEncoding")
        max_len = checks.positive_int("max_len", max_len, "PositionalEncoding")
        dtype = parameter_dtype(dtype, "PositionalEncoding")
        self.embed_dim, self.max_len = embed_dim, max_len
        self.P = sinusoidal_positions(max_len, embed_dim).astype(dtype)   # (max_len, d), a constant
        self.dropout = Dropout(dropout)

    def forward(self, x, offset=0):
        """x + P[offset : offset + L], then dropout (``offset``: the first position, an int >= 0, for cached
        decoding)."""
        where = "PositionalEncoding"
        checks.tensor("x", x, where, floating=True)
        offset = checks.nonnegative_int("offset", offset, where)
        if x.ndim != 3 or x.shape[-1] != self.embed_dim or offset + x.shape[1] > self.max_len:
            checks.fail("x", f"(batch, L <= {self.max_len - offset}, {self.embed_dim})"
                        + (f" at offset {offset}" if offset else ""), x, where)
        return self.dropout(x + self.P[offset: offset + x.shape[1]].astype(x.dtype, copy=False))

    def extra_repr(self):
        """The constructor arguments, for repr."""
        return f"{self.embed_dim}, max_len={self.max_len}"


def is_plain_linear(module):
    """True for a Linear as this library makes it — not a subclass, no ``forward`` set on the instance — whose
    forward is exactly ``F.linear(x, weight, bias)``. The fused paths that read a Linear's weight and bias directly
    (Linear + ReLU, the packed q/k/v product) take only such a Linear: any other would have its forward skipped."""
    return type(module) is Linear and "forward" not in vars(module)


class PositionWiseFFN(Module):
    """The Transformer's feed-forward sublayer, applied to every position alike: W_2 relu(W_1 x + b_1) + b_2.

    Shapes: x (..., embed_dim) → (..., embed_dim), through (..., ffn_hidden). Source: Vaswani et al. 2017, eq. 2.
    Raises TypeError / ValueError (before any parameter is drawn) as Linear and Dropout do.
    """

    def __init__(self, embed_dim, ffn_hidden, dropout=0.0, dtype=None):
        super().__init__()
        check_ffn(embed_dim, ffn_hidden, dropout, dtype, "PositionWiseFFN")
        self.dense1 = Linear(embed_dim, ffn_hidden, dtype=dtype)
        self.dense2 = Linear(ffn_hidden, embed_dim, dtype=dtype)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        """x (..., d) → (..., d)."""
        if is_plain_linear(self.dense1):                                   # the product and the ReLU in one node
            hidden = F.linear_relu(x, self.dense1.weight, self.dense1.bias)  # (..., ffn_hidden)  relu(W_1 x + b_1)
        else:                                                              # a module put in its place: its forward
            hidden = self.dense1(x).relu()                                 # (..., ffn_hidden)
        return self.dense2(self.dropout(hidden))                           # (..., d)


def check_ffn(embed_dim, ffn_hidden, dropout, dtype, where):
    """Check PositionWiseFFN's arguments (sizes ints >= 1, dropout in [0, 1), a float dtype) before its first Linear
    draws a parameter, so that a bad second size leaves the random stream as it was."""
    checks.positive_int("embed_dim", embed_dim, where)
    checks.positive_int("ffn_hidden", ffn_hidden, where)
    checks.probability("dropout", dropout, where)
    parameter_dtype(dtype, where)
