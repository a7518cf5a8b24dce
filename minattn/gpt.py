"""A decoder-only Transformer (GPT): token embedding, positions, pre-LN blocks of causal self-attention and a
feed-forward layer, a final LayerNorm, and the next-token logits; ``generate`` samples with a key/value cache.

    ids (B, T) ─ Embedding (+ positions) ─ N × [x + attn(LN(x)), x + FFN(LN(x))] ─ LN ─ logits (B, T, V)

Positions are one of four kinds: "learned" (a table added to the embeddings, GPT-2), "sinusoidal" (Vaswani et al.),
"rope" (q and k rotated in every layer, Llama) or "alibi" (linear distance biases in every layer, BLOOM). The output
layer may share the embedding matrix ("weight tying", GPT-2, Press & Wolf 2017). Every gradient comes from fused
Functions with hand-written backwards (Linear, LayerNorm, attention, embedding, cross-entropy).
Source: Radford et al. 2019 (GPT-2); Karpathy's nanoGPT (model.py); Touvron et al. 2023 (Llama: RoPE, GQA).
"""
from autograd import backend, checks
from autograd.backend import xp
from autograd.grad_mode import no_grad
from autograd.tensor import Tensor
from minattn import functional as F
from minattn.attention import MultiHeadAttention
from minattn.cache import KVCache, check_caches
from minattn.layers import Embedding, LayerNorm, Linear, PositionalEncoding, PositionWiseFFN, check_ffn
from minattn.module import Module, ModuleList

POSITIONS = ("learned", "sinusoidal", "rope", "alibi")
INITS = ("pytorch", "gpt2")


class GPTBlock(Module):
    """x + attention(LN(x)) (causal), then x + FFN(LN(x)): a pre-LN decoder block (GPT-2, nanoGPT's Block)."""

    def __init__(self, embed_dim, num_heads, ffn_hidden, dropout=0.0, dtype=None, **attention_options):
        super().__init__()
        MultiHeadAttention.check_arguments(embed_dim, num_heads, dropout, dtype=dtype, **attention_options)
        check_ffn(embed_dim, ffn_hidden, dropout, dtype, "GPTBlock")   # all before the first parameter draw
        self.norm1 = LayerNorm(embed_dim, dtype=dtype)
        self.attention = MultiHeadAttention(embed_dim, num_heads, dropout, dtype=dtype, **attention_options)
        self.norm2 = LayerNorm(embed_dim, dtype=dtype)
        self.ffn = PositionWiseFFN(embed_dim, ffn_hidden, dropout, dtype)

    def forward(self, x, cache=None):
        """x (B, T, d) → (B, T, d); ``cache``: this block's KVCache while generating."""
        h = self.norm1(x)                                                            # (B, T, d)
        x = x + self.attention(h, h, h, is_causal=True, **({} if cache is None else {"cache": cache}))   # (B, T, d)
        return x + self.ffn(self.norm2(x))                                           # (B, T, d)


