"""Retrieval quality on real image sets nobody tuned for: few-shot, open-set and instance protocols.

    .venv/bin/python bench/quality.py                   # everything: the tables of docs/quality.md
    .venv/bin/python bench/quality.py --variants        # also the input/pooling grid (section 2)

Sets (bench/quality_data.py): drawings (openclipart leaf and top-level groupings, digits) and
photographs (Fashion-MNIST, the labelled photo set where installed). ``TUNE`` sets chose the
defaults; ``HELD_OUT`` sets only confirm them.

Protocols, the same seeded splits for every method:
- few-shot: S = 5, 10, 30 labelled images per class form the gallery (and the training set);
  the next (up to) 30 images of each class in the same seeded order are the queries: k-NN
  accuracy of the vote `classify` uses (k=5, similarity-weighted) and mAP@R against the gallery.
- open set: train on half of the classes (up to 30 images each); mAP@R and R@1 leave-one-out
  among the images of the other half.
- instance: altered copies (crop 80-90%, rotation, colour, blur, downscale to 30-60%, JPEG
  quality 30-70) of photographs and drawings, searched among the originals and every other
  image of their kind; rank-1 is finding the original first.

Methods: ``legacy`` (centre crop, average pooling: indexes built before this benchmark),
``default`` (today's untrained default), ``pca-white`` (PCA-whitening of the default features
fitted on the gallery without labels), ``lda`` (regularised LDA fitted on the gallery with
labels), ``wccn`` (within-class covariance normalisation, the closed form the default trained
head starts from) and ``train`` (`imgembed train` with its defaults, on the gallery folder).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import quality_data
from PIL import Image, ImageEnhance, ImageFilter
from quality_data import HERE, KIND

from imgembed.train.featcache import plain_transform

OUT = HERE / "data" / "quality"
TUNE = ("clipart", "fashion")
HELD_OUT = ("clipart-top", "digits", "photos")
SHOTS = (5, 10, 30)
QUERIES_PER_CLASS = 30
POOLINGS = ("avg", "gem:2", "gem:3", "gem:4")
VARIANTS = {  # name -> (fit, resize, size)
    "crop224": ("crop", 256, 224),
    "whole224": ("whole", 224, 224),
    "pad224": ("pad", 224, 224),
    "whole288": ("whole", 288, 288),
    "pad288": ("pad", 288, 288),
}


# -- features ---------------------------------------------------------------------------------

def _model(fit="crop", resize=256, size=224, pooling="avg"):
    from imgembed.model.network import load_model

    like = {"backbone": "efficientnet_lite0", "pooling": pooling, "preprocess": {
        "resize": resize, "crop": size, "mean": [127 / 255] * 3, "std": [128 / 255] * 3,
        "interpolation": "bicubic", "fit": fit}}
    return load_model("efficientnet_lite0", "imagenet", "auto", like=like)


def _load(item, min_side):
    from imgembed.imaging.decode import read_image, to_rgb

    if isinstance(item, Image.Image):
        return to_rgb(item)
    return read_image(item, min_side=min_side, max_pixels=400_000_000).image


class _Set:
    def __init__(self, items, transform, min_side):
        self.items, self.transform, self.min_side = items, transform, min_side

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.transform(_load(self.items[i], self.min_side))


def feature_maps_pooled(model, items, poolings, batch=32) -> dict[str, np.ndarray]:
    """Pool each image's feature map every way in ``poolings``: {pooling: (n, 1280) float32}."""
    import torch

    from imgembed.model.network import pool
    from imgembed.model.precision import autocast

    loader = torch.utils.data.DataLoader(_Set(items, plain_transform(model.preprocess), model.preprocess.min_side),
                                         batch_size=batch, num_workers=2)
    out = {p: [] for p in poolings}
    with torch.inference_mode():
        for x in loader:
            with autocast(model.precision, torch.device("cpu")):
                fmap = model.feature_map(x.contiguous(memory_format=torch.channels_last)).float()
            for p in poolings:
                out[p].append(pool(fmap, p).numpy())
    return {p: np.concatenate(v) for p, v in out.items()}


_STORES: dict[str, dict] = {}


