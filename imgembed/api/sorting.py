"""Sorting an unsorted folder into a labelled one: a label and a confidence for each image from
the index of the labelled folder (:mod:`imgembed.collection.sorting`), and journalled moves
into ``ROOT/<label>/`` that ``imgembed undo`` reverses.

The inbox is embedded with the index's own model into a small index of its own, kept in the
index directory under ``inboxes/`` (a cache: a dry run and the real run embed each image once;
corrupt files are skipped and reported as ``index`` skips them). A moved image joins the index
under its new label with the vector it was sorted by.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..collection import sorting as scoring
from ..collection import tidy
from ..config import SORT_MIN_CONFIDENCE
from ..errors import InputError, ModelMismatchError, NoLabelsError
from ..index import ImageIndex, planner, read_manifest
from ..index.store import NewImage
from .duplicates import JOURNALS, ActionReport
from .indexing import IndexOptions, index_folder
from .models import _own_model

if TYPE_CHECKING:
    from ..inference import Embedder

Progress = Callable[[int, int], None]  # (done, total)
INBOXES = "inboxes"  # in the index directory: one cache index per inbox folder
OP = "sort"


@dataclass(frozen=True)
class Proposal:
    """One inbox image: ``label`` it goes to (None: it stays, below the threshold), with
    ``confidence``; ``best`` is the likeliest label even when it stays; ``to`` its destination."""

    path: str
    label: str | None
    confidence: float
    best: str
    to: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "confidence": round(float(self.confidence), 6),
                "best": self.best, "to": self.to}


@dataclass
class SortPlan:
    """What :func:`sort_inbox` would do: every inbox image's proposal (most confident first) and
    the files that could not be read."""

    index: str
    inbox: str
    root: str
    min_confidence: float
    proposals: list[Proposal]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    _actions: list[tidy.Action] = field(default_factory=list, repr=False)
    _vectors: dict[str, tuple] = field(default_factory=dict, repr=False)  # src -> (row of the inbox cache, vector)

    @property
    def moving(self) -> list[Proposal]:
        return [p for p in self.proposals if p.label is not None]

    def to_dict(self) -> dict:
        return {"index": self.index, "inbox": self.inbox, "into": self.root, "min_confidence": self.min_confidence,
                "proposals": [p.to_dict() for p in self.proposals],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def _same(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _inbox_cache(index_dir: Path, inbox: Path) -> Path:
    key = hashlib.sha256(os.path.realpath(inbox).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return index_dir / INBOXES / key


def _embed_inbox(index_dir: Path, inbox: Path, model: Embedder, progress: Progress | None):
    """The inbox's rows and vectors, embedded into (or read from) its cache index."""
    cache = _inbox_cache(index_dir, inbox)
    options = IndexOptions(allow_removal=True, index_type="flat")
    try:
        report = index_folder(inbox, cache, model, options, progress=progress)
    except ModelMismatchError:  # the index was rebuilt with another model since: a stale cache
        shutil.rmtree(cache)
        report = index_folder(inbox, cache, model, options, progress=progress)
    with ImageIndex.open(cache) as idx:
        rows = sorted(idx.store.rows_under(report.root).values(), key=lambda r: r.path)
        vectors = idx.store.vectors_by_id([r.id for r in rows])
    return rows, np.stack([vectors[r.id] for r in rows]) if rows else None, report.skipped


def _labelled(idx: ImageIndex, root: str, inbox: Path):
    """The rows under ``root`` that carry a label (those inside the inbox left out) and their vectors."""
    inside = os.path.realpath(inbox)
    rows = [r for r in idx.store.rows_under(root).values()
            if r.label is not None and not tidy.inside(os.path.realpath(r.full_path), inside)]
    rows.sort(key=lambda r: r.path)
    vectors = idx.store.vectors_by_id([r.id for r in rows])
    return rows, np.stack([vectors[r.id] for r in rows]) if rows else None


def _free_name(folder: Path, name: str, taken: set[str]) -> Path:
    """``folder/name``, or ``folder/stem-2.ext`` (-3, ...) where that exists or another move takes it."""
    stem, suffix = os.path.splitext(name)
    candidate, n = folder / name, 1
    while os.path.lexists(candidate) or str(candidate) in taken:
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    taken.add(str(candidate))
    return candidate


