"""Lanes of shards in one process (issue 17, points 1 and 2): which card each lane takes, `--devices`,
and that shards run in several lanes write exactly what one lane writes, failure included.

No GPU here: the card count is given to the pure mapping directly, and the flow's lanes are set to
two CPU lanes at the boundary (`shard_lanes`), each running real `embed-shard` subflows on the model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

import bertflow.flows.embed as embed_flow
import bertflow.flows.shard as shard_flow
from bertflow.config import EmbedConfig
from bertflow.errors import InputError, RunFailedError
from bertflow.flows.shard import embed_shard
from bertflow.model import cards
from bertflow.model.resolve import loaded_encoder, resolve_config
from bertflow.pipeline import shard as shard_steps
from bertflow.tasks.lanes import run_in_lanes
from tests.conftest import run_cli, write_rows
from tests.flows.test_embed_flow import run


def test_lanes_cover_each_chosen_card_twice_and_interleave(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert cards.lanes("cuda", None, 4) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert cards.lanes("cuda", (2, 0), 4) == [2, 0, 2, 0]
    assert cards.lanes("cuda", None, 1) == [0, 0]  # one card: its next shard is read while this one computes
    assert cards.lanes("cuda", (1,), 2, per_card=1) == [1]
    assert cards.lanes("cpu", None, 0) == [None] and cards.lanes("mps", None, 0) == [None]
    with pytest.raises(
        InputError, match=r"--devices 0,3: this host has 2 CUDA device\(s\), numbered 0 to 1; there is no card 3"
    ):
        cards.lanes("cuda", (0, 3), 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # CUDA counts the visible cards from 0
    with pytest.raises(InputError, match=r"numbered 0 to 1 \(the cards CUDA_VISIBLE_DEVICES=2,3 lets this process "):
        cards.lanes("cuda", (2,), 2)
    with pytest.raises(InputError, match=r"--devices 0 selects CUDA cards, and this run embeds on cpu"):
        cards.lanes("cpu", (0,), 0)


@pytest.mark.parametrize(
    ("given", "parsed"), [("0,1", (0, 1)), (" 1 ", (1,)), ("cuda:1,cuda:0", (1, 0)), ([3, 2], (3, 2)), (None, None)]
)
def test_devices_parse(given, parsed):
    assert EmbedConfig(devices=given).devices == parsed


@pytest.mark.parametrize("given", ["", "a", "0,0", "-1", "0,,1", "1.5"])
def test_devices_refuse_what_is_not_a_list_of_cards(given):
    with pytest.raises(ValidationError, match="devices"):
        EmbedConfig(devices=given)


def test_cli_refuses_devices_on_cpu_in_one_line_and_writes_nothing(tmp_path, sample_texts):
    source = write_rows(tmp_path / "in.parquet", [{"id": 0, "text": sample_texts[0]}])
    result = run_cli("embed", str(source), str(tmp_path / "out"), "--device", "cpu", "--devices", "0,1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --devices 0,1 selects CUDA cards, and this run embeds on cpu: drop --devices, or use --device cuda"
    ]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def source(tmp_path, sample_texts):
    rows = [{"id": i, "text": t} for i, t in enumerate(sample_texts[:90])]
    return write_rows(tmp_path / "in.parquet", rows)


@pytest.fixture
def two_lanes(monkeypatch):
    """Two lanes (CPU replicas sharing the model), as a host with one card gets."""
    monkeypatch.setattr(embed_flow, "shard_lanes", lambda *args, **kwargs: [None, None])


def test_two_lanes_write_what_one_lane_writes(prefect_harness, tmp_path, tiny_bert, source, monkeypatch):
    one = run(source, tmp_path / "one", tiny_bert, shard_rows=15)
    monkeypatch.setattr(embed_flow, "shard_lanes", lambda *args, **kwargs: [None, None])
    real, threads = shard_steps.read_text, {}

    def seen(job):
        threads[job.spec.index] = threading.current_thread().name
        return real(job)

    monkeypatch.setattr(shard_steps, "read_text", seen)
    two = run(source, tmp_path / "two", tiny_bert, shard_rows=15)
    assert len(set(threads.values())) == 2 and all(t.startswith("bertflow-lane") for t in threads.values())
    assert [s.name for s in two.shards] == [s.name for s in one.shards] == [f"part-{i:05d}.parquet" for i in range(6)]
    assert [s.rows for s in two.shards] == [s.rows for s in one.shards]
    a, b = pl.read_parquet(tmp_path / "one" / "part-*.parquet"), pl.read_parquet(tmp_path / "two" / "part-*.parquet")
    assert b["id"].to_list() == a["id"].to_list() == list(range(90))
    assert np.abs(a["embedding"].to_numpy() - b["embedding"].to_numpy()).max() < 1e-6
    assert two.totals.model_dump(exclude={"seconds"}) == one.totals.model_dump(exclude={"seconds"})


def test_a_failing_shard_stops_the_lanes_and_a_rerun_completes_the_rest(
    prefect_harness, tmp_path, tiny_bert, source, two_lanes, monkeypatch, caplog
):
    real = shard_steps.read_text

    def broken(job):
        if job.spec.index == 1:
            raise InputError("injected: shard 1 cannot be read")
        time.sleep(3)  # the other lane is still on shard 0 when shard 1 fails
        return real(job)

    monkeypatch.setattr(shard_steps, "read_text", broken)
    dest = tmp_path / "out"
    with pytest.raises(InputError, match="injected: shard 1 cannot be read"):
        run(source, dest, tiny_bert, shard_rows=15)
    # The lane on shard 0 finished it (and the run said it waited for it); neither lane took shards 2 to 5.
    assert sorted(p.name for p in dest.glob("part-*.parquet")) == ["part-00000.parquet"]
    waited = "part-00001.parquet failed: waiting for the shards in flight (part-00000.parquet) to finish"
    assert any(r.getMessage().startswith(waited) for r in caplog.records)
    assert json.loads((dest / "_manifest.json").read_text())["status"] == "running"

    monkeypatch.setattr(shard_steps, "read_text", real)
    again = run(source, dest, tiny_bert, shard_rows=15)
    assert [s.resumed for s in again.shards] == [True] + [False] * 5
    rows = pl.read_parquet(dest / "part-*.parquet")
    assert rows["id"].to_list() == list(range(90))  # every row once, in order: nothing lost, nothing twice
    clean = run(source, tmp_path / "clean", tiny_bert, shard_rows=15)
    assert np.abs(rows["embedding"].to_numpy() - pl.read_parquet(tmp_path / "clean" / "part-*.parquet")[
        "embedding"
    ].to_numpy()).max() < 1e-6  # fmt: skip
    assert clean.totals.rows == again.totals.rows == 90


def test_a_run_of_several_shards_skips_written_parts_and_goes_on_past_a_refused_one(
    prefect_harness, tmp_path, tiny_bert, source, monkeypatch
):
    """`embed-shard` with `more` (what `--shards-per-run` sends a worker), in this process, in two lanes."""
    jobs = []
    real_lanes = embed_flow.run_in_lanes

    def keep_jobs(pending, *args):
        jobs.extend(pending)
        return real_lanes(pending, *args)

    monkeypatch.setattr(embed_flow, "run_in_lanes", keep_jobs)
    dest = tmp_path / "out"
    run(source, dest, tiny_bert, shard_rows=15)
    before = {p.name: pl.read_parquet(p) for p in dest.glob("part-*.parquet")}
    for name in ("part-00001.parquet", "part-00003.parquet", "part-00004.parquet"):
        (dest / name).unlink()
    kept = (dest / "part-00002.parquet").stat().st_mtime_ns

    real = shard_steps.read_text

    def refuse_three(job):
        if job.spec.index == 3:
            raise InputError("injected: shard 3 has bad input")
        return real(job)

    monkeypatch.setattr(shard_steps, "read_text", refuse_three)
    monkeypatch.setattr(shard_flow, "shard_lanes", lambda *args, **kwargs: [None, None])
    with pytest.raises(InputError, match="injected: shard 3 has bad input"):
        embed_shard(jobs[0], more=jobs[1:])
    assert not (dest / "part-00003.parquet").exists()  # refused; 4, after it, was embedded all the same
    assert (dest / "part-00002.parquet").stat().st_mtime_ns == kept  # written before: not embedded again
    for name in ("part-00001.parquet", "part-00004.parquet"):
        assert pl.read_parquet(dest / name)["id"].to_list() == before[name]["id"].to_list()
        assert (
            np.abs(pl.read_parquet(dest / name)["embedding"].to_numpy() - before[name]["embedding"].to_numpy()).max()
            < 1e-6
        )


def test_two_lanes_asking_for_a_model_at_once_load_it_once_and_count_it_once(tmp_path, tiny_bert):
    """The second lane waits for the first's load and is counted warm: one part pays for the load."""
    copy = shutil.copytree(tiny_bert, tmp_path / "model")  # a path no earlier test loaded
    config = resolve_config(EmbedConfig(model=str(copy), device="cpu"))
    start, got = threading.Barrier(2), []

    def lane() -> None:
        start.wait()
        got.append(loaded_encoder(config))

    threads = [threading.Thread(target=lane) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seconds > 0 for _, seconds in got) == [False, True]
    assert got[0][0].model is got[1][0].model  # one copy of the weights, shared
    assert loaded_encoder(config)[1] == 0.0


