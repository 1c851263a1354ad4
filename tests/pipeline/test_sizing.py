"""`--shard-rows auto`: the size rule as a pure function, from a tiny corpus to a billion rows."""

from __future__ import annotations

import math

import pytest

from bertflow.pipeline.sizing import GUIDED_RUNS_PER_SLOT, MAX_ROWS, MAX_SHARDS, MIN_ROWS, run_sizes, shard_rows_for

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


# `--shards-per-run`: how many consecutive shards each worker run embeds.


def test_a_fixed_number_of_shards_per_run_keeps_the_remainder_last():
    assert run_sizes(7, slots=4, per_run=3) == [3, 3, 1]
    assert run_sizes(6, slots=4, per_run=1) == [1] * 6
    assert run_sizes(0, slots=4, per_run=2) == []


def test_auto_runs_one_shard_each_when_the_corpus_is_no_bigger_than_the_slots_can_take():
    assert run_sizes(4, slots=2) == [1, 1, 1, 1]  # 2 runs per slot: nothing to gain by grouping
    assert run_sizes(1, slots=1) == [1]


def test_auto_runs_are_long_first_and_single_shards_last():
    sizes = run_sizes(1_000, slots=8)
    assert sum(sizes) == 1_000
    assert sizes[0] == math.ceil(1_000 / (GUIDED_RUNS_PER_SLOT * 8))  # a 16th of the shards for the first run
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-(GUIDED_RUNS_PER_SLOT * 8) :] == [1] * (
        GUIDED_RUNS_PER_SLOT * 8
    )  # the tail: every slot ends together
    assert len(sizes) == 74  # 13.5x fewer process starts and model loads than one run per shard


@pytest.mark.parametrize("count", [1, 2, 15, 16, 17, 100, 999, 20_000])
@pytest.mark.parametrize("slots", [1, 3, 8, 64])
def test_auto_covers_every_shard_once_in_logarithmically_many_runs(count, slots):
    sizes = run_sizes(count, slots)
    share = GUIDED_RUNS_PER_SLOT * slots
    assert sum(sizes) == count and min(sizes) >= 1
    assert sizes[0] == math.ceil(count / share)
    # each run takes at least a share-th of what is left: at most share x (ln(count / share) + 2) runs
    bound = count if count <= share else share * (math.log(count / share) + 2)
    assert len(sizes) <= bound


def test_a_nonsense_run_size_is_refused():
    with pytest.raises(ValueError, match="per_run >= 1"):
        run_sizes(10, slots=2, per_run=0)
    with pytest.raises(ValueError, match="slots >= 1"):
        run_sizes(10, slots=0)
