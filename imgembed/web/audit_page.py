"""The self-contained HTML page of `imgembed audit`: each finding's thumbnail beside its
neighbours (or, for a duplicate or leak, the other image of the pair), thumbnails embedded as
data URIs like the other pages of :mod:`imgembed.web.gallery`."""

from __future__ import annotations

import html

from .gallery import _figure, _page

_WHAT = {"mislabel": "the label disagrees with the neighbourhood", "outlier": "unlike its class and the collection",
         "duplicate": "the same image filed under two labels", "leak": "near-duplicates across splits or roots"}
MAX_PER_KIND = 200  # findings drawn per kind; the JSON output has them all


def _caption(score: float | None, label: str | None, path: str, extra: str = "") -> str:
    value = "" if score is None else f'<span class="score">{score:.4f}</span> '
    return f'{value}<span class="label">{html.escape(label or "-")}</span>{extra}<br>{html.escape(path)}'


def audit_page(report, title: str = "imgembed audit") -> str:
    """``report``: an :class:`imgembed.api.auditing.AuditReport`."""
    parts = [f"<p>{report.images} images audited; "
             + ", ".join(f"{n} {html.escape(kind)}" for kind, n in report.counts.items()) + "</p>"]
    if report.note:
        parts.append(f"<p>{html.escape(report.note)}</p>")
    for kind in report.counts:
        found = report.of_kind(kind)
        if not found:
            continue
        parts.append(f"<h2>{html.escape(kind)}: {_WHAT[kind]} ({len(found)})</h2>")
        for f in found[:MAX_PER_KIND]:
            extra = f" &rarr; <b>{html.escape(f.suggested)}</b>" if f.suggested else ""
            figures = [_figure(f.path, _caption(f.score, f.label, f.path, extra), "query")]
            if f.other is not None:
                figures.append(_figure(f.other.path, _caption(f.other.cosine, f.other.label, f.other.path)))
            figures += [_figure(n.path, _caption(n.cosine, n.label, n.path)) for n in f.neighbours]
            parts.append(f"<div class='row' style='margin-bottom:14px'>{''.join(figures)}</div>")
        if len(found) > MAX_PER_KIND:
            parts.append(f"<p>... and {len(found) - MAX_PER_KIND} more (see --json)</p>")
    return _page(title, "".join(parts))
