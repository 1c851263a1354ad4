"""Shard runs of a fan-out: the pending shards grouped into runs over the whole plan, and their keys."""

from __future__ import annotations

import pytest

from bertflow.errors import InputError
from bertflow.io.manifest import Piece, ShardJob, ShardSpec
from bertflow.pipeline.dest import fingerprints
from bertflow.pipeline.sizing import run_groups
from bertflow.tasks.fanout import shard_run, shards_in_a_run
from tests.conftest import resolved_config

CONFIG = resolved_config()


def plan(count: int) -> list[ShardSpec]:
    return [
        ShardSpec(index=i, count=count, pieces=(Piece(file="s.parquet", format="parquet", start=10 * i, stop=10 * i + 10),), id_kind="int")
        for i in range(count)
    ]  # fmt: skip


def jobs(specs: list[ShardSpec]) -> list[ShardJob]:
    prints = fingerprints(specs, CONFIG)
    return [ShardJob(spec=s, config=CONFIG, dest="s3://b/out/", fingerprint=prints[s.name]) for s in specs]


def names(groups) -> list[str]:
    return [shard_run(group, ()).name for group, _ in groups]


def test_one_shard_per_run_keeps_each_shards_own_key():
    specs = plan(3)
    groups = run_groups(specs, jobs(specs), slots=4, per_run=1)
    assert names(groups) == ["shard-0-of-3", "shard-1-of-3", "shard-2-of-3"]
    for group, prints in groups:  # the key of bertflow 0.6's runs: a parent of either joins the other's
        assert shard_run(group, (), prints).key == shard_run(group, ()).key


def test_auto_groups_the_plan_long_runs_first():
    specs = plan(6)
    groups = run_groups(specs, jobs(specs), slots=1, per_run=None)  # 2 runs per slot: 3, 2, 1
    assert names(groups) == ["shards-0-to-2-of-6", "shards-3-to-4-of-6", "shard-5-of-6"]
    assert [len(g) for g, _ in groups] == [3, 2, 1]


def test_a_resumed_run_draws_the_same_runs_and_keys_for_what_is_left():
    """A parent resuming a dead one's work: shards 0 and 4 are written. Its runs cover the same ranges of
    the plan under the same keys (so it joins the dead parent's runs still in flight), with only the
    shards left to embed."""
    specs = plan(6)
    first = run_groups(specs, jobs(specs), slots=1, per_run=None)
    left = [j for j in jobs(specs) if j.spec.index not in (0, 4)]
    resumed = run_groups(specs, left, slots=1, per_run=None)
    assert [[j.spec.index for j in g] for g, _ in resumed] == [[1, 2], [3], [5]]
    keys = [shard_run(g, (), p).key for g, p in first]
    assert [shard_run(g, (), p).key for g, p in resumed] == keys
    # a range all written is not run again; other settings (another DEST's run) make other keys
    assert run_groups(specs, left[2:], slots=1, per_run=None)[0][0][0].spec.index == 3
    other = resolved_config(normalize=False)
    changed = [j.model_copy(update={"config": other}) for j in jobs(specs)]
    assert {shard_run(g, (), p).key for g, p in run_groups(specs, changed, slots=1, per_run=None)}.isdisjoint(keys)


@pytest.mark.parametrize("given,expected", [("auto", None), ("AUTO", None), ("3", 3), (1, 1)])
def test_shards_per_run_reads_a_count_or_auto(given, expected):
    assert shards_in_a_run(given) == expected


@pytest.mark.parametrize("given", ["0", "-2", "many", 0, True])
def test_shards_per_run_refuses_anything_else_in_one_line(given):
    with pytest.raises(InputError, match="give a positive number or auto"):
        shards_in_a_run(given)
