"""The minattn workloads: each builder sets everything up (inputs, module, cotangent) and returns ``run()``, one
forward + backward (or one training step) with nothing else in it, ready to be timed.

Every input is float32, drawn from a seeded host generator. Gradients are reset to None before each call (so no
``+=`` accumulation is timed). Optional APIs that other work adds (``F.flash_attention``,
``MultiHeadAttention(attn_impl="flash")``) are looked up when a row is built; ``Unavailable`` says they are missing.
"""
import numpy as np

from autograd import backend
from minattn import MultiHeadAttention, TalkingHeadsAttention, Tensor, manual_seed
from minattn import functional as F

FLOAT = np.float32


class Unavailable(Exception):
    """The API a row needs does not exist (yet) in this checkout; the row is skipped with this message."""


def _randn(rng, *shape):
    return backend.asarray(rng.standard_normal(shape).astype(FLOAT))


def _leaf(rng, *shape):
    return Tensor(_randn(rng, *shape), requires_grad=True)


def _check_float32(out):
    if out.dtype != FLOAT:
        raise AssertionError(f"expected a float32 output, got {out.dtype}")


def flash_attention_fn():
    """``minattn.functional.flash_attention``, or Unavailable."""
    fn = getattr(F, "flash_attention", None)
    if fn is None:
        raise Unavailable("minattn.functional.flash_attention does not exist in this checkout")
    return fn


def sdpa(batch, length, embed_dim, heads, impl="fused", seed=0):
    """Q, K, V already split into heads, (B, h, L, E/h); backward from a random cotangent of the output.

    impl: 'fused' → F.scaled_dot_product_attention (dense, the hand-written backward); 'flash' → F.flash_attention.
    """
    fn = F.scaled_dot_product_attention if impl == "fused" else flash_attention_fn()
    rng = np.random.default_rng(seed)
    head_dim = embed_dim // heads
    q, k, v = (_leaf(rng, batch, heads, length, head_dim) for _ in range(3))      # (B, h, L, d) each
    cotangent = _randn(rng, batch, heads, length, head_dim)                       # d loss / d out: (B, h, L, d)

    def run():
        q.grad = k.grad = v.grad = None
        out = fn(q, k, v)                                                         # (B, h, L, d)
        out.backward(cotangent)
        return out

    _check_float32(run())
    return run


def _layer_run(layer, batch, length, embed_dim, rng):
    """fwd + bwd of a self-attention layer on x (B, L, E) that requires grad (as a layer inside a model)."""
    x = _leaf(rng, batch, length, embed_dim)                                     # (B, L, E)
    cotangent = _randn(rng, batch, length, embed_dim)                            # (B, L, E)

    def run():
        layer.zero_grad()
        x.grad = None
        out = layer(x, x, x)                                                      # (B, L, E)
        out.backward(cotangent)
        return out

    _check_float32(run())
    return run


def mha(batch, length, embed_dim, heads, impl="fused", seed=0):
    """MultiHeadAttention(E, h) self-attention; impl 'flash' → MultiHeadAttention(..., attn_impl='flash')."""
    manual_seed(seed)
    if impl == "fused":
        layer = MultiHeadAttention(embed_dim, heads)
    else:
        try:
            layer = MultiHeadAttention(embed_dim, heads, attn_impl="flash")
        except TypeError as err:
            raise Unavailable(f"MultiHeadAttention(attn_impl='flash') is not supported in this checkout ({err})")
    return _layer_run(layer, batch, length, embed_dim, np.random.default_rng(seed))


def talking_heads(batch, length, embed_dim, heads, seed=0):
    """Square TalkingHeadsAttention(E, h, bias=True): what timm's CaiT TalkingHeadAttn computes."""
    manual_seed(seed)
    layer = TalkingHeadsAttention(embed_dim, heads, bias=True)
    return _layer_run(layer, batch, length, embed_dim, np.random.default_rng(seed))


def copy_task_config():
    """The default copy-task configuration (``python -m demos.copy_task`` with no options)."""
    from demos import copy_task
    return copy_task.parse_args([])


def copy_batch(args, seed=0):
    """The batch both copy-step rows train on (host NumPy ints), drawn as the demo's training stream draws it."""
    from minattn import tasks
    return tasks.make_batch(backend.new_host_rng([seed, 1]), args.batch_size, args.vocab_size, args.min_len,
                            args.max_len, args.task)


def copy_step(seed=0):
    """One training step of the default copy-task model, as ``demos.copy_task.train`` does it: forward, cross-entropy
    with ignore_index=PAD, zero_grad, backward, clip_grad_norm_, Adam step. The batch (64 sequences, lengths
    2..12) is drawn once, outside the timing; the learning rate is fixed (the warm-up schedule is arithmetic)."""
    from demos import copy_task
    from minattn import Adam, clip_grad_norm_, tasks

    args = copy_task_config()
    manual_seed(seed)
    model = copy_task.build_model(args)
    params = model.parameters()
    optimizer = Adam(params, lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    batch = copy_batch(args, seed)
    src, lens, tgt_in, tgt_out = copy_task.to_device(batch)     # (B, S), (B,), (B, T), (B, T); T = S + 1

    def run():
        logits = model(Tensor(src), Tensor(tgt_in), lens)                                  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=tasks.PAD)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(params, args.clip)
        optimizer.step()
        return loss

    _check_float32(run())
    return run
