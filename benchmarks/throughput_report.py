"""throughput.py's rows: what one run shares (`Bench`), each measured `Row`, the targets, the report."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from common import say, table
from corpus import PACKAGES
from metrics import top10_overlap

from bertflow.choices import pooling_label

TARGETS = {"fp32_vs_st": 1.3, "fp32_max_abs_diff": 1e-5, "bf16_vs_st": 2.3, "bf16_overlap": 0.99, "flow_gap": 0.10}


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


@dataclass
class Bench:
    """One run: its options, corpus (source file, rows, texts, tokens, FLOPs), matmul peaks, and rows so far."""

    args: argparse.Namespace
    work: Path
    src: Path
    rows_in: list[dict]
    n_tokens: int
    flops: float
    peak: dict[str, float]
    config: Any  # bertflow's EmbedConfig, resolved
    results: list[Row] = field(default_factory=list)

    @cached_property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.rows_in]

    def add(
        self,
        name: str,
        precision: str,
        seconds: float,
        others_cores: float,
        vs: tuple | None = None,
        extra: dict | None = None,
        counts: tuple[int, int] | None = None,
    ) -> Row:
        """Record a row; vs = (embeddings, reference embeddings, the reference's name) fills the
        max-abs-diff and overlap columns; counts = (docs, tokens) when not the whole corpus's."""
        import numpy as np

        docs, tokens = counts or (len(self.rows_in), self.n_tokens)
        diff = overlap = None
        against = ""
        if vs is not None:
            out, base, against = vs
            diff, overlap = float(np.abs(out - base).max()), top10_overlap(out, base)
        peak = self.peak[precision]
        row = Row(
            name, precision, seconds, docs, tokens, others_cores, self.flops, peak, diff, overlap, against, extra or {}
        )
        self.results.append(row)
        ratio = row.tokens_s / self.results[0].tokens_s
        say(
            f"  {row.name} [{row.precision}]: {row.seconds:.1f}s, {row.docs_s:.1f} docs/s, {row.tokens_s:,.0f} tokens/s, "
            f"{ratio:.2f}x ST, {row.peak_fraction:.0%} of peak; other processes used {row.others_cores:.2f} cores"
        )
        return row


def build_report(bench: Bench, machine: dict, truncated: float, prefect_server: dict | None) -> dict:
    """throughput.json: the machine, corpus, model, peaks, Prefect server timings, rows and targets."""
    args, config, results = bench.args, bench.config, bench.results
    report = {
        "machine": machine,
        "device": args.device,
        "corpus": {
            "docs": len(bench.rows_in),
            "tokens": bench.n_tokens,
            "tokens_per_doc": bench.n_tokens / len(bench.rows_in),
            "truncated": truncated,
            "max_length": args.max_length,
            "packages": list(PACKAGES),
        },
        "model": {
            "name": config.model.name,
            "pooling": pooling_label(config.pooling),
            "normalize": config.normalize,
            "flops_per_token": bench.flops / bench.n_tokens,
        },
        "peak_gflops": bench.peak,
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
    report["targets"] = targets(results) if args.device == "cpu" else {}
    return report


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
        *_rows_table(report["rows"]),
        "",
    ]
    if p:
        lines.append(
            f"Prefect's temporary server (not in the flow rows): start {p['start_s']:.1f}s, first 32-row flow "
            f"{p['first_flow_s']:.1f}s, stop {p['stop_s']:.1f}s."
        )
    lines.append('"other load": CPU time other processes on the machine used during the row, in cores.')
    if report["targets"]:
        met = [[k, v["value"], "yes" if v["met"] else "no"] for k, v in report["targets"].items()]
        lines += ["", *table(["target", "measured", "met"], "lll", met)]
    return "\n".join(lines) + "\n"


def _rows_table(rows: list[dict]) -> list[str]:
    header = ["run", "precision", "docs/s", "tokens/s", "vs ST", "of matmul peak", "max abs diff"]
    header += ["top-10 overlap", "other load"]
    cells = []
    for r in rows:
        diff = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "-"
        ov = f"{r['overlap']:.3f}" if r["overlap"] is not None else "-"
        vs = f" (vs {r['against']})" if r["against"] else ""
        cells.append(
            [
                r["name"],
                r["precision"],
                f"{r['docs_s']:,.1f}",
                f"{r['tokens_s']:,.0f}",
                f"{r['vs_st']:.2f}x",
                f"{r['peak_fraction']:.0%}",
                f"{diff}{vs}",
                ov,
                f"{r['others_cores']:.2f} cores",
            ]
        )
    return table(header, "llrrrrrrr", cells)
