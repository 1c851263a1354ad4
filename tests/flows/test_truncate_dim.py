"""--truncate-dim (Matryoshka): the first N dimensions, renormalized; recorded, searched, refused where it cannot apply."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from bertflow.config import EmbedConfig
from bertflow.errors import InputError
from bertflow.flows.embed import embed_dataset
from bertflow.io.manifest import Manifest
from bertflow.model.resolve import resolve_config
from bertflow.pipeline.search import embed_query, search
from tests.conftest import write_rows
from tests.flows.test_search import near_duplicate

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_truncated_vectors_are_the_first_dims_renormalized(bundled_model, sample_texts):
    full, cut = resolve_config(EmbedConfig()), resolve_config(EmbedConfig(truncate_dim=128))
    assert (cut.dimension, cut.truncate_dim, cut.normalize) == (128, 128, True)
    for text in sample_texts[:5]:
        head = embed_query(text, full)[:128]
        np.testing.assert_allclose(embed_query(text, cut), head / np.linalg.norm(head), atol=1e-6)
    raw = resolve_config(EmbedConfig(truncate_dim=64, normalize=False))
    np.testing.assert_allclose(
        embed_query(sample_texts[0], raw),
        embed_query(sample_texts[0], resolve_config(EmbedConfig(normalize=False)))[:64],
    )
    assert cut.embedding_fingerprint()["truncate_dim"] == 128 and "truncate_dim" not in full.output_fingerprint()


def test_a_truncated_dest_records_its_width_and_search_finds_a_near_duplicate(tmp_path, sample_texts):
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(sample_texts[:80])]
    source = write_rows(tmp_path / "in.jsonl", rows)
    dest = tmp_path / "dest"
    embed_dataset(str(source), str(dest), EmbedConfig(truncate_dim=96, shard_rows=40))
    table = pl.read_parquet(f"{dest}/part-*.parquet")
    assert table.schema["embedding"] == pl.Array(pl.Float32, 96)
    np.testing.assert_allclose(np.linalg.norm(table["embedding"].to_numpy(), axis=1), 1.0, atol=1e-5)
    manifest = Manifest.model_validate_json((dest / "_manifest.json").read_text())
    assert (manifest.config.truncate_dim, manifest.config.dimension) == (96, 96)
    for i in (5, 61):
        assert search(str(dest), near_duplicate(rows[i]["text"]), k=3)[0].id == f"doc-{i}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"truncate_dim": 384}, "--truncate-dim 384: the vectors have 384 dimensions; give fewer"),
        ({"truncate_dim": 64, "pooling": "mean,cls"}, "work with one pooling strategy"),
        ({"truncate_dim": 64, "reduction": "r.safetensors"}, "both set the vectors' width"),
    ],
)
def test_a_truncation_that_cannot_apply_is_refused(options, message):
    with pytest.raises((InputError, ValueError), match=message):
        resolve_config(EmbedConfig(**options))
