"""Backbone features computed once and kept on disk, for training a head on a frozen backbone.

Features are keyed by the backbone's identity (name, weights, preprocessing) and each file's
content hash, so a second run on the same images, or the same images under other names, skips
the backbone. Each file's entry is a ``(views, pooled_dim)`` float16 array: view 0 is the plain
preprocessing (centre crop), views 1.. are augmented (random resized crop, flip, colour jitter)
with a seed derived from the content hash and the view number, so the cache is reproducible.
Asking for more views later computes only the missing ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ImageLoadError
from ..imaging.decode import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS, load_for_model
from ..imaging.files import atomic_path, content_hash
from ..imaging.preprocess import PadToSquare, Preprocess
from ..inference.lifetime import worker_init_fn
from ..inference.pool import default_workers
from ..model.network import EmbeddingModel
from ..model.precision import autocast


def backbone_key(model: EmbeddingModel) -> str:
    ident = {k: model.identity[k] for k in ("backbone", "weights", "preprocess", "pooling") if k in model.identity}
    if model.taps:
        ident["taps"] = list(model.taps)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


class _Shrink:
    """Box-reduce an image by a whole factor while its short side stays at least ``side``: a view
    is only ``crop`` pixels wide, and a random crop of a 200 MP drawing would trip PIL's
    decompression-bomb check, which ``crop`` applies too. (A class, so DataLoader workers can
    pickle it.)"""

    def __init__(self, side: int):
        self.side = side

    def __call__(self, image):
        factor = min(image.size) // self.side
        return image.reduce(factor) if factor > 1 else image


def plain_transform(preprocess: Preprocess):
    """A picklable callable mapping an RGB PIL image to a (3, crop, crop) float tensor: ``preprocess``
    in torchvision, which training's loaders use (:meth:`Preprocess.to_array` is the same without
    torch, bit for bit: tested)."""
    from torchvision import transforms as T

    mode = T.InterpolationMode(preprocess.interpolation)
    if preprocess.fit == "crop":
        geometry = [T.Resize(preprocess.resize, interpolation=mode, antialias=True), T.CenterCrop(preprocess.crop)]
    elif preprocess.fit == "whole":
        geometry = [T.Resize((preprocess.crop, preprocess.crop), interpolation=mode, antialias=True)]
    else:
        geometry = [PadToSquare(preprocess.crop, preprocess.mean, mode)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(preprocess.mean, preprocess.std)])


def augmentations(preprocess):
    """The random views `train` learns from (PIL image -> normalised tensor): random resized
    crop, flip, colour jitter. Frozen training caches some of them; fine-tuning draws afresh."""
    from torchvision import transforms as T

    mode = T.InterpolationMode(preprocess.interpolation)
    return T.Compose([
        _Shrink(4 * preprocess.crop),
        T.RandomResizedCrop(preprocess.crop, scale=(0.4, 1.0), interpolation=mode, antialias=True),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.3, 0.3, 0.3, 0.05),
        T.ToTensor(),
        T.Normalize(preprocess.mean, preprocess.std),
    ])


def augment_transform(preprocess, seed: int):
    """A deterministic augmentation for one view (PIL image -> normalised tensor)."""
    generator = torch.Generator().manual_seed(seed)
    pipeline = augmentations(preprocess)

    def apply(image):
        state = torch.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        try:
            return pipeline(image)
        finally:
            torch.set_rng_state(state)
    return apply


@dataclass
class CachedFeatures:
    features: np.ndarray  # (n, views, pooled_dim) float32, rows of files that loaded
    ok: np.ndarray  # (n,) positions in the input list
    failed: list[tuple[int, str]]  # (position, reason)
    computed: int  # files whose features had to be computed in this call


def _entry(cache_dir: Path, data_hash: str) -> Path:
    return cache_dir / data_hash[:2] / f"{data_hash}.npy"


def _lookup(cache_dir: Path, path: Path) -> tuple[str, np.ndarray | None]:
    data_hash = content_hash(Path(path).read_bytes())
    entry = _entry(cache_dir, data_hash)
    try:
        return data_hash, np.load(entry) if entry.is_file() else None
    except (OSError, ValueError):
        return data_hash, None  # a damaged entry is recomputed


def _collate(items):
    return items


class _Views(torch.utils.data.Dataset):
    """Per file: the cached views, or the decoded image's missing views as tensors."""

    def __init__(self, paths, cache_dir: Path, preprocess, views: int, max_pixels: int, timeout: float):
        self.paths, self.cache_dir, self.preprocess = paths, cache_dir, preprocess
        self.views, self.max_pixels, self.timeout = views, max_pixels, timeout
        self.plain = plain_transform(preprocess)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            data_hash, stored = _lookup(self.cache_dir, self.paths[i])
            if stored is not None and len(stored) >= self.views:
                return i, data_hash, stored[:self.views], None, None
            loaded = load_for_model(self.paths[i], min_side=self.preprocess.min_side, max_pixels=self.max_pixels,
                                    timeout=self.timeout)
            have = 0 if stored is None else len(stored)
            seed = int(data_hash[:8], 16)
            tensors = [self.plain(loaded.image) if v == 0 else augment_transform(self.preprocess, seed + v)(loaded.image)
                       for v in range(have, self.views)]
            return i, data_hash, stored, torch.stack(tensors), None
        except ImageLoadError as e:
            return i, None, None, None, str(e)
        except Exception as e:
            return i, None, None, None, f"cannot decode image: {type(e).__name__}: {e}"


