"""Auditing an index: ranked findings of four kinds, mislabels, outliers, duplicates filed under
two labels and leaks across splits or roots (the scores: :mod:`imgembed.collection.audit`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..collection import audit as scoring
from ..collection import dedup
from ..config import DUPLICATE_K, DUPLICATE_THRESHOLDS
from ..errors import InputError
from ..index import ImageIndex

Progress = Callable[[int, int], None]  # (done, total)
NEIGHBOURS_SHOWN = 5  # neighbours kept with each mislabel or outlier finding
NO_LABELS_NOTE = ("mislabels need labels: this index has {what}; index a folder with one sub-folder per class "
                  "to have them checked")


@dataclass(frozen=True)
class Neighbour:
    path: str
    label: str | None
    cosine: float

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "cosine": round(self.cosine, 6)}


@dataclass(frozen=True)
class Finding:
    """One problem: ``kind`` (mislabel, outlier, duplicate, leak) at ``path``; ``score``, higher
    meaning more likely a real problem; ``suggested``, a mislabel's likelier label; ``other``,
    a duplicate's or leak's second image; ``neighbours``, what the score was computed from."""

    kind: str
    path: str
    label: str | None
    score: float
    suggested: str | None = None
    other: Neighbour | None = None
    neighbours: tuple[Neighbour, ...] = ()

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "path": self.path, "label": self.label, "suggested": self.suggested,
               "score": round(float(self.score), 6)}
        if self.other is not None:
            out["other"] = self.other.to_dict()
        out["neighbours"] = [n.to_dict() for n in self.neighbours]
        return out


@dataclass
class AuditReport:
    """The findings, ranked by score within each kind (kinds in the order of
    :data:`imgembed.collection.audit.KINDS`), and what produced them."""

    findings: list[Finding]
    images: int
    labelled: bool
    thresholds: dict
    everything: bool = False
    note: str | None = None  # one line on what could not be checked, e.g. mislabels without labels
    counts: dict = field(default_factory=dict)  # kind -> findings

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]


def audit(index_dir: str | Path, k: int = scoring.AUDIT_K, *, mislabel_threshold: float | None = None,
          outlier_threshold: float | None = None, duplicate_threshold: float | None = None,
          everything: bool = False, kinds: Sequence[str] = scoring.KINDS,
          progress: Progress | None = None) -> AuditReport:
    """Audit the index at ``index_dir`` (opened read-only): mislabels (a leave-one-out linear
    fit of the labels to the stored vectors, and each image's ``k`` nearest neighbours' vote;
    memory O(images x dimension)), outliers (from the same neighbours), duplicates filed under two labels, and leaks across
    split folders or roots. By default a finding must pass its kind's threshold (the defaults of
    :mod:`imgembed.collection.audit`, and dedup's relative threshold for pairs); ``everything``
    lists every scored image and candidate pair instead, still ranked. Without two labels there
    are no mislabel findings and ``note`` says why."""
    kinds = tuple(kinds)
    unknown = [kd for kd in kinds if kd not in scoring.KINDS]
    if unknown:
        raise InputError(f"unknown finding kind {unknown[0]!r}: choose from {', '.join(scoring.KINDS)}")
    if k < 1:
        raise InputError(f"k must be at least 1, not {k}")
    thresholds = {"mislabel": scoring.MISLABEL_THRESHOLD if mislabel_threshold is None else mislabel_threshold,
                  "outlier": scoring.OUTLIER_THRESHOLD if outlier_threshold is None else outlier_threshold,
                  "duplicate": DUPLICATE_THRESHOLDS["relative"] if duplicate_threshold is None else duplicate_threshold}
    with ImageIndex.open(index_dir) as idx:
        ids, vectors, graph_ids, graph_cos = _neighbourhoods(idx, k, progress)
        rows = idx.store.rows_by_id(ids.tolist())
        pairs = dedup.scored_pairs(idx, DUPLICATE_K) if {"duplicate", "leak"} & set(kinds) else None
    position = {int(i): p for p, i in enumerate(ids.tolist())}
    ordered = [rows[int(i)] for i in ids.tolist()]
    paths = [r.full_path for r in ordered]
    labels = [r.label for r in ordered]
    graph = scoring.Graph.from_lists([[position[j] for j in js if j in position] for js in graph_ids],
                                     [[s for j, s in zip(js, ss) if j in position] for js, ss in zip(graph_ids, graph_cos)],
                                     k)
    codes, classes = scoring.label_codes([scoring.class_of(lab) for lab in labels])
    labelled = len(classes) >= 2
    note = None
    if not labelled:
        what = "no labels" if not classes else f"one label only ({classes[0]})"
        note = NO_LABELS_NOTE.format(what=what)

    def neighbours_of(i: int) -> tuple[Neighbour, ...]:
        return tuple(Neighbour(paths[j], labels[j], float(s))
                     for j, s in zip(graph.neighbours[i][:NEIGHBOURS_SHOWN], graph.cosines[i][:NEIGHBOURS_SHOWN])
                     if j >= 0)

    findings: list[Finding] = []
    if "mislabel" in kinds and labelled:
        score, suggested = scoring.mislabel_scores(vectors, codes, len(classes), graph)
        chosen = np.flatnonzero(~np.isnan(score) & (everything | (score > thresholds["mislabel"])))
        findings += sorted((Finding("mislabel", paths[i], labels[i], float(score[i]), classes[suggested[i]],
                                    neighbours=neighbours_of(i)) for i in chosen), key=_rank)
    if "outlier" in kinds:
        score = scoring.outlier_scores(graph, vectors, codes)
        chosen = np.flatnonzero(everything | (score >= thresholds["outlier"]))
        findings += sorted((Finding("outlier", paths[i], labels[i], float(score[i]), neighbours=neighbours_of(i))
                            for i in chosen), key=_rank)
    if pairs is not None and len(pairs.pairs):
        near = dedup.select(pairs, "relative", thresholds["duplicate"]) | everything
        ends = np.array([[position[int(a)], position[int(b)]] for a, b in pairs.pairs.tolist()], np.int64)
        roots = [r.root for r in ordered]
        relatives = [r.path for r in ordered]
        duplicate, leak = scoring.pair_kinds(ends, labels, roots, relatives)
        for kind, mask in (("duplicate", duplicate), ("leak", leak)):
            if kind not in kinds:
                continue
            found = []
            for p in np.flatnonzero(mask & near):
                a, b = sorted(ends[p].tolist(), key=lambda q: paths[q])
                found.append(Finding(kind, paths[a], labels[a], float(pairs.normalised[p]),
                                     other=Neighbour(paths[b], labels[b], float(pairs.cosine[p]))))
            findings += sorted(found, key=_rank)
    counts = {kd: sum(f.kind == kd for f in findings) for kd in kinds}
    return AuditReport(findings, len(ids), labelled, thresholds, everything, note, counts)


def _rank(f: Finding):
    return (-f.score, f.path)


def _neighbourhoods(idx: ImageIndex, k: int, progress: Progress | None):
    """Stored ids and vectors in id order, and each image's ``k`` nearest others (ids, cosines)."""
    all_ids, all_vecs, graph_ids, graph_cos = [], [], [], []
    total, done = len(idx), 0
    for ids, vecs in idx.store.iter_vectors(batch=1024):
        for i, hits in zip(ids.tolist(), idx.search(vecs, k + 1)):
            others = [(h.row.id, float(h.score)) for h in hits if h.row.id != i][:k]
            graph_ids.append([o for o, _ in others])
            graph_cos.append([s for _, s in others])
        all_ids.append(ids)
        all_vecs.append(vecs)
        done += len(ids)
        if progress:
            progress(done, total)
    if not all_ids:
        raise InputError("the index is empty: nothing to audit")
    return np.concatenate(all_ids), np.concatenate(all_vecs), graph_ids, graph_cos
