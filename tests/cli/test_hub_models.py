"""Models by Hub id: `bertflow embed --model ORG/NAME [--revision R]` downloads through huggingface_hub from a
Hub of the test's own on loopback (HF_ENDPOINT), pins the commit, and refuses what it must refuse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bertflow.config import EmbedConfig
from bertflow.errors import ModelError
from bertflow.model.resolve import resolve_config
from bertflow.pipeline.search import embed_query
from tests.conftest import build_tiny_bert, run_cli, write_rows
from tests.hub import FakeHub

REPO = "bertflow-test/tiny-bert"
TOKEN = "hf_secret-token-do-not-log"


def files_of(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def models(tmp_path_factory, bundled_model) -> dict[str, Path]:
    """Two tiny BERTs with different weights (two commits of one repo)."""
    root = tmp_path_factory.mktemp("hub-models")
    return {k: build_tiny_bert(root / k, bundled_model, seed=seed) for k, seed in (("v1", 1), ("v2", 2))}


class Hub(FakeHub):
    v1 = v2 = ""  # the commits of REPO: tag v1, then main


@pytest.fixture(scope="module")
def hub(models):
    with Hub() as hub:
        hub.v1 = hub.commit(REPO, models["v1"], tags=["v1"])
        hub.v2 = hub.commit(REPO, models["v2"])  # main moves on
        pickled = {k: v for k, v in files_of(models["v1"]).items() if k != "model.safetensors"}
        hub.commit("bertflow-test/pickled", {**pickled, "pytorch_model.bin": b"\x80\x04 not really a pickle"})
        hub.commit("bertflow-test/private", models["v1"])
        hub.private("bertflow-test/private", TOKEN)
        yield hub


@pytest.fixture(scope="module")
def source(tmp_path_factory, sample_texts) -> Path:
    rows = [{"id": i, "text": t} for i, t in enumerate(sample_texts[:12])]
    return write_rows(tmp_path_factory.mktemp("hub-src") / "docs.jsonl", rows)


def embed(hub: FakeHub, home: Path, *args: str, **env: str):
    base = {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "HF_TOKEN": ""}
    return run_cli("embed", *args, "--pooling", "mean", env={**base, **env})


def vectors(dest: Path) -> np.ndarray:
    return pl.read_parquet(dest / "part-*.parquet").sort("id")["embedding"].to_numpy()


def manifest_model(dest: Path) -> dict:
    return json.loads((dest / "_manifest.json").read_text())["config"]["model"]


def test_download_by_tag_pins_the_commit_and_reruns_offline_from_the_cache(hub, models, source, tmp_path):
    home = tmp_path / "hf-home"
    r = embed(hub, home, str(source), str(tmp_path / "tag"), "--model", REPO, "--revision", "v1")
    assert r.returncode == 0, r.stdout + r.stderr
    recorded = manifest_model(tmp_path / "tag")
    assert (recorded["name"], recorded["revision"]) == (REPO, hub.v1)
    assert Path(recorded["path"]).name == hub.v1 and Path(recorded["path"]).is_relative_to(home)
    assert not {f for f in hub.downloaded(REPO) if f.endswith(".bin")}
    # the same vectors as the model's directory on disk
    local = resolve_config(EmbedConfig(model=str(models["v1"]), pooling="mean"))
    texts = [json.loads(line)["text"] for line in source.read_text().splitlines()]
    np.testing.assert_allclose(vectors(tmp_path / "tag"), np.stack([embed_query(t, local) for t in texts]), atol=1e-5)
    assert recorded["sha256"] == local.model.sha256

    # offline, from the cache: by tag, and by the commit the manifest recorded; no request reaches the Hub
    seen = len(hub.requests)
    for rev, dest in (("v1", "offline-tag"), (hub.v1, "offline-sha")):
        r = embed(hub, home, str(source), str(tmp_path / dest), "--model", REPO, "--revision", rev, HF_HUB_OFFLINE="1")
        assert r.returncode == 0, r.stdout + r.stderr
        assert manifest_model(tmp_path / dest)["revision"] == hub.v1
    assert len(hub.requests) == seen

    # main has moved on: other weights, recorded as such
    r = embed(hub, home, str(source), str(tmp_path / "main"), "--model", REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert manifest_model(tmp_path / "main")["revision"] == hub.v2
    assert np.abs(vectors(tmp_path / "main") - vectors(tmp_path / "tag")).max() > 1e-3


@pytest.mark.parametrize(
    ("model", "revision", "offline", "message"),
    [
        (
            "bertflow-test/pickled",
            None,
            "0",
            r"has only pickled weights \(pytorch_model.bin\); bertflow loads safetensors",
        ),
        ("bertflow-test/nothing", None, "0", r"neither a local directory nor a repository on http://127\.0\.0\.1"),
        (REPO, "v9", "0", r"has no revision 'v9'"),
        (REPO, "v1", "1", r"not in the Hugging Face cache and HF_HUB_OFFLINE is set: get it with `hf download "),
        ("bertflow-test/private", None, "0", r"for a private repository set HF_TOKEN"),
    ],
)
def test_what_cannot_be_loaded_is_one_line_exit_2_and_nothing_written(
    hub, source, tmp_path, model, revision, offline, message
):
    pinned = ("--revision", revision) if revision else ()
    r = embed(
        hub,
        tmp_path / "hf-home",
        str(source),
        str(tmp_path / "dest"),
        "--model",
        model,
        *pinned,
        HF_HUB_OFFLINE=offline,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert not (tmp_path / "dest").exists()
    assert "pytorch_model.bin" not in hub.downloaded()


def test_a_private_model_downloads_with_hf_token_which_is_stored_nowhere(hub, source, tmp_path):
    dest = tmp_path / "dest"
    r = embed(hub, tmp_path / "hf-home", str(source), str(dest), "--model", "bertflow-test/private", HF_TOKEN=TOKEN)
    assert r.returncode == 0, r.stdout + r.stderr
    assert TOKEN not in r.stdout + r.stderr
    for f in dest.rglob("*"):
        assert not f.is_file() or TOKEN.encode() not in f.read_bytes(), f


def test_a_shard_on_another_host_loads_exactly_the_recorded_commit(hub, tmp_path, monkeypatch):
    """localize() on a host whose cache is empty, after main moved on: it fetches the planned commit."""
    from huggingface_hub import constants

    from bertflow.model.loading import localize

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # both read HF_ENDPOINT at import
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "parent-cache"))
    planned = resolve_config(EmbedConfig(model=REPO, revision="v1", pooling="mean"))
    assert planned.model.revision == hub.v1

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "worker-cache"))  # another host
    moved = planned.model_copy(update={"model": planned.model.model_copy(update={"path": "/elsewhere/no-such-dir"})})
    here = localize(moved)
    assert Path(here.model.path).name == hub.v1 and Path(here.model.path).is_relative_to(tmp_path / "worker-cache")

    gone = moved.model_copy(update={"model": moved.model.model_copy(update={"revision": "0" * 40})})
    with pytest.raises(ModelError, match="has no revision '0000000000"):
        localize(gone)
