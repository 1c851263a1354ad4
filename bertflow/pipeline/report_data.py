"""What `bertflow report` shows, computed from a DEST: counts over every row (streamed, small columns
only), a bounded random sample of the vectors (map, norms, near-duplicates, comparison), the manifest's
per-shard timeline and the rejects. Pure numpy/polars; the page is drawn by `report_page`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from bertflow.errors import InputError
from bertflow.io import parts
from bertflow.io.manifest import REJECTS_NAME, Manifest
from bertflow.vectors import dequantize

SAMPLE = 20_000  # rows in the map and the norm histogram
PAIRS_SAMPLE = 5_000  # of those, rows searched for near-duplicates and compared (exact, n^2)
NEIGHBOURS = 10
TOKEN_BINS = 30
SNIPPET = 120


@dataclass(frozen=True)
class ShardBar:
    """One shard on the timeline: where and when it ran."""

    name: str
    host: str
    device: str
    start: datetime
    end: datetime
    rows: int
    tokens_per_s: float


@dataclass
class Comparison:
    """The same sampled rows under DEST and OTHER."""

    other: str
    overlap: np.ndarray  # (n,) neighbour overlap@10 of each row, in [0, 1]
    # (figure, label or "all") -> (under DEST, under OTHER): silhouette and kNN accuracy, per label and overall
    by_label: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)


@dataclass
class ReportData:
    dest: str
    rows: int
    max_length: int
    truncated: int  # documents truncated, or (chunked) cut into several windows
    documents: int
    chunked: bool
    token_edges: np.ndarray  # (B+1,) bin edges of n_tokens
    token_counts: np.ndarray  # (B,) rows per bin, over every row of DEST
    norms: np.ndarray  # (n,) the sample's vector norms
    ids: list  # the sample's ids
    labels: list | None  # the sample's `--color-by` values
    snippets: list[str | None]
    xy: np.ndarray  # (n, 2) the sample on its first two principal components
    umap: np.ndarray | None  # (n, 2) the sample's UMAP embedding, when umap-learn is installed
    rejects: dict[str, int]
    timeline: list[ShardBar]
    duplicates: list[tuple[object, object, float]]  # (id, id, cosine), most similar first
    duplicate_threshold: float
    color_by: str | None
    compare: Comparison | None = None


def _float_vectors(frame: pl.DataFrame, column: str, manifest: Manifest) -> np.ndarray:
    """(N, D) float32 of a vector column, quantized ones back to the values they stand for."""
    stored = frame[column].to_numpy()
    config = manifest.config
    if config.quantize is None:
        return stored.astype(np.float32, copy=False)
    return dequantize(stored, config.quantize, config.quantize_ranges, dim=config.embedding_columns()[column])


def timeline(manifest: Manifest) -> list[ShardBar]:
    """The shards that recorded when and where they ran (bertflow 0.5 on), in start order."""
    bars = []
    for s in manifest.shards:
        if s.finished_at is None:
            continue
        start = s.finished_at - timedelta(seconds=s.seconds)
        rate = s.tokens / s.seconds if s.seconds else 0.0
        bars.append(ShardBar(s.name, s.host or "?", s.device or "?", start, s.finished_at, s.rows, rate))
    return sorted(bars, key=lambda b: b.start)


def _rejects(dest: str, manifest: Manifest) -> dict[str, int]:
    if manifest.rejects is None:
        return {}
    frame = parts.read_columns(dest, REJECTS_NAME, ["reason"])
    counts = frame.group_by("reason").len().sort("len", descending=True)
    return {str(r): int(n) for r, n in counts.iter_rows()}


def principal_plane(x: np.ndarray) -> np.ndarray:
    """(n, 2): the rows of (n, D) on their first two principal components."""
    if len(x) < 2:
        return np.zeros((len(x), 2), np.float32)
    centered = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)  # vt: (min(n, D), D)
    plane = centered @ vt[:2].T  # (n, <=2)
    return np.pad(plane, ((0, 0), (0, 2 - plane.shape[1]))).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def near_duplicates(x: np.ndarray, ids: list, threshold: float, limit: int = 100) -> list[tuple]:
    """Pairs of rows whose cosine is at least `threshold` (exact, blockwise), most similar first."""
    u = unit(x)
    best = (np.empty(0, np.float32), np.empty(0, np.int64), np.empty(0, np.int64))  # (cosine, i, j), at most `limit`
    for start in range(0, len(u), 1024):
        block = u[start : start + 1024] @ u.T  # (b, n)
        upper = np.arange(start, start + len(block))[:, None] < np.arange(len(u))[None, :]  # each pair once
        rows, cols = np.nonzero((block >= threshold) & upper)
        sims = np.concatenate([best[0], block[rows, cols]])
        i, j = np.concatenate([best[1], rows + start]), np.concatenate([best[2], cols])
        keep = np.argsort(-sims, kind="stable")[:limit]  # only the best `limit` so far are kept
        best = (sims[keep], i[keep], j[keep])
    return [(ids[i], ids[j], round(float(s), 4)) for s, i, j in zip(*best)]


def neighbours(x: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """(n, k) indices of each row's k nearest other rows by cosine."""
    sims = unit(x) @ unit(x).T  # (n, n)
    np.fill_diagonal(sims, -np.inf)
    k = min(k, len(x) - 1)
    return np.argpartition(-sims, k - 1, axis=1)[:, :k]


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of the rows under cosine distance (labels with one member score 0)."""
    return float(silhouettes(x, labels).mean())


def silhouettes(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n,) each row's silhouette under cosine distance: (b - a) / max(a, b), a its mean distance to its own
    label's other rows, b to the nearest other label's; 0 for a label of one row; NaN with one label."""
    dist = 1 - unit(x) @ unit(x).T  # (n, n)
    names, codes = np.unique(labels, return_inverse=True)
    if len(names) < 2:
        return np.full(len(x), np.nan)
    means = np.stack([dist[:, codes == c].sum(axis=1) for c in range(len(names))], axis=1)  # (n, L)
    sizes = np.bincount(codes, minlength=len(names)).astype(float)
    own = sizes[codes] - 1
    a = np.where(own > 0, means[np.arange(len(x)), codes] / np.maximum(own, 1), 0)
    means = means / sizes
    means[np.arange(len(x)), codes] = np.inf
    b = means.min(axis=1)
    return np.where(own > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0)