class GPT(Module):
    """A decoder-only Transformer over integer tokens: ids (B, T) → next-token logits (B, T, vocab_size).

    Args:
        vocab_size: tokens; max_len: the longest sequence (the position table's rows; the cache's default size).
        embed_dim (d), num_heads (h), num_layers, ffn_hidden (default 4 d, as GPT-2): widths and depth.
        dropout: in attention weights, FFN and residual branches (training mode only).
        positions: "learned" (default), "sinusoidal", "rope" or "alibi" (see the module docstring).
        num_kv_heads: grouped-query attention (default h); window: a sliding causal window (default none).
        tie_weights: the output layer is the embedding matrix (default True): logits = x Eᵀ, no separate W_out.
        init: "pytorch" (default): each layer as PyTorch initialises it (Embedding N(0, 1), Linear U(±1/√in));
            "gpt2": GPT-2's initialisation as nanoGPT applies it (see ``init_gpt2_``).
        dtype: of the parameters (float32 by default).
    The FFN uses ReLU (minattn has no GELU). Raises ValueError for an unknown ``positions`` or ``init`` (listing
    the valid ones), TypeError / ValueError for sizes that are not ints >= 1 and as MultiHeadAttention for bad
    head counts — all before any parameter is drawn from the seeded stream.
    """

    def __init__(self, vocab_size, max_len, embed_dim=64, num_heads=4, num_layers=2, ffn_hidden=None, dropout=0.0,
                 positions="learned", num_kv_heads=None, window=None, tie_weights=True, init="pytorch", dtype=None):
        super().__init__()
        where = "GPT"
        for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("num_layers", num_layers)):
            checks.positive_int(name, value, where)
        positions = checks.one_of("positions", positions, POSITIONS, where)
        init = checks.one_of("init", init, INITS, where)
        tie_weights = checks.boolean("tie_weights", tie_weights, where)
        MultiHeadAttention.check_arguments(embed_dim, num_heads, dropout, dtype=dtype, num_kv_heads=num_kv_heads,
                                           window=window, rope=positions == "rope", alibi=positions == "alibi")
        ffn_hidden = 4 * embed_dim if ffn_hidden is None else ffn_hidden
        check_ffn(embed_dim, ffn_hidden, dropout, dtype, where)
        self.vocab_size, self.max_len, self.embed_dim, self.positions = vocab_size, max_len, embed_dim, positions
        self.token_embedding = Embedding(vocab_size, embed_dim, dtype=dtype)
        self.position_embedding = Embedding(max_len, embed_dim, dtype=dtype) if positions == "learned" else None
        self.sinusoids = PositionalEncoding(embed_dim, 0.0, max_len, dtype=dtype) if positions == "sinusoidal" \
            else None
        options = dict(num_kv_heads=num_kv_heads, window=window, rope=positions == "rope",
                       alibi=positions == "alibi")
        self.blocks = ModuleList(GPTBlock(embed_dim, num_heads, ffn_hidden, dropout, dtype, **options)
                                 for _ in range(num_layers))
        self.final_norm = LayerNorm(embed_dim, dtype=dtype)
        self.output = None if tie_weights else Linear(embed_dim, vocab_size, bias=False, dtype=dtype)
        if init == "gpt2":
            self.init_gpt2_()

    def init_gpt2_(self, std=0.02):
        """GPT-2's initialisation, in place: every embedding and Linear weight ~ N(0, std²), every bias 0, and the two
        projections that end a residual branch (attention's W_o, the FFN's second Linear) ~ N(0, (std / √(2N))²) for
        N blocks — each block adds two branches to the residual stream, so its variance then stays about the same at
        any depth. LayerNorms stay γ = 1, β = 0. Draws from the host stream (``manual_seed``), in parameter order.
        Source: Radford et al. 2019, §2.3; nanoGPT model.py ``_init_weights``. TypeError / ValueError unless std is a
        finite number > 0."""
        std = checks.positive_float("std", std, "GPT.init_gpt2_")
        rng = backend.host_rng()
        residual_std = std / (2 * len(self.blocks)) ** 0.5
        residual_ends = {id(layer.weight) for block in self.blocks for layer in (block.attention.W_o, block.ffn.dense2)}
        for _, module in self.named_modules():
            if isinstance(module, LayerNorm):
                continue                                                             # LayerNorm: γ = 1, β = 0
            for p in module._parameters.values():
                if p is getattr(module, "bias", None):
                    p.data[...] = 0
                    continue
                scale = residual_std if id(p) in residual_ends else std
                p.data[...] = backend.asarray(rng.normal(0.0, scale, p.shape), dtype=p.dtype)

    def forward(self, ids, caches=None):
        """ids (B, T) integers → logits (B, T, vocab_size). ``caches``: one KVCache per block while generating: ids
        then holds only the new tokens, at positions from ``caches[0].position`` on. Checked before anything runs:
        ids (B, T) in the vocabulary, T within the position table (learned, sinusoidal), one cache per block."""
        where = "GPT"
        ids = checks.int_ids("ids", ids, self.vocab_size, where)
        offset = 0 if caches is None else check_caches(caches, len(self.blocks),
                                                        f"a list of {len(self.blocks)} KVCaches, one per block", where)
        bounded = self.positions in ("learned", "sinusoidal")
        if ids.ndim != 2 or (bounded and offset + ids.shape[1] > self.max_len):
            checks.fail("ids", f"(batch, T <= {self.max_len - offset if bounded else 'any'}) token ids"
                        + (f" at offset {offset}" if offset else ""), ids, where)
        for cache in caches or ():
            cache.check_room("ids", ids.shape[1], where)                 # every block's, before block 0 writes
        x = self.token_embedding(ids)                                                # (B, T, d)
        if self.position_embedding is not None:
            x = x + self.position_embedding(xp.arange(offset, offset + x.shape[1]))  # (B, T, d)
        if self.sinusoids is not None:
            x = self.sinusoids(x, offset)                                            # (B, T, d)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])                      # (B, T, d)
        x = self.final_norm(x)                                                       # (B, T, d)
        if self.output is None:
            return F.linear(x, self.token_embedding.weight)                          # (B, T, V)  x Eᵀ: tied
        return self.output(x)                                                        # (B, T, V)

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None):
        """Continue each sequence of ``idx`` (B, T) by ``max_new_tokens`` sampled tokens, with a KVCache (each new
        token runs alone through the blocks). Returns a host NumPy int array (B, T + max_new_tokens).

        temperature: divides the logits; 0 = greedy (argmax). top_k: sample among the k most likely tokens only.
        top_p: among the smallest set of tokens whose probabilities reach p (nucleus sampling, Holtzman et al.
        2020). seed: a host random stream of its own, so the same seed gives the same tokens (None: unseeded).
        With learned or sinusoidal positions the model reads at most max_len tokens: a longer prompt is read from its
        last max_len (and returned whole), and when the sequence reaches max_len the context is cropped to its last
        max_len − 1 tokens (1 when max_len = 1) and the cache refilled from them (nanoGPT crops the same way).
        Runs in eval mode, under no_grad, and restores the mode. Raises TypeError / ValueError naming a bad argument.
        """
        where = "GPT.generate"
        ids = checks.int_ids("idx", idx, self.vocab_size, where)
        if ids.ndim != 2 or ids.shape[1] < 1:
            checks.fail("idx", "(batch, T >= 1) token ids", idx, where)
        max_new_tokens = checks.nonnegative_int("max_new_tokens", max_new_tokens, where)
        temperature, top_k, top_p = check_sampling(temperature, top_k, top_p, where)
        seed = None if seed is None else checks.nonnegative_int("seed", seed, where)
        bounded = self.positions in ("learned", "sinusoidal")                    # a table of max_len positions
        tokens = backend.to_numpy(ids)                                               # (B, T) host: all of it returned
        if bounded and ids.shape[1] > self.max_len:
            ids = ids[:, -self.max_len:]                                             # what the model reads of it
        room = self.max_len if bounded else ids.shape[1] + max_new_tokens          # the caches' positions
        keep = max(room - 1, 1)                                                      # tokens kept by a refill
        rng = backend.new_host_rng(seed)
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                caches = [KVCache(room) for _ in self.blocks]
                logits = self(Tensor(ids), caches)                                   # (B, T, V): the prompt
                for step in range(max_new_tokens):
                    nxt = sample(backend.to_numpy(logits.data[:, -1]), temperature, top_k, top_p, rng)   # (B,)
                    tokens = backend.host.concatenate([tokens, nxt[:, None]], axis=1)
                    if step == max_new_tokens - 1:                                     # the last: nothing to predict
                        break
                    if caches[0].position < room:
                        logits = self(Tensor(backend.asarray(nxt[:, None])), caches)   # (B, 1, V): one token
                    else:                                                              # full: crop and refill
                        caches = [KVCache(room) for _ in self.blocks]
                        logits = self(Tensor(backend.asarray(tokens[:, -keep:])), caches)
        finally:
            self.train(was_training)
        return tokens

    def extra_repr(self):
        """The configuration, for repr."""
        return (f"vocab_size={self.vocab_size}, max_len={self.max_len}, embed_dim={self.embed_dim}, "
                f"positions={self.positions!r}, tie_weights={self.output is None}")


