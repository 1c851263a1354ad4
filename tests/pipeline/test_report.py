"""The run's summary numbers, computed once for the CLI and the artifacts: documents and chunks are
counted apart, and rates count only the shards this run embedded (not resumed ones)."""

from __future__ import annotations

from bertflow.io.manifest import Piece, ShardResult
from bertflow.pipeline.report import run_tags, summary_row
from bertflow.resolved import ModelRef, ResolvedConfig
from tests.conftest import resolved_config


def config(**fields) -> ResolvedConfig:
    model = ModelRef(name="/models/tiny-bert/", path="/models/tiny-bert", sha256="a" * 64)
    return resolved_config(**{"model": model, "pooling": ("mean", "cls"), **fields})


def shard(name: str, documents: int, rows: int, rejected: int, tokens: int, resumed: bool = False) -> ShardResult:
    piece = Piece(file="in.jsonl", format="jsonl", start=0, stop=documents + rejected)
    return ShardResult(
        name=name, pieces=(piece,), documents=documents, rows=rows, rejected=rejected, tokens=tokens,
        truncated=1, seconds=1.0, sha256="b" * 64, resumed=resumed,
    )  # fmt: skip


def test_documents_and_chunks_are_counted_apart_and_rates_skip_resumed_shards():
    shards = [shard("part-00000.parquet", 9, 30, 1, 300), shard("part-00001.parquet", 10, 25, 0, 250, resumed=True)]
    row = summary_row(shards, 0, 4.0, config(long_text="chunk", chunk_tokens=8), "cpu")
    assert (row["documents"], row["chunks"], row["rejected"], row["tokens"], row["truncated"]) == (19, 55, 1, 550, 2)
    assert (row["shards_done"], row["shards_resumed"], row["shards_failed"]) == (1, 1, 0)
    # only the fresh shard's 9 documents + 1 rejected were read in these 4 seconds, in 30 chunks
    assert (row["documents_per_s"], row["chunks_per_s"], row["tokens_per_s"]) == (2.5, 7.5, 75.0)
    assert (row["model"], row["pooling"], row["device"]) == ("/models/tiny-bert/", "mean,cls", "cpu")


def test_without_chunking_there_is_no_chunk_count_and_no_time_gives_no_rate():
    row = summary_row([shard("part-00000.parquet", 4, 4, 0, 40)], 2, 0.0, config(), None)
    assert "chunks" not in row and "chunks_per_s" not in row
    assert (row["documents"], row["shards_failed"], row["documents_per_s"], row["device"]) == (4, 2, 0.0, "")


def test_run_tags_name_a_local_model_by_its_folder_and_the_pooling_as_written():
    assert run_tags(config()) == ["model:tiny-bert", "pooling:mean,cls"]
    hub = config(model=ModelRef(name="org/model", path="/cache/x", sha256="a" * 64), pooling=("cls",))
    assert run_tags(hub) == ["model:org/model", "pooling:cls"]
