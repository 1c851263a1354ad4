"""embed-nightly on real workers: a scheduled run that starts late still embeds its own day."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bertflow import partitions
from bertflow.io import parts
from tests.deployments.service import DEST_TEMPLATE, SOURCE_TEMPLATE, make_bucket, wait_for, write_day

NIGHTLY = "embed-dataset/embed-nightly"


def _finished(service, run_id, what: str):
    """The flow run once it is in a final state (waits up to 240 s)."""

    def final():
        with service.client() as c:
            r = c.read_flow_run(run_id)
        return r if r.state.is_final() else None

    return wait_for(final, 240, what, diagnostics=service.diagnostics)


def test_scheduled_run_started_late_embeds_the_day_before_its_schedule(s3, service):
    from prefect.states import Scheduled

    make_bucket()
    scheduled = wait_for(
        lambda: [r for r in service.runs(NIGHTLY) if "auto-scheduled" in r.tags and r.state.is_scheduled()],
        90,
        "the scheduler's runs of embed-nightly",
        diagnostics=service.diagnostics,
    )
    run = min(scheduled, key=lambda r: r.expected_start_time)
    day = (run.expected_start_time.date() - timedelta(days=1)).isoformat()
    write_day(day, 8)

    # The run is due at 02:00 on a later day; moving its start to now is what a late start looks like.
    with service.client() as c:
        c.set_flow_run_state(run.id, Scheduled(scheduled_time=datetime.now(timezone.utc)), force=True)

    done = _finished(service, run.id, f"{run.name} to finish")
    assert done.state.is_completed(), (done.state, service.diagnostics())
    assert done.expected_start_time == run.expected_start_time  # the day comes from here, not the clock
    assert done.name == f"embed-embeddings-{day}"
    manifest = parts.read_manifest(partitions.render(DEST_TEMPLATE, day))
    assert manifest.status == "complete" and manifest.totals.rows == 8
    assert manifest.source == partitions.render(SOURCE_TEMPLATE, day)


def _write_texts(day: str, texts: list[str]) -> None:
    """SOURCE of one day with stable ids: doc-0, doc-1, ... (the same documents from day to day)."""
    import json

    from bertflow.io import storage

    lines = "".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    storage.write_atomic(storage.join(partitions.render(SOURCE_TEMPLATE, day), "docs.jsonl"), lines.encode())


def _run_day(service, day: str):
    """Start embed-nightly for one partition, as `prefect deployment run -p partition=...` does; wait."""
    with service.client() as c:
        dep = c.read_deployment_by_name(NIGHTLY)
        run = c.create_flow_run_from_deployment(dep.id, parameters={"partition": day})

    done = _finished(service, run.id, f"embed-nightly for {day}")
    assert done.state.is_completed(), (done.state, service.diagnostics())
    return done, parts.read_manifest(partitions.render(DEST_TEMPLATE, day))


def test_a_nightly_run_reuses_the_previous_partition_and_embeds_everything_when_it_is_unsound(s3, service):
    import json

    from bertflow.io import storage

    make_bucket()
    texts = [f"Note {i}: the committee met on a rainy afternoon and agreed on item {i}." for i in range(12)]
    _write_texts("2020-01-01", texts)
    _, first = _run_day(service, "2020-01-01")
    assert first.reuse is None  # no day before it

    texts[4] = "Note 4 was rewritten overnight."
    _write_texts("2020-01-02", texts)
    _, second = _run_day(service, "2020-01-02")
    day1 = partitions.render(DEST_TEMPLATE, "2020-01-01")
    assert second.reuse.previous == [day1]
    assert (second.reuse.reused, second.reuse.embedded, second.reuse.dropped) == (11, 1, 0)

    # Day 2's output loses its completion (a run that died before its manifest): day 3 must not use it.
    day2 = partitions.render(DEST_TEMPLATE, "2020-01-02")
    uri = storage.join(day2, "_manifest.json")
    storage.write_atomic(uri, json.dumps({**json.loads(storage.read_bytes(uri)), "status": "running"}).encode())
    _write_texts("2020-01-03", texts)
    run, third = _run_day(service, "2020-01-03")
    assert third.reuse.previous == [] and (third.reuse.reused, third.reuse.embedded) == (0, 12)
    assert "is not complete" in third.reuse.skipped[day2]
    warnings = [log.message for log in service.logs(run.id) if log.level >= 30]
    assert any("not reusing the previous partition" in m and day2 in m for m in warnings), warnings


def test_deployed_with_publish_db_each_night_publishes_its_partition_into_lancedb(s3, service):
    import lancedb

    from bertflow.io import storage, vectorstore
    from bertflow.partitions import stable_key
    from tests.deployments.service import BUCKET
    from tests.flows.test_monitoring import artifacts

    make_bucket()
    db = f"s3://{BUCKET}/lance"
    r = service.cli("deploy", "--pool", service.pool, "--publish-db", db, "--publish-table", "nightly")
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        with service.client() as c:
            published = c.read_deployment_by_name(NIGHTLY).parameters["publish"]
        assert (published["db"], published["table"], published["sync"]) == (db, "nightly", "partition")
        _write_texts("2021-03-01", [f"Entry {i} of the ledger, written in blue ink." for i in range(6)])
        run, manifest = _run_day(service, "2021-03-01")
        assert [(p.table, p.partition, p.rows, p.inserted) for p in manifest.published] == [
            ("nightly", "2021-03-01", 6, 6)
        ]
        table = lancedb.connect(db, storage_options=vectorstore.lance_options(db)).open_table("nightly")
        assert table.version == manifest.published[0].version
        assert sorted(table.to_arrow().column("id").to_pylist()) == [f"doc-{i}" for i in range(6)]
        assert set(table.to_arrow().column("partition").to_pylist()) == {"2021-03-01"}
        # The worker's process sends its log lines in batches: they reach the server a little after the run ends.
        logs = wait_for(
            lambda: " ".join(m.message for m in service.logs(run.id)) if any(
                "published" in m.message for m in service.logs(run.id)) else None,
            60, "the publish's log line", diagnostics=lambda: [m.message for m in service.logs(run.id)],
        )  # fmt: skip
        assert s3.env["AWS_SECRET_ACCESS_KEY"] not in logs
        # The report next to the manifest, and its key pictures in the UI: token lengths and the shard timeline.
        dest = partitions.render(DEST_TEMPLATE, "2021-03-01")
        [pictures] = artifacts(service, stable_key("report", dest))
        assert pictures.type == "markdown" and pictures.flow_run_id == run.id
        assert "**Tokens per row**" in pictures.data and "**Shards over time**" in pictures.data
        assert pictures.data.count("| part-") == len(manifest.shards)  # one timeline row per shard
        [link] = artifacts(service, stable_key("report-link", dest))
        assert link.data == f"[the report (HTML)]({dest.rstrip('/')}/_report.html)"
        assert storage.exists(storage.join(dest, "_report.html"))
    finally:
        r = service.cli("deploy", "--pool", service.pool, "--publish-db", "")
        assert r.returncode == 0, r.stdout + r.stderr
    with service.client() as c:
        assert "publish" not in c.read_deployment_by_name(NIGHTLY).parameters
