"""The four lessons (demos/lesson_*.py) end to end on tiny settings: each main() returns the numbers it printed,
the identities hold to rounding (< 1e-10), the contrasts are large (> 1e-3), and the figures are written."""
import pytest

from demos import lesson_heads, lesson_padding, lesson_positions, lesson_weight_sharing

SMALL, LARGE = 1e-10, 1e-3


def pngs(folder):
    return {p.name for p in folder.glob("*.png") if p.stat().st_size > 0}


def test_weight_sharing(tmp_path, capsys):
    out = tmp_path / "ws"
    n = lesson_weight_sharing.main(["--embed-dim", "6", "--length", "5", "--num-heads", "3", "--lengths", "4", "40",
                                    "--seed", "2", "--out", str(out)])
    for key in ("per_position_vs_whole", "conv1x1_vs_whole", "permute_then_project_vs_project_then_permute"):
        assert n[key] < SMALL
    assert n["W_q_parameters"] == {4: 42, 40: 42}
    assert n["mha_parameters"][4] == n["mha_parameters"][40] == 4 * 42
    assert n["W_q_parameters_if_one_per_position"][40] == 40 * 42
    assert n["claim_holds"]
    printed = capsys.readouterr().out
    assert "1×1 convolution" in printed and "verdict" in printed
    assert pngs(out) == {"weight_sharing.png"}


def test_heads(tmp_path, capsys):
    out = tmp_path / "heads"
    n = lesson_heads.main(["--out", str(out)])
    for key in ("small_projections_vs_split_big", "per_head_loop_vs_batched_1d", "per_head_loop_vs_batched_2d",
                "transpose_output_of_transpose_qkv"):
        assert n[key] < SMALL
    assert n["small_projection_parameters"] == n["big_projection_parameters"] == 100 * 100 + 100
    shapes = n["shapes"]
    assert shapes["q = transpose_qkv(W_q(queries), 5)"] == (2, 5, 4, 20)
    assert shapes["scores = q kᵀ / √d_h"] == (2, 5, 4, 6)
    assert shapes["W_o(...) = output"] == (2, 4, 100)
    assert n["keys_seen_1d"] == [[3, 3, 3, 3], [2, 2, 2, 2]]
    assert n["keys_seen_2d"] == [[1, 2, 3, 3], [1, 2, 2, 2]]
    assert n["claim_holds"]
    assert "valid_lens (B, L)" in capsys.readouterr().out
    assert pngs(out) == {"heads_valid_lens.png"}


def test_heads_other_width(tmp_path):
    n = lesson_heads.main(["--embed-dim", "12", "--num-heads", "3", "--out", str(tmp_path)])
    assert n["claim_holds"] and n["shapes"]["q = transpose_qkv(W_q(queries), 3)"] == (2, 3, 4, 4)


def test_positions(tmp_path):
    out = tmp_path / "pos"
    n = lesson_positions.main(["--embed-dim", "16", "--num-heads", "2", "--length", "5", "--max-len", "120",
                               "--shifts", "1", "7", "30", "--out", str(out)])
    assert n["permutation_no_positions"] < SMALL
    assert n["permutation_with_pe"] > LARGE
    assert set(n["shift_rotation_error"]) == {1, 7, 30}
    assert max(n["shift_rotation_error"].values()) < SMALL
    assert max(n["angle_error"].values()) < SMALL
    assert max(n["dot_product_spread"].values()) < SMALL and n["dot_product_vs_sum_cos"] < SMALL
    assert n["claim_holds"]
    assert pngs(out) == {"pe_table.png", "pe_dot_product.png"}


def test_positions_rejects_odd_width(tmp_path):
    with pytest.raises(SystemExit):
        lesson_positions.main(["--embed-dim", "15", "--num-heads", "3", "--out", str(tmp_path)])


