"""What the routes of `imgembed serve` are made of, none of it tied to Flask: reading query
parameters and form fields, looking up what a request names in the indexes, and the JSON shapes
of images, hits, votes and duplicate groups.

A request that names something unusable raises :class:`~imgembed.errors.InputError` (400), one
that names an image not in the index :class:`ImageNotFoundError` (404), an upload that is not an
image :class:`~imgembed.errors.ImageLoadError` (400); :mod:`.routes` turns them into answers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..api import AuditReport, Classification, DuplicateGroup
from ..api.mapping import MapLayout
from ..collection import knn, tidy
from ..config import CLASSIFY_K
from ..errors import ImageLoadError, ImgembedError, InputError
from ..imaging import formats
from ..imaging.decode import decode_image
from ..index import Hit
from ..index.store import ImageRow, MetadataStore

PAGE_LIMIT = 200  # images per /api/images page at most
VOTE_KEYS = ("label", "confidence", "votes")  # of Classification.to_dict, what the web answers carry
VOTERS = CLASSIFY_K  # the nearest neighbours whose labels vote for an image's or a query's label


class ImageNotFoundError(ImgembedError):
    """An image named by the request is not in the index (404)."""


# --- query parameters and form fields ---

def int_arg(args: Mapping, name: str, default: int, lo: int, hi: int) -> int:
    """``args[name]`` as an int clamped to [lo, hi]; ``default`` when missing or not a number."""
    try:
        return max(lo, min(hi, int(args.get(name, default))))
    except ValueError:
        return default


def float_arg(args: Mapping, name: str, default: float, lo: float, hi: float) -> float:
    """``args[name]`` as a float clamped to [lo, hi], ``default`` when missing; not a number is an
    :class:`InputError`."""
    try:
        return max(lo, min(hi, float(args.get(name, default))))
    except ValueError:
        raise InputError(f"{name} must be a number") from None


def parse_source(value, count: int) -> int:
    """Which of ``count`` indexes ``value`` names (0 for the first)."""
    try:
        source = int(value)
    except (TypeError, ValueError):
        raise InputError(f"index must be a number, not {value!r}") from None
    if not 0 <= source < count:
        raise InputError(f"no index {source} (serving {count})")
    return source


def parse_refs(field: str, values: Iterable[str], count: int) -> list[tuple[int, int]]:
    """Indexed images named as ``SOURCE:ID`` (the form ``field``'s values), as (source, id) pairs."""
    out = []
    for value in values:
        source, _, row_id = value.partition(":")
        if not row_id.isdigit():
            raise InputError(f"{field} must be SOURCE:ID, not {value!r}")
        out.append((parse_source(source, count), int(row_id)))
    return out


def parse_folder(value: str | None, count: int) -> tuple[Sequence[int], str | None, str]:
    """``folder=SOURCE:ROOT:SUB`` (a value of /api/info) as (the indexes to page through, root,
    sub-folder); without one, every index, any root."""
    if not value:
        return range(count), None, ""
    source, _, rest = value.partition(":")
    root, _, sub = rest.rpartition(":")
    return [parse_source(source, count)], root, sub


def decode_upload(file, max_pixels: int) -> Image.Image:
    """An uploaded file (``read()`` and ``filename``, as Werkzeug's ``FileStorage``) decoded."""
    data = file.read()
    if not data:
        raise ImageLoadError(f"the upload{' ' + file.filename if file.filename else ''} is empty")
    image, _, _ = decode_image(data, max_pixels=max_pixels, raw=formats.is_raw(Path(file.filename or "").suffix))
    return image


# --- what a request names, looked up ---

def stored_vectors(stores: Sequence[MetadataStore], pairs: Sequence[tuple[int, int]]) -> np.ndarray | None:
    """The stored vectors of (source, id) pairs, stacked in their order (None for no pair)."""
    out = []
    for source, row_id in pairs:
        found = stores[source].vectors_by_id([row_id])
        if row_id not in found:
            raise ImageNotFoundError(f"no image with id {row_id} in index {source}")
        out.append(found[row_id])
    return np.stack(out) if out else None


def page_across(stores: Sequence[MetadataStore], sources: Iterable[int], offset: int, limit: int, *,
                label: str | None = None, root: str | None = None,
                folder: str = "") -> tuple[int, list[tuple[int, ImageRow]]]:
    """One page of the indexes ``sources`` taken one after another, each in path order: (how many
    images match in all, up to ``limit`` (source, row) pairs from ``offset``)."""
    out: list[tuple[int, ImageRow]] = []
    total = 0
    for source in sources:
        n, rows = stores[source].page(max(0, offset - total), limit - len(out), label=label, root=root, folder=folder)
        out += [(source, r) for r in rows] if offset < total + n else []
        total += n
    return total, out


def duplicate_groups(store: MetadataStore, source: int, id_groups) -> list[DuplicateGroup]:
    """The groups of image ids a duplicates action names (JSON ``[[id, ...], ...]``), as groups of
    rows; exact where every member has the same content hash and size."""
    if not isinstance(id_groups, list) or not all(isinstance(g, list) and len(g) > 1 for g in id_groups):
        raise InputError("groups must be a list of lists of at least two image ids")
    rows = store.rows_by_id([int(i) for g in id_groups for i in g])
    missing = [i for g in id_groups for i in g if int(i) not in rows]
    if missing:
        raise ImageNotFoundError(f"no image with id {missing[0]} in index {source} (the page is out of date: reload it)")
    return [DuplicateGroup([rows[int(i)] for i in g], [1.0] * len(g),
                           exact=len({(rows[int(i)].hash, rows[int(i)].bytes) for i in g}) == 1) for g in id_groups]


def without_self(hits: Sequence[Hit], source: int, row_id: int, k: int) -> list[Hit]:
    """The ``k`` best of an image's hits other than itself, ranked again from 1."""
    others = (h for h in hits if (h.source, h.row.id) != (source, row_id))
    return [replace(h, rank=rank) for rank, h in enumerate(others, 1)][:k]


def top_vote(hits: Sequence[Hit], labelled: bool) -> knn.Vote | None:
    """The label the nearest :data:`VOTERS` hits vote for; None where no index has labels."""
    if not labelled:
        return None
    return knn.vote([h.row.label for h in hits[:VOTERS]], [h.score for h in hits[:VOTERS]])


# --- JSON shapes ---

def describe(row: ImageRow, source: int, **extra) -> dict:
    """An indexed image as the API shows it, with ``extra`` keys."""
    return {"id": row.id, "index": source, "path": row.full_path, "label": row.label, "width": row.width,
            "height": row.height, "bytes": row.bytes,
            "thumbnail": f"api/thumbnail/{row.id}" + (f"?index={source}" if source else ""), **extra}


def hit_json(h: Hit) -> dict:
    return describe(h.row, h.source, rank=h.rank, score=round(h.score, 6))


def vote_json(vote: knn.Vote) -> dict:
    """``{"label", "confidence", "votes"}``: :meth:`Classification.to_dict` less the query and
    the weights."""
    full = Classification(query="", vote=vote, neighbours=[]).to_dict()
    return {key: full[key] for key in VOTE_KEYS}


def predicted_json(vote: knn.Vote | None) -> dict | None:
    """:func:`vote_json`, or None where there was no vote or no neighbour had a label."""
    return None if vote is None or vote.label is None else vote_json(vote)


def group_json(group: DuplicateGroup, source: int) -> dict:
    """A group of duplicates with the copy :func:`tidy.choose_keeper` would keep."""
    keeper = tidy.choose_keeper([tidy.Member.of(r) for r in group.rows])
    return {"exact": group.exact, "keep": keeper.id,
            "images": [describe(r, source, score=round(s, 6)) for r, s in zip(group.rows, group.scores)]}


def map_json(layout: MapLayout, rows: Mapping[int, ImageRow], source: int) -> dict:
    """The map as parallel arrays (tens of thousands of points stay a few MB): ``ids``, ``x``,
    ``y`` (unit square, y down), ``label`` (a position in ``labels``, sorted, or -1 for none),
    ``root`` (a position in ``roots``) and ``path`` (relative to it). Rows removed since the
    layout was made are left out."""
    kept = [(int(i), xy) for i, xy in zip(layout.ids.tolist(), layout.xy.tolist()) if int(i) in rows]
    labels = sorted({rows[i].label for i, _ in kept if rows[i].label is not None})
    roots = sorted({rows[i].root for i, _ in kept})
    label_at, root_at = {lab: p for p, lab in enumerate(labels)}, {r: p for p, r in enumerate(roots)}
    return {"index": source, "key": layout.key, "count": len(kept), "labels": labels, "roots": roots,
            "ids": [i for i, _ in kept], "x": [round(xy[0], 5) for _, xy in kept],
            "y": [round(xy[1], 5) for _, xy in kept],
            "label": [label_at.get(rows[i].label, -1) for i, _ in kept],
            "root": [root_at[rows[i].root] for i, _ in kept], "path": [rows[i].path for i, _ in kept]}


def audit_json(report: AuditReport, by_path: Mapping[str, ImageRow], source: int) -> dict:
    """:class:`AuditReport` with each image it names (a finding's, its neighbours', a pair's
    other) given its ``id``, ``index`` and ``thumbnail`` where it is still in the index."""
    def place(d: dict) -> dict:
        row = by_path.get(d["path"])
        return {**d, "id": row.id if row else None, "index": source,
                "thumbnail": describe(row, source)["thumbnail"] if row else None}

    findings = []
    for f in report.findings:
        d = place(f.to_dict())
        d["neighbours"] = [place(n) for n in d["neighbours"]]
        if "other" in d:
            d["other"] = place(d["other"])
        findings.append(d)
    return {"index": source, "images": report.images, "labelled": report.labelled, "note": report.note,
            "counts": report.counts, "thresholds": report.thresholds, "findings": findings}
