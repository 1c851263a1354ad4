"""Object storage, atomic parts, resume and verify: every input row exactly once, whatever happens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import s3fs

from bertflow.config import EmbedConfig
from bertflow.flows.embed import embed_dataset
from tests.conftest import BERTFLOW, run_cli, write_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")


def docs(n: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"doc-{i}", "text": f"document number {i} " + "word " * (i % 17), "lang": "en"}
        for i in range(start, start + n)
    ]


def put_jsonl(fs: s3fs.S3FileSystem, uri: str, rows: list[dict]) -> None:
    fs.pipe_file(uri, "".join(json.dumps(r) + "\n" for r in rows).encode())


def read_parts(fs: s3fs.S3FileSystem, dest: str) -> pl.DataFrame:
    frames = []
    for path in sorted(fs.glob(dest.rstrip("/") + "/part-*.parquet")):
        with fs.open(path, "rb") as f:
            frames.append(pl.read_parquet(f))
    return pl.concat(frames)


def test_s3_to_s3_embed_reads_back_and_verifies(s3, tiny_bert):
    fs = s3fs.S3FileSystem()
    fs.mkdir("raw")
    fs.mkdir("emb")
    rows = docs(300)
    put_jsonl(fs, "raw/day/a.jsonl", rows[:180])
    put_jsonl(fs, "raw/day/b.jsonl", rows[180:])

    manifest = embed_dataset(
        "s3://raw/day/", "s3://emb/day/", EmbedConfig(model=str(tiny_bert), shard_rows=100, keep=("lang",))
    )

    assert manifest.status == "complete" and manifest.totals.rows == 300
    stored = json.loads(fs.cat_file("emb/day/_manifest.json"))
    assert stored["status"] == "complete"
    assert [s["rows"] for s in stored["shards"]] == [100, 100, 100]
    # the second shard spans both files: rows 100..180 of a.jsonl and 0..20 of b.jsonl
    assert [(p["file"], p["start"], p["stop"]) for p in stored["shards"][1]["pieces"]] == [
        ("s3://raw/day/a.jsonl", 100, 180),
        ("s3://raw/day/b.jsonl", 0, 20),
    ]
    table = read_parts(fs, "s3://emb/day/")
    assert table["id"].to_list() == [r["id"] for r in rows]
    assert table.schema["embedding"] == pl.Array(pl.Float32, 32)
    assert table["lang"].unique().to_list() == ["en"]
    result = run_cli("verify", "s3://emb/day/", "--source", "s3://raw/day/", env=s3.env)
    assert result.returncode == 0, result.stderr
    assert "exactly once" in result.stdout


def test_transient_put_failures_are_retried(s3, tiny_bert, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # let our retries, not botocore's, absorb the faults
    fs = s3fs.S3FileSystem()
    fs.mkdir("flaky")
    put_jsonl(fs, "flaky/in.jsonl", docs(120))
    fault = s3.fail("PUT", r"^/flaky/out/part-\d+\.parquet$", times=3, status=503)
    fault500 = s3.fail("PUT", r"^/flaky/out/part-00001\.parquet$", times=1, status=500)

    manifest = embed_dataset("s3://flaky/in.jsonl", "s3://flaky/out/", EmbedConfig(model=str(tiny_bert), shard_rows=40))

    assert fault.hits == 3 and fault500.hits == 1
    assert manifest.totals.rows == 120
    table = read_parts(fs, "s3://flaky/out/")
    assert sorted(table["id"].to_list()) == sorted(r["id"] for r in docs(120))
    assert table["id"].is_duplicated().sum() == 0
    assert run_cli("verify", "s3://flaky/out/", "--source", "s3://flaky/in.jsonl", env=s3.env).returncode == 0


def test_access_denied_and_missing_bucket_are_one_line_errors(s3, tiny_bert, tmp_path, prefect_server):
    fs = s3fs.S3FileSystem()
    fs.mkdir("locked")
    put_jsonl(fs, "locked/in.jsonl", docs(10))
    env = {**s3.env, "PREFECT_API_URL": prefect_server}

    missing = run_cli(
        "embed", "s3://no-such-bucket/in.jsonl", str(tmp_path / "out"), "--model", str(tiny_bert), env=env
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "Traceback" not in missing.stderr
    assert "s3://no-such-bucket/in.jsonl" in missing.stderr

    s3.fail("GET", r"^/locked", times=1000, status=403)
    s3.fail("HEAD", r"^/locked", times=1000, status=403)
    denied = run_cli("embed", "s3://locked/in.jsonl", str(tmp_path / "out2"), "--model", str(tiny_bert), env=env)
    assert denied.returncode == 2
    assert denied.stderr.strip().count("\n") == 0 and "Traceback" not in denied.stderr
    assert "access denied to s3://locked/in.jsonl" in denied.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_credentials_never_reach_parameters_logs_or_manifest(s3, tiny_bert, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    fs = s3fs.S3FileSystem()
    fs.mkdir("sec")
    put_jsonl(fs, "sec/in.jsonl", docs(30))
    secret = s3.env["AWS_SECRET_ACCESS_KEY"]
    key = s3.env["AWS_ACCESS_KEY_ID"]
    # Credentials only on the command line: the process environment holds none.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PREFECT_API_URL"] = prefect_server
    result = subprocess.run(
        [
            BERTFLOW,
            "embed",
            "s3://sec/in.jsonl",
            "s3://sec/out/",
            "--model",
            str(tiny_bert),
            "--storage-option",
            f"key={key}",
            "--storage-option",
            f"secret={secret}",
            "--storage-option",
            f"endpoint_url={s3.url}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert secret not in fs.cat_file("sec/out/_manifest.json").decode()

    import anyio
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def collect() -> str:
        async with get_client() as client:
            runs = await client.read_flow_runs()
            ids = [r.id for r in runs]
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            return json.dumps([r.parameters for r in runs], default=str) + "\n".join(entry.message for entry in logs)

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        seen = anyio.run(collect)
    assert "s3://sec/out/" in seen  # we are looking at the right runs
    assert secret not in seen and key not in seen


def _parts(dest: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(dest.glob("part-*.parquet"))}


def test_sigkill_mid_run_then_rerun_completes_without_rewriting(tiny_bert, tmp_path, prefect_server):
    source = write_rows(tmp_path / "in.jsonl", docs(1200))
    dest = tmp_path / "out"
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    args = [BERTFLOW, "embed", str(source), str(dest), "--model", str(tiny_bert), "--shard-rows", "100"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(_parts(dest)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _parts(dest)
    assert 3 <= len(before) < 12, "the kill should land mid-run"
    assert json.loads((dest / "_manifest.json").read_text())["status"] == "running"
    for name in before:  # whatever is visible under a part name is a whole Parquet file
        assert pl.read_parquet(dest / name).height == 100

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    after = _parts(dest)
    assert len(after) == 12
    assert {n: after[n] for n in before} == before  # parts written before the kill were not rewritten
    assert not [p for p in dest.iterdir() if p.name.endswith(".tmp")]
    manifest = json.loads((dest / "_manifest.json").read_text())
    assert sum(s["resumed"] for s in manifest["shards"]) == len(before)
    verify = run_cli("verify", str(dest), "--source", str(source))
    assert verify.returncode == 0, verify.stderr


def test_rerun_with_other_settings_is_refused_unless_overwrite(tiny_bert, tmp_path, prefect_server):
    source = write_rows(tmp_path / "in.jsonl", docs(50))
    dest = tmp_path / "out"
    env = {"PREFECT_API_URL": prefect_server}
    first = run_cli("embed", str(source), str(dest), "--model", str(tiny_bert), "--pooling", "mean", env=env)
    assert first.returncode == 0, first.stderr
    stamp = _parts(dest)

    clash = run_cli("embed", str(source), str(dest), "--model", str(tiny_bert), "--pooling", "cls", env=env)
    assert clash.returncode == 2
    assert clash.stderr.strip().count("\n") == 0 and "Traceback" not in clash.stderr
    assert "pooling: 'mean' in DEST, 'cls' now" in clash.stderr and "--overwrite" in clash.stderr
    assert _parts(dest) == stamp  # refused before touching anything
    assert json.loads((dest / "_manifest.json").read_text())["config"]["pooling"] == ["mean"]

    again = run_cli(
        "embed", str(source), str(dest), "--model", str(tiny_bert), "--pooling", "cls", "--overwrite", env=env
    )
    assert again.returncode == 0, again.stderr
    manifest = json.loads((dest / "_manifest.json").read_text())
    assert manifest["config"]["pooling"] == ["cls"] and manifest["status"] == "complete"
    assert not any(s["resumed"] for s in manifest["shards"])
    assert run_cli("verify", str(dest), "--source", str(source)).returncode == 0


def test_verify_reports_a_tampered_part(tiny_bert, tmp_path):
    source = write_rows(tmp_path / "in.jsonl", docs(40))
    dest = tmp_path / "out"
    embed_dataset(str(source), str(dest), EmbedConfig(model=str(tiny_bert), shard_rows=20))
    table = pl.read_parquet(dest / "part-00001.parquet")
    table.head(19).write_parquet(dest / "part-00001.parquet")  # a row lost after the fact

    result = run_cli("verify", str(dest), "--source", str(source))
    assert result.returncode == 1
    assert "part-00001.parquet: sha256 differs" in result.stderr
    assert "part-00001.parquet: 19 rows, manifest says 20" in result.stderr
    assert "1 source ids are in no part" in result.stderr


def test_credentials_from_a_prefect_secret_block(s3, tiny_bert, monkeypatch):
    from prefect.blocks.system import Secret

    fs = s3fs.S3FileSystem()
    fs.mkdir("blk")
    put_jsonl(fs, "blk/in.jsonl", docs(20))
    Secret(
        value={"key": s3.env["AWS_ACCESS_KEY_ID"], "secret": s3.env["AWS_SECRET_ACCESS_KEY"], "endpoint_url": s3.url}
    ).save("lake-creds", overwrite=True)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key)
    s3fs.S3FileSystem.clear_instance_cache()

    config = EmbedConfig(model=str(tiny_bert), storage_block="lake-creds")
    manifest = embed_dataset("s3://blk/in.jsonl", "s3://blk/out/", config)

    assert manifest.totals.rows == 20
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in config.model_dump_json()  # only the block's name travels
    from bertflow.errors import InputError

    with pytest.raises(InputError, match="no Prefect Secret block named 'missing'"):
        embed_dataset("s3://blk/in.jsonl", "s3://blk/out2/", EmbedConfig(model=str(tiny_bert), storage_block="missing"))
