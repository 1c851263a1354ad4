"""embed_dataset: plan SOURCE into shards, embed the ones not yet in DEST, write the manifest."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import flow

from bertflow.flows.shard import embed_shard
from bertflow.tasks.config import EmbedConfig
from bertflow.tasks.embed import fingerprints, finalize_dest, plan_source, prepare_dest, resolve_embed_config
from bertflow.tasks.manifest import Manifest


@flow(name="embed-dataset", persist_result=False)
def embed_dataset(source: str, dest: str, config: EmbedConfig = EmbedConfig(), overwrite: bool = False) -> Manifest:
    """Embed every row of SOURCE into Parquet parts under DEST; rerun to resume."""
    started, created_at = time.perf_counter(), datetime.now(timezone.utc)
    resolved = resolve_embed_config(config)
    plan = plan_source(source, resolved)
    done = prepare_dest(source, dest, resolved, plan, overwrite)
    prints = fingerprints(plan, resolved)
    results = list(done.values())
    for spec in plan:
        if spec.name not in done:
            results.append(embed_shard(spec, resolved, dest, prints[spec.name]))
    return finalize_dest(source, dest, resolved, plan, results, time.perf_counter() - started, created_at)
