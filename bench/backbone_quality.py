"""Retrieval quality of the EfficientNet-Lite backbones side by side: Lite0 (today's default), Lite2
and the Lite0+Lite2 concatenation, on bench/quality.py's sets, splits and protocols.

    .venv/bin/python bench/backbone_quality.py [--sets clipart fashion ...] [--seeds 0 1 2] [--no-instance]
    .venv/bin/python bench/backbone_quality.py --report bench/data/backbones/quality.json

Every image is embedded by the product's own torch-free path, as `imgembed index --model NAME`
does: :func:`imgembed.api.load_model` under the runtime ``index`` takes (OpenVINO where it is
installed, else ONNX Runtime), today's preprocessing of each backbone (padded whole image at its
own resolution, GeM), then :func:`imgembed.api.embed` on the decoded files. Vectors are cached by
file under bench/data/backbones/ (altered copies by content), so a second run only measures.

Measured per set (``TUNE`` sets chose Lite0's defaults, ``HELD_OUT`` sets only confirm), with the
functions of bench/quality.py and its seeded splits:
- few-shot k-NN accuracy (k=5, similarity-weighted) at S = 5, 10, 30 labelled images per class,
  and mAP@R of the queries against the gallery (in the JSON);
- open-set mAP@R (and R@1) leave-one-out among the classes not fitted on;
each for the raw embedding (``default``) and for ``wccn`` (within-class covariance
normalisation fitted on the gallery, or on the seen half of the classes for the open set,
as quality.py's ``methods_on``); ``pca-white`` and ``lda`` go into the JSON too.
- instance: rank-1 of altered copies, quality.py's ``instance()`` run on these vectors (first
  seed only).

With several ``--seeds`` every figure is the mean over seeds. Results:
bench/data/backbones/quality.json; the tables print as markdown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import quality
import quality_data
from quality import (
    ALTERATIONS,
    HELD_OUT,
    HERE,
    POOLINGS,
    SHOTS,
    TUNE,
    gallery_of,
    knn_and_map,
    methods_on,
    open_metrics,
    open_split,
    queries_of,
    splits,
)
from quality_data import KIND

OUT = HERE / "data" / "backbones"
BACKBONES = {"lite0": "efficientnet_lite0", "lite2": "efficientnet_lite2", "lite0+lite2": "efficientnet_lite0_lite2"}
METHODS = ("default", "wccn")  # in the tables; methods_on's pca-white and lda go into the JSON as well
MAX_PIXELS = 400_000_000  # as bench/quality.py reads the sets: no image left out
CHUNK = 256  # files embedded between progress lines


# -- features ---------------------------------------------------------------------------------

class Features:
    """One backbone's vectors, by resolved file path (shared by every set) or by content."""

    def __init__(self, short: str):
        from imgembed.api import load_model
        from imgembed.inference.runtime import for_indexing

        self.short, self.name = short, BACKBONES[short]
        self.model = load_model(self.name, runtime=for_indexing("auto", "auto"))  # as `index --model NAME`
        self.path = OUT / f"features-{self.name}.npz"
        self.store: dict[str, np.ndarray] = {}
        if self.path.is_file():
            data = np.load(self.path)
            if data["identity"].item() == json.dumps(self.model.identity, sort_keys=True):
                self.store = dict(zip(map(str, data["paths"]), data["vectors"]))

    def _embed(self, items, what: str) -> np.ndarray:
        from imgembed.api import embed

        t0, out = time.perf_counter(), []
        for i in range(0, len(items), CHUNK):
            out.append(embed(self.model, items[i:i + CHUNK], max_pixels=MAX_PIXELS))
            print(f"    {self.short} {what}: {min(i + CHUNK, len(items))}/{len(items)} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        return np.concatenate(out)

    def files(self, paths) -> np.ndarray:
        names = [str(Path(p).resolve()) for p in paths]
        todo = sorted({n for n in names if n not in self.store})
        if todo:
            for n, v in zip(todo, self._embed([Path(n) for n in todo], "files")):
                self.store[n] = v
            OUT.mkdir(parents=True, exist_ok=True)
            keys = sorted(self.store)
            np.savez(self.path, paths=np.array(keys), vectors=np.stack([self.store[k] for k in keys]),
                     identity=np.array(json.dumps(self.model.identity, sort_keys=True)))
        return np.stack([self.store[n] for n in names])

    def images(self, key: str, images) -> np.ndarray:
        digest = hashlib.sha256(b"".join(hashlib.sha256(i.tobytes()).digest() for i in images)).hexdigest()[:12]
        path = OUT / f"{key}-{self.name}-{digest}.npy"
        if path.is_file():
            return np.load(path)
        vectors = self._embed(list(images), key)
        OUT.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
        return vectors


# -- protocols --------------------------------------------------------------------------------

def measure(x: np.ndarray, labels, classes, seed: int) -> dict:
    """Few-shot and open-set figures of embeddings ``x`` (n, d), as quality.py's main() computes
    them for its ``default`` and closed-form methods."""
    order = splits(labels, seed)
    feats = {"default": x, "legacy": x}  # methods_on wants a legacy entry; it is not reported
    res = {"fewshot": {}, "open": {}}
    for shots in SHOTS:
        gal, queries = gallery_of(order, shots), queries_of(order, shots)
        row = res["fewshot"][str(shots)] = {"queries": len(queries)}
        for method, fn in methods_on(None, feats, "default", gal, labels, classes, None).items():
            if method != "legacy":
                row[method] = knn_and_map(fn(queries), labels[queries], fn(gal), labels[gal])
    fit_idx, eval_idx = open_split(labels, classes, order, seed)
    for method, fn in methods_on(None, feats, "default", fit_idx, labels, classes, None).items():
        if method != "legacy":
            res["open"][method] = open_metrics(fn(eval_idx), labels[eval_idx])
    return res


def mean_over_seeds(runs: list[dict]):
    """The mean of nested dicts of numbers with the same keys."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: mean_over_seeds([r[k] for r in runs]) for k in first}
    return float(np.mean(runs)) if isinstance(first, float) else first


def instance_rank1(sets: dict, feats: Features, seed: int) -> dict:
    """quality.py's instance() with its feature function swapped for this backbone's vectors:
    the same originals, copies and galleries; ``default`` is this backbone's rank-1."""
    def cached(key, items, variant):
        x = feats.files(items) if all(isinstance(i, Path) for i in items) else feats.images(key, items)
        return {p: x for p in POOLINGS}  # one vector per image: every "pooling" is the same

    saved = quality.cached
    quality.cached = cached
    try:
        # variant "crop224"/avg is instance()'s "legacy" key, "model"/avg its "default": both this model
        got = quality.instance(sets, ["crop224", "model"], "model", POOLINGS[0], seed)
    finally:
        quality.cached = saved
    return {kind: {"originals": r["originals"], "gallery": r["gallery"], "rank1": r["rank1"]["default"]}
            for kind, r in got.items()}


# -- report -----------------------------------------------------------------------------------

def report(results: dict) -> str:
    shorts = list(BACKBONES)
    names = list(results["sets"])
    groups = [("tuning", [n for n in names if n in TUNE]), ("held out", [n for n in names if n in HELD_OUT])]
    measures = [(f"k-NN {s}", lambda r, m, s=s: r["fewshot"][str(s)][m]["knn"]) for s in SHOTS]
    measures.append(("open mAP@R", lambda r, m: r["open"][m]["map"]))
    lines = []
    for method in METHODS:
        header = ["set"] + [f"{label} {b}" for label, _ in measures for b in shorts]
        lines += [f"**{'raw embedding (default)' if method == 'default' else 'wccn fitted on the gallery'}**", "",
                  "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for group, members in groups:
            for n in members:
                cells = [f"{get(results['sets'][n][b], method):.3f}" for _, get in measures for b in shorts]
                lines.append(f"| {n} ({group}) | " + " | ".join(cells) + " |")
            if members:
                cells = [f"**{np.mean([get(results['sets'][n][b], method) for n in members]):.3f}**"
                         for _, get in measures for b in shorts]
                lines.append(f"| **mean {group}** | " + " | ".join(cells) + " |")
        lines.append("")
    inst = results.get("instance")
    if inst:
        kinds = list(inst[shorts[0]])
        header = ["kind", *shorts, *(f"{a} {b}" for a in ALTERATIONS for b in shorts)]
        lines += ["**instance rank-1 of altered copies (raw embedding)**", "", "| " + " | ".join(header) + " |",
                  "|---" * len(header) + "|"]
        for kind in kinds:
            cells = [f"{inst[b][kind]['rank1']['all']:.3f}" for b in shorts]
            cells += [f"{inst[b][kind]['rank1'][a]:.2f}" for a in ALTERATIONS for b in shorts]
            lines.append(f"| {kind} ({inst[shorts[0]][kind]['gallery']} in gallery) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=list(TUNE + HELD_OUT))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--no-instance", action="store_true", help="Leave out the instance protocol.")
    parser.add_argument("--out", type=Path, default=OUT / "quality.json")
    parser.add_argument("--report", metavar="JSON", help="Only print the tables of an earlier run's results.")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    t0 = time.perf_counter()
    sets = quality_data.available(args.sets)
    feats = {short: Features(short) for short in BACKBONES}
    results = {"seeds": args.seeds, "max_pixels": MAX_PIXELS,
               "models": {s: {"runtime": f.model.runtime, "identity": f.model.identity} for s, f in feats.items()},
               "sets": {}}
    print("models: " + ", ".join(f"{s} ({f.name}, {f.model.dim}-d, {f.model.preprocess.crop} px, {f.model.runtime})"
                                 for s, f in feats.items()), flush=True)
    for name, (paths, labels, classes) in sets.items():
        print(f"{name}: {len(paths)} images, {len(classes)} classes ({KIND[name]})", flush=True)
        res = results["sets"][name] = {"kind": KIND[name], "images": len(paths), "classes": len(classes),
                                       "tuning": name in TUNE}
        for short, f in feats.items():
            x = f.files(paths)
            res[short] = mean_over_seeds([measure(x, labels, classes, seed) for seed in args.seeds])
            r = res[short]
            print(f"  {short:<12} " + "  ".join(
                f"{m} k-NN " + "/".join(f"{r['fewshot'][str(s)][m]['knn']:.3f}" for s in SHOTS)
                + f" open {r['open'][m]['map']:.3f}" for m in METHODS), flush=True)
    if not args.no_instance:
        results["instance"] = {short: instance_rank1(sets, f, args.seeds[0]) for short, f in feats.items()}
    results["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} ({results['seconds']:.0f} s)\n")
    print(report(results))


if __name__ == "__main__":
    main()
