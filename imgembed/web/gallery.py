"""Self-contained HTML pages of results: thumbnails are embedded as data URIs, so a page still
works when it is moved or mailed. No JavaScript, no external files."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from ..errors import ImageLoadError
from ..imaging.decode import read_image

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em} h2{font-size:1.05em;margin:1.6em 0 .5em}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;width:170px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
figure.query{border:2px solid #3367d6}
figure img{width:160px;height:160px;object-fit:contain;display:block;margin:auto;background:#fff}
figcaption{font-size:.78em;word-break:break-all;margin-top:4px}
.score{font-weight:600} .label{color:#3367d6} .missing{width:160px;height:160px;display:flex;
align-items:center;justify-content:center;color:#999;font-size:.8em;border:1px dashed #ccc}
"""


def thumbnail(path: str | Path | Image.Image, size: int = 160) -> str | None:
    """A JPEG data URI of the image scaled to fit ``size`` px, or None if it cannot be read."""
    try:
        img = path if isinstance(path, Image.Image) else read_image(path, min_side=size).image
    except (ImageLoadError, OSError):
        return None
    img = img.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(path, caption_html: str, css: str = "") -> str:
    uri = thumbnail(path)
    img = f'<img src="{uri}" alt="">' if uri else '<div class="missing">not readable</div>'
    return f'<figure class="{css}">{img}<figcaption>{caption_html}</figcaption></figure>'


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def _hit_caption(rank: int, score: float, label: str | None, path: str) -> str:
    return (f'#{rank} <span class="score">{score:.4f}</span> '
            f'<span class="label">{html.escape(label or "-")}</span><br>{html.escape(path)}')


def search_page(results, title: str = "imgembed search") -> str:
    """``results``: :class:`imgembed.api.QueryResult` list; each query beside its ranked hits."""
    parts = []
    for r in results:
        figures = [_figure(r.query, f"query<br>{html.escape(r.query)}", "query")]
        figures += [_figure(h.row.full_path, _hit_caption(h.rank, h.score, h.row.label, h.row.full_path))
                    for h in r.hits]
        parts.append(f"<h2>{html.escape(r.query)}</h2><div class='row'>{''.join(figures)}</div>")
    return _page(title, "".join(parts))


def classify_page(results, title: str = "imgembed classify") -> str:
    """``results``: :class:`imgembed.api.Classification` list; the verdict, then the voters."""
    parts = []
    for c in results:
        votes = ", ".join(f"{html.escape(k)} {n}" for k, n in sorted(c.vote.votes.items(), key=lambda kv: -kv[1]))
        verdict = (f"{html.escape(c.vote.label or '(no labelled neighbours)')} "
                   f"(confidence {c.vote.confidence:.2f}; votes: {votes or 'none'})")
        figures = [_figure(c.query, f"query<br>{html.escape(c.query)}", "query")]
        figures += [_figure(h.row.full_path, _hit_caption(h.rank, h.score, h.row.label, h.row.full_path))
                    for h in c.neighbours]
        parts.append(f"<h2>{html.escape(c.query)}: {verdict}</h2><div class='row'>{''.join(figures)}</div>")
    return _page(title, "".join(parts))


def duplicates_page(groups, criterion: str, title: str = "imgembed duplicates") -> str:
    """``criterion``: how pairs were chosen, as HTML, e.g. ``relative score &ge; 0.5``."""
    parts = [f"<p>{len(groups)} groups of near-duplicates at {criterion}</p>"]
    for n, g in enumerate(groups, 1):
        figures = [_figure(r.full_path, f'<span class="score">{s:.4f}</span><br>{html.escape(r.full_path)}')
                   for r, s in zip(g.rows, g.scores)]
        parts.append(f"<h2>group {n}: {len(g.rows)} images</h2><div class='row'>{''.join(figures)}</div>")
    return _page(title, "".join(parts))


_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]


def _metrics_table(rows) -> str:
    cols = [("precision_at_1", "P@1"), ("recall_at_1", "R@1"), ("recall_at_5", "R@5"), ("recall_at_10", "R@10"),
            ("map_at_r", "mAP@R"), ("knn_accuracy", "k-NN acc"), ("queries", "queries")]
    head = "".join(f"<th>{c}</th>" for _, c in cols)
    body = "".join(
        f"<tr><td>{html.escape(r.name)}</td>" + "".join(
            f"<td>{r.metrics[k]:.3f}</td>" if isinstance(r.metrics[k], float) else f"<td>{r.metrics[k]}</td>"
            for k, _ in cols) + "</tr>" for r in rows)
    return f"<table><tr><th>model</th>{head}</tr>{body}</table>"