def test_padding(tmp_path):
    out = tmp_path / "pad"
    n = lesson_padding.main(["--lengths", "4", "2", "5", "--embed-dim", "8", "--layers", "1", "--ffn-hidden", "8",
                             "--out", str(out)])
    for key in ("padded_vs_alone_mha", "padded_vs_alone_encoder", "new_filler_masked", "weight_on_padding_masked"):
        assert n[key] < SMALL
    for key in ("no_mask_vs_alone_mha", "no_mask_vs_alone_encoder", "new_filler_unmasked",
                "weight_on_padding_unmasked", "top_k_vs_alone_mha"):
        assert n[key] > LARGE
    assert n["real_query_rows"] == 2 * (4 + 2 + 5)
    assert n["top_k_rows_differing_from_padding_mask"] > 0 and n["top_k_filler_keys_kept"] > 0
    assert n["top_k_rows_moved_by_new_tokens"] > 0 and n["padding_mask_rows_moved_by_new_tokens"] == 0
    assert n["claim_holds"]
    assert pngs(out) == {"padding_weights.png"}


def test_gqa(tmp_path, capsys):
    """lesson_gqa on a tiny budget: h_kv = 4, 2, 1 for h = 4; the KV cache halves with h_kv, the parameters fall by
    2 (h − h_kv) d_h E per attention layer (6 of them), accuracies are fractions, and the figure is written."""
    from demos import lesson_gqa
    out = tmp_path / "gqa"
    n = lesson_gqa.main(["--num-heads", "4", "--steps", "3", "--eval-size", "20", "--out", str(out)])
    rows = n["rows"]
    assert [r["num_kv_heads"] for r in rows] == [4, 2, 1]
    assert [r["kv_cache_vs_mha"] for r in rows] == [1.0, 0.5, 0.25]
    assert [r["parameters_saved"] for r in rows] == [6 * 2 * (4 - h_kv) * 16 * 64 + 6 * 2 * (4 - h_kv) * 16
                                                     for h_kv in (4, 2, 1)]          # weights and biases of W_k, W_v
    assert all(0 <= r["exact_match"] <= 1 for r in rows)
    assert "KV cache" in capsys.readouterr().out
    assert pngs(out) == {"gqa.png"}


def test_rotary(tmp_path, capsys):
    """lesson_rotary: RoPE's scores are constant along every diagonal (< 1e-10), the added table's are not (> 1e-3),
    rotation keeps norms, and the figure is written."""
    from demos import lesson_rotary
    out = tmp_path / "rotary"
    n = lesson_rotary.main(["--length", "24", "--head-dim", "8", "--out", str(out)])
    assert n["rope_max_change_along_diagonals"] < SMALL < LARGE < n["added_max_change_along_diagonals"]
    assert n["rope_norm_change"] < SMALL and n["claim_holds"]
    assert "verdict" in capsys.readouterr().out
    assert pngs(out) == {"rotary.png"}


def test_gpt(tmp_path, capsys):
    """lesson_gpt on a tiny budget: it trains, generates, and writes its figure (exactness needs the full run)."""
    from demos import lesson_gpt
    out = tmp_path / "gpt"
    n = lesson_gpt.main(["--length", "3", "--steps", "3", "--eval-size", "8", "--out", str(out)])
    assert 0 <= n["exact_match"] <= 1 and n["num_parameters"] > 0
    assert "held-out sequences exactly" in capsys.readouterr().out
    assert pngs(out) == {"gpt_attention.png"}


def test_extrapolation(tmp_path, capsys):
    """lesson_extrapolation on a tiny budget: one accuracy per kind of position and length, and the figure."""
    from demos import lesson_extrapolation
    out = tmp_path / "ext"
    n = lesson_extrapolation.main(["--length", "4", "--steps", "2", "--eval-size", "4", "--out", str(out)])
    assert set(n) == {"learned", "sinusoidal", "rope", "alibi"}
    assert all(set(row) == {4, 8, 16} and all(0 <= v <= 1 for v in row.values()) for row in n.values())
    assert "trained on length L = 4" in capsys.readouterr().out
    assert pngs(out) == {"extrapolation.png"}


def test_long_context(tmp_path, capsys):
    """lesson_long_context on small sizes: windowed flash = dense with the window mask, cached generation gives the
    same tokens, and the figure is written."""
    from demos import lesson_long_context
    out = tmp_path / "lc"
    n = lesson_long_context.main(["--lengths", "64", "128", "--window", "16", "--tokens", "8", "16",
                                  "--out", str(out)])
    assert n["window"][0]["max_difference_to_dense"] < 1e-4
    assert all(r["same_tokens"] for r in n["cache"])
    assert "KV cache" in capsys.readouterr().out
    assert pngs(out) == {"long_context.png"}
