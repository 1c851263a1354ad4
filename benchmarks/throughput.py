"""Throughput of bertflow against sentence-transformers, in one run, on one corpus and thread count.

    .venv/bin/python benchmarks/throughput.py [--docs N] [--quick] [--threads T]
    python benchmarks/throughput.py --device cuda --engine-only --model PATH   # on a GPU host

Builds its own corpus (docstrings of installed packages, parsed with `ast`, nothing imported),
then measures on the same texts, model, max length and torch thread count:

  1. sentence-transformers `encode` (batch 32), fp32: the reference;
  2. bertflow's engine alone (tokenize + embed, in memory), fp32 and bf16;
  3. the whole `embed_dataset` flow from local JSONL to local Parquet;
  4. the same flow from and to S3 (moto's server in a subprocess on localhost).

Prints and writes (benchmarks/results/throughput.{md,json}) docs/s, tokens/s, the ratio to
sentence-transformers, the fraction of the matmul peak measured on the spot, and per precision
the max abs difference and top-10-neighbour overlap against fp32. The Prefect temporary server's
start and stop are timed on a line of their own, outside the flow rows. The CPU time that other
processes took during each row is recorded: on a shared machine it explains slow rows.

With `--device cuda` the same rows run on the GPU, with fp16 beside bf16 and sentence-transformers
in fp16 as well as fp32; `--engine-only` leaves out the flow rows (no Prefect, polars or S3 needed).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PACKAGES = (
    "numpy",
    "scipy",
    "networkx",
    "sqlalchemy",
    "polars",
    "pydantic",
    "prefect",
    "sklearn",
    "fsspec",
    "jinja2",
    "werkzeug",
    "httpx",
    "rich",
    "click",
    "botocore",
    "transformers",
)
RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"fp32_vs_st": 1.3, "fp32_max_abs_diff": 1e-5, "bf16_vs_st": 2.3, "bf16_overlap": 0.99, "flow_gap": 0.10}


# ---------------------------------------------------------------- corpus


def package_docstrings(name: str, limit: int) -> list[tuple[str, str]]:
    """(id, docstring) of a package's modules, classes and functions, in file order; tests skipped."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if any(part in ("tests", "test", "testing", "_vendor", "vendored") for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    out.append((f"{rel.with_suffix('')}:{getattr(node, 'name', '')}:{getattr(node, 'lineno', 0)}", doc))
                    if len(out) >= limit:
                        return out
    return out


def build_corpus(n: int) -> list[dict]:
    """n distinct docstrings, taken in turn from each package so no single style dominates."""
    per_package = [package_docstrings(p, n) for p in PACKAGES]
    rows, seen = [], set()
    for k in range(n):
        for docs in per_package:
            if k < len(docs) and docs[k][1] not in seen:
                seen.add(docs[k][1])
                rows.append({"id": docs[k][0], "text": docs[k][1]})
                if len(rows) == n:
                    return rows
    raise SystemExit(f"only {len(rows)} docstrings found in {', '.join(PACKAGES)}; ask for fewer --docs")


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        flags = info.get("Flags", "")
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags.split()]
        return f"{info.get('Model name', '?').strip()} ({', '.join(isa)})"
    except (OSError, subprocess.CalledProcessError, ValueError):
        return platform.processor() or "?"


class CpuMeter:
    """CPU time of this process tree and of everything else on the machine, over one measurement."""

    def __init__(self, *extra_pids: int) -> None:
        import psutil

        self.psutil = psutil
        self.ours = [psutil.Process()] + [psutil.Process(p) for p in extra_pids]

    def _sample(self) -> tuple[float, list[float]]:
        t = self.psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        ours = []
        for p in self.ours:
            try:
                c = p.cpu_times()
                ours.append(c.user + c.system)
            except self.psutil.Error:
                ours.append(0.0)
        return busy, ours

    def __enter__(self) -> CpuMeter:
        self.t0, (self.busy0, self.ours0) = time.perf_counter(), self._sample()
        return self

    def __exit__(self, *exc) -> None:
        busy, ours = self._sample()
        self.seconds = time.perf_counter() - self.t0
        used = [b - a for a, b in zip(self.ours0, ours)]
        self.self_cpu, self.helpers_cpu = used[0], used[1:]  # seconds of CPU: this process, each helper
        self.others_cores = max(0.0, (busy - self.busy0) - sum(used)) / self.seconds


