"""Lesson: should valid_lens keep the highest scores instead of the first positions?

THE QUESTION. ``valid_lens`` masks every key at index >= valid_len. Why the FIRST valid_len positions? Would it not
be better to keep the valid_len HIGHEST-scoring keys of each query — attention to what matters most?

THE CLAIM. No: ``valid_lens`` is not a choice of what to attend to; it removes PADDING. Sequences of different
lengths share one batch tensor (B, L_max, d) by filling each one up to L_max with filler vectors; valid_len is a
sequence's real length, and positions past it are not part of the sequence at all. Masking them makes the batched
computation give, on the real positions, exactly what each sequence would give alone, unpadded — whatever the
filler is. Without the mask the real queries put weight on the filler and their outputs change. "Keep the top-k
scores" is a different operation (sparse attention): the set of keys it keeps depends on the scores, so it moves
when the input changes, and it happily keeps filler; the padding mask depends on the lengths only.

HOW THE RUN SHOWS IT. It pads random sequences of the lengths --lengths with random filler and prints, in float64:
the largest difference between the padded batch with valid_lens and each sequence run alone, for one
MultiHeadAttention and for a stack of EncoderBlocks (~1e-16); the same without the mask (large), with the largest
total weight a real query puts on padding (0 with the mask); the effect of replacing the filler (none with the
mask); and, for a top-k mask keeping as many keys per query as the padding mask does, how many query rows keep a
different set of keys, how many filler keys it keeps, and how many rows change their kept set when the real tokens
are redrawn (the padding mask: none). It writes to --out: padding_weights.png (one sequence's attention weights
with the padding mask, without a mask, and with the top-k mask).

    python -m demos.lesson_padding
    python -m demos.lesson_padding --lengths 9 4 1 6 --layers 3
"""
import argparse
import math
import os

from autograd import backend
from autograd.backend import host as np
from minattn import MultiHeadAttention, Tensor, manual_seed, no_grad
from minattn.attention import transpose_qkv
from minattn.transformer import EncoderBlock
from demos.cli import positive_int

EXACT = 1e-12         # float64 rounding level
DIFFERENT = 1e-3      # a difference this large is not rounding


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.lesson_padding", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lengths", type=positive_int, nargs="+", default=[5, 3, 7, 2],
                   help="the real length of each sequence of the batch (the longest sets the padded width)")
    p.add_argument("--embed-dim", type=positive_int, default=16, help="model width d")
    p.add_argument("--num-heads", type=positive_int, default=2, help="heads (divides d)")
    p.add_argument("--layers", type=positive_int, default=2, help="EncoderBlocks in the stack")
    p.add_argument("--ffn-hidden", type=positive_int, default=32, help="hidden width of the blocks' FFN")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the sequences and the filler")
    p.add_argument("--out", default="runs/lesson_padding", help="folder for the figure")
    args = p.parse_args(argv)
    if args.embed_dim % args.num_heads:
        p.error(f"--embed-dim {args.embed_dim} must be divisible by --num-heads {args.num_heads}")
    if min(args.lengths) == max(args.lengths):
        p.error("give at least two different --lengths, or there is no padding to mask")
    return args


def pad(sequences, filler):
    """Stack sequences (n_b, d) into (B, L_max, d): row b holds sequence b, then filler[b, n_b:] (the padding)."""
    batch = filler.copy()
    for b, seq in enumerate(sequences):
        batch[b, : len(seq)] = seq
    return batch


def tensor(a):
    """Host array → backend Tensor."""
    return Tensor(backend.asarray(a))


class Stack:
    """EncoderBlocks applied in turn: x (B, L, d), valid_lens (B,) or None → (B, L, d); a plain helper, no Module."""

    def __init__(self, blocks):
        self.blocks = blocks

    def __call__(self, x, valid_lens=None):
        for block in self.blocks:
            x = block(x, valid_lens)
        return x


def run(model, x, valid_lens=None, attn_mask=None):
    """The model on a host batch x (B, L, d); returns a host array. ``model`` is MultiHeadAttention (self-attention)
    or a Stack of EncoderBlocks."""
    t = tensor(x)
    lens = None if valid_lens is None else backend.asarray(valid_lens)
    with no_grad():
        if isinstance(model, MultiHeadAttention):
            out = model(t, t, t, valid_lens=lens, attn_mask=None if attn_mask is None else backend.asarray(attn_mask))
        else:
            out = model(t, lens)
    return backend.to_numpy(out.data)


def alone_diff(padded_out, sequences, model):
    """max over sequences b of |padded_out[b, :n_b] − model(sequence b alone, unpadded, no mask)|."""
    return max(float(np.abs(padded_out[b, : len(s)] - run(model, s[None])[0]).max()) for b, s in enumerate(sequences))


