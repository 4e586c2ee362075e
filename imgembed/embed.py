"""Turning images into embedding vectors, with decoding in worker processes.

:func:`embed_files` streams batches so callers can commit results as they go; a file that
cannot be decoded is reported in the batch's ``failed`` list and never stops the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from .errors import ImageLoadError
from .images import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS, load_for_model, perceptual_hash
from .model import EmbeddingModel
from .precision import autocast

if TYPE_CHECKING:
    from .runtime import OnnxModel


def default_workers() -> int:
    """Decode worker processes: one per core, at most four. On 2 cores, 12 MP JPEGs indexed at
    30.4 images/s with 1 worker, 37.6 with 2 and 36.5 with 3 (`imgembed index --json`)."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class FileInfo:
    width: int
    height: int
    hash: str
    phash: int | None = None  # images.perceptual_hash of the decoded image


@dataclass
class EmbeddedBatch:
    """``vectors[i]`` belongs to ``paths[ok[i]]``; ``failed`` holds ``(position, reason)``."""

    ok: list[int] = field(default_factory=list)
    info: list[FileInfo] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    failed: list[tuple[int, str]] = field(default_factory=list)


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform, min_side: int, max_pixels: int, timeout: float):
        self.paths, self.transform, self.min_side, self.max_pixels = paths, transform, min_side, max_pixels
        self.timeout = timeout

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return (i, *decode(self.paths[i], self.transform, self.min_side, self.max_pixels, self.timeout))


def decode(path: Path, transform, min_side: int, max_pixels: int, timeout: float
           ) -> tuple[np.ndarray | None, FileInfo | None, str | None]:
    """``(array, info, None)`` for a decodable image, ``(None, None, reason)`` otherwise;
    ``transform`` is a :meth:`Preprocess.to_array`.

    Both engines decode through here, so a bad file is reported with the same reason by each.
    """
    try:
        loaded = load_for_model(path, min_side=min_side, max_pixels=max_pixels, timeout=timeout)
        tensor = transform(loaded.image)
        return tensor, FileInfo(loaded.width, loaded.height, loaded.hash, perceptual_hash(loaded.image)), None
    except ImageLoadError as e:
        return None, None, str(e)
    except Exception as e:  # a transform bug must not kill the run; report it like a bad file
        return None, None, f"cannot decode image: {type(e).__name__}: {e}"


def _collate(items):
    return items


@torch.inference_mode()
def embed_tensor(model: EmbeddingModel, batch: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) preprocessed batch -> (N, dim) float32 unit vectors."""
    device = next(model.parameters()).device
    batch = batch.to(device).contiguous(memory_format=torch.channels_last)
    with autocast(model.precision, device):
        out = model(batch)
    # Normalise again in fp32: bf16 rounding leaves norms up to ~0.4% off 1.
    return torch.nn.functional.normalize(out.float(), dim=1).cpu().numpy()


def embed_files(model: "EmbeddingModel | OnnxModel", paths: Sequence[Path], *, batch_size: int = 32,
                workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                decode_timeout: float = DEFAULT_DECODE_TIMEOUT) -> Iterator[EmbeddedBatch]:
    """Embed ``paths`` in order, yielding one :class:`EmbeddedBatch` per ``batch_size`` files."""
    if not paths:
        return
    workers = default_workers() if workers is None else workers
    dataset = _Files(paths, model.preprocess.to_array, model.preprocess.min_side, max_pixels, decode_timeout)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        prefetch_factor=4 if workers else None, persistent_workers=False)
    for items in loader:
        out = EmbeddedBatch()
        tensors = []
        for i, tensor, info, error in items:
            if error is None:
                out.ok.append(i)
                out.info.append(info)
                tensors.append(tensor)
            else:
                out.failed.append((i, error))
        out.vectors = (model.embed_array(np.stack(tensors)) if tensors
                       else np.zeros((0, model.dim), np.float32))
        yield out
