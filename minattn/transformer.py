"""The encoder–decoder Transformer (Vaswani et al. 2017), with padding masks from valid lengths and greedy decoding.

    src ids (B, S) ─ Embedding + positions ─ N × [self-attention, FFN] ─────────── memory (B, S, d)
                                                                                       │
    tgt ids (B, T) ─ Embedding + positions ─ N × [causal self-attention, cross-attention to memory, FFN]
                   ─ Linear ─ logits (B, T, V)

Each sublayer is wrapped as LayerNorm(x + Dropout(sublayer(x))) — post-norm, as in the paper and d2l — or, with
``norm_first=True``, x + Dropout(sublayer(LayerNorm(x))) (pre-norm, as GPT-2 and PyTorch's option).
Source: Vaswani et al. 2017, §3; d2l §11.7.
"""
from autograd import backend, checks
from autograd.backend import xp
from autograd.tensor import Tensor, no_grad
from minattn.attention import MultiHeadAttention
from minattn.cache import KVCache, check_caches
from minattn.talking_heads import TalkingHeadsAttention
from minattn.layers import Dropout, Embedding, LayerNorm, Linear, PositionalEncoding, PositionWiseFFN, check_ffn
from minattn.module import Module, ModuleList


ATTENTIONS = ("mha", "talking-heads")


def make_attention(attention, embed_dim, num_heads, dropout=0.0, dtype=None, **options):
    """An attention layer by name: 'mha' → MultiHeadAttention, 'talking-heads' → TalkingHeadsAttention.

    ``options`` go to the layer (e.g. qk_norm=True for 'mha'; num_heads_qk, num_heads_v, bias for 'talking-heads').
    Raises ValueError for another name, and as the layer does for a bad option (before any parameter is drawn).
    """
    check_attention(attention, embed_dim, num_heads, dropout, dtype, options)
    if attention == "mha":
        return MultiHeadAttention(embed_dim, num_heads, dropout, dtype=dtype, **options)
    return TalkingHeadsAttention(embed_dim, num_heads, dropout=dropout, dtype=dtype, **options)


def check_attention(attention, embed_dim, num_heads, dropout=0.0, dtype=None, options=None, where="make_attention"):
    """Check what ``make_attention`` would be given, building nothing: ``attention`` one of ATTENTIONS, ``options``
    a dict (or None) the layer accepts, every value as the layer's ``check_arguments`` wants it. TypeError for an
    unknown option (Python's own, naming it) or a bad type; ValueError for a bad value."""
    attention = checks.one_of("attention", attention, ATTENTIONS, where)
    options = {} if options is None else checks.instance("attention_options", options, dict, "a dict or None", where)
    if attention == "mha":
        MultiHeadAttention.check_arguments(embed_dim, num_heads, dropout, dtype=dtype, **options)
    else:
        TalkingHeadsAttention.check_arguments(embed_dim, num_heads, dropout=dropout, dtype=dtype, **options)


def check_block(embed_dim, num_heads, ffn_hidden, dropout, norm_first, dtype, attention, attention_options, where):
    """Check an encoder or decoder block's arguments before its first layer draws a parameter (TypeError /
    ValueError naming the argument)."""
    check_attention(attention, embed_dim, num_heads, dropout, dtype, attention_options, where)
    check_ffn(embed_dim, ffn_hidden, dropout, dtype, where)
    checks.boolean("norm_first", norm_first, where)


class Residual(Module):
    """x + Dropout(sublayer(x)) with a LayerNorm after (post-norm) or before the sublayer (``norm_first``)."""

    def __init__(self, embed_dim, dropout, norm_first, dtype=None):
        super().__init__()
        checks.probability("dropout", dropout, "Residual")
        self.norm_first = checks.boolean("norm_first", norm_first, "Residual")
        self.norm = LayerNorm(embed_dim, dtype=dtype)
        self.dropout = Dropout(dropout)

    def forward(self, x, sublayer):
        """x (B, L, d), sublayer: a callable (B, L, d) → (B, L, d)."""
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x, residual=self.dropout(sublayer(x)))     # LayerNorm(x + ...), Add & Norm in one node


class EncoderBlock(Module):
    """Self-attention over the source (padding keys masked by ``valid_lens``), then the feed-forward sublayer."""

    def __init__(self, embed_dim, num_heads, ffn_hidden, dropout=0.0, norm_first=False, dtype=None,
                 attention="mha", attention_options=None):
        super().__init__()
        check_block(embed_dim, num_heads, ffn_hidden, dropout, norm_first, dtype, attention, attention_options,
                    "EncoderBlock")
        self.attention = make_attention(attention, embed_dim, num_heads, dropout, dtype, **(attention_options or {}))
        self.residual1 = Residual(embed_dim, dropout, norm_first, dtype)
        self.ffn = PositionWiseFFN(embed_dim, ffn_hidden, dropout, dtype)
        self.residual2 = Residual(embed_dim, dropout, norm_first, dtype)

    def forward(self, x, valid_lens=None):
        """x (B, S, d), valid_lens (B,) → (B, S, d)."""
        x = self.residual1(x, lambda h: self.attention(h, h, h, valid_lens=valid_lens))   # (B, S, d)
        return self.residual2(x, self.ffn)                                                # (B, S, d)


