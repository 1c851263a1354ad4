"""What a part records of the device that made it, and what a run does with it (issue 17, points 3, 6, 7).

Padding and out-of-memory splits go into each part's footer and the manifest; a half-precision DEST
holds parts of one kind of device (a resume or a --reuse of another kind is refused, not mixed); `--device auto` that falls back to the
CPU where CUDA was expected says so. The CPU is the only device here: another kind's part is made by
rewriting a real part's footer as a GPU host would have written it.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from bertflow.config import EmbedConfig
from bertflow.errors import HostError, InputError, ReuseMismatchError
from bertflow.flows.embed import embed_dataset
from bertflow.io.manifest import PART_METADATA_KEY, PartInfo, Piece, ShardJob, ShardResult, ShardSpec
from bertflow.model.encoder import Encoder
from bertflow.model.loading import cuda_expected
from bertflow.pipeline import devices
from bertflow.pipeline.report import manifest_markdown
from bertflow.text.batching import token_budget_batches
from tests.conftest import resolved_config, write_rows
from tests.flows.test_embed_flow import MAX_LEN, run

GPU = "cuda:0 (NVIDIA H200)"


@pytest.fixture
def source(tmp_path, sample_texts):
    rows = [{"id": i, "text": t} for i, t in enumerate(sample_texts[:60])]
    return write_rows(tmp_path / "in.parquet", rows)


def _claim_device(part, label: str) -> None:
    """Rewrite a part's footer as if `label` had embedded it (its rows unchanged)."""
    info = PartInfo.model_validate_json(pl.read_parquet_metadata(part)[PART_METADATA_KEY])
    table = pl.read_parquet(part)
    table.write_parquet(part, metadata={PART_METADATA_KEY: info.model_copy(update={"device": label}).model_dump_json()})


def _manifest(dest) -> dict:
    return json.loads((dest / "_manifest.json").read_text())


def test_padding_is_measured_per_shard(prefect_harness, tmp_path, tiny_bert, source):
    dest = tmp_path / "out"
    manifest = run(source, dest, tiny_bert, shard_rows=25, batch_tokens=64)
    for shard in manifest.shards:
        lengths = pl.read_parquet(dest / shard.name)["n_tokens"].to_numpy()
        batches = token_budget_batches(lengths, 64)
        assert shard.padded_tokens == sum(len(b) * lengths[b].max() for b in batches)
        assert shard.padded_tokens >= shard.tokens
        assert shard.oom_splits == 0 and shard.batch_budget is None
        assert shard.gpu_busy is None  # sampled on CUDA only
    markdown = manifest_markdown(manifest, str(dest), {"shards_done": 3, "shards_resumed": 0, "documents_per_s": 1})
    ratio = sum(s.padded_tokens for s in manifest.shards) / manifest.totals.tokens
    assert f"| padding | {ratio:.2f} token positions computed per real token |" in markdown


def test_out_of_memory_splits_are_recorded_and_change_no_vector(
    prefect_harness, tmp_path, tiny_bert, source, monkeypatch
):
    clean = run(source, tmp_path / "clean", tiny_bert, shard_rows=30, batch_tokens=256, precision="fp32")
    limit = 100  # padded tokens a pass may hold before the "device" runs out of memory
    real = Encoder._hidden_states

    def capped(self, input_ids, attention, need_all):
        if input_ids.numel() > limit and len(input_ids) > 1:
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, input_ids, attention, need_all)

    monkeypatch.setattr(Encoder, "_hidden_states", capped)
    dest = tmp_path / "capped"
    split = run(source, dest, tiny_bert, shard_rows=30, batch_tokens=256, precision="fp32")
    for shard in split.shards:
        assert shard.oom_splits >= 1
        assert shard.batch_budget is not None and shard.batch_budget < 256
    on_disk = _manifest(dest)["shards"]
    assert [s["batch_budget"] for s in on_disk] == [s.batch_budget for s in split.shards]
    a = pl.read_parquet(tmp_path / "clean" / "*.parquet")
    b = pl.read_parquet(dest / "*.parquet")
    assert a["id"].to_list() == b["id"].to_list()
    assert np.abs(a["embedding"].to_numpy() - b["embedding"].to_numpy()).max() < 1e-5
    assert clean.totals.model_dump(exclude={"seconds"}) == split.totals.model_dump(exclude={"seconds"})


