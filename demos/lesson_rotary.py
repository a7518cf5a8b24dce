"""Lesson: what does rotary position embedding do to attention scores?

THE QUESTION. Llama, Mistral and GPT-NeoX do not add a position vector to the tokens; they ROTATE q and k by an angle
that grows with the position (RoPE). Why rotate, and what does the score then know about position?

THE CLAIM. RoPE turns channel pair i of the vector at position m by m·θ_i. A rotation keeps lengths, and the dot
product of two rotated vectors sees only the difference of their angles: (R_m q)·(R_n k) = q·R_(n−m) k. So the
score depends on the two positions only through their offset n − m — relative position, for free, in every layer.
An added position vector (the sinusoidal table of Vaswani et al.) mixes absolute positions into the score instead:
(q + p_m)·(k + p_n) has terms q·p_n and p_m·k that change with m and n separately.

HOW THE RUN SHOWS IT. One fixed q and one fixed k, repeated at every position 0..L−1: the run prints, for RoPE and for
the added sinusoidal table, how far the score matrix s[m, n] is from depending only on n − m (the largest
|s[m, n] − s[m+1, n+1]|), the norm change, and the score of the offset n − m = 3 at several m. It writes
``rotary.png``: both score matrices (RoPE's is constant along every diagonal) and RoPE's score against the offset.

    python -m demos.lesson_rotary            # a second
"""
import argparse
import json
import os

from autograd import backend
from autograd.backend import host as np
from demos.cli import positive_int
from minattn import Tensor
from minattn import functional as F
from minattn.layers import sinusoidal_positions


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.lesson_rotary", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--length", type=positive_int, default=32, help="positions L")
    p.add_argument("--head-dim", type=positive_int, default=16, help="d (even)")
    p.add_argument("--seed", type=int, default=0, help="draws q and k")
    p.add_argument("--out", default="runs/lesson_rotary", help="folder for rotary.png and results.json")
    args = p.parse_args(argv)
    if args.head_dim % 2:
        p.error(f"--head-dim {args.head_dim} must be even (RoPE turns channel pairs)")
    return args


def main(argv=None):
    """Compute both score matrices, print the numbers, write rotary.png and results.json."""
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    q = np.tile(rng.standard_normal(args.head_dim), (args.length, 1))            # (L, d): the same q everywhere
    k = np.tile(rng.standard_normal(args.head_dim), (args.length, 1))            # (L, d): the same k everywhere
    rq = backend.to_numpy(F.rotary_embedding(Tensor(backend.asarray(q))).data)  # (L, d): q_m turned by m θ
    rk = backend.to_numpy(F.rotary_embedding(Tensor(backend.asarray(k))).data)
    rope = rq @ rk.T                                                              # (L, L) s[m, n]
    table = backend.to_numpy(sinusoidal_positions(args.length, args.head_dim))   # (L, d) p_m
    added = (q + table) @ (k + table).T                                           # (L, L)
    numbers = {
        "rope_max_change_along_diagonals": float(np.abs(rope[1:, 1:] - rope[:-1, :-1]).max()),
        "added_max_change_along_diagonals": float(np.abs(added[1:, 1:] - added[:-1, :-1]).max()),
        "rope_norm_change": float(np.abs(np.linalg.norm(rq, axis=1) - np.linalg.norm(q, axis=1)).max()),
        "rope_score_at_offset_3": [float(rope[m, m + 3]) for m in (0, 5, 10, 20)],
        "added_score_at_offset_3": [float(added[m, m + 3]) for m in (0, 5, 10, 20)],
    }
    numbers["claim_holds"] = (numbers["rope_max_change_along_diagonals"] < 1e-10
                              and numbers["added_max_change_along_diagonals"] > 1e-3)
    print(f"{args.length} positions, d = {args.head_dim}; the same q and k at every position")
    print(f"max |s[m, n] − s[m+1, n+1]|: RoPE {numbers['rope_max_change_along_diagonals']:.1e}, "
          f"added sinusoidal table {numbers['added_max_change_along_diagonals']:.3f}")
    print("score at offset n − m = 3, for m = 0, 5, 10, 20: RoPE "
          + ", ".join(f"{v:.4f}" for v in numbers["rope_score_at_offset_3"]) + "; added table "
          + ", ".join(f"{v:.4f}" for v in numbers["added_score_at_offset_3"]))
    print(f"rotation changes no norm: {numbers['rope_norm_change']:.1e}")
    print("verdict: " + ("RoPE scores depend only on the offset; added positions do not" if numbers["claim_holds"]
                         else "claim NOT shown"))
    os.makedirs(args.out, exist_ok=True)
    plot(rope, added, os.path.join(args.out, "rotary.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"config": vars(args), **numbers}, f, indent=2)
    print(f"wrote {args.out}/rotary.png, results.json")
    return numbers


def plot(rope, added, path):
    """The two score matrices, and RoPE's score against the offset n − m (from row 0)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, s, title in ((axes[0], rope, "RoPE: s[m, n] = q·R_(n−m) k"), (axes[1], added, "added sinusoids")):
        image = ax.imshow(s, cmap="coolwarm")
        ax.set(title=title, xlabel="key position n", ylabel="query position m")
        fig.colorbar(image, ax=ax, shrink=0.8)
    axes[2].plot(np.arange(rope.shape[1]), rope[0], marker=".")
    axes[2].set(title="RoPE score against the offset", xlabel="n − m", ylabel="score")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
