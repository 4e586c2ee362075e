"""Running a model over files: the ONNX Runtime / OpenVINO engines and their model cache
(:mod:`.runtime`), the local decode pool (:mod:`.pool`) and the Ray engine (:mod:`.ray`), and
tying worker processes to their parent (:mod:`.lifetime`). Torch is imported only where the
torch runtime is asked for.

Whatever runs the model, the rest of imgembed sees an :class:`Embedder`: the torch
:class:`~imgembed.model.network.EmbeddingModel` and :class:`~imgembed.inference.runtime.OnnxModel`
both are one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from ..imaging.preprocess import Preprocess


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
