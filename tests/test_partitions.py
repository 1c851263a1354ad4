"""Daily partitions of the deployments (pure code): values worked out by hand."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

import pytest

from bertflow import partitions as p
from bertflow.errors import InputError

SRC, DST = "s3://b/raw/dt={date}/", "s3://b/embeddings/dt={date}/"


@pytest.mark.parametrize(
    "scheduled, lag, day",
    [
        (datetime(2026, 11, 26, 2, 0, tzinfo=timezone.utc), 1, date(2026, 11, 25)),
        (datetime(2026, 3, 1, 0, 30, tzinfo=timezone.utc), 1, date(2026, 2, 28)),  # month boundary
        (datetime(2026, 11, 26, 1, 0, tzinfo=timezone.utc), 0, date(2026, 11, 26)),
        # 23:30 in New York on the 25th is 04:30 UTC on the 26th: the UTC day counts.
        (datetime.fromisoformat("2026-11-25T23:30:00-05:00"), 1, date(2026, 11, 25)),
    ],
)
def test_partition_is_the_utc_day_lag_days_before_the_scheduled_start(scheduled, lag, day):
    assert p.partition_for(scheduled, lag) == day


def test_resolve_fills_both_templates_and_an_explicit_partition_wins():
    late = datetime(2026, 12, 24, 9, 0, tzinfo=timezone.utc)
    assert p.resolve(SRC, DST, None, 1, late) == (
        "s3://b/raw/dt=2026-12-23/",
        "s3://b/embeddings/dt=2026-12-23/",
        "2026-12-23",
    )
    assert p.resolve(SRC, DST, "2026-11-02", 1, late)[2] == "2026-11-02"
    assert p.resolve("in/", "out/", None, 1, late) == ("in/", "out/", None)


@pytest.mark.parametrize(
    "source, dest, partition, message",
    [
        ("s3://b/raw/", DST, None, "SOURCE template 's3://b/raw/' has no {date}"),
        (SRC, "s3://b/out/", None, "DEST template 's3://b/out/' has no {date}"),
        ("in/", "out/", "2026-11-01", "partition 2026-11-01 given but neither SOURCE nor DEST has {date}"),
        (SRC, DST, "2026-02-30", "partition '2026-02-30' is not a date"),
    ],
)
def test_resolve_refuses_bad_templates(source, dest, partition, message):
    with pytest.raises(InputError, match=re.escape(message)):
        p.resolve(source, dest, partition, 1, datetime(2026, 1, 1, tzinfo=timezone.utc))


def test_partition_range_includes_both_ends_and_steps():
    assert p.partition_range(date(2026, 11, 1), date(2026, 11, 3)) == [date(2026, 11, d) for d in (1, 2, 3)]
    assert p.partition_range(date(2026, 11, 1), date(2026, 11, 20), p.parse_every("7d")) == [
        date(2026, 11, 1),
        date(2026, 11, 8),
        date(2026, 11, 15),
    ]
    assert p.partition_range(date(2026, 11, 1), date(2026, 11, 1)) == [date(2026, 11, 1)]
    with pytest.raises(InputError, match="--end 2026-10-31 is before --start 2026-11-01"):
        p.partition_range(date(2026, 11, 1), date(2026, 10, 31))
    for bad in ("0d", "1w", "daily", ""):
        with pytest.raises(InputError, match="--every"):
            p.parse_every(bad)


@pytest.mark.parametrize(
    "dest, partition, name",
    [
        (DST, "2026-11-01", "embed-embeddings-2026-11-01"),
        ("s3://b/embeddings/dt=2026-11-01/", "2026-11-01", "embed-embeddings-2026-11-01"),
        ("s3://b/Search Index/2026-11-01", "2026-11-01", "embed-search-index-2026-11-01"),
        ("out/", None, "embed-out"),
        ("s3://bucket", None, "embed-bucket"),
    ],
)
def test_run_names(dest, partition, name):
    assert p.run_name(dest, partition) == name


def test_stable_keys_are_prefect_keys_and_differ_per_input():
    a = p.stable_key("bertflow-progress", "s3://b/embeddings/dt=2026-11-01/")
    long = p.stable_key("bertflow-progress", "s3://b/" + "Very_Long/" * 40)
    assert a == p.stable_key("bertflow-progress", "s3://b/embeddings/dt=2026-11-01/")
    assert a != p.stable_key("bertflow-progress", "s3://b/embeddings/dt=2026-11-02/")
    for key in (a, long):
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", key) and len(key) <= 60
