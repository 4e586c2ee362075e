"""Duplicates in an index, exact and near, and acting on them: trash, move or link all but one of
each group, journalled first, and undone from the journal."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..collection import tidy
from ..config import DUPLICATE_K
from ..errors import InputError
from ..index import ImageIndex, planner
from ..index.store import NewImage

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are near-duplicates of each other; ``scores[i]`` is image i's best
    similarity to another member."""

    rows: list
    scores: list[float]
    exact: bool = False  # every member has the same bytes

    def to_dict(self) -> dict:
        return {"size": len(self.rows), "exact": self.exact, "images": [
            {"path": r.full_path, "label": r.label, "score": round(s, 6)} for r, s in zip(self.rows, self.scores)]}


def find_duplicates(index_dir: str | Path, threshold: float | None = None, k: int = DUPLICATE_K, *,
                    score: str = "relative", progress: Progress | None = None) -> list[DuplicateGroup]:
    """Groups of indexed images that are near-duplicates of each other.

    ``score="relative"`` (the default) compares a pair's cosine with each image's ``k``-th
    neighbour (:mod:`imgembed.collection.dedup`; default threshold 0.5, and a cosine of at least 0.85);
    ``score="cosine"`` uses the raw
    cosine (default threshold 0.85). Each stored vector is searched for its ``k`` nearest
    neighbours through the FAISS index, so memory stays O(n x k), never n x n; pairs at or above
    the threshold are joined (:func:`imgembed.collection.dedup.connected`), so a chain of near-duplicates forms one group.
    Largest groups first; a member's score is its best score with another member.
    """
    from ..collection import dedup

    if score not in dedup.SCORES:
        raise InputError(f"score must be one of {', '.join(dedup.SCORES)}, not {score!r}")
    threshold = dedup.SCORES[score] if threshold is None else threshold
    with ImageIndex.open(index_dir) as idx:
        scored = dedup.scored_pairs(idx, k, progress=progress)
        rows = idx.store.rows_by_id(sorted(scored.rows))
    chosen = dedup.select(scored, score, threshold)
    values = scored.normalised if score == "relative" else scored.cosine
    members, best = dedup.connected(scored.pairs, values, chosen)
    groups = [DuplicateGroup([rows[i] for i in sorted(m)], [best[i] for i in sorted(m)],
                             exact=len({(rows[i].hash, rows[i].bytes) for i in m}) == 1)
              for m in members]
    return sorted(groups, key=lambda g: (-len(g.rows), g.rows[0].full_path))


def exact_duplicates(index_dir: str | Path) -> list[DuplicateGroup]:
    """Groups of indexed files with the same bytes (content hash and size), from SQLite alone:
    no model, no vector search. Largest groups first."""
    with ImageIndex.open(index_dir) as idx:
        groups = idx.store.same_content()
    return sorted((DuplicateGroup(rows, [1.0] * len(rows), exact=True) for rows in groups),
                  key=lambda g: (-len(g.rows), g.rows[0].full_path))


@dataclass
class ActionReport:
    """What :func:`act_on_duplicates` or :func:`undo_duplicate_actions` did (or would do)."""

    op: str
    journal: str | None = None
    planned: list[tuple[str, list[tidy.Action]]] = field(default_factory=list)  # (kept path, actions)
    done: list[tidy.Action] = field(default_factory=list)
    failed: list[tuple[tidy.Action, str]] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict:
        def one(a: tidy.Action) -> dict:
            return {"op": a.op, "path": a.src, "to": a.dst, "keep": a.keep}
        return {"op": self.op, "journal": self.journal, "dry_run": self.dry_run,
                "groups": [{"keep": keep, "actions": [one(a) for a in actions]} for keep, actions in self.planned],
                "done": [one(a) for a in self.done],
                "failed": [{**one(a), "reason": reason} for a, reason in self.failed]}


