"""fit_reduction: fit PCA or whitening on a DEST's embeddings, one part at a time."""

from __future__ import annotations

from prefect import flow

from bertflow.model.reduction import Method, Moments, ReductionConfig
from bertflow.names import FIT_REDUCTION_FLOW
from bertflow.tasks import fit_reduction as steps


@flow(name=FIT_REDUCTION_FLOW, persist_result=False)
def fit_reduction(dest: str, out: str, method: Method = "pca", dim: int | None = None) -> ReductionConfig:
    """Stream DEST's parts into running moments, fit the transform, save it to OUT."""
    manifest = steps.read_fittable(dest)
    width = manifest.config.dimension
    moments = Moments.empty(width)
    for shard in manifest.shards:
        moments = steps.accumulate_part(dest, shard.name, width, moments)
    return steps.fit_reduction(dest, out, manifest, moments, method, dim)