class FeatureCache:
    """Pooled backbone features of ``model`` for files, stored under ``root/<backbone key>/``."""

    def __init__(self, root: str | Path, model: EmbeddingModel):
        self.model = model
        self.dir = Path(root) / backbone_key(model)

    def _store(self, data_hash: str, features: np.ndarray) -> None:
        """Write a (views, dim) float16 entry atomically (a crash never leaves half a file)."""
        entry = _entry(self.dir, data_hash)
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(entry, durable=False) as tmp, open(tmp, "wb") as f:  # a cache: recomputable
            np.save(f, features)

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        device = next(self.model.parameters()).device
        batch = batch.to(device).contiguous(memory_format=torch.channels_last)
        with autocast(self.model.precision, device):
            return self.model.features(batch).float().cpu().numpy()

    def features(self, paths: Sequence[Path], views: int = 1, *, batch_size: int = 64, workers: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, decode_timeout: float = DEFAULT_DECODE_TIMEOUT,
                 progress: Callable[[int, int], None] | None = None) -> CachedFeatures:
        """Features of ``views`` views of each file, computing what the cache lacks; a file that
        cannot be decoded, or takes over ``decode_timeout`` seconds to, is in ``failed``."""
        workers = default_workers() if workers is None else workers
        loader = torch.utils.data.DataLoader(
            _Views(list(paths), self.dir, self.model.preprocess, views, max_pixels, decode_timeout),
            batch_size=max(1, batch_size // views), num_workers=workers, collate_fn=_collate,
            prefetch_factor=4 if workers else None, worker_init_fn=worker_init_fn())
        out: dict[int, np.ndarray] = {}
        failed: list[tuple[int, str]] = []
        computed = done = 0
        for items in loader:
            todo = [(i, h, stored, t) for i, h, stored, t, err in items if err is None and t is not None]
            if todo:
                feats = self._forward(torch.cat([t for *_, t in todo]))
                offset = 0
                for i, data_hash, stored, t in todo:
                    new = feats[offset:offset + len(t)]
                    offset += len(t)
                    full = (new if stored is None else np.concatenate([stored, new])).astype(np.float16)
                    self._store(data_hash, full)
                    out[i] = full[:views]
                    computed += 1
            for i, _, stored, t, err in items:
                if err is not None:
                    failed.append((i, err))
                elif t is None:
                    out[i] = stored
            done += len(items)
            if progress:
                progress(done, len(paths))
        ok = np.array(sorted(out), dtype=np.int64)
        dim = self.model.pooled_dim
        feats = np.stack([out[i].astype(np.float32) for i in ok]) if len(ok) else np.zeros((0, views, dim), np.float32)
        return CachedFeatures(feats, ok, failed, computed)
