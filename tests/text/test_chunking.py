"""Window bounds and chunk aggregation, with values worked out by hand."""

import numpy as np
import pytest

from bertflow.text.chunking import aggregate, window_bounds


def test_windows_cover_every_token_and_overlap_by_exactly_the_stride():
    assert window_bounds(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert window_bounds(11, 4, 1) == [(0, 4), (3, 7), (6, 10), (9, 11)]
    assert window_bounds(8, 4, 0) == [(0, 4), (4, 8)]
    bounds = window_bounds(3000, 254, 50)
    covered = np.zeros(3000, bool)
    for s, e in bounds:
        covered[s:e] = True
        assert e - s <= 254
    assert covered.all() and bounds[0][0] == 0 and bounds[-1][1] == 3000
    assert all(prev[1] - nxt[0] == 50 for prev, nxt in zip(bounds, bounds[1:]))


def test_short_and_empty_texts_get_one_window():
    assert window_bounds(3, 4, 2) == [(0, 3)]
    assert window_bounds(0, 4, 2) == [(0, 0)]


@pytest.mark.parametrize("stride", [4, 5, -1])
def test_stride_must_leave_room_for_progress(stride):
    with pytest.raises(ValueError, match="stride"):
        window_bounds(10, 4, stride)


def test_token_weighted_mean_and_max_per_document():
    vectors = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, -1.0], [7.0, 7.0]], dtype=np.float32)
    weights = [1, 3, 4, 2]
    groups = [0, 0, 0, 1]
    mean = aggregate(vectors, weights, groups, "mean")
    # (1*1 + 3*3 + 5*4) / 8 = 30/8 ; (0*1 + 2*3 + -1*4) / 8 = 2/8
    np.testing.assert_allclose(mean, [[3.75, 0.25], [7.0, 7.0]])
    np.testing.assert_array_equal(aggregate(vectors, weights, groups, "max"), [[5.0, 2.0], [7.0, 7.0]])
