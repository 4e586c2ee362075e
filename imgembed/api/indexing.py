"""Indexing a folder: what changed since the last run, embedded and committed in chunks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..config import COMMIT_EVERY, INDEX_BATCH_SIZE
from ..errors import InputError
from ..imaging.decode import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS
from ..index import MANIFEST, ImageIndex, planner
from ..index.directory import ChunkWriter
from ..index.expansion import DEFAULT as DEFAULT_EXPANSION
from ..index.expansion import NONE, Expansion
from ..index.store import NewImage, Skipped
from .models import _own_model, load_model

if TYPE_CHECKING:
    from ..inference import Embedder, Executor

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class IndexReport:
    index: str
    root: str
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0  # rows of vanished files, kept as tombstones (store.TOMBSTONE_DAYS)
    restored: int = 0  # new or changed files whose bytes already had a vector: not embedded
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    total: int = 0  # images in the index after the run
    elapsed_s: float = 0.0

    @property
    def embedded(self) -> int:
        return self.added + self.updated

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "index": self.index, "root": self.root, "added": self.added, "updated": self.updated,
            "moved": self.moved, "removed": self.removed, "restored": self.restored, "unchanged": self.unchanged,
            "total": self.total,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "elapsed_s": round(self.elapsed_s, 3), "images_per_s": round(self.images_per_s, 2),
        }


@dataclass(frozen=True)
class IndexOptions:
    """How an ``index`` run reads, commits and publishes (see :func:`index_folder`)."""

    batch_size: int = INDEX_BATCH_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_timeout: float = DEFAULT_DECODE_TIMEOUT  # seconds before a decode is abandoned
    prune: bool = True  # remove rows of files that disappeared
    allow_removal: bool = False  # even all or most of a folder's rows (planner.check_removals)
    commit_every: int = COMMIT_EVERY  # images per SQLite commit
    publish_every_s: float = 60.0  # re-publish the FAISS file for concurrent readers
    index_type: str | None = None  # None keeps the index's own (auto for a new index)
    target_recall: float | None = None  # None keeps the index's own (0.95 for a new index)
    expand: bool | None = None  # search expansion on or off; None keeps the index's own (on for a new index)
    wait: bool = False  # for another writer, instead of IndexLockedError
    precision: str = "auto"
    runtime: str = "auto"


def index_folder(folder: str | Path, index_dir: str | Path, model: "Embedder | None" = None,
                 options: IndexOptions | None = None, *, executor: "Executor | None" = None,
                 progress: Progress | None = None) -> IndexReport:
    """Add ``folder``'s images to the index at ``index_dir``, creating it if needed.

    Files whose size and mtime match the stored row are not read again; changed files are
    re-embedded; rows of files that disappeared are removed when ``options.prune``, unless that
    would remove all of the folder's rows or most of them (:func:`planner.check_removals`): then
    :class:`RemovalRefusedError` is raised before anything changes, unless ``allow_removal``.
    Undecodable files are recorded as skipped with a reason, and not retried until they change.
    Work is committed every ``commit_every`` images, so an interrupted run keeps what it had
    committed, and the FAISS file is re-published every ``publish_every_s`` seconds for
    concurrent readers (:class:`ChunkWriter`). Files whose mtime changed but whose content did
    not are not re-embedded, and a file moved or renamed keeps its vector (:mod:`planner`). A
    decode that takes longer than ``decode_timeout`` seconds is abandoned and the file skipped.
    Only one process writes to an index at a time: :class:`IndexLockedError` names the holder,
    unless ``wait``. ``index_type`` (auto|flat|hnsw|ivfpq|ondisk or a FAISS factory string)
    changes the index's type; ``expand`` turns search expansion on or off
    (:mod:`imgembed.index.expansion`). An approximate index measures its Recall@10 on its own vectors
    and tunes its search parameters to ``target_recall`` (:mod:`imgembed.index.recall`).

    Without ``model``, an existing index embeds with the model that built it (under ``runtime``
    and ``precision``, as :func:`load_model`; ``auto`` takes OpenVINO where it is installed, see
    :func:`imgembed.inference.runtime.for_indexing`), loaded only when there is something to
    embed: a run that finds nothing new or changed never imports torch. A new index gets the
    default backbone.

    ``executor`` runs decoding and the model: a :class:`~imgembed.inference.pool.LocalPool`
    (the default: decode workers on this machine) or a :class:`~imgembed.inference.ray.RayCluster`;
    everything else, the index written included, is the same whichever runs.
    """
    from ..inference.pool import LocalPool
    from ..inference.runtime import for_indexing

    started = time.perf_counter()
    options = options or IndexOptions()
    executor = executor or LocalPool()
    if not Path(folder).is_dir():
        raise InputError(f"not a folder: {folder}")
    root = Path(folder).resolve()
    executor.check()  # fail before any work when the engine cannot run here
    runtime = executor.runtime or for_indexing(options.runtime, options.precision)
    if model is not None and executor.runtime and model.runtime != executor.runtime:
        model = load_model(model.source["model"], model.source["weights"], options.precision, runtime=runtime)
    if model is None and not (Path(index_dir) / MANIFEST).is_file():
        model = load_model(precision=options.precision, runtime=runtime)
    report = IndexReport(index=str(index_dir), root=str(root))
    identity, source = (model.identity, model.source) if model is not None else (None, None)
    with ImageIndex.open_for_write(index_dir, identity, source, options.index_type, wait=options.wait,
                                   target_recall=options.target_recall,
                                   expansion=expansion_choice(options.expand)) as idx:
        store = idx.store
        plan = planner.plan(str(root), planner.scan(root), store.rows_under(str(root)),
                            {s.path: s for s in store.skipped(str(root))}, prune=options.prune,
                            known=store.known, stored_sizes=store.content_sizes)
        if not options.allow_removal:
            planner.check_removals(root, plan)
        if model is None and plan.todo:  # the index's own model, only now that it is needed
            model = _own_model(index_dir, idx.manifest, options.precision, runtime)
        _apply_without_embedding(idx, str(root), plan, report)
        try:
            if plan.todo:
                writer = ChunkWriter(idx, commit_every=options.commit_every, publish_every_s=options.publish_every_s)
                batches = executor.embed_files(model, [Path(f.path) for f in plan.todo], batch_size=options.batch_size,
                                               max_pixels=options.max_pixels, decode_timeout=options.decode_timeout)
                done = 0
                for batch in batches:
                    _record(batch, str(root), plan, writer, report)
                    done += len(batch.ok) + len(batch.failed)
                    if progress:
                        progress(done, len(plan.todo))
                writer.flush()
        finally:
            # Whatever was committed to SQLite is in the in-memory FAISS index too: save it so
            # readers see a consistent index even after an interruption.
            idx.save()
        report.total = len(idx)
    report.skipped.sort()
    report.elapsed_s = time.perf_counter() - started
    return report


def expansion_choice(expand: bool | None) -> Expansion | None:
    """The :class:`Expansion` an index writer is asked for: on (today's defaults), off, or None
    to keep the index's own."""
    return None if expand is None else (DEFAULT_EXPANSION if expand else NONE)


def _apply_without_embedding(idx: ImageIndex, root: str, plan: planner.Plan, report: IndexReport) -> None:
    """Commit, in one transaction, every part of ``plan`` that needs no model: vanished rows,
    moves, touches, restored vectors, files that cannot be stat'ed; and count them."""
    idx.store.forget_skipped(root, plan.vanished_bad)
    idx.store.drop_tombstones(expired_only=True)
    restored = [NewImage(root, r.file.relative, planner.label_of(r.file.relative), r.file.size, r.file.mtime_ns,
                         r.digest, r.known.width, r.known.height, r.known.vector, r.known.phash)
                for r in plan.restores]
    replaced = [plan.replaces.pop(r.path) for r in restored if r.path in plan.replaces]
    idx.commit(vanish=plan.gone, remove=replaced, skipped=plan.unstatable,
               moves=[(m.id, m.relative, m.label, m.mtime_ns) for m in plan.moves],
               touches=[(t.id, t.mtime_ns) for t in plan.touches], add=restored,
               restored=[r.known.tombstone for r in plan.restores if r.known.tombstone is not None])
    report.unchanged, report.removed = plan.unchanged + len(plan.touches), len(plan.gone)
    report.moved, report.restored = len(plan.moves), len(restored)
    report.skipped = [(s.full_path, s.reason) for s in plan.still_bad + plan.unstatable]


def _record(batch, root: str, plan: planner.Plan, writer: ChunkWriter, report: IndexReport) -> None:
    """Queue a batch's vectors and failures for the next commit; a changed file's old row goes
    in the same commit as its new one."""
    for pos, info, vector in zip(batch.ok, batch.info, batch.vectors):
        f = plan.todo[pos]
        replaces = plan.replaces.get(f.relative)
        writer.add(NewImage(root, f.relative, planner.label_of(f.relative), f.size, f.mtime_ns, info.hash,
                            info.width, info.height, vector, info.phash), replaces=replaces)
        if replaces is None:
            report.added += 1
        else:
            report.updated += 1
    for pos, reason in batch.failed:
        f = plan.todo[pos]
        writer.skip(Skipped(root, f.relative, reason, f.size, f.mtime_ns), replaces=plan.replaces.get(f.relative))
        report.skipped.append((str(f.path), reason))
