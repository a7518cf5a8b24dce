"""Lesson: why do Q and K use different matrices?

THE QUESTION. Attention scores are s_ij = q_i · k_j with q = x W_q and k = x W_k (row vectors). Why not save
parameters and use one matrix for both?

THE CLAIM. With W_q = W_k = W, self-attention's score matrix S = X W Wᵀ Xᵀ is a Gram matrix: symmetric (i scores j
exactly as j scores i) and positive semi-definite, so s_ii + s_jj >= 2 s_ij for every pair — no token can prefer
another over both their own self-scores. In the weights this reads P_ii P_jj >= P_ij P_ji. Symmetry alone does not
forbid reading the predecessor: i may prefer i−1 over i+1 if s_{i,i−1} > s_{i,i+1} = s_{i+1,i}, which a model can
arrange by letting scores fall along the sequence. But on a CYCLE (position 0 reads position L−1) every position
would need a_i > a_{i+1} for a_i = s_{i,i−1}, all the way round: a_0 > a_1 > … > a_{L−1} > a_0, impossible. So the
cyclic predecessor task — y_i = x_{(i−1) mod L} — needs asymmetric scores, which separate W_q, W_k give: a tied
head cannot weight the predecessor above the successor at every position of the cycle. That alone does not force an
error (soft weights, values and the feed-forward layer could still decode a token weighted less), so whether the
model pays for it is measured: with one head it gives up one position of the cycle. With several heads a network
can sometimes route around the per-head constraint; the run shows how often.

HOW THE RUN SHOWS IT.
  1. The identity: for a tied and an untied random layer it prints max |S − Sᵀ|, the smallest eigenvalue of S, and
     the worst violation of s_ii + s_jj >= 2 s_ij (tests/test_tied_qk.py checks the same with random inputs).
  2. The experiment, over several seeds with the same batches for both: (a) the cyclic PREDECESSOR task — an
     encoder-only model must output x_{(i−1) mod L} at position i — token accuracy after a fixed budget with one
     head and with four, accuracy per position for one head, and the plain (non-cyclic) task for contrast; (b) the
     COPY task (an encoder–decoder, where cross-attention's queries and keys come from different sequences, so the
     tie binds less) — exact-sequence accuracy. Figures: the attention of a trained tied and untied model on the
     predecessor task.

    python -m demos.lesson_tied_qk            # about a minute on 2 cores
"""
import argparse
import json
import os
import statistics

from autograd import backend
from autograd.backend import host as np
from demos import copy_task
from demos.cli import positive_int
from minattn import (Adam, Embedding, Linear, Module, ModuleList, MultiHeadAttention, PositionalEncoding, Tensor,
                     WarmupSchedule, clip_grad_norm_, manual_seed, no_grad)
from minattn import functional as F
from minattn.attention import transpose_qkv
from minattn.transformer import EncoderBlock

SYMBOLS = 10   # token ids 0 .. 9


