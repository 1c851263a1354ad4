"""`bertflow publish` into LanceDB: publish speed, index build, rerun cost, memory, search latency and recall.

For each size in --rows (default 100,000 and 1,000,000 rows of 384 dimensions):

1. build a genuine DEST as `bertflow embed` lays one out (plan over a Parquet SOURCE, parts with their footer
   fingerprints, `finalize`; `verify_dest` must pass), its vectors a seeded two-level gaussian mixture
   (1,000 topics x 32 subtopics, unit-norm) instead of a model's, so neighbours are structured, not noise;
2. publish it into an empty LanceDB table (`bertflow.pipeline.publish.publish`, index built) in a child
   process: phases timed by wrapping the functions publish() calls, peak RSS from its VmHWM;
3. publish the same DEST again: nothing changed, so no row may be inserted, updated or deleted;
4. query held-out, perturbed mixture points: LanceDB's IVF-PQ index (nprobes 20, refine 10, as `bertflow
   search --db`), LanceDB exact (`bypass_vector_index`) and the flat scan of DEST (`search.scan`), the
   slow two on fewer queries; recall@10 against exact top 10s computed with numpy over DEST's parts.

Data lives under /tmp, one size at a time, and is removed.

    .venv/bin/python benchmarks/publish.py                  # 100,000 and 1,000,000 rows
    .venv/bin/python benchmarks/publish.py --quick          # 20,000 rows
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
from common import MB, REPO, RESULTS, cpu_model, say, table, write_results

DIM, TOPICS, SUBTOPICS = 384, 1_000, 32
SUB_SPREAD, POINT_SPREAD, QUERY_NOISE = 0.5, 0.35, 0.1  # noise norms relative to a unit centre
K, TABLE = 10, "embeddings"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def subtopics() -> np.ndarray:
    """(TOPICS * SUBTOPICS, DIM) unit centres: topics, and subtopics scattered around each."""
    rng = np.random.default_rng(1234)
    topics = unit(rng.standard_normal((TOPICS, DIM), dtype=np.float32))
    noise = rng.standard_normal((TOPICS * SUBTOPICS, DIM), dtype=np.float32) * (SUB_SPREAD / np.sqrt(DIM))
    return unit(np.repeat(topics, SUBTOPICS, axis=0) + noise)


def mixture(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float = POINT_SPREAD) -> np.ndarray:
    noise = rng.standard_normal((n, DIM), dtype=np.float32) * (spread / np.sqrt(DIM))
    return unit(centres[rng.integers(len(centres), size=n)] + noise)


def build_dest(work: Path, rows: int, centres: np.ndarray) -> Path:
    """A complete, verifiable DEST of `rows` rows, as `bertflow embed` writes one, vectors from the mixture."""
    from bertflow.config import EmbedConfig
    from bertflow.io import sources
    from bertflow.io.manifest import PartInfo, ShardResult
    from bertflow.io.parts import serialize_part
    from bertflow.io.reuse import text_hashes
    from bertflow.io.schema import part_frame
    from bertflow.io.verify import verify_dest
    from bertflow.model.resolve import resolve_config
    from bertflow.pipeline import dest as dest_
    from bertflow.pipeline.dest import RunTarget

    source, dest = work / "source.parquet", work / "dest"
    ids = pl.Series("id", np.arange(rows, dtype=np.int64))
    pl.DataFrame([ids]).with_columns(text=pl.format("synthetic row {}", "id")).write_parquet(source)
    config = resolve_config(EmbedConfig(device="cpu"))  # the bundled all-MiniLM-L6-v2: 384 dims, normalized
    assert config.dimension == DIM, config.dimension
    plan = sources.plan_shards(str(source), id_column="id", text_column="text", keep=(), shard_rows=config.shard_rows)
    target = RunTarget(str(source), str(dest), config, plan, datetime.now(timezone.utc))
    _, _, jobs = dest_.prepare(target, overwrite=True)
    results = []
    for job in jobs:
        frame = sources.read_shard(job.spec, "id", "text", ())
        n = len(frame)
        vectors = mixture(np.random.default_rng([7, job.spec.index]), n, centres)
        part = part_frame(frame, vectors, np.full(n, 16, np.int32), np.zeros(n, bool), (), job.spec.id_kind,
                          text_hash=text_hashes(frame["text"].to_list()))  # fmt: skip
        info = PartInfo(fingerprint=job.fingerprint, rows=n, tokens=16 * n, truncated=0, seconds=1.0, device="cpu",
                        host="bench", finished_at=datetime.now(timezone.utc))  # fmt: skip
        data = serialize_part(part, info)
        (dest / job.spec.name).write_bytes(data)
        results.append(ShardResult(name=job.spec.name, pieces=job.spec.pieces, documents=n, rows=n, rejected=0,
                                   tokens=16 * n, truncated=0, seconds=1.0, sha256=hashlib.sha256(data).hexdigest(),
                                   device="cpu", host="bench", finished_at=info.finished_at))  # fmt: skip
    dest_.finalize(target, results, 1.0, "cpu")
    problems = verify_dest(str(dest))
    if problems:
        raise SystemExit(f"synthetic DEST fails verify: {problems[:3]}")
    return dest


def child(dest: str, db: str, index_rows: int) -> None:
    """Child process: one publish() of DEST into DB, its phases timed; prints its result as JSON."""
    from bertflow.config import PublishConfig
    from bertflow.io import vectorstore
    from bertflow.pipeline import publish as pub

    phases: dict[str, float] = {}
    start, growth = peak_rss(), {}  # phase -> how much the peak RSS grew during its calls

    def timed(name: str, fn):
        def run(*args, **kwargs):
            t0, peak = time.perf_counter(), peak_rss()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
                growth[name] = growth.get(name, 0) + peak_rss() - peak

        return run

    for module, names in (
        (vectorstore, ("upsert", "delete", "optimize", "build_index", "build_key_indexes")),
        (pub, ("verify_dest", "verify_parts", "row_hashes", "_keys", "_stale_filters")),
    ):
        for name in (n for n in names if hasattr(module, n)):  # publish() calls them by their global names
            setattr(module, name, timed(name.strip("_").removesuffix("_dest").removesuffix("_parts"),
                                        getattr(module, name)))  # fmt: skip
    t0 = time.perf_counter()
    done = pub.publish(dest, PublishConfig(db=db, table=TABLE, index_rows=index_rows))
    seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "phases": phases, "start": start, "growth": growth, "peak": peak_rss()}
    print(json.dumps({**result, "publication": done.model_dump(mode="json")}))


def peak_rss() -> int:
    """This process's peak RSS (VmHWM): unlike ru_maxrss, not inherited from the parent across fork and exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def run_child(*args: str) -> tuple[dict, int]:
    """`publish.py --child ARGS` as a child process: its JSON result and its peak RSS in bytes."""
    done = subprocess.run([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"publish child failed (exit {done.returncode})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result, result["peak"]


def exact_top(dest: Path, manifest, queries: np.ndarray) -> np.ndarray:
    """(Q, K) ids of the exact top K by cosine (dot product: everything is unit-norm), part by part."""
    best_ids = np.empty((len(queries), 0), np.int64)
    best = np.empty((len(queries), 0), np.float32)
    for shard in manifest.shards:
        frame = pl.read_parquet(dest / shard.name, columns=["id", "embedding"])
        scores = np.concatenate([best, queries @ frame["embedding"].to_numpy().T], axis=1)  # (Q, K + n)
        ids = np.concatenate([best_ids, np.broadcast_to(frame["id"].to_numpy(), (len(queries), len(frame)))], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        best, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    return best_ids


def timed_queries(ask, queries: np.ndarray) -> tuple[list[list[int]], dict]:
    """Each query's result ids, and the latencies (ms) of the calls, after one warm-up call."""
    ask(queries[0])
    found, ms = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(ask(q))
        ms.append((time.perf_counter() - t0) * 1000)
    p50, p99 = np.percentile(ms, [50, 99])
    return found, {"queries": len(queries), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
                   "mean_ms": round(float(np.mean(ms)), 2)}  # fmt: skip


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth)])), 4)


