"""Incremental runs (`--reuse`): unchanged rows copied bit for bit, changed rows embedded as a fresh run
would, vanished ids counted; outputs embedded otherwise refused; resume, S3 and verify still hold."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bertflow.config import EmbedConfig
from bertflow.errors import DestMismatchError, InputError
from bertflow.flows.embed import embed_dataset
from bertflow.io import storage
from bertflow.io.verify import verify_dest
from tests.conftest import BERTFLOW, build_tiny_bert, run_cli, write_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")

LONG = " ".join(f"Sentence {i} says something about apples, rivers and the weather." for i in range(40))


def day1() -> list[dict]:
    return [
        {"id": i, "text": f"Document {i}: the quick brown fox {i % 5} jumps over dog {i}.", "tag": "a"}
        for i in range(30)
    ]


def day2() -> list[dict]:
    """Day 1 with ids 3 and 17 edited, 25 deleted, 100 added, and the kept column of 5 changed."""
    rows = [dict(r) for r in day1() if r["id"] != 25]
    rows[3]["text"] = "An entirely new text for document three."
    rows[17]["text"] += " With a sentence added at the end."
    rows[5]["tag"] = "b"
    return [*rows, {"id": 100, "text": "A document that did not exist yesterday.", "tag": "a"}]


def run(source: Path | str, dest: Path | str, model: Path, reuse: list[str] | None = None, **options):
    """embed_dataset with the tiny BERT, 8-row shards and `tag` kept; flow options go to the flow."""
    flow = {k: options.pop(k) for k in ("reuse_mismatch", "deleted_ids") if k in options}
    config = EmbedConfig(model=str(model), shard_rows=8, keep=("tag",), device="cpu", **options)
    return embed_dataset(str(source), str(dest), config, reuse=reuse, **flow)


def read(dest: Path | str) -> pl.DataFrame:
    frames = []
    for uri in sorted(storage.list_names(str(dest))):
        if uri.startswith("part-"):
            with storage.open_input(storage.join(str(dest), uri)) as src:
                frames.append(pl.read_parquet(src))
    return pl.concat(frames)


@pytest.fixture(scope="module")
def days(tmp_path_factory, tiny_bert):
    """Day 1 embedded; day 2 embedded twice: reusing day 1, and from scratch."""
    root = tmp_path_factory.mktemp("days")
    one, two = write_rows(root / "d1.parquet", day1()), write_rows(root / "d2.parquet", day2())
    run(one, root / "out1", tiny_bert)
    manifest = run(two, root / "out2", tiny_bert, [str(root / "out1")], deleted_ids=True)
    run(two, root / "fresh", tiny_bert)
    return root, manifest


def test_unchanged_rows_are_copied_bit_for_bit_and_changed_rows_equal_a_fresh_embed(days):
    root, manifest = days
    before, after, fresh = read(root / "out1"), read(root / "out2"), read(root / "fresh")
    assert after["id"].to_list() == [r["id"] for r in day2()]  # every row, in SOURCE order
    changed = {3, 17, 100}
    old = dict(zip(before["id"].to_list(), before["embedding"].to_numpy()))
    new = dict(zip(after["id"].to_list(), after["embedding"].to_numpy()))
    ref = dict(zip(fresh["id"].to_list(), fresh["embedding"].to_numpy()))
    for i in new.keys() - changed:
        assert np.array_equal(new[i], old[i])  # copied, not recomputed
    for i in changed:
        np.testing.assert_allclose(new[i], ref[i], atol=1e-5)  # embedded as a fresh run embeds it
        assert i not in old or not np.allclose(new[i], old[i], atol=1e-3)
    # Every column but the vector is this run's own: the same as a fresh run's, the new tag included.
    rest = ["id", "n_tokens", "truncated", "text_hash", "tag"]
    assert after.select(rest).equals(fresh.select(rest))
    assert after.filter(pl.col("id") == 5)["tag"].item() == "b"

    reuse = manifest.reuse
    assert (reuse.reused, reuse.embedded, reuse.dropped) == (27, 3, 1)
    assert reuse.previous == [str(root / "out1")] and reuse.seconds_saved > 0
    assert sum(s.reused for s in manifest.shards) == 27
    assert pl.read_parquet(root / "out2" / "_deleted.parquet")["id"].to_list() == [25]
    assert 25 not in new
    assert verify_dest(str(root / "out2"), str(root / "d2.parquet")) == []


def test_the_manifest_names_the_hash_and_the_embedding_fingerprint(days):
    root, manifest = days
    recorded = json.loads((root / "out2" / "_manifest.json").read_text())
    assert recorded["config"]["text_hash"] == "blake2b-128"
    fingerprint = recorded["embedding_fingerprint"]
    assert fingerprint["model_sha256"] == manifest.config.model.sha256
    assert len(fingerprint["tokenizer_sha256"]) == 64
    assert {"pooling", "layers", "max_length", "normalize", "precision", "long_text"} <= fingerprint.keys()
    texts = {r["id"]: r["text"] for r in day2()}
    part = read(root / "out2")
    for i, h in zip(part["id"].to_list(), part["text_hash"].to_list()):
        assert h == hashlib.blake2b(texts[i].encode(), digest_size=16).digest()


@pytest.mark.parametrize(
    ("change", "setting"),
    [({"pooling": "cls"}, "pooling"), ({"max_length": 12}, "max_length"), ("other-model", "model_sha256")],
)
def test_an_output_embedded_otherwise_is_refused_naming_the_setting(days, tiny_bert, tmp_path, change, setting):
    root, _ = days
    model = tiny_bert
    if change == "other-model":
        model, change = build_tiny_bert(tmp_path / "other", tiny_bert, seed=1), {}
    dest = tmp_path / "out"
    with pytest.raises(DestMismatchError, match=f"was embedded with {setting} ") as e:
        run(root / "d2.parquet", dest, model, reuse=[str(root / "out1")], **change)
    assert "--reuse-mismatch ignore" in str(e.value)
    assert not dest.exists()  # refused before anything was written

    skipped = run(root / "d2.parquet", dest, model, reuse=[str(root / "out1")], reuse_mismatch="ignore", **change)
    assert skipped.reuse.reused == 0 and skipped.reuse.embedded == 30
    assert setting in skipped.reuse.skipped[str(root / "out1")]


def test_incomplete_changed_or_self_outputs_are_refused(days, tiny_bert, tmp_path):
    root, _ = days
    with pytest.raises(InputError, match="is DEST itself"):
        run(root / "d2.parquet", root / "out2", tiny_bert, reuse=[str(root / "out2")])
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in (root / "out1").iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    manifest = json.loads((copy / "_manifest.json").read_text())
    (copy / "_manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    with pytest.raises(InputError, match="is not complete"):
        run(root / "d2.parquet", tmp_path / "a", tiny_bert, reuse=[str(copy)])
    (copy / "_manifest.json").write_text(json.dumps(manifest))
    part = pl.read_parquet(copy / "part-00000.parquet")
    part.with_columns(pl.col("embedding") * 2).write_parquet(copy / "part-00000.parquet")
    with pytest.raises(InputError, match="part-00000.parquet changed after its run"):
        run(root / "d2.parquet", tmp_path / "b", tiny_bert, reuse=[str(copy)])


def test_several_earlier_outputs_newest_first(days, tiny_bert, tmp_path):
    """A text reverted to its day-1 version is found in the older output."""
    root, _ = days
    rows = day2()
    rows[3]["text"] = day1()[3]["text"]
    source = write_rows(tmp_path / "d3.parquet", rows)
    manifest = run(source, tmp_path / "out3", tiny_bert, reuse=[str(root / "out2"), str(root / "out1")])
    assert (manifest.reuse.reused, manifest.reuse.embedded, manifest.reuse.dropped) == (30, 0, 0)
    old = read(root / "out1").filter(pl.col("id") == 3)["embedding"].to_numpy()
    assert np.array_equal(read(tmp_path / "out3").filter(pl.col("id") == 3)["embedding"].to_numpy(), old)


def test_chunked_outputs_reuse_per_window(tiny_bert, tmp_path):
    first = [{"id": "a", "text": LONG, "tag": "x"}, {"id": "b", "text": LONG + " Tail.", "tag": "x"}]
    second = [{"id": "a", "text": LONG + " One more sentence at the very end.", "tag": "x"}, first[1]]
    opts = {"long_text": "chunk", "chunk_tokens": 64, "stride": 8, "aggregate": "mean"}
    run(write_rows(tmp_path / "1.parquet", first), tmp_path / "o1", tiny_bert, **opts)
    m2 = run(write_rows(tmp_path / "2.parquet", second), tmp_path / "o2", tiny_bert, [str(tmp_path / "o1")], **opts)
    run(tmp_path / "2.parquet", tmp_path / "fresh", tiny_bert, **opts)

    before, after, fresh = read(tmp_path / "o1"), read(tmp_path / "o2"), read(tmp_path / "fresh")
    windows_a = after.filter(pl.col("id") == "a").height
    assert windows_a > 5
    # Only the windows the edit reached are embedded again: the last one or two of "a", none of "b".
    assert m2.reuse.embedded in (1, 2)
    assert m2.reuse.reused == after.height - m2.reuse.embedded
    keys = ["id", "chunk_index"]
    joined = after.join(before, on=keys, suffix="_old").join(fresh.select(*keys, "embedding"), on=keys, suffix="_fresh")
    for row in joined.iter_rows(named=True):
        same_text = row["text_hash"] == row["text_hash_old"]
        if same_text:
            assert np.array_equal(row["embedding"], row["embedding_old"])
        np.testing.assert_allclose(row["embedding"], row["embedding_fresh"], atol=1e-5)
    rest = ["id", "chunk_index", "char_start", "char_end", "n_tokens", "truncated", "text_hash", "tag"]
    assert after.select(rest).equals(fresh.select(rest))
    docs, docs_fresh = (pl.read_parquet(tmp_path / d / "documents" / "*.parquet") for d in ("o2", "fresh"))
    np.testing.assert_allclose(docs["embedding"].to_numpy(), docs_fresh["embedding"].to_numpy(), atol=1e-5)
    assert docs["text_hash"].to_list() == [hashlib.blake2b(r["text"].encode(), digest_size=16).digest() for r in second]
    assert verify_dest(str(tmp_path / "o2"), str(tmp_path / "2.parquet")) == []


def test_token_level_outputs_reuse_whole_rows(tiny_bert, tmp_path):
    rows = day1()[:6]
    run(write_rows(tmp_path / "1.parquet", rows), tmp_path / "o1", tiny_bert, pooling="none")
    rows[2]["text"] = "Changed."
    m = run(
        write_rows(tmp_path / "2.parquet", rows), tmp_path / "o2", tiny_bert, [str(tmp_path / "o1")], pooling="none"
    )
    assert (m.reuse.reused, m.reuse.embedded) == (5, 1)
    before, after = read(tmp_path / "o1"), read(tmp_path / "o2")
    for i in (0, 1, 3, 4, 5):
        assert after["token_embeddings"][i].equals(before["token_embeddings"][i])
    assert after["tokens"][2].to_list() == ["[CLS]", "changed", ".", "[SEP]"]
    assert len(after["token_embeddings"][2]) == 4


def test_s3_previous_and_new_outputs(s3, tiny_bert):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("inc")
    for name, rows in (("d1", day1()), ("d2", day2())):
        fs.pipe_file(f"inc/{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    run("s3://inc/d1.jsonl", "s3://inc/out1", tiny_bert)
    m = run("s3://inc/d2.jsonl", "s3://inc/out2", tiny_bert, ["s3://inc/out1"])
    assert (m.reuse.reused, m.reuse.embedded, m.reuse.dropped) == (27, 3, 1)
    assert verify_dest("s3://inc/out2", "s3://inc/d2.jsonl") == []
    old = read("s3://inc/out1").filter(pl.col("id") == 0)["embedding"].to_numpy()
    assert np.array_equal(read("s3://inc/out2").filter(pl.col("id") == 0)["embedding"].to_numpy(), old)


def test_kill_mid_run_with_reuse_then_rerun_loses_and_duplicates_nothing(tiny_bert, tmp_path, prefect_server):
    rows = [{"id": f"doc-{i}", "text": f"document number {i} " + "word " * (i % 17)} for i in range(1200)]
    one = write_rows(tmp_path / "d1.jsonl", rows)
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    common = ["--model", str(tiny_bert), "--shard-rows", "100"]
    first = subprocess.run([BERTFLOW, "embed", str(one), str(tmp_path / "out1"), *common], env=env, capture_output=True)
    assert first.returncode == 0, first.stderr
    for i in range(0, 1200, 10):  # every tenth text changes: each shard embeds some rows, copies most
        rows[i]["text"] += " edited"
    two = write_rows(tmp_path / "d2.jsonl", rows[:-50])
    dest = tmp_path / "out2"
    args = [BERTFLOW, "embed", str(two), str(dest), *common, "--reuse", str(tmp_path / "out1")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list(dest.glob("part-*.parquet"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(dest.glob("part-*.parquet")))
    assert 1 <= written < 12, "the kill should land mid-run"

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    manifest = json.loads((dest / "_manifest.json").read_text())
    assert manifest["reuse"]["reused"] + manifest["reuse"]["embedded"] == 1150
    assert manifest["reuse"]["embedded"] == 115 and manifest["reuse"]["dropped"] == 50
    assert sum(s["resumed"] for s in manifest["shards"]) == written
    verify = run_cli("verify", str(dest), "--source", str(two))
    assert verify.returncode == 0, verify.stderr
