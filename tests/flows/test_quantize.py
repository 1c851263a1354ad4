"""--quantize: int8/uint8 with calibrated ranges kept for resumes, later runs and queries; binary bits;
compact columns; search on every form; refused where it cannot apply."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from bertflow.config import EmbedConfig
from bertflow.errors import InputError
from bertflow.flows.embed import embed_dataset
from bertflow.io.manifest import Manifest
from bertflow.io.sources import plan_source
from bertflow.io.verify import verify_dest
from bertflow.model.resolve import resolve_config
from bertflow.pipeline.backfill import plan_days
from bertflow.pipeline.quantize import calibration_sample
from bertflow.pipeline.reduction import read_fittable
from bertflow.pipeline.search import search
from bertflow.vectors import calibrate, dequantize, hamming, quantize
from tests.conftest import run_cli, write_rows
from tests.flows.test_search import near_duplicate

pytestmark = pytest.mark.usefixtures("prefect_harness")

FORMS = {"int8": (pl.Int8, 384), "uint8": (pl.UInt8, 384), "binary": (pl.Int8, 48), "ubinary": (pl.UInt8, 48)}


def test_quantized_values_equal_sentence_transformers_and_round_trip():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 20)).astype(np.float32)
    ranges = calibrate(x[:32])  # the calibration sample: later rows fall outside it and are clipped
    for how in FORMS:
        ours = quantize(x, how, ranges)
        theirs = quantize_embeddings(x, how, ranges=ranges)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), how
    steps = (ranges[1] - ranges[0]) / 255
    inside = np.all((x[:32] >= ranges[0]) & (x[:32] <= ranges[1]), axis=1)
    for how in ("int8", "uint8"):
        back = dequantize(quantize(x, how, ranges), how, ranges)
        assert np.all(np.abs(back[:32][inside] - x[:32][inside]) <= steps / 2 + 1e-6)  # within its bucket
    for how in ("binary", "ubinary"):
        packed = quantize(x, how)
        assert packed.shape == (64, 3)  # 20 bits in 3 bytes
        assert np.array_equal(dequantize(packed, how, dim=20), np.where(x > 0, 1.0, -1.0))
        assert np.array_equal(hamming(packed, packed[0]), ((x > 0) != (x[0] > 0)).sum(axis=1))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts):
    """80 texts, and a float DEST of them to compare with."""
    root = tmp_path_factory.mktemp("quantize")
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(sample_texts[:80])]
    source = write_rows(root / "in.jsonl", rows)
    embed_dataset(str(source), str(root / "float"), EmbedConfig(shard_rows=40))
    floats = pl.read_parquet(root / "float" / "part-*.parquet")["embedding"].to_numpy()
    return root, str(source), rows, floats


@pytest.mark.parametrize("how", list(FORMS))
def test_a_quantized_dest_stores_compact_columns_verifies_and_search_ranks_a_planted_duplicate_first(corpus, how):
    root, source, rows, floats = corpus
    dest = root / how
    embed_dataset(source, str(dest), EmbedConfig(quantize=how, shard_rows=40))
    table = pl.read_parquet(dest / "part-*.parquet")
    kind, width = FORMS[how]
    assert table.schema["embedding"] == pl.Array(kind, width)
    manifest = Manifest.model_validate_json((dest / "_manifest.json").read_text())
    assert manifest.config.quantize == how and manifest.fingerprint["quantize"] == how
    if how in ("int8", "uint8"):  # calibrated on the run's first rows: all 80 here
        ranges = np.asarray(manifest.config.quantize_ranges, dtype=np.float32)
        np.testing.assert_allclose(ranges, calibrate(floats), atol=1e-6)
        assert np.array_equal(table["embedding"].to_numpy(), quantize(floats, how, ranges))
    else:
        assert manifest.config.quantize_ranges is None
        assert np.array_equal(table["embedding"].to_numpy(), quantize(floats, how))
    assert verify_dest(str(dest), source) == []
    for i in (5, 61):
        assert search(str(dest), near_duplicate(rows[i]["text"]), k=3)[0].id == f"doc-{i}"
    if how == "binary":  # by Hamming distance alone, too
        assert search(str(dest), near_duplicate(rows[5]["text"]), k=3, rescore=0)[0].id == "doc-5"


def test_a_resumed_run_and_a_later_run_keep_the_ranges_a_float_dest_has_none(corpus):
    root, source, rows, _ = corpus
    dest = root / "resumed"
    embed_dataset(source, str(dest), EmbedConfig(quantize="int8", shard_rows=40))
    first = Manifest.model_validate_json((dest / "_manifest.json").read_text())
    kept = (dest / "part-00000.parquet").read_bytes()
    (dest / "part-00001.parquet").unlink()
    resumed = embed_dataset(source, str(dest), EmbedConfig(quantize="int8", shard_rows=40))
    assert resumed.config.quantize_ranges == first.config.quantize_ranges
    assert [s.resumed for s in resumed.shards] == [True, False]
    assert (dest / "part-00000.parquet").read_bytes() == kept
    with pytest.raises(InputError, match="holds int8 vectors; fit on a DEST embedded without --quantize"):
        read_fittable(str(dest))

    later_source = write_rows(root / "later.jsonl", rows[60:] + [{"id": "new", "text": "A text of a later day."}])
    later = embed_dataset(
        str(later_source), str(root / "later"), EmbedConfig(quantize="int8", quantize_ranges=str(dest))
    )
    assert later.config.quantize_ranges == first.config.quantize_ranges
    assert later.fingerprint["quantize_ranges_sha256"] == first.fingerprint["quantize_ranges_sha256"]
    with pytest.raises(InputError, match="not quantized to int8/uint8 and records no ranges"):
        embed_dataset(source, str(root / "nope"), EmbedConfig(quantize="int8", quantize_ranges=str(root / "float")))
    assert not (root / "nope").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize": "int8", "pooling": "mean,cls"}, "work with one pooling strategy"),
        ({"quantize": "binary", "long_text": "chunk", "aggregate": "mean"}, "drop one"),
        ({"quantize_ranges": "s3://b/earlier/"}, "add --quantize int8 or uint8"),
        ({"quantize": "binary", "quantize_ranges": "s3://b/earlier/"}, "add --quantize int8 or uint8"),
    ],
)
def test_a_quantization_that_cannot_apply_is_refused(options, message):
    with pytest.raises((InputError, ValueError), match=message):
        resolve_config(EmbedConfig(**options))


def test_the_cli_writes_binary_vectors_and_refuses_an_unknown_form_in_one_line(tmp_path, corpus):
    _, source, _, _ = corpus
    done = run_cli("embed", source, str(tmp_path / "out"), "--quantize", "int4")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "int8, uint8, binary, ubinary" in done.stderr
    assert not (tmp_path / "out").exists()
    done = run_cli("embed", source, str(tmp_path / "out"), "--quantize", "ubinary")
    assert done.returncode == 0, done.stderr
    assert "ubinary, 48 bytes per vector" in " ".join(done.stdout.split())
    assert pl.read_parquet(tmp_path / "out" / "part-*.parquet").schema["embedding"] == pl.Array(pl.UInt8, 48)


def test_a_nightly_series_keeps_the_first_days_ranges_reuses_rows_and_backfill_accepts_it(corpus):
    root, _, rows, _ = corpus
    write_rows(root / "in-2026-01-01.jsonl", rows[:60])
    write_rows(root / "in-2026-01-02.jsonl", rows[10:70])  # 50 texts of the day before, 10 new
    source_t, dest_t = str(root / "in-{date}.jsonl"), str(root / "nightly-{date}")
    first = embed_dataset(source_t, dest_t, EmbedConfig(quantize="int8"), partition="2026-01-01")
    second = embed_dataset(source_t, dest_t, EmbedConfig(quantize="int8"), partition="2026-01-02")
    assert second.config.quantize_ranges == first.config.quantize_ranges  # from the partition before
    assert second.reuse is not None and second.reuse.previous == [str(root / "nightly-2026-01-01")]
    assert sum(s.reused for s in second.shards) == 50

    params = {"source": source_t, "dest": dest_t, "config": EmbedConfig(quantize="int8").model_dump(mode="json")}
    plan = plan_days("embed-dataset/embed-nightly", "id", params, "2026-01-01", "2026-01-02", "1d", False)
    assert [(d.action, d.why) for d in plan.days] == [("skip", "complete with the same config")] * 2


def test_ranges_of_an_output_embedded_otherwise_are_refused_and_fp16_calibrates_without_cuda(corpus):
    root, source, _, _ = corpus
    embed_dataset(source, str(root / "cls"), EmbedConfig(quantize="int8", pooling="cls"))
    with pytest.raises(InputError, match="it was embedded with pooling 'cls', this run with 'mean'"):
        embed_dataset(source, str(root / "mean"), EmbedConfig(quantize="int8", quantize_ranges=str(root / "cls")))
    assert not (root / "mean").exists()

    # A fan-out parent without a GPU calibrates an fp16 run in fp32 instead of failing.
    config = resolve_config(EmbedConfig(quantize="int8", precision="fp16"))
    plan, _ = plan_source(source, id_column="id", text_column="text", keep=(), shard_rows=40)
    sample = calibration_sample(config, plan, str(root / "unused"), 50)
    floats = calibration_sample(resolve_config(EmbedConfig(quantize="int8")), plan, str(root / "unused"), 50)
    assert sample.shape == (50, 384) and np.array_equal(sample, floats)
