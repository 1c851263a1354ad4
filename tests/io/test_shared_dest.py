"""DEST is shared: parts that other processes write (shard runs on other hosts, a run taking over a
dead one's work) are seen as they are now, never through a listing this process read earlier."""

from __future__ import annotations

import boto3
import polars as pl

from bertflow.io import parts, storage
from bertflow.io.manifest import PartInfo, Piece, ShardSpec


def _part(rows: int) -> bytes:
    table = pl.DataFrame({"id": list(range(rows)), "embedding": [[0.5, 0.25]] * rows})
    return parts.serialize_part(
        table, PartInfo(fingerprint="f" * 16, rows=rows, tokens=4 * rows, truncated=0, seconds=1.0)
    )


def test_a_part_written_elsewhere_after_this_process_listed_dest_is_found_at_its_current_size(s3):
    storage.filesystem("s3://shared/")[0].mkdir("shared")
    dest = "s3://shared/out/"
    elsewhere = boto3.client("s3", endpoint_url=s3.url)  # another host's client: no cache shared with ours
    elsewhere.put_object(Bucket="shared", Key="out/_manifest.json", Body=b"{}")
    assert storage.list_names(dest) == ["_manifest.json"]  # this process has seen DEST without the part

    elsewhere.put_object(Bucket="shared", Key="out/part-00000.parquet", Body=_part(3))
    part = storage.join(dest, "part-00000.parquet")
    found = parts.read_part_info(part)
    assert found is not None and found[1] == 3

    # Rewritten (a second writer of the same shard): read at its new size, not the size listed before.
    assert "part-00000.parquet" in storage.list_names(dest)
    elsewhere.put_object(Bucket="shared", Key="out/part-00000.parquet", Body=_part(500))
    found = parts.read_part_info(part)
    assert found is not None and found[0].rows == found[1] == 500


def test_complete_parts_sees_parts_written_since_its_last_listing(s3):
    storage.filesystem("s3://shared/")[0].mkdir("shared")
    dest = "s3://shared/done/"
    spec = ShardSpec(
        index=0, count=1, pieces=(Piece(file="s3://shared/raw.jsonl", format="jsonl", start=0, stop=3),), id_kind="int"
    )
    elsewhere = boto3.client("s3", endpoint_url=s3.url)
    elsewhere.put_object(Bucket="shared", Key="done/_manifest.json", Body=b"{}")
    assert parts.complete_parts(dest, [spec], {spec.name: "f" * 16}) == {}  # DEST listed: no part yet
    elsewhere.put_object(Bucket="shared", Key=f"done/{spec.name}", Body=_part(3))
    done = parts.complete_parts(dest, [spec], {spec.name: "f" * 16})
    assert list(done) == [spec.name] and done[spec.name].rows == 3
