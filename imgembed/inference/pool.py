"""Turning images into embedding vectors, with decoding in worker processes.

:func:`embed_files` streams batches so callers can commit results as they go; a file that
cannot be decoded is reported in the batch's ``failed`` list and never stops the run. Decoding
runs in a plain process pool, so that indexing under ONNX Runtime never imports torch.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ..errors import EngineError, ImageLoadError
from ..imaging.decode import DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS, load_for_model, perceptual_hash
from .lifetime import tie_to_parent

if TYPE_CHECKING:
    from . import Embedder


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


_worker_args: tuple = ()


def _start_worker(parent: int, *args) -> None:
    """Pool initialiser: the worker dies with ``parent``, the process that made the pool, however
    that dies (:func:`imgembed.inference.lifetime.tie_to_parent`); the decode settings, once per worker;
    Ctrl-C is the parent's to handle."""
    global _worker_args
    tie_to_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_args = args


def _decode_in_worker(path: Path):
    return decode(path, *_worker_args)


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


def embed_files(model: "Embedder", paths: Sequence[Path], *, batch_size: int = 32,
                workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                decode_timeout: float = DEFAULT_DECODE_TIMEOUT) -> Iterator[EmbeddedBatch]:
    """Embed ``paths`` in order, yielding one :class:`EmbeddedBatch` per ``batch_size`` files."""
    if not paths:
        return
    workers = default_workers() if workers is None else workers
    args = (model.preprocess.to_array, model.preprocess.min_side, max_pixels, decode_timeout)
    if workers == 0:
        decoded = (decode(p, *args) for p in paths)
        yield from _batches(model, decoded, batch_size)
        return
    # Each file is its own task, two batches ahead (_decoded_in).
    pool = ProcessPoolExecutor(min(workers, len(paths)), mp_context=multiprocessing.get_context(),
                               initializer=_start_worker, initargs=(os.getpid(), *args))
    try:
        yield from _batches(model, _decoded_in(pool, paths, 2 * batch_size), batch_size)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class LocalPool:
    """The local :class:`~imgembed.inference.Executor`: ``workers`` decode processes on this
    machine (None: :func:`default_workers`; 0 decodes in this process), the model in this one."""

    workers: int | None = None
    runtime = None

    def check(self) -> None:
        """Nothing to check: the local pool runs wherever imgembed does."""

    def embed_files(self, model: "Embedder", paths: Sequence[Path], *, batch_size: int = 32,
                    max_pixels: int = DEFAULT_MAX_PIXELS,
                    decode_timeout: float = DEFAULT_DECODE_TIMEOUT) -> Iterator[EmbeddedBatch]:
        return embed_files(model, paths, batch_size=batch_size, workers=self.workers, max_pixels=max_pixels,
                           decode_timeout=decode_timeout)


def _decoded_in(pool: ProcessPoolExecutor, paths: Sequence[Path], ahead: int):
    """Decode results of ``paths`` in order, with at most ``ahead`` files in flight: the first
    batch is ready after ``batch / workers`` decodes, and memory stays bounded however many
    files there are."""
    window: collections.deque = collections.deque()
    todo = iter(paths)
    try:
        while True:
            for path in itertools.islice(todo, ahead - len(window)):
                window.append(pool.submit(_decode_in_worker, path))
            if not window:
                return
            yield window.popleft().result()
    except BrokenProcessPool:
        raise EngineError("a decode worker died (killed, out of memory or a decoder crash); what was "
                          "committed is kept: run again to resume, with --workers 0 to find the file") from None


def _batches(model, decoded, batch_size: int) -> Iterator[EmbeddedBatch]:
    """Group ``(array, info, error)`` results, in path order, into embedded batches."""
    position = 0
    while True:
        out, tensors = EmbeddedBatch(), []
        for _ in range(batch_size):
            item = next(decoded, None)
            if item is None:
                break
            tensor, info, error = item
            if error is None:
                out.ok.append(position)
                out.info.append(info)
                tensors.append(tensor)
            else:
                out.failed.append((position, error))
            position += 1
        if not out.ok and not out.failed:
            return
        out.vectors = (model.embed_array(np.stack(tensors)) if tensors
                       else np.zeros((0, model.dim), np.float32))
        yield out
