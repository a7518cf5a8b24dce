"""Toy sequence-to-sequence tasks: random symbol sequences of variable length, padded, for the encoder–decoder.

Token ids: 0 = PAD, 1 = BOS (begin), 2 = EOS (end), 3 .. vocab_size-1 = symbols.
For a source x = (x_1 .. x_n) the target is y = task(x) followed by EOS; the decoder reads BOS y_1 .. y_n (teacher
forcing) and must predict y_1 .. y_n EOS. Padding fills every sequence to the batch's fixed width; ``valid_lens``
says where the real tokens end, and the loss ignores PAD labels.
"""
from dataclasses import dataclass

from autograd import checks
from autograd.backend import host as np

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL = 3
TASKS = ("copy", "reverse")


@dataclass
class Batch:
    """One padded batch, as host NumPy int64 arrays.

    src (B, max_len): source symbols then PAD; src_valid_lens (B,): the lengths n.
    tgt_in (B, max_len + 1): BOS, y_1 .. y_n, PAD...;  tgt_out (B, max_len + 1): y_1 .. y_n, EOS, PAD...
    """
    src: object
    src_valid_lens: object
    tgt_in: object
    tgt_out: object


def make_batch(rng, batch_size, vocab_size, min_len, max_len, task="copy"):
    """Draw ``batch_size`` sequences with lengths uniform in [min_len, max_len] and symbols uniform over the vocab.

    Args:
        rng: a NumPy Generator (``autograd.backend.new_host_rng(seed)``): the data are drawn on the host.
        task: 'copy' (y = x) or 'reverse' (y = x reversed).
    Raises ValueError for an unknown task, vocab_size <= 3, or lengths outside 1 <= min_len <= max_len; TypeError
    for a non-int size or an rng that is not a NumPy Generator — all before anything is drawn.
    """
    where = "make_batch"
    checks.instance("rng", rng, np.random.Generator, "a NumPy Generator (autograd.backend.new_host_rng(seed))",
                    where)
    batch_size = checks.positive_int("batch_size", batch_size, where)
    vocab_size = checks.integer("vocab_size", vocab_size, low=NUM_SPECIAL + 1, where=where)
    min_len = checks.positive_int("min_len", min_len, where)
    max_len = checks.integer("max_len", max_len, where=where)
    if max_len < min_len:
        checks.fail("max_len", f"an int >= min_len={min_len}", max_len, where)
    task = checks.one_of("task", task, TASKS, where)
    lens = rng.integers(min_len, max_len + 1, size=batch_size)                        # (B,)
    symbols = rng.integers(NUM_SPECIAL, vocab_size, size=(batch_size, max_len))       # (B, max_len)
    positions = np.arange(max_len)[None, :]                             # (1, max_len)
    real = positions < lens[:, None]                                                  # (B, max_len)
    src = symbols * real                                                              # PAD = 0 past the end
    out = src.copy()
    if task == "reverse":
        idx = (lens[:, None] - 1 - positions) % max_len                               # reverse the real part
        out = (src[np.arange(batch_size)[:, None], idx]) * real
    width = max_len + 1
    tgt_in = np.full((batch_size, width), PAD, dtype=np.int64)
    tgt_out = tgt_in.copy()
    tgt_in[:, 0] = BOS
    tgt_in[:, 1:] = out
    tgt_out[:, :max_len] = out
    tgt_out[np.arange(batch_size), lens] = EOS
    return Batch(src.astype("int64"), lens.astype("int64"), tgt_in.astype("int64"), tgt_out.astype("int64"))


def strip(tokens):
    """The tokens before the first EOS (or all of them), without PAD: a list of ints (host)."""
    out = []
    for t in tokens:
        t = int(t)
        if t == EOS:
            break
        if t != PAD:
            out.append(t)
    return out