def plan_sort(inbox: str | Path, into: str | Path, index_dir: str | Path, *,
              min_confidence: float = SORT_MIN_CONFIDENCE, model: Embedder | None = None,
              precision: str = "auto", runtime: str = "auto", progress: Progress | None = None) -> SortPlan:
    """A label and a confidence for each image of ``inbox`` from the labelled images of the
    index's folder ``into`` (one sub-folder per label); images below ``min_confidence`` stay.
    Nothing is moved (:func:`sort_inbox` does that)."""
    index_dir, inbox, into = Path(index_dir), Path(inbox), Path(into)
    if not inbox.is_dir():
        raise InputError(f"{inbox}: not a folder")
    if not 0 <= min_confidence <= 1:
        raise InputError(f"--min-confidence must lie in [0, 1], not {min_confidence}")
    manifest = read_manifest(index_dir)
    with ImageIndex.open(index_dir) as idx:
        roots = idx.store.roots()
        root = next((r for r in roots if _same(r, into)), None)
        if root is None:
            listed = ", ".join(roots) or "none"
            raise InputError(f"{into} is not a folder of the index {index_dir} (its folders: {listed}); "
                             f"index it first: imgembed index {into} --index {index_dir}")
        if tidy.inside(os.path.realpath(into), os.path.realpath(inbox)):
            raise InputError(f"{into} lies inside the inbox {inbox}: sort into a folder outside it")
        rows, vectors = _labelled(idx, root, inbox)
    labels = sorted({r.label for r in rows})
    if len(labels) < 2:
        what = "no labelled images" if not labels else f"one label only ({labels[0]})"
        raise NoLabelsError(f"{into} has {what} in the index {index_dir}; sorting needs a sub-folder per "
                            "label with images in at least two of them")
    if model is None:
        model = _own_model(index_dir, manifest, precision, runtime)
    inbox_rows, inbox_vectors, skipped = _embed_inbox(index_dir, inbox, model, progress)
    plan = SortPlan(str(index_dir), str(inbox), root, min_confidence, [], list(skipped))
    if not inbox_rows:
        return plan
    position = {lab: i for i, lab in enumerate(labels)}
    codes = np.array([position[r.label] for r in rows])
    found = scoring.propose(vectors, codes, len(labels), inbox_vectors)
    taken: set[str] = set()
    for i in np.argsort(-found.confidence, kind="stable"):
        row, best, conf = inbox_rows[i], labels[found.best[i]], float(found.confidence[i])
        if conf < min_confidence:
            plan.proposals.append(Proposal(row.full_path, None, conf, best))
            continue
        dst = _free_name(Path(root) / best, Path(row.path).name, taken)
        plan.proposals.append(Proposal(row.full_path, best, conf, best, str(dst)))
        rel = dst.relative_to(root).as_posix()
        plan._actions.append(tidy.Action(OP, row.full_path, str(dst), "", -1, root, rel, row.bytes, row.mtime_ns,
                                         row.hash))
        plan._vectors[row.full_path] = (row, inbox_vectors[i])
    return plan


def _check(a: tidy.Action, inbox: str) -> None:
    """Refuse a move that could lose data: the file must be a regular file inside the inbox,
    unchanged since it was embedded, and nothing may be at its destination."""
    src = Path(a.src)
    if src.is_symlink() or not src.is_file():
        raise tidy.ActionError(f"{src}: not a regular file (gone, or a link)")
    if not tidy.inside(os.path.realpath(src), os.path.realpath(inbox)):
        raise tidy.ActionError(f"{src}: resolves outside the inbox {inbox}")
    st = src.stat()
    if (st.st_size, st.st_mtime_ns) != (a.bytes, a.mtime_ns):
        raise tidy.ActionError(f"{src}: changed since it was sorted; run the sort again")
    if os.path.lexists(a.dst):
        raise tidy.ActionError(f"{src}: {a.dst} exists now; not moved (nothing is overwritten)")