def weight_on_padding(weights, lengths):
    """The largest total weight any real query row (i < n_b) of any head puts on padding keys (j >= n_b)."""
    return max(float(weights[b, :, :n, n:].sum(axis=-1).max()) for b, n in enumerate(lengths))


def scores_of(mha, x):
    """The layer's scores q kᵀ / √d_h for self-attention on host x (B, L, d): host (B, h, L, L)."""
    t = tensor(x)
    with no_grad():
        q = transpose_qkv(mha.W_q(t), mha.num_heads)                  # (B, h, L, d_h)
        k = transpose_qkv(mha.W_k(t), mha.num_heads)                  # (B, h, L, d_h)
        s = q @ k.transpose(-2, -1) / math.sqrt(mha.head_dim)         # (B, h, L, L)
    return backend.to_numpy(s.data)


def top_k_mask(scores, lengths):
    """Boolean (B, h, L, S): in every row of sequence b, True for the n_b highest scores (n_b = its length)."""
    order = np.argsort(-scores, axis=-1)                              # (B, h, L, S): best key first
    ranks = np.argsort(order, axis=-1)                                # rank of each key in its row
    return ranks < np.asarray(lengths)[:, None, None, None]


def padding_mask(lengths, heads, length):
    """Boolean (B, h, L, S): True for keys j < n_b — what valid_lens = lengths does."""
    keep = np.arange(length)[None, :] < np.asarray(lengths)[:, None]  # (B, S)
    return np.broadcast_to(keep[:, None, None, :], (len(lengths), heads, length, length))


def rows_differing(mask_a, mask_b, lengths):
    """(number of real query rows, over all heads, whose kept key sets differ; number of real query rows)."""
    differ = total = 0
    for b, n in enumerate(lengths):
        rows = (mask_a[b, :, :n] != mask_b[b, :, :n]).any(axis=-1)   # (h, n)
        differ, total = differ + int(rows.sum()), total + rows.size
    return differ, total


