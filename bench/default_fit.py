"""Is the untrained default's input fit and pooling (pad224, GeM p=2) a win on drawing sets it was
not tuned on?

    .venv/bin/python bench/default_fit.py              # features (cached), metrics, markdown table
    .venv/bin/python bench/default_fit.py --report     # only the table of the last results.json

Model: EfficientNet-Lite0, ImageNet weights, no head, precision "auto" (bf16 on a CPU that has
it), as bench/quality.py's ``_model`` builds it; features through quality.py's
``feature_maps_pooled``/``cached`` (imported, with their cache redirected to
bench/data/default_fit/features/, one file per variant shared by all sets, so reruns only measure).

Variants (quality.VARIANTS): crop224 (resize 256, centre crop 224: the "legacy" input), whole224
(whole image stretched to 224x224), pad224 (whole image padded to a square, 224: today's default),
whole288, pad288; each pooled avg, gem:2, gem:3. Every vector is L2-normalised.

Sets:
- tuning (they chose the default in bench/quality.py): ``clipart`` (openclipart leaf folders),
  ``fashion`` (Fashion-MNIST) -- for reference only.
- held out (never used to choose the fit/pooling): ``clipart-top`` (the same openclipart drawings
  as ``clipart``, grouped by top-level folder), ``digits`` (scikit-learn's 8x8 handwriting) and the
  emoji renders of bench/sort_data.py, one set per style: ``emoji-twemoji``, ``emoji-openmoji``,
  ``emoji-noto`` (bench/data/sort/render/<style>/, the 662 emoji of render/classes.json) and
  ``emoji-fluent-flat``, ``emoji-emojione``, ``emoji-emojione-v1`` (render/held-out-3/<style>/,
  232 emoji). Class = the emoji's CLDR subgroup (both halves A and B of sort_data), subgroups with
  >= 10 emoji, at most 60 per class (seeded); sort_data rendered at most 40 per subgroup, so
  the cap never bites. (sort_data's emoji tasks tuned `imgembed sort`'s threshold, not the
  fit or pooling.) The held-out mean weighs ``clipart-top``, ``digits`` and ``emoji`` (the mean
  of the six styles) equally; "new-only" leaves out ``clipart-top``, whose images are the tuning
  set ``clipart``'s (only the labels differ). Emoji, digits and fashion images are square, so on
  them whole = pad exactly.

Protocol, per set and variant/pooling:
- mAP@R and P@1 by class, leave-one-out: every image is searched against the whole set, itself
  left out; R = number of other images of its class (imgembed.collection.metrics).
- cross-style rank-1 (emoji only): the same emoji drawn in three styles in one gallery
  (twemoji+openmoji+noto: 1986 images; fluent-flat+emojione+emojione-v1: 696 images); each image
  is searched leave-one-out and counts if its nearest neighbour is the same emoji in another
  style (P@1 with the emoji's code point as the label). EmojiOne 2.3 and v1 are by one studio,
  so the second triple is the easier one.
- differences from the default and from legacy on each mean, with a 95% interval from a paired
  bootstrap over each set's queries (1000 resamples). Leave-one-out queries share their
  gallery, so these intervals are narrower than a resampling of images or classes would give.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import quality
import quality_data

from imgembed.collection.metrics import retrieval_metrics

HERE = Path(__file__).resolve().parent
OUT = HERE / "data" / "default_fit"
RENDERS = HERE / "data" / "sort" / "render"
TUNE = ("clipart", "fashion")
HELD_OUT = ("clipart-top", "digits")
EMOJI_TRIPLES = {"twemoji+openmoji+noto": (RENDERS, ("twemoji", "openmoji", "noto")),
                 "fluent+emojione+emojione-v1": (RENDERS / "held-out-3", ("fluent-flat", "emojione", "emojione-v1"))}
MIN_CLASS, PER_CLASS, SEED = 10, 60, 0
VARIANTS = ("crop224", "whole224", "pad224", "whole288", "pad288")
POOLINGS = ("avg", "gem:2", "gem:3")
LEGACY, DEFAULT = "crop224/avg", "pad224/gem:2"


def emoji_sets() -> dict[str, tuple[list[Path], np.ndarray, list[str], list[str]]]:
    """Per style ``emoji-<style>``: ``(paths, labels, classes, hexcodes)`` from sort_data's renders."""
    out = {}
    for folder, styles in EMOJI_TRIPLES.values():
        split = folder / "classes.json"
        if not split.is_file():
            print(f"{split} missing: run bench/sort_data.py first; those emoji styles left out")
            continue
        by_class: dict[str, list[str]] = {}
        for half in json.loads(split.read_text()).values():
            for subgroup, hexcodes in half.items():
                by_class.setdefault(subgroup, []).extend(hexcodes)
        for style in styles:
            rng = np.random.default_rng(SEED)
            paths, labels, codes, classes = [], [], [], []
            for subgroup in sorted(by_class):
                hs = sorted(h for h in by_class[subgroup] if (folder / style / f"{h}.png").is_file())
                if len(hs) < MIN_CLASS:
                    continue
                hs = [hs[i] for i in sorted(rng.permutation(len(hs))[:PER_CLASS])]
                paths += [folder / style / f"{h}.png" for h in hs]
                labels += [len(classes)] * len(hs)
                codes += hs
                classes.append(subgroup)
            out[f"emoji-{style}"] = (paths, np.array(labels), classes, codes)
    return out


