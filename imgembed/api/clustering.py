"""Clusters of an index's images without labels (the maths: :mod:`imgembed.collection.clusters`),
and journalled moves of each cluster into a folder of its own that ``imgembed undo`` reverses.

An image's label is its sub-folder (:func:`imgembed.index.planner.label_of`); by default only
the images directly in an indexed folder, which have none, are clustered. The stored vectors
are clustered as they are: no model is loaded and no image is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..collection import tidy
from ..config import CLUSTER_K, CLUSTER_RESOLUTION, CLUSTER_SAMPLE
from ..errors import InputError
from ..index import ImageIndex
from ..index.store import ImageRow
from .duplicates import ActionReport
from .sorting import _free_name, move_indexed

OP = "clusters"  # the journal's name for a run of moves
FOLDER = "cluster-{number}"  # a cluster's folder under --into; the number zero-padded to at least 2 digits


@dataclass(frozen=True)
class Cluster:
    """One cluster: ``number`` (1 the largest), its ``rows`` (the most central first, so
    ``rows[0]`` is its representative), each member's ``centrality`` (cosine to the cluster's
    mean direction) and the members' mean of it, ``cohesion``."""

    number: int
    rows: list[ImageRow]
    centrality: list[float]
    cohesion: float

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def representative(self) -> ImageRow:
        return self.rows[0]

    def to_dict(self) -> dict:
        return {"cluster": self.number, "size": self.size, "cohesion": round(self.cohesion, 6),
                "representative": self.representative.full_path, "paths": [r.full_path for r in self.rows]}


@dataclass
class ClusterReport:
    """What :func:`clusters` found in the index at ``index``: ``clusters`` largest first (ties:
    the one holding the earliest-indexed image); ``images`` clustered; ``left_out`` labelled
    images not clustered (0 with ``unlabelled_only`` off)."""

    index: str
    clusters: list[Cluster]
    images: int
    left_out: int
    unlabelled_only: bool

    def to_dict(self) -> dict:
        return {"index": self.index, "images": self.images, "left_out": self.left_out,
                "unlabelled_only": self.unlabelled_only, "clusters": [c.to_dict() for c in self.clusters]}


def clusters(index_dir: str | Path, *, unlabelled_only: bool = True, k: int = CLUSTER_K,
             resolution: float = CLUSTER_RESOLUTION, sample: int = CLUSTER_SAMPLE) -> ClusterReport:
    """Cluster the stored vectors of the index at ``index_dir`` (opened read-only): by default
    those of the images without a label, with ``unlabelled_only=False`` every image. ``k``,
    ``resolution`` and ``sample`` are :func:`imgembed.collection.clusters.cluster`'s. Memory is
    the chosen images' vectors and rows. Raises :class:`InputError` (one line) when there is
    nothing to cluster: an empty index, or only labelled images without ``unlabelled_only``
    turned off (``--all``)."""
    from ..collection.clusters import cluster

    index_dir = Path(index_dir)
    with ImageIndex.open(index_dir) as idx:
        ids, vectors, rows, count = [], [], {}, 0
        for batch_ids, batch in idx.store.iter_vectors():
            count += len(batch_ids)
            batch_rows = idx.store.rows_by_id(batch_ids.tolist())
            keep = np.array([not unlabelled_only or batch_rows[int(i)].label is None for i in batch_ids], bool)
            ids.append(batch_ids[keep])
            vectors.append(batch[keep])
            rows.update((int(i), batch_rows[int(i)]) for i in batch_ids[keep])
    if count == 0:
        raise InputError(f"the index {index_dir} is empty: nothing to cluster; index a folder first")
    ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    if len(ids) == 0:
        raise InputError(f"every image of the index {index_dir} has a label (its sub-folder): nothing unlabelled "
                         "to cluster; pass --all to cluster every image")
    found = cluster(np.concatenate(vectors), k=k, resolution=resolution, sample=sample)
    order = np.lexsort((np.arange(len(ids)), -found.centrality, found.labels))
    bounds = np.flatnonzero(np.r_[True, found.labels[order][1:] != found.labels[order][:-1], True])
    out = []
    for c, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        members = order[start:stop]
        out.append(Cluster(c + 1, [rows[int(ids[p])] for p in members], found.centrality[members].tolist(),
                           float(found.cohesion[c])))
    return ClusterReport(str(index_dir), out, len(ids), count - len(ids), unlabelled_only)


