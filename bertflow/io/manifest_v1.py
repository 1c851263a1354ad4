"""Manifests of bertflow 0.1 (format 1) read as format 2, so DESTs written before the upgrade still
resume, verify, search and backfill. Format 1 repeated the run's settings at the top level; format 2
embeds them as `config`. Pure: dicts in, a dict out.
"""

from __future__ import annotations

from typing import Any

from bertflow.choices import parse_pooling


def _dimensions(old: dict[str, Any], pooling: tuple[str, ...]) -> dict[str, int]:
    """Format 1 kept vector column -> width (`embedding_columns`, absent in its oldest files) and the
    first column's width as `model.dimension`; format 2 keeps pooling -> width."""
    columns = old.get("embedding_columns") or {"embedding": old["model"]["dimension"]}
    widths = list(columns.values())
    if len(widths) != len(pooling):  # token-level output: no vector column, the hidden size
        return {pooling[0]: old["model"]["dimension"]}
    return dict(zip(pooling, widths))


def _config(old: dict[str, Any]) -> dict[str, Any]:
    pooling = parse_pooling(old["pooling"])
    chunked = old.get("long_text") == "chunk"
    return {
        "model": {k: old["model"][k] for k in ("name", "path", "sha256")},
        "pooling": list(pooling),
        "dimensions": _dimensions(old, pooling),
        "layers": old["layers"],
        "layer_mode": old["layer_mode"],
        "normalize": old["normalize"],
        "max_length": old["model"]["max_length"],
        "id_column": old["id_column"],
        "text_column": old["text_column"],
        "keep": old["keep"],
        "shard_rows": old["shard_rows"],
        "batch_tokens": None,  # not recorded in format 1; it never changes a vector
        "device": "auto",
        "precision": old["precision"],
        "trust_remote_code": False,
        "exclude_special": old.get("exclude_special", False),
        "long_text": old.get("long_text", "truncate"),
        "chunk_tokens": old.get("chunk_tokens") if chunked else None,
        "stride": (old.get("stride") or 0) if chunked else 0,
        "aggregate": (old.get("aggregate") or "none") if chunked else "none",
        "pooler": old.get("pooler"),
        "reduction": old.get("reduction"),
    }


def _shard(old: dict[str, Any]) -> dict[str, Any]:
    planned = sum(p["stop"] - p["start"] for p in old["pieces"])
    return {**old, "documents": planned - old["rejected"]}


def upgrade(old: dict[str, Any]) -> dict[str, Any]:
    """A format-1 manifest as the format-2 dict that `Manifest` validates."""
    shards = [_shard(s) for s in old.get("shards", [])]
    totals = old.get("totals")
    if totals is not None:
        totals = {
            "documents": sum(s["documents"] for s in shards),
            "rows": totals["rows"],
            "rejected": totals["skipped"],
            "tokens": totals["tokens"],
            "truncated": totals["truncated"],
            "seconds": totals["seconds"],
        }
    return {
        "format_version": 2,
        "bertflow_version": old["bertflow_version"],
        "status": old["status"],
        "source": old["source"],
        "config": _config(old),
        "fingerprint": old["fingerprint"],
        "device": old.get("device"),
        "shards": shards,
        "planned_shards": old["planned_shards"],
        "totals": totals,
        "rejects": old.get("rejects"),
        "documents_parts": old.get("documents", []),
        "created_at": old["created_at"],
        "completed_at": old.get("completed_at"),
    }
