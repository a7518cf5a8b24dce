"""Lesson: does self-attention share weights across channels, or across positions?

THE QUESTION. Self-attention projects its input with W_q, W_k, W_v before comparing positions. Is there one W_q per
position (so a longer sequence needs more weights), or one W_q for the whole sequence? And what is "shared" with what?

THE CLAIM. One W_q serves every position: for x of shape (batch, L, d), q[b, t] = W_q x[b, t] + b_q for every b and
t. The matrix mixes CHANNELS (the d features of one position) and never mixes positions; the SAME matrix is used at
every position. That is exactly a 1×1 convolution over the positions, with d_in input channels and d_out output
channels: kernel (d_out, d_in, 1), window one position wide, slid along the sequence. So
  * applying the Linear to the whole (B, L, d) tensor = applying it to each position separately;
  * = a 1×1 convolution, written here as the textbook sum over the kernel's window;
  * W_q's parameter count, d_out·d_in + d_out, does not depend on L (a layer built once runs on L = 4 and L = 400);
  * permuting the positions and then projecting = projecting and then permuting (the projection cannot even see
    where a position is: only attention between positions, and positional encodings, can).

HOW THE RUN SHOWS IT. It builds Linear(d, d) in float64 and a random batch, and prints the largest absolute
difference between the whole-tensor projection and (1) a loop over positions, (2) an explicit 1×1 convolution,
(3) the projection of a position-permuted input permuted back — all at rounding level (~1e-16), then the parameter
counts of W_q and of a MultiHeadAttention run on L = 4 and L = 400 (equal), next to what one matrix per position
would cost. It writes to --out: weight_sharing.png (W_q, and the same W_q used at each position).

    python -m demos.lesson_weight_sharing
    python -m demos.lesson_weight_sharing --embed-dim 16 --length 12
"""
import argparse
import os

from autograd import backend
from autograd.backend import host as np
from minattn import Linear, MultiHeadAttention, Tensor, manual_seed, no_grad
from demos.cli import positive_int

EXACT = 1e-12   # float64: the identities hold up to a few rounding errors of ~1e-16


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.lesson_weight_sharing", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--embed-dim", type=positive_int, default=8, help="channels d (W_q is d × d)")
    p.add_argument("--length", type=positive_int, default=6, help="positions L of the example batch")
    p.add_argument("--batch", type=positive_int, default=2, help="sequences B of the example batch")
    p.add_argument("--num-heads", type=positive_int, default=2, help="heads of the MultiHeadAttention (divides d)")
    p.add_argument("--lengths", type=positive_int, nargs="+", default=[4, 400],
                   help="sequence lengths the same MultiHeadAttention is run on")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the inputs")
    p.add_argument("--out", default="runs/lesson_weight_sharing", help="folder for the figure")
    args = p.parse_args(argv)
    if args.embed_dim % args.num_heads:
        p.error(f"--embed-dim {args.embed_dim} must be divisible by --num-heads {args.num_heads}")
    return args


def conv1d(x, kernel, bias):
    """A 1-D convolution (cross-correlation, as deep-learning libraries define it), no padding, stride 1.

        y[b, o, t] = bias[o] + sum_{j < k} sum_i kernel[o, i, j] · x[b, i, t + j]

    Shapes: x (B, C_in, L) channels first, kernel (C_out, C_in, k), bias (C_out,) → y (B, C_out, L − k + 1).
    Host NumPy, written as the textbook sum over the window; with k = 1 the window is a single position.
    """
    out_len = x.shape[2] - kernel.shape[2] + 1
    y = np.zeros((x.shape[0], kernel.shape[0], out_len)) + bias[None, :, None]         # (B, C_out, L')
    for j in range(kernel.shape[2]):                                                     # each tap of the window
        y += np.einsum("oi,bit->bot", kernel[:, :, j], x[:, :, j: j + out_len])          # (B, C_out, L')
    return y


