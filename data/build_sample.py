"""Rebuild data/sample/docs.jsonl: docstrings of the Python 3.11 standard library.

The text is the documentation that ships with CPython (PSF license). Each row is one public
module, class, function or method docstring; id is its dotted name; `module` is kept as an
extra column so the demo can show `--keep`. Deterministic for a given Python version.

    python data/build_sample.py [N]
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import sys
import warnings
from pathlib import Path

SKIP = ("test", "idlelib", "tkinter", "turtle", "antigravity", "this", "lib2to3", "ensurepip", "venv", "pydoc_data")


def docstrings(limit: int) -> list[dict]:
    rows, seen = [], set()
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names)
    for name in names:
        if name.startswith("_") or name.startswith(SKIP):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - some stdlib modules need a platform we lack
            continue
        objects = [(name, module)]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            objects.append((f"{name}.{attr}", obj))
            if inspect.isclass(obj):
                for meth, fn in sorted(vars(obj).items()):
                    if not meth.startswith("_") and callable(fn):
                        objects.append((f"{name}.{attr}.{meth}", fn))
        for qualname, obj in objects:
            doc = inspect.getdoc(obj)
            if not doc or len(doc) < 40 or doc in seen:
                continue
            seen.add(doc)
            rows.append({"id": qualname, "text": doc, "module": name})
            if len(rows) >= limit:
                return rows
    return rows


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    out = Path(__file__).parent / "sample" / "docs.jsonl"
    rows = docstrings(n)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} docstrings to {out}")