def knn_accuracy(x: np.ndarray, labels: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Leave-one-out: the share of rows whose k nearest neighbours' majority label is their own."""
    return float(knn_hits(x, labels, k).mean())


def knn_hits(x: np.ndarray, labels: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """(n,) whether each row's k nearest others vote for its own label (a tie counts only if its label is
    among the most voted, so no label wins ties by its name)."""
    near = neighbours(x, k)
    names, codes = np.unique(labels, return_inverse=True)
    votes = np.stack([np.bincount(row, minlength=len(names)) for row in codes[near]])  # (n, L)
    return votes[np.arange(len(x)), codes] == votes.max(axis=1)


def _text_column(manifest: Manifest, dest: str, color_by: str | None) -> str | None:
    """The kept string column whose start shows on hover: the first one that is not `color_by`."""
    strings = parts.string_columns(dest, manifest)
    return next((c for c in strings if c != color_by), strings[0] if strings else None)


def _sample(dest: str, manifest: Manifest, columns: list[str], size: int) -> pl.DataFrame:
    """A uniform random sample (seed 0) of `size` rows of DEST, in DEST's order, part by part."""
    total = sum(s.rows for s in manifest.shards)
    chosen = np.sort(np.random.default_rng(0).choice(total, min(size, total), replace=False))
    frames, offset = [], 0
    for s in manifest.shards:
        here = chosen[(chosen >= offset) & (chosen < offset + s.rows)] - offset
        if len(here):
            frames.append(parts.read_columns(dest, s.name, columns)[here])
        offset += s.rows
    return pl.concat(frames) if frames else pl.DataFrame()


def _compare(other: str, key: list[str], sample: pl.DataFrame, x: np.ndarray, labels: list | None) -> Comparison:
    """The sampled rows found in OTHER (by key), neighbour overlap and label figures under both."""
    theirs = parts.read_pooled(other, "compare with")
    if theirs.config.chunked != ("chunk_index" in key):
        raise InputError(f"--compare {other}: one output is chunked (a row per window), the other not; compare alike")
    column = next(iter(theirs.config.embedding_columns()))
    wanted = sample.select(key).with_row_index("_row")
    found = []
    for s in theirs.shards:
        frame = parts.read_columns(other, s.name, [*key, column])
        found.append(frame.join(wanted, on=key, how="inner"))
    both = pl.concat(found).sort("_row") if found else pl.DataFrame()
    if len(both) < NEIGHBOURS + 1:
        raise InputError(
            f"--compare {other}: only {len(both)} of the sampled rows are in it; compare two outputs of the same texts"
        )
    rows = both["_row"].to_numpy()
    mine, yours = x[rows], _float_vectors(both, column, theirs)
    a, b = neighbours(mine), neighbours(yours)
    overlap = np.array([len(set(p) & set(q)) / a.shape[1] for p, q in zip(a, b)])
    result = Comparison(other, overlap)
    if labels is not None:
        named = np.array([str(labels[r]) for r in rows])
        figures = {
            "silhouette (cosine)": (silhouettes(mine, named), silhouettes(yours, named)),
            f"kNN accuracy (k={NEIGHBOURS})": (knn_hits(mine, named), knn_hits(yours, named)),
        }
        for figure, (a, b) in figures.items():
            result.by_label[(figure, "all")] = (float(np.mean(a)), float(np.mean(b)))
            for label in np.unique(named):
                pick = named == label
                result.by_label[(figure, str(label))] = (float(np.mean(a[pick])), float(np.mean(b[pick])))
    return result


def umap_plane(x: np.ndarray) -> np.ndarray | None:
    """(n, 2) UMAP of the rows under cosine distance when umap-learn is installed (seeded), else None."""
    try:
        import umap
    except ImportError:
        return None
    return umap.UMAP(n_components=2, metric="cosine", random_state=0).fit_transform(x).astype(np.float32)


def gather(
    dest: str,
    color_by: str | None = None,
    compare: str | None = None,
    sample: int = SAMPLE,
    duplicate_threshold: float = 0.95,
) -> ReportData:
    """Everything the report shows of DEST (and, with `compare`, of OTHER on the same sampled rows)."""
    if sample < NEIGHBOURS + 1:
        raise InputError(f"--sample {sample}: sample at least {NEIGHBOURS + 1} rows")
    if not 0 < duplicate_threshold <= 1:
        raise InputError(f"--duplicate-threshold {duplicate_threshold}: give a cosine in (0, 1]")
    manifest = parts.read_pooled(dest, "report on")
    config = manifest.config
    if color_by is not None and color_by not in config.keep:
        kept = ", ".join(config.keep) or "none (keep one with --keep at embed time)"
        raise InputError(f"--color-by {color_by}: not a kept column of DEST; kept columns: {kept}")
    column = next(iter(config.embedding_columns()))
    key = ["id", *(["chunk_index"] if config.chunked else [])]
    text = _text_column(manifest, dest, color_by)
    wanted = list(dict.fromkeys([*key, column, *(c for c in (color_by, text) if c)]))
    picked = _sample(dest, manifest, wanted, sample)
    x = _float_vectors(picked, column, manifest)  # (n, D)
    small = ["n_tokens", *(["id", "chunk_index"] if config.chunked else [])]
    streamed = pl.concat([parts.read_columns(dest, s.name, small) for s in manifest.shards])
    tokens = streamed["n_tokens"].to_numpy()
    # Documents longer than the model takes: truncated ones, or, chunked, those cut into several windows.
    cut = streamed.filter(pl.col("chunk_index") > 0)["id"].n_unique() if config.chunked else None
    width = -(-(int(tokens.max(initial=0)) + 1) // TOKEN_BINS)  # whole tokens per bin: no comb of 17s and 18s
    edges = np.arange(0, int(tokens.max(initial=0)) + width + 1, width)
    counts, _ = np.histogram(tokens, bins=edges)
    labels = picked[color_by].to_list() if color_by else None
    ids = picked["id"].to_list()
    # Near-duplicates and the comparison are n^2: on a random PAIRS_SAMPLE of the sample.
    sub = np.sort(np.random.default_rng(1).choice(len(picked), min(len(picked), PAIRS_SAMPLE), replace=False))
    texts = picked[text].to_list() if text else [None] * len(ids)
    snippets: list[str | None] = [t[:SNIPPET] if isinstance(t, str) else None for t in texts]
    return ReportData(
        dest=dest,
        rows=len(tokens),
        max_length=config.max_length,
        truncated=cut if cut is not None else (manifest.totals.truncated if manifest.totals else 0),
        documents=manifest.totals.documents if manifest.totals else len(tokens),
        chunked=config.chunked,
        token_edges=edges,
        token_counts=counts,
        norms=np.linalg.norm(x, axis=1),
        ids=ids,
        labels=labels,
        snippets=snippets,
        xy=principal_plane(x),
        umap=umap_plane(x) if len(x) > NEIGHBOURS + 5 else None,
        rejects=_rejects(dest, manifest),
        timeline=timeline(manifest),
        duplicates=near_duplicates(x[sub], [ids[i] for i in sub], duplicate_threshold),
        duplicate_threshold=duplicate_threshold,
        color_by=color_by,
        compare=_compare(compare, key, picked[sub], x[sub], [labels[i] for i in sub] if labels else None)
        if compare
        else None,
    )
