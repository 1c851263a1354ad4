"""`bertflow publish` into real LanceDB tables (local disk and moto's S3): in sync exactly once under both
sync modes, refusals that leave the table as it was, a publish killed mid-way, the ANN index's recall,
and `bertflow search --db`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import numpy as np
import polars as pl
import pytest

from bertflow.config import EmbedConfig, PublishConfig
from bertflow.errors import InputError
from bertflow.flows.embed import embed_dataset
from bertflow.io import parts, vectorstore
from bertflow.pipeline.backfill import plan_days
from bertflow.pipeline.publish import publish
from bertflow.pipeline.table_search import search_table
from tests.conftest import run_cli, write_rows
from tests.flows.test_reuse import day1, day2, read

pytestmark = pytest.mark.usefixtures("prefect_harness")

DAYS = ("2026-01-01", "2026-01-02")


def embed(root: Path, model: Path, day: str, rows: list[dict], publish: PublishConfig | None = None, **options) -> str:
    """One partitioned run: SOURCE and DEST with {date}, as embed-nightly writes them; 8-row shards."""
    root.mkdir(exist_ok=True)
    write_rows(root / f"src-{day}.parquet", rows)
    config = EmbedConfig(model=str(model), shard_rows=8, keep=("tag",), device="cpu", **options)
    source, dest = str(root / "src-{date}.parquet"), str(root / "out-{date}")
    embed_dataset(source, dest, config, partition=day, deleted_ids=True, publish=publish)
    return str(root / f"out-{day}")


@pytest.fixture(scope="module")
def days(tmp_path_factory, tiny_bert) -> tuple[str, str]:
    """Day 1's DEST and day 2's (3 and 17 edited, 5's tag changed, 25 dropped, 100 added; reusing day 1)."""
    root = tmp_path_factory.mktemp("publish")
    return embed(root, tiny_bert, DAYS[0], day1()), embed(root, tiny_bert, DAYS[1], day2())


def rows(db: str, name: str = "embeddings", version: int | None = None) -> pl.DataFrame:
    """The table's rows, sorted by partition and id, read with lancedb directly."""
    table = lancedb.connect(db, storage_options=vectorstore.lance_options(db)).open_table(name)
    if version is not None:
        table.checkout(version)
    frame = pl.from_arrow(table.to_arrow())
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("partition", "id")


def same_rows(table: pl.DataFrame, dest: str) -> None:
    """The table's rows are DEST's: the same ids, kept column and bit-identical vectors."""
    table, expected = table.sort("id"), read(dest).sort("id")
    assert table["id"].to_list() == expected["id"].to_list()
    assert table["tag"].to_list() == expected["tag"].to_list()
    assert table["embedding"].to_numpy().tobytes() == expected["embedding"].to_numpy().tobytes()


def test_publishing_twice_adds_and_rewrites_nothing(days, tmp_path):
    db = str(tmp_path / "db")
    first = publish(days[0], PublishConfig(db=db))
    assert (first.rows, first.inserted, first.updated, first.deleted) == (30, 30, 0, 0)
    assert first.partition == DAYS[0]  # the day the run embedded, from its manifest
    again = publish(days[0], PublishConfig(db=db))
    assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)
    table = rows(db)
    assert len(table) == 30 and set(table["partition"]) == {DAYS[0]}
    same_rows(table, days[0])
    recorded = parts.read_manifest(days[0]).published
    assert [(p.db, p.table, p.version) for p in recorded] == [(db, "embeddings", again.version)]
    assert parts.read_manifest(days[0]).status == "complete"


def test_mirror_leaves_the_table_equal_to_day_two(days, tmp_path):
    db = str(tmp_path / "db")
    publish(days[0], PublishConfig(db=db, sync="mirror"))
    done = publish(days[1], PublishConfig(db=db, sync="mirror"))
    # 3 and 17 re-embedded, 5's tag changed: rewritten; 100 added; 25 gone. The 26 others untouched.
    assert (done.inserted, done.updated, done.deleted) == (1, 3, 1)
    table = rows(db).sort("id")
    same_rows(table, days[1])
    # `partition` names the DEST a row was last written from: untouched rows keep day 1's.
    rewritten = table.filter(pl.col("partition") == DAYS[1])["id"].to_list()
    assert sorted(rewritten) == [3, 5, 17, 100]


