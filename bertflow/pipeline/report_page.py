"""The report as one self-contained HTML page (plotly.js inlined: opens with no network), and the same
key pictures as Markdown for the Prefect UI (text bars: the UI shows them without fetching anything).

Each figure is a plotly div with a fixed id (`map`, `tokens`, `norms`, `rejects`, `timeline`,
`overlap`); after they render, the page writes what it drew into `<body data-rendered=...>` and any
script error into `data-errors`, which is what a headless browser reads back.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from bertflow.pipeline.report_data import ReportData

_WATCH = """<script>window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));</script>"""
# Counted from the rendered plots (plotly keeps each figure's data on its div) once the page has loaded.
_CHECK = """<script>window.addEventListener("load", () => {
  const count = (id, sel) => { const d = document.getElementById(id); return d ? d.querySelectorAll(sel).length : null; };
  const sum = id => { const d = document.getElementById(id); return d && d.data ? d.data.reduce((t, tr) => t + (tr.y || []).reduce((a, b) => a + b, 0), 0) : null; };
  document.body.dataset.rendered = JSON.stringify({
    map_points: count("map", ".scatterlayer .points path"),
    token_bars: count("tokens", ".barlayer .point"), token_rows: sum("tokens"),
    timeline_bars: count("timeline", ".barlayer .point"),
    overlap_bars: count("overlap", ".barlayer .point"),
  });
  document.body.dataset.errors = JSON.stringify(window.__errors);
});</script>"""
_STYLE = """<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style>"""


MAX_GROUPS = 20  # --color-by values drawn as their own trace; the rest as "other"


def groups(labels: list | None) -> list[str]:
    """Each row's colour group: its label among the MAX_GROUPS most frequent, else "other"."""
    if labels is None:
        return []
    names = [str(v) for v in labels]
    values, counts = np.unique(names, return_counts=True)
    top = set(values[np.argsort(-counts, kind="stable")[:MAX_GROUPS]])
    return [n if n in top else "other" for n in names]


def _map(d: ReportData, xy: np.ndarray, method: str) -> go.Figure:
    fig = go.Figure()
    # Plotly renders a subset of HTML in hover text and legend names: ids and texts are escaped.
    hover = [f"{html.escape(str(i))}<br>{html.escape(t or '')}" for i, t in zip(d.ids, d.snippets)]
    group = groups(d.labels)
    for name in sorted(set(group)) if group else [""]:
        rows = [k for k in range(len(d.ids)) if not group or group[k] == name]
        fig.add_trace(
            go.Scatter(
                x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=html.escape(name) or "rows",
                text=[hover[k] for k in rows], hoverinfo="text", marker={"size": 5, "opacity": 0.7},
            )
        )  # fmt: skip
    fig.update_layout(title=f"{len(d.ids):,} sampled rows, {method}")
    return fig


def _bars(x: list, y: list, title: str, xaxis: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=x, y=y))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title="rows", bargap=0.05)
    return fig


def _tokens(d: ReportData) -> go.Figure:
    mids = ((d.token_edges[:-1] + d.token_edges[1:]) / 2).tolist()
    share = d.truncated / max(d.documents, 1)
    cut = "cut into several windows" if d.chunked else "truncated"
    fig = _bars(mids, d.token_counts.tolist(), f"Tokens per row ({share:.1%} of documents {cut})", "n_tokens")
    fig.add_vline(x=d.max_length, line_dash="dash", annotation_text=f"max length {d.max_length}")
    return fig


def _norms(d: ReportData) -> go.Figure:
    norms = d.norms.astype(np.float64)
    lo, hi = float(norms.min(initial=0)), float(norms.max(initial=1))
    if hi - lo < 1e-3:  # normalized vectors: all about 1; give the bins a visible width
        lo, hi = lo - 0.005, hi + 0.005
    counts, edges = np.histogram(norms, bins=30, range=(lo, hi))
    return _bars(((edges[:-1] + edges[1:]) / 2).tolist(), counts.tolist(), "Vector norms (sample)", "L2 norm")


def _timeline(d: ReportData) -> go.Figure:
    t0 = min(b.start for b in d.timeline)
    fig = go.Figure(
        go.Bar(
            y=[f"{b.host} · {b.device}" for b in d.timeline],
            x=[(b.end - b.start).total_seconds() for b in d.timeline],
            base=[(b.start - t0).total_seconds() for b in d.timeline],
            orientation="h",
            text=[b.name for b in d.timeline],
            hovertext=[f"{b.name}: {b.rows:,} rows, {b.tokens_per_s:,.0f} tokens/s" for b in d.timeline],
            hoverinfo="text",
        )
    )
    fig.update_layout(
        title="Shards over time, by host and device", xaxis_title=f"seconds since {t0:%Y-%m-%d %H:%M:%S} UTC"
    )
    return fig


