"""Search that uses the collection: database-side augmentation (DBA) and alpha query expansion
(aQE), measured as `imgembed search` ranks (imgembed.index.expansion), to choose their defaults.

    .venv/bin/python bench/dba.py                      # grid, defaults, checks: about 10 min
    .venv/bin/python bench/dba.py --sets clipart fashion --quick

Protocol (issue 26's check): each labelled set is one whole index of the product's own vectors
(Lite0 through the torch-free path, bench/backbone_quality.py's cache; missing files are
embedded first); every image is searched with its raw vector, as `imgembed search FILE` does,
the index still holding it; its own entry is dropped from the ranking, and mAP@R and P@1 by
category are computed on the rest (R = the other images of its class).

- ``dba k a``: each stored vector becomes normalise(x + sum_j max(cos, 0)^a x_j) over its k
  nearest others; the query stays raw. ``aqe m b``: the query becomes normalise(q + sum_t
  max(s_t, 0)^b x'_t) over its m best augmented hits (its own entry among them, as in the
  product), then is searched again.
- as the product, each search ranks the raw search's best expansion.SHORTLIST candidates (or the
  R + 1 asked for, if more), and the nearest image by its raw cosine keeps the first place after
  the query itself (expansion.order); for the defaults, smaller shortlists and ``exact`` (every
  stored vector ranked) are measured too.

Sets: ``TUNE`` (clipart, fashion: bench/quality.py's tuning sets) choose; ``HELD_OUT``
(clipart-top, digits, photos, and the emoji of bench/sort_data.py drawn by Twemoji, OpenMoji
and Noto, one set per style, 28 Unicode subgroups; the three held-out-3 styles with their 10
subgroups pooled as one set) only confirm. Checks that must not move, for the defaults:
- instance: bench/quality.py's altered copies of drawings and photographs among their
  originals and distractors, rank-1 of the original (the gallery augmented, the copy expanded);
- other style: all 662 emoji in three styles as one index; each image searched, is rank 1
  (itself left out) the same emoji in another style?
Near-duplicates, ``compare`` and ``classify`` read the raw vectors, which expansion leaves as
they are (tests/test_expansion.py). Results: bench/data/dba/results.json and tables printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import quality_data
from quality_data import HERE

sys.path.insert(0, str(HERE.parent))

from imgembed.index.expansion import DEFAULT, SHORTLIST, Expansion, augment, expand, normalise, order, scores  # noqa: E402

OUT = HERE / "data" / "dba"
RENDERS = HERE / "data" / "sort" / "render"
TUNE = ("clipart", "fashion")
HELD_OUT = ("clipart-top", "digits", "photos", "emoji-twemoji", "emoji-openmoji", "emoji-noto", "emoji-3")
EMOJI = {"emoji-twemoji": ["twemoji"], "emoji-openmoji": ["openmoji"], "emoji-noto": ["noto"],
         "emoji-3": ["held-out-3/fluent-flat", "held-out-3/emojione", "held-out-3/emojione-v1"]}
GRID = [Expansion(), Expansion(20, 3.0, 10, 0.0, 0.5), Expansion(20, 3.0, 0, 0.0, 1.0)] + \
    [Expansion(k, 3.0, m, 0.0, 1.0) for k in (10, 20, 30) for m in (5, 10, 20)]
QUICK = [Expansion(), Expansion(DEFAULT.k, DEFAULT.alpha, mix=DEFAULT.mix), DEFAULT]
CHUNK = 64


# -- data -------------------------------------------------------------------------------------

def emoji_set(name: str) -> tuple[list[Path], np.ndarray] | None:
    """One labelled set of emoji renders: class = Unicode subgroup."""
    labels, paths = [], []
    for style in EMOJI[name]:
        folder = RENDERS / style
        classes = json.loads((folder.parent / "classes.json").read_text()) if folder.is_dir() else None
        if classes is None:
            return None
        for half in sorted(classes):
            for group, codes in sorted(classes[half].items()):
                for code in codes:
                    if (folder / f"{code}.png").is_file():
                        paths.append(folder / f"{code}.png")
                        labels.append(group)
    return (paths, np.array(labels)) if paths else None


def labelled(name: str) -> tuple[list[Path], np.ndarray] | None:
    if name in EMOJI:
        return emoji_set(name)
    got = quality_data.labelled(name)
    return (got[0], got[1]) if got else None


class Vectors:
    """The product's Lite0 vectors of files, by bench/backbone_quality.py's cache."""

    def __init__(self):
        from backbone_quality import Features
        self.features = Features("lite0")

    def __call__(self, paths) -> np.ndarray:
        return normalise(self.features.files(paths))


# -- the product's ranking, on a whole set --------------------------------------------------

def augmented(x: np.ndarray, e: Expansion) -> np.ndarray:
    """Every stored vector's DBA (exact k nearest others, as a flat index's lists)."""
    if not e.k:
        return x
    out = np.empty_like(x)
    for s in range(0, len(x), CHUNK):
        sims = x[s:s + CHUNK] @ x.T
        sims[np.arange(len(sims)), s + np.arange(len(sims))] = -np.inf
        nb = np.argsort(-sims, 1, kind="stable")[:, :e.k]
        out[s:s + CHUNK] = augment(x[s:s + CHUNK], x[nb], np.take_along_axis(sims, nb, 1), e.alpha)
    return out


def rankings(x: np.ndarray, db: np.ndarray, e: Expansion, queries: np.ndarray | None = None,
             shortlist: int | None = None, depth: int = 100) -> np.ndarray:
    """The first ``depth`` stored positions of each query's search (raw queries, the index holding
    ``x`` raw and ``db`` augmented), as the product ranks them: ``shortlist`` None ranks all,
    else the raw search's best max(shortlist, depth), as ``ImageIndex.search`` for k = depth."""
    queries = x if queries is None else queries
    shortlist = None if shortlist is None else max(shortlist, depth)
    out = np.full((len(queries), depth), -1, np.int64)  # -1: past the shortlist
    for s in range(0, len(queries), CHUNK):
        q = queries[s:s + CHUNK]
        cand, got = _rank(q, q, x, db, e, shortlist)
        if e.m:
            top = np.take_along_axis(cand, np.argsort(-got, 1, kind="stable")[:, :e.m], 1)
            best = -np.sort(-got, 1)[:, :e.m]
            expanded = expand(q, db[top], best, e.beta)
            more, _ = _rank(q, expanded, x, db, e, shortlist)
            if shortlist is not None:  # both shortlists, as the product: the first holds the nearest
                cand = np.array([np.concatenate([c, m[~np.isin(m, c)]]) for c, m in zip(cand, more)], dtype=object)
            else:
                cand = more
            got = [(1 - e.mix) * (x[c.astype(np.int64)] @ qq) + e.mix * (db[c.astype(np.int64)] @ ee)
                   for c, qq, ee in zip(cand, q, expanded)]
        for row in range(len(q)):
            c = np.asarray(cand[row], np.int64)
            raw = x[c] @ q[row]
            positions = order(raw, np.asarray(got[row]))[0] if e.active else np.argsort(-raw, kind="stable")
            out[s + row, :min(depth, len(positions))] = c[positions[:depth]]
    return out


