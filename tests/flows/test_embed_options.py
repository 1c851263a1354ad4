"""Issue 7 options end to end: several poolings in one pass, --exclude-special, long texts, token-level output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from pydantic import ValidationError

from bertflow.config import EmbedConfig
from bertflow.flows.embed import embed_dataset
from bertflow.io.manifest import Manifest
from tests.conftest import run_cli, write_rows

TEXTS = [
    "Abstract Base Classes.",
    "",
    "Zürich – naïve café ☕ 東京",
    "Return a new sorted list from the items in iterable, with a custom key function.",
]


@pytest.fixture(scope="module")
def tiny_model(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert)), AutoModel.from_pretrained(str(tiny_bert)).eval()


def run(src: Path, dest: Path, model: Path, **options):
    return embed_dataset(str(src), str(dest), EmbedConfig(model=str(model), device="cpu", **options))


def summary_text(manifest, dest: Path) -> str:
    """The table `bertflow embed` prints at the end, as text."""
    from rich.console import Console

    from bertflow.cli.embed import summary

    console = Console(width=400)
    with console.capture() as captured:
        console.print(summary(manifest, str(dest)))
    return captured.get()


def read(dest: Path) -> pl.DataFrame:
    return pl.read_parquet(dest / "part-*.parquet")


def test_several_poolings_in_one_pass_equal_their_single_runs(prefect_harness, tmp_path, tiny_bert):
    src = write_rows(tmp_path / "docs.jsonl", [{"id": i, "text": t} for i, t in enumerate(TEXTS)])

    run(src, tmp_path / "multi", tiny_bert, pooling="mean,cls,mean_max", normalize=True)

    multi = read(tmp_path / "multi")
    assert multi.columns == [
        "id", "embedding_mean", "embedding_cls", "embedding_mean_max", "n_tokens", "truncated", "text_hash",
    ]  # fmt: skip
    assert multi.schema["embedding_mean_max"] == pl.Array(pl.Float32, 64)
    manifest = json.loads((tmp_path / "multi" / "_manifest.json").read_text())
    assert manifest["columns"] == multi.columns
    assert manifest["config"]["dimensions"] == {"mean": 32, "cls": 32, "mean_max": 64}
    assert manifest["config"]["pooling"] == ["mean", "cls", "mean_max"]
    assert manifest["fingerprint"]["pooling"] == "mean,cls,mean_max"
    summary = summary_text(Manifest.model_validate(manifest), tmp_path / "multi")
    assert "embedding_mean 32, embedding_cls 32, embedding_mean_max 64" in summary
    for p in ("mean", "cls", "mean_max"):
        run(src, tmp_path / p, tiny_bert, pooling=p, normalize=True)
        single = read(tmp_path / p)
        assert single.columns == ["id", "embedding", "n_tokens", "truncated", "text_hash"]  # one pooling: `embedding`
        diff = np.abs(multi[f"embedding_{p}"].to_numpy() - single["embedding"].to_numpy()).max()
        assert diff < 1e-6, p
    norms = np.linalg.norm(multi["embedding_cls"].to_numpy(), axis=1)
    assert np.abs(norms - 1).max() < 1e-5  # each column normalized on its own


def test_exclude_special_leaves_cls_and_sep_out_of_mean_and_max(prefect_harness, tmp_path, tiny_bert, tiny_model):
    tokenizer, model = tiny_model
    texts = [TEXTS[0], TEXTS[3], ""]
    src = write_rows(tmp_path / "docs.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])

    run(src, tmp_path / "out", tiny_bert, pooling="mean,max,cls", exclude_special=True)

    out = read(tmp_path / "out")
    for i, text in enumerate(texts):
        with torch.inference_mode():
            h = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]  # (T, H)
        inner = h[1:-1]  # without [CLS] and [SEP]
        if len(inner):
            assert np.abs(out["embedding_mean"][i].to_numpy() - inner.mean(0).numpy()).max() < 1e-5
            assert np.abs(out["embedding_max"][i].to_numpy() - inner.amax(0).numpy()).max() < 1e-5
        else:  # nothing but special tokens: zeros, not NaN
            assert not out["embedding_mean"][i].to_numpy().any() and not out["embedding_max"][i].to_numpy().any()
        assert np.abs(out["embedding_cls"][i].to_numpy() - h[0].numpy()).max() < 1e-5  # cls is unaffected
        assert out["n_tokens"][i] == len(h)  # tokens fed to the model still count the special ones
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["config"]["exclude_special"] is True and manifest["fingerprint"]["exclude_special"] is True


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pooling": "mean,sum,max"}, "unknown pooling 'sum'; choose one of cls, mean, max"),
        ({"pooling": "mean,mean"}, "repeats a strategy"),
        ({"long_text": "chunk", "chunk_tokens": 64, "stride": 64}, "--stride 64 must be less than --chunk-tokens 64"),
        ({"aggregate": "mean"}, "--aggregate needs --long-text chunk"),
        ({"long_text": "split"}, "unknown long-text mode 'split'"),
    ],
)
def test_bad_option_combinations_are_one_line_value_errors(options, message):
    with pytest.raises(ValidationError, match=message):
        EmbedConfig(**options)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pooling", "mean,sum"], "--pooling: unknown pooling 'sum'; choose one of cls, mean"),
        (
            ["--long-text", "chunk", "--chunk-tokens", "32", "--stride", "40"],
            "--stride 40 must be less than --chunk-tokens 32",
        ),
        (["--aggregate", "max"], "--aggregate needs --long-text chunk"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, tiny_bert, args, message):
    src = write_rows(tmp_path / "docs.jsonl", [{"id": 1, "text": "a"}])
    dest = tmp_path / "out"

    result = run_cli("embed", str(src), str(dest), "--model", str(tiny_bert), *args, timeout=120)

    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not dest.exists()


WORDS = "the cat sat on a mat and dog ran far away house tree river blue green".split()  # one token each


def test_long_text_chunks_cover_every_token_overlap_by_the_stride_and_cut_the_text(
    prefect_harness, tmp_path, tiny_bert, tiny_model
):
    from bertflow.io.verify import verify_dest

    tokenizer, model = tiny_model
    long = " ".join(np.random.default_rng(0).choice(WORDS, 3000))
    rows = [
        {"id": "long", "text": long, "lang": "en"},
        {"id": "short", "text": "a short one", "lang": "de"},
        {"id": "empty", "text": "", "lang": "fr"},
    ]
    src = write_rows(tmp_path / "docs.jsonl", rows)
    dest = tmp_path / "out"

    manifest = run(
        src,
        dest,
        tiny_bert,
        long_text="chunk",
        chunk_tokens=128,
        stride=16,
        aggregate="mean",
        keep=("lang",),
        shard_rows=2,
    )

    out = read(dest)
    assert out.columns == [
        "id", "chunk_index", "char_start", "char_end", "embedding", "n_tokens", "truncated", "text_hash", "lang",
    ]  # fmt: skip
    content = tokenizer(long, add_special_tokens=False, return_offsets_mapping=True)
    assert len(content["input_ids"]) == 3000
    first = {s: i for i, (s, _) in enumerate(content["offset_mapping"])}
    last = {e: i + 1 for i, (_, e) in enumerate(content["offset_mapping"])}
    chunks = out.filter(pl.col("id") == "long")
    assert chunks["chunk_index"].to_list() == list(range(len(chunks)))
    spans = [(first[s], last[e]) for s, e in zip(chunks["char_start"], chunks["char_end"])]  # token ranges
    covered = np.zeros(3000, bool)
    for s, e in spans:
        covered[s:e] = True
    assert covered.all() and spans[0][0] == 0 and spans[-1][1] == 3000
    assert all(prev[1] - nxt[0] == 16 for prev, nxt in zip(spans, spans[1:]))  # overlap exactly the stride
    assert chunks["n_tokens"].to_list() == [e - s + 2 for s, e in spans]  # with [CLS] and [SEP]
    assert max(chunks["n_tokens"]) == 128 and not chunks["truncated"].any()
    for row, (s, e) in zip(chunks.iter_rows(named=True), spans):
        passage = long[row["char_start"] : row["char_end"]]  # the offsets cut the window's passage out
        batch = tokenizer(passage, return_tensors="pt")
        assert batch["input_ids"][0, 1:-1].tolist() == content["input_ids"][s:e]
        window = batch["input_ids"][0].numpy().astype("<i4").tobytes()  # what was embedded, [CLS] ... [SEP]
        assert row["text_hash"] == hashlib.blake2b(window, digest_size=16).digest()
        with torch.inference_mode():
            alone = model(**batch).last_hidden_state[0].mean(0).numpy()
        assert np.abs(np.array(row["embedding"]) - alone).max() < 1e-5  # the passage embedded alone
    others = out.filter(pl.col("id") != "long").select("id", "chunk_index", "char_start", "char_end", "n_tokens")
    assert others.rows() == [("short", 0, 0, 11, 5), ("empty", 0, 0, 0, 2)]

    # --aggregate mean: one row per id, the token-weighted mean of its chunk rows
    docs = pl.read_parquet(dest / "documents" / "part-*.parquet")
    assert docs.columns == ["id", "embedding", "n_tokens", "n_chunks", "text_hash", "lang"]
    assert docs["id"].to_list() == ["long", "short", "empty"] and docs["lang"].to_list() == ["en", "de", "fr"]
    for doc in docs.iter_rows(named=True):
        mine = out.filter(pl.col("id") == doc["id"])
        w = mine["n_tokens"].to_numpy()[:, None].astype(np.float64)
        expected = (mine["embedding"].to_numpy() * w).sum(0) / w.sum()
        assert np.abs(np.array(doc["embedding"]) - expected).max() < 1e-6
        assert (doc["n_chunks"], doc["n_tokens"]) == (len(mine), int(w.sum()))

    m = json.loads((dest / "_manifest.json").read_text())
    c = m["config"]
    assert (c["long_text"], c["chunk_tokens"], c["stride"], c["aggregate"]) == ("chunk", 128, 16, "mean")
    assert m["columns"] == out.columns and m["document_columns"] == docs.columns
    assert [(d["name"], d["rows"]) for d in m["documents_parts"]] == [
        ("documents/part-00000.parquet", 2),
        ("documents/part-00001.parquet", 1),
    ]
    for d in m["documents_parts"]:
        assert d["sha256"] == hashlib.sha256((dest / d["name"]).read_bytes()).hexdigest()
    assert m["fingerprint"]["long_text"] == "chunk" and m["fingerprint"]["aggregate"] == "mean"
    assert m["totals"]["rows"] == len(out) == manifest.totals.rows
    assert verify_dest(str(dest), str(src)) == []
    summary = summary_text(manifest, dest)
    assert "chunk: 128 tokens per window, stride 16, aggregate mean" in summary
    assert "id, chunk_index, char_start, char_end, embedding, n_tokens, truncated, text_hash, lang" in summary

    # resume: a shard is complete only with its documents/ part
    (dest / "documents" / "part-00001.parquet").unlink()
    again = run(
        src,
        dest,
        tiny_bert,
        long_text="chunk",
        chunk_tokens=128,
        stride=16,
        aggregate="mean",
        keep=("lang",),
        shard_rows=2,
    )
    assert [s.resumed for s in again.shards] == [True, False]
    assert verify_dest(str(dest), str(src)) == []


def test_a_one_megabyte_document_is_chunked_not_truncated(prefect_harness, tmp_path, tiny_bert):
    text = " ".join(np.random.default_rng(1).choice(WORDS, 250_000))  # about 1.1 MB, 250,000 tokens
    assert len(text) > 1_000_000
    src = write_rows(tmp_path / "docs.parquet", [{"id": 1, "text": text}])

    manifest = run(src, tmp_path / "out", tiny_bert, long_text="chunk", stride=32)

    out = read(tmp_path / "out")
    assert out["chunk_index"].to_list() == list(range(len(out)))
    assert len(out) == int(np.ceil((250_000 - 510) / (510 - 32))) + 1  # windows of 510 text tokens
    assert out["char_start"][0] == 0 and out["char_end"][-1] == len(text)
    assert manifest.totals.tokens == int(out["n_tokens"].sum()) and manifest.totals.truncated == 0
    assert np.isfinite(out["embedding"].to_numpy()).all()


def test_token_level_vectors_equal_last_hidden_state_and_tokens_match_the_tokenizer(
    prefect_harness, tmp_path, bundled_model, sample_texts
):
    from transformers import AutoModel, AutoTokenizer

    from bertflow.io.verify import verify_dest

    texts = ["The quick brown fox jumps over the lazy dog.", "Zürich – naïve café ☕ 東京", sample_texts[2], ""]
    src = write_rows(tmp_path / "docs.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])

    run(src, tmp_path / "out", bundled_model, pooling="none")

    out = read(tmp_path / "out")
    assert out.columns == [
        "id",
        "tokens",
        "offsets",
        "special",
        "token_embeddings",
        "n_tokens",
        "truncated",
        "text_hash",
    ]
    assert out.schema["token_embeddings"] == pl.List(pl.Array(pl.Float32, 384))
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model))
    model = AutoModel.from_pretrained(str(bundled_model)).eval()
    for row, text in zip(out.iter_rows(named=True), texts):
        batch = tokenizer(
            text,
            truncation=True,
            max_length=256,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        offsets = batch.pop("offset_mapping")[0].tolist()
        added = batch.pop("special_tokens_mask")[0].tolist()  # tokens the tokenizer added; [UNK] is text
        ids = batch["input_ids"][0].tolist()
        assert row["tokens"] == tokenizer.convert_ids_to_tokens(ids)
        assert row["offsets"] == offsets
        assert row["special"] == [bool(m) for m in added]  # [CLS] and [SEP] marked
        assert row["special"][0] and row["special"][-1] and row["n_tokens"] == len(ids)  # no padding
        with torch.inference_mode():
            expected = model(**batch).last_hidden_state[0].numpy()  # (T, 384)
        assert np.abs(np.array(row["token_embeddings"]) - expected).max() < 1e-5
    m = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert m["columns"] == out.columns and m["config"]["pooling"] == ["none"] and m["config"]["normalize"] is False
    assert verify_dest(str(tmp_path / "out"), str(src)) == []
