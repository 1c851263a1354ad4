"""fit-reduction as library steps: check DEST, stream its parts into moments, fit the transform and save it."""

from __future__ import annotations

import polars as pl

from bertflow.errors import InputError
from bertflow.io import parts, storage
from bertflow.io.manifest import Manifest
from bertflow.model import fitted
from bertflow.model.reduction import Method, Moments, ReductionConfig, fit, reduction_to_bytes


def read_fittable(dest: str) -> Manifest:
    """DEST's manifest; it must be complete, hold one float vector column and not be reduced already."""
    manifest = parts.read_pooled(dest, "fit on")
    columns = manifest.config.embedding_columns()
    if len(columns) > 1:
        raise InputError(
            f"DEST {dest} has several vector columns ({', '.join(columns)}); "
            "a reduction applies to one pooling: fit on a DEST embedded with one"
        )
    if manifest.config.quantize is not None:
        raise InputError(
            f"DEST {dest} holds {manifest.config.quantize} vectors; fit on a DEST embedded without --quantize "
            "(then embed with --reduction and --quantize together)"
        )
    if manifest.config.reduction is not None:
        raise InputError(
            f"DEST {dest} was already reduced with {manifest.config.reduction.uri}; "
            "fit on a DEST embedded without --reduction"
        )
    return manifest


def accumulate_part(dest: str, name: str, dimension: int, moments: Moments) -> Moments:
    """Read one part's embeddings and merge their moments into the running ones."""
    uri = storage.join(dest, name)
    with storage.translated(uri), storage.open_input(uri) as src:
        vectors = pl.read_parquet(src, columns=["embedding"])["embedding"].to_numpy()  # (N, D)
    if len(vectors) == 0:
        return moments
    if vectors.shape[1] != dimension:
        raise InputError(
            f"{uri}: embeddings are {vectors.shape[1]}-dimensional, the manifest says {dimension}; "
            f"check DEST with `bertflow verify {dest}`"
        )
    return moments.merge(Moments.of(vectors))


def fit_and_save(
    dest: str, out: str, manifest: Manifest, moments: Moments, method: Method, dim: int | None
) -> ReductionConfig:
    """Fit PCA or whitening on the moments and write it to OUT."""
    width = manifest.config.dimension
    try:
        reduction, explained = fit(moments, method, dim or width)
    except ValueError as e:
        raise InputError(f"cannot fit {method} on {dest}: {e}") from None
    config = ReductionConfig(
        method=method,
        dim=reduction.components.shape[1],
        input_dim=width,
        rows=moments.n,
        explained_variance=round(explained, 6),
        source=storage.canonical(dest),
        model=manifest.config.model.name,
        input={k: manifest.fingerprint[k] for k in fitted.REDUCTION_INPUT if k in manifest.fingerprint},
    )
    fitted.save_reduction(out, *reduction_to_bytes(reduction, config))
    return config