def test_partition_replaces_its_own_rows_and_leaves_day_one_but_the_dropped_id(days, tmp_path):
    db = str(tmp_path / "db")
    publish(days[0], PublishConfig(db=db))
    before = rows(db)
    done = publish(days[1], PublishConfig(db=db))
    assert (done.inserted, done.updated, done.deleted) == (30, 0, 1)
    after = rows(db)
    one, two = after.filter(pl.col("partition") == DAYS[0]), after.filter(pl.col("partition") == DAYS[1])
    same_rows(two, days[1])
    # Day 1's rows as they were, except 25, which day 2's run listed as dropped (_deleted.parquet).
    assert one.equals(before.filter(pl.col("id") != 25))
    # Republishing day 1 restores its rows (25 included) and leaves day 2's alone.
    publish(days[0], PublishConfig(db=db))
    again = rows(db)
    assert again.filter(pl.col("partition") == DAYS[1]).equals(two)
    assert again.filter(pl.col("partition") == DAYS[0]).equals(before)
    # 25 is back on a later day: republishing day 2 deletes it from day 1, where it was dropped, only.
    publish(days[0], PublishConfig(db=db, partition="2026-01-03"))
    publish(days[1], PublishConfig(db=db))
    later = rows(db)
    assert 25 not in later.filter(pl.col("partition") == DAYS[0])["id"].to_list()
    assert 25 in later.filter(pl.col("partition") == "2026-01-03")["id"].to_list()


def test_other_embeddings_and_unfinished_dests_are_refused_and_the_table_is_untouched(days, tmp_path, tiny_bert):
    db = str(tmp_path / "db")
    publish(days[0], PublishConfig(db=db))
    version = lancedb.connect(db).open_table("embeddings").version
    cls = embed(tmp_path, tiny_bert, DAYS[0], day1(), pooling="cls")
    with pytest.raises(InputError, match=r"holds vectors embedded with pooling 'mean', DEST with 'cls'.*--replace"):
        publish(cls, PublishConfig(db=db))
    # The embed flow checks the table when it starts: refused before any row is embedded.
    with pytest.raises(InputError, match=r"holds vectors embedded with pooling"):
        embed(tmp_path / "early", tiny_bert, DAYS[0], day1(), pooling="max", publish=PublishConfig(db=db))
    assert not list((tmp_path / "early").glob(f"out-{DAYS[0]}/*.parquet"))
    with pytest.raises(InputError, match=r"--fts-column text: not a kept column of DEST \(kept: tag\)"):
        publish(days[0], PublishConfig(db=db, fts_column="text"))
    with pytest.raises(InputError, match=r"kept with --sync partition"):
        publish(days[0], PublishConfig(db=db, sync="mirror"))

    # Not complete: a run that died before its manifest; and a part gone since the run.
    manifest = Path(days[0]) / "_manifest.json"
    saved = manifest.read_bytes()
    manifest.write_text(json.dumps({**json.loads(saved), "status": "running"}))
    try:
        with pytest.raises(InputError, match=r"is not complete"):
            publish(days[0], PublishConfig(db=db))
    finally:
        manifest.write_bytes(saved)
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", days[0], str(broken)], check=True)
    (broken / "part-00001.parquet").unlink()
    with pytest.raises(InputError, match=r"fails verify: part-00001.parquet"):
        publish(str(broken), PublishConfig(db=db))
    assert lancedb.connect(db).open_table("embeddings").version == version
    assert len(rows(db)) == 30

    # --replace rebuilds the table from the other DEST alone.
    done = publish(cls, PublishConfig(db=db, replace=True))
    assert done.inserted == 30 and len(rows(db)) == 30
    assert vectorstore.record(lancedb.connect(db).open_table("embeddings"), db).config.pooling == ("cls",)


def test_on_s3_search_finds_a_planted_near_duplicate_and_filters(days, s3, tmp_path):
    """The CLI, as a user runs it: credentials and the plain-HTTP endpoint from AWS_* only."""
    from tests.deployments.service import make_bucket

    make_bucket()
    db = "s3://lake/lance"
    r = run_cli("publish", days[1], "--db", db, "--table", "docs", env=s3.env)
    assert r.returncode == 0, r.stderr
    assert "30: 30 inserted, 0 updated, 0 deleted" in " ".join(r.stdout.split())
    assert len(rows(db, "docs")) == 30
    target = day2()[10]
    near = target["text"].replace("jumps", "leaps")
    hits = search_table(db, "docs", near, k=3)
    assert hits[0].id == target["id"] and hits[0].score > hits[1].score
    r = run_cli("search", "--db", db, "--table", "docs", near, "-k", "5", "--where", "tag = 'b'", env=s3.env)
    assert r.returncode == 0, r.stderr
    assert "top 1 for" in r.stdout and " 5 " in r.stdout  # only id 5 has tag b
    assert "bertflow-test-secret" not in r.stdout + r.stderr
    assert "bertflow-test-secret" not in json.dumps(parts.read_manifest(days[1]).model_dump(mode="json"))


