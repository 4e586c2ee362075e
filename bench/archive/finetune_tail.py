"""Fine-tuning the backbone's last stages against the frozen closed forms, on few-shot sets.

Does training the last trunk modules pay off on folders of 30 images per class, on a CPU? The
trunk up to module ``--tap`` (default 15 of Lite0's 18) is run once per image and its feature
maps kept in memory; the modules after it are then trained with a proxy loss (one learnable
proxy per class, cosine logits at temperature 0.05, random horizontal flips of the maps) and
BatchNorm frozen, as ``imgembed train --finetune-blocks`` trains them, minus the image
augmentations. Compared with the same splits as ``bench/quality.py`` (seed 0):

- ``default``: the untrained embedding;
- ``finetuned``: the tuned tail's pooled output, at each reported epoch;
- ``finetuned + wccn``: WCCN fitted on the tuned embeddings of the gallery;
- ``wccn (taps)``: WCCN on the frozen last map and mid-level taps, the closed form the default
  trained head starts from.

    .venv/bin/python bench/archive/finetune_tail.py --sets clipart digits --shots 30
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: common, quality, quality_data

import argparse
import copy
import time

import numpy as np
import quality_data
from quality import _Set, gallery_of, knn_and_map, l2n, queries_of, splits

from imgembed.train.featcache import plain_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=["clipart", "digits"])
    parser.add_argument("--shots", type=int, default=30)
    parser.add_argument("--tap", type=int, default=15, help="Train the trunk modules after this one.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()

    import torch
    from torch.nn import functional as F

    from imgembed.model.network import load_model, pool
    from imgembed.train import closedform
    from imgembed.train.blend import joined

    torch.set_num_threads(2)
    torch.manual_seed(0)
    for name in args.sets:
        paths, labels, _ = quality_data.labelled(name)
        model = load_model("efficientnet_lite0", "imagenet", "fp32", inference=False).use_blend_taps()
        loader = torch.utils.data.DataLoader(_Set(paths, plain_transform(model.preprocess), model.preprocess.min_side),
                                             batch_size=32, num_workers=2)
        maps, tapped = [], []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x in loader:
                x = x.contiguous(memory_format=torch.channels_last)
                maps.append(model.backbone[:args.tap + 1](x).half())
                tapped.append(model.features(x))
        maps = torch.cat(maps)
        z = joined(torch.cat(tapped), model.tap_dims).numpy()
        print(f"{name}: {len(paths)} images, feature maps in {time.perf_counter() - t0:.0f} s", flush=True)
        order = splits(labels, 0)
        gal, q = gallery_of(order, args.shots), queries_of(order, args.shots)
        wt = closedform.wccn(z[gal], labels[gal])
        ref = knn_and_map(wt(z[q]), labels[q], wt(z[gal]), labels[gal])

        tail = copy.deepcopy(model.backbone[args.tap + 1:]).float()

        def embed(ix):
            tail.eval()
            with torch.no_grad():
                return l2n(torch.cat([pool(tail(maps[ix[i:i + 128]].float()), model.pooling)
                                      for i in range(0, len(ix), 128)]).numpy())

        def report(tag):
            g, e = embed(gal), embed(q)
            raw = knn_and_map(e, labels[q], g, labels[gal])
            w = closedform.wccn(g, labels[gal])
            both = knn_and_map(w(e), labels[q], w(g), labels[gal])
            print(f"  {tag:<22} k-NN {raw['knn']:.3f}  mAP@R {raw['map']:.3f}  | + wccn k-NN {both['knn']:.3f}",
                  flush=True)
            return g

        g0 = report("default (epoch 0)")
        classes = np.unique(labels[gal])
        y = torch.from_numpy(np.searchsorted(classes, labels[gal]))
        proxies = torch.nn.Parameter(F.normalize(torch.from_numpy(
            np.stack([g0[y.numpy() == c].mean(0) for c in range(len(classes))])), dim=1))
        opt = torch.optim.AdamW([{"params": list(tail.parameters()), "lr": args.lr},
                                 {"params": [proxies], "lr": 1e-2}], weight_decay=1e-4)
        t0 = time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            tail.eval()  # BatchNorm statistics frozen: 32-image batches are too small to estimate them
            perm = torch.randperm(len(gal))
            for i in range(0, len(gal), 32):
                b = perm[i:i + 32]
                x = maps[gal[b.numpy()]].float()
                flip = torch.rand(len(b)) < 0.5
                x[flip] = x[flip].flip(-1)
                e = F.normalize(pool(tail(x), model.pooling), dim=1)
                loss = F.cross_entropy(e @ F.normalize(proxies, dim=1).T / 0.05, y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if epoch % 2 == 0 or epoch == args.epochs:
                report(f"finetuned, epoch {epoch}")
        print(f"  training {time.perf_counter() - t0:.0f} s; wccn (taps) k-NN {ref['knn']:.3f}  mAP@R {ref['map']:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
