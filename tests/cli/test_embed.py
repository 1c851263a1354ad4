"""`bertflow embed` as a user runs it: the installed console script in a subprocess.

Runs record on a real `prefect server start` (PREFECT_API_URL), so no subprocess starts its own
temporary server. Bad input must exit 2 with one line on stderr, no traceback, and an untouched DEST.
"""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import polars as pl
import pytest

from tests.conftest import run_cli, write_rows

pytestmark = pytest.mark.slow

GOOD_ROWS = [{"id": f"d{i}", "text": f"document number {i}"} for i in range(3)]


@pytest.fixture(scope="module")
def cli_env(prefect_server, tmp_path_factory) -> dict[str, str]:
    return {"PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path_factory.mktemp("cli-prefect-home"))}


def build_inputs(root: Path, tiny_bert: Path) -> None:
    """One small bad input per case, each named after the case that uses it."""
    write_rows(root / "good.jsonl", GOOD_ROWS)
    (root / "notes.xml").write_text("<doc>hello</doc>\n")
    (root / "empty-dir").mkdir()
    pl.DataFrame({"id": [], "text": []}, schema={"id": pl.Int64, "text": pl.String}).write_parquet(
        root / "zero.parquet"
    )
    (root / "header-only.csv").write_text("id,text\n")
    write_rows(root / "no-text.parquet", [{"id": 1, "body": "a"}, {"id": 2, "body": "b"}])
    write_rows(root / "no-id.jsonl", [{"key": 1, "text": "a"}])
    write_rows(
        root / "dups.jsonl", [{"id": f"x{i % 7}", "text": str(i)} for i in range(14)] + [{"id": "y", "text": "y"}]
    )
    (root / "bad-line.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": 2, "text": "b"\n{"id": 3, "text": "c"}\n')
    write_rows(root / "whole.parquet", [{"id": i, "text": f"text {i}"} for i in range(500)])
    data = (root / "whole.parquet").read_bytes()
    (root / "truncated.parquet").write_bytes(data[: len(data) // 2])  # a copy cut off halfway
    (root / "corrupt.csv").write_text('id,text\n1,"hello\n2,world,extra\n3,"x\n')
    nosafe = root / "model-without-safetensors"
    nosafe.mkdir()
    for f in tiny_bert.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, nosafe / f.name)
    (nosafe / "pytorch_model.bin").write_bytes(b"pickled weights are refused")


# case: (SOURCE under the inputs dir, extra options, the one line expected on stderr after "error: ")
# `{in}` is the inputs directory.
BAD = {
    "missing source": ("nope.jsonl", [], "SOURCE {in}/nope.jsonl does not exist; give a file, a directory or a glob"),
    "unknown extension": (
        "notes.xml",
        [],
        "cannot read {in}/notes.xml: unknown extension; supported: .parquet, .jsonl, .ndjson, "
        ".csv, .txt (narrow SOURCE with a glob such as 'dir/*.jsonl')",
    ),
    "directory with no files": (
        "empty-dir",
        [],
        "SOURCE {in}/empty-dir holds no files; point it at .parquet, .jsonl, .ndjson, .csv, .txt files",
    ),
    "parquet with zero rows": ("zero.parquet", [], "SOURCE {in}/zero.parquet has no rows to embed"),
    "csv with only a header": ("header-only.csv", [], "SOURCE {in}/header-only.csv has no rows to embed"),
    "missing text column": (
        "no-text.parquet",
        [],
        "{in}/no-text.parquet has no column 'text' (columns: id, body); name the right one with --text-column",
    ),
    "missing id column": (
        "no-id.jsonl",
        [],
        "{in}/no-id.jsonl has no column 'id' (columns: key, text); name the right one with --id-column",
    ),
    "duplicate ids": (
        "dups.jsonl",
        [],
        "7 ids occur more than once in column 'id' (e.g. 'x0', 'x1', 'x2', 'x3', 'x4'); ids must be unique",
    ),
    "unknown pooling": (
        "good.jsonl",
        ["--pooling", "sum"],
        r"--pooling: unknown pooling 'sum'; choose one of cls, mean, max, mean_max\b.*",
    ),
    "unknown precision": (
        "good.jsonl",
        ["--precision", "fp8"],
        "--precision: unknown precision 'fp8'; choose one of fp32, bf16, fp16",
    ),
    "model path that does not exist": (
        "good.jsonl",
        ["--model", "{in}/no-such-model"],
        "model path '{in}/no-such-model' does not exist",
    ),
    "model without safetensors": (
        "good.jsonl",
        ["--model", "{in}/model-without-safetensors"],
        r"model directory '{in}/model-without-safetensors' holds no model\.safetensors; "
        r"bertflow loads safetensors weights only .*",
    ),
    "malformed json line": ("bad-line.jsonl", [], r"{in}/bad-line.jsonl: line 2 is not valid JSON \(.+\)"),
    "truncated parquet": (
        "truncated.parquet",
        [],
        r"{in}/truncated.parquet is not a readable parquet file \(.+\); fix or remove it",
    ),
    "corrupt csv": ("corrupt.csv", [], r"{in}/corrupt.csv is not a readable csv file \(.+\); fix or remove it"),
}
REGEX_CASES = {
    "unknown pooling",
    "model without safetensors",
    "malformed json line",
    "truncated parquet",
    "corrupt csv",
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, tiny_bert, cli_env) -> dict[str, tuple[object, Path, Path]]:
    """Every bad-input case run once; three at a time, as each is mostly interpreter start-up."""
    root = tmp_path_factory.mktemp("bad-inputs")
    inputs = root / "in"
    inputs.mkdir()
    build_inputs(inputs, tiny_bert)

    def one(name: str):
        source, options, _ = BAD[name]
        dest = root / f"out-{name.replace(' ', '-')}"
        args = ["embed", str(inputs / source), str(dest), *(o.replace("{in}", str(inputs)) for o in options)]
        return name, (run_cli(*args, env=cli_env, timeout=300), dest, inputs)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, BAD))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(bad_runs, case):
    result, dest, inputs = bad_runs[case]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    message = lines[0].removeprefix("error: ")
    if case in REGEX_CASES:
        assert re.fullmatch(BAD[case][2].replace("{in}", re.escape(str(inputs))), message), message
    else:
        assert message == BAD[case][2].replace("{in}", str(inputs))
    assert not dest.exists() or not any(dest.iterdir()), sorted(p.name for p in dest.iterdir())


def summary_rows(stdout: str) -> dict[str, str]:
    """The summary table as {label: value}; a value folded over several lines is joined back."""
    rows: dict[str, str] = {}
    label = None
    for line in stdout.splitlines():
        cells = re.split(r"[│|]", line.strip())
        if len(cells) != 4:  # borders, title
            continue
        key, value = cells[1].strip(), cells[2].strip()
        if key:
            label = key
            rows[label] = value
        else:
            rows[label] += value
    return rows


def test_happy_path_prints_the_summary_and_records_the_run(tmp_path, tiny_bert, cli_env, prefect_server):
    rows = [
        {"id": 1, "text": "short text", "lang": "en"},
        {"id": 2, "text": None, "lang": "de"},
        {"id": 3, "text": "a sentence long enough to be cut at sixteen tokens by the max length option", "lang": "en"},
        {"id": 4, "text": "", "lang": "fr"},
        {"id": 5, "text": "kurzer Text", "lang": "de"},
    ]
    src = write_rows(tmp_path / "docs.jsonl", rows)
    dest = tmp_path / "an-output-directory-with-a-name-longer-than-the-summary-column" / "out"

    result = run_cli(
        "embed",
        str(src),
        str(dest),
        "--model",
        str(tiny_bert),
        "--max-length",
        "16",
        "--keep",
        "lang",
        "--shard-rows",
        "2",
        "--device",
        "cpu",
        env=cli_env,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = summary_rows(result.stdout)
    assert summary["documents embedded"] == "4"
    assert summary["rejected (see _rejects.parquet)"] == "1"
    assert summary["dimension"] == "32"
    assert summary["truncated"] == "1 (at 16 tokens)"
    assert summary["shards"] == "3 embedded, 0 resumed"
    assert summary["output"] == str(dest)  # whole, even when wider than the table

    parts = pl.read_parquet(dest / "part-*.parquet")
    assert parts["id"].to_list() == [1, 3, 4, 5]
    assert parts["lang"].to_list() == ["en", "en", "fr", "de"]
    assert parts["truncated"].to_list() == [False, True, False, False]
    assert pl.read_parquet(dest / "_rejects.parquet").to_dicts() == [{"id": 2, "reason": "null text"}]
    assert json.loads((dest / "_manifest.json").read_text())["status"] == "complete"

    # the run is on the server the user pointed at, where the UI shows it
    found = httpx.post(
        f"{prefect_server}/flow_runs/filter", json={"flows": {"name": {"any_": ["embed-dataset"]}}}, timeout=10
    ).json()
    runs = [r for r in found if r["parameters"].get("dest") == str(dest)]
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