def act_on_duplicates(index_dir: str | Path, groups: Sequence[DuplicateGroup], op: str, *,
                      move_to: str | Path | None = None, keep: Sequence[str] = tidy.DEFAULT_KEEP,
                      prefer: Sequence[str] = (), dry_run: bool = False, wait: bool = False) -> ActionReport:
    """Keep one image of each group and ``move`` (to ``move_to``, keeping relative paths),
    hard-``link`` (exact groups only) or ``trash`` the others (:mod:`imgembed.collection.tidy`).

    Every action is written to a journal in the index directory before it runs
    (:func:`undo_duplicate_actions` reverses it), and checked first: a file outside the index's
    folders, changed since it was indexed, or whose kept copy is missing is left alone and
    reported in ``failed``. The index follows: a moved file keeps its vector at its new path, a
    trashed one leaves the index (its vector kept as a tombstone), a linked one stays. With
    ``dry_run`` only the plan is returned.
    """
    planned = tidy.plan([([tidy.Member.of(r) for r in g.rows], g.exact) for g in groups], op, move_to=move_to,
                        keep=keep, prefer=prefer)
    report = ActionReport(op, planned=[(k.full_path, actions) for k, actions in planned], dry_run=dry_run)
    if dry_run or not any(actions for _, actions in planned):
        return report
    with ImageIndex.open_for_write(index_dir, None, wait=wait) as idx:
        roots = idx.store.roots()
        journal = tidy.Journal.create(Path(index_dir) / JOURNALS, {"index": str(Path(index_dir).resolve()), "op": op})
        report.journal = str(journal.path)
        try:
            for _, actions in planned:
                for a in actions:
                    try:
                        tidy.check(a, roots)
                        n = journal.announce(a)
                        tidy.perform(a)
                    except (tidy.ActionError, OSError) as e:
                        report.failed.append((a, str(e)))
                        continue
                    _follow(idx, a, roots)
                    journal.done(n)
                    report.done.append(a)
        finally:
            journal.close()
            idx.save()
    return report


JOURNALS = "journal"  # beside the index's files: one JSON-lines file per run of actions


def _follow(idx: ImageIndex, a: tidy.Action, roots: Sequence[str]) -> None:
    """Make the index agree with a performed action."""
    if a.op == "trash":
        idx.commit(vanish=[a.id])
    elif a.op == "link":
        idx.commit(touches=[(a.id, os.stat(a.src).st_mtime_ns)])
    else:
        root = next((r for r in roots if tidy.inside(os.path.realpath(a.dst), os.path.realpath(r))), None)
        # outside every root: the move-to folder becomes a root of its own
        new_root = root if root is not None else str(Path(a.dst).parents[a.path.count("/")])
        rel = Path(os.path.realpath(a.dst)).relative_to(os.path.realpath(new_root)).as_posix()
        idx.commit(relocations=[(a.id, new_root, rel, planner.label_of(rel), os.stat(a.dst).st_mtime_ns)])


def latest_journal(index_dir: str | Path) -> Path:
    """The newest journal of an index with something left to undo."""
    folder = Path(index_dir) / JOURNALS
    for path in sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime_ns, reverse=True):
        if any(state != "undone" for _, _, state in tidy.read_journal(path)[1]):
            return path
    raise InputError(f"{index_dir}: no action to undo (no journal in {folder} with actions left)")


def undo_duplicate_actions(index_dir: str | Path, journal: str | Path | None = None, *,
                           wait: bool = False) -> ActionReport:
    """Reverse what a run of :func:`act_on_duplicates` did, newest action first: files moved
    back, trashed files back with their vectors, linked paths given their own bytes again. An
    action that cannot be undone safely (something is at the old path again, or the moved file is
    gone) is reported in ``failed`` and left. Undoing the same journal twice does nothing."""
    path = Path(journal) if journal is not None else latest_journal(index_dir)
    header, entries = tidy.read_journal(path)
    if header.get("index") not in (None, str(Path(index_dir).resolve())):
        raise InputError(f"{path} records actions on the index {header['index']}, not {index_dir}; "
                         f"undo it with --index {header['index']}")
    report = ActionReport(f"undo {header.get('op')}", journal=str(path))
    with ImageIndex.open_for_write(index_dir, None, wait=wait) as idx:
        try:
            for n, a, state in reversed(entries):
                if state == "undone" or (state == "announced" and not tidy.done_moving(a)):
                    continue
                try:
                    tidy.reverse(a)
                except (tidy.ActionError, OSError) as e:
                    report.failed.append((a, str(e)))
                    continue
                _follow_back(idx, a)
                tidy.append(path, {"undone": n})
                report.done.append(a)
        finally:
            idx.save()
    return report


def _follow_back(idx: ImageIndex, a: tidy.Action) -> None:
    if a.op == "sort":  # an inbox image sorted into the index leaves it again (its vector a tombstone)
        row = idx.store.row_at(a.root, a.path)
        if row is not None:
            idx.commit(vanish=[row.id])
    elif a.op == "trash":
        if idx.store.row_at(a.root, a.path) is not None:  # the index never heard of the trashing (a crash)
            return
        known = idx.store.known(a.hash, a.bytes)
        if known is not None:  # else (tombstones dropped) the next `index` run embeds it again
            idx.commit(add=[NewImage(a.root, a.path, planner.label_of(a.path), a.bytes, a.mtime_ns, a.hash,
                                     known.width, known.height, known.vector, known.phash)],
                       restored=[known.tombstone] if known.tombstone is not None else [])
    elif a.op == "link":
        idx.commit(touches=[(a.id, a.mtime_ns)])
    else:
        idx.commit(relocations=[(a.id, a.root, a.path, planner.label_of(a.path), a.mtime_ns)])
