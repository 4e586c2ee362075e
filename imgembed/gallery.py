"""Self-contained HTML pages of results: thumbnails are embedded as data URIs, so a page still
works when it is moved or mailed. No JavaScript, no external files."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from .errors import ImageLoadError
from .images import read_image

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


def duplicates_page(groups, threshold: float, title: str = "imgembed duplicates") -> str:
    parts = [f"<p>{len(groups)} groups of near-duplicates at cosine &ge; {threshold}</p>"]
    for n, g in enumerate(groups, 1):
        figures = [_figure(r.full_path, f'<span class="score">{s:.4f}</span><br>{html.escape(r.full_path)}')
                   for r, s in zip(g.rows, g.scores)]
        parts.append(f"<h2>group {n}: {len(g.rows)} images</h2><div class='row'>{''.join(figures)}</div>")
    return _page(title, "".join(parts))