def _store(variant: str) -> dict:
    """Features of files by resolved path, one file per variant, shared by every set."""
    if variant not in _STORES:
        path = OUT / "features" / f"files-{variant}.npz"
        store = {}
        if path.is_file():
            data = np.load(path)
            arrays = {p: data[p] for p in POOLINGS}  # each data[p] reads the whole array again
            for i, name in enumerate(data["paths"]):
                store[str(name)] = {p: arrays[p][i] for p in POOLINGS}
        _STORES[variant] = store
    return _STORES[variant]


def _save_store(variant: str) -> None:
    store = _STORES[variant]
    names = sorted(store)
    path = OUT / "features" / f"files-{variant}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, paths=np.array(names), **{p: np.stack([store[n][p] for n in names]) for p in POOLINGS})


def _compute(key, items, variant):
    fit, resize, size = VARIANTS[variant]
    t0 = time.perf_counter()
    feats = feature_maps_pooled(_model(fit, resize, size), items, POOLINGS)
    print(f"  features {key} {variant}: {len(items)} images in {time.perf_counter() - t0:.0f} s", flush=True)
    return feats


def cached(key: str, items, variant: str) -> dict[str, np.ndarray]:
    """{pooling: (n, 1280)} for files (cached by path across sets) or in-memory images (by key)."""
    if all(isinstance(i, Path) for i in items):
        store = _store(variant)
        names = [str(Path(i).resolve()) for i in items]
        legacy = OUT / "features" / f"{key}-{variant}.npz"
        if legacy.is_file():  # written by an earlier version of this script, in the order of items
            data = np.load(legacy)
            arrays = {p: data[p] for p in POOLINGS}
            if len(arrays[POOLINGS[0]]) == len(items):
                for i, n in enumerate(names):
                    store.setdefault(n, {p: arrays[p][i] for p in POOLINGS})
        todo = sorted({n for n in names if n not in store})
        if todo:
            feats = _compute(key, [Path(n) for n in todo], variant)
            for i, n in enumerate(todo):
                store[n] = {p: feats[p][i] for p in POOLINGS}
            _save_store(variant)
        return {p: np.stack([store[n][p] for n in names]) for p in POOLINGS}
    digest = hashlib.sha256(b"".join(hashlib.sha256(i.tobytes()).digest() for i in items)).hexdigest()[:12]
    path = OUT / "features" / f"{key}-{variant}-{digest}.npz"  # by content: other copies, other file
    if path.is_file():
        data = np.load(path)
        if len(data[POOLINGS[0]]) == len(items):
            return {p: data[p] for p in POOLINGS}
    feats = _compute(key, items, variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **feats)
    return feats


def l2n(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# -- instance copies --------------------------------------------------------------------------

ALTERATIONS = ("crop", "rotate", "colour", "blur", "downscale", "jpeg")


def alter(image: Image.Image, kind: str, rng: np.random.Generator, drawing: bool) -> Image.Image:
    image = image.convert("RGB")
    w, h = image.size
    if kind == "crop":
        f = rng.uniform(0.8, 0.9)
        cw, ch = int(w * f), int(h * f)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        return image.crop((x, y, x + cw, y + ch))
    if kind == "rotate":
        angle = rng.uniform(5, 15) * rng.choice([-1, 1])
        return image.rotate(angle, resample=Image.BICUBIC, fillcolor=(255, 255, 255) if drawing else (0, 0, 0))
    if kind == "colour":
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
        return ImageEnhance.Color(image).enhance(rng.uniform(0.5, 1.5))
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5) * max(w, h) / 500))
    if kind == "downscale":
        f = rng.uniform(0.3, 0.6)
        return image.resize((max(1, int(w * f)), max(1, int(h * f))), Image.BICUBIC)
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=int(rng.integers(30, 71)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    raise ValueError(kind)


def skimage_photos() -> list[Path]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "horse.png",
             "camera.png", "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png", "page.png",
             "hubble_deep_field.jpg", "retina.jpg", "immunohistochemistry.png", "ihc.png", "cell.png"]
    return [data / n for n in names if (data / n).is_file()]


# -- methods ----------------------------------------------------------------------------------

def knn_and_map(q, ql, g, gl) -> dict:
    from imgembed.collection.metrics import retrieval_metrics

    m = retrieval_metrics(q, ql, g, gl)
    return {"knn": m["knn_accuracy"], "map": m["map_at_r"]}


def open_metrics(x, labels) -> dict:
    from imgembed.collection.metrics import retrieval_metrics

    m = retrieval_metrics(x, labels)
    return {"map": m["map_at_r"], "r1": m["precision_at_1"]}


