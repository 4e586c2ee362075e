"""Looking after an index without a model: what it holds, removals, tombstones, checks and rebuilds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..index import ImageIndex


def remove_paths(index_dir: str | Path, paths: Sequence[str | Path], *, wait: bool = False) -> dict:
    """Drop the entries of files, or of everything under folders, from the index.

    Paths are matched by their absolute form; the files need not exist any more. The rows leave
    tombstones (:data:`~imgembed.index.store.TOMBSTONE_DAYS`), so indexing the same bytes again
    restores their vectors; :func:`drop_tombstones` forgets them now. Returns
    ``{"removed": images, "forgotten_skipped": skipped entries}``.
    """
    with ImageIndex.open_for_write(index_dir, None, wait=wait) as idx:
        ids: set[int] = set()
        forgotten = 0
        for p in paths:
            full = os.path.abspath(p)
            ids.update(idx.store.ids_under(full))
            forgotten += idx.store.forget_skipped_under(full)
        idx.commit(vanish=sorted(ids))
        idx.save()
        return {"removed": len(ids), "forgotten_skipped": forgotten}


def drop_tombstones(index_dir: str | Path, *, wait: bool = False) -> int:
    """Forget the vectors kept for removed files now, instead of after
    :data:`~imgembed.index.store.TOMBSTONE_DAYS`; return how many. (SQLite reuses the space; the
    file itself does not shrink.)"""
    with ImageIndex.open_for_write(index_dir, None, wait=wait) as idx:
        return idx.store.drop_tombstones()


def _escapes(relative: str) -> bool:
    return relative.startswith("/") or ".." in relative.split("/")


def check_index(index_dir: str | Path, *, repair: bool = False, wait: bool = False) -> dict:
    """Check that the FAISS file and SQLite agree (counts, ids, dimension) and that every stored
    path stays inside its root; with ``repair``, rebuild the FAISS file from the stored vectors.

    Returns ``{"index", "images", "problems": [...], "repaired": bool}``.
    """
    problems = []
    with ImageIndex.open(index_dir) as idx:
        if idx.problem:
            problems.append(idx.problem)
        for row_id, rel in idx.store.relative_paths():
            if _escapes(rel):
                problems.append(f"row {row_id}: path {rel!r} escapes its root")
        images = idx.store.count()
    repaired = False
    if repair and problems:
        with ImageIndex.open_for_write(index_dir, None, wait=wait) as idx:
            bad = [row_id for row_id, rel in idx.store.relative_paths() if _escapes(rel)]
            idx.commit(remove=bad)
            idx.rebuild()
            idx.save()
            images = idx.store.count()
        repaired = True
    return {"index": str(index_dir), "images": images, "problems": problems, "repaired": repaired}


def rebuild_index(index_dir: str | Path, index_type: str | None = None, *, target_recall: float | None = None,
                  expand: bool | None = None, wait: bool = False) -> dict:
    """Rebuild the FAISS file from the stored vectors, optionally as another index type (an
    approximate one tuned to ``target_recall``, see :mod:`imgembed.index.recall`), and the
    search expansion turned on or off (``expand``; None keeps the index's own; the neighbour
    lists it keeps are brought up to date, not made again).

    Returns the new ``manifest["faiss"]`` entry, with the ``recall`` check where there is one
    and the ``expansion``. Needs no model.
    """
    from .indexing import expansion_choice

    with ImageIndex.open_for_write(index_dir, None, wait=wait, target_recall=target_recall,
                                   expansion=expansion_choice(expand)) as idx:
        idx.rebuild(index_type)
        idx.save()
        return {**idx.manifest["faiss"], "recall": idx.manifest.get("recall"),
                "expansion": idx.manifest.get("expansion")}


def expansion_info(idx: ImageIndex) -> dict:
    """The index's search expansion and how far its neighbour lists are from its images."""
    e = idx.expansion
    done, stale = idx.store.expansion_state() if e.k else (0, 0)
    return {**e.to_dict(), "describe": e.describe(), "lists": done, "missing": len(idx) - done if e.k else 0,
            "stale": stale}


def index_info(index_dir: str | Path) -> dict:
    """Manifest, counts, labels with counts and skipped files, without loading a model."""
    with ImageIndex.open(index_dir) as idx:
        labels = idx.store.labels()
        return {
            "index": str(index_dir),
            "manifest": idx.manifest,
            "images": len(idx),
            "labels": {(k if k is not None else ""): v for k, v in labels.items()},
            "skipped": [{"path": s.full_path, "reason": s.reason} for s in idx.store.skipped()],
            "tombstones": idx.store.tombstones(),
            "expansion": expansion_info(idx),
            "size_bytes": sum(f.stat().st_size for f in Path(index_dir).iterdir() if f.is_file()),
            "problem": idx.problem,
        }
