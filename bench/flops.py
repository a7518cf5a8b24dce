"""Matrix-product FLOP counts of forward + backward, the numerator of every GFLOP/s the bench prints.

Only matrix products are counted (2 FLOPs per multiply-add); softmax, masks, LayerNorm, Adam and the other
element-wise work are not, so GFLOP/s says how close a workload comes to the BLAS limit on the part BLAS does.
Every implementation of a workload (minattn, flash, PyTorch) is credited with the SAME count — the work of the
textbook dense algorithm, full L×S score matrices even under a causal mask — so GFLOP/s compares like with like.
(Flash attention really does a little more: it recomputes Q Kᵀ in the backward.)

The rule behind all of them: a product Y = X W with X (N, K), W (K, M) costs 2·N·K·M forward, and its backward
costs two more products of the same size, dX = dY Wᵀ and dW = Xᵀ dY — so forward + backward = 3 × forward.
"""


def matmul(n, k, m):
    """C = A B with A (n, k), B (k, m): 2·n·k·m (forward only: the peak measurement)."""
    return 2 * n * k * m


def linear(rows, fan_in, fan_out):
    """A Linear layer on ``rows`` vectors, forward + backward: 3 · 2·rows·fan_in·fan_out = 6·N·in·out."""
    return 6 * rows * fan_in * fan_out


def attention_core(batch, num_queries, num_keys, embed_dim):
    """softmax(Q Kᵀ) V over all heads (embed_dim = heads · head_dim), forward + backward.

    Forward  Q Kᵀ: 2·B·L·S·E,  P V: 2·B·L·S·E                      → 4·B·L·S·E
    Backward dV = Pᵀ dO, dP = dO Vᵀ, dQ = dS K, dK = dSᵀ Q: 4 × 2·B·L·S·E → 8·B·L·S·E
    Total 12·B·L·S·E   (with E = h·d: each of the h heads does 12·B·L·S·d).
    """
    return 12 * batch * num_queries * num_keys * embed_dim


def multi_head_attention(batch, length, embed_dim):
    """Self-attention MHA forward + backward: W_q, W_k, W_v, W_o (4 Linear E → E on B·L rows) + the core.

    24·B·L·E² + 12·B·L²·E.
    """
    return 4 * linear(batch * length, embed_dim, embed_dim) + attention_core(batch, length, length, embed_dim)


def head_mix(batch, heads_in, heads_out, num_queries, num_keys):
    """One talking-heads mix (P (h_out, h_in) times the (h_in, L·S) logit/weight planes), forward + backward.

    Forward 2·B·h_out·h_in·L·S; backward dP and dX are one product each of the same size → 6·B·h_out·h_in·L·S.
    """
    return 6 * batch * heads_out * heads_in * num_queries * num_keys


def talking_heads(batch, length, embed_dim, num_heads):
    """Square talking-heads self-attention: MHA's products + the two head mixes P_l and P_w.

    24·B·L·E² + 12·B·L²·E + 12·B·h²·L².
    """
    return (multi_head_attention(batch, length, embed_dim)
            + 2 * head_mix(batch, num_heads, num_heads, length, length))


def transformer_step(batch, src_len, tgt_len, embed_dim, ffn_hidden, encoder_layers, decoder_layers, vocab_size):
    """One training step of the encoder–decoder Transformer (post-norm, as ``minattn.Transformer``).

    Encoder layer (rows B·S): self-attention 4·lin(d, d) + core(S, S); FFN lin(d, f) + lin(f, d).
    Decoder layer (rows B·T): causal self-attention 4·lin(d, d) + core(T, T) (counted in full);
        cross-attention W_q, W_o on B·T rows, W_k, W_v on B·S rows (the memory) + core(T, S); FFN on B·T rows.
    Output projection lin(d, V) on B·T rows. Embedding look-ups, the loss, clipping and Adam are not products.
    """
    d, f = embed_dim, ffn_hidden
    n_src, n_tgt = batch * src_len, batch * tgt_len
    ffn = lambda rows: linear(rows, d, f) + linear(rows, f, d)                      # noqa: E731
    encoder = 4 * linear(n_src, d, d) + attention_core(batch, src_len, src_len, d) + ffn(n_src)
    decoder = (4 * linear(n_tgt, d, d) + attention_core(batch, tgt_len, tgt_len, d)
               + 2 * linear(n_tgt, d, d) + 2 * linear(n_src, d, d) + attention_core(batch, tgt_len, src_len, d)
               + ffn(n_tgt))
    return encoder_layers * encoder + decoder_layers * decoder + linear(n_tgt, d, vocab_size)
