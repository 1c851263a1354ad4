"""Earlier outputs for `--reuse`: which are fit to copy from, which of their parts each shard reads, what
the run reports. Earlier outputs here are written with the library's own writers (vectors made up)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bertflow.errors import InputError, ReuseMismatchError
from bertflow.io import sources
from bertflow.io.manifest import PartInfo, ShardResult
from bertflow.io.parts import serialize_part
from bertflow.io.reuse import text_hashes
from bertflow.io.schema import part_frame
from bertflow.pipeline import dest as dest_
from bertflow.pipeline import previous
from bertflow.pipeline.dest import RunTarget
from bertflow.resolved import TEXT_HASH, ModelRef
from tests.conftest import resolved_config, write_rows

CONFIG = resolved_config(
    text_hash=TEXT_HASH, model=ModelRef(name="m", path="/m", sha256="a" * 64, tokenizer_sha256="t")
)


def plan(source: Path, shard_rows: int = 10):
    return sources.plan_source(str(source), id_column="id", text_column="text", keep=(), shard_rows=shard_rows)


def write_output(root: Path, ids: list[int], shard_rows: int = 10, config=CONFIG, seconds: float = 2.0) -> str:
    """A complete output of `ids` (texts "text <id>") as `bertflow embed` lays it out."""
    source = write_rows(root / "src.parquet", [{"id": i, "text": f"text {i}"} for i in ids])
    dest = str(root / "out")
    specs, _ = plan(source, shard_rows)
    target = RunTarget(str(source), dest, config, specs, datetime.now(timezone.utc))
    _, _, jobs = dest_.prepare(target, overwrite=False)
    results = []
    for job in jobs:
        frame = sources.read_shard(job.spec, "id", "text", ())
        n = len(frame)
        table = part_frame(
            frame,
            np.random.default_rng(0).random((n, 8), dtype=np.float32),
            np.full(n, 5, np.int32),
            np.zeros(n, bool),
            (),
            "int",
            text_hash=text_hashes(frame["text"].to_list()),
        )
        info = PartInfo(fingerprint=job.fingerprint, rows=n, tokens=5 * n, truncated=0, seconds=seconds)
        data = serialize_part(table, info.model_copy(update={"model_seconds": seconds}))
        Path(dest, job.spec.name).write_bytes(data)
        results.append(
            ShardResult(
                name=job.spec.name,
                pieces=job.spec.pieces,
                documents=n,
                rows=n,
                rejected=0,
                tokens=5 * n,
                truncated=0,
                seconds=seconds,
                model_seconds=seconds,
                sha256=hashlib.sha256(data).hexdigest(),
            )  # fmt: skip
        )
    dest_.finalize(target, results, 1.0, "cpu")
    return dest


def test_each_shard_reads_only_the_earlier_parts_holding_its_ids(tmp_path):
    earlier = write_output(tmp_path / "day1", list(range(30)))  # parts of ids 0-9, 10-19, 20-29
    # Today: ids 5-24 and 40-44 in shards of 10: [5..14], [15..24], [40..44]; ids 0-4 and 25-29 are gone.
    specs, index = plan(
        write_rows(tmp_path / "d2.parquet", [{"id": i, "text": "t"} for i in [*range(5, 25), *range(40, 45)]])
    )
    found = previous.open_previous(earlier, str(tmp_path / "out2"), CONFIG)
    reuse = previous.plan_reuse(specs, index, [found], deleted_ids=True)
    names = {k: [Path(p.uri).name for p in v] for k, v in reuse.parts.items()}
    assert names == {
        "part-00000.parquet": ["part-00000.parquet", "part-00001.parquet"],
        "part-00001.parquet": ["part-00001.parquet", "part-00002.parquet"],
    }  # the third shard's ids are all new: it reads nothing
    assert sorted(reuse.dropped.to_list()) == [0, 1, 2, 3, 4, 25, 26, 27, 28, 29]
    assert reuse.scatter == pytest.approx(4 / 3)
    assert reuse.rate == pytest.approx(5 * 10 / 2.0)  # the earlier output's tokens per model second


def test_the_first_differing_setting_is_named(tmp_path):
    earlier = write_output(tmp_path, list(range(5)))
    other = CONFIG.model_copy(update={"max_length": 8, "pooling": ("cls",), "dimensions": {"cls": 8}})
    with pytest.raises(ReuseMismatchError, match="embedded with pooling 'mean', this run uses 'cls'"):
        previous.open_previous(earlier, str(tmp_path / "new"), other)
    opened, skipped = previous.open_all([earlier], str(tmp_path / "new"), other, ignore_mismatch=True)
    assert opened == [] and "pooling 'mean'" in skipped[earlier]
    # what does not change a vector does not matter: kept columns, shard size
    same = CONFIG.model_copy(update={"shard_rows": 3, "keep": ("x",)})
    assert previous.open_previous(earlier, str(tmp_path / "new"), same).dest == earlier


def test_outputs_of_older_versions_have_no_text_hash_and_cannot_be_reused(tmp_path):
    v1 = Path(__file__).parents[1] / "io" / "data" / "v1"
    dest = next(p for p in v1.iterdir() if (p / "_manifest.json").exists())
    with pytest.raises(ReuseMismatchError, match="whose rows carry no text_hash"):
        previous.open_previous(str(dest), str(tmp_path / "new"), CONFIG)


def test_a_scheduled_run_uses_the_nearest_earlier_partition_only_when_it_is_sound(tmp_path):
    near = previous.previous_partitions(str(tmp_path / "dt={date}"), "2026-03-02")
    assert [Path(u).name for u in near] == [
        f"dt=2026-{d}" for d in ("03-01", "02-28", "02-27", "02-26", "02-25", "02-24", "02-23")
    ]
    found, why = previous.check_scheduled(near, "x", CONFIG)
    assert found is None and why == "no earlier output in the 7 partitions before this one"

    earlier = write_output(tmp_path / "w", list(range(20)))  # moved to the third day before: two days missing
    Path(earlier).rename(near[2])
    found, why = previous.check_scheduled(near, str(tmp_path / "new"), CONFIG)
    assert found is not None and found.optional and why == f"reusing rows of {near[2]}"

    Path(near[2], "part-00001.parquet").unlink()  # a part lost after the run: verify fails
    found, why = previous.check_scheduled(near, str(tmp_path / "new"), CONFIG)
    assert found is None and "fails verify (part-00001.parquet: listed in the manifest but missing" in why

    manifest = json.loads(Path(near[2], "_manifest.json").read_text())
    Path(near[2], "_manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    found, why = previous.check_scheduled(near, str(tmp_path / "new"), CONFIG)
    assert found is None and "is not complete" in why


def test_a_previous_partition_of_other_ids_is_skipped_a_named_one_refused(tmp_path):
    earlier = write_output(tmp_path / "a", list(range(5)))
    specs, index = plan(write_rows(tmp_path / "s.parquet", [{"id": f"x{i}", "text": "t"} for i in range(5)]))
    opened = previous.open_previous(earlier, str(tmp_path / "new"), CONFIG)
    with pytest.raises(InputError, match="has Int64 ids, SOURCE str ids"):
        previous.plan_reuse(specs, index, [opened])
    skipped = previous.plan_reuse(specs, index, [replace(opened, optional=True)], deleted_ids=True)
    assert skipped.previous == [] and "Int64 ids" in skipped.skipped[earlier]
    assert not skipped.deleted_ids  # nothing to list ids against


def test_dest_itself_is_refused(tmp_path):
    earlier = write_output(tmp_path, list(range(3)))
    with pytest.raises(InputError, match="is DEST itself"):
        previous.open_previous(earlier, earlier + "/", CONFIG)


def test_seconds_saved_come_from_this_runs_model_throughput():
    def result(rows: int, reused: int, model_seconds: float) -> ShardResult:
        return ShardResult(
            name="p", pieces=(), documents=rows, rows=rows, rejected=0, tokens=10 * rows, truncated=0, seconds=9.0,
            sha256="", reused=reused, reused_tokens=10 * reused, model_seconds=model_seconds,
        )  # fmt: skip

    plan = previous.ReusePlan(
        previous=["a"], skipped={}, parts={}, dropped=pl.Series("id", [7, 8]), rate=1000.0, deleted_ids=False
    )
    # 20 rows embedded (200 tokens) in 2 model seconds: 100 tokens/s, but too few to measure by:
    # 980 rows (9800 tokens) reused at the earlier output's 1000 tokens/s
    s = previous.summary(plan, [result(500, 490, 1.0), result(500, 490, 1.0)])
    assert (s.reused, s.embedded, s.dropped, s.seconds_saved, s.tokens_per_s) == (980, 20, 2, 9.8, 1000.0)
    # most rows embedded (4000 tokens in 8 model seconds): this run's own 500 tokens/s
    s = previous.summary(plan, [result(500, 100, 8.0)])
    assert (s.reused, s.embedded, s.seconds_saved, s.tokens_per_s) == (100, 400, 2.0, 500.0)
    # nothing embedded this run: the earlier output's throughput
    s = previous.summary(plan, [result(100, 100, 0.0)])
    assert (s.reused, s.embedded, s.seconds_saved) == (100, 0, 1.0)
