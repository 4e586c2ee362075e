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

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image

from . import knn
from .errors import ImageLoadError, InputError, NoLabelsError
from .files import iter_images
from .images import DEFAULT_MAX_PIXELS, read_image
from .index import Hit, ImageIndex, read_manifest
from .store import NewImage, Skipped

if TYPE_CHECKING:
    from .model import EmbeddingModel

# torch is imported only by the functions that run a model, so that `info` and the storage
# layer start fast.

__all__ = ["load_model", "embed", "index_folder", "IndexReport", "Searcher", "compare",
           "index_info", "QueryResult", "Classification"]

Progress = Callable[[int, int], None]  # (done, total)
Query = str | Path | Image.Image


def load_model(name_or_checkpoint: str = "efficientnet_lite0", weights: str = "imagenet") -> "EmbeddingModel":
    """A registry backbone (default: offline EfficientNet-Lite0) or a ``.pt`` checkpoint."""
    from .model import load_model as _load

    return _load(name_or_checkpoint, weights)


def embed(model: "EmbeddingModel", items: Sequence[Query], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Embed image paths or PIL images to an (n, dim) float32 array of unit vectors.

    A path that cannot be decoded raises :class:`ImageLoadError` naming the file.
    """
    from .embed import embed_images

    images = []
    for item in items:
        if isinstance(item, Image.Image):
            images.append(item)
            continue
        try:
            images.append(read_image(item, min_side=model.preprocess.resize, max_pixels=max_pixels).image)
        except ImageLoadError as e:
            raise ImageLoadError(f"{item}: {e}") from None
    return embed_images(model, images)


# -- indexing --------------------------------------------------------------------------------

@dataclass
class IndexReport:
    index: str
    root: str
    added: int = 0
    updated: int = 0
    removed: int = 0
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
            "removed": self.removed, "unchanged": self.unchanged, "total": self.total,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "elapsed_s": round(self.elapsed_s, 3), "images_per_s": round(self.images_per_s, 2),
        }


def _label_of(relative: str) -> str | None:
    parent = relative.rpartition("/")[0]
    return parent or None


def index_folder(folder: str | Path, index_dir: str | Path, model: "EmbeddingModel | None" = None, *,
                 batch_size: int = 32, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 prune: bool = True, commit_every: int = 256, progress: Progress | None = None) -> IndexReport:
    """Add ``folder``'s images to the index at ``index_dir``, creating it if needed.

    Files whose size and mtime match the stored row are not read again; changed files are
    re-embedded; rows of files that disappeared are removed when ``prune``. Undecodable files
    are recorded as skipped with a reason, and not retried until they change. Work is committed
    every ``commit_every`` images, so an interrupted run keeps what it had committed.
    """
    from .embed import embed_files

    started = time.perf_counter()
    root_path = Path(folder)
    if not root_path.is_dir():
        raise InputError(f"not a folder: {folder}")
    root = str(root_path.resolve())
    model = model or load_model()
    report = IndexReport(index=str(index_dir), root=root)
    with ImageIndex.open_for_write(index_dir, model.identity, model.source) as idx:
        existing = idx.store.rows_under(root)
        known_bad = {s.path: s for s in idx.store.skipped(root)}
        todo: list[tuple[Path, str, int, int]] = []  # (path, relative, bytes, mtime_ns)
        replaced: dict[str, int] = {}  # relative path -> id of the row a changed file replaces
        seen: set[str] = set()
        newly_bad: list[Skipped] = []
        for path in iter_images(root_path.resolve()):
            rel = path.relative_to(root).as_posix()
            seen.add(rel)
            try:
                st = path.stat()
            except OSError as e:
                newly_bad.append(Skipped(root, rel, f"cannot stat file: {e.strerror or e}", 0, 0))
                continue
            row = existing.get(rel)
            if row is not None and (row.bytes, row.mtime_ns) == (st.st_size, st.st_mtime_ns):
                report.unchanged += 1
                continue
            bad = known_bad.get(rel)
            if bad is not None and (bad.bytes, bad.mtime_ns) == (st.st_size, st.st_mtime_ns):
                report.skipped.append((str(path), bad.reason))
                continue
            if row is not None:
                replaced[rel] = row.id
            todo.append((path, rel, st.st_size, st.st_mtime_ns))

        gone = [row.id for rel, row in existing.items() if rel not in seen] if prune else []
        idx.store.forget_skipped(root, [p for p in known_bad if p not in seen])
        if gone or newly_bad:
            idx.commit(remove=gone, skipped=newly_bad)
        report.removed = len(gone)
        report.skipped.extend((str(Path(root) / s.path), s.reason) for s in newly_bad)

        pending_add: list[NewImage] = []
        pending_skip: list[Skipped] = []
        pending_remove: list[int] = []
        done = 0

        def flush() -> None:
            idx.commit(remove=pending_remove, add=pending_add, skipped=pending_skip)
            pending_add.clear(), pending_skip.clear(), pending_remove.clear()

        paths = [t[0] for t in todo]
        try:
            for batch in embed_files(model, paths, batch_size=batch_size, workers=workers, max_pixels=max_pixels):
                for pos, info, vector in zip(batch.ok, batch.info, batch.vectors):
                    path, rel, size, mtime = todo[pos]
                    if rel in replaced:
                        pending_remove.append(replaced[rel])
                        report.updated += 1
                    else:
                        report.added += 1
                    pending_add.append(NewImage(root, rel, _label_of(rel), size, mtime, info.hash,
                                                info.width, info.height, vector))
                for pos, reason in batch.failed:
                    path, rel, size, mtime = todo[pos]
                    if rel in replaced:
                        pending_remove.append(replaced[rel])
                    pending_skip.append(Skipped(root, rel, reason, size, mtime))
                    report.skipped.append((str(path), reason))
                done += len(batch.ok) + len(batch.failed)
                if len(pending_add) + len(pending_skip) >= commit_every:
                    flush()
                if progress:
                    progress(done, len(todo))
            flush()
        finally:
            # Whatever was committed to SQLite is in the in-memory FAISS index too: save it so
            # readers see a consistent index even after an interruption.
            idx.save()
        report.total = len(idx)
    report.skipped.sort()
    report.elapsed_s = time.perf_counter() - started
    return report


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
    """Keeps an index and its model loaded, for many queries.

    Without ``model`` it loads the model the index records in its manifest; with one, the model
    must be the one that built the index (:class:`ModelMismatchError` otherwise).
    """

    def __init__(self, index_dir: str | Path, model: "EmbeddingModel | None" = None,
                 *, max_pixels: int = DEFAULT_MAX_PIXELS):
        if model is None:
            source = read_manifest(Path(index_dir))["model_source"]
            model = load_model(source["model"], source["weights"])
        self.model = model
        self.index = ImageIndex.open(index_dir, model.identity)
        self.max_pixels = max_pixels

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed(self, queries: Sequence[Query]) -> np.ndarray:
        return embed(self.model, queries, max_pixels=self.max_pixels)

    def search(self, queries: Sequence[Query], k: int = 10) -> list[QueryResult]:
        hits = self.index.search(self.embed(queries), k)
        return [QueryResult(_name(q), h) for q, h in zip(queries, hits)]

    def classify(self, queries: Sequence[Query], k: int = 5) -> list[Classification]:
        if all(label is None for label in self.index.store.labels()):
            raise NoLabelsError(f"{self.index.directory}: the index has no labels (all images sit at "
                                "the folder root); put images in one sub-folder per class and re-index")
        out = []
        for q, hits in zip(queries, self.index.search(self.embed(queries), k)):
            v = knn.vote([h.row.label for h in hits], [h.score for h in hits])
            out.append(Classification(_name(q), v, hits))
        return out


def compare(model: "EmbeddingModel", a: Query, b: Query, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> float:
    """Cosine similarity of two images' embeddings, in [-1, 1]."""
    va, vb = embed(model, [a, b], max_pixels=max_pixels)
    return float(np.dot(va, vb))


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
            "size_bytes": sum(f.stat().st_size for f in Path(index_dir).iterdir() if f.is_file()),
        }
