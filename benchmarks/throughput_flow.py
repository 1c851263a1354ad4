"""throughput.py's rows 3 and 4: the whole `embed_dataset` flow, local and S3, on Prefect's temporary
server started beforehand; between them the engine on the whole corpus at once, as the flow's one
shard sees it."""

from __future__ import annotations

import time
from collections.abc import Callable

from common import CpuMeter, say
from corpus import write_jsonl
from s3server import moto_s3
from throughput_report import Bench


def flow_rows(bench: Bench, encoders: dict, outputs: dict, ref) -> dict:
    """Rows 3 and 4, recorded in `bench`; returns the Prefect server's timings."""
    import polars as pl
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    from bertflow.config import DEFAULT_MODEL, EmbedConfig

    args, work = bench.args, bench.work
    server = SubprocessASGIServer()  # the instance Prefect itself uses when PREFECT_API_URL is unset
    t = time.perf_counter()
    server.start()
    server_start = time.perf_counter() - t
    first_flow = warm_up(bench)
    say(f"Prefect temporary server started in {server_start:.1f}s; a first 32-row flow took {first_flow:.1f}s")

    flow_config = EmbedConfig(
        model=args.model or DEFAULT_MODEL, device=args.device, precision="fp32", max_length=args.max_length
    )
    pids = [server.server_process.pid]
    flow_row(
        bench,
        flow_config,
        outputs["fp32"],
        "bertflow embed flow, local JSONL -> local Parquet",
        (str(bench.src), str(work / "out")),
        lambda: pl.read_parquet(work / "out" / "part-*.parquet"),
        pids,
    )
    whole_corpus_row(bench, encoders["fp32"], ref)
    s3_flow_row(bench, flow_config, outputs["fp32"], pids)

    APILogWorker.drain_all(timeout=10)  # the runs' last logs and events, before their server goes
    EventsWorker.drain_all(timeout=10)
    t = time.perf_counter()
    server.stop()
    server_stop = time.perf_counter() - t
    return {"start_s": server_start, "first_flow_s": first_flow, "stop_s": server_stop}


def warm_up(bench: Bench) -> float:
    """Seconds of a first 32-row flow (Prefect's first run pays for its set-up)."""
    from bertflow.config import DEFAULT_MODEL, EmbedConfig
    from bertflow.flows.embed import embed_dataset

    args, warm = bench.args, bench.work / "warm.jsonl"
    write_jsonl(warm, bench.rows_in[:32])
    t = time.perf_counter()
    embed_dataset(
        str(warm),
        str(bench.work / "warm-out"),
        EmbedConfig(model=args.model or DEFAULT_MODEL, device=args.device, max_length=args.max_length),
    )
    return time.perf_counter() - t


def flow_row(
    bench: Bench,
    flow_config,
    reference,
    name: str,
    source_dest: tuple[str, str],
    read_back: Callable,
    server_pids: list[int],
) -> None:
    """One flow from source to dest, its output read back and compared with the engine's fp32 `reference`."""
    from bertflow.flows.embed import embed_dataset

    say(f"{name} ...")
    with CpuMeter(*server_pids) as m:
        manifest = embed_dataset(*source_dest, flow_config)
    frame = read_back()
    by_id = dict(zip(frame["id"].to_list(), range(len(frame))))
    emb = frame["embedding"].to_numpy()[[by_id[r["id"]] for r in bench.rows_in]]
    helpers = dict(zip(["prefect_server_cpu_s", "moto_server_cpu_s"], m.helpers_cpu))
    extra = {
        "shards": len(manifest.shards),
        "shard_seconds": sum(s.seconds for s in manifest.shards),
        "flow_cpu_s": m.self_cpu,
        **helpers,
    }
    counts = (manifest.totals.rows, manifest.totals.tokens)
    bench.add(name, "fp32", m.seconds, m.others_cores, (emb, reference, "engine fp32"), extra, counts)
    say(
        f"    shards took {extra['shard_seconds']:.1f}s of {m.seconds:.1f}s; CPU seconds: this process "
        f"{m.self_cpu:.1f}, "
        + ", ".join(f"{k.removesuffix('_cpu_s').replace('_', ' ')} {v:.1f}" for k, v in helpers.items())
    )


def whole_corpus_row(bench: Bench, enc, ref) -> None:
    say("engine fp32 on the whole corpus at once ...")
    texts, config = bench.texts, bench.config
    with CpuMeter() as m:
        whole = enc.embed(enc.tokenizer.tokenize(texts), pooling=config.pooling, normalize_output=config.normalize)
    name = "bertflow engine, whole corpus at once (the flows' reference)"
    bench.add(name, "fp32", m.seconds, m.others_cores, (whole, ref, "sentence-transformers"))


def s3_flow_row(bench: Bench, flow_config, reference, pids: list[int]) -> None:
    """The flow from and to S3: moto's server in a subprocess on localhost."""
    import polars as pl

    with moto_s3() as moto:
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        fs.put(str(bench.src), "bench/src/docs.jsonl")

        def read_s3():
            return pl.concat([pl.read_parquet(fs.cat(p)) for p in sorted(fs.glob("bench/out/part-*.parquet"))])

        flow_row(
            bench,
            flow_config,
            reference,
            "bertflow embed flow, S3 JSONL -> S3 Parquet (moto)",
            ("s3://bench/src/docs.jsonl", "s3://bench/out/"),
            read_s3,
            pids + [moto.pid],
        )
