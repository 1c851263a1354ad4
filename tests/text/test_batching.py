"""Token-budget batching and padding: exact batches and padded arrays worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bertflow.text.batching import pad_batch, token_budget_batches


def as_lists(batches: list[np.ndarray]) -> list[list[int]]:
    return [b.tolist() for b in batches]


def test_longest_first_and_each_batch_fits_the_budget():
    # sorted longest first: 1 (10), 2 (5), 3 (5), 0 (3), 4 (2)
    # budget 10: [1] costs 1*10; [2, 3] costs 2*5; [0, 4] costs 2*3
    assert as_lists(token_budget_batches([3, 10, 5, 5, 2], 10)) == [[1], [2, 3], [0, 4]]


def test_ties_keep_input_order():
    assert as_lists(token_budget_batches([4, 4, 4, 4, 4], 8)) == [[0, 1], [2, 3], [4]]


def test_a_sequence_longer_than_the_budget_goes_alone():
    assert as_lists(token_budget_batches([2, 50, 2, 2], 8)) == [[1], [0, 2, 3]]


def test_zero_length_rows_are_still_batched():
    assert as_lists(token_budget_batches([0, 0, 0], 2)) == [[0, 1], [2]]


def test_no_rows_no_batches():
    assert token_budget_batches([], 100) == []


@pytest.mark.parametrize("budget", [0, -5])
def test_budget_must_be_positive(budget):
    with pytest.raises(ValueError, match=f"batch token budget must be positive, got {budget}"):
        token_budget_batches([1, 2], budget)


@pytest.mark.parametrize("budget", [1, 64, 300, 4096])
def test_every_index_once_and_padded_cost_within_budget(budget):
    rng = np.random.default_rng(budget)
    lengths = rng.integers(1, 512, size=997)
    lengths[::50] = 512  # some rows at the model's limit
    batches = token_budget_batches(lengths.tolist(), budget)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in batches:
        cost = len(b) * int(lengths[b].max())
        assert cost <= budget or len(b) == 1, (b.tolist(), cost)


def test_pad_batch_right_pads_with_the_pad_id_and_marks_real_tokens():
    ids, mask = pad_batch([[101, 7, 102], [101, 102], [5]], pad_id=-1)
    assert ids.tolist() == [[101, 7, 102], [101, 102, -1], [5, -1, -1]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    assert ids.dtype == np.int64 and mask.dtype == np.int64


def test_pad_batch_with_an_empty_sequence_gives_an_all_zero_mask_row():
    ids, mask = pad_batch([[], [9, 9]], pad_id=0)
    assert ids.tolist() == [[0, 0], [9, 9]]
    assert mask.tolist() == [[0, 0], [1, 1]]


def test_pad_batch_of_nothing():
    ids, mask = pad_batch([], pad_id=0)
    assert ids.shape == (0, 0) and mask.shape == (0, 0)
