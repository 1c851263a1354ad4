"""embed_shard: one shard, one process: read -> tokenize -> embed -> write one part."""

from __future__ import annotations

import time

from prefect import flow

from bertflow.tasks.config import ResolvedConfig
from bertflow.tasks.embed import embed_tokens, read_shard, tokenize_texts, write_part
from bertflow.tasks.manifest import ShardResult, ShardSpec


@flow(name="embed-shard", flow_run_name="shard-{spec.index}-of-{spec.count}", persist_result=False)
def embed_shard(spec: ShardSpec, config: ResolvedConfig, dest: str, fingerprint: str) -> ShardResult:
    """Embed the rows of one shard and write its part to DEST."""
    started = time.perf_counter()
    frame, rejects = read_shard(spec, config)
    tok = tokenize_texts(frame["text"].to_list(), config)
    embeddings = embed_tokens(tok, config)
    return write_part(
        dest, spec, config, frame, tok, embeddings, rejects, fingerprint, time.perf_counter() - started
    )
