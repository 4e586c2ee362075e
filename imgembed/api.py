"""The Python API, and the orchestration behind every CLI command.

    from imgembed import api
    model = api.load_model()                       # offline EfficientNet-Lite0
    report = api.index_folder("photos", "indexes/default", model)
    with api.Searcher("indexes/default") as s:     # model and index loaded once
        hits = s.search(["query.jpg"], k=5)
        votes = s.classify(["query.jpg"], k=5)
    api.compare(model, "a.jpg", "b.jpg")           # cosine similarity
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image

from . import knn, tidy
from .errors import ImageLoadError, InputError, ModelMismatchError, NoLabelsError, TorchUnavailableError
from .images import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS, load_for_model, to_rgb
from .index import MANIFEST, Hit, ImageIndex, describe_mismatch, planner, read_manifest
from .index.directory import ChunkWriter
from .index.store import NewImage, Skipped, from_db

if TYPE_CHECKING:
    from .model import EmbeddingModel
    from .runtime import OnnxModel

# torch is imported only by the functions that run a model, so that `info` and the storage
# layer start fast.

__all__ = ["load_model", "embed", "index_folder", "IndexReport", "Searcher", "compare",
           "index_info", "rebuild_index", "remove_paths", "drop_tombstones", "check_index", "find_duplicates", "DuplicateGroup",
           "exact_duplicates", "act_on_duplicates", "undo_duplicate_actions", "ActionReport",
           "QueryResult", "Classification"]

Progress = Callable[[int, int], None]  # (done, total)
ENGINES = ("local", "ray")
Query = str | Path | Image.Image


def load_model(name_or_checkpoint: str = "efficientnet_lite0", weights: str = "imagenet",
               precision: str = "auto", *, index: str | Path | None = None,
               runtime: str = "auto", like: dict | None = None) -> "EmbeddingModel | OnnxModel":
    """A registry backbone (default: offline EfficientNet-Lite0) or a ``.pt`` checkpoint, ready
    to embed.

    ``runtime="auto"`` runs it under ONNX Runtime where that is installed (exported once per
    model and cached; a cached model loads without importing torch), else under torch; see
    :mod:`imgembed.runtime`. Under torch, ``precision="auto"`` runs bf16 where the hardware does
    so natively, fp32 elsewhere. With ``index``, an existing index built by the same backbone
    lends its preprocessing and pooling, so that an index built before today's defaults keeps
    embedding its images the old way; so does ``like``, a model identity.
    """
    from . import runtime as rt

    if index is not None and (Path(index) / MANIFEST).is_file():
        like = read_manifest(Path(index)).get("model")
    engine = rt.choose(runtime, precision)
    if engine != "torch":
        key = rt.source_key(name_or_checkpoint, weights, like)
        found = rt.cached_source(key, engine) or rt.without_torch(name_or_checkpoint, weights, like, key, engine)
        if found is not None:
            return found
        if not rt.torch_available():
            raise _needs_torch(name_or_checkpoint, weights)
    from .model import load_model as _load

    model = _load(name_or_checkpoint, weights, "fp32" if engine != "torch" else precision, like=like)
    if engine != "torch":
        return rt.export(model, key, engine) or model.set_precision(precision)
    return model


def _needs_torch(name_or_checkpoint: str, weights: str) -> TorchUnavailableError:
    """Why a model cannot run in this install (no torch), and what to do about it."""
    from . import runtime as rt

    fix = "pip install 'imgembed[train]'"
    if name_or_checkpoint.endswith(".pt") or Path(name_or_checkpoint).is_file():
        side = rt.beside_path(name_or_checkpoint)
        state = "is for another version of it" if side.is_file() else "is missing"
        return TorchUnavailableError(
            f"{name_or_checkpoint}: its ONNX export {side} {state}, and this install has no torch to load the "
            f"checkpoint: run `imgembed export {name_or_checkpoint}` where torch is installed ({fix}), or "
            "install it here")
    return TorchUnavailableError(f"--model {name_or_checkpoint} --weights {weights} needs torch, which this install "
                                 f"lacks (only the default backbone with ImageNet weights runs without it): {fix}")


def embed(model: "EmbeddingModel | OnnxModel", items: Sequence[Query], *, max_pixels: int = DEFAULT_MAX_PIXELS,
          batch_size: int = 32) -> np.ndarray:
    """Embed image paths or PIL images to an (n, dim) float32 array of unit vectors.

    A path that cannot be decoded raises :class:`ImageLoadError` naming the file.
    """
    arrays = []
    for item in items:
        if isinstance(item, Image.Image):
            image = to_rgb(item)
        else:
            try:
                image = load_for_model(item, min_side=model.preprocess.min_side, max_pixels=max_pixels).image
            except ImageLoadError as e:
                raise ImageLoadError(f"{item}: {e}") from None
        arrays.append(model.preprocess.to_array(image))
    chunks = [model.embed_array(np.stack(arrays[i:i + batch_size])) for i in range(0, len(arrays), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, model.dim), np.float32)


def _own_model(index_dir: str | Path, manifest: dict, precision: str, runtime: str) -> "EmbeddingModel | OnnxModel":
    """The model that built an index: its cached ONNX export when there is one (no torch), else
    loaded the way its manifest says."""
    from . import runtime as rt

    engine = rt.choose(runtime, precision)
    if engine != "torch":
        found = rt.cached(manifest["model"], engine)
        if found is not None:
            return found
    own = manifest.get("model_source") or {}
    if "model" not in own:
        raise InputError(f"{index_dir}: its manifest does not say how to load its model; pass --model")
    model = load_model(own["model"], own["weights"], precision, index=index_dir, runtime=runtime)
    if model.identity != manifest["model"]:
        raise ModelMismatchError(f"{index_dir}: the model its manifest names no longer loads as the one that "
                                 f"built it ({own['model']}); pass --model explicitly")
    return model


# -- indexing --------------------------------------------------------------------------------

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


def index_folder(folder: str | Path, index_dir: str | Path, model: "EmbeddingModel | None" = None, *,
                 batch_size: int = 32, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 prune: bool = True, commit_every: int = 256, index_type: str | None = None,
                 target_recall: float | None = None,
                 wait: bool = False, decode_timeout: float = DEFAULT_DECODE_TIMEOUT, publish_every_s: float = 60.0,
                 engine: str = "local", ray_address: str | None = None, ray_actors: int | None = None,
                 allow_removal: bool = False, precision: str = "auto", runtime: str = "auto",
                 progress: Progress | None = None) -> IndexReport:
    """Add ``folder``'s images to the index at ``index_dir``, creating it if needed.

    Files whose size and mtime match the stored row are not read again; changed files are
    re-embedded; rows of files that disappeared are removed when ``prune``, unless that would
    remove all of the folder's rows or most of them (:func:`planner.check_removals`): then
    :class:`RemovalRefusedError` is raised before anything changes, unless ``allow_removal``.
    Undecodable files are recorded as skipped with a reason, and not retried until they change.
    Work is committed every ``commit_every`` images, so an interrupted run keeps what it had
    committed, and the FAISS file is re-published every ``publish_every_s`` seconds for
    concurrent readers (:class:`ChunkWriter`). Files whose mtime changed but whose content did
    not are not re-embedded, and a file moved or renamed keeps its vector (:mod:`planner`). A
    decode that takes longer than ``decode_timeout`` seconds is abandoned and the file skipped.
    Only one process writes to an index at a time: :class:`IndexLockedError` names the holder,
    unless ``wait``. ``index_type`` (auto|flat|hnsw|ivfpq|ondisk or a FAISS factory string)
    changes the index's type; None keeps it (``auto`` for a new index). An approximate index
    measures its Recall@10 on its own vectors and tunes its search parameters to
    ``target_recall`` (None keeps the index's own, 0.95 for a new index; see
    :mod:`imgembed.index.recall`).

    Without ``model``, an existing index embeds with the model that built it (under ``runtime``
    and ``precision``, as :func:`load_model`; ``auto`` takes OpenVINO where it is installed, see
    :func:`imgembed.runtime.for_indexing`), loaded only when there is something to embed: a
    run that finds nothing new or changed never imports torch. A new index gets the default
    backbone.

    ``engine="ray"`` runs decoding and the model on a Ray cluster (``ray_address``, else a local
    one; ``ray_actors`` model replicas; see :mod:`imgembed.ray_engine`); everything else, the
    index written included, is the same as with the local engine; its model actors run torch.
    """
    started = time.perf_counter()
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {'|'.join(ENGINES)}, not {engine!r}")
    if not Path(folder).is_dir():
        raise InputError(f"not a folder: {folder}")
    root = Path(folder).resolve()
    from .runtime import for_indexing

    runtime = for_indexing(runtime, precision)
    if engine == "ray":
        from .ray_engine import require

        require()  # fail before any work when Ray is not installed
        from .backbones import require_torch

        require_torch("--engine ray (its model actors run torch)")
        runtime = "torch"
        if model is not None and model.runtime != "torch":
            model = load_model(model.source["model"], model.source["weights"], precision, runtime="torch")
    if model is None and not (Path(index_dir) / MANIFEST).is_file():
        model = load_model(precision=precision, runtime=runtime)
    report = IndexReport(index=str(index_dir), root=str(root))
    identity, source = (model.identity, model.source) if model is not None else (None, None)
    with ImageIndex.open_for_write(index_dir, identity, source, index_type, wait=wait,
                                   target_recall=target_recall) as idx:
        store = idx.store
        plan = planner.plan(str(root), planner.scan(root), store.rows_under(str(root)),
                            {s.path: s for s in store.skipped(str(root))}, prune=prune,
                            known=store.known, stored_sizes=store.content_sizes)
        if not allow_removal:
            planner.check_removals(root, plan)
        if model is None and plan.todo:  # the index's own model, only now that it is needed
            model = _own_model(index_dir, idx.manifest, precision, runtime)
        _apply_without_embedding(idx, str(root), plan, report)
        try:
            if plan.todo:
                writer = ChunkWriter(idx, commit_every=commit_every, publish_every_s=publish_every_s)
                batches = _embed_batches(engine, model, [Path(f.path) for f in plan.todo], batch_size=batch_size,
                                         workers=workers, max_pixels=max_pixels, decode_timeout=decode_timeout,
                                         ray_address=ray_address, ray_actors=ray_actors)
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


def _embed_batches(engine: str, model, paths: list[Path], *, batch_size: int, workers: int | None,
                   max_pixels: int, decode_timeout: float, ray_address: str | None, ray_actors: int | None):
    """Embedded batches (:class:`imgembed.embed.Batch`) of ``paths``, in order, from the chosen engine."""
    if engine == "ray":
        from .ray_engine import embed_files

        return embed_files(model, paths, address=ray_address, batch_size=batch_size, actors=ray_actors,
                           max_pixels=max_pixels, decode_timeout=decode_timeout)
    from .embed import embed_files

    return embed_files(model, paths, batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                       decode_timeout=decode_timeout)


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


# -- querying --------------------------------------------------------------------------------

@dataclass(frozen=True)
class QueryResult:
    query: str
    hits: list[Hit]

    def to_dict(self) -> dict:
        return {"query": self.query, "results": [
            {"rank": h.rank, "path": h.row.full_path, "score": round(h.score, 6), "label": h.row.label}
            for h in self.hits]}


@dataclass(frozen=True)
class Classification:
    query: str
    vote: knn.Vote
    neighbours: list[Hit]

    def to_dict(self) -> dict:
        return {"query": self.query, "label": self.vote.label, "confidence": round(self.vote.confidence, 6),
                "votes": self.vote.votes, "weights": {k: round(v, 6) for k, v in self.vote.weights.items()}}


def _name(q: Query) -> str:
    return str(q) if not isinstance(q, Image.Image) else f"<image {q.width}x{q.height}>"


class Searcher:
    """Keeps one index or several, and their model, loaded for many queries.

    Without ``model`` it loads the model the (first) index records in its manifest; with one,
    the model must be the one that built the index (:class:`ModelMismatchError` otherwise).
    Several index directories (one per disk, per year, per shard of a collection too large for
    one) are searched as one: every index must have been built by the same model, and each
    query's hits from all of them are merged by score.
    """

    def __init__(self, index_dir: str | Path | Sequence[str | Path], model: "EmbeddingModel | OnnxModel | None" = None,
                 *, max_pixels: int = DEFAULT_MAX_PIXELS, precision: str = "auto", runtime: str = "auto"):
        dirs = [Path(index_dir)] if isinstance(index_dir, (str, Path)) else [Path(d) for d in index_dir]
        if not dirs:
            raise InputError("no index to search")
        if model is None:
            model = _own_model(dirs[0], read_manifest(dirs[0]), precision, runtime)
        self.model = model
        self.indexes: list[ImageIndex] = []
        for directory in dirs[1:]:
            other = read_manifest(directory).get("model") or {}
            if other != model.identity:
                raise ModelMismatchError(f"{directory} was built by another model than {dirs[0]} "
                                         f"({describe_mismatch(other, model.identity)}); indexes searched "
                                         "together must share one model")
        try:
            for directory in dirs:
                self.indexes.append(ImageIndex.open(directory, model.identity))
        except BaseException:
            self.close()
            raise
        self.max_pixels = max_pixels

    @property
    def index(self) -> ImageIndex:
        """The first index (the only one, unless several were given)."""
        return self.indexes[0]

    def __len__(self) -> int:
        return sum(len(idx) for idx in self.indexes)

    def close(self) -> None:
        for idx in self.indexes:
            idx.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed(self, queries: Sequence[Query]) -> np.ndarray:
        return embed(self.model, queries, max_pixels=self.max_pixels)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Each query vector's ``k`` best hits over every index, best first (``Hit.source`` says
        which index holds each). An image indexed in two of them (the same absolute path) is
        listed once."""
        if len(self.indexes) == 1:
            return self.indexes[0].search(vectors, k)
        merged = []
        for per_index in zip(*(idx.search(vectors, k) for idx in self.indexes)):
            hits = sorted(((source, h) for source, hits in enumerate(per_index) for h in hits),
                          key=lambda sh: -sh[1].score)
            seen, best = set(), []
            for source, h in hits:
                if h.row.full_path not in seen and len(best) < k:
                    seen.add(h.row.full_path)
                    best.append(replace(h, rank=len(best) + 1, source=source))
            merged.append(best)
        return merged

    def search(self, queries: Sequence[Query], k: int = 10) -> list[QueryResult]:
        hits = self.search_vectors(self.embed(queries), k)
        return [QueryResult(_name(q), h) for q, h in zip(queries, hits)]

    def search_combined(self, positives: Sequence[Query], negatives: Sequence[Query] = (), k: int = 10, *,
                        weight: float = knn.NEGATIVE_WEIGHT, vectors: np.ndarray | None = None,
                        negative_vectors: np.ndarray | None = None,
                        exclude: Sequence[tuple[int, int]] = ()) -> list[Hit]:
        """The ``k`` best hits for one query combined from examples and counter-examples
        (:func:`knn.combine`): images, or vectors already embedded (``vectors``,
        ``negative_vectors``). The examples themselves are left out of the hits: paths among the
        queries, and ``exclude`` as ``(index, row id)`` pairs."""
        pos = [self.embed(positives)] if positives else []
        neg = [self.embed(negatives)] if negatives else []
        pos += [vectors] if vectors is not None and len(vectors) else []
        neg += [negative_vectors] if negative_vectors is not None and len(negative_vectors) else []
        if not pos:
            raise InputError("a combined query needs at least one example image")
        query = knn.combine(np.concatenate(pos), np.concatenate(neg) if neg else (), weight)
        paths = {os.path.abspath(q) for q in [*positives, *negatives] if not isinstance(q, Image.Image)}
        skip = set(exclude)
        wanted = k + len(paths) + len(skip)
        hits = [h for h in self.search_vectors(query[None], wanted)[0]
                if h.row.full_path not in paths and (h.source, h.row.id) not in skip][:k]
        return [replace(h, rank=rank) for rank, h in enumerate(hits, 1)]

    def refresh(self) -> None:
        """Reopen the indexes, to see what a writer (this process's or another's) changed."""
        fresh = []
        try:
            for idx in self.indexes:
                fresh.append(ImageIndex.open(idx.directory, self.model.identity))
        except BaseException:
            for idx in fresh:
                idx.close()
            raise
        self.close()
        self.indexes = fresh

    def classify(self, queries: Sequence[Query], k: int = 5) -> list[Classification]:
        if all(label is None for idx in self.indexes for label in idx.store.labels()):
            raise NoLabelsError(f"{self.index.directory}: the index has no labels (all images sit at "
                                "the folder root); put images in one sub-folder per class and re-index")
        out = []
        for q, hits in zip(queries, self.search_vectors(self.embed(queries), k)):
            v = knn.vote([h.row.label for h in hits], [h.score for h in hits])
            out.append(Classification(_name(q), v, hits))
        return out