def _per_class(rows) -> str:
    classes = sorted({str(c) for r in rows for c in r.query_labels})
    stats = []
    for r in rows:
        hit, n = {}, {}
        for i, _, _, nn, _ in r.details:
            c = str(r.query_labels[i])
            n[c] = n.get(c, 0) + 1
            hit[c] = hit.get(c, 0) + (r.gallery_labels[nn[0]] == r.query_labels[i])
        stats.append({c: (hit.get(c, 0) / n[c] if n.get(c) else None) for c in classes})
    head = "".join(f"<th>{html.escape(r.name)}</th>" for r in rows)
    body = "".join(f"<tr><td>{html.escape(c)}</td>" + "".join(
        "<td>-</td>" if s[c] is None else f"<td>{s[c]:.3f}</td>" for s in stats) + "</tr>" for c in classes)
    return f"<table><tr><th>class</th>{head}</tr>{body}</table>"


def _confusion(row) -> str:
    classes = sorted({str(c) for c in row.query_labels})
    index = {c: i for i, c in enumerate(classes)}
    m = [[0] * len(classes) for _ in classes]
    for i, _, predicted, _, _ in row.details:
        if predicted is not None and str(predicted) in index:
            m[index[str(row.query_labels[i])]][index[str(predicted)]] += 1
    peak = max(1, max(max(line) for line in m))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    body = "".join(
        f"<tr><th>{html.escape(c)}</th>" + "".join(
            f"<td style='background:rgba(51,103,214,{v / peak:.2f})'>{v}</td>" for v in line) + "</tr>"
        for c, line in zip(classes, m))
    return f"<table class='confusion'><tr><th>true &darr; predicted &rarr;</th>{head}</tr>{body}</table>"


def _worst(row, count: int = 6, shown: int = 5) -> str:
    worst = sorted(row.details, key=lambda d: d[1])[:count]
    parts = []
    for i, ap, predicted, nn, sims in worst:
        label = str(row.query_labels[i])
        figures = [_figure(row.query_paths[i], f"query ({html.escape(label)})<br>AP@R {ap:.3f}", "query")]
        figures += [_figure(row.gallery_paths[j], _hit_caption(rank, float(s), str(row.gallery_labels[j]),
                                                                row.gallery_paths[j]))
                    for rank, (j, s) in enumerate(zip(nn[:shown], sims[:shown]), 1)]
        parts.append(f"<div class='row'>{''.join(figures)}</div>")
    return "".join(parts)


def _map_svg(row, size: int = 420, limit: int = 3000) -> str:
    """Principal-component projection of the embeddings, one dot per image, coloured by class."""
    import numpy as np

    v, labels = row.query_vectors, np.asarray([str(c) for c in row.query_labels])
    if len(v) > limit:
        keep = np.sort(np.random.default_rng(0).choice(len(v), limit, replace=False))
        v, labels = v[keep], labels[keep]
    centred = v - v.mean(0)
    xy = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T if len(v) > 2 else np.zeros((len(v), 2))
    lo, hi = xy.min(0), xy.max(0)
    xy = (xy - lo) / np.where(hi > lo, hi - lo, 1) * (size - 20) + 10
    classes = sorted(set(labels))
    colour = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(classes)}
    dots = "".join(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{colour[c]}' fill-opacity='.75'>"
                   f"<title>{html.escape(c)}</title></circle>" for (x, y), c in zip(xy, labels))
    legend = " ".join(f"<span style='color:{colour[c]}'>&#9679;</span> {html.escape(c)}" for c in classes)
    return (f"<figure style='width:auto'><svg width='{size}' height='{size}' style='background:#fff'>{dots}</svg>"
            f"<figcaption>{html.escape(row.name)}<br>{legend}</figcaption></figure>")


def evaluation_page(rows, title: str = "imgembed evaluate") -> str:
    """Metrics side by side, per-class Precision@1, the k-NN confusion matrix and the worst
    queries of the last model, and a 2-D map of each model's embedding space."""
    last = rows[-1]
    body = (
        "<style>table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;"
        "font-size:.85em;text-align:right}th{background:#f0f0f0}</style>"
        f"<h2>Metrics</h2>{_metrics_table(rows)}"
        f"<h2>Precision@1 per class</h2>{_per_class(rows)}"
        f"<h2>k-NN confusion matrix: {html.escape(last.name)}</h2>{_confusion(last)}"
        f"<h2>Worst-retrieved queries: {html.escape(last.name)}</h2>{_worst(last)}"
        f"<h2>Embedding space (first two principal components)</h2>"
        f"<div class='row'>{''.join(_map_svg(r) for r in rows)}</div>")
    return _page(title, body)
