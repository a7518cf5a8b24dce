"""Lesson: how are h attention heads computed in parallel?

THE QUESTION. Multi-head attention runs h heads, head i with its own W_q^(i), W_k^(i), W_v^(i) of size d × d/h. Does
the code loop over heads? What are the shapes of every weight and intermediate? And what does ``valid_lens`` of
shape (B,) mean compared with one of shape (B, L)?

THE CLAIM. There is no loop. h small projections of size d/h each, computed separately, are ONE big d × d
projection whose output is split into h slices of d/h features: stacking the h small weight matrices row-wise gives
the big one. ``transpose_qkv`` does the split, (B, L, d) → (B, h, L, d/h), so the h heads become one more batch axis
and a single batched matrix product (B, h, L, d_h) @ (B, h, d_h, S) scores every head at once; ``transpose_output``
undoes the split (it concatenates the heads) before W_o. The per-head loop of the paper's formula and the batched
computation are the same numbers. ``valid_lens`` (B,) gives one length per sequence: every query row of that
sequence sees keys 0..len−1; ``valid_lens`` (B, L) gives one length per query row, so a row can see fewer keys than
the sequence's length (e.g. query i sees keys 0..i).

HOW THE RUN SHOWS IT. On d2l's example — MultiHeadAttention(100, 5), queries (2, 4, 100), keys = values (2, 6, 100),
float64 — it prints: the largest absolute difference between h separately computed small projections and the big
projection split by ``transpose_qkv``; between a loop over heads (each with its slice of W_q, W_k, W_v and d2l's
``masked_softmax``) and the layer; ``transpose_output`` ∘ ``transpose_qkv`` against the identity (all ~1e-16); a
table of every weight's and intermediate's shape; and the boolean masks that 1-D and 2-D valid_lens produce, with the
number of keys each query row attends to. It writes to --out: heads_valid_lens.png (each head's weights, 1-D vs 2-D).

    python -m demos.lesson_heads
    python -m demos.lesson_heads --embed-dim 12 --num-heads 3
"""
import argparse
import math
import os

from autograd import backend
from autograd.backend import host as np
from minattn import Linear, MultiHeadAttention, Tensor, functional as F, manual_seed, masks, no_grad
from minattn.attention import transpose_output, transpose_qkv
from demos.cli import positive_int

EXACT = 1e-12   # float64: the identities hold up to a few rounding errors of ~1e-16
VALID_LENS_1D = [3, 2]                                  # d2l's example: sequence 0 has 3 real keys, sequence 1 has 2
VALID_LENS_2D = [[1, 2, 3, 3], [1, 2, 2, 2]]            # per query row: row i sees keys 0..i, within the real ones


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.lesson_heads", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--embed-dim", type=positive_int, default=100, help="model width d (d2l's num_hiddens)")
    p.add_argument("--num-heads", type=positive_int, default=5, help="heads h; must divide d")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the inputs")
    p.add_argument("--out", default="runs/lesson_heads", help="folder for the figure")
    args = p.parse_args(argv)
    if args.embed_dim % args.num_heads:
        p.error(f"--embed-dim {args.embed_dim} must be divisible by --num-heads {args.num_heads}")
    return args


def max_diff(a, b):
    """Largest absolute elementwise difference of two Tensors / arrays of one shape, as a float."""
    a = backend.to_numpy(a.data if isinstance(a, Tensor) else a)
    b = backend.to_numpy(b.data if isinstance(b, Tensor) else b)
    return float(np.max(np.abs(a - b)))


