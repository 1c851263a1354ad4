"""Pooling on hand-made tensors: every expected value below was worked out by hand."""

from __future__ import annotations

import pytest
import torch

from bertflow.model.pooling import POOLINGS, combine_layers, output_dim, pool
from bertflow.vectors import normalize

# Three sequences, four token slots, hidden size 2. Padding slots hold large values that
# would show up in any result that let them in.
H = torch.tensor(
    [
        # a text: [CLS] tok [SEP] + one padding slot
        [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0], [90.0, 90.0]],
        # a text whose only real tokens are [CLS] and [SEP] (the empty string), all negative
        [[-2.0, -4.0], [-6.0, -2.0], [80.0, 80.0], [80.0, 80.0]],
        # a row with no real token at all
        [[7.0, 7.0], [70.0, 70.0], [70.0, 70.0], [70.0, 70.0]],
    ]
)  # (B=3, T=4, H=2)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])  # (B, T) int64, as the engine passes it


def test_cls_is_the_first_token_of_each_row():
    assert pool(H, MASK, "cls").tolist() == [[1.0, 2.0], [-2.0, -4.0], [7.0, 7.0]]


def test_mean_averages_real_tokens_only_and_all_masked_row_is_zero():
    # row 0: ([1,2] + [3,4] + [5,0]) / 3 = [3, 2]; row 1: ([-2,-4] + [-6,-2]) / 2 = [-4, -3]
    out = pool(H, MASK, "mean")
    assert out.tolist() == [[3.0, 2.0], [-4.0, -3.0], [0.0, 0.0]]
    assert not out.isnan().any()


def test_max_ignores_padding_keeps_negative_maxima_and_all_masked_row_is_zero():
    # row 1 is all negative: its max must be [-2, -2], not 0 and not the padding's 80
    out = pool(H, MASK, "max")
    assert out.tolist() == [[5.0, 4.0], [-2.0, -2.0], [0.0, 0.0]]
    assert torch.isfinite(out).all()


def test_mean_max_is_mean_then_max_side_by_side():
    assert pool(H, MASK, "mean_max").tolist() == [
        [3.0, 2.0, 5.0, 4.0],
        [-4.0, -3.0, -2.0, -2.0],
        [0.0, 0.0, 0.0, 0.0],
    ]


def test_boolean_and_float_masks_give_the_same_results_as_integer_masks():
    for mask in (MASK.bool(), MASK.float()):
        assert pool(H, mask, "mean").tolist() == [[3.0, 2.0], [-4.0, -3.0], [0.0, 0.0]]
        assert pool(H, mask, "max").tolist() == [[5.0, 4.0], [-2.0, -2.0], [0.0, 0.0]]


def test_results_do_not_depend_on_how_much_padding_follows():
    # the same first row with four more padding slots of garbage
    wide = torch.cat([H[:1], torch.full((1, 4, 2), -99.0)], dim=1)  # (1, 8, 2)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]])
    assert pool(wide, mask, "mean").tolist() == [[3.0, 2.0]]
    assert pool(wide, mask, "max").tolist() == [[5.0, 4.0]]


def test_unknown_pooling_names_every_valid_choice():
    with pytest.raises(ValueError) as e:
        pool(H, MASK, "sum")
    valid = "cls, mean, max, mean_max, mean_sqrt_len, last_token, first_last_avg"
    assert str(e.value) == f"unknown pooling 'sum'; choose one of {valid}"
    assert POOLINGS == tuple(valid.split(", "))


# Embedding output plus two layers, one sequence of one token: (B=1, T=1, H=2) each.
LAYERS = [torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[2.0, 4.0]]]), torch.tensor([[[6.0, 10.0]]])]


def test_combine_layers_picks_by_negative_index():
    assert combine_layers(LAYERS, [-1]).tolist() == [[[6.0, 10.0]]]
    assert combine_layers(LAYERS, [-2]).tolist() == [[[2.0, 4.0]]]


def test_combine_layers_mean_averages_the_chosen_layers():
    # ([2,4] + [6,10]) / 2 = [4, 7]
    assert combine_layers(LAYERS, [-2, -1], "mean").tolist() == [[[4.0, 7.0]]]


def test_combine_layers_concat_keeps_the_order_asked_for():
    assert combine_layers(LAYERS, [-2, -1], "concat").tolist() == [[[2.0, 4.0, 6.0, 10.0]]]
    assert combine_layers(LAYERS, [-1, -2], "concat").tolist() == [[[6.0, 10.0, 2.0, 4.0]]]


def test_combine_layers_refuses_the_embedding_layer_and_beyond():
    with pytest.raises(ValueError, match=r"layer -3 does not exist; this model has 2 layers \(use -1 .. -2\)"):
        combine_layers(LAYERS, [-1, -3])


def test_combine_layers_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="unknown layer mode 'sum'; choose one of mean, concat"):
        combine_layers(LAYERS, [-2, -1], "sum")


def test_combined_layers_then_pooled_with_a_padding_slot():
    # two layers, one sequence: token 0 real, token 1 padding
    layers = [
        torch.zeros(1, 2, 2),
        torch.tensor([[[1.0, 3.0], [50.0, 50.0]]]),
        torch.tensor([[[3.0, 5.0], [50.0, 50.0]]]),
    ]
    mask = torch.tensor([[1, 0]])
    h = combine_layers(layers, [-2, -1], "concat")  # (1, 2, 4)
    assert pool(h, mask, "mean").tolist() == [[1.0, 3.0, 3.0, 5.0]]
    h = combine_layers(layers, [-2, -1], "mean")  # (1, 2, 2)
    assert pool(h, mask, "max").tolist() == [[2.0, 4.0]]


def test_normalize_gives_unit_rows_and_leaves_a_zero_row_zero():
    out = normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]]), rtol=0, atol=1e-7)
    assert out[1].tolist() == [0.0, 0.0]
    assert not out.isnan().any()


@pytest.mark.parametrize(
    ("hidden", "pooling", "n_layers", "mode", "expected"),
    [
        (384, "mean", 1, "mean", 384),
        (384, "cls", 1, "concat", 384),
        (384, "max", 4, "mean", 384),
        (384, "mean_max", 1, "mean", 768),
        (384, "cls", 4, "concat", 1536),
        (384, "mean_max", 4, "concat", 3072),
        (32, "mean_max", 2, "mean", 64),
    ],
)
def test_output_dim(hidden, pooling, n_layers, mode, expected):
    assert output_dim(hidden, pooling, n_layers, mode) == expected


@pytest.mark.parametrize(("pooling", "layers", "mode"), [("mean_max", [-2, -1], "concat"), ("cls", [-1], "mean")])
def test_output_dim_matches_what_pooling_produces(pooling, layers, mode):
    h = combine_layers([torch.ones(2, 3, 5)] * 3, layers, mode)
    assert pool(h, torch.ones(2, 3), pooling).shape == (2, output_dim(5, pooling, len(layers), mode))