def features(name: str, paths: list[Path]) -> dict[str, np.ndarray]:
    """{"variant/pooling": (n, 1280) unit vectors}, through quality.cached."""
    feats = {}
    for v in VARIANTS:
        got = quality.cached(name, paths, v)
        for p in POOLINGS:
            feats[f"{v}/{p}"] = quality.l2n(got[p].astype(np.float32))
    return feats


def measure() -> dict:
    import torch

    torch.set_num_threads(2)
    quality.OUT = OUT  # quality.cached keeps its feature files under quality.OUT / "features"
    from imgembed.model.backbones import LITE0_FIT, LITE0_POOLING, LITE0_SIZE

    assert f"{LITE0_FIT}{LITE0_SIZE}/{LITE0_POOLING}" == DEFAULT, (LITE0_FIT, LITE0_SIZE, LITE0_POOLING)
    results = {"default": DEFAULT, "legacy": LEGACY, "sets": {}, "cross_style": {}}
    sets = {n: (*quality_data.labelled(n), None) for n in TUNE + HELD_OUT}
    emoji = emoji_sets()
    sets.update(emoji)
    vectors, per_query = {}, {}
    for name, (paths, labels, classes, _) in sets.items():
        role = "tuning" if name in TUNE else "held-out"
        print(f"{name} ({role}): {len(paths)} images, {len(classes)} classes", flush=True)
        feats = vectors[name] = features(name, paths)
        res = results["sets"][name] = {"role": role, "images": len(paths), "classes": len(classes), "metrics": {}}
        for key, x in feats.items():
            details: list = []
            m = retrieval_metrics(x, labels, details=details)
            res["metrics"][key] = {"map_at_r": m["map_at_r"], "p_at_1": m["precision_at_1"]}
            per_query[name, key] = np.array([[ap, labels[nn[0]] == labels[i]] for i, ap, _, nn, _ in details])
    for triple, (_, styles) in EMOJI_TRIPLES.items():
        names = [f"emoji-{s}" for s in styles]
        if not all(n in emoji for n in names):
            continue
        common = sorted(set.intersection(*(set(emoji[n][3]) for n in names)))
        codes = np.array(common * len(names))
        res = results["cross_style"][triple] = {"emoji": len(common), "images": len(codes), "rank1": {}}
        for key in vectors[names[0]]:
            x = np.concatenate([vectors[n][key][[emoji[n][3].index(h) for h in common]] for n in names])
            details = []
            res["rank1"][key] = retrieval_metrics(x, codes, ks=(1,), details=details)["precision_at_1"]
            hits = np.array([codes[nn[0]] == codes[i] for i, _, _, nn, _ in details], float)
            per_query[triple, key] = np.stack([hits, hits], 1)
    results["paired"] = paired(results, per_query)
    return results


def _aggregates(results: dict) -> dict[str, list[list[str]]]:
    """Each mean of the summary as groups of sets: a group's sets are averaged first (the emoji
    styles), then the groups."""
    sets = results["sets"]
    emoji = [n for n in sets if n.startswith("emoji-")]
    groups = {"held": [[n] for n in HELD_OUT if n in sets] + ([emoji] if emoji else []),
              "held_new": [[n] for n in HELD_OUT[1:] if n in sets] + ([emoji] if emoji else []),
              "tune": [[n] for n in TUNE if n in sets]}
    if results["cross_style"]:
        groups["cross"] = [[t] for t in results["cross_style"]]
    return groups