def matmul_peak(dtype, hidden: int, intermediate: int, device: str = "cpu") -> float:
    """Best GFLOP/s of torch matmuls (MKL and oneDNN on CPU) on this model's own shapes, 2048 rows
    (on a GPU 65,536 rows, the default token budget there)."""
    import torch

    if device == "cuda":
        return cuda_matmul_peak(dtype, hidden, intermediate)
    best = 0.0
    with torch.inference_mode():
        for k, n in ((hidden, 3 * hidden), (hidden, intermediate), (intermediate, hidden)):
            x = torch.randn(2048, k).to(dtype)
            w = (torch.randn(n, k) * 0.05).to(dtype)
            for fn in (lambda: x @ w.t(), lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")):
                fn()
                t = time.perf_counter()
                reps = 0
                while time.perf_counter() - t < 0.5:
                    fn()
                    reps += 1
                best = max(best, 2 * 2048 * k * n * reps / (time.perf_counter() - t) / 1e9)
    return best


def cuda_matmul_peak(dtype, hidden: int, intermediate: int, rows: int = 65536) -> float:
    import torch

    best = 0.0
    with torch.inference_mode():
        for k, n in ((hidden, 3 * hidden), (hidden, intermediate), (intermediate, hidden)):
            x = torch.randn(rows, k, device="cuda").to(dtype)
            w = (torch.randn(n, k, device="cuda") * 0.05).to(dtype)
            for _ in range(3):
                x @ w.t()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(50):
                x @ w.t()
            end.record()
            torch.cuda.synchronize()
            best = max(best, 2 * rows * k * n * 50 / (start.elapsed_time(end) / 1e3) / 1e9)
    return best


def model_flops(n_tokens, config) -> float:
    """Matmul FLOPs of one forward over these (unpadded) sequences: projections, FFN, attention."""
    import numpy as np

    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = np.asarray(n_tokens, dtype=np.float64)
    per_token = 2 * (4 * h * h + 2 * h * i)  # Q, K, V, output projection; FFN up and down
    attention = 4 * h * (lengths**2).sum()  # QK^T and AV per sequence
    return layers * (per_token * lengths.sum() + attention)


# ---------------------------------------------------------------- quality


def top10_overlap(a, b) -> float:
    """Mean share of each row's 10 nearest neighbours (cosine, self excluded) that a and b agree on."""
    import numpy as np

    def neighbours(x):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, 10, axis=1)[:, :10]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(na, nb)]))


# ---------------------------------------------------------------- rows


