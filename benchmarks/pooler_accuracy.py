"""Held-out accuracy: logistic regression on mean pooling vs on mean + a trained (Bi)LSTM head.

Runs `bertflow train-pooler` as a user would, on the labelled docstrings built by
`build_pooler_data.py` (built first if missing), with the bundled model, once per head, and
prints a Markdown table; the table and every report go to benchmarks/results/pooler_accuracy.*.
Not part of the test run.

    python benchmarks/pooler_accuracy.py [--epochs N] [--hidden H] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "package_docstrings.jsonl"
RESULTS = HERE / "results"
BERTFLOW = str(Path(sys.executable).with_name("bertflow"))


def train(out: Path, hidden: int, epochs: int, seed: int, bidirectional: bool) -> tuple[dict, float]:
    cmd = [
        BERTFLOW,
        "train-pooler",
        str(DATA),
        str(out),
        "--label-column",
        "package",
        "--hidden",
        str(hidden),
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
    ] + (["--bidirectional"] if bidirectional else [])
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return json.loads((out / "report.json").read_text()), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.exists():
        subprocess.run([sys.executable, str(HERE / "build_pooler_data.py"), str(DATA)], check=True)
    meta = json.loads(DATA.with_suffix(".meta.json").read_text())

    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, bidirectional in (("lstm", False), ("bilstm", True)):
            report, seconds = train(Path(tmp) / name, args.hidden, args.epochs, args.seed, bidirectional)
            reports[name] = {**report, "seconds": round(seconds, 1)}

    first = reports["lstm"]
    acc = {k: r["test_accuracy"] for k, r in reports.items()}
    rows = first["rows"]
    lines = [
        f"Task: {sum(first['classes'].values()):,} docstrings of {len(first['classes'])} packages "
        f"({', '.join(first['classes'])}), labelled by package; split per class into "
        f"{rows['train']:,} train / {rows['validation']:,} validation / {rows['test']:,} held-out test rows "
        f"(seed {args.seed}). Encoder: {first['model']} (frozen), max length {first['max_length']}.",
        "",
        "| features (logistic regression, L2 picked on validation) | dimension | held-out accuracy |",
        "|---|---|---|",
        f"| majority class (no features) | - | {acc['lstm']['majority']:.3f} |",
        f"| mean pooling | 384 | {acc['lstm']['mean']:.3f} |",
    ]
    for name, label in (("lstm", "LSTM"), ("bilstm", "BiLSTM")):
        r = reports[name]
        width = 384 + r["hidden"] * (2 if r["bidirectional"] else 1)
        lines.append(
            f"| mean + {label}({r['hidden']}) head (`mean_lstm`; kept epoch {r['best_epoch']} of "
            f"{r['epochs_run']} run, {r['seconds']:.0f} s) | {width} | {acc[name]['mean_lstm']:.3f} |"
        )
    if acc["bilstm"]["mean"] != acc["lstm"]["mean"]:
        raise SystemExit("the two runs split or encoded differently; the mean-pooling rows should agree")
    env = (
        f"torch {torch.__version__}, {platform.machine()} CPU, {torch.get_num_threads()} threads; "
        f"docstrings from {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}"
    )
    table = "\n".join(lines) + "\n\n" + env + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pooler_accuracy.md").write_text(table)
    (RESULTS / "pooler_accuracy.json").write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":
    main()