def paired(results: dict, per_query: dict, resamples: int = 1000) -> dict:
    """Differences of every variant/pooling from the default and from legacy on each mean of the
    summary, with a 95% interval from a paired bootstrap over the queries of every set (the same
    resampled queries for both methods)."""
    rng = np.random.default_rng(SEED)
    names = {n for n, _ in per_query}
    draws = {n: rng.integers(0, len(per_query[n, DEFAULT]), (resamples, len(per_query[n, DEFAULT])))
             for n in names}
    out = {}
    keys = sorted({k for _, k in per_query})
    for agg, groups in _aggregates(results).items():
        for col, metric in ((0, "map_at_r"), (1, "p_at_1")):
            if agg == "cross" and col == 0:
                continue
            for ref in (DEFAULT, LEGACY):
                for k in keys:
                    def mean(boot):
                        g = []
                        for group in groups:
                            g.append(np.mean([(per_query[n, k][:, col] - per_query[n, ref][:, col])[draws[n]].mean(1)
                                              if boot else (per_query[n, k][:, col] - per_query[n, ref][:, col]).mean()
                                              for n in group], axis=0))
                        return np.mean(g, axis=0)

                    lo, hi = np.percentile(mean(True), [2.5, 97.5])
                    out.setdefault(f"{agg}_{metric}", {}).setdefault(f"vs {ref}", {})[k] = {
                        "diff": float(mean(False)), "ci95": [float(lo), float(hi)]}
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(results: dict) -> dict:
    """Per variant/pooling: the held-out (all; only the sets whose images the tuning never saw),
    emoji and tuning means of mAP@R and P@1, and the mean cross-style rank-1."""
    sets = results["sets"]
    emoji = [n for n in sets if n.startswith("emoji-")]
    groups = _aggregates(results)
    keys = list(next(iter(sets.values()))["metrics"])
    out = {}
    for k in keys:
        row = {}
        for metric in ("map_at_r", "p_at_1"):
            for agg in ("held", "held_new", "tune"):
                row[f"{agg}_{metric}"] = _mean([_mean([sets[n]["metrics"][k][metric] for n in g])
                                                for g in groups[agg]])
            row[f"emoji_{metric}"] = _mean([sets[n]["metrics"][k][metric] for n in emoji])
        row["cross_style_rank1"] = _mean([c["rank1"][k] for c in results["cross_style"].values()])
        out[k] = row
    return out


def report(results: dict) -> str:
    sets = results["sets"]
    summary = results["summary"]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = ["**Means: held out (clipart-top, digits, emoji = mean of 6 styles), held out new images only "
             "(digits, emoji), tuning (clipart, fashion); "
             f"legacy = {LEGACY}, default = {DEFAULT}**", "",
             "| variant/pooling | held-out mAP@R | held-out P@1 | new-only mAP@R | new-only P@1 | emoji mAP@R "
             "| emoji P@1 | cross-style rank-1 | tuning mAP@R | tuning P@1 |", "|---|" + "---|" * 9]
    for k, r in summary.items():
        mark = " (default)" if k == DEFAULT else (" (legacy)" if k == LEGACY else "")
        lines.append(f"| {k}{mark} | " + " | ".join(f(r[c]) for c in (
            "held_map_at_r", "held_p_at_1", "held_new_map_at_r", "held_new_p_at_1", "emoji_map_at_r",
            "emoji_p_at_1", "cross_style_rank1", "tune_map_at_r", "tune_p_at_1")) + " |")
    pair = results.get("paired", {})
    if pair:
        cols = [c for c in ("held_map_at_r", "held_p_at_1", "held_new_map_at_r", "held_new_p_at_1",
                            "cross_p_at_1", "tune_map_at_r", "tune_p_at_1") if c in pair]
        for ref in (LEGACY, DEFAULT):
            lines += ["", f"**Difference from {ref}, [95% paired bootstrap over queries]**", "",
                      "| variant/pooling | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
            for k in summary:
                if k == ref:
                    continue
                cells = [pair[c][f"vs {ref}"][k] for c in cols]
                lines.append(f"| {k} | " + " | ".join(
                    f"{e['diff']:+.3f} [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]" for e in cells) + " |")
    names = list(sets)
    lines += ["", "**Per set: mAP@R / P@1 (leave-one-out by class)**", "",
              "| variant/pooling | " + " | ".join(f"{n} ({sets[n]['role']}, {sets[n]['images']}/{sets[n]['classes']})"
                                                  for n in names) + " |",
              "|---|" + "---|" * len(names)]
    for k in summary:
        lines.append(f"| {k} | " + " | ".join(
            f"{sets[n]['metrics'][k]['map_at_r']:.3f} / {sets[n]['metrics'][k]['p_at_1']:.3f}" for n in names) + " |")
    cross = results["cross_style"]
    if cross:
        lines += ["", "**Cross-style rank-1: nearest other image is the same emoji in another style**", "",
                  "| variant/pooling | " + " | ".join(f"{t} ({c['images']})" for t, c in cross.items()) + " |",
                  "|---|" + "---|" * len(cross)]
        for k in summary:
            lines.append(f"| {k} | " + " | ".join(f"{c['rank1'][k]:.3f}" for c in cross.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT / "results.json"))
    parser.add_argument("--report", action="store_true", help="Only print the tables of --out.")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.out).read_text())))
        return
    results = measure()
    results["summary"] = summarise(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}\n")
    print(report(results))


if __name__ == "__main__":
    main()