def search(dest: Path, db: str, queries: np.ndarray, exact_n: int, scan_n: int) -> dict:
    from bertflow.io import vectorstore
    from bertflow.io.parts import read_manifest
    from bertflow.pipeline.search import scan
    from bertflow.pipeline.table_search import NPROBES, REFINE

    manifest = read_manifest(str(dest))
    truth = exact_top(dest, manifest, queries)
    tbl = vectorstore.open_table(vectorstore.connect(db), db, TABLE)

    def base(q: np.ndarray):
        return tbl.search(q, vector_column_name="embedding").distance_type(vectorstore.METRIC).limit(K)

    ann, ann_t = timed_queries(lambda q: base(q).nprobes(NPROBES).refine_factor(REFINE).to_arrow()["id"].to_pylist(),
                               queries)  # fmt: skip
    exact, exact_t = timed_queries(lambda q: base(q).bypass_vector_index().to_arrow()["id"].to_pylist(),
                                   queries[:exact_n])  # fmt: skip
    flat, flat_t = timed_queries(lambda q: [h.id for h in scan(str(dest), manifest, q, K)], queries[:scan_n])
    return {
        "lancedb_ann": {**ann_t, "recall_at_10": recall(ann, truth), "nprobes": NPROBES, "refine_factor": REFINE},
        "lancedb_exact": {**exact_t, "recall_at_10": recall(exact, truth)},
        "flat_scan_dest": {**flat_t, "recall_at_10": recall(flat, truth)},
    }


