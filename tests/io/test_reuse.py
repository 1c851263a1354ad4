"""The keys of `--reuse`: text hashes, the id index, and reading rows of earlier parts."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import polars as pl
import pytest

from bertflow.errors import InputError
from bertflow.io.manifest import ReusePart
from bertflow.io.reuse import IdIndex, id_keys, read_matches, text_hashes


def test_text_hash_is_blake2b_128_of_the_utf8_text():
    texts = ["héllo wörld", "", "日本語のテキスト"]
    got = text_hashes(texts)
    assert got.dtype == pl.Binary
    assert got.to_list() == [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts]
    assert got[0] != text_hashes(["héllo wörld "])[0]  # one trailing space is another text


@pytest.mark.parametrize("kind", ["int", "str"])
def test_ids_are_found_in_their_shard_whatever_their_source_type(kind):
    ids = pl.Series(list(range(10)), dtype=pl.Int32) if kind == "int" else pl.Series([f"d{i}" for i in range(10)])
    index = IdIndex.build(id_keys(ids, kind), np.repeat(np.arange(5, dtype=np.int32), 2))
    # the same ids as an output part stores them (Int64 or String), in another order, and two unknown ones
    stored = pl.Series([9, 0, 4, 77, 5], dtype=pl.Int64) if kind == "int" else pl.Series(["d9", "d0", "d4", "x", "d5"])
    assert index.lookup(id_keys(stored, kind)).tolist() == [4, 0, 2, -1, 2]
    assert (
        IdIndex.build(np.zeros(0, np.uint64), np.zeros(0, np.int32)).lookup(id_keys(stored, kind)).tolist() == [-1] * 5
    )


def _part(tmp_path, name: str, frame: pl.DataFrame) -> ReusePart:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    (tmp_path / name).write_bytes(buf.getvalue())
    return ReusePart(uri=str(tmp_path / name), sha256=hashlib.sha256(buf.getvalue()).hexdigest())


def test_each_key_comes_from_the_first_part_that_has_it(tmp_path):
    h = text_hashes(["a", "b", "c", "b2"])
    newer = _part(tmp_path, "new.parquet", pl.DataFrame({"id": [1, 2], "text_hash": [h[0], h[3]], "v": [10, 20]}))
    older = _part(tmp_path, "old.parquet", pl.DataFrame({"id": [1, 2, 3], "text_hash": h[:3], "v": [1, 2, 3]}))
    keys = pl.DataFrame({"id": [1, 2, 3, 4], "text_hash": [h[0], h[1], h[2], h[0]]})
    found = read_matches([newer, older], keys, ["v"]).sort("id")
    # id 1: same text in both, the newer wins; id 2: the newer has another text, the older the same one
    assert found.select("id", "v").rows() == [(1, 10), (2, 2), (3, 3)]
    assert read_matches([newer], pl.DataFrame({"id": [9], "text_hash": [h[0]]}), ["v"]) is None


def test_a_part_changed_since_its_manifest_is_never_used(tmp_path):
    part = _part(tmp_path, "p.parquet", pl.DataFrame({"id": [1], "text_hash": text_hashes(["a"]), "v": [1]}))
    pl.DataFrame({"id": [1], "text_hash": text_hashes(["a"]), "v": [666]}).write_parquet(tmp_path / "p.parquet")
    with pytest.raises(InputError, match="changed after its run"):
        read_matches([part], pl.DataFrame({"id": [1], "text_hash": text_hashes(["a"])}), ["v"])