def _rank(q: np.ndarray, expanded: np.ndarray, x: np.ndarray, db: np.ndarray, e: Expansion, shortlist: int | None):
    """Each query's candidates (the raw search of ``expanded``: its best ``shortlist``, or all
    when None) and their :func:`expansion.scores`, in the raw search's order."""
    db = db if e.active else x
    raw = expanded @ x.T
    if shortlist is None:
        cand = np.argsort(-raw, 1, kind="stable")
        return cand, np.take_along_axis((1.0 - e.mix) * (q @ x.T) + e.mix * (expanded @ db.T), cand, 1)
    cand = np.argsort(-raw, 1, kind="stable")[:, :shortlist]
    return cand, scores(np.einsum("qd,qcd->qc", q, x[cand]), expanded, db[cand], e.mix)


def category_metrics(ranked: np.ndarray, labels: np.ndarray) -> dict:
    """mAP@R and P@1 with each query's own entry dropped from its ranking."""
    maps, p1 = [], []
    for i, row in enumerate(ranked):
        row = row[(row != i) & (row >= 0)]
        r = int((labels == labels[i]).sum()) - 1
        if r <= 0:
            continue
        hits = labels[row[:r]] == labels[i]
        maps.append(float((np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum() / r))
        p1.append(bool(hits[0]))
    return {"map": float(np.mean(maps)), "p1": float(np.mean(p1))}


def measure(x: np.ndarray, labels: np.ndarray, e: Expansion, shortlist: int | None = SHORTLIST) -> dict:
    depth = min(len(x), int(max(np.unique(labels, return_counts=True)[1])) + 1)
    return category_metrics(rankings(x, augmented(x, e), e, shortlist=shortlist, depth=depth), labels)


# -- checks that must not move --------------------------------------------------------------

def instance_sets(vectors: Vectors, seed: int = 0) -> dict:
    """bench/quality.py's instance protocol (its originals, altered copies and distractors), by
    kind: ``(gallery, copies, truth)`` of this model's unit vectors, the gallery's first images
    the originals and ``truth`` each copy's original."""
    import quality

    got: dict = {}

    def cached(key, items, variant):  # instance() asks for each kind's gallery, then its copies
        kind, part = key.split("-")[1], key.rsplit("-", 1)[1]
        x = vectors.features.files(items) if part == "gallery" else vectors.features.images(key, items)
        got.setdefault(kind, {})[part] = normalise(x)
        return {p: x for p in quality.POOLINGS}

    saved = quality.cached
    quality.cached = cached
    try:
        quality.instance(quality_data.available(TUNE + ("clipart-top", "digits", "photos")),
                         ["crop224", "model"], "model", quality.POOLINGS[0], seed)  # both: this model
    finally:
        quality.cached = saved
    per = len(quality.ALTERATIONS)  # copies come original by original, one per alteration
    return {kind: (d["gallery"], d["copies"], np.arange(len(d["copies"])) // per) for kind, d in got.items()}


def instance_rank1(instance: dict, e: Expansion) -> dict:
    """Rank-1 of each altered copy's original, searched as the product would."""
    out = {}
    for kind, (gallery, copies, truth) in instance.items():
        first = rankings(gallery, augmented(gallery, e), e, queries=copies, shortlist=SHORTLIST, depth=1)[:, 0]
        out[kind] = float((first == truth).mean())
    return out


def other_style_rank1(vectors: Vectors, e: Expansion) -> dict:
    """All emoji of three styles as one index: rank 1 (itself left out) is the same emoji drawn
    in another style."""
    paths, codes = [], []
    for style in ("twemoji", "openmoji", "noto"):
        for p in sorted((RENDERS / style).glob("*.png")):
            paths.append(p)
            codes.append(p.stem)
    if not paths:
        return {}
    x, codes = vectors(paths), np.array(codes)
    ranked = rankings(x, augmented(x, e), e, shortlist=SHORTLIST, depth=2)
    first = np.where(ranked[:, 0] == np.arange(len(x)), ranked[:, 1], ranked[:, 0])
    has_twin = np.array([(codes == c).sum() > 1 for c in codes])
    return {"images": int(has_twin.sum()), "rank1": float((codes[first] == codes)[has_twin].mean())}


# -- report -----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="*", default=list(TUNE + HELD_OUT))
    ap.add_argument("--quick", action="store_true", help="Only raw, DBA k=10 and the defaults: no grid.")
    ap.add_argument("--shortlist", type=int, nargs="*", default=[50, 100],
                    help="Shortlists to measure the defaults at besides SHORTLIST and every image (exact).")
    args = ap.parse_args()
    t0 = time.perf_counter()
    vectors = Vectors()
    grid = QUICK if args.quick else GRID
    results: dict = {"sets": {}, "default": DEFAULT.to_dict()}
    for name in args.sets:
        got = labelled(name)
        if got is None:
            print(f"{name}: not available here; left out", file=sys.stderr)
            continue
        paths, labels = got
        x = vectors(paths)
        row = {e.describe(): measure(x, labels, e) for e in grid}
        for s in args.shortlist + [None]:
            at = f"shortlist {s}" if s else "exact"
            row[f"{DEFAULT.describe()} / {at}"] = measure(x, labels, DEFAULT, shortlist=s)
        results["sets"][name] = {"role": "tuning" if name in TUNE else "held-out", "images": len(x), "rows": row}
        print(f"{name} ({len(x)} images): raw {row[Expansion().describe()]['map']:.3f}, default "
              f"{row[DEFAULT.describe()]['map']:.3f}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))  # the checks come next
    checks, instance = {}, instance_sets(vectors)
    for e in grid:
        checks[e.describe()] = {"instance": instance_rank1(instance, e), "other_style": other_style_rank1(vectors, e)}
        print(e.describe(), checks[e.describe()], flush=True)
    results["checks"] = checks
    results["seconds"] = round(time.perf_counter() - t0, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    print(report(results))


def report(results: dict) -> str:
    sets = results["sets"]
    tuning = [n for n in sets if sets[n]["role"] == "tuning"]
    held = [n for n in sets if sets[n]["role"] == "held-out"]
    methods = list(next(iter(sets.values()))["rows"])

    def mean(names, m, key):
        return float(np.mean([sets[n]["rows"][m][key] for n in names])) if names else float("nan")

    raw = Expansion().describe()
    ranked = sorted(methods, key=lambda m: -mean(tuning, m, "map"))
    lines = ["| method | tuning mAP@R | tuning P@1 | held-out mAP@R | held-out P@1 | "
             + " | ".join(sets) + " |", "|---" * (5 + len(sets)) + "|"]
    shown = [raw, DEFAULT.describe()] + [m for m in ranked if m not in (raw, DEFAULT.describe())][:12]
    for m in shown:
        lines.append(f"| {m} | {mean(tuning, m, 'map'):.3f} | {mean(tuning, m, 'p1'):.3f} | "
                     f"{mean(held, m, 'map'):.3f} | {mean(held, m, 'p1'):.3f} | "
                     + " | ".join(f"{sets[n]['rows'][m]['map']:.3f}" for n in sets) + " |")
    lines += ["", "| checks | instance drawings | instance photos | other style rank-1 |", "|---|---|---|---|"]
    for m, c in results.get("checks", {}).items():
        inst = c["instance"]
        lines.append(f"| {m} | {inst.get('drawings', float('nan')):.3f} | {inst.get('photos', float('nan')):.3f} | "
                     f"{c['other_style'].get('rank1', float('nan')):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