def outcome(res: dict, rss: int) -> dict:
    keep = ("inserted", "updated", "deleted", "indexed", "version")
    phases = {k: round(v, 2) for k, v in res["phases"].items()}
    return {"seconds": round(res["seconds"], 2), "phases_s": phases, "peak_rss_bytes": rss,
            "peak_rss_after_imports": res["start"], "peak_rss_growth": res["growth"],
            **{k: res["publication"][k] for k in keep}}  # fmt: skip


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(rows: int, args: argparse.Namespace, centres: np.ndarray) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bertflow-publish-{rows}-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        dest = build_dest(work, rows, centres)
        say(f"{rows:,} rows: DEST of {du(dest) / MB:,.0f} MiB built and verified in {time.perf_counter() - t0:.1f} s")
        db, index_rows = str(work / "db"), min(rows, 100_000)  # PublishConfig's default, or the index would not build
        first, first_rss = run_child(str(dest), db, str(index_rows))
        say(f"  first publish {first['seconds']:.1f} s, phases {first['phases']}, peak RSS {first_rss / MB:,.0f} MiB")
        again, again_rss = run_child(str(dest), db, str(index_rows))
        pb = again["publication"]
        say(f"  second publish {again['seconds']:.1f} s: +{pb['inserted']} ~{pb['updated']} -{pb['deleted']}")
        rng = np.random.default_rng(99)
        queries = unit(mixture(rng, args.queries, centres) + rng.standard_normal((args.queries, DIM), dtype=np.float32)
                       * (QUERY_NOISE / np.sqrt(DIM)))  # fmt: skip
        scan_n = args.scan_queries or max(5, min(50, 2_000_000 // rows))
        found = search(dest, db, queries, min(args.exact_queries, args.queries), min(scan_n, args.queries))
        say(f"  search {json.dumps(found)}")
        return {
            "rows": rows,
            "parts": len(list(dest.glob("part-*.parquet"))),
            "dest_bytes": du(dest),
            "table_bytes": du(work / "db"),
            "first": {**outcome(first, first_rss), "rows_per_s": round(rows / first["seconds"])},
            "second": outcome(again, again_rss),
            "search": found,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def git_commit() -> str:
    """HEAD's commit, read from .git (no git process)."""
    git = REPO / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        ref = head.removeprefix("ref: ")
        if ref == head or (git / ref).exists():
            return head if ref == head else (git / ref).read_text().strip()
        return next(x.split()[0] for x in (git / "packed-refs").read_text().splitlines() if x.endswith(" " + ref))
    except (OSError, StopIteration):
        return "?"


def render(report: dict) -> str:
    m, runs = report["machine"], report["runs"]
    lat = lambda s: f"{s['p50_ms']:,.1f} / {s['p99_ms']:,.1f} ms ({s['queries']})"  # noqa: E731
    small, big = runs[0], runs[-1]
    first, idx = big["first"], big["first"]["phases_s"].get("build_index", 0)
    ann, flat = big["search"]["lancedb_ann"], big["search"]["flat_scan_dest"]
    rss = lambda o: o["peak_rss_bytes"] / MB  # noqa: E731
    again = big["second"]
    at, grew = max(first["peak_rss_growth"].items(), key=lambda kv: kv[1])
    return "\n".join([
        "# Publishing a DEST to LanceDB",
        "",
        f"Synthetic DESTs of {DIM}-dim unit vectors (two-level gaussian mixture; parts of 10,000 rows, as "
        f"`bertflow embed` writes them), {m['cpus']} CPU cores ({m['cpu']}), shared with other work; lancedb "
        f"{m['lancedb']}. Publish: one `publish()` into an empty table, in a child process (verify, upserts, "
        "optimize and the IVF-PQ index build); the index build is the `vectorstore.build_index` call inside that "
        "same publish, timed by wrapping it (not a separate run). Republish: the same DEST again, unchanged.",
        "",
        *table(["rows", "DEST", "table on disk", "publish", "rows/s", "index build", "upserts", "republish (updated)",
                "peak RSS", "republish RSS"], "rrrrrrrrrr",
               [[f"{r['rows']:,}", f"{r['dest_bytes'] / MB:,.0f} MiB", f"{r['table_bytes'] / MB:,.0f} MiB",
                 f"{r['first']['seconds']:,.1f} s", f"{r['first']['rows_per_s']:,}",
                 f"{r['first']['phases_s'].get('build_index', 0):,.1f} s",
                 f"{r['first']['phases_s'].get('upsert', 0):,.1f} s",
                 f"{r['second']['seconds']:,.1f} s ({r['second']['updated']:,})", f"{rss(r['first']):,.0f} MiB",
                 f"{rss(r['second']):,.0f} MiB"] for r in runs]),
        "",
        *table(["rows", "LanceDB ANN p50 / p99 (n)", "recall@10", "LanceDB exact p50 / p99 (n)",
                "DEST flat scan p50 / p99 (n)"], "rrrrr",
               [[f"{r['rows']:,}", lat(s["lancedb_ann"]), f"{s['lancedb_ann']['recall_at_10']:.3f}",
                 lat(s["lancedb_exact"]), lat(s["flat_scan_dest"])] for r in runs for s in [r["search"]]]),
        "",
        f"ANN: IVF-PQ ({DIM // 8} sub-vectors, ~sqrt(rows) partitions), nprobes 20, refine_factor 10, k {K}; recall "
        "against numpy's exact top 10 over DEST. Queries: held-out mixture points, perturbed; the exact and flat-scan "
        "searches ran on the first n of them only (for n <= 20, p99 is about the slowest).",
        "",
        f"- At {big['rows']:,} rows the index build is {idx / first['seconds']:.0%} of the publish "
        f"({idx:,.0f} of {first['seconds']:,.0f} s); the upserts alone run at "
        f"{big['rows'] / max(first['phases_s'].get('upsert', 1e-9), 1e-9):,.0f} rows/s.",
        f"- Republishing an unchanged DEST rewrites no row ({again['updated']} updated, {again['inserted']} "
        f"inserted, {again['deleted']} deleted) but takes {again['seconds']:,.0f} s, "
        f"{again['seconds'] / first['seconds']:.0%} of the first publish (optimize "
        f"{again['phases_s'].get('optimize', 0):,.0f} s, upserts {again['phases_s'].get('upsert', 0):,.0f} s), "
        "and adds "
        f"{again['version'] - first['version']} table versions.",
        f"- Peak RSS {rss(small['first']):,.0f} MiB at {small['rows']:,} rows, {rss(first):,.0f} MiB at "
        f"{big['rows']:,}, most of the growth in `{at}` (+{grew / MB:,.0f} MiB at {big['rows']:,}); republish "
        f"{rss(small['second']):,.0f} -> {rss(again):,.0f} MiB. The imports alone take "
        f"{first['peak_rss_after_imports'] / MB:,.0f} MiB (torch, via bertflow.io.parts -> schema -> vectors).",
        f"- Search at {big['rows']:,} rows: the ANN index answers in {ann['p50_ms']:,.1f} ms (p50), "
        f"{flat['p50_ms'] / ann['p50_ms']:,.0f}x faster than today's flat scan of DEST, at recall@10 "
        f"{ann['recall_at_10']:.3f}.",
        "",
    ])  # fmt: skip


def parse_rows(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v.strip()]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=parse_rows, default=[100_000, 1_000_000], help="comma-separated DEST sizes")
    ap.add_argument("--quick", action="store_true", help="20,000 rows (overrides --rows)")
    ap.add_argument("--queries", type=int, default=200, help="ANN queries (default 200)")
    ap.add_argument("--exact-queries", type=int, default=50, help="LanceDB exact queries (default 50)")
    ap.add_argument("--scan-queries", type=int, default=0, help="flat scans of DEST (default 2M / rows, 5 to 50)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where publish.json and publish.md go")
    args = ap.parse_args()
    os.environ.setdefault("LANCE_LOG", "error")
    import lancedb

    centres = subtopics()
    t0 = time.perf_counter()
    runs = [measure(rows, args, centres) for rows in ([20_000] if args.quick else args.rows)]
    # fmt: off
    report = {
        "benchmark": "publish",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version(), "lancedb": lancedb.__version__},
        "git": {"commit": git_commit()},
        "data": {"dim": DIM, "topics": TOPICS, "subtopics": SUBTOPICS, "sub_spread": SUB_SPREAD,
                 "point_spread": POINT_SPREAD, "query_noise": QUERY_NOISE},
        "wall_s": round(time.perf_counter() - t0, 1),
        "runs": runs,
    }
    # fmt: on
    md = render(report) + f"\nGenerated by `benchmarks/publish.py` on {report['date'][:10]} at commit "
    md += f"{report['git']['commit'][:7]}; the whole run took {report['wall_s']:,.0f} s.\n"
    write_results(args.out, "publish", report, md)
    print(md)


if __name__ == "__main__":
    main()
