"""embed_dataset end to end under Prefect's test harness: what lands in DEST, read back with polars."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bertflow.config import DEFAULT_MODEL, EmbedConfig
from bertflow.flows.embed import embed_dataset
from tests.conftest import write_rows

MAX_LEN = 16  # the tiny BERT's runs truncate here, so ordinary sentences get cut
TINY_DIM = 32
LONG = "Return a new sorted list from the items in iterable, with a custom key function and a reverse flag."


def run(source: Path | str, dest: Path, model: Path | str = DEFAULT_MODEL, **options):
    config = EmbedConfig(model=str(model), **{"max_length": MAX_LEN, "device": "cpu", **options})
    return embed_dataset(str(source), str(dest), config)


def check_dest(
    dest: Path,
    rows: list[dict],
    *,
    id_dtype: pl.DataType,
    keep: dict[str, pl.DataType],
    shard_sizes: list[int],
    hf_tokenizer,
    reference,
    dim: int = TINY_DIM,
    max_length: int = MAX_LEN,
) -> tuple[dict, pl.DataFrame]:
    """Everything a user relies on in DEST, against the input rows (dicts with id, text, kept columns)."""
    embedded = [r for r in rows if r["text"] is not None]
    rejected = [r for r in rows if r["text"] is None]
    names = sorted(p.name for p in dest.iterdir())
    part_names = [f"part-{i:05d}.parquet" for i in range(len(shard_sizes))]
    assert names == sorted([*part_names, "_manifest.json", "_report.html", *(["_rejects.parquet"] if rejected else [])])

    frames = [pl.read_parquet(dest / n) for n in part_names]
    schema = {
        "id": id_dtype,
        "embedding": pl.Array(pl.Float32, dim),
        "n_tokens": pl.Int32,
        "truncated": pl.Boolean,
        "text_hash": pl.Binary,
        **keep,
    }
    for f in frames:
        assert dict(f.schema) == schema
    parts = pl.concat(frames)
    # each row's text_hash is blake2b-128 of the exact text embedded
    digests = [hashlib.blake2b(r["text"].encode(), digest_size=16).digest() for r in embedded]
    assert parts["text_hash"].to_list() == digests
    assert parts["id"].to_list() == [r["id"] for r in embedded]  # one to one, in input order

    # n_tokens and truncation as the model's own tokenizer counts them
    full = [len(ids) for ids in hf_tokenizer([r["text"] for r in embedded])["input_ids"]]
    assert parts["n_tokens"].to_list() == [min(n, max_length) for n in full]
    assert parts["truncated"].to_list() == [n > max_length for n in full]

    vectors = parts["embedding"].to_numpy()
    expected = np.stack([reference(r["text"]) for r in embedded])
    assert np.abs(vectors - expected).max() < 1e-5  # each id carries its own text's vector
    for col in keep:
        assert parts[col].to_list() == [r[col] for r in embedded]

    manifest = json.loads((dest / "_manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert list(manifest["config"]["dimensions"].values()) == [dim] and manifest["config"]["max_length"] == max_length
    assert manifest["columns"] == ["id", "embedding", "n_tokens", "truncated", "text_hash", *keep]
    assert manifest["totals"]["rows"] == len(embedded)
    assert manifest["totals"]["rejected"] == len(rejected)
    assert manifest["totals"]["documents"] == len(embedded)
    assert manifest["totals"]["tokens"] == sum(min(n, max_length) for n in full)
    assert manifest["totals"]["truncated"] == sum(n > max_length for n in full)
    shards = manifest["shards"]
    assert [s["name"] for s in shards] == part_names
    assert [s["rows"] + s["rejected"] for s in shards] == shard_sizes
    for s, f in zip(shards, frames):
        assert s["rows"] == len(f)
        assert sum(p["stop"] - p["start"] for p in s["pieces"]) == s["rows"] + s["rejected"]
        assert s["sha256"] == hashlib.sha256((dest / s["name"]).read_bytes()).hexdigest()

    if rejected:
        rejects = pl.read_parquet(dest / "_rejects.parquet")
        assert rejects.to_dicts() == [{"id": r["id"], "reason": "null text"} for r in rejected]
        assert manifest["rejects"] == "_rejects.parquet"
        assert not set(rejects["id"]) & set(parts["id"])
    else:
        assert manifest["rejects"] is None
    return manifest, parts


FORMATS = {
    # extension: (id of row i, id dtype in the output, kept columns and their output dtypes)
    ".parquet": (lambda i: i, pl.Int64, {"lang": pl.String, "n": pl.Int64}),
    ".jsonl": (lambda i: f"doc-{i}", pl.String, {"lang": pl.String, "n": pl.Int64}),
    ".ndjson": (lambda i: 1000 + i, pl.Int64, {"lang": pl.String}),
    ".csv": (lambda i: str(i), pl.String, {"lang": pl.String}),  # CSV ids are read as strings
}


@pytest.mark.parametrize("ext", list(FORMATS))
def test_each_tabular_format_end_to_end(prefect_harness, tmp_path, tiny_bert, hf_tokenizer, tiny_reference, texts, ext):
    make_id, id_dtype, keep = FORMATS[ext]
    rows = [{"id": make_id(i), "text": t, "lang": ["en", "de"][i % 2], "n": i * 7} for i, t in enumerate(texts)]
    src = write_rows(tmp_path / f"docs{ext}", rows)
    if ext == ".csv":  # ids as the CSV file spells them, kept ints read back as CSV infers them
        assert src.read_text().startswith("id,text,lang,n\n0,Abstract Base Classes.,en,0\n")
    dest = tmp_path / "out"

    manifest = run(src, dest, tiny_bert, keep=tuple(keep), shard_rows=7)

    _, parts = check_dest(
        dest,
        rows,
        id_dtype=id_dtype,
        keep=keep,
        shard_sizes=[7, 5],
        hf_tokenizer=hf_tokenizer,
        reference=tiny_reference,
    )
    assert manifest.source == str(src) and manifest.config.pooling == ("mean",) and manifest.config.normalize is False
    long = parts.filter(pl.col("id") == make_id(3))
    assert long["truncated"].item() is True and long["n_tokens"].item() == MAX_LEN
    empty = parts.filter(pl.col("id") == make_id(1))  # "" is embedded: [CLS] [SEP]
    assert empty["n_tokens"].item() == 2 and empty["truncated"].item() is False
    at_limit, over = parts.filter(pl.col("id").is_in([make_id(10), make_id(11)])).iter_rows(named=True)
    assert (at_limit["n_tokens"], at_limit["truncated"]) == (MAX_LEN, False)
    assert (over["n_tokens"], over["truncated"]) == (MAX_LEN, True)


def test_null_texts_go_to_rejects_and_an_all_null_shard_still_writes_a_typed_part(
    prefect_harness, tmp_path, tiny_bert, hf_tokenizer, tiny_reference
):
    rows = [{"id": 1, "text": None}, {"id": 2, "text": None}, {"id": 3, "text": ""}, {"id": 4}]  # 4: no "text" key
    src = write_rows(tmp_path / "docs.jsonl", rows)

    manifest = run(src, tmp_path / "out", tiny_bert, shard_rows=2)

    rows[3]["text"] = None
    check_dest(
        tmp_path / "out",
        rows,
        id_dtype=pl.Int64,
        keep={},
        shard_sizes=[2, 2],
        hf_tokenizer=hf_tokenizer,
        reference=tiny_reference,
    )
    assert [(s.rows, s.rejected) for s in manifest.shards] == [(0, 2), (1, 1)]
    # the parts read back as one dataset, whichever part a reader opens first
    assert pl.scan_parquet(tmp_path / "out" / "part-*.parquet").collect()["id"].to_list() == [3]


def test_bundled_model_with_its_own_defaults(prefect_harness, tmp_path, bundled_model, sample_texts):
    texts = [sample_texts[0], sample_texts[2], "", " ".join(sample_texts[:40])]  # the last one is > 256 tokens
    src = write_rows(tmp_path / "docs.parquet", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)])

    manifest = embed_dataset(str(src), str(tmp_path / "out"), EmbedConfig())

    weights = hashlib.sha256((bundled_model / "model.safetensors").read_bytes()).hexdigest()
    m = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    c = m["config"]
    tokenizer, model_config = c["model"].pop("tokenizer_sha256"), c["model"].pop("config_sha256")
    assert c["model"] == {"name": DEFAULT_MODEL, "path": str(bundled_model), "sha256": weights, "revision": None}
    assert len(tokenizer) == len(model_config) == 64 and len({tokenizer, model_config, weights}) == 3
    assert m["embedding_fingerprint"]["tokenizer_sha256"] == tokenizer
    assert (c["dimensions"], c["max_length"]) == ({"mean": 384}, 256)
    assert (c["pooling"], c["layers"], c["normalize"], c["precision"], m["device"]) == (
        ["mean"],
        [-1],
        True,
        "fp32",
        "cpu",
    )
    parts = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
    assert parts.schema["embedding"] == pl.Array(pl.Float32, 384)
    assert parts["id"].to_list() == ["t0", "t1", "t2", "t3"]
    assert parts["truncated"].to_list() == [False, False, False, True]
    assert parts["n_tokens"][3] == 256 and parts["n_tokens"][2] == 2
    norms = np.linalg.norm(parts["embedding"].to_numpy(), axis=1)
    assert np.abs(norms - 1).max() < 1e-5
    assert manifest.totals.tokens == int(parts["n_tokens"].sum())
