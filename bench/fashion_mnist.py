"""Train and evaluate on Fashion-MNIST: untrained backbone vs trained head, in one run.

    .venv/bin/python bench/fashion_mnist.py [--train-per-class 500] [--test-per-class 300] [--views 3]

Uses Debian's `dataset-fashion-mnist` (MIT; installed with apt-get when missing) and converts a
class-balanced subset to PNG folders once, under bench/data/fashion-mnist/: the first N images
of each class in the official training split (train) and in the official test split (test).
The head is trained in frozen mode on `train` (10% of it held out for early stopping) and both
models are evaluated leave-one-out on `test`, which training never sees. Prints Recall@1,
mAP@R and k-NN accuracy for both, and the wall time of feature caching and of head training.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import ensure_debian_package

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
HERE = Path(__file__).resolve().parent


def read_idx(split: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(SOURCE / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(SOURCE / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def export(split: str, dest: Path, per_class: int) -> Path:
    """Write the first ``per_class`` images of each class as PNG, once."""
    done = dest / ".complete"
    if done.is_file() and done.read_text() == str(per_class):
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    images, labels = read_idx(split)
    for c, name in enumerate(CLASSES):
        folder = dest / name
        folder.mkdir(parents=True)
        for i in np.flatnonzero(labels == c)[:per_class]:
            Image.fromarray(images[i], "L").save(folder / f"{i:05d}.png")
    done.write_text(str(per_class))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=300)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--head", default="mlp", choices=["mlp", "linear"])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--loss", default="triplet", choices=["triplet", "contrastive"])
    parser.add_argument("--miner", default="batch-hard")
    parser.add_argument("--cache", default=str(HERE / "data" / "cache"))
    parser.add_argument("--fresh-cache", action="store_true", help="Time feature caching from scratch.")
    args = parser.parse_args()

    from imgembed.model.network import load_model
    from imgembed.train.evaluate import evaluate
    from imgembed.train.loop import TrainConfig, train

    ensure_debian_package("dataset-fashion-mnist", SOURCE / "train-images-idx3-ubyte.gz")
    root = HERE / "data" / "fashion-mnist"
    train_dir = export("train", root / f"train-{args.train_per_class}", args.train_per_class)
    test_dir = export("t10k", root / f"test-{args.test_per_class}", args.test_per_class)
    if args.fresh_cache:
        shutil.rmtree(args.cache, ignore_errors=True)
    out = root / "models" / f"fmnist-{args.head}{args.hidden if args.head == 'mlp' else ''}-{args.dim}-{args.loss}.pt"
    config = TrainConfig(dim=args.dim, head=args.head, hidden=args.hidden, loss=args.loss, miner=args.miner,
                         views=args.views, epochs=args.epochs, val_split=0.1, patience=8, classes_per_batch=10,
                         images_per_class=8)
    t0 = time.perf_counter()
    result = train(train_dir, out, config, cache_dir=args.cache,
                   on_epoch=lambda log: print(f"  epoch {log.epoch:>2} loss {log.loss:.4f} "
                                              f"val mAP@R {log.metrics['map_at_r']:.3f}", file=sys.stderr))
    total = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows, _ = evaluate(load_model(str(out)), cache_dir=args.cache, data_dir=test_dir, baseline=True)
    eval_s = time.perf_counter() - t1

    print(f"\nFashion-MNIST: train {args.train_per_class}/class ({result.train_images} used for training, "
          f"{result.val_images} for early stopping), test {args.test_per_class}/class, {args.views} views, "
          f"head {args.head} {args.hidden if args.head == 'mlp' else ''} -> {args.dim}, {args.loss}/{args.miner}")
    print(f"{'model':<34} {'R@1':>6} {'mAP@R':>6} {'kNN acc':>7}")
    for row in rows:
        m = row.metrics
        print(f"{Path(row.name).name:<34} {m['recall_at_1']:>6.3f} {m['map_at_r']:>6.3f} {m['knn_accuracy']:>7.3f}")
    base, tuned = rows[0].metrics, rows[1].metrics
    print(f"mAP@R ratio trained/untrained: {tuned['map_at_r'] / base['map_at_r']:.2f}")
    print(f"feature caching {result.feature_seconds:.1f} s, head training {result.train_seconds:.1f} s "
          f"({result.epochs_run} epochs, best {result.best_epoch}), train() total {total:.1f} s, "
          f"test evaluation {eval_s:.1f} s")


if __name__ == "__main__":
    main()
