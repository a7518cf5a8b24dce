"""Next-token training for the GPT lessons: Adam, cross-entropy over every position that has a target, clipping."""
from autograd import backend
from minattn import Adam, Tensor, clip_grad_norm_
from minattn import functional as F

IGNORE = -100
"""The target of a position that has nothing to predict (no loss there): cross_entropy's ignore_index."""


def train_next_token(model, batches, steps, lr=1e-3, log_every=None, optimizer=None, on_step=None, schedule=None):
    """Train ``model`` (ids (B, T) → logits (B, T, V)) for ``steps`` batches from ``batches()``, each a pair of host
    int arrays (inputs (B, T), targets (B, T) with IGNORE where nothing is predicted), with ``optimizer`` (default: a
    new Adam at ``lr``; pass the same one to continue a run) and, if given, a ``schedule`` (e.g. CosineSchedule) that
    sets its lr before every step. ``on_step(loss_tensor)``, if given, runs after every step (a progress bar).
    Returns [(step, loss)] every ``log_every`` steps and at the last (printed), or [] when log_every is None."""
    optimizer = Adam(model.parameters(), lr=lr) if optimizer is None else optimizer
    losses = []
    for step in range(1, steps + 1):
        x, y = batches()
        logits = model(Tensor(backend.asarray(x)))                                  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), backend.asarray(y.reshape(-1)),
                               ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        if schedule is not None:
            schedule.step()
        optimizer.step()
        if on_step is not None:
            on_step(loss)
        if log_every is not None and (step % log_every == 0 or step == steps):
            losses.append((step, loss.item()))
            print(f"step {step}: loss {losses[-1][1]:.4f}")
    return losses