def test_bf16_resume_on_another_kind_of_device_is_refused_touching_nothing(
    prefect_harness, tmp_path, tiny_bert, source
):
    dest = tmp_path / "out"
    first = run(source, dest, tiny_bert, shard_rows=20, precision="bf16")
    assert [s.device for s in first.shards] == ["cpu"] * 3 and first.device == "cpu"
    _claim_device(dest / "part-00001.parquet", GPU)  # as if a GPU host had embedded it
    before = {p.name: p.read_bytes() for p in dest.iterdir()}

    with pytest.raises(InputError) as refused:
        run(source, dest, tiny_bert, shard_rows=20, precision="bf16", device="auto")  # auto, in this process: cpu
    assert str(refused.value) == (
        "DEST holds 1 finished parts embedded in bf16 on cuda (part-00001.parquet...), and this run embeds on "
        "cpu, whose bf16 vectors differ: run it on a cuda host, or pass --overwrite to embed all of DEST again on cpu"
    )
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before  # no part removed, the manifest as it was

    again = embed_dataset(
        str(source), str(dest), EmbedConfig(model=str(tiny_bert), max_length=MAX_LEN, shard_rows=20,
                                            precision="bf16", device="cpu"), overwrite=True,
    )  # fmt: skip
    assert not any(s.resumed for s in again.shards) and again.device == "cpu"


def test_reuse_of_an_output_made_on_another_kind_of_device_is_a_mismatch(prefect_harness, tmp_path, tiny_bert, source):
    """Copied rows would be another kind's bf16 numbers among this run's: refused like any other mismatch,
    also under `--device auto` when the shards run in this process (its kind is known)."""
    earlier = tmp_path / "earlier"
    run(source, earlier, tiny_bert, shard_rows=20, precision="bf16")
    manifest = _manifest(earlier)  # as a GPU host's run would have written it (the parts' sha256 unchanged)
    for shard in manifest["shards"]:
        shard["device"] = GPU
    (earlier / "_manifest.json").write_text(json.dumps(manifest))
    config = EmbedConfig(model=str(tiny_bert), max_length=MAX_LEN, shard_rows=20, precision="bf16", device="auto")
    with pytest.raises(ReuseMismatchError, match=r"was embedded on cuda in bf16, this run embeds on cpu"):
        embed_dataset(str(source), str(tmp_path / "new"), config, reuse=[str(earlier)])
    assert not (tmp_path / "new").exists()
    skipped = embed_dataset(str(source), str(tmp_path / "new"), config, reuse=[str(earlier)], reuse_mismatch="ignore")
    assert skipped.reuse is not None and skipped.reuse.reused == 0 and skipped.device == "cpu"


def test_fp32_keeps_parts_from_any_device(prefect_harness, tmp_path, tiny_bert, source):
    dest = tmp_path / "out"
    run(source, dest, tiny_bert, shard_rows=20, precision="fp32")
    _claim_device(dest / "part-00001.parquet", GPU)
    again = run(source, dest, tiny_bert, shard_rows=20, precision="fp32")
    assert all(s.resumed for s in again.shards)  # fp32 agrees across devices within 1e-5: nothing redone
    assert again.shards[1].device == GPU and again.device == "cpu, cuda"