def _overlap(d: ReportData) -> go.Figure:
    assert d.compare is not None
    counts = np.bincount(np.rint(d.compare.overlap * 10).astype(int), minlength=11)
    return _bars([f"{i / 10:.1f}" for i in range(11)], counts.tolist(), "Neighbour overlap@10 per row", "overlap")


def _table(head: list[str], rows: list[list]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def page(d: ReportData) -> str:
    """The report as one HTML document."""
    figures: list[tuple[str, go.Figure | str]] = [
        ("map", _map(d, d.xy, "on their first two principal components (PCA)"))
    ]
    if d.umap is not None:
        figures.append(("umap", _map(d, d.umap, "UMAP (cosine)")))
    figures += [("tokens", _tokens(d)), ("norms", _norms(d))]
    if d.rejects:
        figures.append(
            ("rejects", _bars(list(d.rejects), list(d.rejects.values()), "Rejected rows by reason", "reason"))
        )
    figures.append(
        ("timeline", _timeline(d) if d.timeline else "<p>No shard recorded when it ran (bertflow before 0.5).</p>")
    )
    dup = f"Near-duplicate pairs (cosine &ge; {d.duplicate_threshold}, exact, within the sample)"
    pairs = _table(["id", "id", "cosine"], [list(p) for p in d.duplicates]) if d.duplicates else "<p>None.</p>"
    figures.append(("duplicates", f"<h2>{dup}</h2>{pairs}"))
    if d.compare is not None:
        c = d.compare
        figures.append(("overlap", _overlap(d)))
        rows = [[name, label, f"{a:.3f}", f"{b:.3f}"] for (name, label), (a, b) in c.by_label.items()]
        note = (
            _table(["figure", d.color_by or "label", d.dest, c.other], rows)
            if rows
            else "<p>Add --color-by for label figures.</p>"
        )
        figures.append(
            ("labels", f"<h2>Compared with {html.escape(c.other)}: mean overlap {c.overlap.mean():.3f}</h2>{note}")
        )
    body, first = [], True
    for name, fig in figures:
        if isinstance(fig, str):
            body.append(f'<section id="{name}-section">{fig}</section>')
            continue
        body.append(fig.to_html(full_html=False, include_plotlyjs=first, div_id=name, config={"displaylogo": False}))
        first = False
    title = f"bertflow report: {html.escape(d.dest)}"
    head = f"<meta charset='utf-8'><title>{title}</title>{_STYLE}{_WATCH}"
    summary = f"<h1>{title}</h1><p>{d.rows:,} rows; sample of {len(d.ids):,}.</p>"
    return f"<!DOCTYPE html><html><head>{head}</head><body>{summary}{''.join(body)}{_CHECK}</body></html>"


def _bar(n: float, most: float, width: int = 30) -> str:
    return "█" * max(1 if n else 0, round(width * n / most)) if most else ""


def markdown(d: ReportData, uri: str) -> str:
    """The key pictures as Markdown text bars: token lengths, rejects, the shard timeline."""
    most = float(d.token_counts.max(initial=0))
    lines = [f"**Report**: `{uri}` (open it in a browser: maps, norms, near-duplicates)", "", "**Tokens per row**", "",
             "| n_tokens | rows | |", "|---:|---:|:---|"]  # fmt: skip
    for lo, hi, n in zip(d.token_edges[:-1], d.token_edges[1:], d.token_counts):
        lines.append(f"| {lo:.0f}-{hi:.0f} | {n:,} | `{_bar(n, most)}` |")
    lines += ["", f"{d.truncated:,} documents longer than {d.max_length} tokens", ""]
    if d.rejects:
        lines += ["**Rejected rows**", "", "| reason | rows |", "|:---|---:|"]
        lines += [f"| {r} | {n:,} |" for r, n in d.rejects.items()] + [""]
    if d.timeline:
        t0 = min(b.start for b in d.timeline)
        span = max((b.end - t0).total_seconds() for b in d.timeline) or 1.0
        lines += ["**Shards over time**", "", "| shard | host | device | tokens/s | |", "|:---|:---|:---|---:|:---|"]
        for b in d.timeline:
            lead = round(30 * (b.start - t0).total_seconds() / span)
            length = max(1, round(30 * (b.end - b.start).total_seconds() / span))
            lines.append(f"| {b.name} | {b.host} | {b.device} | {b.tokens_per_s:,.0f} | `{'·' * lead}{'█' * length}` |")
    lines += ["", f"{len(d.duplicates)} near-duplicate pairs (cosine >= {d.duplicate_threshold}) in the sample"]
    return "\n".join(lines)
