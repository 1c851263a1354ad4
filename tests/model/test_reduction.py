"""PCA and whitening: streaming moments, the fitted transform's mean and covariance, saving, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from bertflow.model import fitted
from bertflow.model.reduction import (
    Moments,
    ReductionConfig,
    fit,
    reduction_from_bytes,
    reduction_to_bytes,
)
from bertflow.resolved import ResolvedConfig
from tests.conftest import resolved_config


def correlated(n: int = 600, d: int = 8, seed: int = 0) -> np.ndarray:
    """Rows with a non-zero mean and very different variances along skewed directions."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(3.0, 0.1, d)[:, None]  # (D, D)
    return (rng.normal(size=(n, d)) @ mix + rng.normal(size=d) * 5).astype(np.float32)  # (N, D)


def streamed(x: np.ndarray, sizes: list[int]) -> Moments:
    moments, start = Moments.empty(x.shape[1]), 0
    for size in sizes:
        moments = moments.merge(Moments.of(x[start : start + size]))
        start += size
    assert start == len(x)
    return moments


def test_streamed_moments_equal_the_whole_data_at_once():
    x = correlated()
    moments = streamed(x, [1, 250, 0, 17, 332])  # uneven batches, one single row, one empty
    np.testing.assert_allclose(moments.mean, x.astype(np.float64).mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        moments.scatter / (moments.n - 1), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-10
    )
    assert moments.n == 600


def test_pca_of_the_fitting_data_is_centered_decorrelated_and_sorted_by_variance():
    x = correlated()
    reduction, explained = fit(streamed(x, [100] * 6), "pca", 3)
    y = reduction.apply(x).astype(np.float64)  # (N, 3)
    eigenvalues = np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False))[::-1]
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.diag(eigenvalues[:3]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(reduction.components.T @ reduction.components, np.eye(3), atol=1e-12)
    assert explained == pytest.approx(eigenvalues[:3].sum() / eigenvalues.sum())
    # signs fixed: refitting on the same rows in another batching gives the same directions
    again, _ = fit(streamed(x, [600]), "pca", 3)
    np.testing.assert_allclose(again.components, reduction.components, atol=1e-9)


@pytest.mark.parametrize("dim", [8, 5])
def test_whitening_gives_identity_covariance_on_the_fitting_data(dim):
    x = correlated()
    reduction, _ = fit(streamed(x, [300, 300]), "whiten", dim)
    y = reduction.apply(x).astype(np.float64)
    assert y.shape == (600, dim)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(dim), atol=1e-4)


def test_fit_refuses_what_it_cannot_do():
    x = correlated(n=5)
    with pytest.raises(ValueError, match=r"--dim 5: the 5 rows span only 4 directions; use --dim 4 or fewer"):
        fit(Moments.of(x), "whiten", 5)
    with pytest.raises(ValueError, match="--dim 9 must be between 1 and the embeddings' dimension 8"):
        fit(Moments.of(x), "pca", 9)
    with pytest.raises(ValueError, match="unknown reduction method 'ica'; choose one of pca, whiten"):
        fit(Moments.of(x), "ica", 2)
    with pytest.raises(ValueError, match="cannot fit on 1 rows"):
        fit(Moments.of(x[:1]), "pca", 1)


def reduction_config(**kw) -> ReductionConfig:
    base = dict(
        method="whiten",
        dim=4,
        input_dim=8,
        rows=600,
        explained_variance=0.9,
        source="/dest",
        model="m",
        input={"model_sha256": "a" * 64, "pooling": "mean", "layers": [-1], "layer_mode": "mean", "normalize": True},
    )
    return ReductionConfig(**{**base, **kw})


def test_saved_reduction_reloads_to_the_same_transform(tmp_path):
    x = correlated()
    reduction, _ = fit(Moments.of(x), "whiten", 4)
    weights, meta = reduction_to_bytes(reduction, reduction_config())
    fitted.save_reduction(str(tmp_path / "r"), weights, meta)
    config, sha = fitted.read_reduction_config(str(tmp_path / "r"))
    assert config == reduction_config()
    assert np.array_equal(fitted.load_reduction(str(tmp_path / "r"), sha).apply(x), reduction.apply(x))
    with pytest.raises(ValueError, match="do not match reduction.json"):
        reduction_from_bytes(weights, reduction_config(dim=3))


def resolved(pooling: str = "mean", **fields) -> ResolvedConfig:
    return resolved_config(pooling=(pooling,), **fields)


def test_reduction_is_checked_against_the_run_and_renormalizes(tmp_path):
    x = correlated()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    reduction, _ = fit(Moments.of(unit), "whiten", 4)
    fitted.save_reduction(str(tmp_path / "r"), *reduction_to_bytes(reduction, reduction_config()))
    config = fitted.attach(resolved(), None, str(tmp_path / "r"))
    assert config.dimension == 4 and config.output_fingerprint()["reduction_sha256"] == config.reduction.sha256
    out = fitted.reduce_vectors(config, unit)
    want = reduction.apply(unit)
    np.testing.assert_allclose(out, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=0, atol=1e-6)
    raw = fitted.attach(resolved(normalize=False), None, None)
    assert np.array_equal(fitted.reduce_vectors(raw, unit), unit)  # no --reduction: untouched
    assert fitted.reduce_vectors(config, np.empty((0, 0), np.float32)).shape == (0, 4)
    from bertflow.errors import InputError

    with pytest.raises(
        InputError,
        match=r"embedded with normalize True .* this run has False: embed with the same "
        r"--normalize/--no-normalize",
    ):
        fitted.attach(resolved(normalize=False), None, str(tmp_path / "r"))
    with pytest.raises(InputError, match="embedded with pooling 'mean'.* this run has 'cls'"):
        fitted.attach(resolved(pooling="cls"), None, str(tmp_path / "r"))
    with pytest.raises(
        InputError, match="no reduction.json there; give a directory written by `bertflow fit-reduction`"
    ):
        fitted.attach(resolved(), None, str(tmp_path / "nothing"))
