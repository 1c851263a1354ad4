"""Prefect tasks of `fit-reduction`: stream a DEST's parts into moments, fit, save the transform."""

from __future__ import annotations

import polars as pl
from prefect import task

from bertflow.errors import InputError
from bertflow.io import parts, storage
from bertflow.io.manifest import Manifest
from bertflow.model import fitted
from bertflow.model.reduction import Method, Moments, ReductionConfig, fit, reduction_to_bytes
from bertflow.tasks.embed import IN_MEMORY, RETRY


@task(name="read_manifest", **IN_MEMORY, **RETRY)
def read_embedded(dest: str) -> Manifest:
    """DEST's manifest (storage); it must be complete and not reduced already."""
    manifest = parts.read_pooled(dest, "fit on")
    if manifest.embedding_columns and len(manifest.embedding_columns) > 1:
        raise InputError(
            f"DEST {dest} has several vector columns ({', '.join(manifest.embedding_columns)}); "
            "a reduction applies to one pooling: fit on a DEST embedded with one"
        )
    if manifest.reduction is not None:
        raise InputError(
            f"DEST {dest} was already reduced with {manifest.reduction.uri}; fit on a DEST embedded without --reduction"
        )
    return manifest


@task(name="accumulate_part", **IN_MEMORY, **RETRY)
def accumulate_part(dest: str, name: str, dimension: int, moments: Moments) -> Moments:
    """Read one part's embeddings (storage) and merge their moments into the running ones."""
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


@task(name="fit_reduction", **IN_MEMORY)
def fit_transform(
    dest: str, out: str, manifest: Manifest, moments: Moments, method: Method, dim: int | None
) -> ReductionConfig:
    """Fit PCA or whitening on the moments (CPU) and write it to OUT (storage)."""
    try:
        reduction, explained = fit(moments, method, dim or manifest.model.dimension)
    except ValueError as e:
        raise InputError(f"cannot fit {method} on {dest}: {e}") from None
    config = ReductionConfig(
        method=method,
        dim=reduction.components.shape[1],
        input_dim=manifest.model.dimension,
        rows=moments.n,
        explained_variance=round(explained, 6),
        source=storage.canonical(dest),
        model=manifest.model.name,
        input={k: manifest.fingerprint[k] for k in fitted.REDUCTION_INPUT if k in manifest.fingerprint},
    )
    fitted.save_reduction(out, *reduction_to_bytes(reduction, config))
    return config
