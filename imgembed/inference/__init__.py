"""Running a model over files: the ONNX Runtime / OpenVINO engines and their model cache
(:mod:`.runtime`), the local decode pool (:mod:`.pool`) and the Ray engine (:mod:`.ray`), and
tying worker processes to their parent (:mod:`.lifetime`). Torch is imported only where the
torch runtime is asked for.

Whatever runs the model, the rest of imgembed sees an :class:`Embedder`: the torch
:class:`~imgembed.model.network.EmbeddingModel` and :class:`~imgembed.inference.runtime.OnnxModel`
both are one; and whatever runs the files through it, an :class:`Executor`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

if TYPE_CHECKING:
    import numpy as np

    from ..imaging.preprocess import Preprocess
    from .pool import EmbeddedBatch


class Embedder(Protocol):
    """A model ready to embed: preprocessed (N, 3, crop, crop) float32 batches in, (N, dim) unit
    vectors out. ``identity`` is what an index records and compares; ``source`` says how to load
    the model again (``{"model": name|path, "weights": spec}``); ``runtime`` names the engine."""

    identity: dict
    source: dict
    preprocess: "Preprocess"
    dim: int
    runtime: str

    def embed_array(self, batch: "np.ndarray") -> "np.ndarray": ...


class Executor(Protocol):
    """Where files are decoded and embedded: :class:`~imgembed.inference.pool.LocalPool` or
    :class:`~imgembed.inference.ray.RayCluster`. ``runtime`` is the one it needs (Ray's actors run
    torch), or None for whatever the model was loaded with."""

    runtime: str | None

    def check(self) -> None:
        """Raise a typed error, before any work, when this executor cannot run here."""

    def embed_files(self, model: Embedder, paths: Sequence[Path], *, batch_size: int, max_pixels: int,
                    decode_timeout: float) -> Iterator["EmbeddedBatch"]:
        """:class:`~imgembed.inference.pool.EmbeddedBatch` es of ``paths``; positions index ``paths``."""

