"""Incremental runs (`--reuse`): what a nightly run costs when 1% of the texts changed.

Part 1, speed (the bundled all-MiniLM-L6-v2, CPU): day 1 of N rows (default 200,000) embedded in
full; day 2 = day 1 with 1% of texts changed, 0.5% of rows added and 0.5% deleted, embedded with
`--reuse` day 1. Reports the ratio of the wall times, the peak RSS of both, and checks the output:
every reused row bit-identical to day 1, every re-embedded row within 1e-5 of a fresh embed of it.

Part 2, memory at scale (tiny BERT): a day 1 of 1,000,000 rows written by bertflow's own writers
with made-up vectors (the lookup never reads a vector it does not copy), then day 2 with `--reuse`;
and a 100,000-row day 2 against a 100,000-row and a 1,000,000-row day 1: peak RSS must not grow
with the earlier output.

    python benchmarks/incremental.py [--rows 200000] [--big-rows 1000000] [--skip-speed] [--skip-memory]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
from common import BERTFLOW, MB, QUIET_ENV, RESULTS, git_state, say, table, write_results
from corpus import build_tiny_bert, sentence_pool
from sampling import run_sampled

CHANGED, ADDED, DELETED = 0.01, 0.005, 0.005


def day1_rows(n: int, seed: int = 0) -> list[dict]:
    """Short texts (about 15 tokens): the first 8-14 words of docstring sentences."""
    rng, pool = random.Random(seed), sentence_pool()
    return [{"id": f"doc-{i:07d}", "text": " ".join(rng.choice(pool).split()[: rng.randint(8, 14)])} for i in range(n)]


def day2_rows(day1: list[dict], seed: int = 1) -> tuple[list[dict], set[str]]:
    """Day 1 with texts changed, rows deleted and rows added; and the ids whose vector must be new."""
    rng = random.Random(seed)
    n = len(day1)
    gone = set(rng.sample(range(n), int(n * DELETED)))
    edit = set(rng.sample(sorted(set(range(n)) - gone), int(n * CHANGED)))
    rows, fresh = [], set()
    for i, r in enumerate(day1):
        if i in gone:
            continue
        if i in edit:
            r = {"id": r["id"], "text": r["text"] + " (revised)"}
            fresh.add(r["id"])
        rows.append(r)
    for j in range(int(n * ADDED)):
        rows.append({"id": f"new-{j:07d}", "text": day1[rng.randrange(n)]["text"] + " (new)"})
        fresh.add(rows[-1]["id"])
    return rows, fresh


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w") as f:
        for k in range(0, len(rows), 50_000):
            f.write("".join(json.dumps(r) + "\n" for r in rows[k : k + 50_000]))
    return path


def embed(work: Path, name: str, source: Path, dest: Path, model: str, *extra: str, api: str | None = None):
    """`bertflow embed` as a subprocess, its tree's RSS sampled; against the server at `api`, or Prefect's
    temporary one (then the tree includes it)."""
    env = {**os.environ, **QUIET_ENV, "PREFECT_HOME": str(work / f"prefect-{name}")}
    if api:
        env["PREFECT_API_URL"] = api
    argv = [BERTFLOW, "embed", str(source), str(dest), "--model", model, "--device", "cpu", *extra]
    sampled = run_sampled(argv, env, work / f"{name}.log", 0.2, dest)
    if sampled.returncode != 0:
        raise SystemExit(f"{name} failed:\n{(work / f'{name}.log').read_text()[-3000:]}")
    manifest = json.loads((dest / "_manifest.json").read_text())
    say(f"  {name}: {sampled.wall_s:.1f} s, peak RSS {sampled.peak_tree / MB:,.0f} MiB")
    return sampled, manifest


def vectors(dest: Path) -> pl.DataFrame:
    return pl.read_parquet(dest / "part-*.parquet", columns=["id", "text_hash", "embedding"])


@contextlib.contextmanager
def prefect_server(work: Path):
    """A `prefect server start` of its own on a free port, as nightly runs have one; yields its API URL."""
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **QUIET_ENV, "PREFECT_HOME": str(work / "prefect-server"), "PREFECT_UI_ENABLED": "false"}
    prefect = str(Path(BERTFLOW).with_name("prefect"))
    with open(work / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def speed(work: Path, rows: int) -> dict:
    say(f"part 1: {rows:,} rows, all-MiniLM-L6-v2, against a running Prefect server")
    d1 = day1_rows(rows)
    d2, fresh_ids = day2_rows(d1)
    src1, src2 = write_jsonl(work / "day1.jsonl", d1), write_jsonl(work / "day2.jsonl", d2)
    model = "sentence-transformers/all-MiniLM-L6-v2"
    with prefect_server(work) as api:
        full, m1 = embed(work, "full", src1, work / "out1", model, api=api)
        inc, m2 = embed(work, "incremental", src2, work / "out2", model, "--reuse", str(work / "out1"), api=api)
        # Reference for the re-embedded rows: a fresh run over just them.
        src3 = write_jsonl(work / "fresh.jsonl", [r for r in d2 if r["id"] in fresh_ids])
        embed(work, "fresh-subset", src3, work / "out3", model, api=api)

    a, b, c = vectors(work / "out1"), vectors(work / "out2"), vectors(work / "out3")
    kept = b.filter(~pl.col("id").is_in(list(fresh_ids))).join(a, on="id", suffix="_1")
    reused_identical = bool(
        (kept["text_hash"] == kept["text_hash_1"]).all()
        and np.array_equal(kept["embedding"].to_numpy(), kept["embedding_1"].to_numpy())
    )
    redone = b.filter(pl.col("id").is_in(list(fresh_ids))).join(c, on="id", suffix="_3")
    max_diff = float(np.abs(redone["embedding"].to_numpy() - redone["embedding_3"].to_numpy()).max())
    reuse = m2["reuse"]
    return {
        "rows_day1": len(d1),
        "rows_day2": len(d2),
        "full_s": round(full.wall_s, 1),
        "incremental_s": round(inc.wall_s, 1),
        "full_flow_s": m1["totals"]["seconds"],
        "incremental_flow_s": m2["totals"]["seconds"],
        "incremental_shard_s": round(sum(x["seconds"] for x in m2["shards"]), 1),
        "incremental_model_s": round(sum(x["model_seconds"] for x in m2["shards"]), 1),
        "ratio": round(inc.wall_s / full.wall_s, 4),
        "full_peak_rss_mib": round(full.peak_tree / MB),
        "incremental_peak_rss_mib": round(inc.peak_tree / MB),
        "reused": reuse["reused"],
        "embedded": reuse["embedded"],
        "dropped": reuse["dropped"],
        "seconds_saved": reuse["seconds_saved"],
        "expected": {"embedded": len(fresh_ids), "dropped": len(d1) - (len(d2) - int(rows * ADDED))},
        "reused_bit_identical": reused_identical,
        "reused_rows_checked": kept.height,
        "reembedded_max_abs_diff": max_diff,
        "reembedded_rows_checked": redone.height,
        "full_tokens": m1["totals"]["tokens"],
    }


def fabricate(dest: Path, source: Path, model: Path) -> None:
    """A complete output of `source` as `bertflow embed --model model` lays it out, vectors made up."""
    import hashlib

    from bertflow.config import EmbedConfig
    from bertflow.io import sources
    from bertflow.io.manifest import PartInfo, ShardResult
    from bertflow.io.parts import serialize_part
    from bertflow.io.reuse import text_hashes
    from bertflow.io.schema import part_frame
    from bertflow.model.resolve import resolve_config
    from bertflow.pipeline import dest as dest_
    from bertflow.pipeline.dest import RunTarget

    config = resolve_config(EmbedConfig(model=str(model), device="cpu"))
    plan = sources.plan_shards(str(source), id_column="id", text_column="text", keep=(), shard_rows=config.shard_rows)
    target = RunTarget(str(source), str(dest), config, plan, datetime.now(timezone.utc))
    _, _, jobs = dest_.prepare(target, overwrite=True)
    rng, results = np.random.default_rng(0), []
    for job in jobs:
        frame = sources.read_shard(job.spec, "id", "text", ())
        n = len(frame)
        table_ = part_frame(
            frame, rng.random((n, config.dimension), dtype=np.float32), np.full(n, 16, np.int32),
            np.zeros(n, bool), (), job.spec.id_kind, text_hash=text_hashes(frame["text"].to_list()),
        )  # fmt: skip
        info = PartInfo(fingerprint=job.fingerprint, rows=n, tokens=16 * n, truncated=0, seconds=1.0, model_seconds=1.0)
        data = serialize_part(table_, info)
        (dest / job.spec.name).write_bytes(data)
        results.append(
            ShardResult(
                name=job.spec.name,
                pieces=job.spec.pieces,
                documents=n,
                rows=n,
                rejected=0,
                tokens=16 * n,
                truncated=0,
                seconds=1.0,
                model_seconds=1.0,
                sha256=hashlib.sha256(data).hexdigest(),
            )  # fmt: skip
        )
    dest_.finalize(target, results, 1.0, "cpu")


def memory(work: Path, big: int) -> list[dict]:
    model = build_tiny_bert(work / "tiny-bert")
    small = big // 10
    say(f"part 2: memory, tiny BERT, {big:,} and {small:,} rows")
    d1 = day1_rows(big, seed=2)
    d2, _ = day2_rows(d1, seed=3)
    d2_small, _ = day2_rows(d1[:small], seed=3)
    out = []
    for name, day1, day2 in (
        (f"{big:,} rows against {big:,} earlier", d1, d2),
        (f"{small:,} rows against {small:,} earlier", d1[:small], d2_small),
        (f"{small:,} rows against {big:,} earlier", d1, d2_small),
    ):
        tag = name.split()[0].replace(",", "") + "-" + name.split()[3].replace(",", "")
        prev = work / f"prev-{len(day1)}"
        if not (prev / "_manifest.json").exists():
            prev.mkdir(exist_ok=True)
            fabricate(prev, write_jsonl(work / f"prev-{len(day1)}.jsonl", day1), model)
        src = write_jsonl(work / f"new-{tag}.jsonl", day2)
        sampled, manifest = embed(work, f"mem-{tag}", src, work / f"new-{tag}", str(model), "--reuse", str(prev))
        out.append(
            {
                "run": name,
                "wall_s": round(sampled.wall_s, 1),
                "peak_rss_mib": round(sampled.peak_tree / MB),
                "process_peak_rss_mib": round(sampled.peak_process / MB),
                "reused": manifest["reuse"]["reused"],
                "embedded": manifest["reuse"]["embedded"],
                "dropped": manifest["reuse"]["dropped"],
            }
        )
    return out


def report(s: dict | None, m: list[dict] | None) -> str:
    lines = ["# Incremental runs: day 2 reusing day 1", ""]
    if s:
        lines += [
            f"Day 1: {s['rows_day1']:,} short texts ({s['full_tokens']:,} tokens), all-MiniLM-L6-v2 on 2 CPU cores. "
            f"Day 2: 1% of texts changed, 0.5% rows added, 0.5% deleted ({s['rows_day2']:,} rows), "
            "`bertflow embed --reuse DAY1`.",
            "",
            *table(
                ["run", "wall time", "peak RSS (tree)"],
                "lrr",
                [
                    ["full run, day 1", f"{s['full_s']:,.1f} s", f"{s['full_peak_rss_mib']:,} MiB"],
                    [
                        "incremental run, day 2",
                        f"{s['incremental_s']:,.1f} s",
                        f"{s['incremental_peak_rss_mib']:,} MiB",
                    ],
                ],
            ),
            "",
            f"Ratio incremental / full: **{s['ratio']:.3f}** (goal below 0.1: {'met' if s['ratio'] < 0.1 else 'NOT met'}). "
            f"Both runs against a running Prefect server (`PREFECT_API_URL`), as scheduled runs are; wall time "
            f"counts the whole `bertflow embed` process: start-up (imports, model load) and planning included. "
            f"Inside the flow: {s.get('full_flow_s', 0):,.1f} s against {s.get('incremental_flow_s', 0):,.1f} s; the incremental "
            f"run's shards took {s.get('incremental_shard_s', 0):,.1f} s, {s.get('incremental_model_s', 0):,.1f} s of it in the model.",
            f"Rows reused {s['reused']:,}, embedded {s['embedded']:,} (expected {s['expected']['embedded']:,}), "
            f"ids dropped {s['dropped']:,} (expected {s['expected']['dropped']:,}); "
            f"model time saved, as the manifest estimates it: {s['seconds_saved']:,.0f} s.",
            f"Reused rows bit-identical to day 1: **{'yes' if s['reused_bit_identical'] else 'NO'}** "
            f"({s['reused_rows_checked']:,} rows). Re-embedded rows against a fresh run over just them: "
            f"max abs diff {s['reembedded_max_abs_diff']:.1e} ({s['reembedded_rows_checked']:,} rows; tolerance 1e-5).",
            "",
        ]
    if m:
        lines += [
            "Memory at scale (tiny BERT; day 1 written by bertflow's writers with made-up vectors):",
            "",
            *table(
                ["run", "wall time", "peak RSS (tree)", "bertflow process", "reused", "embedded", "dropped"],
                "lrrrrrr",
                [
                    [
                        r["run"],
                        f"{r['wall_s']:,.1f} s",
                        f"{r['peak_rss_mib']:,} MiB",
                        f"{r['process_peak_rss_mib']:,} MiB",
                        f"{r['reused']:,}",
                        f"{r['embedded']:,}",
                        f"{r['dropped']:,}",
                    ]
                    for r in m
                ],
            ),  # fmt: skip
            "",
        ]
    git = git_state()
    lines.append(
        f"Generated by `benchmarks/incremental.py` on {datetime.now(timezone.utc):%Y-%m-%d} at commit {git['commit'][:7]}."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--big-rows", type=int, default=1_000_000)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bertflow-incremental-") as tmp:
        work = Path(tmp)
        s = None if args.skip_speed else speed(work, args.rows)
        m = None if args.skip_memory else memory(work, args.big_rows)
    kept = args.out / "incremental.json"  # a part skipped keeps its last recorded numbers
    if (s is None or m is None) and kept.exists():
        earlier = json.loads(kept.read_text())
        s, m = s or earlier.get("speed"), m or earlier.get("memory")
    md = report(s, m)
    write_results(args.out, "incremental", {"speed": s, "memory": m}, md)
    print(md)


if __name__ == "__main__":
    main()
