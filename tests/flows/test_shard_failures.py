"""A shard run on a worker that fails on bad input ends `BadInput` at once: no retry can fix it, and the
parent does not submit it again (transient faults are retried: see tests/deployments/test_healing.py)."""

from __future__ import annotations

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from bertflow.config import EmbedConfig
from bertflow.errors import InputError
from bertflow.flows.shard import embed_shard
from bertflow.io.manifest import ShardJob
from bertflow.tasks.embed import plan_shards, resolve_config
from bertflow.tasks.fanout import PERMANENT
from tests.conftest import write_rows


@pytest.fixture
def job_of_a_vanished_file(tiny_bert, tmp_path) -> ShardJob:
    """A planned shard whose SOURCE file was deleted after planning (unreadable when the shard runs)."""
    source = write_rows(tmp_path / "raw" / "docs.jsonl", [{"id": i, "text": f"text {i}"} for i in range(5)])
    config = resolve_config.fn(EmbedConfig(model=str(tiny_bert)))
    plan, _ = plan_shards.fn(str(source), config)
    source.unlink()
    return ShardJob(spec=plan[0], config=config, dest=str(tmp_path / "out"), fingerprint="f")


def test_on_a_worker_bad_input_ends_badinput_after_one_try(prefect_harness, job_of_a_vanished_file):
    state = embed_shard(job_of_a_vanished_file, on_worker=True, return_state=True)
    assert state.is_failed() and state.name == PERMANENT
    assert "does not exist" in state.message and "\n" not in state.message
    with get_client(sync_client=True) as c:
        [run] = c.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.run_count == 1
    [read] = [t for t in tasks if t.name.startswith("read_shard")]
    assert read.run_count == 1 and read.state.is_failed()  # not retried: the file will not come back by itself


def test_in_this_process_bad_input_raises_as_before(prefect_harness, job_of_a_vanished_file):
    with pytest.raises(InputError, match="does not exist"):
        embed_shard(job_of_a_vanished_file)