@dataclass
class Row:
    name: str
    precision: str
    seconds: float
    docs: int
    tokens: int
    others_cores: float
    flops: float
    peak_gflops: float
    max_abs_diff: float | None = None  # against the fp32 reference named in `against`
    overlap: float | None = None
    against: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def docs_s(self) -> float:
        return self.docs / self.seconds

    @property
    def tokens_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def peak_fraction(self) -> float:
        return self.flops / self.seconds / 1e9 / self.peak_gflops


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process (its request handling must not hold our GIL)."""
    import httpx

    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=5000, help="corpus size (default 5000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 300 documents unless --docs is given")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores given)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model", default=None, help="model name or path (default: bertflow's default model)")
    ap.add_argument(
        "--engine-only",
        action="store_true",
        help="only sentence-transformers and the engine: no flow rows, so no Prefect, polars or S3",
    )
    args = ap.parse_args()
    device = args.device
    n_docs = 300 if args.quick and "--docs" not in sys.argv else args.docs

    work = Path(tempfile.mkdtemp(prefix="bertflow-bench-"))
    # Before Prefect is imported: a private home (fresh database), quiet console, no telemetry;
    # the same defaults the CLI sets. One thread count for every row, set before torch loads.
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bertflow.model.encoder import cpu_threads

    threads = args.threads or cpu_threads()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the engine leaves torch's count alone when this is set

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    import transformers

    from bertflow.config import DEFAULT_MODEL, EmbedConfig
    from bertflow.model.encoder import Encoder
    from bertflow.model.loading import load_model, resolve_config

    def say(msg: str) -> None:
        print(msg, flush=True)

    t = time.perf_counter()
    rows_in = build_corpus(n_docs)
    texts = [r["text"] for r in rows_in]
    say(f"corpus: {len(texts)} docstrings in {time.perf_counter() - t:.1f}s")
    src = work / "src" / "docs.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows_in))

    config = resolve_config(EmbedConfig(model=args.model or DEFAULT_MODEL, device=device, max_length=args.max_length))
    tokenizer, model = load_model(config.model_path, device, "fp32")
    mcfg = model.config
    probe = Encoder(tokenizer, model, device=device, precision="fp32", max_length=args.max_length)
    tok = probe.tokenize(texts)
    n_tokens = int(tok.n_tokens.sum())
    flops = model_flops(tok.n_tokens, mcfg)
    say(
        f"tokens: {n_tokens} ({n_tokens / len(texts):.1f}/doc, {tok.truncated.mean():.1%} truncated at "
        f"{args.max_length}); torch threads: {torch.get_num_threads()}"
    )

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device == "cuda":
        dtypes["fp16"] = torch.float16
    elif not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        del dtypes["bf16"]
    peak = {p: matmul_peak(d, mcfg.hidden_size, mcfg.intermediate_size, device) for p, d in dtypes.items()}
    flops_per_token = flops / n_tokens
    for p, g in peak.items():
        say(
            f"matmul peak {p}: {g:.0f} GFLOP/s = {g * 1e9 / flops_per_token:,.0f} tokens/s of this model on this corpus"
        )

    results: list[Row] = []

    def record(row: Row) -> Row:
        results.append(row)
        ratio = row.tokens_s / results[0].tokens_s
        say(
            f"  {row.name} [{row.precision}]: {row.seconds:.1f}s, {row.docs_s:.1f} docs/s, {row.tokens_s:,.0f} tokens/s, "
            f"{ratio:.2f}x ST, {row.peak_fraction:.0%} of peak; other processes used {row.others_cores:.2f} cores"
        )
        return row

    # 1 and 2. sentence-transformers `encode` (batch 32) and the engine alone (tokenize + embed, in
    # memory), fp32 and bf16. They take turns on slices of ~1,000 documents, so a neighbour's job
    # on a shared machine slows all of them alike and the ratios hold.
    from sentence_transformers import SentenceTransformer

    # dtype given: left alone, transformers loads weights in the dtype they were saved in.
    st = SentenceTransformer(config.model_path, device=device, model_kwargs={"dtype": torch.float32})
    st.max_seq_length = args.max_length
    runners = {"st": lambda xs: st.encode(xs, batch_size=32, convert_to_numpy=True)}
    if device == "cuda":  # on a GPU, sentence-transformers in half precision too: the fair peer of fp16
        st16 = SentenceTransformer(config.model_path, device=device, model_kwargs={"dtype": torch.float16})
        st16.max_seq_length = args.max_length
        runners["st16"] = lambda xs: st16.encode(xs, batch_size=32, convert_to_numpy=True)
        from torch.nn.attention import sdpa_kernel

        from bertflow.model.encoder import _CUDA_ATTENTION

        def st16_no_cudnn(xs):  # the attention kernels bertflow picks on CUDA, for a like-for-like row
            with sdpa_kernel(_CUDA_ATTENTION):
                return st16.encode(xs, batch_size=32, convert_to_numpy=True)

        runners["st16_no_cudnn"] = st16_no_cudnn
    encoders = {}
    for precision in ("fp32", "bf16", "fp16"):
        if precision not in peak:
            if precision == "bf16":
                say(f"engine {precision}: skipped, this CPU has no bf16 matmul support")
            continue
        weights = (
            model if device == "cpu" or precision == "fp32" else load_model(config.model_path, device, precision)[1]
        )
        enc = Encoder(tokenizer, weights, device=device, precision=precision, max_length=args.max_length)
        encoders[precision] = enc
        runners[precision] = lambda xs, enc=enc: enc.embed(
            enc.tokenize(xs), pooling=config.pooling, normalize_output=config.normalize
        )
    for run in runners.values():
        run(texts[:64])  # warm-up, not timed
    order = np.random.default_rng(0).permutation(len(texts))  # slices alike in length
    slices = np.array_split(order, max(1, round(len(texts) / 1000)))
    outputs = {k: np.empty((len(texts), mcfg.hidden_size), dtype=np.float32) for k in runners}
    spent = {k: [0.0, 0.0] for k in runners}  # seconds, other processes' CPU seconds
    say(f"sentence-transformers and engine ({', '.join(encoders)}) in turns on {len(slices)} slices ...")
    for k, rows in enumerate(slices):
        part = [texts[i] for i in rows]
        names = list(runners)
        for name in names[k % len(names) :] + names[: k % len(names)]:  # rotate who goes first
            with CpuMeter() as m:
                outputs[name][rows] = runners[name](part)
            spent[name][0] += m.seconds
            spent[name][1] += m.others_cores * m.seconds
    del st
    ref = outputs["st"]
    record(
        Row(
            "sentence-transformers encode (batch 32)",
            "fp32",
            spent["st"][0],
            len(texts),
            n_tokens,
            spent["st"][1] / spent["st"][0],
            flops,
            peak["fp32"],
        )
    )
    for key, name in (
        ("st16", "sentence-transformers encode (batch 32)"),
        ("st16_no_cudnn", "sentence-transformers encode (batch 32), cuDNN attention off as in bertflow"),
    ):
        if key in outputs:
            secs, others = spent[key]
            record(
                Row(
                    name,
                    "fp16",
                    secs,
                    len(texts),
                    n_tokens,
                    others / secs,
                    flops,
                    peak["fp16"],
                    float(np.abs(outputs[key] - ref).max()),
                    top10_overlap(outputs[key], ref),
                    "sentence-transformers fp32",
                )
            )
    for precision, enc in encoders.items():
        out = outputs[precision]
        base, against = (ref, "sentence-transformers") if precision == "fp32" else (outputs["fp32"], "engine fp32")
        secs, others = spent[precision]
        record(
            Row(
                "bertflow engine (tokenize + embed)",
                precision,
                secs,
                len(texts),
                n_tokens,
                others / secs,
                flops,
                peak[precision],
                float(np.abs(out - base).max()),
                top10_overlap(out, base),
                against,
                {"fused": enc._fused is not None, "batch_tokens": enc.batch_tokens, "slices": len(slices)},
            )
        )

    prefect_server = None
    if not args.engine_only:
        prefect_server = flow_rows(
            args, work, src, rows_in, texts, n_tokens, flops, peak, config, encoders, outputs, ref, record, say, results
        )
    machine = {
        "cpu": cpu_model(),
        "cores_given": cpu_threads(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }
    if device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    report = {
        "machine": machine,
        "device": device,
        "corpus": {
            "docs": len(texts),
            "tokens": n_tokens,
            "tokens_per_doc": n_tokens / len(texts),
            "truncated": float(tok.truncated.mean()),
            "max_length": args.max_length,
            "packages": list(PACKAGES),
        },
        "model": {
            "name": config.model,
            "pooling": config.pooling,
            "normalize": config.normalize,
            "flops_per_token": flops_per_token,
        },
        "peak_gflops": peak,
        "prefect_server": prefect_server,
        "rows": [
            {
                **asdict(r),
                "docs_s": r.docs_s,
                "tokens_s": r.tokens_s,
                "vs_st": r.tokens_s / results[0].tokens_s,
                "peak_fraction": r.peak_fraction,
            }
            for r in results
        ],
    }
    report["targets"] = targets(results) if device == "cpu" else {}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "throughput" if device == "cpu" else f"throughput-{device}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (args.out / f"{name}.md").write_text(md)
    print("\n" + md)


def flow_rows(
    args, work, src, rows_in, texts, n_tokens, flops, peak, config, encoders, outputs, ref, record, say, results
) -> dict:
    """Rows 3 and 4: the flows, with the engine on the whole corpus between them; returns the server's timings."""
    import numpy as np

    # 3 and 4. the whole flow, local and S3, on Prefect's temporary server started beforehand;
    # between them the engine on the whole corpus at once, as the flow's one shard sees it.
    import polars as pl
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    from bertflow.config import DEFAULT_MODEL, EmbedConfig
    from bertflow.flows.embed import embed_dataset

    server = SubprocessASGIServer()  # the instance Prefect itself uses when PREFECT_API_URL is unset
    t = time.perf_counter()
    server.start()
    server_start = time.perf_counter() - t
    warm = work / "warm.jsonl"
    warm.write_text("".join(json.dumps(r) + "\n" for r in rows_in[:32]))
    t = time.perf_counter()
    embed_dataset(
        str(warm),
        str(work / "warm-out"),
        EmbedConfig(model=args.model or DEFAULT_MODEL, device=args.device, max_length=args.max_length),
    )
    first_flow = time.perf_counter() - t
    say(f"Prefect temporary server started in {server_start:.1f}s; a first 32-row flow took {first_flow:.1f}s")

    flow_config = EmbedConfig(
        model=args.model or DEFAULT_MODEL, device=args.device, precision="fp32", max_length=args.max_length
    )

    def flow_row(name: str, source: str, dest: str, read_back, server_pids: list[int]) -> None:
        say(f"{name} ...")
        with CpuMeter(*server_pids) as m:
            manifest = embed_dataset(source, dest, flow_config)
        frame = read_back()
        by_id = dict(zip(frame["id"].to_list(), range(len(frame))))
        emb = frame["embedding"].to_numpy()[[by_id[r["id"]] for r in rows_in]]
        helpers = dict(zip(["prefect_server_cpu_s", "moto_server_cpu_s"], m.helpers_cpu))
        record(
            Row(
                name,
                "fp32",
                m.seconds,
                manifest.totals.rows,
                manifest.totals.tokens,
                m.others_cores,
                flops,
                peak["fp32"],
                float(np.abs(emb - outputs["fp32"]).max()),
                top10_overlap(emb, outputs["fp32"]),
                "engine fp32",
                {
                    "shards": len(manifest.shards),
                    "shard_seconds": sum(s.seconds for s in manifest.shards),
                    "flow_cpu_s": m.self_cpu,
                    **helpers,
                },
            )
        )
        say(
            f"    shards took {results[-1].extra['shard_seconds']:.1f}s of {m.seconds:.1f}s; CPU seconds: this process "
            f"{m.self_cpu:.1f}, "
            + ", ".join(f"{k.removesuffix('_cpu_s').replace('_', ' ')} {v:.1f}" for k, v in helpers.items())
        )

    pids = [server.server_process.pid]
    flow_row(
        "bertflow embed flow, local JSONL -> local Parquet",
        str(src),
        str(work / "out"),
        lambda: pl.read_parquet(work / "out" / "part-*.parquet"),
        pids,
    )

    say("engine fp32 on the whole corpus at once ...")
    enc = encoders["fp32"]
    with CpuMeter() as m:
        whole = enc.embed(enc.tokenize(texts), pooling=config.pooling, normalize_output=config.normalize)
    record(
        Row(
            "bertflow engine, whole corpus at once (the flows' reference)",
            "fp32",
            m.seconds,
            len(texts),
            n_tokens,
            m.others_cores,
            flops,
            peak["fp32"],
            float(np.abs(whole - ref).max()),
            top10_overlap(whole, ref),
            "sentence-transformers",
        )
    )

    moto, url = start_moto()
    try:
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": url,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        fs.put(str(src), "bench/src/docs.jsonl")

        def read_s3():
            return pl.concat([pl.read_parquet(fs.cat(p)) for p in sorted(fs.glob("bench/out/part-*.parquet"))])

        flow_row(
            "bertflow embed flow, S3 JSONL -> S3 Parquet (moto)",
            "s3://bench/src/docs.jsonl",
            "s3://bench/out/",
            read_s3,
            pids + [moto.pid],
        )
    finally:
        moto.terminate()
        moto.wait(10)

    APILogWorker.drain_all(timeout=10)  # the runs' last logs and events, before their server goes
    EventsWorker.drain_all(timeout=10)
    t = time.perf_counter()
    server.stop()
    server_stop = time.perf_counter() - t

    return {"start_s": server_start, "first_flow_s": first_flow, "stop_s": server_stop}