def interrupt_lanes(signals: tuple[signal.Signals, ...], caplog) -> tuple[list, list[str], BaseException]:
    """Two lanes on four shards; once both are on a shard, `signals` are sent one by one, each after the
    run said something of the last; then the two shards are let finish. What ended (in order), what the
    run logged, and what it raised."""
    jobs = [SimpleNamespace(spec=SimpleNamespace(index=i, name=f"part-{i:05d}.parquet")) for i in range(4)]
    both_running, release, ended = threading.Barrier(3), threading.Event(), []
    said = threading.Semaphore(0)  # one release per warning the run logs

    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.release()

    def run_shard(job):
        if job.spec.index < 2:
            both_running.wait(10)
            release.wait(10)
        ended.append(job.spec.index)
        return job.spec.index

    def send() -> None:
        both_running.wait(10)
        for sig in signals:
            os.kill(os.getpid(), sig)
            assert said.acquire(timeout=10)  # the run said so before the next signal
        ended.append("released")
        release.set()

    root = logging.getLogger()  # the run's logger outside a flow run propagates here; last: once all have it
    root.addHandler(handler := Said(logging.WARNING))
    sender = threading.Thread(target=send)
    sender.start()
    try:
        with caplog.at_level("WARNING"), pytest.raises(BaseException) as raised:
            run_in_lanes(jobs, [None, None], run_shard, lambda job, result: None)
    finally:
        root.removeHandler(handler)
        sender.join()
    return ended, [r.getMessage() for r in caplog.records], raised.value