def compare(model: "EmbeddingModel | OnnxModel", a: Query, b: Query, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> float:
    """Cosine similarity of two images' embeddings, in [-1, 1]."""
    va, vb = embed(model, [a, b], max_pixels=max_pixels)
    return float(np.dot(va, vb))


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


def find_duplicates(index_dir: str | Path, threshold: float | None = None, k: int = 10, *,
                    score: str = "relative", progress: Progress | None = None) -> list[DuplicateGroup]:
    """Groups of indexed images that are near-duplicates of each other.

    ``score="relative"`` (the default) compares a pair's cosine with each image's ``k``-th
    neighbour (:mod:`imgembed.dedup`; default threshold 0.5, and a cosine of at least 0.85);
    ``score="cosine"`` uses the raw
    cosine (default threshold 0.85). Each stored vector is searched for its ``k`` nearest
    neighbours through the FAISS index, so memory stays O(n x k), never n x n; pairs at or above
    the threshold are joined with union-find, so a chain of near-duplicates forms one group.
    Largest groups first; a member's score is its best score with another member.
    """
    from . import dedup

    if score not in dedup.SCORES:
        raise InputError(f"score must be one of {', '.join(dedup.SCORES)}, not {score!r}")
    threshold = dedup.SCORES[score] if threshold is None else threshold
    with ImageIndex.open(index_dir) as idx:
        scored = dedup.scored_pairs(idx, k, progress=progress)
        rows = idx.store.rows_by_id(sorted(scored.rows))
    chosen = dedup.select(scored, score, threshold)
    values = scored.normalised if score == "relative" else scored.cosine
    parent: dict[int, int] = {}
    best: dict[int, float] = {}

    def find(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (a, b), value, keep in zip(scored.pairs.tolist(), values.tolist(), chosen.tolist()):
        if keep:
            parent[find(a)] = find(b)
            best[a] = max(best.get(a, -1.0), value)
            best[b] = max(best.get(b, -1.0), value)
    members: dict[int, list[int]] = {}
    for i in best:
        members.setdefault(find(i), []).append(i)
    groups = [DuplicateGroup([rows[i] for i in sorted(m)], [best[i] for i in sorted(m)],
                             exact=len({(rows[i].hash, rows[i].bytes) for i in m}) == 1)
              for m in members.values() if len(m) > 1]
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
    hard-``link`` (exact groups only) or ``trash`` the others (:mod:`imgembed.tidy`).

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
    raise InputError(f"{index_dir}: no duplicates action to undo (no journal in {folder} with actions left)")


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
    if a.op == "trash":
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
        for row_id, rel in idx.store.db.execute("SELECT id, path FROM images"):
            if _escapes(from_db(rel)):
                problems.append(f"row {row_id}: path {from_db(rel)!r} escapes its root")
        images = idx.store.count()
    repaired = False
    if repair and problems:
        with ImageIndex.open_for_write(index_dir, None, wait=wait) as idx:
            bad = [row_id for row_id, rel in idx.store.db.execute("SELECT id, path FROM images")
                   if _escapes(from_db(rel))]
            idx.commit(remove=bad)
            idx.rebuild()
            idx.save()
            images = idx.store.count()
        repaired = True
    return {"index": str(index_dir), "images": images, "problems": problems, "repaired": repaired}


def rebuild_index(index_dir: str | Path, index_type: str | None = None, *, target_recall: float | None = None,
                  wait: bool = False) -> dict:
    """Rebuild the FAISS file from the stored vectors, optionally as another index type (an
    approximate one tuned to ``target_recall``, see :mod:`imgembed.index.recall`).

    Returns the new ``manifest["faiss"]`` entry, with the ``recall`` check where there is one.
    Needs no model.
    """
    with ImageIndex.open_for_write(index_dir, None, wait=wait, target_recall=target_recall) as idx:
        idx.rebuild(index_type)
        idx.save()
        return {**idx.manifest["faiss"], "recall": idx.manifest.get("recall")}


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
            "size_bytes": sum(f.stat().st_size for f in Path(index_dir).iterdir() if f.is_file()),
            "problem": idx.problem,
        }
