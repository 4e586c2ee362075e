"""The self-contained HTML page of `imgembed clusters`: each cluster's images, the most typical
first (framed), thumbnails embedded as data URIs like the other pages of
:mod:`imgembed.web.gallery`."""

from __future__ import annotations

import html

from .gallery import _figure, _page

MAX_PER_CLUSTER = 60  # thumbnails drawn per cluster, the most central first; the JSON output has them all


def _caption(centrality: float, path: str) -> str:
    return f'<span class="score">{centrality:.3f}</span><br>{html.escape(path)}'


def clusters_page(report, title: str = "imgembed clusters", shown: int = MAX_PER_CLUSTER) -> str:
    """``report``: an :class:`imgembed.api.clustering.ClusterReport`; per cluster, up to
    ``shown`` of its images (each captioned with its cosine to the cluster's mean direction),
    then "... and N more"."""
    what = "images without a label" if report.unlabelled_only else "images"
    left = f"; {report.left_out} labelled images left out" if report.left_out else ""
    parts = [f"<p>{report.images} {what} in {len(report.clusters)} clusters{left}</p>"]
    for c in report.clusters:
        parts.append(f"<h2>cluster {c.number}: {c.size} image{'s' if c.size != 1 else ''} "
                     f"(cohesion {c.cohesion:.3f})</h2>")
        figures = [_figure(r.full_path, _caption(s, r.full_path), "query" if i == 0 else "")
                   for i, (r, s) in enumerate(zip(c.rows[:shown], c.centrality[:shown]))]
        parts.append(f"<div class='row'>{''.join(figures)}</div>")
        if c.size > shown:
            parts.append(f"<p>... and {c.size - shown} more (see --json)</p>")
    return _page(title, "".join(parts))
