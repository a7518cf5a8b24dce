"""The PyTorch bridge (minattn/interop.py): a converted module computes what the original computes.

  (a) every kind — Linear, LayerNorm, Embedding, MultiHeadAttention (plain, causal, key padding, a boolean mask,
      kdim/vdim, no bias), the encoder–decoder Transformer (post- and pre-norm), GPT (learned, sinusoidal, RoPE,
      ALiBi positions; untied; grouped key/value heads with a sliding window) — in float64 from a fixed seed: the
      same input through minattn and through its torch twin gives outputs equal to 1e-12, and after backward of the
      same loss every parameter's gradient (and the inputs') equal to 1e-12. The expected values are always the
      other library's; the gradients are matched by PyTorch's documented names, written here again, not by
      interop.parameter_map;
  (b) round trips: minattn → torch → minattn and torch → minattn → torch give back identical weights;
  (c) torch-side conventions: nn.MultiheadAttention not batch-first, nn.LayerNorm without affine parameters;
  (d) conversions copy (never share) weights and draw from neither library's random stream;
  (e) what cannot be expressed is refused, naming the option or the argument;
  (f) end to end: a copy-task model trained a few dozen steps with demos/copy_task.py's helpers, exported with
      to_torch, decodes greedily in torch to exactly the tokens minattn's greedy_decode writes.
Skipped as a whole where PyTorch is not installed (minattn does not need it).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is optional for minattn: the interop bridge is tested only "
                                            "where it is installed")
from torch import nn                                       # noqa: E402
from torch.nn import functional as TF                      # noqa: E402

from autograd import Tensor, backend                       # noqa: E402
from minattn import (GPT, Dropout, Embedding, LayerNorm, Linear, MultiHeadAttention, Transformer,  # noqa: E402
                     manual_seed, tasks)
from minattn import functional as F                        # noqa: E402
from minattn import interop                                # noqa: E402
from tests.conftest import host, t64                       # noqa: E402

TOL = dict(rtol=1e-12, atol=1e-12)
"""float64 throughout (a) and (f): the two libraries differ only by the order of floating-point operations."""


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These modules are tiny: one PyTorch thread is the fastest, and on a busy 2-core machine PyTorch's OpenMP pool
    of 2 runs 10-100x slower. Put back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tt(array, requires_grad=False):
    """A float64 (or integer) torch tensor copied from a host array."""
    out = torch.tensor(np.asarray(array))
    return out.requires_grad_() if requires_grad else out


def torch_name(name, rows, packed=True):
    """minattn parameter name → (torch name, row slice or None), as PyTorch documents nn.MultiheadAttention:
    in_proj_weight (3E, E) and in_proj_bias (3E,) hold q, k, v in that order (q/k/v_proj_weight when kdim or vdim
    differ from E); out_proj the output projection. ``rows``: E. Every other name is the same in the twin."""
    head, _, leaf = name.rpartition(".")
    owner, _, layer = head.rpartition(".")
    prefix = owner + "." if owner else ""
    if layer == "W_o":
        return f"{prefix}out_proj.{leaf}", None
    if layer in ("W_q", "W_k", "W_v"):
        i = "qkv".index(layer[-1])
        if leaf == "bias" or packed:
            return f"{prefix}in_proj_{leaf}", slice(i * rows, (i + 1) * rows)
        return f"{prefix}{layer[-1]}_proj_weight", None
    return name, None


def assert_gradients_match(module, twin, packed=True, native_attention=True):
    """Every minattn parameter's gradient equals its torch counterpart's (TOL), and every torch parameter was
    compared. ``native_attention``: W_q … are nn.MultiheadAttention's (else the twin uses minattn's names)."""
    params = dict(twin.named_parameters())
    seen = set()
    for name, p in module.named_parameters():
        tname, span = torch_name(name, _embed_dim(module, name), packed) if native_attention else (name, None)
        grad = params[tname].grad
        grad = grad if span is None else grad[span]
        np.testing.assert_allclose(host(p.grad), grad.numpy(), **TOL, err_msg=name)
        seen.add(tname)
    assert seen == set(params)


def _embed_dim(module, name):
    """E of the attention layer that owns ``name`` (its W_q's output width); None outside attention."""
    head, _, _ = name.rpartition(".")
    owner, _, layer = head.rpartition(".")
    if layer not in ("W_q", "W_k", "W_v", "W_o"):
        return None
    return dict(module.named_parameters())[(owner + "." if owner else "") + "W_q.weight"].shape[0]


def assert_same_weights(a, b):
    """Two minattn modules hold bit-identical parameters of the same names and dtypes."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and np.array_equal(sa[name], sb[name]), name


def assert_same_torch_weights(a, b):
    """Two torch modules hold bit-identical parameters of the same names and dtypes."""
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


# --- (a) the layers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(rng, bias):
    manual_seed(0)
    layer = Linear(5, 3, bias=bias, dtype="float64")
    twin = interop.to_torch(layer)
    assert type(twin) is nn.Linear and twin.weight.dtype == torch.float64 and (twin.bias is None) == (not bias)
    x, cotangent = rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 4, 3))
    xm, xt = t64(x), tt(x, requires_grad=True)
    out = layer(xm)
    out.backward(backend.asarray(cotangent))
    expected = twin(xt)
    expected.backward(tt(cotangent))
    np.testing.assert_allclose(host(out), expected.detach().numpy(), **TOL)
    np.testing.assert_allclose(host(xm.grad), xt.grad.numpy(), **TOL)
    assert_gradients_match(layer, twin)


def test_layer_norm_matches_torch_with_its_eps(rng):
    manual_seed(0)
    norm = LayerNorm(6, eps=1e-2, dtype="float64")
    norm.weight.data[...] = rng.standard_normal(6)     # not the initial 1 and 0: the copy must carry them
    norm.bias.data[...] = rng.standard_normal(6)
    twin = interop.to_torch(norm)
    assert type(twin) is nn.LayerNorm and twin.eps == 1e-2 and twin.normalized_shape == (6,)
    x, cotangent = rng.standard_normal((3, 4, 6)), rng.standard_normal((3, 4, 6))
    xm, xt = t64(x), tt(x, requires_grad=True)
    out = norm(xm)
    out.backward(backend.asarray(cotangent))
    expected = twin(xt)
    expected.backward(tt(cotangent))
    np.testing.assert_allclose(host(out), expected.detach().numpy(), **TOL)
    np.testing.assert_allclose(host(xm.grad), xt.grad.numpy(), **TOL)
    assert_gradients_match(norm, twin)


def test_embedding_matches_torch(rng):
    """Repeated ids: both libraries add the gradients of every use of a row."""
    manual_seed(0)
    table = Embedding(7, 4, dtype="float64")
    twin = interop.to_torch(table)
    assert type(twin) is nn.Embedding and twin.padding_idx is None
    ids = np.array([[1, 3, 3], [6, 1, 1]])
    cotangent = rng.standard_normal((2, 3, 4))
    out = table(backend.asarray(ids))
    out.backward(backend.asarray(cotangent))
    expected = twin(torch.as_tensor(ids))
    expected.backward(tt(cotangent))
    np.testing.assert_allclose(host(out), expected.detach().numpy(), **TOL)
    assert_gradients_match(table, twin)


# --- (a) multi-head attention ---------------------------------------------------------------------------------------
B, L, S, E, H = 2, 5, 6, 8, 2
LENS = np.array([6, 2])
"""Two sequences of S = 6 keys, the second padded after 2."""
MASK = np.array([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [1, 0, 0, 1, 0, 0]],
                dtype=bool)
"""An arbitrary boolean (L, S) mask, True = take part, every query with at least one key."""
MHA_CASES = {
    # name: (layer options, self-attention?, minattn call keywords, nn.MultiheadAttention call keywords)
    "self": ({}, True, {}, {}),
    "causal": ({}, True, {"is_causal": True}, {"attn_mask": torch.ones(L, L, dtype=torch.bool).triu(1)}),
    "key_padding": ({}, False, {"valid_lens": LENS},
                    {"key_padding_mask": torch.arange(S)[None, :] >= torch.as_tensor(LENS)[:, None]}),
    "bool_mask": ({}, False, {"attn_mask": MASK}, {"attn_mask": ~torch.as_tensor(MASK)}),
    "kdim_vdim_padding": ({"kdim": 3, "vdim": 7}, False, {"valid_lens": LENS},
                          {"key_padding_mask": torch.arange(S)[None, :] >= torch.as_tensor(LENS)[:, None]}),
    "no_bias_causal": ({"bias": False}, True, {"is_causal": True},
                       {"attn_mask": torch.ones(L, L, dtype=torch.bool).triu(1)}),
    "dropout_in_eval": ({"dropout": 0.5}, False, {}, {}),
}


@pytest.mark.parametrize("case", MHA_CASES)
def test_multi_head_attention_matches_torch(rng, case):
    """nn.MultiheadAttention(batch_first=True) with the packed in_proj (or q/k/v_proj_weight for kdim/vdim): the
    same output and gradients (query, key, value and every weight), its masks written as PyTorch documents them
    (True = masked)."""
    options, self_attention, ours, theirs = MHA_CASES[case]
    manual_seed(1)
    layer = MultiHeadAttention(E, H, dtype="float64", **options)
    if "dropout" in options:
        layer.eval()
    twin = interop.to_torch(layer)
    assert type(twin) is nn.MultiheadAttention and twin.batch_first and twin.training == layer.training
    kdim, vdim = options.get("kdim", E), options.get("vdim", E)
    q = rng.standard_normal((B, L, E))
    k, v = (q, q) if self_attention else (rng.standard_normal((B, S, kdim)), rng.standard_normal((B, S, vdim)))
    cotangent = rng.standard_normal((B, L, E))
    inputs_m = [t64(q)] if self_attention else [t64(a) for a in (q, k, v)]
    inputs_t = [tt(q, True)] if self_attention else [tt(a, True) for a in (q, k, v)]
    out = layer(*(inputs_m * 3 if self_attention else inputs_m), **ours)
    out.backward(backend.asarray(cotangent))
    expected = twin(*(inputs_t * 3 if self_attention else inputs_t), need_weights=False, **theirs)[0]
    expected.backward(tt(cotangent))
    np.testing.assert_allclose(host(out), expected.detach().numpy(), **TOL)
    for a, b in zip(inputs_m, inputs_t):
        np.testing.assert_allclose(host(a.grad), b.grad.numpy(), **TOL)
    assert_gradients_match(layer, twin, packed=kdim == E and vdim == E)


def test_key_padding_mask_is_valid_lens_inverted():
    expected = torch.tensor([[False, False, False, True], [False, True, True, True], [True, True, True, True]])
    for lens in (np.array([3, 1, 0]), torch.tensor([3, 1, 0]), Tensor(backend.asarray(np.array([3, 1, 0])))):
        assert torch.equal(interop.key_padding_mask(lens, 4), expected)
    assert interop.key_padding_mask(None, 4) is None
    with pytest.raises(ValueError, match=r"valid_lens must be \(batch,\)"):
        interop.key_padding_mask(np.ones((2, 3), dtype=int), 4)
    with pytest.raises(TypeError, match="valid_lens must be integers"):
        interop.key_padding_mask(np.ones(2), 4)


@pytest.mark.parametrize("options, named", [
    ({"rope": True}, "rope=True"), ({"alibi": True}, "alibi=True"), ({"window": 2}, "window=2"),
    ({"num_kv_heads": 1}, "num_kv_heads=1"), ({"qk_norm": True}, "qk_norm=True"), ({"share_qk": True}, "share_qk=True"),
])
def test_multi_head_attention_options_torch_lacks_are_refused(options, named):
    layer = MultiHeadAttention(E, H, dtype="float64", **options)
    with pytest.raises(ValueError, match=f"{named}.*nn.MultiheadAttention cannot express"):
        interop.to_torch(layer)


# --- (a) the models -------------------------------------------------------------------------------------------------
def _transformer_batch(rng):
    src = rng.integers(3, 13, (3, 7))
    lens = np.array([7, 3, 1])
    src[1, 3:] = src[2, 1:] = tasks.PAD
    tgt_in, tgt_out = rng.integers(3, 14, (3, 6)), rng.integers(0, 14, (3, 6))
    tgt_out[2, 2:] = tasks.PAD
    return src, lens, tgt_in, tgt_out


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_matches_torch(rng, norm_first):
    """Padding keys (valid_lens ↔ key_padding_mask) in encoder self-attention and cross-attention, the causal decoder,
    post-norm or pre-norm with its two final norms: the same logits and every gradient of a padded cross-entropy."""
    manual_seed(2)
    model = Transformer(13, 14, embed_dim=16, num_heads=4, ffn_hidden=24, num_encoder_layers=2, num_decoder_layers=2,
                        max_len=10, norm_first=norm_first, dtype="float64")
    twin = interop.to_torch(model)
    assert type(twin) is interop.TorchTransformer and twin.output.weight.dtype == torch.float64
    src, lens, tgt_in, tgt_out = _transformer_batch(rng)
    logits = model(Tensor(backend.asarray(src)), Tensor(backend.asarray(tgt_in)), backend.asarray(lens))
    loss = F.cross_entropy(logits.reshape(-1, 14), backend.asarray(tgt_out.reshape(-1)), ignore_index=tasks.PAD)
    loss.backward()
    expected = twin(torch.as_tensor(src), torch.as_tensor(tgt_in), torch.as_tensor(lens))
    TF.cross_entropy(expected.reshape(-1, 14), torch.as_tensor(tgt_out.reshape(-1)), ignore_index=tasks.PAD).backward()
    np.testing.assert_allclose(host(logits), expected.detach().numpy(), **TOL)
    assert_gradients_match(model, twin)


GPT_CASES = {
    "learned": {},
    "sinusoidal": {"positions": "sinusoidal"},
    "rope": {"positions": "rope"},
    "alibi": {"positions": "alibi"},
    "alibi_6_heads": {"positions": "alibi", "embed_dim": 24, "num_heads": 6},   # slopes for h not a power of two
    "untied": {"tie_weights": False},
    "gqa_window": {"num_kv_heads": 2, "window": 3},
    "rope_gqa_window": {"positions": "rope", "num_kv_heads": 1, "window": 4},
}


@pytest.mark.parametrize("case", GPT_CASES)
def test_gpt_matches_torch(rng, case):
    """Causal pre-LN blocks: nn.MultiheadAttention (learned, sinusoidal positions) or TorchAttention on torch's
    scaled_dot_product_attention (RoPE, ALiBi, grouped key/value heads, a sliding window): the same logits and
    every gradient of a cross-entropy."""
    options = dict(embed_dim=16, num_heads=4, num_layers=2)
    options.update(GPT_CASES[case])
    manual_seed(3)
    model = GPT(11, 12, dtype="float64", **options)
    twin = interop.to_torch(model)
    ids, targets = rng.integers(0, 11, (3, 9)), rng.integers(0, 11, (3, 9))
    logits = model(Tensor(backend.asarray(ids)))
    F.cross_entropy(logits.reshape(-1, 11), backend.asarray(targets.reshape(-1))).backward()
    expected = twin(torch.as_tensor(ids))
    TF.cross_entropy(expected.reshape(-1, 11), torch.as_tensor(targets.reshape(-1))).backward()
    np.testing.assert_allclose(host(logits), expected.detach().numpy(), **TOL)
    native = isinstance(twin.blocks[0].attention, nn.MultiheadAttention)
    assert native == (case in ("learned", "sinusoidal", "untied"))
    assert_gradients_match(model, twin, native_attention=native)


def test_gpt_twin_is_causal(rng):
    """Changing the last token changes no earlier position's logits in the torch twin, which still equal minattn's."""
    manual_seed(4)
    model = GPT(11, 12, embed_dim=16, num_heads=4, num_layers=2, dtype="float64")
    twin = interop.to_torch(model)
    ids = rng.integers(0, 11, (2, 8))
    changed = ids.copy()
    changed[:, -1] = (ids[:, -1] + 1) % 11
    with torch.no_grad():
        before, after = twin(torch.as_tensor(ids)).numpy(), twin(torch.as_tensor(changed)).numpy()
    assert np.array_equal(before[:, :-1], after[:, :-1]) and not np.allclose(before[:, -1], after[:, -1])
    np.testing.assert_allclose(before, host(model(Tensor(backend.asarray(ids)))), **TOL)


def test_layer_norm_eps_travels_inside_models(rng):
    """LayerNorm's eps is a setting, not a parameter: a changed one reaches the twin's norms, and comes back."""
    manual_seed(4)
    model = GPT(11, 12, embed_dim=16, num_heads=4, num_layers=1, dtype="float64")
    for m in (model.blocks[0].norm1, model.blocks[0].norm2, model.final_norm):
        m.eps = 0.5
    twin = interop.to_torch(model)
    assert {m.eps for m in twin.modules() if isinstance(m, nn.LayerNorm)} == {0.5}
    ids = rng.integers(0, 11, (2, 5))
    with torch.no_grad():
        np.testing.assert_allclose(host(model(Tensor(backend.asarray(ids)))), twin(torch.as_tensor(ids)).numpy(), **TOL)
    assert interop.from_torch(twin).final_norm.eps == 0.5


def test_float32_modules_convert_to_float32(rng):
    """A float32 model gives a float32 twin; they agree to float32 rounding (rtol 1e-5, atol 1e-6)."""
    manual_seed(5)
    model = GPT(11, 12, embed_dim=16, num_heads=4, num_layers=1)
    twin = interop.to_torch(model)
    assert {p.dtype for p in twin.parameters()} == {torch.float32}
    ids = rng.integers(0, 11, (2, 6))
    with torch.no_grad():
        expected = twin(torch.as_tensor(ids)).numpy()
    np.testing.assert_allclose(host(model(Tensor(backend.asarray(ids)))), expected, rtol=1e-5, atol=1e-6)
    assert interop.from_torch(twin).token_embedding.weight.dtype == np.float32


# --- (b) round trips ------------------------------------------------------------------------------------------------
def _minattn_modules():
    manual_seed(6)
    return [Linear(4, 3, dtype="float64"), Linear(4, 3, bias=False), LayerNorm(5, eps=1e-3, dtype="float64"),
            Embedding(9, 4, dtype="float64"), MultiHeadAttention(8, 2, dtype="float64"),
            MultiHeadAttention(8, 2, bias=False, kdim=3, vdim=5, dtype="float64"),
            Transformer(9, 10, 8, 2, 12, 1, 2, max_len=8, dtype="float64"),
            Transformer(9, 10, 8, 2, 12, 2, 1, max_len=8, norm_first=True, dtype="float64"),
            GPT(9, 8, 8, 2, 1, dtype="float64"), GPT(9, 8, 8, 2, 1, positions="rope", num_kv_heads=1, window=3,
                                                     tie_weights=False, dtype="float64")]


@pytest.mark.parametrize("index", range(10))
def test_minattn_to_torch_to_minattn_gives_back_the_same_weights(index):
    module = _minattn_modules()[index]
    back = interop.from_torch(interop.to_torch(module))
    assert type(back) is type(module)
    assert_same_weights(module, back)
    if isinstance(module, LayerNorm):
        assert back.eps == module.eps


def _torch_modules():
    torch.manual_seed(7)
    return [nn.Linear(4, 3, dtype=torch.float64), nn.Linear(4, 3, bias=False),
            nn.LayerNorm(5, eps=1e-3, dtype=torch.float64), nn.Embedding(9, 4, dtype=torch.float64),
            nn.MultiheadAttention(8, 2, dtype=torch.float64),                      # batch_first=False
            nn.MultiheadAttention(8, 2, bias=False, kdim=3, vdim=5, batch_first=True, dtype=torch.float64),
            interop.TorchTransformer(9, 10, 8, 2, 12, 1, 2, max_len=8, dtype=torch.float64),
            interop.TorchGPT(9, 8, 8, 2, 1, positions="alibi", num_kv_heads=1, tie_weights=False, dtype=torch.float64),
            interop.TorchGPT(9, 8, 8, 2, 1, positions="sinusoidal", dtype=torch.float64)]


@pytest.mark.parametrize("index", range(9))
def test_torch_to_minattn_to_torch_gives_back_the_same_weights(index):
    module = _torch_modules()[index]
    back = interop.to_torch(interop.from_torch(module))
    assert type(back) is type(module)
    assert_same_torch_weights(module, back)


# --- (c) torch-side conventions -------------------------------------------------------------------------------------
def test_from_torch_multihead_attention_not_batch_first(rng):
    """nn.MultiheadAttention(batch_first=False) reads (L, B, E); the minattn layer made from it reads (B, L, E)."""
    torch.manual_seed(8)
    theirs = nn.MultiheadAttention(E, H, dtype=torch.float64)
    layer = interop.from_torch(theirs)
    assert layer.W_q.weight.dtype == np.float64 and layer.num_heads == H
    q, k = rng.standard_normal((B, L, E)), rng.standard_normal((B, S, E))
    padding = torch.arange(S)[None, :] >= torch.as_tensor(LENS)[:, None]
    with torch.no_grad():
        expected = theirs(tt(q).transpose(0, 1), tt(k).transpose(0, 1), tt(k).transpose(0, 1),
                          key_padding_mask=padding, need_weights=False)[0].transpose(0, 1)   # (B, L, E)
    out = layer(t64(q), t64(k), t64(k), valid_lens=backend.asarray(LENS))
    np.testing.assert_allclose(host(out), expected.numpy(), **TOL)


def test_from_torch_layer_norm_without_affine_parameters(rng):
    """nn.LayerNorm(elementwise_affine=False) has no γ, β: minattn's gets γ = 1, β = 0, the same function. (With no
    parameter to read a dtype from, from_torch needs ``dtype`` for float64.)"""
    theirs = nn.LayerNorm(6, eps=1e-4, elementwise_affine=False, dtype=torch.float64)
    assert interop.from_torch(theirs).weight.dtype == np.float32
    norm = interop.from_torch(theirs, dtype="float64")
    x = rng.standard_normal((3, 6))
    np.testing.assert_allclose(host(norm(t64(x))), theirs(tt(x)).numpy(), **TOL)
    assert norm.eps == 1e-4


# --- (d) copies, not views; no random draws -------------------------------------------------------------------------
def test_weights_are_copied_not_shared():
    manual_seed(9)
    layer = Linear(3, 2, dtype="float64")
    before = layer.state_dict()
    twin = interop.to_torch(layer)
    with torch.no_grad():
        twin.weight.add_(1.0)
    assert_same_weights(layer, interop.from_torch(interop.to_torch(layer)))
    np.testing.assert_array_equal(host(layer.weight), before["weight"])
    back = interop.from_torch(twin)
    back.weight.data[...] = 0
    assert bool((twin.weight != 0).all())


def test_conversions_draw_from_neither_random_stream():
    manual_seed(10)
    model = GPT(9, 8, 8, 2, 1, dtype="float64")
    torch_state = torch.random.get_rng_state()
    host_state = backend.host_rng().bit_generator.state
    interop.from_torch(interop.to_torch(model))
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert backend.host_rng().bit_generator.state == host_state


# --- (e) refusals ---------------------------------------------------------------------------------------------------
class MyLinear(nn.Linear):
    """A subclass may compute something else: refused."""


@pytest.mark.parametrize("make, error, match", [
    (lambda: object(), TypeError, "torch_module must be a torch.nn.Module"),
    (lambda: nn.Conv1d(2, 2, 1), TypeError, r"torch_module must be one of nn.Linear.*got torch.nn.modules.conv.Conv1d"),
    (lambda: MyLinear(2, 2), TypeError, "a subclass may compute something else"),
    (lambda: nn.MultiheadAttention(8, 2, add_bias_kv=True), ValueError, "add_bias_kv=True"),
    (lambda: nn.MultiheadAttention(8, 2, add_zero_attn=True), ValueError, "add_zero_attn=True"),
    (lambda: nn.Embedding(5, 2, padding_idx=0), ValueError, "padding_idx=0"),
    (lambda: nn.Embedding(5, 2, max_norm=1.0), ValueError, "max_norm=1.0"),
    (lambda: nn.LayerNorm((3, 4)), ValueError, r"normalized_shape=\(3, 4\)"),
    (lambda: nn.Linear(2, 2, dtype=torch.float16), TypeError, "pass dtype='float32' or 'float64'"),
])
def test_from_torch_refuses_what_minattn_cannot_express(make, error, match):
    with pytest.raises(error, match=match):
        interop.from_torch(make())


def test_to_torch_refusals_name_the_layer_and_option():
    with pytest.raises(TypeError, match="module must be a minattn Linear.*got Dropout"):
        interop.to_torch(Dropout(0.1))
    talking = Transformer(9, 9, 8, 2, 12, 1, 1, attention="talking-heads")
    with pytest.raises(ValueError, match=r"Transformer.encoder_blocks.0.attention is talking-heads"):
        interop.to_torch(talking)
    grouped = Transformer(9, 9, 8, 2, 12, 1, 1, attention_options={"num_kv_heads": 1})
    with pytest.raises(ValueError, match=r"Transformer.encoder_blocks.0.attention has num_kv_heads=1"):
        interop.to_torch(grouped)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        interop.to_torch(Linear(2, 2), dtype="int64")


# --- (f) end to end -------------------------------------------------------------------------------------------------
def test_trained_copy_model_decodes_the_same_tokens_in_torch():
    """demos/copy_task.py's recipe (Adam, warm-up, clipping) for 60 steps on a small float64 model, then greedy
    decoding of 64 held-out sequences: minattn's greedy_decode (with its KV cache) and the exported twin's
    (TorchTransformer.greedy_decode, the whole prefix re-run each step) write the same tokens, EOS and padding
    included. float64 so that no argmax is a near-tie that rounding could flip."""
    from demos import copy_task

    args = copy_task.parse_args(["--embed-dim", "32", "--num-heads", "2", "--ffn-hidden", "64", "--layers", "1",
                                 "--max-len", "6", "--seed", "3", "--schedule", "constant", "--lr", "3e-3",
                                 "--warmup", "50", "--steps", "60", "--target", "0", "--eval-every", "0",
                                 "--eval-size", "64", "--no-progress"])
    manual_seed(args.seed)
    model = Transformer(args.vocab_size, args.vocab_size, args.embed_dim, args.num_heads, args.ffn_hidden,
                        args.layers, args.layers, args.dropout, max_len=args.max_len + 1, dtype="float64")
    run = copy_task.train(model, args, progress=False)
    assert run.losses[-1] < 0.75 * run.losses[0]                        # it learned something
    batch = copy_task.held_out_batches(args)[0]
    src, lens, _, _ = copy_task.to_device(batch)
    expected = model.greedy_decode(Tensor(src), lens, tasks.BOS, tasks.EOS, args.max_len + 1)   # (64, 7)
    twin = interop.to_torch(model)
    tokens = twin.greedy_decode(torch.as_tensor(batch.src), torch.as_tensor(batch.src_valid_lens), tasks.BOS,
                                tasks.EOS, args.max_len + 1)
    assert tokens.dtype == torch.int64 and tuple(tokens.shape) == expected.shape
    np.testing.assert_array_equal(tokens.numpy(), expected)
    ends = (expected == tasks.EOS).argmax(axis=1)
    assert len(set(ends.tolist())) > 2                                  # sequences end at several lengths
