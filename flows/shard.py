"""embed_shard: one shard, one process: read -> tokenize -> embed -> write one part."""

from __future__ import annotations

import os
import socket
import time

from prefect import flow, get_run_logger
from prefect.context import TagsContext
from prefect.utilities.annotations import quote

from bertflow.config import TOKEN_LEVEL, ResolvedConfig
from bertflow.io.manifest import ShardResult, ShardSpec
from bertflow.tasks.artifacts import quiet_expected_errors
from bertflow.tasks.embed import (
    chunk_texts,
    embed_token_states,
    embed_tokens,
    read_shard,
    storage_from_block,
    tokenize_texts,
    tokenize_tokens,
    write_part,
)
from bertflow.tasks.fanout import localize_model
from bertflow.tasks.gpu import gpu_slot

quiet_expected_errors()

# A shard run on a worker that fails is run again by Prefect (transient faults inside already
# retry per task); the parent runs shards in its own process with `retries=0`, as before.
SHARD_RETRIES = 2


@flow(
    name="embed-shard",
    flow_run_name="shard-{spec.index}-of-{spec.count}",
    persist_result=False,
    retries=SHARD_RETRIES,
    retry_delay_seconds=5,
)
def embed_shard(
    spec: ShardSpec, config: ResolvedConfig, dest: str, fingerprint: str, on_worker: bool = False
) -> ShardResult:
    """Embed the rows of one shard and write its part to DEST.

    Args:
        on_worker: the run has a process of its own (a worker, `bertflow serve`): find the model
            on this host and hold one of the host's GPU slots while the model is in use.
    """
    started = time.perf_counter()
    if on_worker:
        get_run_logger().info(
            "shard %d of %d on host %s, worker %s, pid %d",
            spec.index,
            spec.count,
            socket.gethostname(),
            os.environ.get("PREFECT__WORKER_NAME", "-"),
            os.getpid(),
        )
        config = localize_model(config)
    # The run's tags (model, pooling) are for finding runs in the UI. Its tasks go untagged: Prefect
    # takes a tag concurrency slot, with a lease, for every tagged task (~0.5 s each here).
    with storage_from_block(config.storage_block), TagsContext(current_tags=set()):  # credentials stay here
        frame, rejects = read_shard(spec, config)
        reading = time.perf_counter() - started
        # The model stays on the device until this process ends: hold the slot to the end. Time spent
        # waiting for the slot is not the shard's work, so it stays out of its seconds and throughput.
        with gpu_slot(on_worker):
            started = time.perf_counter()
            # Shard-sized data goes to the tasks `quote`d: Prefect would otherwise walk every element
            # (every token id) looking for futures, seconds per task on a 10k-row shard.
            texts = quote(frame["text"].to_list())
            chunks = tokens = None
            if config.long_text == "chunk":
                chunks = chunk_texts(texts, config)
                tok = chunks.tok
            elif config.pooling == TOKEN_LEVEL:
                tokens = tokenize_tokens(texts, config)
                tok = tokens.tok
            else:
                tok = tokenize_texts(texts, config)
            embeddings = (
                embed_token_states(quote(tok), config) if tokens is not None else embed_tokens(quote(tok), config)
            )
            return write_part(
                dest,
                spec,
                config,
                quote(frame),
                quote(tok),
                quote(embeddings),
                quote(rejects),
                fingerprint,
                reading + time.perf_counter() - started,
                quote(chunks),
                quote(tokens),
            )
