"""train-pooler on real labelled text with the bundled model: better than chance, reproducible, usable by embed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertflow.config import EmbedConfig
from bertflow.errors import InputError
from bertflow.flows.embed import embed_dataset
from bertflow.flows.train_pooler import train_pooler
from bertflow.tasks.train_pooler import TrainConfig
from tests.conftest import REPO, run_cli, write_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")

# Four standard-library packages of the shipped sample: 331 docstrings, the largest class 101.
CLASSES = ("decimal", "logging", "typing", "ssl")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> str:
    rows = []
    for line in (REPO / "data" / "sample" / "docs.jsonl").read_text().splitlines():
        row = json.loads(line)
        package = row["module"].split(".")[0]
        if package in CLASSES:
            rows.append({"id": row["id"], "text": row["text"], "package": package})
    return str(write_rows(tmp_path_factory.mktemp("labelled") / "docs.jsonl", rows))


CONFIG = TrainConfig(label_column="package", max_length=64, epochs=6, hidden=32, seed=0)


def test_head_beats_the_majority_class_and_embeds(tmp_path, labelled, tiny_bert):
    report = train_pooler(labelled, str(tmp_path / "head"), CONFIG)
    acc = report.test_accuracy
    assert report.classes == {"decimal": 101, "logging": 97, "ssl": 44, "typing": 89}
    assert report.rows == {"train": 232, "validation": 33, "test": 66, "rejected": 0}  # 20% and 10% per class
    assert acc["majority"] == pytest.approx(20 / 66, abs=1e-4)  # decimal's share of the test rows
    assert acc["mean_lstm"] >= acc["majority"] + 0.4
    assert acc["mean"] >= acc["majority"] + 0.4
    assert 1 <= report.best_epoch <= report.epochs_run <= 6
    head = json.loads((tmp_path / "head" / "pooler.json").read_text())
    assert head["model_sha256"] == report.model_sha256 and head["max_length"] == 64 and head["layers"] == [-1]
    assert head["labels"] == sorted(CLASSES)
    assert json.loads((tmp_path / "head" / "report.json").read_text()) == report.model_dump(mode="json")

    manifest = embed_dataset(
        labelled,
        str(tmp_path / "dest"),
        EmbedConfig(pooling="mean_lstm", pooler=str(tmp_path / "head"), max_length=64, keep=("package",)),
    )
    assert manifest.config.dimension == 384 + 32 and manifest.totals.rows == 331
    assert manifest.config.pooler.sha256 == report.pooler_sha256 == manifest.fingerprint["pooler_sha256"]
    with pytest.raises(InputError, match="was trained on the encoder sentence-transformers/all-MiniLM-L6-v2"):
        embed_dataset(
            labelled,
            str(tmp_path / "other"),
            EmbedConfig(model=str(tiny_bert), pooling="mean_lstm", pooler=str(tmp_path / "head"), max_length=64),
        )


def test_the_same_seed_trains_the_same_head(tmp_path, labelled, tiny_bert):
    config = CONFIG.model_copy(update={"model": str(tiny_bert), "epochs": 3, "hidden": 8})
    first = train_pooler(labelled, str(tmp_path / "a"), config)
    again = train_pooler(labelled, str(tmp_path / "b"), config)
    assert again == first
    for name in ("pooler.safetensors", "pooler.json", "report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = train_pooler(labelled, str(tmp_path / "c"), config.model_copy(update={"seed": 1}))
    assert other.pooler_sha256 != first.pooler_sha256


def test_labels_that_cannot_train_are_refused(tmp_path, labelled):
    with pytest.raises(InputError, match="has no column 'topic'.*--keep"):
        train_pooler(labelled, str(tmp_path / "x"), CONFIG.model_copy(update={"label_column": "topic"}))
    few = write_rows(
        tmp_path / "few.jsonl",
        [{"id": i, "text": f"text {i}", "label": "ab"[i % 2] if i < 12 else "c"} for i in range(14)],
    )
    with pytest.raises(InputError, match="label 'c' has 2 rows; give every label at least 5 rows or drop it"):
        train_pooler(str(few), str(tmp_path / "x"), CONFIG.model_copy(update={"label_column": "label"}))
    assert not Path(tmp_path / "x").exists()


def test_train_pooler_command(tmp_path, labelled, tiny_bert):
    result = run_cli(
        "train-pooler",
        labelled,
        str(tmp_path / "head"),
        "--label-column",
        "package",
        "--model",
        str(tiny_bert),
        "--epochs",
        "2",
        "--hidden",
        "8",
        "--bidirectional",
        "--max-length",
        "32",
    )
    assert result.returncode == 0, result.stderr
    assert "held-out accuracy" in result.stdout and "mean+bilstm" in result.stdout
    report = json.loads((tmp_path / "head" / "report.json").read_text())
    assert report["bidirectional"] is True and report["hidden"] == 8 and report["epochs_run"] <= 2
    assert json.loads((tmp_path / "head" / "pooler.json").read_text())["bidirectional"] is True