def sort_inbox(plan: SortPlan, *, wait: bool = False) -> ActionReport:
    """Move the images ``plan`` gives a label into ``ROOT/<label>/``, each journalled before it
    moves (``imgembed undo`` moves them back), and add them to the index under their labels
    with the vectors they were sorted by. A file that changed since the plan, or whose
    destination is taken now, stays and is reported in ``failed``."""
    report = ActionReport(OP, planned=[(plan.root, list(plan._actions))])
    if not plan._actions:
        return report
    index_dir = Path(plan.index)
    with ImageIndex.open_for_write(index_dir, None, wait=wait) as idx:
        journal = tidy.Journal.create(index_dir / JOURNALS, {"index": str(index_dir.resolve()), "op": OP,
                                                             "inbox": plan.inbox, "into": plan.root})
        report.journal = str(journal.path)
        try:
            for a in plan._actions:
                try:
                    _check(a, plan.inbox)
                    n = journal.announce(a)
                    tidy.perform(a)
                except (tidy.ActionError, OSError) as e:
                    report.failed.append((a, str(e)))
                    continue
                row, vector = plan._vectors[a.src]
                idx.commit(add=[NewImage(a.root, a.path, planner.label_of(a.path), row.bytes, os.stat(a.dst).st_mtime_ns,
                                         row.hash, row.width, row.height, vector, row.phash)])
                journal.done(n)
                report.done.append(a)
        finally:
            journal.close()
            idx.save()
    return report



def _check_indexed(a: tidy.Action, roots: list[str]) -> None:
    """Refuse moving an indexed image that could lose data: a regular file inside one of the
    index's folders, unchanged since it was indexed, with nothing at its destination."""
    src = Path(a.src)
    if src.is_symlink() or not src.is_file():
        raise tidy.ActionError(f"{src}: not a regular file (gone, or a link)")
    if not any(tidy.inside(os.path.realpath(src), os.path.realpath(r)) for r in roots):
        raise tidy.ActionError(f"{src}: outside the index's folders")
    st = src.stat()
    if (st.st_size, st.st_mtime_ns) != (a.bytes, a.mtime_ns):
        raise tidy.ActionError(f"{src}: changed since it was indexed; run imgembed index first")
    if os.path.lexists(a.dst):
        raise tidy.ActionError(f"{src}: {a.dst} exists already; not moved (nothing is overwritten)")


def move_indexed(index_dir: str | Path, moves: list[tuple[int, str | Path]], *, op: str = "relocate",
                 root: str | Path | None = None, dry_run: bool = False, wait: bool = False) -> ActionReport:
    """Move indexed images, ``(row id, destination file)`` each, journalled before each move
    (``imgembed undo`` moves them back); each keeps its vector at its new path, in the root that
    holds the destination (or, outside every root, in ``root`` where that holds it, else in a
    new root: the destination's folder less the image's relative path). ``op`` names the run in
    its journal (e.g. ``clusters``). A file that changed since it was indexed, or whose
    destination exists, stays and is reported in ``failed``; with ``dry_run`` only the plan is
    returned."""
    from .duplicates import _follow

    index_dir = Path(index_dir)
    with ImageIndex.open(index_dir) as idx:
        rows = idx.store.rows_by_id([i for i, _ in moves])
    missing = [i for i, _ in moves if i not in rows]
    if missing:
        raise InputError(f"{index_dir}: no image with id {missing[0]} in the index")
    actions = [tidy.Action("move", rows[i].full_path, os.path.abspath(dst), "", i, rows[i].root, rows[i].path,
                           rows[i].bytes, rows[i].mtime_ns, rows[i].hash) for i, dst in moves]
    report = ActionReport(op, planned=[(str(index_dir), actions)], dry_run=dry_run)
    if dry_run or not actions:
        return report
    with ImageIndex.open_for_write(index_dir, None, wait=wait) as idx:
        roots = idx.store.roots()
        destinations = [*roots, os.path.realpath(root)] if root is not None else roots  # the first that holds it
        journal = tidy.Journal.create(index_dir / JOURNALS, {"index": str(index_dir.resolve()), "op": op})
        report.journal = str(journal.path)
        try:
            for a in actions:
                try:
                    _check_indexed(a, roots)
                    n = journal.announce(a)
                    tidy.perform(a)
                except (tidy.ActionError, OSError) as e:
                    report.failed.append((a, str(e)))
                    continue
                _follow(idx, a, destinations)
                journal.done(n)
                report.done.append(a)
        finally:
            journal.close()
            idx.save()
    return report
