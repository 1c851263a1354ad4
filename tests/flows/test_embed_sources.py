"""embed_dataset on each shape of SOURCE: .txt lines, a directory of several files, a glob."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tests.conftest import write_rows
from tests.flows.test_embed_flow import LONG, check_dest, run


def test_txt_lines_are_documents_numbered_from_one(
    prefect_harness, tmp_path, tiny_bert, hf_tokenizer, tiny_reference, texts
):
    lines = [t.replace("\n", " ") for t in texts if t is not None]
    src = tmp_path / "docs.txt"
    src.write_text("".join(f"{line}\n" for line in lines))

    run(src, tmp_path / "out", tiny_bert, shard_rows=6)

    rows = [{"id": i, "text": line} for i, line in enumerate(lines, start=1)]
    check_dest(
        tmp_path / "out",
        rows,
        id_dtype=pl.Int64,
        keep={},
        shard_sizes=[6, 5],
        hf_tokenizer=hf_tokenizer,
        reference=tiny_reference,
    )


def test_directory_of_several_files_skips_underscore_and_dot_files(
    prefect_harness, tmp_path, tiny_bert, hf_tokenizer, tiny_reference, texts
):
    rows = [{"id": i, "text": t} for i, t in enumerate(texts[:9])]
    src = tmp_path / "in"
    write_rows(src / "a.jsonl", rows[:3])
    write_rows(src / "b.ndjson", rows[3:6])
    write_rows(src / "sub" / "c.parquet", rows[6:9])
    (src / "_SUCCESS").write_text("")
    (src / ".c.parquet.crc").write_bytes(b"\x00\x01")

    manifest = run(src, tmp_path / "out", tiny_bert, shard_rows=4)

    check_dest(
        tmp_path / "out",
        rows,
        id_dtype=pl.Int64,
        keep={},
        shard_sizes=[4, 4, 1],
        hf_tokenizer=hf_tokenizer,
        reference=tiny_reference,
    )
    # the second shard starts in b.ndjson and ends in sub/c.parquet
    assert [(Path(p.file).name, p.start, p.stop) for p in manifest.shards[1].pieces] == [
        ("b.ndjson", 1, 3),
        ("c.parquet", 0, 2),
    ]


def test_glob_picks_only_matching_files_and_txt_ids_name_their_file(
    prefect_harness, tmp_path, tiny_bert, hf_tokenizer, tiny_reference
):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("first line of a\nsecond line of a\n")
    (src / "b.txt").write_text(LONG + "\n")
    write_rows(src / "other.csv", [{"id": "a.txt:1", "text": "would duplicate an id if it were read"}])

    run(src / "*.txt", tmp_path / "out", tiny_bert)

    rows = [
        {"id": "a.txt:1", "text": "first line of a"},
        {"id": "a.txt:2", "text": "second line of a"},
        {"id": "b.txt:1", "text": LONG},
    ]
    check_dest(
        tmp_path / "out",
        rows,
        id_dtype=pl.String,
        keep={},
        shard_sizes=[3],
        hf_tokenizer=hf_tokenizer,
        reference=tiny_reference,
    )
