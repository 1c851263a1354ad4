"""fit_reduction: fit PCA or whitening on a DEST's embeddings, one part at a time."""

from __future__ import annotations

from prefect import flow

from bertflow.model.reduction import Method, Moments, ReductionConfig
from bertflow.tasks.fit_reduction import accumulate_part, fit_transform, read_embedded


@flow(name="fit-reduction", persist_result=False)
def fit_reduction(dest: str, out: str, method: Method = "pca", dim: int | None = None) -> ReductionConfig:
    """Stream DEST's parts into running moments, fit the transform, save it to OUT."""
    manifest = read_embedded(dest)
    moments = Moments.empty(manifest.model.dimension)
    for shard in manifest.shards:
        moments = accumulate_part(dest, shard.name, manifest.model.dimension, moments)
    return fit_transform(dest, out, manifest, moments, method, dim)
