"""Near-duplicate detection on planted copies: imgembed's scores against perceptual hashes.

    .venv/bin/python bench/duplicates.py [--originals 40]

For photographs (the labelled photo set plus scikit-image's photos) and drawings (openclipart),
``--originals`` images each get one copy per type, planted among every other image of their
kind as distractors (byte-identical files removed first): downscaled to 30-60%, re-saved as JPEG at quality 30-70, cropped to
80-90%, colour and brightness shifted, and (drawings) a transparent PNG flattened onto white and
saved as JPEG. The real `imgembed index` embeds the folder; then, for every method:

- recall per copy type: the share of (original, copy) pairs the method reports;
- precision: of all pairs it reports, the share that are one original and its copy, or two
  copies of one original.

Methods: imgembed's raw cosine at thresholds, the score of `imgembed duplicates`
(:mod:`imgembed.collection.dedup`: relative, background-normalised score with its cosine floor, or
stored perceptual hashes that nearly agree on a pair of embedding neighbours) at thresholds,
the hash rule at other distances and cosines, and imagededup's PHash at its default Hamming
distance (10) and at 4 and 16 (pip install imagededup).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import quality_data
from PIL import Image, ImageEnhance
from quality import skimage_photos
from quality_data import HERE

OUT = HERE / "data" / "duplicates"
TYPES = {"photos": ("downscale", "jpeg", "crop", "colour"),
         "drawings": ("downscale", "jpeg", "crop", "colour", "flatten-jpeg")}


def make_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """The altered image and the format to save it in."""
    rgb = image.convert("RGB") if image.mode not in ("RGBA", "LA", "P") else image.convert("RGBA")
    w, h = rgb.size
    if kind == "downscale":
        f = rng.uniform(0.3, 0.6)
        return rgb.resize((max(1, int(w * f)), max(1, int(h * f))), Image.BICUBIC), "PNG"
    if kind == "jpeg":
        return _flatten(rgb), f"JPEG:{int(rng.integers(30, 71))}"
    if kind == "crop":
        f = rng.uniform(0.8, 0.9)
        cw, ch = int(w * f), int(h * f)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return rgb.crop((x, y, x + cw, y + ch)), "PNG"
    if kind == "colour":
        flat = _flatten(rgb)
        flat = ImageEnhance.Brightness(flat).enhance(rng.uniform(0.75, 1.25))
        return ImageEnhance.Color(flat).enhance(rng.uniform(0.6, 1.4)), "PNG"
    if kind == "flatten-jpeg":
        return _flatten(rgb), "JPEG:90"
    raise ValueError(kind)


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")


def build(kind: str, n: int, seed: int) -> tuple[Path, dict]:
    """A folder of distractors, originals and copies; returns it and {copy path: (original, type)}."""
    rng = np.random.default_rng(seed)
    if kind == "photos":
        paths = [str(p) for p in quality_data.labelled("photos")[0]] + [str(p) for p in skimage_photos()]
    else:
        paths = [str(p) for p in quality_data.labelled("clipart")[0]]
    unique, seen = [], set()
    for p in sorted(set(paths)):  # openclipart ships some drawings in several folders
        digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique.append(p)
    paths = unique
    originals = set(rng.permutation(len(paths))[:n].tolist())
    folder = OUT / f"{kind}-{n}-{seed}"
    saved = OUT / f"truth-{kind}-{n}-{seed}.json"
    if folder.is_dir() and saved.is_file():
        return folder, json.loads(saved.read_text())
    truth = {}
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i, src in enumerate(paths):
        dest = folder / f"{i:05d}{Path(src).suffix}"
        shutil.copyfile(src, dest)
        if i not in originals:
            continue
        image = Image.open(src)
        image.load()
        for t in TYPES[kind]:
            copy, fmt = make_copy(image, t, rng)
            name = folder / f"{i:05d}_copy_{t}.{'jpg' if fmt.startswith('JPEG') else 'png'}"
            if fmt.startswith("JPEG"):
                copy.convert("RGB").save(name, "JPEG", quality=int(fmt.split(":")[1]))
            else:
                copy.save(name, "PNG")
            truth[str(name.resolve())] = (str(dest.resolve()), t)
    saved.write_text(json.dumps(truth))
    return folder, truth


def evaluate_pairs(pairs: set[tuple[str, str]], truth: dict, kind: str) -> dict:
    """Recall per type and overall precision of ``pairs`` (unordered path pairs)."""
    source = {c: o for c, (o, _) in truth.items()}

    def root(p):
        return source.get(p, p)

    true_pairs = {tuple(sorted((o, c))) for c, (o, _) in truth.items()}
    got = {tuple(sorted(p)) for p in pairs}
    correct = sum(1 for a, b in got if root(a) == root(b))
    out = {"pairs": len(got), "precision": correct / len(got) if got else 1.0}
    for t in TYPES[kind]:
        wanted = [tuple(sorted((o, c))) for c, (o, tt) in truth.items() if tt == t]
        out[t] = sum(1 for p in wanted if p in got) / len(wanted)
    out["recall"] = sum(1 for p in true_pairs if p in got) / len(true_pairs)
    out["f1"] = 2 * out["precision"] * out["recall"] / max(1e-9, out["precision"] + out["recall"])
    return out


def phash_pairs(folder: Path, distances) -> dict[int, set]:
    from imagededup.methods import PHash

    hasher = PHash(verbose=False)
    encodings = hasher.encode_images(image_dir=str(folder))
    names = sorted(encodings)
    bits = np.array([[int(c, 16) for c in encodings[n]] for n in names], np.uint8)
    bits = np.unpackbits(bits[:, :, None], axis=2)[:, :, 4:].reshape(len(names), -1)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(2)
    out = {}
    for d in distances:
        i, j = np.nonzero(np.triu(dist <= d, 1))
        out[d] = {(str((folder / names[a]).resolve()), str((folder / names[b]).resolve())) for a, b in zip(i, j)}
    return out


SUMMARY = {"relative>=0.5": "`duplicates` default", "relative>=0.5 (no hash)": "relative >= 0.5 at cosine >= 0.85, no hash",
           "relative>=0.5 (no floor)": "relative >= 0.5 alone, no hash, no floor",
           "cosine>=0.85": "raw cosine >= 0.85", "phash<=10": "imagededup PHash <= 10",
           "default, unlabelled head": "`duplicates` default on a `train --unlabelled` index"}


def summary(results: dict, seed: int) -> str:
    """Markdown rows of the main methods, for docs/quality.md."""
    lines = []
    for kind, res in results.items():
        types = TYPES[kind]
        lines += [f"\n{kind}, seed {seed}: {res['images']} images, {res['copies']} planted copies\n",
                  "| method | precision | recall | " + " | ".join(types) + " |",
                  "|---|---|---|" + "---|" * len(types)]
        for key, name in SUMMARY.items():
            if key not in res["methods"]:
                continue
            r = res["methods"][key]
            lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | "
                         + " | ".join(f"{r[t]:.3f}" for t in types) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, nargs="*", default=[], help="Also try these backgrounds (k-th neighbour).")
    parser.add_argument("--out", default=str(OUT / "results.json"))
    parser.add_argument("--report", metavar="JSON", help="Only print the summary of an earlier run's results.")
    parser.add_argument("--unlabelled", action="store_true",
                        help="Also fit `imgembed train --unlabelled` on each folder (its planted copies included, "
                             "as a user's collection would be) and run the default rule on an index built with it.")
    args = parser.parse_args()
    if args.report:
        print(summary(json.loads(Path(args.report).read_text()), args.seed))
        return
    from imgembed.api import index_folder, load_model
    from imgembed.collection import dedup
    from imgembed.index import ImageIndex

    model = load_model()
    results = {}
    for kind in ("photos", "drawings"):
        folder, truth = build(kind, args.originals, args.seed)
        index_dir = OUT / f"index-{kind}-{args.originals}-{args.seed}"
        index_folder(folder, index_dir, model)  # incremental: a re-run embeds nothing
        res = results[kind] = {"images": len(list(folder.iterdir())), "copies": len(truth), "methods": {}}
        # the relative score without its cosine floor, to show what the floor costs
        with ImageIndex.open(index_dir) as idx:
            raw = dedup.scored_pairs(idx, k=dedup.DEFAULT_K)
        for t in (0.5,):
            keep = raw.normalised >= t
            res["methods"][f"relative>={t:g} (no floor)"] = evaluate_pairs(
                {(raw.rows[a], raw.rows[b]) for a, b in raw.pairs[keep]}, truth, kind)
        with ImageIndex.open(index_dir) as idx:
            scored = dedup.scored_pairs(idx, k=dedup.DEFAULT_K)
            for k in args.k:  # other backgrounds and floors, to choose the defaults
                alt = dedup.scored_pairs(idx, k=k)
                for floor in (0.8, 0.85):
                    for t in (0.5, 0.6, 0.7):
                        keep = (alt.normalised >= t) & (alt.cosine >= floor)
                        res["methods"][f"k{k} floor{floor} rel>={t}"] = evaluate_pairs(
                            {(alt.rows[a], alt.rows[b]) for a, b in alt.pairs[keep]}, truth, kind)
        paths = {rid: row for rid, row in scored.rows.items()}
        for name, thresholds in (("cosine", (0.80, 0.85, 0.90, 0.95)), ("relative", dedup.CURVE)):
            for t in thresholds:
                keep = dedup.select(scored, name, t)
                pairs = {(paths[a], paths[b]) for a, b in scored.pairs[keep]}
                res["methods"][f"{name}>={t:g}"] = evaluate_pairs(pairs, truth, kind)
        # the default's hash rule at other distances and cosines, to choose them
        relative = (scored.normalised >= dedup.SCORES["relative"]) & (scored.cosine >= dedup.MIN_COSINE)
        known = scored.hash_distance >= 0
        res["methods"]["relative>=0.5 (no hash)"] = evaluate_pairs(
            {(paths[a], paths[b]) for a, b in scored.pairs[relative]}, truth, kind)
        for d in (0, 2, 4, 6):
            for floor in (0.6, 0.7, 0.8):
                keep = relative | known & (scored.hash_distance <= d) & (scored.cosine >= floor)
                res["methods"][f"rel+hash<={d} cos>={floor}"] = evaluate_pairs(
                    {(paths[a], paths[b]) for a, b in scored.pairs[keep]}, truth, kind)
        if args.unlabelled:
            from imgembed.train.loop import TrainConfig, train

            head = OUT / f"unlabelled-{kind}-{args.originals}-{args.seed}.pt"
            if not head.is_file():
                train(folder, head, TrainConfig(unlabelled=True), cache_dir=OUT / "featcache")
            head_index = OUT / f"index-{kind}-{args.originals}-{args.seed}-unlabelled"
            index_folder(folder, head_index, load_model(str(head)))
            with ImageIndex.open(head_index) as idx:
                tuned = dedup.scored_pairs(idx, k=dedup.DEFAULT_K)
            keep = dedup.select(tuned, "relative", dedup.SCORES["relative"])
            res["methods"]["default, unlabelled head"] = evaluate_pairs(
                {(tuned.rows[a], tuned.rows[b]) for a, b in tuned.pairs[keep]}, truth, kind)
        for d, pairs in phash_pairs(folder, (4, 10, 16)).items():
            res["methods"][f"phash<={d}"] = evaluate_pairs(pairs, truth, kind)
        print(f"{kind}: {res['images']} images, {res['copies']} planted copies")
        cols = ["precision", "recall", "f1", *TYPES[kind]]
        print(f"  {'method':<28}" + "".join(f"{c:>13}" for c in cols))
        for m, r in res["methods"].items():
            print(f"  {m:<28}" + "".join(f"{r[c]:>13.3f}" for c in cols) + f"   ({r['pairs']} pairs)")
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    print(summary(results, args.seed))


if __name__ == "__main__":
    main()
