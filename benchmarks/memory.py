"""Peak memory of `bertflow embed` on JSONL sources of growing size: it must not grow with the corpus.

What it does, for each size in --rows (default 100,000 and 1,000,000):

1. builds a tiny BERT (random weights, 2 layers, hidden 32, safetensors) with the real tokenizer
   of the bundled all-MiniLM-L6-v2, in a temporary directory;
2. writes a JSONL source of that many rows: unique string ids, texts of 1-4 English sentences
   drawn (seeded) from the docstrings of data/sample/docs.jsonl;
3. runs the installed console script, `bertflow embed SOURCE DEST --model TINY`, as a user would
   (Prefect's temporary server starts as its child process; a fresh PREFECT_HOME per run so
   every run starts from an empty database);
4. samples, every --interval seconds, the RSS of the bertflow process alone and of its whole
   process tree (bertflow + every descendant, summed), and how many parts DEST holds;
5. runs `bertflow verify DEST --source SOURCE` on the result (sampled the same way).

Then it writes benchmarks/results/memory.md and memory.json and prints the table.

    .venv/bin/python benchmarks/memory.py                    # 100,000 and 1,000,000 rows
    .venv/bin/python benchmarks/memory.py --quick            # 10,000 and 100,000 rows
    .venv/bin/python benchmarks/memory.py --rows 50000,500000 --shard-rows 20000

Summed RSS counts pages shared between processes (libraries, copy-on-write) once per process,
so the tree figure is an upper bound of what the run really holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import BERTFLOW, MB, QUIET_ENV, RESULTS, git_state, mib, write_results
from corpus import build_tiny_bert, sentence_pool, write_source
from memory_report import downsample, growth, planning_peak, render
from sampling import SAMPLER, Sampled, run_sampled

TARGET_BYTES = 2 * 10**9  # the target: under 2 GB for a million rows


def parse_rows(value: str) -> list[int]:
    try:
        rows = [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError:
        msg = f"--rows {value!r}: give comma-separated integers, e.g. 100000,1000000"
        raise argparse.ArgumentTypeError(msg) from None
    if not rows or min(rows) < 1:
        raise argparse.ArgumentTypeError("--rows: give at least one positive row count")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rows",
        type=parse_rows,
        default=[100_000, 1_000_000],
        help="comma-separated source sizes (default 100000,1000000)",
    )
    ap.add_argument("--quick", action="store_true", help="10,000 and 100,000 rows (overrides --rows)")
    ap.add_argument("--shard-rows", type=int, default=None, help="pass --shard-rows N to bertflow (default: its own)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between RSS samples (default 0.2)")
    ap.add_argument("--no-verify", action="store_true", help="skip `bertflow verify DEST --source SOURCE`")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep model, sources and outputs here (default: a temporary directory, removed)",
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="where memory.md and memory.json go")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="re-read RESULTS/memory.json (its timelines), recompute the analysis, rewrite memory.md",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        report = json.loads((args.results / "memory.json").read_text())
        for r in report["runs"]:
            r["embedding_phase"] = growth([tuple(t) for t in r["timeline"]], r["shards"])
        write_results(args.results, "memory", report, md := render(report))
        print(md)
        return 0
    sizes = [10_000, 100_000] if args.quick else args.rows

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bertflow-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, sizes, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _run(args, sizes: list[int], work: Path) -> int:
    model = work / "tiny-bert"
    if not (model / "model.safetensors").exists():
        model.mkdir(exist_ok=True)
        build_tiny_bert(model)
    pool = sentence_pool()
    print(f"tiny BERT in {model}; {len(pool):,} distinct sentences to draw texts from", flush=True)

    extra = ["--shard-rows", str(args.shard_rows)] if args.shard_rows else []
    runs = []
    for rows in sizes:
        entry = measure(args, rows, work, model, pool, extra)
        if entry is None:
            return 1
        runs.append(entry)

    report = {
        "benchmark": "memory",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "git": git_state(),
        "model": "tiny BERT: 2 layers, hidden 32, random weights, all-MiniLM-L6-v2 tokenizer",
        "command": "bertflow embed SOURCE DEST --model TINY --overwrite" + (" " + " ".join(extra) if extra else ""),
        "interval_s": args.interval,
        "sampler": SAMPLER,
        "target_bytes": TARGET_BYTES,
        "runs": runs,
    }
    md = render(report)
    write_results(args.results, "memory", report, md)
    print("\n" + md)
    return 0


def measure(args, rows: int, work: Path, model: Path, pool: list[str], extra: list[str]) -> dict | None:
    """Embed (and verify) a source of `rows` rows; its entry in memory.json, or None if embed failed."""
    source = work / f"source-{rows}.jsonl"
    dest = work / f"out-{rows}"
    t0 = time.perf_counter()
    src_info = write_source(source, rows, pool)
    print(
        f"\n{rows:,} rows: source {src_info['bytes'] / MB:,.1f} MiB written in "
        f"{time.perf_counter() - t0:.1f}s; embedding ...",
        flush=True,
    )
    home = work / f"prefect-home-{rows}"
    shutil.rmtree(home, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), **QUIET_ENV)
    argv = [BERTFLOW, "embed", str(source), str(dest), "--model", str(model), "--overwrite", *extra]
    run = run_sampled(argv, env, work / f"embed-{rows}.log", args.interval, dest)
    if run.returncode != 0:
        print((work / f"embed-{rows}.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        print(f"bertflow embed failed (exit {run.returncode})", file=sys.stderr)
        return None
    entry = embed_entry(rows, src_info, run, json.loads((dest / "_manifest.json").read_text()))
    print(
        f"  {rows:,} rows in {run.wall_s:,.1f}s ({rows / run.wall_s:,.0f} rows/s, {entry['shards']} shards); "
        f"peak RSS tree {mib(run.peak_tree)}, bertflow process {mib(run.peak_process)}",
        flush=True,
    )
    if not args.no_verify:
        entry["verify"] = verify(source, dest, env, work / f"verify-{rows}.log", args.interval)
    if args.workdir is None:  # keep the disk footprint to one size at a time
        source.unlink()
        shutil.rmtree(dest, ignore_errors=True)
    return entry


def embed_entry(rows: int, src_info: dict, run: Sampled, manifest: dict) -> dict:
    totals = manifest["totals"]
    shards = len(manifest["shards"])
    shard_s = sum(s["seconds"] for s in manifest["shards"])
    return {
        "rows": rows,
        "source": src_info,
        "shard_rows": manifest["config"]["shard_rows"],
        "shards": shards,
        "embedded": totals["rows"],
        "skipped": totals["rejected"],  # the key the recorded results (memory.json) use
        "tokens": totals["tokens"],
        "dimension": next(iter(manifest["config"]["dimensions"].values())),
        "device": manifest["device"],
        "wall_s": round(run.wall_s, 1),
        "flow_s": totals["seconds"],
        # Time inside embed_shard bodies vs the rest of the flow (planning, Prefect's per-subflow
        # bookkeeping between shards, finalize): where the wall time goes.
        "shard_s": round(shard_s, 1),
        "outside_shards_per_shard_s": round((totals["seconds"] - shard_s) / max(shards, 1), 2),
        "load_avg_mean": round(sum(run.load) / max(len(run.load), 1), 2),
        "rows_per_s": round(rows / run.wall_s, 1),
        "peak_rss_tree": run.peak_tree,
        "peak_rss_tree_at_s": run.peak_tree_at_s,
        "peak_rss_process": run.peak_process,
        "peak_rss_children": run.peak_children,
        "peak_rss_process_before_first_part": planning_peak(run.timeline),
        "embedding_phase": growth(run.timeline, shards),
        "samples": run.samples,
        "timeline": downsample(run.timeline),
    }


def verify(source: Path, dest: Path, env: dict, log: Path, interval: float) -> dict:
    """`bertflow verify DEST --source SOURCE`, sampled like the embed run."""
    vrun = run_sampled([BERTFLOW, "verify", str(dest), "--source", str(source)], env, log, interval)
    vlog = log.read_text(errors="replace").strip()
    print(
        f"  verify: {'OK' if vrun.returncode == 0 else 'FAILED'} in {vrun.wall_s:.1f}s, "
        f"peak RSS {mib(vrun.peak_process)}",
        flush=True,
    )
    if vrun.returncode != 0:
        print(vlog[-2000:], file=sys.stderr)
    return {
        "ok": vrun.returncode == 0,
        "exit": vrun.returncode,
        "wall_s": round(vrun.wall_s, 1),
        "peak_rss_process": vrun.peak_process,
        "output": " ".join(vlog.split())[-400:],
    }


if __name__ == "__main__":
    sys.exit(main())
