"""How much can any linear head on the frozen features gain? An optimistic ceiling, per set.

`imgembed train`'s default head is linear on the frozen backbone: the last map's pooled channels
and four mid-level taps (imgembed.train.blend). This asks what the best *linear classifier* on exactly
those features reaches on the few-shot splits of ``bench/quality.py`` (seed 0), with its
regularisation and number of views chosen on the test queries themselves: an oracle, not a
method anyone could ship. It is a yardstick, not a proof (a k-NN vote is not a linear
classifier): if even the oracle probe gains little over the untrained embedding, a linear head
read by the vote has little more to find in these features, and the gain has to come from the
backbone.

- ``default``: the untrained embedding, k-NN vote (k=5, similarity-weighted, as `classify`);
- ``wccn-taps``: the closed form the trained head starts from, k-NN vote;
- ``linear probe (oracle)``: multinomial logistic regression on the WCCN-normalised taps,
  fitted on the gallery (view 0 alone, or views 0 to ``--views`` - 1: the plain image and
  `train`'s augmented views), the best of both and of C in {0.1, 1, 10} on the queries.

    .venv/bin/python bench/archive/linear_ceiling.py                # every set, S = 5, 10, 30
    .venv/bin/python bench/archive/linear_ceiling.py --sets digits --shots 30
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: common, quality, quality_data

import argparse
import warnings

import numpy as np
import quality_data
from quality import HELD_OUT, OUT, SHOTS, TUNE, gallery_of, knn_and_map, l2n, queries_of, splits


def features(model, name: str, paths, labels, views: int):
    """(labels of the files kept, (n, views, D) joined taps, (n, 1280) untrained embedding)."""
    import torch

    from imgembed.train.blend import joined
    from imgembed.train.featcache import FeatureCache

    got = FeatureCache(OUT / "featcache", model).features(paths, views, workers=2, max_pixels=400_000_000)
    for i, reason in got.failed:
        print(f"  {name}: left out {paths[i]}: {reason}")
    ok = np.asarray(got.ok)
    return labels[ok], joined(torch.from_numpy(got.features), model.tap_dims).numpy(), \
        l2n(got.features[:, 0, :model.tap_dims[0]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=list(TUNE + HELD_OUT))
    parser.add_argument("--shots", nargs="*", type=int, default=list(SHOTS))
    parser.add_argument("--views", type=int, default=3, help="Views per gallery image (train's default: 3).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from imgembed.model.network import load_model
    from imgembed.train import closedform

    torch.set_num_threads(2)
    warnings.simplefilter("ignore", ConvergenceWarning)
    model = load_model("efficientnet_lite0", precision="auto").use_blend_taps()
    rows = {}
    for name in args.sets:
        got = quality_data.labelled(name)
        if got is None:
            print(f"{name}: not available, left out")
            continue
        paths, labels, _ = got
        labels, z, u = features(model, name, paths, labels, args.views)
        order = splits(labels, args.seed)
        for shots in args.shots:
            g, q = gallery_of(order, shots), queries_of(order, shots)
            if not len(q):
                continue
            probe = 0.0
            for views in sorted({1, args.views}):
                zg, yg = z[g, :views].reshape(-1, z.shape[2]), np.repeat(labels[g], views)
                wccn = closedform.wccn(zg, yg)
                for c in (0.1, 1.0, 10.0):
                    fitted = LogisticRegression(C=c, max_iter=300).fit(wccn(zg), yg)
                    probe = max(probe, float((fitted.predict(wccn(z[q, 0])) == labels[q]).mean()))
            # the closed form as bench/quality.py's `wccn-taps` row fits it: on view 0
            plain = closedform.wccn(z[g, 0], labels[g])
            rows[(name, shots)] = {
                "default": knn_and_map(u[q], labels[q], u[g], labels[g])["knn"],
                "wccn-taps": knn_and_map(plain(z[q, 0]), labels[q], plain(z[g, 0]), labels[g])["knn"],
                "linear probe (oracle)": probe}
            print(f"{name} S={shots}: " + "  ".join(f"{k} {v:.3f}" for k, v in rows[(name, shots)].items()),
                  flush=True)
    names = list(dict.fromkeys(n for n, _ in rows))
    print("\n| S | method | " + " | ".join(names) + " | mean | gain over default |")
    print("|" + "---|" * (len(names) + 4))
    for shots in args.shots:
        if not all((n, shots) in rows for n in names):
            continue
        base = np.mean([rows[(n, shots)]["default"] for n in names])
        for method in rows[(names[0], shots)]:
            vals = [rows[(n, shots)][method] for n in names]
            print(f"| {shots} | {method} | " + " | ".join(f"{v:.3f}" for v in vals)
                  + f" | **{np.mean(vals):.3f}** | {np.mean(vals) - base:+.3f} |")


if __name__ == "__main__":
    main()
