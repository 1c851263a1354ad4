"""Build the labelled task of benchmarks/pooler_accuracy.py: docstrings labelled by their package.

Real text available offline: the docstrings of packages installed beside bertflow, read from
their source with `ast` (nothing is imported or executed). Each row is the prose part of one
module, class or function docstring (up to the first section such as "Parameters" or an
example), at least 40 characters; texts found in more than one package are dropped; the
package names themselves are masked as "PKG" so the task is about what the text says, not a
name it drops. At most N rows per package, drawn with a fixed seed. Deterministic for given
package versions, which are recorded beside the data.

    python benchmarks/build_pooler_data.py [OUT.jsonl] [--per-class N]
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import inspect
import json
import random
import re
from collections import defaultdict
from pathlib import Path

# Eight packages from different corners of Python, some close to each other on purpose
# (numpy/scipy/sympy, torch/transformers), so the task is not trivial.
PACKAGES = {  # import name -> distribution name
    "numpy": "numpy",
    "scipy": "scipy",
    "sympy": "sympy",
    "networkx": "networkx",
    "sqlalchemy": "SQLAlchemy",
    "torch": "torch",
    "transformers": "transformers",
    "prefect": "prefect",
}
SKIP_DIRS = {"tests", "test", "testing", "_vendor", "vendor", "externals", "_vendored", "benchmarks"}
SECTION = re.compile(
    r"^\s*(>>>|\.\. |(Parameters|Params|Args|Arguments|Returns?|Yields?|Raises|Examples?|Example usage|Notes?|"
    r"See Also|References|Attributes|Keyword Args|Warnings?)\s*:?\s*$)",
    re.IGNORECASE,
)
MIN_CHARS = 40
MAX_CHARS = 1200
DEFAULT_OUT = Path(__file__).parent / "data" / "package_docstrings.jsonl"


def prose(doc: str) -> str:
    """The description part of a docstring: lines up to the first section header or example."""
    lines = []
    for line in inspect.cleandoc(doc).splitlines():
        if SECTION.match(line) or re.match(r"^\s*[-=]{3,}\s*$", line):
            if lines and lines[-1].strip() and not SECTION.match(line):
                lines.pop()  # a numpydoc header sits on the line above its underline
            break
        lines.append(line)
    return "\n".join(lines).strip()[:MAX_CHARS]


def docstrings(root: Path) -> list[tuple[str, str]]:
    """(id, docstring) of every module, class and function under `root`; id = qualified name:line."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if SKIP_DIRS & set(rel.parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts)
        if (doc := ast.get_docstring(tree)) is not None:
            found.append((f"{module}:1", doc))
        stack = [(module, n) for n in tree.body]
        while stack:
            prefix, node = stack.pop(0)
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{node.name}"
                if (doc := ast.get_docstring(node)) is not None:
                    found.append((f"{name}:{node.lineno}", doc))  # names can repeat, lines cannot
                if isinstance(node, ast.ClassDef):
                    stack.extend((name, n) for n in node.body)
    return found


def build(per_class: int, seed: int = 0) -> tuple[list[dict], dict]:
    mask = re.compile(r"\b(" + "|".join(sorted(PACKAGES, key=len, reverse=True)) + r")\b", re.IGNORECASE)
    texts: dict[str, list[tuple[str, str]]] = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"package {package} is not installed; install it or edit PACKAGES")
        root = Path(next(iter(spec.submodule_search_locations)))
        rows = []
        for name, doc in docstrings(root):
            text = mask.sub("PKG", prose(doc))
            if len(text) >= MIN_CHARS:
                rows.append((name, text))
        texts[package] = rows
    owners = defaultdict(set)
    for package, rows in texts.items():
        for _, text in rows:
            owners[text].add(package)
    out, rng = [], random.Random(seed)
    for package, rows in texts.items():
        seen, unique = set(), []
        for name, text in rows:
            if len(owners[text]) == 1 and text not in seen:
                seen.add(text)
                unique.append((name, text))
        picked = sorted(rng.sample(unique, min(per_class, len(unique))))
        out += [{"id": name, "text": text, "package": package} for name, text in picked]
    meta = {
        "rows": len(out),
        "per_package": {p: sum(r["package"] == p for r in out) for p in PACKAGES},
        "versions": {p: importlib.metadata.version(d) for p, d in PACKAGES.items()},
        "per_class": per_class,
        "seed": seed,
    }
    return out, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--per-class", type=int, default=750)
    args = parser.parse_args()
    rows, meta = build(args.per_class)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    args.out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{meta['rows']} rows -> {args.out}: {meta['per_package']}")


if __name__ == "__main__":
    main()
