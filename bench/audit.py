"""`imgembed audit` against cleanlab's Datalab on planted label noise.

    .venv/bin/python bench/audit.py [--per-class 30] [--noise 0.08] [--classes 20] [--seeds 10]

For each labelled set, ``--per-class`` images per class (seeded) are copied into a labelled
folder and a seeded ``--noise`` share of them is moved into another, randomly chosen, class
folder. The real `api.index_folder` embeds the folder with the default model; then

- ours: `api.audit` (the mislabel findings of :mod:`imgembed.collection.audit`: a leave-one-out
  ridge fit of the labels to the stored vectors), at its defaults;
- knn-vote: the baseline it replaced, each image's 10 nearest neighbours' cosine-weighted vote
  (class-size corrected, as `imgembed classify` votes): best other label's share minus its own;
- cleanlab-knn: ``Datalab(...).find_issues(features=vectors, issue_types={"label": {}})`` on the
  index's stored vectors (cleanlab builds its own k-NN predictions from them);
- cleanlab-lr: Datalab's label issues from ``pred_probs`` of a 5-fold cross-validated
  logistic regression on the same vectors.

For each: P@N (N = the number planted: the share of the N top-ranked images that were planted),
and precision, recall and F1 of the flagged set (ours: score > threshold; cleanlab: its
``is_label_issue``). Then ``--seeds`` more plantings per set, re-drawn in memory on the stored
vectors (:func:`redraws`), for ours and both cleanlab variants: one planting moves P@N by a whole
image in 6-48, so the mean over draws is the figure to compare. Tuning sets (where RIDGE_ALPHA,
KNN_WEIGHT and the threshold were chosen): sample_images/, digits and clipart-top; clipart,
fashion and photos are held out; the emoji sets (one artwork style each, by CLDR subgroup, from
bench/sort_data.py) were added after the choice and never used for one. Results:
bench/data/audit/results.json and the tables printed (docs/quality.md, "Auditing a labelled folder").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import quality_data
from quality_data import HERE

sys.path.insert(0, str(HERE.parent))

OUT = HERE / "data" / "audit"
SAMPLES = HERE.parent / "sample_images"
TUNING = ("sample", "digits", "clipart-top")
HELD_OUT = ("clipart", "fashion", "photos")
# Emoji of three artwork styles by subgroup, added once the scorer had been chosen: never tuned on.
HELD_OUT_LATER = ("emoji-twemoji", "emoji-openmoji", "emoji-noto")
KIND = {"sample": "drawings", **quality_data.KIND, **{name: "drawings" for name in HELD_OUT_LATER}}
ALPHA_GRID = (0.3, 1.0, 3.0)
THRESHOLD_GRID = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
METHODS = ("ours", "knn-vote", "cleanlab-knn", "cleanlab-lr")


def source(name: str) -> tuple[list[Path], list[str]] | None:
    if name == "sample":
        paths = sorted(SAMPLES.glob("*/*.png"))
        return paths, [p.parent.name for p in paths]
    if name.startswith("emoji-"):  # one artwork style's emoji by CLDR subgroup (bench/sort_data.py)
        import sort_data

        style = name.removeprefix("emoji-")
        classes = sort_data.emoji_classes()
        pairs = [(sort_data.RENDERS / style / f"{h}.png", sub) for half in sorted(classes)
                 for sub, hexcodes in sorted(classes[half].items()) for h in hexcodes]
        return [p for p, _ in pairs], [c for _, c in pairs]
    got = quality_data.labelled(name)
    if got is None:
        return None
    paths, labels, classes = got
    return paths, [classes[c] for c in labels]


def build(name: str, per_class: int, noise: float, n_classes: int, seed: int = 0) -> tuple[Path, set[str]] | None:
    """The labelled folder with planted noise, and the planted files' paths in it."""
    folder = OUT / name / "images"
    truth_file = OUT / name / "planted.json"
    if truth_file.exists():
        return folder, set(json.loads(truth_file.read_text()))
    got = source(name)
    if got is None:
        return None
    paths, labels = got
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    if len(classes) > n_classes:
        classes = sorted(rng.choice(classes, n_classes, replace=False).tolist())
    chosen: list[tuple[Path, str]] = []
    for c in classes:
        members = [p for p, lab in zip(paths, labels) if lab == c]
        picks = sorted(rng.permutation(len(members))[:per_class].tolist())
        chosen += [(members[i], c) for i in picks]
    shutil.rmtree(OUT / name, ignore_errors=True)
    planted_idx = set(rng.permutation(len(chosen))[:max(1, round(noise * len(chosen)))].tolist())
    planted = []
    for i, (path, c) in enumerate(chosen):
        target = c
        if i in planted_idx:
            target = str(rng.choice([o for o in classes if o != c]))
        dest = folder / target / f"{c}__{path.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path.resolve(), dest)
        if target != c:
            planted.append(str(dest))
    truth_file.write_text(json.dumps(sorted(planted)))
    return folder, set(planted)


