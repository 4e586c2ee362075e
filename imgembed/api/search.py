"""Searching and classifying against one index or several, and comparing two images."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from ..collection import knn
from ..config import CLASSIFY_K, EXPANSIONS, SEARCH_K
from ..errors import InputError, ModelMismatchError, NoLabelsError
from ..imaging.decode import DEFAULT_MAX_PIXELS
from ..index import Hit, ImageIndex, describe_mismatch, read_manifest
from ..index.expansion import DEFAULT as DEFAULT_EXPANSION
from ..index.expansion import NONE, Expansion
from .models import Query, _own_model, embed

if TYPE_CHECKING:
    from ..inference import Embedder


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

    ``expansion`` says how :meth:`search` ranks (classify always votes with the raw vectors):
    ``index``, as each index's manifest says (:mod:`imgembed.index.expansion`: new indexes
    augment their vectors with their neighbours' and expand each query with its best hits;
    older ones rank by the raw vectors); ``none``, by the raw vectors; ``dba``, by the augmented
    vectors without expanding the query; ``dba+aqe``, augmented vectors and expanded queries.
    """

    def __init__(self, index_dir: str | Path | Sequence[str | Path], model: "Embedder | None" = None,
                 *, max_pixels: int = DEFAULT_MAX_PIXELS, precision: str = "auto", runtime: str = "auto",
                 expansion: str = "index"):
        if expansion not in EXPANSIONS:
            raise InputError(f"unknown search expansion {expansion!r} (expected one of {', '.join(EXPANSIONS)})")
        self.expansion = expansion
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

    def expansion_of(self, idx: ImageIndex) -> Expansion:
        """How :meth:`search` ranks in ``idx`` (see the class)."""
        own = idx.expansion
        if self.expansion == "none":
            return NONE
        if self.expansion == "dba":
            return replace(own, m=0)
        if self.expansion == "dba+aqe":
            return replace(own, m=own.m or DEFAULT_EXPANSION.m)
        return own

    def search_vectors(self, vectors: np.ndarray, k: int = SEARCH_K, *, expand: bool = True) -> list[list[Hit]]:
        """Each query vector's ``k`` best hits over every index, best first (``Hit.source`` says
        which index holds each), ranked as :attr:`expansion` says (by the raw vectors without
        ``expand``). An image indexed in two of them (the same absolute path) is listed once."""
        def one(idx: ImageIndex) -> list[list[Hit]]:
            return idx.search(vectors, k, expansion=self.expansion_of(idx) if expand else None)

        if len(self.indexes) == 1:
            return one(self.indexes[0])
        merged = []
        for per_index in zip(*(one(idx) for idx in self.indexes)):
            hits = sorted(((source, h) for source, hits in enumerate(per_index) for h in hits),
                          key=lambda sh: -sh[1].rank_key)
            seen, best = set(), []
            for source, h in hits:
                if h.row.full_path not in seen and len(best) < k:
                    seen.add(h.row.full_path)
                    best.append(replace(h, rank=len(best) + 1, source=source))
            merged.append(best)
        return merged

    def search(self, queries: Sequence[Query], k: int = SEARCH_K) -> list[QueryResult]:
        hits = self.search_vectors(self.embed(queries), k)
        return [QueryResult(_name(q), h) for q, h in zip(queries, hits)]

    def search_combined(self, positives: Sequence[Query], negatives: Sequence[Query] = (), k: int = SEARCH_K, *,
                        weight: float = knn.NEGATIVE_WEIGHT, vectors: np.ndarray | None = None,
                        negative_vectors: np.ndarray | None = None,
                        exclude: Sequence[tuple[int, int]] = ()) -> list[Hit]:
        """The ``k`` best hits for one query combined from examples and counter-examples
        (:func:`knn.combine`): images, or vectors already embedded (``vectors``,
        ``negative_vectors``). The examples themselves are left out of the hits: paths among the
        queries, and ``exclude`` as ``(index, row id)`` pairs. Ranked by the combined query's
        cosine, as :func:`knn.combine` documents, unless there is one example and no counter-example:
        that is a plain search, ranked as :meth:`search` ranks."""
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
        plain = sum(len(p) for p in pos) == 1 and not neg
        hits = [h for h in self.search_vectors(query[None], wanted, expand=plain)[0]
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

    def classify(self, queries: Sequence[Query], k: int = CLASSIFY_K) -> list[Classification]:
        if all(label is None for idx in self.indexes for label in idx.store.labels()):
            raise NoLabelsError(f"{self.index.directory}: the index has no labels (all images sit at "
                                "the folder root); put images in one sub-folder per class and re-index")
        out = []
        for q, hits in zip(queries, self.search_vectors(self.embed(queries), k, expand=False)):
            v = knn.vote([h.row.label for h in hits], [h.score for h in hits])
            out.append(Classification(_name(q), v, hits))
        return out


def compare(model: "Embedder", a: Query, b: Query, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> float:
    """Cosine similarity of two images' embeddings, in [-1, 1]."""
    va, vb = embed(model, [a, b], max_pixels=max_pixels)
    return float(np.dot(va, vb))
