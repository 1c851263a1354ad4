"""Planning and reading sources: row counts, ids and pieces as a user's files define them."""

from __future__ import annotations

import polars as pl
import pytest

from bertflow.errors import InputError
from bertflow.io.sources import plan_shards, read_shard
from tests.conftest import write_rows

COLUMNS = {"id_column": "id", "text_column": "text"}


def plan(source, keep=(), shard_rows=100):
    return plan_shards(str(source), keep=keep, shard_rows=shard_rows, **COLUMNS)


def read_all(shards, keep=()) -> pl.DataFrame:
    return pl.concat([read_shard(s, "id", "text", keep) for s in shards])


def test_csv_with_quoted_commas_newlines_and_empty_strings_plans_and_reads_every_row(tmp_path):
    rows = [
        {"id": "007", "text": 'he said "hi",\nthen left', "lang": "en"},
        {"id": "8", "text": "", "lang": "fr"},
        {"id": "9", "text": None, "lang": None},
        {"id": "10", "text": "plain", "lang": "de"},
    ]
    src = write_rows(tmp_path / "a.csv", rows)
    shards = plan(src, keep=("lang",), shard_rows=3)
    assert [s.rows for s in shards] == [3, 1]
    frame = read_all(shards, keep=("lang",))
    # ids stay strings ("007" is not 7); "" is an empty string, an unquoted empty field is null
    assert frame.to_dicts() == [
        {"id": "007", "text": 'he said "hi",\nthen left', "lang": "en"},
        {"id": "8", "text": "", "lang": "fr"},
        {"id": "9", "text": None, "lang": None},
        {"id": "10", "text": "plain", "lang": "de"},
    ]


@pytest.mark.parametrize(
    ("body", "keep"),
    [
        ('id,text\n1,"hello\n2,world,extra\n3,"x\n', ()),  # an open quote runs into the next rows
        ("id,text\n1,hello\n2,world,extra\n3,x\n", ()),  # a row with more fields than the header
        ("id,text,lang\n1,a,en\n2,b,en,extra\n", ("lang",)),
    ],
)
def test_malformed_csv_fails_while_planning_naming_the_file(tmp_path, body, keep):
    # Planning must catch it: a shard that fails later has already marked DEST as running.
    src = tmp_path / "bad.csv"
    src.write_text(body)
    with pytest.raises(InputError, match=rf"^{src} is not a readable csv file \(.+\); fix or remove it$"):
        plan(src, keep=keep)


def test_txt_lines_are_numbered_from_one_and_blank_lines_are_empty_documents(tmp_path):
    src = tmp_path / "doc.txt"
    src.write_text("first\n\nthird line\r\nfourth\n")
    shards = plan(src, shard_rows=2)
    assert [s.rows for s in shards] == [2, 2]
    frame = read_all(shards)
    assert frame["id"].to_list() == [1, 2, 3, 4]
    assert frame["text"].to_list() == ["first", "", "third line", "fourth"]


def test_several_txt_files_get_path_and_line_ids_and_underscore_or_dot_files_are_skipped(tmp_path):
    (tmp_path / "a.txt").write_text("a one\na two\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b one\n")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".a.txt.crc").write_text("garbage")
    shards = plan(tmp_path, shard_rows=2)
    assert [[(p.file.rsplit("/", 1)[-1], p.start, p.stop) for p in s.pieces] for s in shards] == [
        [("a.txt", 0, 2)],
        [("b.txt", 0, 1)],
    ]
    frame = read_all(shards)
    assert frame.to_dicts() == [
        {"id": "a.txt:1", "text": "a one"},
        {"id": "a.txt:2", "text": "a two"},
        {"id": "sub/b.txt:1", "text": "b one"},
    ]


def test_a_shard_spans_files_in_sorted_file_order(tmp_path):
    write_rows(tmp_path / "b.jsonl", [{"id": 10, "text": "x"}, {"id": 11, "text": "y"}])
    write_rows(tmp_path / "a.parquet", [{"id": i, "text": f"t{i}"} for i in range(3)])
    shards = plan(tmp_path, shard_rows=4)
    assert [[(p.format, p.start, p.stop) for p in s.pieces] for s in shards] == [
        [("parquet", 0, 3), ("jsonl", 0, 1)],
        [("jsonl", 1, 2)],
    ]
    assert read_all(shards)["id"].to_list() == [0, 1, 2, 10, 11]


def test_jsonl_blank_lines_are_not_rows_and_a_bad_line_is_named_by_its_number(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"id": 1, "text": "a"}\n\n{"id": 2, "text": "b"}\n')
    assert read_all(plan(src))["id"].to_list() == [1, 2]
    src.write_text('{"id": 1, "text": "a"}\n\n{"id": 2, "text": "b"}\n[1, 2]\n')
    with pytest.raises(InputError, match=rf"^{src}: line 4 is not a JSON object$"):
        plan(src)


def test_ids_that_are_integers_in_one_file_and_strings_in_another_are_refused(tmp_path):
    write_rows(tmp_path / "a.jsonl", [{"id": 1, "text": "x"}])
    write_rows(tmp_path / "b.jsonl", [{"id": "1", "text": "y"}])
    with pytest.raises(InputError, match="ids are integers in .*a.jsonl but strings in .*b.jsonl"):
        plan(tmp_path)


def test_duplicate_ids_across_files_are_refused(tmp_path):
    write_rows(tmp_path / "a.jsonl", [{"id": "x", "text": "1"}, {"id": "y", "text": "2"}])
    write_rows(tmp_path / "b.parquet", [{"id": "y", "text": "3"}])
    with pytest.raises(
        InputError, match=r"^1 ids occur more than once in column 'id' \(e.g. 'y'\); ids must be unique$"
    ):
        plan(tmp_path)


@pytest.mark.parametrize("ext", [".jsonl", ".txt"])
def test_line_files_larger_than_one_read_block_plan_every_row_once(tmp_path, monkeypatch, ext):
    """Line files are planned block by block (64 MiB in production); here blocks of 97 bytes, so a
    file of 300 rows spans dozens of blocks, and rows cross block boundaries."""
    import functools

    from bertflow.io import storage

    monkeypatch.setattr(storage, "iter_line_blocks", functools.partial(storage.iter_line_blocks, block_size=97))
    rows = [{"id": i, "text": f"row {i} " + "word " * (i % 7)} for i in range(300)]
    src = write_rows(tmp_path / f"docs{ext}", rows)
    shards = plan(src, shard_rows=64)
    assert [s.rows for s in shards] == [64, 64, 64, 64, 44]
    got = read_all(shards)
    expected_ids = [r["id"] for r in rows] if ext == ".jsonl" else list(range(1, 301))  # .txt: line numbers
    assert got["id"].to_list() == expected_ids
    assert got["text"].to_list() == [r["text"] for r in rows]