def index(folder: Path, model) -> Path:
    from imgembed.api import LocalPool, index_folder

    directory = folder.parent / "index"
    index_folder(folder, directory, model, executor=LocalPool(workers=2))
    return directory


def stored(directory: Path) -> tuple[list[str], np.ndarray, list[str]]:
    from imgembed.collection.audit import class_of
    from imgembed.index import ImageIndex

    with ImageIndex.open(directory) as idx:
        ids, vecs = zip(*idx.store.iter_vectors())
        ids, vecs = np.concatenate(ids), np.concatenate(vecs)
        rows = idx.store.rows_by_id(ids.tolist())
    return [rows[int(i)].full_path for i in ids], vecs, [class_of(rows[int(i)].label) for i in ids]


def metrics(ranked: list[str], flagged: set[str], planted: set[str]) -> dict:
    n = len(planted)
    hits = len(flagged & planted)
    p = hits / len(flagged) if flagged else 0.0
    r = hits / n if n else 0.0
    return {"p_at_n": len(set(ranked[:n]) & planted) / n, "precision": p, "recall": r,
            "f1": 2 * p * r / (p + r) if p + r else 0.0, "flagged": len(flagged), "planted": n}


def ours(directory: Path, planted: set[str]) -> dict:
    from imgembed.api.auditing import audit
    from imgembed.collection.audit import MISLABEL_THRESHOLD

    report = audit(directory, everything=True, kinds=("mislabel",))
    ranked = [f.path for f in report.findings]
    return metrics(ranked, {f.path for f in report.findings if f.score > MISLABEL_THRESHOLD}, planted)


def ranked_by(paths: list[str], score: np.ndarray, threshold: float, planted: set[str]) -> dict:
    order = np.argsort(-score, kind="stable")
    return metrics([paths[i] for i in order], {paths[i] for i in np.flatnonzero(score > threshold)}, planted)


def grid(paths: list[str], vectors: np.ndarray, labels: list[str], planted: set[str]) -> dict:
    from imgembed.collection.audit import label_codes, mislabel_scores

    codes, classes = label_codes(labels)
    out = {}
    for alpha in ALPHA_GRID:
        score, _ = mislabel_scores(vectors, codes, len(classes), alpha=alpha)  # the linear fit alone
        out.update({f"alpha={alpha} t={t}": ranked_by(paths, score, t, planted) for t in THRESHOLD_GRID})
    return out


def knn_vote(paths: list[str], vectors: np.ndarray, labels: list[str], planted: set[str], k: int = 10) -> dict:
    from imgembed.collection.audit import label_codes, vote_shares

    codes, classes = label_codes(labels)
    shares = vote_shares(exact_graph(vectors, k), codes, len(classes))
    rows = np.arange(len(codes))
    own = shares[rows, codes].copy()
    shares[rows, codes] = -np.inf
    return ranked_by(paths, shares.max(1) - own, 0.0, planted)


def cleanlab(paths: list[str], vectors: np.ndarray, labels: list[str], planted: set[str]) -> dict:
    from cleanlab import Datalab
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    out = {}
    classes = sorted(set(labels))
    y = np.array([classes.index(lab) for lab in labels])
    lr = LogisticRegression(max_iter=2000)
    probs = cross_val_predict(lr, vectors, y, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                              method="predict_proba").astype(np.float64)
    probs = np.clip(probs, 0.0, 1.0) / np.clip(probs, 0.0, 1.0).sum(1, keepdims=True)  # float32 rounding
    for name, kw in (("cleanlab-knn", {"features": vectors}), ("cleanlab-lr", {"pred_probs": probs})):
        lab = Datalab(data={"labels": y}, label_name="labels", verbosity=0)
        lab.find_issues(issue_types={"label": {}}, **kw)
        try:
            issues = lab.get_issues("label")
        except ValueError as e:  # its own k-NN probabilities can fall a rounding error below 0
            print(f"{name} failed on this planting: {str(e).splitlines()[0]}", file=sys.stderr)
            continue
        order = np.argsort(issues["label_score"].to_numpy(), kind="stable")
        out[name] = metrics([paths[i] for i in order],
                            {paths[i] for i in np.flatnonzero(issues["is_label_issue"].to_numpy())}, planted)
    return out


def exact_graph(vectors: np.ndarray, k: int):
    """Each image's ``k`` nearest others by exact cosine: the graph a flat index gives `api.audit`."""
    from imgembed.collection.audit import Graph

    x = vectors.astype(np.float64)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nb = np.argsort(-sims, 1)[:, :k]
    return Graph(nb, np.take_along_axis(sims, nb, 1))


