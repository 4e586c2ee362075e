"""Open-set check: does a head trained on some classes help on classes it never saw?

    .venv/bin/python bench/open_set.py [--min-per-class 15] [--holdout 0.3]

Uses Debian's `openclipart-png` (public domain; installed with apt-get when missing): every
leaf folder with at least `--min-per-class` drawings is a class (linked, not copied, under
bench/data/openclipart/). `imgembed train --split classes` holds out `--holdout` of the classes
whole; the metrics printed are on those unseen classes only, untrained backbone vs trained head.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import ensure_debian_package

HERE = Path(__file__).resolve().parent
CLIPART = Path("/usr/share/openclipart/png")


def build(dest: Path, min_per_class: int) -> int:
    shutil.rmtree(dest, ignore_errors=True)
    classes = 0
    for folder in sorted(p for p in CLIPART.rglob("*") if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        if len(files) < min_per_class:
            continue
        name = folder.relative_to(CLIPART).as_posix().replace("/", "__")
        (dest / name).mkdir(parents=True)
        for f in files[:60]:  # cap the largest folders (1,378 stars) so no class dominates
            (dest / name / f.name).symlink_to(f)
        classes += 1
    return classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-per-class", type=int, default=15)
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=str(HERE / "data" / "cache"))
    args = parser.parse_args()

    from imgembed.train.loop import TrainConfig, train

    ensure_debian_package("openclipart-png", CLIPART)
    data = HERE / "data" / "openclipart"
    n = build(data, args.min_per_class)
    # patience=0: no early stopping, so the "last epoch" row involves no choice made on the
    # held-out classes; the "best epoch" row does (it is selected on them) and is shown for contrast.
    config = TrainConfig(split="classes", val_split=args.holdout, epochs=args.epochs, views=3, patience=0,
                         classes_per_batch=16, images_per_class=4, seed=args.seed)
    result = train(data, HERE / "data" / "models" / "openclipart-open-set.pt", config, cache_dir=args.cache)
    print(f"openclipart-png: {n} classes with >= {args.min_per_class} drawings; trained on "
          f"{result.train_images} images, evaluated on {result.val_images} images of held-out classes (seed {args.seed})")
    print(f"{'':<12} {'P@1':>6} {'R@5':>6} {'mAP@R':>6} {'kNN acc':>7}")
    rows = (("untrained", result.baseline), ("last epoch", result.history[-1].metrics),
            ("best epoch", result.metrics))
    for name, m in rows:
        print(f"{name:<12} {m['precision_at_1']:>6.3f} {m['recall_at_5']:>6.3f} {m['map_at_r']:>6.3f} "
              f"{m['knn_accuracy']:>7.3f}")
    print(f"best epoch {result.best_epoch} of {result.epochs_run}; features {result.feature_seconds:.1f} s, "
          f"training {result.train_seconds:.1f} s")


if __name__ == "__main__":
    main()
