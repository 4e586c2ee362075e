"""Database-side augmentation (DBA) and alpha query expansion (aQE) on category retrieval: the
study behind the search choices of issue 26, on stored vectors, before any of it is in the index.

    .venv/bin/python bench/dba.py [--backbone efficientnet_lite0] [--sets clipart fashion ...]

Each labelled set of bench/quality_data.py is one whole index: every image is a query against
all the others (leave-one-out), as `imgembed search` would answer it, and the metrics are
mAP@R and P@1 by category (imgembed.collection.metrics). The vectors are the product's own
(bench/backbone_quality.py's cache, built by running that script first).

- ``dba k=K a=A``: each stored vector replaced by the normalised sum of itself and its K nearest
  others, each weighted by max(cos, 0)^A (A = 0: a plain mean), computed once on the raw vectors;
  queries stay raw.
- ``+aqe m=M b=B``: the query replaced by the normalised sum of itself and its M best hits in
  the (augmented) database, weighted by max(cos, 0)^B, then searched again.

``TUNE`` sets (quality.py's: clipart, fashion) choose; ``HELD_OUT`` ones only confirm. Results:
bench/data/dba/results.json and the table printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import quality_data
from quality_data import HERE

sys.path.insert(0, str(HERE.parent))

OUT = HERE / "data" / "dba"
TUNE = ("clipart", "fashion")
HELD_OUT = ("clipart-top", "digits", "photos")
DBA_GRID = [(k, a) for k in (1, 2, 3, 5, 10) for a in (0, 3)]
AQE_GRID = [(m, b) for m in (1, 2, 3, 5) for b in (0, 3)]


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbours(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows (positions, cosines), best first."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nb = np.argsort(-sims, 1)[:, :k]
    return nb, np.take_along_axis(sims, nb, 1)


def dba(x: np.ndarray, k: int, a: float) -> np.ndarray:
    nb, cs = neighbours(x, k)
    w = np.maximum(cs, 0.0) ** a
    return l2n(x + (w[:, :, None] * x[nb]).sum(1))


def aqe(queries: np.ndarray, db: np.ndarray, m: int, b: float) -> np.ndarray:
    """Leave-one-out: query i never expands with its own database entry."""
    sims = queries @ db.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, 1)[:, :m]
    w = np.maximum(np.take_along_axis(sims, top, 1), 0.0) ** b
    return l2n(queries + (w[:, :, None] * db[top]).sum(1))


def loo(queries: np.ndarray, db: np.ndarray, labels: np.ndarray) -> dict:
    """mAP@R and P@1 as imgembed.collection.metrics defines them (ties by index), leave-one-out
    with distinct query and database vectors: row i never finds database entry i."""
    lab = np.asarray(labels)
    maps, p1 = [], []
    sims = queries @ db.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, 1, kind="stable")
    for i in range(len(lab)):
        r = int((lab == lab[i]).sum()) - 1
        if r <= 0:
            continue
        hits = lab[order[i, :r]] == lab[i]
        maps.append(float((np.cumsum(hits) / np.arange(1, r + 1) * hits).sum() / r))
        p1.append(bool(hits[0]))
    return {"map": float(np.mean(maps)), "p1": float(np.mean(p1))}


def vectors_of(backbone: str, paths: list[Path]) -> np.ndarray | None:
    cache = HERE / "data" / "backbones" / f"features-{backbone}.npz"
    if not cache.is_file():
        return None
    data = np.load(cache)
    where = {str(p): i for i, p in enumerate(data["paths"])}
    rows = [where.get(str(Path(p).resolve())) for p in paths]
    if any(r is None for r in rows):
        return None
    return data["vectors"][rows].astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--sets", nargs="*", default=list(TUNE + HELD_OUT))
    args = ap.parse_args()
    results = {}
    for name in args.sets:
        got = quality_data.labelled(name)
        x = vectors_of(args.backbone, got[0]) if got else None
        if x is None:
            print(f"{name}: no cached vectors (run bench/backbone_quality.py first); skipped", file=sys.stderr)
            continue
        labels = got[1]
        x = l2n(x)
        row = {"raw": loo(x, x, labels)}
        for k, a in DBA_GRID:
            db = dba(x, k, a)
            row[f"dba k={k} a={a}"] = loo(x, db, labels)
            if (k, a) in ((1, 0), (2, 0), (3, 3), (5, 3)):
                for m, b in AQE_GRID:
                    row[f"dba k={k} a={a} +aqe m={m} b={b}"] = loo(aqe(x, db, m, b), db, labels)
        for m, b in AQE_GRID:
            row[f"aqe m={m} b={b}"] = loo(aqe(x, x, m, b), x, labels)
        results[name] = {"role": "tuning" if name in TUNE else "held-out", "images": len(x), "rows": row}
        print(name, len(x), f"raw {row['raw']['map']:.3f}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    tuning = [n for n in results if results[n]["role"] == "tuning"]
    held = [n for n in results if results[n]["role"] == "held-out"]
    methods = list(next(iter(results.values()))["rows"])

    def mean(names, m, key):
        return float(np.mean([results[n]["rows"][m][key] for n in names])) if names else float("nan")

    ranked = sorted(methods, key=lambda m: -mean(tuning, m, "map"))
    print("| method | tuning mAP@R | tuning P@1 | held-out mAP@R | held-out P@1 | " +
          " | ".join(f"{n} mAP@R" for n in results) + " |")
    print("|---" * (5 + len(results)) + "|")
    for m in ["raw"] + [m for m in ranked if m != "raw"][:15]:
        per_set = " | ".join(f"{results[n]['rows'][m]['map']:.3f}" for n in results)
        print(f"| {m} | {mean(tuning, m, 'map'):.3f} | {mean(tuning, m, 'p1'):.3f} | {mean(held, m, 'map'):.3f} | "
              f"{mean(held, m, 'p1'):.3f} | {per_set} |")


if __name__ == "__main__":
    main()
