"""Lesson: why does self-attention need positional encoding? And why sinusoids?

THE QUESTION. Self-attention compares every position with every other. Does it know which position is which — can
it tell "dog bites man" from "man bites dog"? If not, what does adding the sinusoidal table PE to the input buy, and
why that table rather than any other?

THE CLAIMS.
  (a) Without positions, self-attention is permutation-EQUIVARIANT: permute the input positions and the output is
      the same output, permuted the same way — exactly. The layer sees a set, not a sequence; order is invisible.
  (b) With the sinusoidal PE added to the input, it is not: the same token at another position gets another
      vector, and the permuted output differs by O(1).
  (c) Why sinusoids: PE(pos, 2i) = sin(ω_i pos), PE(pos, 2i+1) = cos(ω_i pos), ω_i = 10000^(−2i/d), so each pair of
      columns is a point on a circle turning at speed ω_i. Moving k positions turns pair i by the angle k·ω_i:
          PE(pos + k) = R_k PE(pos),   R_k = blockdiag( [[cos kω_i, sin kω_i], [−sin kω_i, cos kω_i]] )
      R_k depends on the offset k only, never on pos: "k places further on" is one fixed linear map, which a layer
      can learn once and use at every position. A consequence: PE(pos)·PE(pos + k) = Σ_i cos(k ω_i) depends only
      on k, so dot-product attention between two positional encodings sees their distance, not where they are.

HOW THE RUN SHOWS IT. It builds MultiHeadAttention in float64, a random input X (B, L, d) and a random permutation π
of the positions, and prints max |f(X[π]) − f(X)[π]| for self-attention f without positions (~1e-16) and with the
PE table added (large). It then builds R_k for several k and prints max over all positions of
|PE(pos + k) − R_k PE(pos)| (~1e-13: the rounding of the angle ω·pos in float64 grows with pos); the angle each
pair turns by from pos to pos + k, measured separately at every pos, against k·ω_i (the same at every pos, so R_k
does not depend on pos); and the spread over pos of PE(pos)·PE(pos + k). It writes to --out: pe_table.png (the
table as a heatmap) and pe_dot_product.png (PE(pos)·PE(pos + k) against k, one curve per starting pos: they
coincide). ``plot_rotation`` draws the rotation itself (``python -m demos.figures --only positional_rotation``).

    python -m demos.lesson_positions
    python -m demos.lesson_positions --embed-dim 128 --max-len 1000 --shifts 1 2 3 100
"""
import argparse
import os

from autograd import backend
from autograd.backend import host as np
from minattn import MultiHeadAttention, PositionalEncoding, Tensor, manual_seed, no_grad
from minattn.layers import sinusoidal_positions
from demos.cli import positive_int

EXACT = 1e-12         # float64 rounding level, allowing for angles ω·pos up to ~1000
DIFFERENT = 1e-3      # a difference this large is not rounding


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.lesson_positions", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--embed-dim", type=positive_int, default=32, help="model width d (even: sin/cos pairs)")
    p.add_argument("--num-heads", type=positive_int, default=4, help="heads of the self-attention (divides d)")
    p.add_argument("--length", type=positive_int, default=8, help="positions L of the permuted input")
    p.add_argument("--batch", type=positive_int, default=2, help="sequences B of the permuted input")
    p.add_argument("--max-len", type=positive_int, default=1000, help="rows of the PE table checked for R_k")
    p.add_argument("--shifts", type=positive_int, nargs="+", default=[1, 2, 5, 10, 50, 100], help="offsets k")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the input and the permutation")
    p.add_argument("--out", default="runs/lesson_positions", help="folder for the figures")
    args = p.parse_args(argv)
    if args.embed_dim % 2:
        p.error(f"--embed-dim must be even (pairs of sin and cos columns), got {args.embed_dim}")
    if args.embed_dim % args.num_heads:
        p.error(f"--embed-dim {args.embed_dim} must be divisible by --num-heads {args.num_heads}")
    if max(args.shifts) >= args.max_len:
        p.error(f"every shift must be < --max-len {args.max_len}")
    return args


def frequencies(embed_dim):
    """ω_i = 10000^(−2i/d), i = 0 .. d/2 − 1: the angular speed of column pair i (host float64)."""
    return 10000.0 ** (-np.arange(0, embed_dim, 2, dtype=np.float64) / embed_dim)