class DecoderBlock(Module):
    """Causal self-attention, cross-attention to the encoder's memory, then the feed-forward sublayer."""

    def __init__(self, embed_dim, num_heads, ffn_hidden, dropout=0.0, norm_first=False, dtype=None,
                 attention="mha", attention_options=None):
        super().__init__()
        check_block(embed_dim, num_heads, ffn_hidden, dropout, norm_first, dtype, attention, attention_options,
                    "DecoderBlock")
        options = attention_options or {}
        self.self_attention = make_attention(attention, embed_dim, num_heads, dropout, dtype, **options)
        self.residual1 = Residual(embed_dim, dropout, norm_first, dtype)
        self.cross_attention = make_attention(attention, embed_dim, num_heads, dropout, dtype, **options)
        self.residual2 = Residual(embed_dim, dropout, norm_first, dtype)
        self.ffn = PositionWiseFFN(embed_dim, ffn_hidden, dropout, dtype)
        self.residual3 = Residual(embed_dim, dropout, norm_first, dtype)

    def forward(self, x, memory, memory_valid_lens=None, caches=None):
        """x (B, T, d), memory (B, S, d), memory_valid_lens (B,) or (B, T) → (B, T, d). ``caches``: (self-attention
        KVCache, static cross-attention KVCache) for incremental decoding, or None. memory and memory_valid_lens are
        checked — shape, width and dtype — before the self-attention runs (and could draw dropout or fill a cache)."""
        where = "DecoderBlock"
        width, dtype = self.ffn.dense1.weight.shape[1], self.ffn.dense1.weight.dtype     # d, the parameters' dtype
        checks.sequences("x", x, width, dtype, where=where)
        checks.sequences("memory", memory, width, dtype, where=where)
        if memory.shape[0] != x.shape[0]:
            checks.fail("memory", f"({x.shape[0]}, S, {width}): x's batch", memory, where)
        if memory_valid_lens is not None:
            checks.lengths("memory_valid_lens", memory_valid_lens, x.shape[0], memory.shape[1], x.shape[1], where)
        own, cross = ({"cache": caches[0]}, {"cache": caches[1]}) if caches is not None else ({}, {})
        x = self.residual1(x, lambda h: self.self_attention(h, h, h, is_causal=True, **own))      # (B, T, d)
        x = self.residual2(x, lambda h: self.cross_attention(h, memory, memory, valid_lens=memory_valid_lens,
                                                             **cross))                           # (B, T, d)
        return self.residual3(x, self.ffn)                                                        # (B, T, d)