BOTH = "part-00000.parquet, part-00001.parquet"


def test_ctrl_c_then_sigterm_wait_for_the_shards_in_flight_before_the_lease_can_go(caplog):
    """Ctrl-C, then a plain `kill`: the interrupt reaches the caller (who then releases DEST's lease) only
    once no lane writes any more, no lane takes another shard, and the handlers are put back."""
    sigterm = signal.getsignal(signal.SIGTERM)
    ended, said, raised = interrupt_lanes((signal.SIGINT, signal.SIGTERM), caplog)
    assert isinstance(raised, KeyboardInterrupt)
    assert ended[0] == "released" and sorted(ended[1:]) == [0, 1]  # both shards in flight ended first; 2, 3 never began
    assert said[0].startswith(f"interrupted (SIGINT): waiting for the shards in flight ({BOTH}) to finish")
    assert said[1].startswith(f"still waiting for the shards in flight ({BOTH}); to stop at once, kill -9")
    assert signal.getsignal(signal.SIGTERM) is sigterm and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_whose_handler_does_not_raise_still_fails_the_run_with_the_shards_left(caplog):
    """An embedding application's own SIGINT handler that only sets a flag: it gets the signal once the
    lanes stop, and the run fails in one line naming what is left instead of returning half its results."""
    flags: list[int] = []

    def flag(signum, frame):
        flags.append(signum)

    before = signal.signal(signal.SIGINT, flag)
    try:
        ended, said, raised = interrupt_lanes((signal.SIGINT,), caplog)
        assert signal.getsignal(signal.SIGINT) is flag
    finally:
        signal.signal(signal.SIGINT, before)
    assert flags == [signal.SIGINT] and sorted(ended[1:]) == [0, 1]
    assert isinstance(raised, RunFailedError)
    assert (
        str(raised)
        == "interrupted (SIGINT) with 2 shard(s) not run: run again to embed them (the finished parts are kept)"
    )