def splits(labels, seed):
    """Per class a seeded permutation: its first S images are the S-shot gallery, the next
    QUERIES_PER_CLASS (at most) the S-shot queries. A class with S images or fewer has no
    queries at S shots (it still sits in the gallery)."""
    rng = np.random.default_rng(seed)
    return {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}


def open_split(labels, classes, order, seed):
    """The open set's ``(fit_idx, eval_idx)``: a seeded half of the classes is fitted on (up to 30
    images each, in ``order``), the other half searched leave-one-out."""
    rng = np.random.default_rng(seed + 1)
    perm = rng.permutation(np.unique(labels))
    seen, unseen = perm[:len(classes) // 2], perm[len(classes) // 2:]
    fit_idx = np.array(sorted(i for c in seen for i in order[int(c)][:30]))
    return fit_idx, np.flatnonzero(np.isin(labels, unseen))


def gallery_of(order, shots):
    return np.array(sorted(i for m in order.values() for i in m[:shots]))


def queries_of(order, shots):
    return np.array(sorted(i for m in order.values() for i in m[shots:shots + QUERIES_PER_CLASS]))


def pooled(model, items, batch=32) -> np.ndarray:
    """``model.features`` of files or in-memory images: the pooled backbone output a head reads
    (the last feature map, then the taps of a head that has them)."""
    import torch

    from imgembed.model.precision import autocast

    if all(isinstance(i, Path) for i in items):
        from imgembed.train.featcache import FeatureCache

        got = FeatureCache(OUT / "featcache", model).features(items, 1, workers=2, max_pixels=400_000_000)
        assert len(got.ok) == len(items), got.failed[:3]
        return got.features[:, 0]
    loader = torch.utils.data.DataLoader(_Set(items, plain_transform(model.preprocess), model.preprocess.min_side),
                                         batch_size=batch, num_workers=2)
    out = []
    with torch.inference_mode():
        for x in loader:
            with autocast(model.precision, torch.device("cpu")):
                out.append(model.features(x.contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(out)


def tapped_joined(paths) -> np.ndarray:
    """The default model's pooled last map and mid-level taps, each part unit-normalised and
    joined as the trained head's projection reads them (imgembed.train.blend.joined)."""
    import torch

    from imgembed.model.network import load_model
    from imgembed.train.blend import joined

    model = load_model("efficientnet_lite0", precision="auto").use_blend_taps()
    return joined(torch.from_numpy(pooled(model, list(paths))), model.tap_dims).numpy()


def apply_head(checkpoint, items) -> np.ndarray:
    """The checkpoint's embeddings of ``items`` (the vectors `index` would store)."""
    import torch

    from imgembed.model.network import load_model

    model = load_model(str(checkpoint), precision="auto")
    with torch.no_grad():
        return l2n(model.head(torch.from_numpy(pooled(model, items))).numpy())


class Trainer:
    """Runs the real `imgembed train` on a folder of links to the gallery images, then embeds
    the set with the checkpoint: its head on the pooled backbone features, as `index` would."""

    heads: dict = {}  # name -> checkpoint, for the instance protocol

    def __init__(self, paths):
        self.paths = list(paths)

    @staticmethod
    def key(name, idx, unlabelled=False) -> str:
        return hashlib.sha256(json.dumps([name, idx.tolist(), unlabelled]).encode()).hexdigest()[:12]

    def __call__(self, name, idx, labels, classes, evaluate_idx_list, unlabelled=False):
        from imgembed.train.loop import TrainConfig, train

        key = self.key(name, idx, unlabelled)
        folder = OUT / "splits" / key
        if not folder.is_dir():
            for i in idx:
                d = folder / classes[labels[i]].replace("/", "__")
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{i:06d}{self.paths[i].suffix}").symlink_to(self.paths[i].resolve())
        out = OUT / "models" / f"{key}.pt"
        t0 = time.perf_counter()
        train(folder, out, TrainConfig(unlabelled=unlabelled), cache_dir=OUT / "featcache")
        self.heads[name] = out
        self.seconds = time.perf_counter() - t0
        every = apply_head(out, self.paths)
        return [every[ix] for ix in evaluate_idx_list]


def methods_on(name, feats, default_name, fit_idx, labels, classes, trainer):
    """{method: function(indices) -> embeddings} fitted on ``fit_idx``."""
    from imgembed.train import closedform

    d = feats[default_name]
    out = {"legacy": lambda ix: feats["legacy"][ix], "default": lambda ix: d[ix]}
    pw = closedform.pca_whitening(d[fit_idx])
    out["pca-white"] = lambda ix: pw(d[ix])
    ld = closedform.lda(d[fit_idx], labels[fit_idx])
    out["lda"] = lambda ix: ld(d[ix])
    wc = closedform.wccn(d[fit_idx], labels[fit_idx])
    out["wccn"] = lambda ix: wc(d[ix])
    if "taps" in feats:  # the same closed form on what the trained head reads
        z = feats["taps"]
        wt = closedform.wccn(z[fit_idx], labels[fit_idx])
        out["wccn-taps"] = lambda ix: wt(z[ix])
        lt = closedform.lda(z[fit_idx], labels[fit_idx])
        out["lda-taps"] = lambda ix: lt(z[ix])
    if trainer is not None:
        out["train"] = trainer
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=list(TUNE + HELD_OUT))
    parser.add_argument("--variants", action="store_true", help="Also measure the input/pooling grid.")
    parser.add_argument("--no-train", action="store_true", help="Leave out `imgembed train` (the slowest part).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT / "results.json"))
    parser.add_argument("--report", metavar="JSON", help="Only print the tables of an earlier run's results.")
    parser.add_argument("--instance-only", action="store_true",
                        help="Measure the instance protocol again into --out's results (the few-shot and open-set "
                             "parts and the unlabelled heads kept from the run that wrote them).")
    args = parser.parse_args()
    if args.report:
        results = json.loads(Path(args.report).read_text())
        print(summary(results) + "\n\n" + report(results, grid=args.variants))
        return
    import torch

    torch.set_num_threads(2)
    from imgembed.model.backbones import LITE0_FIT, LITE0_POOLING, LITE0_SIZE

    default_variant = f"{LITE0_FIT}{LITE0_SIZE}"
    results = {"sets": {}, "default": {"fit": LITE0_FIT, "size": LITE0_SIZE, "pooling": LITE0_POOLING}}
    sets = quality_data.available(args.sets)
    variants = list(VARIANTS) if args.variants else sorted({"crop224", default_variant})
    if args.instance_only:
        results = json.loads(Path(args.out).read_text())
        for name, (paths, labels, _) in sets.items():
            head = OUT / "models" / f"{Trainer.key(name + '/unlabelled', np.arange(len(paths)), True)}.pt"
            if head.is_file():
                Trainer.heads[name + "/unlabelled"] = head
        results["instance"] = instance(sets, variants, default_variant, LITE0_POOLING, args.seed)
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(summary(results) + "\n\n" + report(results, grid=args.variants))
        return

    for name, (paths, labels, classes) in sets.items():
        print(f"{name}: {len(paths)} images, {len(classes)} classes ({KIND[name]})", flush=True)
        grid = {v: cached(name, paths, v) for v in variants}
        feats = {"legacy": l2n(grid["crop224"]["avg"]), "default": l2n(grid[default_variant][LITE0_POOLING])}
        for v in grid:
            for p in POOLINGS:
                feats[f"{v}/{p}"] = l2n(grid[v][p])
        feats[f"ms224+288/{LITE0_POOLING}"] = l2n(feats.get(f"whole224/{LITE0_POOLING}", feats["default"])
                                                  + feats.get(f"whole288/{LITE0_POOLING}", feats["default"]))
        feats["taps"] = tapped_joined(paths)
        order = splits(labels, args.seed)
        res = results["sets"][name] = {"kind": KIND[name], "images": len(paths), "classes": len(classes),
                                       "fewshot": {}, "open": {}}
        trainer = None if args.no_train else Trainer(paths)
        unlabelled = None
        if trainer is not None:  # `train --unlabelled` on the whole folder, labels ignored
            everything = np.arange(len(paths))
            (unlabelled,) = trainer(name + "/unlabelled", everything, np.zeros_like(labels), ["all"], [everything],
                                    unlabelled=True)
        for shots in SHOTS:
            gal, queries = gallery_of(order, shots), queries_of(order, shots)
            row = res["fewshot"][shots] = {"queries": len(queries)}
            for key in (k for k in feats if "/" in k):
                row[key] = knn_and_map(feats[key][queries], labels[queries], feats[key][gal], labels[gal])
            for method, fn in methods_on(name, feats, "default", gal, labels, classes, None).items():
                row[method] = knn_and_map(fn(queries), labels[queries], fn(gal), labels[gal])
            if trainer is not None:
                q, g = trainer(name, gal, labels, classes, [queries, gal])
                row["train"] = knn_and_map(q, labels[queries], g, labels[gal])
                row["train"]["seconds"] = trainer.seconds
                row["unlabelled"] = knn_and_map(unlabelled[queries], labels[queries], unlabelled[gal], labels[gal])
            print(f"  {shots:>2}-shot " + "  ".join(f"{m} {row[m]['knn']:.3f}/{row[m]['map']:.3f}"
                                                   for m in METHODS
                                                   if m in row), flush=True)
        # open set: half of the classes train, the other half is searched leave-one-out
        fit_idx, eval_idx = open_split(labels, classes, order, args.seed)
        row = res["open"]
        for method, fn in methods_on(name, feats, "default", fit_idx, labels, classes, None).items():
            row[method] = open_metrics(fn(eval_idx), labels[eval_idx])
        if trainer is not None:
            (e,) = trainer(name + "/open", fit_idx, labels, classes, [eval_idx])
            row["train"] = open_metrics(e, labels[eval_idx])
            row["unlabelled"] = open_metrics(unlabelled[eval_idx], labels[eval_idx])
        print("  open set " + "  ".join(f"{m} {v['map']:.3f}/{v['r1']:.3f}" for m, v in row.items()), flush=True)

    results["instance"] = instance(sets, variants, default_variant, LITE0_POOLING, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}\n")
    print(summary(results) + "\n\n" + report(results, grid=args.variants))


METHODS = ("legacy", "default", "pca-white", "lda", "wccn", "lda-taps", "wccn-taps", "train", "unlabelled")


def report(results: dict, grid: bool = False) -> str:
    """The markdown tables of docs/quality.md."""
    sets = results["sets"]
    names = list(sets)
    lines = []

    def table(title, header, rows):
        lines.extend([f"**{title}**", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)])
        lines.extend("| " + " | ".join(r) + " |" for r in rows)
        lines.append("")

    for metric, label in (("knn", "k-NN accuracy"), ("map", "mAP@R")):
        rows = []
        for shots in SHOTS:
            for m in METHODS:
                vals = [sets[n]["fewshot"][str(shots)][m][metric] if str(shots) in sets[n]["fewshot"]
                        else sets[n]["fewshot"][shots][m][metric] for n in names
                        if m in _row(sets[n], shots)]
                if len(vals) != len(names):
                    continue
                rows.append([f"{shots}", m, *(f"{v:.3f}" for v in vals), f"**{np.mean(vals):.3f}**"])
        table(f"Few-shot {label} (S labelled images per class)", ["S", "method", *names, "mean"], rows)
    rows = []
    for m in METHODS:
        if all(m in sets[n]["open"] for n in names):
            vals = [sets[n]["open"][m] for n in names]
            rows.append([m, *(f"{v['map']:.3f} / {v['r1']:.3f}" for v in vals),
                         f"**{np.mean([v['map'] for v in vals]):.3f}** / {np.mean([v['r1'] for v in vals]):.3f}"])
    table("Open set: mAP@R / R@1 on the classes not trained on", ["method", *names, "mean"], rows)
    inst = results.get("instance", {})
    if inst:
        rows = []
        for kind, r in inst.items():
            for m in ("legacy", "default", "unlabelled"):
                if m not in r["rank1"]:
                    continue
                e = r["rank1"][m]
                rows.append([kind, m, f"{e['all']:.3f}", *(f"{e[a]:.2f}" for a in ALTERATIONS)])
        table("Instance: rank-1 of altered copies", ["kind", "method", "all", *ALTERATIONS], rows)
    if grid:
        keys = [k for k in _row(sets[names[0]], 10) if "/" in k]
        rows = []
        for k in keys:
            tune = [np.mean([_row(sets[n], s)[k]["knn"] for s in SHOTS]) for n in names if n in TUNE]
            held = [np.mean([_row(sets[n], s)[k]["knn"] for s in SHOTS]) for n in names if n in HELD_OUT]
            mp = [np.mean([_row(sets[n], s)[k]["map"] for s in SHOTS]) for n in names]
            r1 = {kind: inst[kind]["rank1"].get(k, {}).get("all", float("nan")) for kind in inst}
            rows.append([k, f"{np.mean(tune):.3f}", f"{np.mean(held):.3f}" if held else "-", f"{np.mean(mp):.3f}",
                         *(f"{v:.3f}" for v in r1.values())])
        table("Input and pooling grid: k-NN accuracy (mean over S = 5, 10, 30) on the tuning and held-out sets, "
              "mAP@R over all sets, instance rank-1",
              ["variant/pooling", "k-NN tune", "k-NN held out", "mAP@R", *(f"rank-1 {k}" for k in inst)], rows)
    return "\n".join(lines)


def summary(results: dict) -> str:
    """The README's two tables: means over the sets, and each set's k-NN accuracy."""
    sets = results["sets"]
    names = list(sets)
    methods = [m for m in METHODS if all(m in _row(sets[n], s) for n in names for s in SHOTS)]
    lines = ["| method | k-NN, 5 per class | 10 | 30 | open-set mAP@R |", "|---|---|---|---|---|"]
    for m in methods:
        knn = [np.mean([_row(sets[n], s)[m]["knn"] for n in names]) for s in SHOTS]
        opened = np.mean([sets[n]["open"][m]["map"] for n in names]) if all(m in sets[n]["open"] for n in names) else None
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in knn)
                     + f" | {'-' if opened is None else f'{opened:.3f}'} |")
    lines += ["", "| set (kind, classes) | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for n in names:
        cells = [" / ".join(f"{_row(sets[n], s)[m]['knn']:.2f}" for s in SHOTS) for m in methods]
        lines.append(f"| {n} ({sets[n]['kind']}, {sets[n]['classes']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _row(s, shots):
    f = s["fewshot"]
    return f[str(shots)] if str(shots) in f else f[shots]


def instance(sets, variants, default_variant, default_pooling, seed) -> dict:
    """Rank-1 of altered copies among originals plus every other image of their kind."""
    rng = np.random.default_rng(seed)
    by_kind = {"photos": [p for p in skimage_photos()], "drawings": []}
    distractors = {"photos": [], "drawings": []}
    for name, (paths, labels, _) in sets.items():
        if name == "clipart-top":
            continue
        kind = KIND[name]
        pick = rng.permutation(len(paths))
        if name in ("clipart", "photos"):
            by_kind[kind] += [paths[i] for i in pick[:60 - len(by_kind[kind]) if kind == "photos" else 60]]
        distractors[kind] += [p for p in paths]
    out = {}
    for kind, originals in by_kind.items():
        if not originals:
            continue
        crng = np.random.default_rng(seed + 7)
        copies, truth, types = [], [], []
        for i, p in enumerate(originals):
            image = Image.open(p).convert("RGB")
            for a in ALTERATIONS:
                copies.append(alter(image, a, crng, kind == "drawings"))
                truth.append(i)
                types.append(a)
        gallery_paths = list(originals) + [p for p in distractors[kind] if p not in set(originals)]
        truth, types = np.array(truth), np.array(types)
        res = out[kind] = {"originals": len(originals), "gallery": len(gallery_paths), "rank1": {}}
        for v in variants:
            g = cached(f"instance-{kind}-gallery", gallery_paths, v)
            q = cached(f"instance-{kind}-copies", copies, v)
            for p in POOLINGS:
                key = "legacy" if (v, p) == ("crop224", "avg") else ("default" if (v, p) == (default_variant, default_pooling) else None)
                sims = l2n(q[p]) @ l2n(g[p]).T
                hit = sims.argmax(1) == truth
                entry = {"all": float(hit.mean()), **{a: float(hit[types == a].mean()) for a in ALTERATIONS}}
                res["rank1"][f"{v}/{p}"] = entry
                if key:
                    res["rank1"][key] = entry
                head = Trainer.heads.get(("photos" if kind == "photos" else "clipart") + "/unlabelled")
                if key == "default" and head is not None:
                    hq, hg = apply_head(head, copies), apply_head(head, gallery_paths)
                    hit = (hq @ hg.T).argmax(1) == truth
                    res["rank1"]["unlabelled"] = {"all": float(hit.mean()),
                                                  **{a: float(hit[types == a].mean()) for a in ALTERATIONS}}
        print(f"instance {kind}: legacy {res['rank1']['legacy']['all']:.3f}  default {res['rank1']['default']['all']:.3f}",
              flush=True)
    return out


if __name__ == "__main__":
    main()
