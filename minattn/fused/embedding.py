"""The embedding lookup, fused, with the backward written by hand; and its twin from primitives."""
from autograd import backend, ops, parallel
from autograd.backend import xp
from autograd.function import Function

ONE_HOT_LIMIT = 4_000_000
"""Above this many (position, token) pairs the backward adds rows one by one (``scatter_add``) instead of building
the (positions × vocabulary) one-hot matrix: the same sums, without a matrix that grows with the vocabulary."""


def embedding_backward(ids, grad_y, num_embeddings):
    """dW of y = W[ids] on whole arrays: row v of dW sums the gradients of the positions that looked up token v."""
    rows_ids = ids.reshape(-1)                                       # (N,)      every position is a row
    rows_g = grad_y.reshape(rows_ids.shape[0], grad_y.shape[-1])     # (N, D)  (N may be 0: no -1 to infer)
    if rows_ids.shape[0] * num_embeddings > ONE_HOT_LIMIT:           # a big vocabulary: add the rows one by one
        dw = xp.zeros((num_embeddings, rows_g.shape[1]), dtype=rows_g.dtype)
        return backend.scatter_add(dw, rows_ids, rows_g)             # (V, D)
    one_hot = (rows_ids[:, None] == xp.arange(num_embeddings)).astype(rows_g.dtype)   # (N, V)  1 where ids_n = v
    return one_hot.T @ rows_g                                        # (V, D)    dW = onehot(ids)ᵀ dy


class EmbeddingFunction(Function):
    """y = W[ids]: the rows of W (V, D) picked by integer ids, with the backward written by hand.

    Forward:  y_n = W[ids_n]                              ids: (...) int, y: (..., D)
    Backward: dW_v = Σ_{n : ids_n = v} dy_n = (onehot(ids)ᵀ dy)_v      (V, D)
              because y_n depends on row ids_n of W alone, with derivative 1: a token looked up k times gets the
              sum of k gradients (a lookup is a product with a one-hot row: y = onehot(ids) W).
    The ids are constants (no gradient). Executed by ``parallel.map_batch`` (positions cut into chunks, each chunk's
    dW added up).
    Source:   PyTorch nn.Embedding; d2l §10.7 (embedding as a one-hot product)
    """

    @staticmethod
    def forward(ctx, weight, ids):
        ctx.save_for_backward(ids)
        ctx.weight = weight
        return weight[ids]                                           # (..., D)

    @staticmethod
    def backward(ctx, grad_y):
        (ids,) = ctx.saved
        return parallel.map_batch(embedding_backward, ids, grad_y, core_ndim=(0, 1),
                                  num_embeddings=ctx.weight.shape[0], grads_for=(ctx.weight,)),   # (V, D)


def embedding_reference(weight, ids):
    """The same lookup composed from engine primitives: getitem, whose backward scatter-adds."""
    return ops.getitem(weight, ids)