def targets(rows: list[Row]) -> dict:
    def find(prefix: str, precision: str = "fp32") -> Row | None:
        return next((r for r in rows if r.name.startswith(prefix) and r.precision == precision), None)

    st, out = rows[0], {}
    eng32, eng16 = find("bertflow engine (tokenize"), find("bertflow engine (tokenize", "bf16")
    local, whole = find("bertflow embed flow, local"), find("bertflow engine, whole corpus")
    if eng32:
        out["fp32 >= 1.3x sentence-transformers, max abs diff <= 1e-5"] = {
            "value": f"{eng32.tokens_s / st.tokens_s:.2f}x, {eng32.max_abs_diff:.1e}",
            "met": eng32.tokens_s / st.tokens_s >= TARGETS["fp32_vs_st"]
            and eng32.max_abs_diff <= TARGETS["fp32_max_abs_diff"],
        }
    if eng16:
        out["bf16 >= 2.3x sentence-transformers, top-10 overlap >= 0.99"] = {
            "value": f"{eng16.tokens_s / st.tokens_s:.2f}x, {eng16.overlap:.3f}",
            "met": eng16.tokens_s / st.tokens_s >= TARGETS["bf16_vs_st"] and eng16.overlap >= TARGETS["bf16_overlap"],
        }
    if whole and local:
        gap = local.seconds / whole.seconds - 1
        out["flow (local) within 10% of the engine"] = {"value": f"{gap:+.1%}", "met": gap <= TARGETS["flow_gap"]}
    return out


