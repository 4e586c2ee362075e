"""How much a counter-example should count in a combined query (imgembed.collection.knn.combine's weight).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/combined_queries.py [--tasks 300] [--sets clipart digits fashion photos]

The workflow measured is the one `search a.jpg b.jpg --not c.jpg` and the web page's "-" button
serve: a user gives two examples of what they want, looks at the results, and marks the first
wrong one as a counter-example. Per set, ``--tasks`` seeded tasks: a class, two random images of
it as examples; the first result of another class among the examples' plain combined query is
the counter-example. Reported: precision@10 (share of the wanted class among the 10 results,
examples and counter-example left out) with one example, two, and two plus the counter-example at
each weight. The default was chosen on ``clipart`` (tuning) and is confirmed on the other sets
(held out). Every set comes from bench/quality_data.py (offline packages); embeddings are the
default model's (`imgembed index` would store the same vectors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_data import labelled  # noqa: E402

from imgembed import api  # noqa: E402
from imgembed.collection import knn
from imgembed.inference.pool import embed_files  # noqa: E402

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
TUNING = ("clipart",)


def precision(vectors: np.ndarray, labels: np.ndarray, query: np.ndarray, wanted: int, skip: set[int], k=10) -> float:
    order = np.argsort(-(vectors @ query), kind="stable")
    top = [i for i in order[: k + len(skip)] if i not in skip][:k]
    return float(np.mean(labels[top] == wanted))


def run_set(vectors: np.ndarray, labels: np.ndarray, tasks: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    sums: dict[str, list[float]] = {}
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= 12]
    for _ in range(tasks):
        wanted = rng.choice(classes)
        a, b = rng.choice(np.flatnonzero(labels == wanted), 2, replace=False)
        plain = knn.combine(vectors[[a, b]])
        order = np.argsort(-(vectors @ plain), kind="stable")
        wrong = next(int(i) for i in order if labels[i] != wanted)
        skip = {int(a), int(b), wrong}
        sums.setdefault("one example", []).append(precision(vectors, labels, vectors[a], wanted, skip))
        for w in WEIGHTS:
            q = knn.combine(vectors[[a, b]], vectors[[wrong]], w)
            sums.setdefault(f"two, counter-example at {w:g}", []).append(precision(vectors, labels, q, wanted, skip))
    return {name: float(np.mean(v)) for name, v in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--sets", nargs="+", default=["clipart", "digits", "fashion", "photos"])
    args = parser.parse_args()
    model = api.load_model()
    table: dict[str, dict[str, float]] = {}
    for name in args.sets:
        found = labelled(name)
        if found is None:
            print(f"{name}: not available here, skipped", file=sys.stderr)
            continue
        paths, labels, _ = found
        vectors, kept = [], []
        for batch in embed_files(model, paths):  # undecodable files are skipped, as `index` skips them
            vectors += list(batch.vectors)
            kept += list(batch.ok)
        vectors, labels = np.stack(vectors), labels[np.asarray(kept)]
        table[name] = run_set(vectors, labels, args.tasks)
        print(f"{name}: {len(paths)} images, {args.tasks} tasks", file=sys.stderr)
    names = list(next(iter(table.values())))
    sets = list(table)
    print("| method | " + " | ".join(f"{s}{' (tuning)' if s in TUNING else ''}" for s in sets) + " | held-out mean |")
    print("|---|" + "---|" * (len(sets) + 1))
    for m in names:
        held = [table[s][m] for s in sets if s not in TUNING]
        print(f"| {m} | " + " | ".join(f"{table[s][m]:.3f}" for s in sets) +
              f" | {np.mean(held):.3f} |" if held else " | - |")


if __name__ == "__main__":
    main()