def redraws(paths: list[str], vectors: np.ndarray, noise: float, seeds: int) -> dict:
    """Mean metrics over ``seeds`` plantings re-drawn in memory on the stored vectors (each image's
    true class is the prefix of its file name): ours as `api.audit` scores (the same functions on
    the exact 10-NN graph), and both cleanlab variants on the same noisy labels. One planting moves
    P@N by a whole image in 6-48; the mean over seeds is what the defaults were chosen by."""
    from imgembed.collection.audit import AUDIT_K, MISLABEL_THRESHOLD, label_codes, mislabel_scores

    true, classes = label_codes([Path(p).name.split("__")[0] for p in paths])
    graph = exact_graph(vectors, AUDIT_K)
    runs: dict[str, list[dict]] = {m: [] for m in ("ours", "cleanlab-knn", "cleanlab-lr")}
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        chosen = rng.permutation(len(true))[:max(1, round(noise * len(true)))]
        noisy = true.copy()
        for i in chosen:
            noisy[i] = rng.choice([c for c in range(len(classes)) if c != true[i]])
        names = [f"{i}" for i in range(len(true))]
        planted = {names[i] for i in chosen}
        score, _ = mislabel_scores(vectors, noisy, len(classes), graph)
        runs["ours"].append(ranked_by(names, score, MISLABEL_THRESHOLD, planted))
        for method, got in cleanlab(names, vectors, [classes[c] for c in noisy], planted).items():
            runs[method].append(got)
    return {m: {"runs": len(rs), **{key: float(np.mean([r[key] for r in rs]))
                                     for key in ("p_at_n", "f1", "precision", "recall")}}
            for m, rs in runs.items() if rs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--noise", type=float, default=0.08)
    ap.add_argument("--classes", type=int, default=20, help="at most this many classes per set (seeded)")
    ap.add_argument("--sets", default=",".join(TUNING + HELD_OUT + HELD_OUT_LATER))
    ap.add_argument("--seeds", type=int, default=10, help="in-memory re-draws of the planted noise per set")
    args = ap.parse_args()
    from imgembed.api import load_model
    from imgembed.collection.audit import MISLABEL_THRESHOLD, RIDGE_ALPHA

    model = load_model()
    results = {}
    for name in args.sets.split(","):
        built = build(name, args.per_class, args.noise, args.classes)
        if built is None:
            print(f"{name}: not available here, skipped", file=sys.stderr)
            continue
        folder, planted = built
        directory = index(folder, model)
        paths, vectors, labels = stored(directory)
        role = "tuning" if name in TUNING else "held-out" if name in HELD_OUT else "held-out-later"
        results[name] = {"kind": KIND[name], "tuning": name in TUNING, "role": role, "images": len(paths),
                         "classes": len(set(labels)), "ours": ours(directory, planted),
                         "knn-vote": knn_vote(paths, vectors, labels, planted),
                         "grid": grid(paths, vectors, labels, planted), **cleanlab(paths, vectors, labels, planted)}
        if args.seeds:
            results[name]["redraws"] = redraws(paths, vectors, args.noise, args.seeds)
        print(name, json.dumps({m: results[name][m] for m in METHODS}), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    tuning = [n for n in results if results[n]["tuning"]]
    if tuning:
        mean_f1 = {g: np.mean([results[n]["grid"][g]["f1"] for n in tuning]) for g in results[tuning[0]]["grid"]}
        best = max(mean_f1, key=mean_f1.get)
        default = f"alpha={RIDGE_ALPHA} t={MISLABEL_THRESHOLD}"  # (the grid: the linear fit alone)
        print(f"best on the tuning sets by mean F1: {best} ({mean_f1[best]:.3f}); default {default}: "
              f"{mean_f1[default]:.3f}")
        for g in sorted(mean_f1, key=mean_f1.get, reverse=True)[:6]:
            print(f"  {g}: mean F1 {mean_f1[g]:.3f}, mean P@N "
                  f"{np.mean([results[n]['grid'][g]['p_at_n'] for n in tuning]):.3f}")
    print("| set | split | kind | images | planted | method | P@N | precision | recall | F1 | flagged |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for m in METHODS:
            x = r[m]
            print(f"| {name} | {r['role']} | {r['kind']} | {r['images']} | "
                  f"{x['planted']} | {m} | {x['p_at_n']:.2f} | {x['precision']:.2f} | {x['recall']:.2f} | "
                  f"{x['f1']:.2f} | {x['flagged']} |")

    if args.seeds:
        print(f"\nMean over {args.seeds} re-drawn plantings (P@N / F1):")
        print("| set | split | kind | images | ours | cleanlab-knn | cleanlab-lr |")
        print("|---|---|---|---|---|---|---|")
        for name, r in results.items():
            cells = [f"{r['redraws'][m]['p_at_n']:.3f} / {r['redraws'][m]['f1']:.3f}" if m in r["redraws"] else "failed"
                     for m in ("ours", "cleanlab-knn", "cleanlab-lr")]
            print(f"| {name} | {r['role']} | {r['kind']} | {r['images']} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