def test_auto_falling_back_to_cpu_where_cuda_was_expected_says_so(
    prefect_harness, tmp_path, tiny_bert, source, monkeypatch, caplog
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a GPU host whose GPU torch cannot use
    manifest = run(source, tmp_path / "out", tiny_bert, shard_rows=30, device="auto")
    note = "--device auto fell back to cpu: CUDA was expected (CUDA_VISIBLE_DEVICES=0) but torch sees no usable device"
    assert manifest.device == f"cpu ({note})"
    assert all(s.device == f"cpu ({note})" for s in manifest.shards)
    assert any(note in r.getMessage() for r in caplog.records)

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "all")  # what CUDA base images set on GPU and CPU hosts alike
    if cuda_expected() is None:  # this machine shows no other sign of a GPU: a plain CPU run
        assert run(source, tmp_path / "plain", tiny_bert, shard_rows=30, device="auto").device == "cpu"


def _done(*labels: str | None) -> dict[str, ShardResult]:
    return {
        f"part-{i:05d}.parquet": ShardResult(
            name=f"part-{i:05d}.parquet",
            pieces=(),
            documents=1,
            rows=1,
            rejected=0,
            tokens=1,
            truncated=0,
            seconds=1.0,
            sha256="",
            device=label,
        )  # fmt: skip
        for i, label in enumerate(labels)
    }


def test_workers_under_auto_are_bound_to_the_kind_dest_already_has():
    bf16 = resolved_config(precision="bf16", device="auto")
    assert devices.keep_done(bf16, _done(GPU, "cuda:1 (NVIDIA H200)", None), local=False) == "cuda"
    assert devices.keep_done(bf16, _done(), local=False) is None  # a fresh DEST: any kind of worker may start it
    assert devices.keep_done(bf16, _done(GPU, "cpu"), local=False) is None  # mixed: `check_one_kind` refuses it
    explicit = bf16.model_copy(update={"device": "cpu"})
    with pytest.raises(InputError, match=r"DEST holds 2 finished parts embedded in bf16 on cuda \(part-00000"):
        devices.keep_done(explicit, _done(GPU, "cpu", "cuda:1 (NVIDIA H200)"), local=False)
    assert devices.keep_done(explicit, _done("cpu", None), local=False) == "cpu"  # a part of bertflow 0.3: any
    assert devices.keep_done(resolved_config(precision="fp32", device="cpu"), _done(GPU), local=True) is None

    job = ShardJob(spec=_spec(), config=bf16, dest="s3://lake/out", fingerprint="x", device_kind="cuda")
    with pytest.raises(HostError, match=r"holds parts embedded on cuda in bf16, and this host would embed on cpu"):
        devices.check_host(job)
    assert devices.check_host(job.model_copy(update={"device_kind": "cpu"})) == "cpu"


def test_a_half_precision_dest_of_two_kinds_is_not_declared_complete():
    bf16 = resolved_config(precision="bf16")
    mixed = list(_done(GPU, "cpu", "cpu").values())
    with pytest.raises(
        InputError, match=r"cpu: 2 parts .*cuda: 1 parts .*--overwrite and --device cpu or --device cuda"
    ):
        devices.check_one_kind(bf16, mixed)
    devices.check_one_kind(resolved_config(precision="fp32"), mixed)  # fp32: fine
    assert devices.manifest_device(mixed, "cpu") == "cpu, cuda"
    assert devices.manifest_device(list(_done(None).values()), "cpu") == "cpu"  # parts of bertflow 0.3


def _spec() -> ShardSpec:
    return ShardSpec(index=0, count=1, pieces=(Piece(file="x", format="parquet", start=0, stop=1),), id_kind="int")


def test_auto_on_a_gpu_host_whose_gpu_fails_refuses_to_embed_the_gpus_dest_on_cpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    bf16 = resolved_config(precision="bf16", device="auto")
    with pytest.raises(HostError, match=r"fell back to cpu.*DEST holds 1 finished parts .*: fix this host's GPU"):
        devices.keep_done(bf16, _done(GPU, "cpu"), local=True)
    with pytest.raises(InputError, match=r"pass --overwrite to embed all of DEST again on cpu"):
        devices.keep_done(bf16.model_copy(update={"device": "cpu"}), _done(GPU, "cpu"), local=True)
    assert devices.manifest_device(list(_done(GPU, None).values()), "cpu") == "cuda, unknown"
