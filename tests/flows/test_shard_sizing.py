"""`--shard-rows auto` end to end: a calibrated size, kept by a resume, and a rate lent by an earlier output."""

from __future__ import annotations

import math

import pytest

from bertflow.config import EmbedConfig
from bertflow.flows.embed import embed_dataset
from bertflow.pipeline.sizing import CALIBRATION_ROWS, shard_rows_for
from tests.conftest import run_cli, write_rows

ROWS = 2_500


def auto(model, **options) -> EmbedConfig:
    return EmbedConfig(model=str(model), device="cpu", shard_rows="auto", **{"shard_seconds": 0.5, **options})


def test_auto_sizes_by_a_calibration_keeps_the_size_on_resume_and_learns_from_an_earlier_output(tmp_path, tiny_bert):
    src = write_rows(
        tmp_path / "src" / "docs.jsonl",
        [{"id": f"d{i}", "text": f"Document {i} says " + "something " * (i % 30)} for i in range(ROWS)],
    ).parent
    first = tmp_path / "first"
    m = embed_dataset(str(src), str(first), auto(tiny_bert))
    s = m.shard_sizing
    assert s is not None and s.origin.startswith(f"calibrated on SOURCE's first {CALIBRATION_ROWS} rows on cpu")
    assert s.rows_per_second > 0 and s.target_seconds == 0.5
    assert m.config.shard_rows == s.shard_rows == shard_rows_for(ROWS, s.rows_per_second, 0.5)
    assert m.planned_shards == len(m.shards) == math.ceil(ROWS / s.shard_rows)
    assert m.totals.documents == ROWS
    assert run_cli("verify", str(first), "--source", str(src)).returncode == 0

    # A rerun keeps DEST's size (it is part of DEST's fingerprint), whatever it would measure now.
    again = embed_dataset(str(src), str(first), auto(tiny_bert, shard_seconds=1000))
    assert again.config.shard_rows == s.shard_rows and all(r.resumed for r in again.shards)
    assert again.shard_sizing.origin.startswith("kept from DEST's manifest")

    # An earlier output of the same model lends its measured rate: its shards' rows over their seconds.
    second = tmp_path / "second"
    m2 = embed_dataset(str(src), str(second), auto(tiny_bert), reuse=[str(first)])
    rate = sum(r.documents for r in m.shards) / sum(r.seconds for r in m.shards)
    assert m2.shard_sizing.rows_per_second == pytest.approx(rate)
    assert str(first) in m2.shard_sizing.origin
    assert m2.config.shard_rows == shard_rows_for(ROWS, rate, 0.5)


@pytest.mark.parametrize("bad", ["lots", "0", "-5", "1.5"])
def test_a_shard_size_that_is_no_count_is_one_line(tmp_path, bad):
    src = write_rows(tmp_path / "docs.jsonl", [{"id": "a", "text": "x"}])
    r = run_cli("embed", str(src), str(tmp_path / "out"), "--shard-rows", bad)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--shard-rows" in r.stderr and "positive number or auto" in r.stderr
    assert not (tmp_path / "out").exists()
