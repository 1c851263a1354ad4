"""A shard run on a worker that fails on bad input ends `BadInput` at once: no retry can fix it, and the
parent does not submit it again (transient faults are retried: see tests/deployments/test_healing.py)."""

from __future__ import annotations

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from bertflow.config import EmbedConfig
from bertflow.errors import InputError
from bertflow.flows.shard import embed_shard
from bertflow.io import storage
from bertflow.io.manifest import ShardJob
from bertflow.tasks.embed import plan_shards, resolve_config
from bertflow.tasks.fanout import PERMANENT


@pytest.fixture
def job_of_a_vanished_file(s3, tiny_bert) -> ShardJob:
    """A planned shard whose SOURCE file (on S3) was deleted after planning: unreadable when the shard runs."""
    storage.filesystem("s3://vanish/")[0].mkdir("vanish")
    source = "s3://vanish/raw/docs.jsonl"
    storage.write_atomic(source, "".join(f'{{"id": {i}, "text": "text {i}"}}\n' for i in range(5)).encode())
    config = resolve_config.fn(EmbedConfig(model=str(tiny_bert)))
    plan, _ = plan_shards.fn(source, config)
    storage.remove(source)
    s3.requests.clear()
    return ShardJob(spec=plan[0], config=config, dest="s3://vanish/out/", fingerprint="f")


def test_on_a_worker_bad_input_ends_badinput_after_one_try(prefect_harness, s3, job_of_a_vanished_file):
    state = embed_shard(job_of_a_vanished_file, on_worker=True, return_state=True)
    assert state.is_failed() and state.name == PERMANENT
    assert "does not exist" in state.message and "\n" not in state.message
    with get_client(sync_client=True) as c:
        [run] = c.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert run.run_count == 1 and run.state.name == PERMANENT
    # Not retried: read_shard's retries (4, with backoff) would ask S3 for the file again and again.
    asked = [r for r in s3.requests if r[1].startswith("/vanish/raw/docs.jsonl")]
    assert 1 <= len(asked) <= 2, asked


def test_in_this_process_bad_input_raises_as_before(prefect_harness, job_of_a_vanished_file):
    with pytest.raises(InputError, match="does not exist"):
        embed_shard(job_of_a_vanished_file)