def max_diff(a, b):
    """Largest absolute elementwise difference of two host arrays of one shape."""
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def plot(out, weight, x, q):
    """weight_sharing.png: W_q as an image, and one small copy of it per position between x[t] and q[t]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = x.shape[0]
    fig = plt.figure(figsize=(3.2 + 1.3 * length, 4.6))
    grid = fig.add_gridspec(3, 1 + length, width_ratios=[2.6] + [1] * length, height_ratios=[1, 1.6, 1])
    big = fig.add_subplot(grid[:, 0])
    limit = float(np.abs(weight).max())
    big.imshow(weight, cmap="RdBu_r", vmin=-limit, vmax=limit)
    big.set(title=f"W_q ({weight.shape[0]} × {weight.shape[1]})", xlabel="input channel i", ylabel="output channel o")
    qlim, xlim = float(np.abs(q).max()), float(np.abs(x).max())
    for t in range(length):
        top = fig.add_subplot(grid[0, 1 + t])
        top.imshow(q[t][:, None], cmap="PuOr_r", vmin=-qlim, vmax=qlim)
        top.set_title(f"q[{t}]", fontsize=9)
        mid = fig.add_subplot(grid[1, 1 + t])
        mid.imshow(weight, cmap="RdBu_r", vmin=-limit, vmax=limit)
        mid.set_title("W_q", fontsize=8)
        bottom = fig.add_subplot(grid[2, 1 + t])
        bottom.imshow(x[t][:, None], cmap="PuOr_r", vmin=-xlim, vmax=xlim)
        bottom.set_xlabel(f"x[{t}]", fontsize=9)
        for ax in (top, mid, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("one W_q, used at every position: q[t] = W_q x[t] + b_q  (a 1×1 convolution over positions)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "weight_sharing.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    """Check the three identities and the parameter counts, print them, and write the figure; returns the numbers."""
    args = parse_args(argv)
    manual_seed(args.seed)
    rng = backend.new_host_rng([args.seed, 1])
    d, length, batch = args.embed_dim, args.length, args.batch
    W_q = Linear(d, d, dtype="float64")
    x = rng.standard_normal((batch, length, d))                                  # (B, L, d), host
    weight, bias = backend.to_numpy(W_q.weight.data), backend.to_numpy(W_q.bias.data)   # (d, d), (d,)
    with no_grad():
        whole = backend.to_numpy(W_q(Tensor(backend.asarray(x))).data)           # (B, L, d): one call, all positions
        # (1) one position at a time: W_q sees x[:, t] (B, d) and nothing of the other positions
        per_position = np.stack([backend.to_numpy(W_q(Tensor(backend.asarray(x[:, t]))).data)
                                 for t in range(length)], axis=1)                # (B, L, d)
        # (3) permute the positions, project, permute back
        perm = rng.permutation(length)
        projected_perm = backend.to_numpy(W_q(Tensor(backend.asarray(x[:, perm]))).data)   # (B, L, d)
    # (2) the same weights as a 1×1 convolution over positions: channels first, kernel (d_out, d_in, 1)
    conv = conv1d(x.transpose(0, 2, 1), weight[:, :, None], bias).transpose(0, 2, 1)       # (B, L, d)
    numbers = {
        "per_position_vs_whole": max_diff(per_position, whole),
        "conv1x1_vs_whole": max_diff(conv, whole),
        "permute_then_project_vs_project_then_permute": max_diff(projected_perm, whole[:, perm]),
    }
    print(f"Linear({d}, {d}) in float64 on a batch (B, L, d) = ({batch}, {length}, {d}); "
          "largest absolute differences from the whole-tensor projection:")
    rows = [("applied to each position separately", numbers["per_position_vs_whole"]),
            (f"1×1 convolution, kernel ({d}, {d}, 1)", numbers["conv1x1_vs_whole"]),
            ("permute positions, project, permute back", numbers["permute_then_project_vs_project_then_permute"])]
    for label, value in rows:
        print(f"  {label:<42} {value:.1e}")
    print(f"  (the permutation: {perm.tolist()})")

    # the parameter count does not depend on L: ONE attention layer runs on every length
    mha = MultiHeadAttention(d, args.num_heads, dtype="float64")
    counts = {}
    for n in args.lengths:
        seq = Tensor(backend.asarray(rng.standard_normal((1, n, d))))
        with no_grad():
            out_shape = mha(seq, seq, seq).shape
        counts[n] = {"W_q": mha.W_q.num_parameters(), "mha": mha.num_parameters(), "out_shape": out_shape,
                     "one_matrix_per_position": n * (d * d + d)}
    print(f"parameters, one MultiHeadAttention({d}, {args.num_heads}) run on each length:")
    for n, c in counts.items():
        print(f"  L = {n:4d}: W_q {c['W_q']:,} (= {d}·{d} + {d}), whole layer {c['mha']:,}, output {c['out_shape']}; "
              f"one W_q per position would need {c['one_matrix_per_position']:,}")
    numbers["W_q_parameters"] = {n: c["W_q"] for n, c in counts.items()}
    numbers["mha_parameters"] = {n: c["mha"] for n, c in counts.items()}
    numbers["W_q_parameters_if_one_per_position"] = {n: c["one_matrix_per_position"] for n, c in counts.items()}
    same = len(set(numbers["W_q_parameters"].values())) == 1 and len(set(numbers["mha_parameters"].values())) == 1
    identities = [numbers[k] for k in ("per_position_vs_whole", "conv1x1_vs_whole",
                                       "permute_then_project_vs_project_then_permute")]
    holds = max(identities) < EXACT and same
    numbers["claim_holds"] = holds
    print("verdict: " + ("one W_q for all positions — a 1×1 convolution; its size does not depend on L."
                         if holds else "an identity FAILED (difference above 1e-12, or counts differ with L)."))
    os.makedirs(args.out, exist_ok=True)
    plot(args.out, weight, x[0], whole[0])
    print(f"wrote {args.out}/weight_sharing.png")
    return numbers


if __name__ == "__main__":
    main()
