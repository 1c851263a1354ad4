"""What the Prefect UI shows of a run: names, tags, artifacts and log lines, read through the client."""

from __future__ import annotations

import json
import re

from bertflow.io import parts, storage
from bertflow.tasks.reporting import artifact_keys
from tests.deployments.service import POOL, make_bucket
from tests.s3 import CREDENTIALS


def runs_named(svc, name: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with svc.client() as c:
        return c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def artifacts(svc, key: str) -> list:
    """Every version of the artifact under key, oldest first."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with svc.client() as c:
        return c.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
        )[::-1]


def test_run_names_tags_artifacts_and_log_lines(s3, service):
    make_bucket()
    source, dest = "s3://lake/raw-watched/", "s3://lake/watched/"
    rows = [
        {"id": f"d{i}", "text": f"Document {i}: the quick brown fox jumps over the lazy dog again."} for i in range(19)
    ]
    rows.append({"id": "d19", "text": None})
    storage.write_atomic(storage.join(source, "docs.jsonl"), "".join(json.dumps(r) + "\n" for r in rows).encode())

    args = (
        "embed",
        source,
        dest,
        "--model",
        str(service.model),
        "--shard-rows",
        "10",
        "--max-length",
        "8",
        "--pool",
        POOL,
    )
    r = service.cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr + service.diagnostics()
    manifest = parts.read_manifest(dest)

    # Names and tags a person can search by.
    [parent] = runs_named(service, "embed-watched")
    model_tag = f"model:{service.model.name}"
    assert {model_tag, "pooling:mean"} <= set(parent.tags)
    shards = runs_named(service, "shard-0-of-2") + runs_named(service, "shard-1-of-2")
    shards = [s for s in shards if s.parameters.get("job", {}).get("dest") == dest]
    assert len(shards) == 2 and all({model_tag, "pooling:mean"} <= set(s.tags) for s in shards)

    # Three artifacts under keys stable for this DEST, all from the parent run.
    keys = artifact_keys(dest)
    assert all(re.fullmatch(r"[a-z0-9-]+", k) for k in keys.values())
    [progress] = artifacts(service, keys["progress"])
    assert progress.type == "progress" and float(progress.data) == 100.0
    [table] = artifacts(service, keys["summary"])
    [row] = json.loads(table.data)
    t = manifest.totals
    assert table.type == "table" and row == {
        "documents": 19,
        "rejected": 1,
        "shards_done": 2,
        "shards_resumed": 0,
        "shards_failed": 0,
        "tokens": t.tokens,
        "truncated": t.truncated,
        "documents_per_s": row["documents_per_s"],
        "tokens_per_s": row["tokens_per_s"],
        "seconds": round(t.seconds, 1),
        "model": str(service.model),
        "pooling": "mean",
        "precision": "fp32",
        "device": "cpu",
    }
    assert t.truncated == 19 and t.tokens == 19 * 8
    assert row["documents_per_s"] == round(20 / t.seconds, 1) and row["tokens_per_s"] == round(t.tokens / t.seconds, 1)
    [markdown] = artifacts(service, keys["manifest"])
    assert markdown.type == "markdown" and f"`{dest}`" in markdown.data and "_manifest.json" in markdown.data
    assert "| status | complete |" in markdown.data and "| documents | 19 |" in markdown.data
    assert {a.flow_run_id for a in (progress, table, markdown)} == {parent.id}

    # One log line per shard with its numbers; warnings carry counts, not rows.
    messages = [(log.level, log.message) for log in service.logs(parent.id)]
    per_shard = [
        m
        for _, m in messages
        if re.fullmatch(
            r"shard \d of 2 \(part-0000\d\.parquet\): \d+ documents, \d+ tokens in [\d.]+ s \(\d+ documents/s, \d+ tokens/s\)"
            r", \d+ truncated(, 1 rejected)?, on cpu",
            m,
        )
    ]
    assert len(per_shard) == 2, messages
    warnings = [m for level, m in messages if level == 30]
    assert "19 documents were longer than 8 tokens and were truncated" in warnings
    assert any(m.startswith("1 documents were not embedded") for m in warnings)

    # Workers read credentials from their own environment: none in parameters, logs or artifacts.
    seen = [json.dumps(r.parameters) for r in [parent, *shards]]
    seen += [log.message for r in [parent, *shards] for log in service.logs(r.id)]
    seen += [str(a.data) + str(a.description) for a in (progress, table, markdown)]
    for secret in (CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"]):
        assert not any(secret in text for text in seen)

    # A rerun resumes everything; the same keys now hold two versions: the UI shows the history.
    again = service.cli(*args)
    assert again.returncode == 0, again.stderr
    assert [float(a.data) for a in artifacts(service, keys["progress"])] == [100.0, 100.0]
    assert json.loads(artifacts(service, keys["summary"])[-1].data)[0]["shards_resumed"] == 2


def test_failed_run_says_why_in_one_line(s3, service):
    make_bucket()
    dest = "s3://lake/broken/"
    r = service.cli("embed", "s3://lake/raw-missing/", dest, "--model", str(service.model))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr

    [run] = runs_named(service, "embed-broken")
    assert run.state.is_failed()
    reason = "SOURCE s3://lake/raw-missing/ does not exist; give a file, a directory or a glob"
    assert reason in run.state.message and "\n" not in run.state.message
    # Every error line is one line that carries the reason (the first comes from the failing task);
    # a bertflow error is not a bug, so no traceback.
    errors = [log.message for log in service.logs(run.id) if log.level >= 40]
    assert all(reason in m and "\n" not in m for m in errors), errors
    assert f"run failed: {reason}" in errors
    [markdown] = artifacts(service, artifact_keys(dest)["manifest"])
    assert f"**Why**: {reason}" in markdown.data