def test_a_publish_killed_mid_way_leaves_the_previous_version_and_a_rerun_completes(days, s3, tmp_path):
    from tests.deployments.service import make_bucket

    make_bucket()
    db = "s3://lake/killed"
    first = publish(days[0], PublishConfig(db=db, sync="mirror"))
    # Every write to the table served late: the four upserts of day 2 take seconds each.
    s3.fail("PUT", r"^/lake/killed/", times=10_000, kind="slow", delay=0.4)
    env = {**os.environ, **s3.env}
    code = f"from bertflow.cli import app; app(['publish', {days[1]!r}, '--db', {db!r}, '--sync', 'mirror'])"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    table = lancedb.connect(db, storage_options=vectorstore.lance_options(db)).open_table("embeddings")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        table.checkout_latest()
        if table.version > first.version:  # day 2's first upsert is in; the rest is not
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the publish finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    s3.faults.clear()
    same_rows(rows(db, version=first.version), days[0])  # the version before the publish, intact
    assert len(rows(db)) >= 30  # and the newest one readable
    done = publish(days[1], PublishConfig(db=db, sync="mirror"))
    same_rows(rows(db), days[1])
    assert done.deleted == 1


def test_the_index_is_built_above_the_threshold_retrained_as_the_table_grows_and_recalls_the_neighbours(
    tmp_path, tiny_bert, sample_texts
):
    texts = sample_texts[:1800]
    config = EmbedConfig(model=str(tiny_bert), shard_rows=500, keep=("tag",), device="cpu")
    for name, first, last in (("a", 0, 300), ("b", 300, 1500), ("c", 1500, 1800)):  # a partition of the table each
        rows_ = [{"id": i, "text": texts[i], "tag": "x"} for i in range(first, last)]
        embed_dataset(str(write_rows(tmp_path / f"{name}.parquet", rows_)), str(tmp_path / name), config)
    db = str(tmp_path / "db")
    small = publish(str(tmp_path / "a"), PublishConfig(db=db, index_rows=2000))
    assert small.indexed == []  # under the threshold: searched exactly
    done = publish(str(tmp_path / "a"), PublishConfig(db=db, index_rows=100, fts_column="tag"))
    assert done.indexed == ["embedding"]

    def table():  # the table's latest version
        return lancedb.connect(db).open_table("embeddings")

    assert vectorstore.trained_rows(table(), "embedding") == 300
    # Five times the rows it was trained on: trained again on all of them (sqrt(rows) partitions), one index.
    grown = publish(str(tmp_path / "b"), PublishConfig(db=db, index_rows=100, fts_column="tag"))
    assert grown.indexed == ["embedding"] and vectorstore.trained_rows(table(), "embedding") == 1500
    [ann] = [i for i in table().list_indices() if i.columns == ["embedding"]]
    assert ann.index_type == "IvfPq" and table().index_stats(ann.name).num_indexed_rows == 1500  # every row
    # With the full-text index asked for, and scalar indexes on the key for upserts and deletes.
    assert vectorstore.indexed_columns(table()) == {"embedding", "tag", "partition", "id"}
    assert len(table().search("x", query_type="fts").limit(5).to_list()) == 5
    overlap = []
    for q in texts[:1500:30]:
        ann_ids = {h.id for h in search_table(db, "embeddings", q, k=10)}
        exact = {h.id for h in search_table(db, "embeddings", q, k=10, exact=True)}
        overlap.append(len(ann_ids & exact) / 10)
    assert np.mean(overlap) >= 0.95, overlap
    # Under four-fold growth the index is kept, the new rows added to its partitions; an older one left
    # beside it (two publishes retraining at once) is dropped.
    dim = table().schema.field("embedding").type.list_size
    vectorstore.build_index(table(), db, "embedding", 1200, dim)
    assert sorted(i.name for i in table().list_indices() if i.columns == ["embedding"]) == [
        "embedding_ivfpq_1200", "embedding_ivfpq_1500"
    ]  # fmt: skip
    publish(str(tmp_path / "c"), PublishConfig(db=db, index_rows=100))
    assert [i.name for i in table().list_indices() if i.columns == ["embedding"]] == ["embedding_ivfpq_1500"]
    assert table().index_stats(ann.name).num_indexed_rows == 1800


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["publish", "{dest}", "--db", "{db}", "--sync", "everything"],
            "--sync: Input should be 'partition' or 'mirror'",
        ),
        (["publish", "{tmp}", "--db", "{db}"], "has no _manifest.json; publish a DEST written by `bertflow embed`"),
        (["search", "--db", "{db}", "{dest}", "query"], "give QUERY (DEST comes from --db); got 2 arguments"),
        (["search", "{dest}", "query", "--where", "tag = 'a'"], "--where, --exact and --table search a published"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(days, tmp_path, args, message):
    db = tmp_path / "db"
    fill = {"dest": days[0], "db": str(db), "tmp": str(tmp_path)}
    r = run_cli(*[a.format(**fill) for a in args])
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in " ".join(r.stderr.split()) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not db.exists()


def test_a_backfill_publishes_complete_days_its_table_lacks_and_skips_the_rest(days, tmp_path, tiny_bert):
    """Publishing added to a deployment after days were embedded: a backfill runs the complete days not
    yet in its table (their runs embed nothing and publish) and skips the ones that are."""
    root = Path(days[0]).parent
    config = EmbedConfig(model=str(tiny_bert), shard_rows=8, keep=("tag",), device="cpu")
    db = str(tmp_path / "db")
    params = {"source": str(root / "src-{date}.parquet"), "dest": str(root / "out-{date}"),
              "config": config.model_dump(mode="json")}  # fmt: skip

    def plan(publish: dict | None = None) -> list[tuple[str, str]]:
        given = {**params, "publish": publish} if publish else params
        return [(d.action, d.why) for d in plan_days("embed-dataset/x", "id", given, *DAYS, "1d", False).days]

    assert plan() == [("skip", "complete with the same config")] * 2
    unpublished = ("run", "complete, not yet published to table embeddings: publishes it")
    assert plan({"db": db}) == [unpublished] * 2
    publish(days[0], PublishConfig(db=db))
    assert plan({"db": db}) == [("skip", "complete with the same config"), unpublished]
    assert plan({"db": db, "table": "other"})[0][0] == "run"  # another table of the same database
    publish(days[1], PublishConfig(db=db, table="other"))
    # What the backfill's run of day 2 does: every part is there, so it embeds nothing and publishes,
    # and the manifest keeps its publish to the other table (DEST did not change).
    rerun = embed_dataset(params["source"], params["dest"], config, partition=DAYS[1], deleted_ids=True,
                          publish=PublishConfig(db=db))  # fmt: skip
    assert all(s.resumed for s in rerun.shards)
    assert plan({"db": db}) == [("skip", "complete with the same config")] * 2
    assert set(rows(db)["partition"]) == set(DAYS)
    assert plan({"db": db, "table": "other"})[1][0] == "skip"
    with pytest.raises(InputError, match=r"^deployment embed-dataset/x has an invalid publish parameter: sync: "):
        plan({"db": db, "sync": "sometimes"})


def test_s3_credentials_from_storage_options_alone(days, s3, monkeypatch):
    """What deployments use (--storage-option, a storage block): no AWS_* in the environment at all."""
    from tests.deployments.service import make_bucket

    make_bucket()
    options = [f"key={s3.env['AWS_ACCESS_KEY_ID']}", f"secret={s3.env['AWS_SECRET_ACCESS_KEY']}",
               f"endpoint_url={s3.url}", "region_name=us-east-1"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    code = "from bertflow.cli import app; import sys; app(sys.argv[1:])"
    args = ["publish", days[0], "--db", "s3://lake/opts", *(x for o in options for x in ("--storage-option", o))]
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(rows("s3://lake/opts")) == 30
    r = subprocess.run([sys.executable, "-c", code, *args[:4], "--storage-option", "profile=x"], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2 and "--storage-option profile: LanceDB on S3 takes key, secret" in r.stderr


def test_chunked_rows_are_keyed_by_window_and_lost_windows_deleted(tmp_path, tiny_bert):
    long = " ".join(f"Sentence {i} about rivers." for i in range(30))
    first = [{"id": 1, "text": long, "tag": "a"}, {"id": 2, "text": "Short.", "tag": "a"}]
    second = [{"id": 1, "text": long[: len(long) // 3], "tag": "a"}, {"id": 2, "text": "Short.", "tag": "a"}]
    chunked = {"long_text": "chunk", "chunk_tokens": 32}
    one = embed(tmp_path / "one", tiny_bert, DAYS[0], first, **chunked)
    two = embed(tmp_path / "two", tiny_bert, DAYS[0], second, **chunked)
    db = str(tmp_path / "db")
    publish(one, PublishConfig(db=db, sync="mirror"))
    windows = read(one).group_by("id").len().sort("id")["len"].to_list()
    assert windows[0] > 3 and len(rows(db)) == sum(windows)
    done = publish(two, PublishConfig(db=db, sync="mirror"))
    table, expected = rows(db).sort("id", "chunk_index"), read(two).sort("id", "chunk_index")
    assert table.select("id", "chunk_index").rows() == expected.select("id", "chunk_index").rows()
    assert table["embedding"].to_numpy().tobytes() == expected["embedding"].to_numpy().tobytes()
    assert done.deleted == sum(windows) - len(expected)  # the windows id 1 no longer has