def folder_names(count: int, into: str | Path) -> list[Path]:
    """``into/cluster-01`` ... for ``count`` clusters (at least two digits, more where needed); a
    name that exists already (an earlier run's folder, a file) becomes ``cluster-01-2`` (-3, ...),
    so that no cluster is poured into a folder that holds something else."""
    into = Path(os.path.abspath(into))
    width = max(2, len(str(count)))
    taken: set[str] = set()
    return [_free_name(into, FOLDER.format(number=f"{n:0{width}d}"), taken) for n in range(1, count + 1)]


@dataclass
class IntoPlan:
    """Where :func:`plan_into` would move each cluster: ``folders[i]`` is cluster ``i + 1``'s new
    folder and ``moves[i]`` its members' ``(row id, destination)`` in the cluster's order."""

    report: ClusterReport
    into: str
    folders: list[Path]
    moves: list[list[tuple[int, Path]]]

    @property
    def count(self) -> int:
        """Images the plan moves."""
        return sum(len(m) for m in self.moves)

    def to_dict(self, failed: dict[str, str] | None = None) -> list[dict]:
        """The clusters' records (:meth:`Cluster.to_dict`) with ``folder`` and ``moves`` (``path``,
        ``to``, and ``failed``: why not, where ``failed`` maps a path to the reason)."""
        failed = failed or {}
        return [{**c.to_dict(), "folder": str(folder),
                 "moves": [{"path": r.full_path, "to": str(dst),
                            **({"failed": failed[r.full_path]} if r.full_path in failed else {})}
                           for r, (_, dst) in zip(c.rows, moves)]}
                for c, folder, moves in zip(self.report.clusters, self.folders, self.moves)]


def plan_into(report: ClusterReport, into: str | Path) -> IntoPlan:
    """Where each cluster's images would go: a new folder per cluster under ``into``
    (:func:`folder_names`), each image under its own file name, or ``stem-2.ext`` (-3, ...)
    where two members share one. Nothing is touched. Raises :class:`InputError` where ``into``
    is a file, or holds one of the index's folders (the moved images would be indexed twice)."""
    into = Path(os.path.abspath(into))
    if into.exists() and not into.is_dir():
        raise InputError(f"--into {into}: a file, not a folder")
    with ImageIndex.open(report.index) as idx:
        roots = idx.store.roots()
    real = os.path.realpath(into)
    holding = [r for r in roots if tidy.inside(os.path.realpath(r), real) and os.path.realpath(r) != real]
    if holding:
        raise InputError(f"--into {into} holds the indexed folder {holding[0]}: choose a folder inside it or "
                         "outside every indexed folder")
    folders = folder_names(len(report.clusters), into)
    moves = []
    for c, folder in zip(report.clusters, folders):
        taken: set[str] = set()
        moves.append([(r.id, _free_name(folder, Path(r.path).name, taken)) for r in c.rows])
    return IntoPlan(report, str(into), folders, moves)


def move_into(plan: IntoPlan, *, dry_run: bool = False, wait: bool = False) -> ActionReport:
    """Move the images as ``plan`` says (:func:`plan_into`), each move journalled before it
    happens (``imgembed undo --index ...`` moves them back); the index follows: a moved image
    keeps its vector, in the indexed folder that holds ``plan.into`` or, outside all of them, in
    ``plan.into`` as a new indexed folder, so that its label is its cluster's folder. A file
    changed since it was indexed, or whose destination is taken by now, stays and is reported
    in ``failed`` (nothing is overwritten); with ``dry_run`` nothing moves."""
    moves = [m for planned in plan.moves for m in planned]
    return move_indexed(plan.report.index, moves, op=OP, root=plan.into, dry_run=dry_run, wait=wait)
