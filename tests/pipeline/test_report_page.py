"""`bertflow report`: the page opened in a real headless chromium with no network, its plots counted in the
rendered DOM; the comparison's figures; bad input."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bertflow.config import EmbedConfig
from bertflow.flows.embed import embed_dataset
from bertflow.io import parts
from bertflow.pipeline.report_data import gather, knn_accuracy, silhouette
from bertflow.pipeline.report_page import page
from tests.conftest import run_cli, write_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def texts() -> list[dict]:
    topics = {"fruit": "apples and pears ripen", "sea": "waves break on the shore", "code": "the compiler links"}
    return [
        {"id": i, "text": f"{topics[t]} in story {i}." + " More words." * (i % 7) * 12, "topic": t}
        for i, t in enumerate(t for _ in range(14) for t in topics)
    ]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_bert) -> dict[str, str]:
    """The same 42 texts embedded with mean and with cls pooling, 10-row shards, `topic` kept; and rejects."""
    root = tmp_path_factory.mktemp("report")
    rows = [*texts(), {"id": 100, "text": None, "topic": "sea"}]
    source = write_rows(root / "docs.parquet", rows)
    out = {}
    for pooling in ("mean", "cls"):
        config = EmbedConfig(
            model=str(tiny_bert), shard_rows=10, keep=("topic",), device="cpu", pooling=pooling, max_length=64
        )
        embed_dataset(str(source), str(root / pooling), config)
        out[pooling] = str(root / pooling)
    return out


def render(path: Path, shot: Path) -> tuple[dict, list]:
    """Open the page in headless chromium, offline; what it drew and the script errors, and a screenshot."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={path.parent / 'chromium'}",
        "--virtual-time-budget=15000",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
    ]  # fmt: skip  (no network at all)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,3600", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    attrs = dict(part.split('="', 1) for part in dom.stdout.split("<body", 1)[1].split(">", 1)[0].split('" '))
    clean = {k.strip(): html.unescape(v.rstrip('"')) for k, v in attrs.items()}
    return json.loads(clean["data-rendered"]), json.loads(clean["data-errors"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_the_page_renders_in_chromium_offline_with_every_plot(outputs, tmp_path):
    args = ("--color-by", "topic", "--sample", "20")
    r = run_cli("report", outputs["mean"], *args, "-o", str(tmp_path / "report.html"))
    assert r.returncode == 0, r.stderr
    manifest = parts.read_manifest(outputs["mean"])
    drawn, errors = render(tmp_path / "report.html", tmp_path / "report.png")
    assert errors == []
    assert drawn["map_points"] == 20  # one point per sampled row
    assert drawn["token_rows"] == manifest.totals.rows == 42  # the histogram counts every row, not the sample
    assert drawn["token_bars"] == len(gather(outputs["mean"], sample=20).token_counts)
    assert drawn["timeline_bars"] == len(manifest.shards) == 5  # one bar per shard
    assert drawn["overlap_bars"] is None  # no --compare
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert "<script src=" not in (tmp_path / "report.html").read_text()  # plotly.js is inlined, not fetched

    r = run_cli("report", outputs["mean"], *args, "--compare", outputs["cls"], "-o", str(tmp_path / "both.html"))
    assert r.returncode == 0, r.stderr
    drawn, errors = render(tmp_path / "both.html", tmp_path / "both.png")
    assert errors == [] and drawn["overlap_bars"] == 11  # overlap@10 in tenths: 0.0 ... 1.0


def test_compare_gives_overlap_in_0_1_and_1_for_equal_outputs(outputs):
    other = gather(outputs["mean"], color_by="topic", compare=outputs["cls"])
    assert other.compare is not None and len(other.compare.overlap) == 42
    assert ((other.compare.overlap >= 0) & (other.compare.overlap <= 1)).all()
    assert other.compare.overlap.mean() < 1  # mean and cls pooling give other neighbours
    same = gather(outputs["mean"], color_by="topic", compare=outputs["mean"])
    assert (same.compare.overlap == 1.0).all()
    labels = [("silhouette (cosine)", t) for t in ("all", "code", "fruit", "sea")]
    assert [k for k in other.compare.by_label if k[0].startswith("silhouette")] == labels
    for figure, label in other.compare.by_label:
        assert all(-1 <= v <= 1 for v in other.compare.by_label[(figure, label)])
    knn = [v for k, v in same.compare.by_label.items() if k[0].startswith("kNN")]
    assert all(a == b for a, b in knn)  # an output compared with itself scores the same on both sides
    assert other.rejects == {next(iter(other.rejects)): 1}  # the null text, by its reason
    assert "Compared with" in page(other)


def test_label_figures_by_hand():
    x = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)  # cosine distance 0 within a pair, 1 across
    # Grouped by pair: a = 0, b = 1, so every row scores (1 - 0) / 1.
    assert silhouette(x, np.array(["a", "a", "b", "b"])) == 1.0
    # Split across pairs: a row's own label is the other pair (a = 1), the other label half and half (b = 0.5).
    assert silhouette(x, np.array(["a", "b", "a", "b"])) == -0.5
    assert knn_accuracy(x, np.array(["a", "a", "b", "b"]), k=1) == 1.0
    assert knn_accuracy(x, np.array(["a", "b", "a", "b"]), k=1) == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "{tmp}"], "has no _manifest.json; report on a DEST written by `bertflow embed`"),
        (
            ["report", "{dest}", "--color-by", "colour"],
            "--color-by colour: not a kept column of DEST; kept columns: topic",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(outputs, tmp_path, args, message):
    out = tmp_path / "report.html"
    r = run_cli(*[a.format(dest=outputs["mean"], tmp=tmp_path) for a in args], "-o", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in " ".join(r.stderr.split()) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