def small_projections_vs_big(d, h, x):
    """h separate Linear(d, d/h) → stacked as one Linear(d, d) → split by transpose_qkv. Returns the max difference.

    The big weight is the small ones' rows one after the other: W (d, d) = [W^(0); W^(1); ...; W^(h-1)].
    """
    small = [Linear(d, d // h, dtype="float64") for _ in range(h)]                      # h × (d/h, d)
    big = Linear(d, d, dtype="float64")
    big.weight.data[...] = backend.asarray(np.concatenate([backend.to_numpy(s.weight.data) for s in small]))  # (d, d)
    big.bias.data[...] = backend.asarray(np.concatenate([backend.to_numpy(s.bias.data) for s in small]))      # (d,)
    with no_grad():
        separately = np.stack([backend.to_numpy(s(x).data) for s in small], axis=1)     # (B, h, L, d/h)
        split = transpose_qkv(big(x), h)                                                 # (B, h, L, d/h)
    return max_diff(separately, split), sum(s.num_parameters() for s in small), big.num_parameters()


def per_head_loop(mha, queries, keys, values, valid_lens):
    """The paper's formula, one head at a time: head_i = softmax(Q W_q^(i) (K W_k^(i))ᵀ / √d_h) V W_v^(i), masked by
    d2l's masked_softmax; then concat(head_0..head_{h-1}) W_o. Returns (output (B, L, d), weights (B, h, L, S))."""
    d_h = mha.head_dim
    heads, weights = [], []
    for i in range(mha.num_heads):
        rows = slice(i * d_h, (i + 1) * d_h)                    # head i's rows of each projection matrix
        q = F.linear(queries, mha.W_q.weight[rows], mha.W_q.bias[rows])                   # (B, L, d_h)
        k = F.linear(keys, mha.W_k.weight[rows], mha.W_k.bias[rows])                      # (B, S, d_h)
        v = F.linear(values, mha.W_v.weight[rows], mha.W_v.bias[rows])                    # (B, S, d_h)
        w = F.masked_softmax(q @ k.transpose(-2, -1) / math.sqrt(d_h), valid_lens)        # (B, L, S)
        heads.append(backend.to_numpy((w @ v).data))                                      # (B, L, d_h)
        weights.append(backend.to_numpy(w.data))                                          # (B, L, S)
    concat = Tensor(backend.asarray(np.concatenate(heads, axis=-1)))                     # (B, L, h·d_h)
    return mha.W_o(concat), np.stack(weights, axis=1)                                    # (B, L, d), (B, h, L, S)


def shape_table(mha, queries, keys, values, valid_lens):
    """Every weight and intermediate of one forward pass, recomputed step by step: a list of (name, shape, note)."""
    h, d_h = mha.num_heads, mha.head_dim
    rows = [("queries", queries.shape, "(B, L, d)"), ("keys = values", keys.shape, "(B, S, d)"),
            ("valid_lens", tuple(valid_lens.shape), "(B,): one length per sequence")]
    for name in ("W_q", "W_k", "W_v", "W_o"):
        layer = getattr(mha, name)
        rows.append((f"{name}.weight, {name}.bias", (layer.weight.shape, layer.bias.shape), "(d, d), (d,)"))
    q_proj, k_proj, v_proj = mha.W_q(queries), mha.W_k(keys), mha.W_v(values)
    rows.append(("W_q(queries)", q_proj.shape, "(B, L, d): all h heads' queries side by side"))
    q, k, v = transpose_qkv(q_proj, h), transpose_qkv(k_proj, h), transpose_qkv(v_proj, h)
    rows += [(f"q = transpose_qkv(W_q(queries), {h})", q.shape, f"(B, h, L, d_h), d_h = d/h = {d_h}"),
             ("k, v = transpose_qkv(W_k(keys)), ...", (k.shape, v.shape), "(B, h, S, d_h)")]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_h)
    rows.append(("scores = q kᵀ / √d_h", scores.shape, "(B, h, L, S): every head in one batched product"))
    mask = masks.valid_lens_mask(backend.asarray(valid_lens), q.shape[2], k.shape[2])
    rows.append(("mask from valid_lens", tuple(mask.shape), "(B, 1, S) → broadcast over heads and rows"))
    weights = F.masked_softmax(scores, backend.asarray(valid_lens))
    rows.append(("weights = masked_softmax(scores)", weights.shape, "(B, h, L, S)"))
    heads = weights @ v
    rows.append(("weights @ v", heads.shape, "(B, h, L, d_h)"))
    concat = transpose_output(heads)
    rows.append(("transpose_output(...)", concat.shape, "(B, L, h·d_h) = (B, L, d): heads concatenated"))
    rows.append(("W_o(...) = output", mha.W_o(concat).shape, "(B, L, d)"))
    return rows


def format_shape(shape):
    """(2, 4) → '(2, 4)'; a pair of shapes ((100, 100), (100,)) → '(100, 100), (100,)'."""
    if shape and isinstance(shape[0], tuple):
        return ", ".join(str(tuple(s)) for s in shape)
    return str(tuple(shape))


def keys_seen(weights):
    """Number of keys with nonzero weight, for each (sequence, query row) of head 0: a list of lists."""
    return (backend.to_numpy(weights.data)[:, 0] > 0).sum(axis=-1).tolist()


def plot(out, w1, w2, lens1, lens2):
    """heads_valid_lens.png: rows = (sequence, 1-D or 2-D valid_lens), columns = heads."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch, heads = w1.shape[0], w1.shape[1]
    cases = [(b, "1-D", w1, lens1[b]) for b in range(batch)] + [(b, "2-D", w2, lens2[b]) for b in range(batch)]
    cases.sort(key=lambda c: c[0])
    fig, axes = plt.subplots(len(cases), heads, figsize=(1.9 * heads + 1, 1.7 * len(cases) + 0.6), squeeze=False)
    for r, (b, kind, w, lens) in enumerate(cases):
        for i in range(heads):
            ax = axes[r][i]
            ax.imshow(w[b, i], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(w.shape[3]))
            ax.set_yticks(range(w.shape[2]))
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(f"head {i}", fontsize=9)
            if i == 0:
                ax.set_ylabel(f"seq {b}, {kind}\nvalid_lens {lens}\nquery", fontsize=7)
            if r == len(cases) - 1:
                ax.set_xlabel("key", fontsize=8)
    fig.suptitle("attention weights per head: valid_lens per sequence (B,) vs per query (B, L)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "heads_valid_lens.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    """Run the checks, print the numbers, the shape table and the masks, write the figure; returns the numbers."""
    args = parse_args(argv)
    manual_seed(args.seed)
    rng = backend.new_host_rng([args.seed, 1])
    d, h = args.embed_dim, args.num_heads
    mha = MultiHeadAttention(d, h, dtype="float64")
    mha.eval()
    queries = Tensor(backend.asarray(rng.standard_normal((2, 4, d))))                   # (B, L, d) = (2, 4, d)
    keys = Tensor(backend.asarray(rng.standard_normal((2, 6, d))))                      # (B, S, d) = (2, 6, d)
    values = keys
    lens1, lens2 = np.array(VALID_LENS_1D), np.array(VALID_LENS_2D)                    # (B,), (B, L)

    with no_grad():
        split_diff, small_params, big_params = small_projections_vs_big(d, h, queries)
        out1 = mha(queries, keys, values, valid_lens=backend.asarray(lens1))            # (B, L, d)
        w1 = mha.attention_weights                                                       # (B, h, L, S)
        loop1, loop_w1 = per_head_loop(mha, queries, keys, values, backend.asarray(lens1))
        out2 = mha(queries, keys, values, valid_lens=backend.asarray(lens2))
        w2 = mha.attention_weights
        loop2, loop_w2 = per_head_loop(mha, queries, keys, values, backend.asarray(lens2))
        x = mha.W_q(queries)
        round_trip = transpose_output(transpose_qkv(x, h))
        table = shape_table(mha, queries, keys, values, lens1)
    numbers = {
        "small_projections_vs_split_big": split_diff,
        "per_head_loop_vs_batched_1d": max(max_diff(loop1, out1), max_diff(loop_w1, w1)),
        "per_head_loop_vs_batched_2d": max(max_diff(loop2, out2), max_diff(loop_w2, w2)),
        "transpose_output_of_transpose_qkv": max_diff(round_trip, x),
        "small_projection_parameters": small_params, "big_projection_parameters": big_params,
    }
    print(f"MultiHeadAttention({d}, {h}) in float64, queries (2, 4, {d}), keys = values (2, 6, {d}); "
          "largest absolute differences:")
    print(f"  {h} separate Linear({d}, {d // h}) vs one Linear({d}, {d}) split by transpose_qkv   "
          f"{split_diff:.1e}   (parameters {small_params:,} vs {big_params:,})")
    print(f"  loop over heads vs the batched layer, valid_lens (B,)   (outputs and weights)   "
          f"{numbers['per_head_loop_vs_batched_1d']:.1e}")
    print(f"  loop over heads vs the batched layer, valid_lens (B, L) (outputs and weights)   "
          f"{numbers['per_head_loop_vs_batched_2d']:.1e}")
    print(f"  transpose_output(transpose_qkv(x)) vs x                                        "
          f"{numbers['transpose_output_of_transpose_qkv']:.1e}")

    print("shapes of one forward pass (B = 2 sequences, L = 4 queries, S = 6 keys):")
    width = max(len(name) for name, _, _ in table)
    for name, shape, note in table:
        print(f"  {name:<{width}}  {format_shape(shape):<28} {note}")
    numbers["shapes"] = {name: shape for name, shape, _ in table}

    for kind, lens, w in (("(B,) = " + str(VALID_LENS_1D), lens1, w1), ("(B, L) = " + str(VALID_LENS_2D), lens2, w2)):
        mask = backend.to_numpy(masks.valid_lens_mask(backend.asarray(lens), 4, 6))
        print(f"valid_lens {kind}: mask shape {mask.shape} (1 = key takes part)")
        for b in range(2):
            rows = ["".join("1" if m else "." for m in row) for row in mask[b]]
            print(f"  sequence {b}: " + "  ".join(rows) + f"   keys seen per query row: {keys_seen(w)[b]}")
    numbers["keys_seen_1d"], numbers["keys_seen_2d"] = keys_seen(w1), keys_seen(w2)

    identities = [numbers[k] for k in ("small_projections_vs_split_big", "per_head_loop_vs_batched_1d",
                                       "per_head_loop_vs_batched_2d", "transpose_output_of_transpose_qkv")]
    holds = max(identities) < EXACT and small_params == big_params
    numbers["claim_holds"] = holds
    print("verdict: " + ("h small projections = one big projection split into heads; the per-head loop = one "
                         "batched computation; 2-D valid_lens mask per query row." if holds else
                         "an identity FAILED (difference above 1e-12)."))
    os.makedirs(args.out, exist_ok=True)
    plot(args.out, backend.to_numpy(w1.data), backend.to_numpy(w2.data), VALID_LENS_1D, VALID_LENS_2D)
    print(f"wrote {args.out}/heads_valid_lens.png")
    return numbers


if __name__ == "__main__":
    main()
