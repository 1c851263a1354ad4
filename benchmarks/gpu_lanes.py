"""Lanes and fixed costs on a GPU (issue 17, points 2, 5 and 8): does a second lane per card keep it busy
between shards, and what does a fresh shard process pay before its first batch?

1. Shards, one after another on one card: each shard's texts tokenized (CPU), embedded, and its
   vectors serialized (a stand-in for the part's write), as `embed-shard` does; with one lane, then
   two lanes per card (`bertflow.model.cards.LANES_PER_CARD`: while one lane tokenizes or writes, the
   other's batches compute), the card's utilisation sampled through NVML throughout. The engine alone
   (one `Encoder.embed` over every text, tokenized beforehand) is the reference.
2. A shard process's fixed cost, in a fresh interpreter: importing torch and transformers, CUDA's
   start, hashing the weights and loading the model, each timed; then the share it takes of a shard
   of `--shard-docs` at the lanes' rate.

Needs only torch, transformers, tokenizers, safetensors, pydantic and nvidia-ml-py (a bare GPU host,
PYTHONPATH=.); `--device cpu` runs it here as a smoke check (no utilisation there):

    python benchmarks/gpu_lanes.py --model PATH_TO_MINILM [--docs 40000] [--shards 8] [--precision fp16]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from corpus import build_tiny_bert
from gpu_engine import SAMPLE, Busy

HERE = Path(__file__).resolve().parent

COLD = """
import json, sys, time
t0 = time.perf_counter()
import torch, transformers  # noqa: F401
t1 = time.perf_counter()
device = sys.argv[2]
if device == "cuda":
    torch.cuda.init(); torch.zeros(1, device="cuda"); torch.cuda.synchronize()
t2 = time.perf_counter()
from pathlib import Path
from bertflow.model.loading import load_model, weights_sha256
weights_sha256(Path(sys.argv[1]))
t3 = time.perf_counter()
load_model(sys.argv[1], device, sys.argv[3])
if device == "cuda":
    torch.cuda.synchronize()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "device_init_s": t2 - t1, "hash_s": t3 - t2, "load_s": t4 - t3}))
"""


def cold_start(path: Path, device: str, precision: str) -> dict:
    """What a fresh shard process pays before its first batch (without Prefect's own start)."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", COLD, str(path), device, precision],
        capture_output=True, text=True, check=True, cwd=HERE.parent,
    )  # fmt: skip
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["process_s"] = time.perf_counter() - started
    return {k: round(v, 3) for k, v in row.items()}


def run_shards(enc, shards: list[list[str]], lanes: int, card: int | None) -> tuple[float, float, int]:
    """Every shard through tokenize -> embed -> serialize in `lanes` threads on one card; seconds, busy share."""
    from bertflow.model import cards

    todo, lock = deque(shards), threading.Lock()

    def lane() -> None:
        if card is not None:
            torch.cuda.set_device(card)
        while True:
            with lock:
                if not todo:
                    return
                texts = todo.popleft()
            tok = enc.tokenizer.tokenize(texts)
            with cards.turn(enc.device):  # as the embed task: the card computes one lane's shard at a time
                vectors = enc.embed(tok, pooling="mean", normalize_output=True)
            np.save(io.BytesIO(), vectors)  # the part's write, as bytes

    sync = torch.cuda.synchronize if card is not None else (lambda: None)
    sync()
    with Busy() if card is not None else _NoBusy() as busy:
        started = time.perf_counter()
        with ThreadPoolExecutor(lanes) as pool:
            for f in [pool.submit(lane) for _ in range(lanes)]:
                f.result()
        sync()
        seconds = time.perf_counter() - started
    return seconds, busy.share, len(busy.samples)


class _NoBusy:
    share, samples = float("nan"), []

    def __enter__(self) -> _NoBusy:
        return self

    def __exit__(self, *exc) -> None:
        return None


