"""Compare the vector columns of two DESTs written by `bertflow embed`, bit for bit.

    python benchmarks/compare_parts.py DEST_A DEST_B

Every part (and documents/ part) of A must exist in B with the same ids and `embedding*` /
`token_embeddings` columns whose float32 bits are equal. Used to prove that a refactor changed
no vector: embed the sample corpus before and after, then compare. Exit 1 on any difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl


def _bits(series: pl.Series) -> np.ndarray:
    """The float32 bits of a vector column (Array or List of Arrays), flattened."""
    flat = series
    while flat.dtype.base_type() in (pl.List, pl.Array):
        flat = flat.explode() if flat.dtype.base_type() == pl.List else flat.arr.explode()
    return flat.to_numpy().astype(np.float32).view(np.uint32)


def compare(a: Path, b: Path) -> list[str]:
    problems = []
    names = sorted(p.relative_to(a) for p in a.rglob("part-*.parquet"))
    if not names:
        return [f"{a} holds no parts"]
    for name in names:
        left, right = pl.read_parquet(a / name), pl.read_parquet(b / name) if (b / name).exists() else None
        if right is None:
            problems.append(f"{name}: missing in {b}")
            continue
        if not left["id"].equals(right["id"]):
            problems.append(f"{name}: ids differ")
        vectors = [c for c in left.columns if c.startswith("embedding") or c == "token_embeddings"]
        for column in vectors:
            if column not in right.columns:
                problems.append(f"{name}: {column} missing in {b}")
            elif not np.array_equal(_bits(left[column]), _bits(right[column])):
                problems.append(f"{name}: {column} differs")
        print(f"{name}: {len(left)} rows, {', '.join(vectors)}: {'identical' if not problems else 'DIFFERENT'}")
    return problems


if __name__ == "__main__":
    found = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    for p in found:
        print("DIFF", p)
    sys.exit(1 if found else 0)