def plot(out, panels, n, length):
    """padding_weights.png: one sequence's head-0 weights under each mask, padding keys and rows marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.3))
    for ax, (title, w) in zip(axes, panels):
        ax.imshow(w, cmap="viridis", vmin=0, vmax=1)
        ax.axvline(n - 0.5, color="red", lw=1.5, ls="--")
        ax.axhline(n - 0.5, color="white", lw=1, ls=":")
        ax.set_xticks(range(length), [str(j) if j < n else "pad" for j in range(length)], fontsize=7)
        ax.set_yticks(range(length), [str(i) if i < n else "pad" for i in range(length)], fontsize=7)
        ax.set(title=title, xlabel="key (red: end of the sequence)", ylabel="query")
        ax.title.set_fontsize(9)
    fig.suptitle(f"attention weights of a sequence of length {n} padded to {length} (head 0); "
                 "rows below the dotted line are padding queries, whose outputs are discarded", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "padding_weights.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    """Run the comparisons, print the numbers, write the figure; returns the numbers."""
    args = parse_args(argv)
    manual_seed(args.seed)
    rng = backend.new_host_rng([args.seed, 1])
    d, h, lengths = args.embed_dim, args.num_heads, list(args.lengths)
    batch, width = len(lengths), max(lengths)
    mha = MultiHeadAttention(d, h, dtype="float64")
    stack = Stack([EncoderBlock(d, h, args.ffn_hidden, dtype="float64") for _ in range(args.layers)])
    for block in stack.blocks:
        block.eval()
    sequences = [rng.standard_normal((n, d)) for n in lengths]             # the real data, each (n_b, d)
    x = pad(sequences, rng.standard_normal((batch, width, d)))              # (B, L_max, d), random filler
    x_new_filler = pad(sequences, rng.standard_normal((batch, width, d)))   # same sequences, other filler

    masked = run(mha, x, lengths)
    w_masked = backend.to_numpy(mha.attention_weights.data)                 # (B, h, L, L)
    unmasked = run(mha, x)
    w_unmasked = backend.to_numpy(mha.attention_weights.data)
    numbers = {
        "padded_vs_alone_mha": alone_diff(masked, sequences, mha),
        "padded_vs_alone_encoder": alone_diff(run(stack, x, lengths), sequences, stack),
        "no_mask_vs_alone_mha": alone_diff(unmasked, sequences, mha),
        "no_mask_vs_alone_encoder": alone_diff(run(stack, x), sequences, stack),
        "weight_on_padding_masked": weight_on_padding(w_masked, lengths),
        "weight_on_padding_unmasked": weight_on_padding(w_unmasked, lengths),
        "new_filler_masked": max(float(np.abs(run(stack, x_new_filler, lengths)[b, :n]
                                              - run(stack, x, lengths)[b, :n]).max())
                                 for b, n in enumerate(lengths)),
        "new_filler_unmasked": max(float(np.abs(run(stack, x_new_filler)[b, :n] - run(stack, x)[b, :n]).max())
                                   for b, n in enumerate(lengths)),
    }
    print(f"batch of {batch} sequences of lengths {lengths}, padded to {width} with random filler; float64, "
          f"d = {d}, {h} heads. Largest |difference| on the real positions from each sequence run alone:")
    for how, prefix in (("valid_lens = lengths", "padded_vs_alone"), ("no mask", "no_mask_vs_alone")):
        print(f"  {'MultiHeadAttention':<22} {how:<22} {numbers[prefix + '_mha']:.1e}")
        print(f"  {str(args.layers) + ' EncoderBlocks':<22} {how:<22} {numbers[prefix + '_encoder']:.1e}")
    print(f"largest total weight a real query puts on padding: {numbers['weight_on_padding_masked']:.3g} "
          "with the mask, "
          f"{numbers['weight_on_padding_unmasked']:.3g} without")
    print(f"filler replaced by other random vectors (encoder stack, real positions): "
          f"{numbers['new_filler_masked']:.1e} with the mask, {numbers['new_filler_unmasked']:.1e} without")

    # the top-k alternative: keep, in each query row, the n_b highest-scoring keys (as many as padding keeps)
    scores = scores_of(mha, x)
    top_k, padding = top_k_mask(scores, lengths), padding_mask(lengths, h, width)
    differ, rows = rows_differing(top_k, padding, lengths)
    filler_kept = sum(int(top_k[b, :, :n, n:].sum()) for b, n in enumerate(lengths))
    top_k_out = run(mha, x, attn_mask=top_k)
    w_top_k = backend.to_numpy(mha.attention_weights.data)
    # redraw the real tokens (same lengths, same filler) and see which keys each row attends to (weight > 0)
    x_redrawn = pad([rng.standard_normal((n, d)) for n in lengths], x)
    run(mha, x_redrawn, attn_mask=top_k_mask(scores_of(mha, x_redrawn), lengths))
    moved, _ = rows_differing(w_top_k > 0, backend.to_numpy(mha.attention_weights.data) > 0, lengths)
    run(mha, x_redrawn, lengths)
    moved_padding, _ = rows_differing(w_masked > 0, backend.to_numpy(mha.attention_weights.data) > 0, lengths)
    numbers.update({"top_k_rows_differing_from_padding_mask": differ, "real_query_rows": rows,
                    "top_k_filler_keys_kept": filler_kept, "top_k_rows_moved_by_new_tokens": moved,
                    "padding_mask_rows_moved_by_new_tokens": moved_padding,
                    "top_k_vs_alone_mha": alone_diff(top_k_out, sequences, mha)})
    print("a top-k mask instead (keep the n_b highest scores of each row, n_b = the sequence's length):")
    print(f"  rows (real queries × heads) keeping another key set than the padding mask: {differ} of {rows}; "
          f"filler keys kept: {filler_kept}")
    print(f"  real tokens redrawn, lengths unchanged: rows attending to another key set — top-k {moved} of {rows}, "
          f"padding mask {moved_padding} of {rows}")
    print(f"  MultiHeadAttention with the top-k mask vs each sequence alone: {numbers['top_k_vs_alone_mha']:.1e}")

    holds = (max(numbers["padded_vs_alone_mha"], numbers["padded_vs_alone_encoder"], numbers["new_filler_masked"],
                 numbers["weight_on_padding_masked"]) < EXACT
             and min(numbers["no_mask_vs_alone_mha"], numbers["no_mask_vs_alone_encoder"],
                     numbers["weight_on_padding_unmasked"], numbers["top_k_vs_alone_mha"]) > DIFFERENT
             and moved_padding == 0)
    numbers["claim_holds"] = holds
    print("verdict: " + ("valid_lens removes padding: with it a padded batch = each sequence alone; top-k is another "
                         "operation, whose kept keys follow the scores." if holds else
                         "a claim FAILED (see the numbers above)."))
    os.makedirs(args.out, exist_ok=True)
    b = min(range(batch), key=lambda i: lengths[i])                         # the most padded sequence
    plot(args.out, [("valid_lens = lengths (padding masked)", w_masked[b, 0]), ("no mask", w_unmasked[b, 0]),
                    (f"top-k mask, k = {lengths[b]}", w_top_k[b, 0])], lengths[b], width)
    print(f"wrote {args.out}/padding_weights.png")
    return numbers


if __name__ == "__main__":
    main()
