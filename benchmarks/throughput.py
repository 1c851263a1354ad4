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
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from common import QUIET_ENV, RESULTS, cpu_model, say, write_results
from corpus import build_corpus, write_jsonl
from metrics import matmul_peaks, model_flops
from throughput_engine import engine_rows
from throughput_flow import flow_rows
from throughput_report import Bench, build_report, markdown


def parse_args() -> argparse.Namespace:
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
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    n_docs = 300 if args.quick and "--docs" not in sys.argv else args.docs

    work = Path(tempfile.mkdtemp(prefix="bertflow-bench-"))
    # Before Prefect is imported: a private home (fresh database), quiet console, no telemetry;
    # the same defaults the CLI sets. One thread count for every row, set before torch loads.
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from bertflow.model.threads import cpu_threads

    threads = args.threads or cpu_threads()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the engine leaves torch's count alone when this is set

    import torch

    torch.set_num_threads(threads)
    bench, truncated, tokenizer, model = prepare(args, work, n_docs)
    encoders, outputs, ref = engine_rows(bench, tokenizer, model)
    prefect_server = None if args.engine_only else flow_rows(bench, encoders, outputs, ref)
    report = build_report(bench, machine(threads, args.device), truncated, prefect_server)
    name = "throughput" if args.device == "cpu" else f"throughput-{args.device}"
    write_results(args.out, name, report, md := markdown(report))
    print("\n" + md)


def prepare(args: argparse.Namespace, work: Path, n_docs: int) -> tuple[Bench, float, object, object]:
    """The corpus (also as work/src/docs.jsonl), the model, its token counts and FLOPs, the matmul peaks."""
    import torch

    from bertflow.config import DEFAULT_MODEL, EmbedConfig
    from bertflow.model.encoder import Encoder
    from bertflow.model.loading import load_model
    from bertflow.model.resolve import resolve_config

    device = args.device
    t = time.perf_counter()
    rows_in = build_corpus(n_docs)
    texts = [r["text"] for r in rows_in]
    say(f"corpus: {len(texts)} docstrings in {time.perf_counter() - t:.1f}s")
    src = work / "src" / "docs.jsonl"
    src.parent.mkdir(parents=True)
    write_jsonl(src, rows_in)

    config = resolve_config(EmbedConfig(model=args.model or DEFAULT_MODEL, device=device, max_length=args.max_length))
    tokenizer, model = load_model(config.model.path, device, "fp32")
    probe = Encoder(tokenizer, model, device=device, precision="fp32", max_length=args.max_length)
    tok = probe.tokenizer.tokenize(texts)
    n_tokens = int(tok.n_tokens.sum())
    flops = model_flops(tok.n_tokens, model.config)
    say(
        f"tokens: {n_tokens} ({n_tokens / len(texts):.1f}/doc, {tok.truncated.mean():.1%} truncated at "
        f"{args.max_length}); torch threads: {torch.get_num_threads()}"
    )
    peak = matmul_peaks(device, model.config, flops / n_tokens)
    bench = Bench(args, work, src, rows_in, n_tokens, flops, peak, config)
    return bench, float(tok.truncated.mean()), tokenizer, model


def machine(threads: int, device: str) -> dict:
    import torch
    import transformers

    from bertflow.model.threads import cpu_threads

    info = {
        "cpu": cpu_model(),
        "cores_given": cpu_threads(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


if __name__ == "__main__":
    main()