class Transformer(Module):
    """Encoder–decoder Transformer for sequence-to-sequence tasks over integer tokens.

    Args:
        src_vocab_size, tgt_vocab_size: vocabulary sizes.
        embed_dim (d), num_heads (h, dividing d), ffn_hidden: widths.
        num_encoder_layers, num_decoder_layers: depths.
        dropout: in attention weights, residual branches, FFN and positional encoding (training mode only).
        max_len: the longest sequence the positional table covers.
        norm_first: pre-norm instead of the paper's post-norm.
        dtype: of the parameters (float32 by default).
        attention: 'mha' (MultiHeadAttention) or 'talking-heads' (TalkingHeadsAttention) in every block.
        attention_options: dict of extra arguments for every attention layer (see ``make_attention``).
    Shapes: src (B, S), tgt_in (B, T) integer ids, src_valid_lens (B,) → logits (B, T, tgt_vocab_size).
    Token embeddings are not multiplied by √d (as in GPT-2 and minGPT; the paper does), so that the unit-variance
    embedding and the unit-amplitude positional table start on an equal footing.
    Every argument is checked (``autograd.checks``; the attention options as the layer checks them) before any
    parameter is drawn from the seeded stream; every call's ids, lengths and shapes before any dropout is drawn or
    attention weights are replaced. Each public method checks once and then runs the private ``_encode`` /
    ``_decode``: ``forward`` and ``greedy_decode`` do not go through ``encode`` / ``decode`` (a subclass that
    overrides those two changes only the calls made to them).
    """

    def __init__(self, src_vocab_size, tgt_vocab_size, embed_dim=64, num_heads=4, ffn_hidden=128,
                 num_encoder_layers=2, num_decoder_layers=2, dropout=0.0, max_len=256, norm_first=False, dtype=None,
                 attention="mha", attention_options=None):
        super().__init__()
        where = "Transformer"
        for name, value in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size),
                            ("num_encoder_layers", num_encoder_layers), ("num_decoder_layers", num_decoder_layers),
                            ("max_len", max_len)):
            checks.positive_int(name, value, where)
        check_block(embed_dim, num_heads, ffn_hidden, dropout, norm_first, dtype, attention, attention_options, where)
        self.embed_dim = embed_dim
        self.src_embedding = Embedding(src_vocab_size, embed_dim, dtype=dtype)
        self.tgt_embedding = Embedding(tgt_vocab_size, embed_dim, dtype=dtype)
        self.positions = PositionalEncoding(embed_dim, dropout, max_len, dtype=dtype)
        block_args = (embed_dim, num_heads, ffn_hidden, dropout, norm_first, dtype, attention, attention_options)
        self.encoder_blocks = ModuleList(EncoderBlock(*block_args) for _ in range(num_encoder_layers))
        self.decoder_blocks = ModuleList(DecoderBlock(*block_args) for _ in range(num_decoder_layers))
        # pre-norm leaves the residual streams un-normalised: normalise the encoder's output and the decoder's
        self.encoder_norm = LayerNorm(embed_dim, dtype=dtype) if norm_first else None
        self.final_norm = LayerNorm(embed_dim, dtype=dtype) if norm_first else None
        self.output = Linear(embed_dim, tgt_vocab_size, dtype=dtype)

    def _checked_src(self, where, src, src_valid_lens):
        """src as a (B, S) id array and src_valid_lens as (B,) lengths in [0, S] (or None), checked."""
        src = checks.int_ids("src", src, self.src_embedding.num_embeddings, where)
        if src.ndim != 2 or src.shape[1] > self.positions.max_len:
            checks.fail("src", f"(batch, S <= {self.positions.max_len}) token ids", src, where)
        if src_valid_lens is not None:
            src_valid_lens = checks.lengths("src_valid_lens", src_valid_lens, src.shape[0], src.shape[1], where=where)
        return src, src_valid_lens

    def _checked_tgt(self, where, tgt_in, batch, offset=0):
        """tgt_in as a (batch, T) id array with offset + T within the positional table, checked."""
        tgt_in = checks.int_ids("tgt_in", tgt_in, self.tgt_embedding.num_embeddings, where)
        if tgt_in.ndim != 2 or tgt_in.shape[0] != batch or offset + tgt_in.shape[1] > self.positions.max_len:
            checks.fail("tgt_in", f"({batch}, T <= {self.positions.max_len - offset}) token ids"
                        + (f" at offset {offset}" if offset else ""), tgt_in, where)
        return tgt_in

    def encode(self, src, src_valid_lens=None):
        """src (B, S) ids, src_valid_lens (B,) or None → memory (B, S, d). Checked before any dropout is drawn."""
        return self._encode(*self._checked_src("Transformer.encode", src, src_valid_lens))

    def _encode(self, src, src_valid_lens):
        """``encode`` on arguments already checked: the public entry points check once, then run the private ones
        (each range check of ids or lengths is a read of the device on CuPy)."""
        x = self.positions(self.src_embedding(src))                   # (B, S, d)
        for block in self.encoder_blocks:
            x = block(x, src_valid_lens)                              # (B, S, d)
        return self.encoder_norm(x) if self.encoder_norm is not None else x

    def decode(self, tgt_in, memory, src_valid_lens=None, caches=None):
        """tgt_in (B, T) ids, memory (B, S, d) → logits (B, T, V). ``caches``: one (self, cross) pair of KVCaches per
        decoder block for incremental decoding: tgt_in then holds only the new tokens, at positions from
        ``caches[0][0].position`` on. Everything is checked before any dropout is drawn."""
        where = "Transformer.decode"
        checks.sequences("memory", memory, self.embed_dim, self.output.weight.dtype, where=where)
        count = len(self.decoder_blocks)
        offset = 0 if caches is None else check_caches(
            caches, count, f"a list of {count} (self, cross) KVCache pairs, one per decoder block", where, pairs=True)
        tgt_in = self._checked_tgt(where, tgt_in, memory.shape[0], offset)
        for own, cross in caches or ():                                   # every block's, before block 0 writes
            own.check_room("tgt_in", tgt_in.shape[1], where)
            cross.check_room("memory", memory.shape[1], where)
        if src_valid_lens is not None:
            src_valid_lens = checks.lengths("src_valid_lens", src_valid_lens, memory.shape[0], memory.shape[1],
                                            where=where)
        return self._decode(tgt_in, memory, src_valid_lens, caches, offset)

    def _decode(self, tgt_in, memory, src_valid_lens=None, caches=None, offset=0):
        """``decode`` on arguments already checked (see ``_encode``); ``offset``: the caches' position."""
        y = self.positions(self.tgt_embedding(tgt_in), offset)        # (B, T, d)
        for i, block in enumerate(self.decoder_blocks):
            y = block(y, memory, src_valid_lens, None if caches is None else caches[i])   # (B, T, d)
        if self.final_norm is not None:
            y = self.final_norm(y)
        return self.output(y)                                         # (B, T, V)

    def forward(self, src, tgt_in, src_valid_lens=None):
        """Teacher forcing: logits (B, T, V) for every position of ``tgt_in`` at once.

        src (B, S) and tgt_in (B, T) ids, src_valid_lens (B,) lengths: all checked before the encoder runs, so a bad
        one fails with no dropout drawn and no attention weights replaced.
        """
        src, src_valid_lens = self._checked_src("Transformer", src, src_valid_lens)
        tgt_in = self._checked_tgt("Transformer", tgt_in, src.shape[0])
        return self._decode(tgt_in, self._encode(src, src_valid_lens), src_valid_lens)

    def greedy_decode(self, src, src_valid_lens, bos_id, eos_id, max_len, pad_id=0, use_cache=True):
        """Generate up to ``max_len`` tokens per sequence, each the argmax given the ones before (no graph recorded).

        Returns a host NumPy int array (B, max_len): the generated tokens, EOS included, ``pad_id`` after it.
        ``use_cache`` (default, with multi-head attention): each step runs the decoder on the newest token only,
        its self-attention reading the earlier tokens' keys and values from a KVCache and its cross-attention the
        memory's, computed once (minattn/cache.py): O(T) per token. False (and with talking heads): the decoder is
        re-run on the whole prefix at each step, O(T²) — the same tokens.
        Runs in eval mode and restores the previous mode. Raises TypeError / ValueError, before anything runs, if
        max_len is not an int within the positional table, bos_id / eos_id / pad_id are not ints in the target
        vocabulary, or src / src_valid_lens are malformed (src_valid_lens: (B,) lengths, as ``forward``).
        """
        where = "Transformer.greedy_decode"
        src, src_valid_lens = self._checked_src(where, src, src_valid_lens)
        max_len = checks.integer("max_len", max_len, 1, self.positions.max_len, where)
        bos_id, eos_id, pad_id = (checks.integer(name, token, 0, self.tgt_embedding.num_embeddings - 1, where)
                                  for name, token in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)))
        use_cache = checks.boolean("use_cache", use_cache, where)
        was_training = self.training
        self.eval()
        try:
            return self._greedy(src, src_valid_lens, bos_id, eos_id, max_len, pad_id, use_cache)
        finally:
            self.train(was_training)

    def _greedy(self, src, src_valid_lens, bos_id, eos_id, max_len, pad_id, use_cache):
        cached = use_cache and all(isinstance(b.self_attention, MultiHeadAttention) for b in self.decoder_blocks)
        with no_grad():
            memory = self._encode(src, src_valid_lens)                                # (B, S, d)
            batch = memory.shape[0]
            ys = xp.full((batch, 1), bos_id, dtype=backend.int64)                     # (B, 1)
            done = xp.zeros(batch, dtype=bool)                                        # (B,)
            caches = [(KVCache(max_len), KVCache(memory.shape[1], static=True)) for _ in self.decoder_blocks] \
                if cached else None                                                   # (self: T, cross: S positions)
            for t in range(max_len):                                                  # ids made here: no checks
                if cached:                                                            # the newest token only
                    logits = self._decode(Tensor(ys[:, -1:]), memory, src_valid_lens, caches, t)   # (B, 1, V)
                else:                                                                 # the whole prefix again
                    logits = self._decode(Tensor(ys), memory, src_valid_lens)         # (B, t, V)
                nxt = logits.data[:, -1].argmax(axis=-1)                              # (B,)
                nxt = xp.where(done, pad_id, nxt)                                     # (B,)
                ys = xp.concatenate([ys, nxt[:, None]], axis=1)                       # (B, t + 1)
                done |= nxt == eos_id
                if bool(done.all()):
                    break
        out = backend.to_numpy(ys[:, 1:])
        if out.shape[1] < max_len:   # every sequence ended early: pad to a fixed width
            out = backend.to_numpy(xp.concatenate([ys[:, 1:], xp.full((batch, max_len - out.shape[1]), pad_id,
                                                                      dtype=backend.int64)], axis=1))
        return out

    def cross_attention_weights(self):
        """The last call's cross-attention weights, one (B, h, T, S) tensor per decoder block (for talking heads:
        W, the softmax weights before P_w; the layers' ``mixed_weights`` hold U, which multiplies the values)."""
        return [block.cross_attention.attention_weights for block in self.decoder_blocks]
