"""`--shard-rows auto`: the size rule as a pure function, from a tiny corpus to a billion rows."""

from __future__ import annotations

import math

import pytest

from bertflow.pipeline.sizing import MAX_ROWS, MAX_SHARDS, MIN_ROWS, shard_rows_for

H200_MINILM = 54_800.0  # rows/s, benchmarks/results/gpu_engine.md
CPU_MINILM = 900.0


def shards(total: int, rows: int) -> int:
    return math.ceil(total / rows)


def test_a_tiny_corpus_is_one_shard():
    assert shard_rows_for(500, CPU_MINILM, 300) == 500
    assert shard_rows_for(1, H200_MINILM, 300) == 1


def test_a_shard_takes_about_the_target_time_within_the_row_bounds():
    rows = shard_rows_for(10_000_000, CPU_MINILM, 300)
    assert rows == 270_000 and abs(rows / CPU_MINILM - 300) < 1  # 270,000 rows at 900 rows/s: 300 s
    assert shard_rows_for(10_000_000, 1.0, 300) == MIN_ROWS  # smaller shards would be all overhead
    assert shard_rows_for(10_000_000, H200_MINILM, 300) == MAX_ROWS  # a shard's rows sit in memory


def test_a_billion_rows_stay_a_sane_number_of_flow_runs():
    on_gpu = shard_rows_for(1_000_000_000, H200_MINILM, 300)
    assert shards(1_000_000_000, on_gpu) == 2_000
    slow = shard_rows_for(1_000_000_000, 10.0, 300)  # 3,000 rows would be 333,334 shards
    assert slow == 50_000 and shards(1_000_000_000, slow) == MAX_SHARDS


def test_enough_shards_for_every_slot_of_the_pool_but_not_below_the_minimum():
    rows = shard_rows_for(100_000, CPU_MINILM, 300, parallel=8)
    assert rows == 13_000 and shards(100_000, rows) == 8
    assert shard_rows_for(5_000, CPU_MINILM, 300, parallel=8) == MIN_ROWS


@pytest.mark.parametrize("total", [1, 999, 12_345, 10**6, 123_456_789, 10**9, 10**11])
@pytest.mark.parametrize("rate", [0.5, 37.0, 900.0, 54_800.0, 10**7])
def test_bounds_hold_for_any_corpus_and_rate(total, rate):
    rows = shard_rows_for(total, rate, 120, parallel=4)
    assert 1 <= rows <= total
    assert shards(total, rows) <= MAX_SHARDS
    assert rows <= MAX_ROWS or shards(total, MAX_ROWS) > MAX_SHARDS
    assert rows >= min(MIN_ROWS, total)


def test_nonsense_is_refused():
    with pytest.raises(ValueError):
        shard_rows_for(0, 1.0, 300)
    with pytest.raises(ValueError):
        shard_rows_for(10, 0.0, 300)