def rotation(k, embed_dim):
    """R_k (d, d): block-diagonal, block i = [[cos kω_i, sin kω_i], [−sin kω_i, cos kω_i]]. No pos anywhere.

    Because sin(a + b) = sin a cos b + cos a sin b and cos(a + b) = cos a cos b − sin a sin b, with a = ω_i pos and
    b = k ω_i, it maps the pair (sin ω_i pos, cos ω_i pos) to (sin ω_i (pos + k), cos ω_i (pos + k)).
    """
    R = np.zeros((embed_dim, embed_dim))
    for i, omega in enumerate(frequencies(embed_dim)):
        c, s = np.cos(k * omega), np.sin(k * omega)
        R[2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = [[c, s], [-s, c]]
    return R


def turning_angles(table, k):
    """The angle each column pair turns through from pos to pos + k, measured at every pos: (max_len − k, d/2).

    A pair u = (sin θ, cos θ) goes clockwise as θ grows; the angle from u to v is atan2(−(u × v), u · v).
    """
    u = table[:-k].reshape(len(table) - k, -1, 2)                       # (P, d/2, 2): (sin, cos) at pos
    v = table[k:].reshape(len(table) - k, -1, 2)                        # (P, d/2, 2): at pos + k
    cross = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
    dot = (u * v).sum(axis=-1)
    return np.arctan2(-cross, dot)                                      # (P, d/2)


def wrap(angle):
    """Angle difference brought into [−π, π)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def self_attention(mha, x):
    """f(X) = MultiHeadAttention(X, X, X) on a host array X (B, L, d); returns a host array (B, L, d)."""
    t = Tensor(backend.asarray(x))
    with no_grad():
        return backend.to_numpy(mha(t, t, t).data)


def plot(out, table, shifts, dots, starts):
    """pe_table.png (the PE table) and pe_dot_product.png (PE(pos)·PE(pos + k) against k, for several pos)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(len(table), 100)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    image = ax.imshow(table[:rows], aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set(xlabel="column j (even: sin, odd: cos; frequency falls to the right)", ylabel="position pos",
           title=f"sinusoidal positional encoding, first {rows} positions, d = {table.shape[1]}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "pe_table.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = ("-", "--", ":", "-.")
    for n, (start, curve) in enumerate(zip(starts, dots)):   # drawn thinner and dashed in turn: all stay visible
        ax.plot(shifts, curve, ls=styles[n % 4], lw=3.0 - 0.6 * (n % 4), label=f"pos = {start}")
    ax.set(xlabel="offset k", ylabel="PE(pos) · PE(pos + k)",
           title="the dot product depends only on the offset k (the curves coincide)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "pe_dot_product.png"), dpi=110)
    plt.close(fig)


def plot_rotation(path, table, pairs=(0, 1, 2), positions=6, starts=(0, 100, 500)):
    """The rotation of claim (c), drawn (demos/figures.py writes it as positional_rotation.png).

    Left: column pairs i of the table, (PE(pos, 2i), PE(pos, 2i+1)) = (sin ω_i pos, cos ω_i pos) for pos = 0 ..
    positions − 1, each a point on the unit circle (drawn at radius 1, 0.75, 0.5 … to keep the rings apart): one step
    of pos turns pair i by ω_i, whatever pos is. Right: the angle every pair turns from pos to pos + 1, measured with
    ``turning_angles`` at several starting pos, against ω_i — the points coincide, so R_1 does not depend on pos.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    omegas = frequencies(table.shape[1])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4))
    for n, i in enumerate(pairs):
        radius = 1 - 0.25 * n
        x, y = radius * table[:positions, 2 * i], radius * table[:positions, 2 * i + 1]   # (sin, cos) of ω_i pos
        circle = np.linspace(0, 2 * np.pi, 200)
        left.plot(radius * np.cos(circle), radius * np.sin(circle), color="lightgray", lw=1)
        left.plot(x, y, "o-", ms=5, label=f"pair i = {i}: ω_i = {omegas[i]:.3g} rad per position")
        for pos in range(positions):
            left.annotate(str(pos), (x[pos], y[pos]), xytext=(4, 4), textcoords="offset points", fontsize=7)
    left.set(aspect="equal", xlim=(-1.3, 1.3), ylim=(-1.2, 1.8), xlabel="PE(pos, 2i) = sin(ω_i pos)",
             ylabel="PE(pos, 2i+1) = cos(ω_i pos)", title=f"pos = 0 … {positions - 1}: each step turns pair i by ω_i")
    left.legend(fontsize=7, loc="upper center")
    starts = [s for s in starts if s + 1 < len(table)]
    for s, marker in zip(starts, ("o", "x", "+", "^")):
        turned = turning_angles(table[s:s + 2], 1)[0]                  # (d/2,): each pair's turn from s to s + 1
        right.plot(range(len(omegas)), turned, marker, ms=7, ls="", label=f"measured from pos = {s}")
    right.plot(range(len(omegas)), omegas, color="black", lw=1, label="ω_i = 10000^(−2i/d)")
    right.set(yscale="log", xlabel="column pair i", ylabel="angle turned from pos to pos + 1 (rad)",
              title="the turn depends on i only, not on pos:\nPE(pos + 1) = R_1 PE(pos) at every pos")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    """Check claims (a), (b), (c), print the numbers, write the figures; returns the numbers."""
    args = parse_args(argv)
    manual_seed(args.seed)
    rng = backend.new_host_rng([args.seed, 1])
    d, length = args.embed_dim, args.length
    mha = MultiHeadAttention(d, args.num_heads, dtype="float64")
    mha.eval()
    pe = PositionalEncoding(d, max_len=max(length, args.max_len), dtype="float64")
    x = rng.standard_normal((args.batch, length, d))                   # (B, L, d): token vectors, host
    perm = rng.permutation(length)
    while length > 1 and (perm == np.arange(length)).all():            # a permutation that moves something
        perm = rng.permutation(length)
    def with_pe(a):                                                     # X + PE[:L]
        return backend.to_numpy(pe(Tensor(backend.asarray(a))).data)

    # (a) no positions: f(X[π]) = f(X)[π]     (b) positions added: f(X[π] + PE) vs (f(X + PE))[π]
    plain = float(np.abs(self_attention(mha, x[:, perm]) - self_attention(mha, x)[:, perm]).max())
    reference = self_attention(mha, with_pe(x))                         # f(X + PE), (B, L, d)
    positional = float(np.abs(self_attention(mha, with_pe(x[:, perm])) - reference[:, perm]).max())
    scale = float(np.abs(reference).max())
    print(f"self-attention MultiHeadAttention({d}, {args.num_heads}), float64, X of shape ({args.batch}, {length}, "
          f"{d}), permutation π = {perm.tolist()}:")
    print(f"  (a) no positions:      max |f(X[π]) − f(X)[π]|           = {plain:.1e}   "
          "(equivariant: order is invisible)")
    print(f"  (b) sinusoidal PE:     max |f(X[π] + PE) − f(X + PE)[π]| = {positional:.1e}   (order now matters; "
          f"max |f| = {scale:.2f})")

    # (c) PE(pos + k) = R_k PE(pos), R_k built from k alone
    table = backend.to_numpy(sinusoidal_positions(args.max_len, d))    # (max_len, d)
    omegas = frequencies(d)
    shift_error, angle_error, dot_spread = {}, {}, {}
    print(f"  (c) PE table {args.max_len} × {d}; for every pos in [0, {args.max_len} − k):")
    print("        k   max|PE(pos+k) − R_k PE(pos)|   max|angle turned − k·ω_i|   spread of PE(pos)·PE(pos+k)")
    for k in args.shifts:
        R = rotation(k, d)
        shift_error[k] = float(np.abs(table[k:] - table[:-k] @ R.T).max())
        angle_error[k] = float(np.abs(wrap(turning_angles(table, k) - k * omegas)).max())
        dots = (table[:-k] * table[k:]).sum(axis=1)                   # one value per pos
        dot_spread[k] = float(dots.max() - dots.min())
        print(f"    {k:5d}   {shift_error[k]:26.1e}   {angle_error[k]:25.1e}   {dot_spread[k]:27.1e}")
    # the dot product as a function of k, from several starting positions (the figure)
    ks = np.arange(0, min(100, args.max_len // 2))
    starts = [s for s in (0, 7, 100, 400) if s + ks[-1] < args.max_len] or [0]
    curves = [(table[s] * table[s + ks]).sum(axis=1) for s in starts]
    curve_spread = float(np.max(np.abs(np.array(curves) - np.cos(np.outer(ks, omegas)).sum(axis=1))))

    numbers = {"permutation_no_positions": plain, "permutation_with_pe": positional,
               "output_scale": scale,
               "shift_rotation_error": shift_error, "angle_error": angle_error, "dot_product_spread": dot_spread,
               "dot_product_vs_sum_cos": curve_spread}
    holds = (plain < EXACT and positional > DIFFERENT and max(shift_error.values()) < EXACT
             and max(angle_error.values()) < EXACT and max(dot_spread.values()) < EXACT)
    numbers["claim_holds"] = holds
    print(f"  PE(pos)·PE(pos+k) against Σ_i cos(k ω_i), pos in {starts}, k < {len(ks)}: "
          f"max difference {curve_spread:.1e}")
    print("verdict: " + ("without positions self-attention cannot see order; the sinusoidal table breaks the symmetry, "
                         "and a shift by k is one fixed rotation R_k at every position." if holds else
                         "a claim FAILED (see the numbers above)."))
    os.makedirs(args.out, exist_ok=True)
    plot(args.out, table, ks, curves, starts)
    print(f"wrote {args.out}/pe_table.png, pe_dot_product.png")
    return numbers


if __name__ == "__main__":
    main()