def markdown(report: dict) -> str:
    m, c, p = report["machine"], report["corpus"], report["prefect_server"]
    gpu = f"GPU: {m['gpu']}; host " if m.get("gpu") else ""
    lines = [
        f"Machine: {gpu}{m['cpu']}, {m['cores_given']} cores given, {m['torch_threads']} torch threads; "
        f"torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}.",
        f"Corpus: {c['docs']:,} docstrings of installed packages, {c['tokens']:,} tokens "
        f"({c['tokens_per_doc']:.0f}/doc, {c['truncated']:.0%} truncated at {c['max_length']}); "
        f"model {report['model']['name']} ({report['model']['pooling']} pooling, "
        f"{'normalized' if report['model']['normalize'] else 'not normalized'}).",
        "Matmul peak measured on the spot: "
        + ", ".join(
            f"{k} {v:.0f} GFLOP/s (= {v * 1e9 / report['model']['flops_per_token']:,.0f} tokens/s)"
            for k, v in report["peak_gflops"].items()
        )
        + ".",
        "",
        "| run | precision | docs/s | tokens/s | vs ST | of matmul peak | max abs diff | top-10 overlap | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        diff = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "-"
        ov = f"{r['overlap']:.3f}" if r["overlap"] is not None else "-"
        vs = f" (vs {r['against']})" if r["against"] else ""
        lines.append(
            f"| {r['name']} | {r['precision']} | {r['docs_s']:,.1f} | {r['tokens_s']:,.0f} | "
            f"{r['vs_st']:.2f}x | {r['peak_fraction']:.0%} | {diff}{vs} | {ov} | {r['others_cores']:.2f} cores |"
        )
    lines.append("")
    if p:
        lines.append(
            f"Prefect's temporary server (not in the flow rows): start {p['start_s']:.1f}s, first 32-row flow "
            f"{p['first_flow_s']:.1f}s, stop {p['stop_s']:.1f}s."
        )
    lines.append('"other load": CPU time other processes on the machine used during the row, in cores.')
    if report["targets"]:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {k} | {v['value']} | {'yes' if v['met'] else 'no'} |" for k, v in report["targets"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
