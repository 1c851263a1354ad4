"""fit-reduction on a real DEST, then embed --reduction: the same vectors as reducing afterwards."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from bertflow.config import EmbedConfig
from bertflow.errors import DestMismatchError, InputError
from bertflow.flows.embed import embed_dataset
from bertflow.flows.fit_reduction import fit_reduction
from bertflow.model import fitted
from tests.conftest import run_cli, write_rows

pytestmark = pytest.mark.usefixtures("prefect_harness")


def vectors(dest) -> np.ndarray:
    table = pl.read_parquet(f"{dest}/part-*.parquet")
    return table["embedding"].to_numpy().astype(np.float64)


@pytest.fixture(scope="module")
def source(tmp_path_factory, sample_texts):
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(sample_texts[:240])]
    return str(write_rows(tmp_path_factory.mktemp("src") / "in.jsonl", rows))


@pytest.mark.parametrize(("method", "normalize"), [("whiten", False), ("pca", True)])
def test_reduction_at_write_time_equals_reducing_afterwards(tmp_path, tiny_bert, source, method, normalize):
    config = EmbedConfig(model=str(tiny_bert), shard_rows=100, max_length=32, normalize=normalize)
    embed_dataset(source, str(tmp_path / "plain"), config)  # 3 parts: 100, 100, 40 rows
    fit = fit_reduction(str(tmp_path / "plain"), str(tmp_path / "red"), method, 12)
    assert (fit.method, fit.dim, fit.input_dim, fit.rows) == (method, 12, 32, 240)
    plain = vectors(tmp_path / "plain")
    red = fitted.load_reduction(*[str(tmp_path / "red"), fitted.read_reduction_config(str(tmp_path / "red"))[1]])
    afterwards = red.apply(plain).astype(np.float64)  # (N, 12)
    np.testing.assert_allclose(afterwards.mean(0), 0, atol=1e-4)
    cov = np.cov(afterwards, rowvar=False)
    if method == "whiten":
        np.testing.assert_allclose(cov, np.eye(12), atol=1e-4)
    else:
        assert np.allclose(cov, np.diag(np.diag(cov)), atol=1e-6) and np.all(np.diff(np.diag(cov)) <= 0)

    manifest = embed_dataset(
        source, str(tmp_path / "reduced"), config.model_copy(update={"reduction": str(tmp_path / "red")})
    )
    written = vectors(tmp_path / "reduced")
    if normalize:  # normalized before the reduction (as the fitted DEST holds them) and again after it
        afterwards /= np.linalg.norm(afterwards, axis=1, keepdims=True)
        np.testing.assert_allclose(np.linalg.norm(written, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(written, afterwards, rtol=0, atol=2e-6)

    stored = json.loads((tmp_path / "reduced" / "_manifest.json").read_text())
    assert stored["config"]["dimensions"] == {"mean": 12}
    assert stored["config"]["reduction"] == {"uri": str(tmp_path / "red"), "sha256": manifest.config.reduction.sha256}
    assert stored["fingerprint"]["reduction_sha256"] == manifest.config.reduction.sha256
    # resume refuses a DEST made with another reduction, or without one, either way round
    with pytest.raises(DestMismatchError, match="reduction_sha256"):
        embed_dataset(source, str(tmp_path / "reduced"), config)
    with pytest.raises(DestMismatchError, match="reduction_sha256"):
        embed_dataset(source, str(tmp_path / "plain"), config.model_copy(update={"reduction": str(tmp_path / "red")}))
    # a reduced DEST is not fitted on again
    with pytest.raises(InputError, match="was already reduced with"):
        fit_reduction(str(tmp_path / "reduced"), str(tmp_path / "again"), "pca", 4)


def test_fit_reduction_command(tmp_path, tiny_bert, source):
    embed_dataset(source, str(tmp_path / "plain"), EmbedConfig(model=str(tiny_bert), max_length=32))
    ok = run_cli("fit-reduction", str(tmp_path / "plain"), str(tmp_path / "red"), "--method", "whiten", "--dim", "8")
    assert ok.returncode == 0, ok.stderr
    assert "whiten, 32 -> 8 dimensions" in ok.stdout and "240 rows" in ok.stdout
    assert json.loads((tmp_path / "red" / "reduction.json").read_text())["dim"] == 8
    bad = run_cli("fit-reduction", str(tmp_path / "plain"), str(tmp_path / "red2"), "--method", "ica")
    assert bad.returncode == 2 and "--method 'ica': choose one of pca, whiten" in bad.stderr
    with pytest.raises(
        InputError, match="cannot fit pca on .*: --dim 33 must be between 1 and the embeddings' dimension 32"
    ):
        fit_reduction(str(tmp_path / "plain"), str(tmp_path / "red3"), "pca", 33)
    assert not (tmp_path / "red3").exists()
