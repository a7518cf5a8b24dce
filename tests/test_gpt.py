"""The decoder-only GPT (minattn/gpt.py): forward, weight tying, cached generation, sampling, errors.

  (a) logits (B, T, V) in float32; every parameter gets a gradient; tied weights are the embedding matrix itself;
  (b) generate at temperature 0, with the KV cache, = greedy decoding recomputing the whole sequence each step, for
      every kind of position (learned, sinusoidal, RoPE, ALiBi), with GQA and a sliding window;
  (c) sampling: a seed repeats the tokens; top_k = 1 and a tiny top_p are greedy; the draws follow softmax(z / T);
  (d) errors name the argument.
"""
import numpy as np
import pytest

from autograd import Tensor, backend
from minattn import GPT, manual_seed, no_grad
from minattn import functional as F
from minattn.gpt import POSITIONS, sample
from tests.conftest import host


def _ids(rng, shape=(3, 5), vocab=11):
    return rng.integers(0, vocab, shape)


def test_forward_shapes_dtype_and_gradients(rng):
    """ids (B, T) → logits (B, T, V) float32; a cross-entropy's backward reaches every parameter."""
    manual_seed(0)
    model = GPT(11, 16, embed_dim=16, num_heads=4, num_layers=2)
    ids = _ids(rng)
    logits = model(Tensor(backend.asarray(ids)))
    assert logits.shape == (3, 5, 11) and logits.dtype == np.float32
    loss = F.cross_entropy(logits.reshape(-1, 11), backend.asarray(_ids(rng).reshape(-1)))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tied_weights_are_the_embedding_matrix(rng):
    """tie_weights=True: no output layer, logits = LN(x) Eᵀ, one matrix fewer than untied (V·d parameters)."""
    manual_seed(0)
    tied = GPT(11, 16, embed_dim=16, num_heads=4, num_layers=1, dtype="float64")
    manual_seed(0)
    untied = GPT(11, 16, embed_dim=16, num_heads=4, num_layers=1, tie_weights=False, dtype="float64")
    assert tied.output is None and untied.num_parameters() - tied.num_parameters() == 11 * 16
    untied.output.weight.data[...] = tied.token_embedding.weight.data
    ids = Tensor(backend.asarray(_ids(rng)))
    np.testing.assert_allclose(host(tied(ids)), host(untied(ids)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("options", [{}, dict(num_kv_heads=2, window=4)], ids=["mha", "gqa+window"])
def test_cached_greedy_generation_equals_recomputing(rng, positions, options):
    """temperature 0 with the KV cache = the argmax of the full forward on the whole sequence, step by step."""
    manual_seed(0)
    model = GPT(11, 32, embed_dim=16, num_heads=4, num_layers=2, positions=positions, dtype="float64", **options)
    ids = _ids(rng)
    generated = model.generate(backend.asarray(ids), 9, temperature=0)
    sequence = ids.copy()
    with no_grad():
        for _ in range(9):
            logits = host(model(Tensor(backend.asarray(sequence))))
            sequence = np.concatenate([sequence, logits[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(generated, sequence)


def test_sampling_seed_top_k_top_p(rng):
    """The same seed gives the same tokens; top_k = 1 and top_p = 1e-9 give the greedy tokens; training mode is
    restored."""
    manual_seed(0)
    model = GPT(11, 32, embed_dim=16, num_heads=4, num_layers=1)
    ids = backend.asarray(_ids(rng))
    a, b = model.generate(ids, 8, seed=7), model.generate(ids, 8, seed=7)
    np.testing.assert_array_equal(a, b)
    greedy = model.generate(ids, 8, temperature=0)
    np.testing.assert_array_equal(model.generate(ids, 8, top_k=1, seed=1), greedy)
    np.testing.assert_array_equal(model.generate(ids, 8, top_p=1e-9, seed=1), greedy)
    assert model.training


def test_sample_follows_the_softmax():
    """20,000 draws from one row: the frequencies match softmax(z / T) within 0.01; top_k keeps the k largest;
    top_p keeps the smallest set reaching p."""
    z = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    gen = np.random.default_rng(0)
    draws = np.concatenate([sample(z, rng=gen) for _ in range(20000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 20000, [0.5, 0.3, 0.15, 0.05], atol=0.01)
    hot = np.concatenate([sample(z, temperature=0.5, rng=gen) for _ in range(20000)])
    p = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
    np.testing.assert_allclose(np.bincount(hot, minlength=4) / 20000, p / p.sum(), atol=0.01)
    assert set(np.concatenate([sample(z, top_k=2, rng=gen) for _ in range(500)])) == {0, 1}
    assert set(np.concatenate([sample(z, top_p=0.7, rng=gen) for _ in range(500)])) == {0, 1}


@pytest.mark.parametrize("call, message", [
    (lambda m, i: m.generate(i, -1), r"max_new_tokens must be an int >= 0, got -1"),
    (lambda m, i: m.generate(i, 2, temperature=-1.0), r"temperature must be a finite number >= 0, got -1.0"),
    (lambda m, i: m.generate(i, 2, top_k=0), r"top_k must be an int >= 1, got 0"),
    (lambda m, i: m.generate(i, 2, top_p=1.5), r"top_p must be a finite number in \(0, 1\], got 1.5"),
    (lambda m, i: m.generate(i[0], 2), r"idx must be \(batch, T >= 1\) token ids"),
    (lambda m, i: GPT(11, 16, positions="absolute"), r"positions must be one of 'learned', 'sinusoidal', 'rope'"),
])
def test_errors(rng, call, message):
    """ValueError naming the argument and the value received."""
    model = GPT(11, 16, embed_dim=8, num_heads=2, num_layers=1)
    with pytest.raises(ValueError, match=message):
        call(model, backend.asarray(_ids(rng)))


def test_generation_past_max_len_crops_the_context(rng):
    """Learned positions cover max_len = 8 tokens: when the context fills them, generation goes on from its last 7
    tokens (re-read from position 0, as nanoGPT crops) — each token the greedy argmax of a full forward on that
    context, computed here without a cache."""
    manual_seed(0)
    model = GPT(11, 8, embed_dim=16, num_heads=4, num_layers=1, dtype="float64")
    ids = _ids(rng, (2, 5))
    generated = model.generate(backend.asarray(ids), 12, temperature=0)
    sequence, start = ids.copy(), 0
    with no_grad():
        for _ in range(12):
            if sequence.shape[1] - start > 8:                # the context would pass max_len: keep its last 7
                start = sequence.shape[1] - 7
            logits = host(model(Tensor(backend.asarray(sequence[:, start:]))))
            sequence = np.concatenate([sequence, logits[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(generated, sequence)


def test_a_prompt_longer_than_max_len_is_read_from_its_end_and_returned_whole(rng):
    """max_len = 8 and a prompt of 10: the model reads its last 8 tokens (each new token the greedy argmax of a full
    forward on the last 8 — fewer once a refill keeps 7), and the result is (B, 10 + new), the prompt untouched."""
    manual_seed(1)
    model = GPT(11, 8, embed_dim=16, num_heads=4, num_layers=1, dtype="float64")
    ids = _ids(rng, (2, 10))
    generated = model.generate(backend.asarray(ids), 3, temperature=0)
    assert generated.shape == (2, 13)
    np.testing.assert_array_equal(generated[:, :10], ids)
    sequence, start = ids.copy(), 2
    with no_grad():
        for _ in range(3):
            if sequence.shape[1] - start > 8:
                start = sequence.shape[1] - 7
            logits = host(model(Tensor(backend.asarray(sequence[:, start:]))))
            sequence = np.concatenate([sequence, logits[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(generated, sequence)


def test_generation_with_max_len_1_reads_one_token_at_a_time(rng):
    """max_len = 1: every new token is the argmax given the previous token alone."""
    manual_seed(2)
    model = GPT(11, 1, embed_dim=8, num_heads=2, num_layers=1, dtype="float64")
    ids = _ids(rng, (2, 1))
    generated = model.generate(backend.asarray(ids), 4, temperature=0)
    assert generated.shape == (2, 5)
    with no_grad():
        for t in range(4):
            logits = host(model(Tensor(backend.asarray(generated[:, t:t + 1]))))
            np.testing.assert_array_equal(generated[:, t + 1], logits[:, -1].argmax(-1))


def test_gpt2_init_draws_the_papers_standard_deviations():
    """init="gpt2": weights ~ N(0, 0.02²); W_o and the FFN's second Linear ~ N(0, (0.02/√(2N))²) with N = 4 blocks;
    biases 0; LayerNorms γ = 1, β = 0; the same seed gives the same weights. (Sample sizes ≥ 4,096: the standard
    deviation's relative standard error is ≤ 1.1%, so a 5% band cannot be met by a wrong scale.)"""
    manual_seed(3)
    model = GPT(64, 32, embed_dim=128, num_heads=4, num_layers=4, init="gpt2")
    params = dict(model.named_parameters())
    residual = 0.02 / np.sqrt(2 * 4)
    for name, p in params.items():
        values = host(p)
        if "norm" in name:
            assert np.all(values == (1.0 if name.endswith("weight") else 0.0)), name
        elif name.endswith("bias"):
            assert np.all(values == 0), name
        else:
            expected = residual if name.endswith(("W_o.weight", "ffn.dense2.weight")) else 0.02
            assert abs(values.std() / expected - 1) < 0.05 and abs(values.mean()) < 0.1 * expected, name
    manual_seed(3)
    again = GPT(64, 32, embed_dim=128, num_heads=4, num_layers=4, init="gpt2")
    assert all(np.array_equal(host(p), host(q)) for p, q in zip(model.parameters(), again.parameters()))


def test_unknown_init_is_refused_before_any_draw():
    """A bad ``init`` names the valid ones, and the parameter stream is left where it was."""
    manual_seed(5)
    with pytest.raises(ValueError, match="init must be one of 'pytorch', 'gpt2', got 'xavier'"):
        GPT(11, 8, embed_dim=16, num_heads=2, num_layers=1, init="xavier")
    first = host(GPT(11, 8, embed_dim=16, num_heads=2, num_layers=1).token_embedding.weight)
    manual_seed(5)
    assert np.array_equal(first, host(GPT(11, 8, embed_dim=16, num_heads=2, num_layers=1).token_embedding.weight))
