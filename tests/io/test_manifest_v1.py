"""DESTs written by bertflow 0.1 (manifest format 1, committed under data/v1 as that version wrote them)
still read, verify and pass the settings check a resume makes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bertflow.errors import DestMismatchError
from bertflow.io import parts
from bertflow.io.verify import verify_dest

V1 = Path(__file__).parent / "data" / "v1"


@pytest.fixture
def v1(tmp_path) -> Path:
    shutil.copytree(V1, tmp_path / "v1")
    return tmp_path / "v1"


def test_a_format_1_manifest_reads_as_format_2(v1):
    m = parts.read_manifest(str(v1 / "plain"))
    assert m is not None and m.format_version == 2 and m.status == "complete"
    c = m.config
    assert (c.model.name, c.pooling, c.dimensions, c.max_length, c.keep, c.shard_rows) == (
        "/tmp/v1/tiny", ("mean",), {"mean": 32}, 16, ("lang",), 3,
    )  # fmt: skip
    assert m.columns == ["id", "embedding", "n_tokens", "truncated", "lang"]
    assert [(s.name, s.documents, s.rows, s.rejected) for s in m.shards] == [
        ("part-00000.parquet", 2, 2, 1),
        ("part-00001.parquet", 2, 2, 0),
    ]
    assert m.totals is not None and (m.totals.documents, m.totals.rows, m.totals.rejected) == (4, 4, 1)
    assert m.fingerprint == c.output_fingerprint()  # the same settings, spelled the same way


def test_a_format_1_chunked_dest_with_two_poolings(v1):
    m = parts.read_manifest(str(v1 / "chunk"))
    assert m is not None
    c = m.config
    assert (c.pooling, c.dimensions, c.chunk_tokens, c.stride, c.aggregate) == (
        ("mean", "cls"), {"mean": 32, "cls": 32}, 8, 2, "mean",
    )  # fmt: skip
    assert m.columns[:6] == ["id", "chunk_index", "char_start", "char_end", "embedding_mean", "embedding_cls"]
    assert [d.name for d in m.documents_parts] == ["documents/part-00000.parquet"]
    assert m.totals is not None and (m.totals.documents, m.totals.rows) == (4, 6)
    assert m.fingerprint == c.output_fingerprint()


@pytest.mark.parametrize("dest", ["plain", "chunk"])
def test_a_format_1_dest_verifies_and_accepts_a_rerun_with_its_settings(v1, dest):
    assert verify_dest(str(v1 / dest), str(v1 / "in.jsonl")) == []
    m = parts.read_manifest(str(v1 / dest))
    assert m is not None
    parts.check_compatible(str(v1 / dest), m, m.config.output_fingerprint())  # a resume's check: passes
    other = m.config.model_copy(update={"normalize": True}).output_fingerprint()
    with pytest.raises(DestMismatchError, match="normalize: False in DEST, True now"):
        parts.check_compatible(str(v1 / dest), m, other)


@pytest.mark.parametrize("dest", ["plain", "chunk"])
def test_a_rerun_continues_an_older_dest_in_its_own_format(v1, dest):
    """bertflow 0.3 hashes texts and tokenizers; a DEST begun without them is continued without them."""
    from bertflow.pipeline.dest import in_format_of

    m = parts.read_manifest(str(v1 / dest))
    now = m.config.model_copy(
        update={"text_hash": "blake2b-128", "model": m.config.model.model_copy(update={"tokenizer_sha256": "t"})}
    )
    assert "text_hash" in now.columns() and now.output_fingerprint() != m.fingerprint
    continued = in_format_of(m, now)
    assert continued.output_fingerprint() == m.fingerprint and continued.columns() == m.columns
    assert in_format_of(None, now) == now  # a new DEST gets the current format