def sample(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """One token id per row of host logits (B, V): argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top_k tokens and to the top_p nucleus. Host NumPy in and out.
    TypeError / ValueError as ``check_sampling``, or for logits that are not a (B, V) float array."""
    np = backend.host
    if not isinstance(logits, np.ndarray) or logits.ndim != 2 or logits.dtype.kind != "f":
        checks.fail("logits", "a host (B, V) float array", logits, "sample", TypeError)
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p, "sample")
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / temperature                                      # (B, V)
    if top_k is not None:
        kth = np.sort(z, axis=-1)[:, -min(top_k, z.shape[-1])][:, None]             # (B, 1) the k-th largest
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)                                               # (B, V)
    if top_p is not None:
        order = np.argsort(-p, axis=-1)                                              # most likely first
        sorted_p = np.take_along_axis(p, order, axis=-1)
        keep_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p < top_p                # the nucleus (≥ 1 token)
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0)
        p /= p.sum(axis=-1, keepdims=True)
    u = (rng or np.random.default_rng()).random((p.shape[0], 1))                     # (B, 1)
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)    # inverse CDF


def check_sampling(temperature, top_k, top_p, where):
    """(temperature, top_k, top_p) checked: temperature a finite number >= 0, top_k an int >= 1 or None, top_p in
    (0, 1] or None; TypeError / ValueError naming the argument otherwise (``autograd.checks``)."""
    temperature = checks.nonnegative_float("temperature", temperature, where)
    top_k = None if top_k is None else checks.positive_int("top_k", top_k, where)
    top_p = None if top_p is None else checks.finite_float("top_p", top_p, 0, 1, low_open=True, where=where)
    return temperature, top_k, top_p