def measure(name: str, path: Path, args: argparse.Namespace, texts: list[str], max_length: int) -> list[dict]:
    from bertflow.model.encoder import Encoder
    from bertflow.model.loading import load_model

    device, card = args.device, (0 if args.device == "cuda" else None)
    tokenizer, model = load_model(str(path), device, args.precision, card=card)
    enc = Encoder(tokenizer, model, device=device, precision=args.precision, max_length=max_length)
    enc.embed(enc.tokenizer.tokenize(texts[:2000]), pooling="mean")  # warm-up: kernels, allocator
    per = len(texts) // args.shards
    shards = [texts[i * per : (i + 1) * per] for i in range(args.shards)]
    tokens = sum(int(enc.tokenizer.tokenize(s).n_tokens.sum()) for s in shards)
    rows = []
    tok = enc.tokenizer.tokenize(texts[: per * args.shards])
    sync = torch.cuda.synchronize if card is not None else (lambda: None)
    sync()
    with Busy() if card is not None else _NoBusy() as busy:
        started = time.perf_counter()
        enc.embed(tok, pooling="mean", normalize_output=True)
        sync()
        engine_s = time.perf_counter() - started
    rows.append(("engine alone (tokenized beforehand)", 0, engine_s, busy.share))
    for lanes in (1, 2):
        seconds, share, _ = run_shards(enc, shards, lanes, card)
        rows.append((f"{args.shards} shards, {lanes} lane{'s' if lanes > 1 else ''} per card", lanes, seconds, share))
    out = []
    for what, lanes, seconds, share in rows:
        row = {
            "model": name, "precision": args.precision, "run": what, "lanes": lanes, "documents": per * args.shards,
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "vs_engine": round(engine_s / seconds, 3), "gpu_busy": round(share, 3),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        out.append(row)
    cold = cold_start(path, device, args.precision)
    shard_s = min(r["seconds"] for r in out if r["lanes"]) / args.shards * (args.shard_docs / per)
    fixed = cold["process_s"]
    cold_row = {"model": name, "run": "fresh shard process", **cold, "shard_s_at_shard_docs": round(shard_s, 3)}
    cold_row["fixed_share"] = round(fixed / (fixed + shard_s), 4)
    print(json.dumps(cold_row), flush=True)
    out.append(cold_row)
    del enc, model
    if card is not None:
        torch.cuda.empty_cache()
    return out


def _share(x: float) -> str:
    return "-" if x != x else f"{x:.0%}"  # NaN: not sampled (CPU)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the bundled all-MiniLM-L6-v2 directory")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--docs", type=int, default=40_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-docs", type=int, default=10_000, help="the default shard size, for the fixed share")
    parser.add_argument("--no-base", action="store_true", help="MiniLM only (no bert-base-sized model)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    lines = [json.loads(line)["text"] for line in SAMPLE.read_text().splitlines()]
    texts = (lines * (args.docs // len(lines) + 1))[: args.docs]
    rows = measure("all-MiniLM-L6-v2", args.model, args, texts, 256)
    if not args.no_base:
        with tempfile.TemporaryDirectory() as tmp:
            base = build_tiny_bert(Path(tmp) / "bert-base", layers=12, hidden=768, heads=12, tokenizer=args.model)
            rows += measure("bert-base (random)", base, args, texts, 512)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    table = [
        "| model | run | tokens/s | vs engine alone | GPU busy |",
        "|---|---|---:|---:|---:|",
        *(
            f"| {r['model']} | {r['run']} | {r['tokens_per_s']:,.0f} | {r['vs_engine']:.2f} | {_share(r['gpu_busy'])} |"
            for r in rows
            if "lanes" in r
        ),
        "",
        "| model | fresh process s | imports s | device start s | hash s | load s | shard s | fixed share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['model']} | {r['process_s']:.2f} | {r['import_s']:.2f} | {r['device_init_s']:.2f} | "
            f"{r['hash_s']:.2f} | {r['load_s']:.2f} | {r['shard_s_at_shard_docs']:.2f} | {r['fixed_share']:.1%} |"
            for r in rows
            if "fixed_share" in r
        ),
    ]
    md = f"{device}, torch {torch.__version__}, {args.precision}, {args.docs:,} docstrings in {args.shards} shards\n\n"
    md += "\n".join(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_lanes" if args.device == "cuda" else "gpu_lanes-cpu-smoke"
    (args.out / f"{stem}.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
