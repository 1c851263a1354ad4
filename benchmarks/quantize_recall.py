"""Compact vectors (`--quantize`): recall@10 against float32 and bytes per vector, on the sample corpus.

Embeds data/sample/docs.jsonl with the bundled all-MiniLM-L6-v2 once as float32 and once per form
(`bertflow embed --quantize ...`, the CLI as a user runs it), then asks 300 queries (the first ten
words of 300 documents drawn with a fixed seed) and compares each form's top 10, scored the way
`bertflow search` scores it, with the float32 top 10. Reports recall@10 (mean overlap of the two
top-10 sets), how often the top hit agrees, the bytes of a stored vector and the Parquet bytes per
row of the part files (ids and the other columns included).

    python benchmarks/quantize_recall.py [--queries 300]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
from common import BERTFLOW, QUIET_ENV, REPO, RESULTS, git_state, say, table, write_results

SAMPLE = REPO / "data" / "sample" / "docs.jsonl"
FORMS = [("float32", None, 0), ("int8", "int8", 0), ("uint8", "uint8", 0), ("binary, Hamming only", "binary", 0),
         ("binary, rescored x4", "binary", 4), ("ubinary, rescored x4", "ubinary", 4)]  # fmt: skip


def embed(dest: Path, how: str | None) -> None:
    import os

    args = [BERTFLOW, "embed", str(SAMPLE), str(dest), "--keep", "module", *(["--quantize", how] if how else [])]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **QUIET_ENV})
    if done.returncode:
        raise SystemExit(done.stderr)


def main() -> None:
    from bertflow.io.parts import read_manifest
    from bertflow.pipeline.search import embed_query, query_config, similarity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    n_queries = parser.parse_args().queries
    docs = pl.read_ndjson(SAMPLE)
    rng = random.Random(0)
    picked = rng.sample(range(len(docs)), n_queries)
    queries = [" ".join(docs["text"][i].split()[:10]) for i in picked]
    with tempfile.TemporaryDirectory() as tmp:
        dests = {}
        for how in dict.fromkeys(h for _, h, _ in FORMS):
            dest = Path(tmp) / (how or "float32")
            say(f"embedding {len(docs)} documents as {how or 'float32'}")
            embed(dest, how)
            dests[how] = dest
        float_manifest = read_manifest(str(dests[None]))
        assert float_manifest is not None
        config = query_config(float_manifest)
        vectors = np.stack([embed_query(q, config) for q in queries])  # (Q, D) float queries
        rows = []
        truth = None
        for label, how, rescore in FORMS:
            manifest = read_manifest(str(dests[how]))
            assert manifest is not None
            files = sorted(dests[how].glob("part-*.parquet"))
            stored = pl.concat([pl.read_parquet(f, columns=["embedding"]) for f in files])["embedding"].to_numpy()
            top = np.stack(
                [np.argsort(-similarity(stored, q, manifest.config, 10, rescore), kind="stable")[:10] for q in vectors]
            )
            truth = top if truth is None else truth
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, truth)])
            first = np.mean(top[:, 0] == truth[:, 0])
            parquet = sum(f.stat().st_size for f in files) / len(stored)
            rows.append({"form": label, "recall_at_10": round(float(recall), 4), "top1_agreement": round(float(first), 4),
                         "vector_bytes": int(stored.shape[1] * stored.dtype.itemsize),
                         "parquet_bytes_per_row": round(parquet, 1)})  # fmt: skip
            say(f"{label}: recall@10 {recall:.3f}, top-1 {first:.3f}, {rows[-1]['vector_bytes']} bytes")
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "corpus": {"documents": len(docs), "queries": n_queries, "model": "all-MiniLM-L6-v2 (bundled), 384 dims"},
        "forms": rows,
    }
    lines = table(
        ["form", "recall@10 vs float32", "top-1 agrees", "bytes per vector", "Parquet bytes per row"],
        "lrrrr",
        [[r["form"], f"{r['recall_at_10']:.3f}", f"{r['top1_agreement']:.3f}", str(r["vector_bytes"]),
          f"{r['parquet_bytes_per_row']:,.0f}"] for r in rows],
    )  # fmt: skip
    header = (
        f"{len(docs)} documents of data/sample, {n_queries} queries (first ten words of a document), bundled MiniLM\n\n"
    )
    write_results(RESULTS, "quantize_recall", report, header + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