def parse_args(argv=None):
    """The command line (see --help)."""
    p = argparse.ArgumentParser(prog="python -m demos.lesson_tied_qk", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0 .. N-1 per variant")
    p.add_argument("--steps", type=positive_int, default=300, help="predecessor-task training steps")
    p.add_argument("--copy-steps", type=positive_int, default=400, help="copy-task training steps")
    p.add_argument("--length", type=positive_int, default=10, help="predecessor-task sequence length")
    p.add_argument("--seed", type=int, default=0, help="seed of the identity check's random layer and inputs")
    p.add_argument("--out", default="runs/lesson_tied_qk", help="folder for the figures and results.json")
    return p.parse_args(argv)


def scores(layer, x):
    """The raw per-head scores s = q kᵀ / √d_h of a MultiHeadAttention on x (B, L, E), in float64: (B, h, L, L)."""
    q = transpose_qkv(layer.W_q(x), layer.num_heads).data                               # (B, h, L, d_h)
    W_k = layer.W_q if layer.W_k is None else layer.W_k
    k = transpose_qkv(W_k(x), layer.num_heads).data                                     # (B, h, L, d_h)
    return backend.to_numpy(q @ k.swapaxes(-1, -2)) / np.sqrt(layer.head_dim)           # (B, h, L, L)


def identity_report(seed):
    """Symmetry, PSD and the pair inequality for a tied and an untied random layer."""
    rng = np.random.default_rng(seed)
    x = Tensor(backend.asarray(rng.standard_normal((2, 7, 16))))
    report = {}
    for name, tied in (("tied", True), ("separate", False)):
        manual_seed(seed)
        s = scores(MultiHeadAttention(16, 4, share_qk=tied, dtype="float64"), x)       # (B, h, L, L)
        diag = np.diagonal(s, axis1=-2, axis2=-1)                                       # (B, h, L)
        pair_gap = diag[..., :, None] + diag[..., None, :] - 2 * s                      # s_ii + s_jj − 2 s_ij
        report[name] = {"max_asymmetry": float(abs(s - s.swapaxes(-1, -2)).max()),
                        "min_eigenvalue": float(np.linalg.eigvalsh((s + s.swapaxes(-1, -2)) / 2).min())
                        if tied else None,
                        "worst_pair_gap": float(pair_gap.min())}
    return report


class PredecessorModel(Module):
    """Embedding + sinusoidal positions → one self-attention encoder block → a per-position classifier."""

    def __init__(self, share_qk, embed_dim=32, num_heads=1, length=10):
        super().__init__()
        self.embedding = Embedding(SYMBOLS, embed_dim)
        self.positions = PositionalEncoding(embed_dim, max_len=length)
        self.blocks = ModuleList([EncoderBlock(embed_dim, num_heads, 2 * embed_dim,
                                               attention_options={"share_qk": share_qk})])
        self.output = Linear(embed_dim, SYMBOLS)

    def forward(self, ids):
        """ids (B, L) → logits (B, L, SYMBOLS)."""
        x = self.positions(self.embedding(ids))                                         # (B, L, d)
        for block in self.blocks:
            x = block(x)                                                                # (B, L, d)
        return self.output(x)                                                           # (B, L, SYMBOLS)


def predecessor_batch(rng, batch, length, cyclic=True):
    """x random symbols (B, L); y_i = x_{(i−1) mod L} (cyclic), or x_{i−1} with position 0 ignored (label −100)."""
    x = rng.integers(0, SYMBOLS, size=(batch, length))
    first = x[:, -1:] if cyclic else np.full((batch, 1), -100)
    y = np.concatenate([first, x[:, :-1]], axis=1)
    return backend.asarray(x), backend.asarray(y)


def train_predecessor(share_qk, seed, args, cyclic=True, num_heads=1):
    """Train one model; returns (token accuracy on 1,000 fresh sequences, accuracy per position, the model)."""
    manual_seed(seed)
    model = PredecessorModel(share_qk, num_heads=num_heads, length=args.length)
    optimizer = Adam(model.parameters(), betas=(0.9, 0.98), eps=1e-9)
    schedule = WarmupSchedule(optimizer, 32, warmup_steps=50, factor=0.5)
    rng = backend.new_host_rng([seed, 1])                     # the same batches for tied and separate
    for _ in range(args.steps):
        x, y = predecessor_batch(rng, 64, args.length, cyclic)
        logits = model(x)                                                                # (B, L, V)
        loss = F.cross_entropy(logits.reshape(-1, SYMBOLS), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        schedule.step()
        optimizer.step()
    x, y = predecessor_batch(backend.new_host_rng([seed, 2]), 1000, args.length, cyclic)
    model.eval()
    with no_grad():
        pred = backend.to_numpy(model(x).data.argmax(-1))
    y = backend.to_numpy(y)
    scored = y != -100
    return float((pred == y)[scored].mean()), (pred == y).mean(axis=0), model


def copy_accuracy(share_qk, seed, args):
    """Exact match of a small copy-task model trained for --copy-steps."""
    argv = ["--seed", str(seed), "--steps", str(args.copy_steps), "--max-len", "8", "--layers", "1",
            "--schedule", "noam", "--warmup", "100", "--lr-factor", "0.5", "--target", "0", "--eval-every", "0",
            "--no-progress"] + (["--share-qk"] if share_qk else [])
    config = copy_task.parse_args(argv)
    manual_seed(seed)
    model = copy_task.build_model(config)
    copy_task.train(model, config, progress=False)
    return copy_task.evaluate(model, config, eval_size=500)[0]


def plot(out, models, args):
    """predecessor_attention.png: head 0's weights of a trained tied and separate model on one sequence."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, _ = predecessor_batch(backend.new_host_rng(7), 1, args.length)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, (name, model) in zip(axes, models.items()):
        with no_grad():
            model(x)
        weights = backend.to_numpy(model.blocks[0].attention.attention_weights.data)[0, 0]   # (L, L), head 0
        ax.imshow(weights, cmap="viridis", vmin=0, vmax=1)
        ax.set(title=f"{name} W_q, W_k: head 0", xlabel="key position j", ylabel="query position i")
    fig.suptitle("cyclic predecessor task: position i must read i − 1 (the sub-diagonal, and 0 reads L − 1)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "predecessor_attention.png"), dpi=120)
    plt.close(fig)


def _show(values):
    return f"{' '.join(f'{a:6.1%}' for a in values)}  (mean {statistics.mean(values):6.1%})"


def main(argv=None):
    """Print the identity, run the experiment, write the figure and results.json."""
    args = parse_args(argv)
    report = identity_report(args.seed)
    print("1. The identity, on a random layer (float64), scores s = q kᵀ / √d_h per head:")
    for name, r in report.items():
        eig = "" if r["min_eigenvalue"] is None else f", smallest eigenvalue {r['min_eigenvalue']:+.2e}"
        print(f"   {name:9} max |S − Sᵀ| = {r['max_asymmetry']:.2e}{eig}, min over pairs of "
              f"s_ii + s_jj − 2 s_ij = {r['worst_pair_gap']:+.3f}")
    print("   tied: symmetric to rounding and PSD (no pair below 0); separate: neither.\n")

    experiments = [  # (label, function of (tied, seed) -> accuracy)
        (f"cyclic predecessor, 1 head, {args.steps} steps", lambda tied, seed: train_predecessor(tied, seed, args)),
        (f"cyclic predecessor, 4 heads, {args.steps} steps",
         lambda tied, seed: train_predecessor(tied, seed, args, num_heads=4)),
        (f"plain predecessor, 1 head, {args.steps} steps",
         lambda tied, seed: train_predecessor(tied, seed, args, cyclic=False)),
        (f"copy (exact match), 4 heads, {args.copy_steps} steps",
         lambda tied, seed: (copy_accuracy(tied, seed, args), None, None)),
    ]
    results = {"identity": report}
    models, per_position = {}, {}
    print(f"2. Training, seeds 0..{args.seeds - 1}, the same batches for both variants (accuracy per seed, mean):")
    print(f"   {'task':44} {'tied W_q = W_k':36} separate W_q, W_k")
    for number, (label, run) in enumerate(experiments):
        cells = {}
        for name, tied in (("tied", True), ("separate", False)):
            outcomes = [run(tied, seed) for seed in range(args.seeds)]
            cells[name] = [o[0] for o in outcomes]
            if number == 0:
                models[name], per_position[name] = outcomes[0][2], outcomes[0][1]
        results[label] = cells
        print(f"   {label:44} {_show(cells['tied']):36} {_show(cells['separate'])}")
    for name, accuracy in per_position.items():
        print(f"   {name} 1-head model, seed 0, accuracy per position: "
              + " ".join(f"{a:.0%}" for a in accuracy))
    results["per_position_seed0"] = {k: [float(a) for a in v] for k, v in per_position.items()}
    os.makedirs(args.out, exist_ok=True)
    plot(args.out, models, args)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"config": vars(args), **results}, f, indent=2)
    print(f"wrote {args.out}/predecessor_attention.png, results.json")
    return results


if __name__ == "__main__":
    main()
