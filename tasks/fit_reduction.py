"""Prefect tasks of `fit-reduction`, each a thin wrapper over one step of `bertflow.pipeline.reduction`."""

from __future__ import annotations

from prefect import task

from bertflow.io.manifest import Manifest
from bertflow.model.reduction import Method, Moments, ReductionConfig
from bertflow.pipeline import reduction
from bertflow.tasks.policy import IN_MEMORY, RETRY


@task(**IN_MEMORY, **RETRY)
def read_fittable(dest: str) -> Manifest:
    """DEST's manifest (storage); it must be complete, one vector column, not reduced already."""
    return reduction.read_fittable(dest)


@task(**IN_MEMORY, **RETRY)
def accumulate_part(dest: str, name: str, dimension: int, moments: Moments) -> Moments:
    """Read one part's embeddings (storage) and merge their moments into the running ones."""
    return reduction.accumulate_part(dest, name, dimension, moments)


@task(**IN_MEMORY)
def fit_reduction(
    dest: str, out: str, manifest: Manifest, moments: Moments, method: Method, dim: int | None
) -> ReductionConfig:
    """Fit PCA or whitening on the moments (CPU) and write it to OUT (storage)."""
    return reduction.fit_and_save(dest, out, manifest, moments, method, dim)
