"""Loading a model ready to embed, and embedding images with it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from ..config import DEFAULT_MODEL, DEFAULT_WEIGHTS
from ..errors import ImageLoadError, InputError, ModelMismatchError
from ..imaging.decode import DEFAULT_MAX_PIXELS, load_for_model, to_rgb
from ..index import MANIFEST, read_manifest
from ..inference import loader

if TYPE_CHECKING:
    from ..inference import Embedder

Query = str | Path | Image.Image


def load_model(name_or_checkpoint: str = DEFAULT_MODEL, weights: str = DEFAULT_WEIGHTS,
               precision: str = "auto", *, index: str | Path | None = None,
               runtime: str = "auto", like: dict | None = None) -> "Embedder":
    """A registry backbone (default: offline EfficientNet-Lite0) or a ``.pt`` checkpoint, ready
    to embed.

    ``runtime="auto"`` runs it under ONNX Runtime where that is installed (built or exported once
    per model and cached, loaded without importing torch), else under torch; see
    :mod:`imgembed.inference.runtime`. Under torch, ``precision="auto"`` runs bf16 where the
    hardware does so natively, fp32 elsewhere. With ``index``, an existing index built by the same
    backbone lends its preprocessing and pooling, so that an index built before today's defaults
    keeps embedding its images the old way; so does ``like``, a model identity.
    """
    if index is not None and (Path(index) / MANIFEST).is_file():
        like = read_manifest(Path(index)).get("model")
    return loader.load(name_or_checkpoint, weights, precision, runtime, like)


def embed(model: "Embedder", items: Sequence[Query], *, max_pixels: int = DEFAULT_MAX_PIXELS,
          batch_size: int = 32) -> np.ndarray:
    """Embed image paths or PIL images to an (n, dim) float32 array of unit vectors.

    A path that cannot be decoded raises :class:`ImageLoadError` naming the file.
    """
    arrays = []
    for item in items:
        if isinstance(item, Image.Image):
            image = to_rgb(item)
        else:
            try:
                image = load_for_model(item, min_side=model.preprocess.min_side, max_pixels=max_pixels).image
            except ImageLoadError as e:
                raise ImageLoadError(f"{item}: {e}") from None
        arrays.append(model.preprocess.to_array(image))
    chunks = [model.embed_array(np.stack(arrays[i:i + batch_size])) for i in range(0, len(arrays), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, model.dim), np.float32)


def _own_model(index_dir: str | Path, manifest: dict, precision: str, runtime: str) -> "Embedder":
    """The model that built an index: its cached ONNX export when there is one (no torch), else
    loaded the way its manifest says."""
    from ..inference import runtime as rt

    choice = rt.choose(runtime, precision)
    if choice != "torch":
        found = rt.cached(manifest["model"], choice)
        if found is not None:
            return found
    own = manifest.get("model_source") or {}
    if "model" not in own:
        raise InputError(f"{index_dir}: its manifest does not say how to load its model; pass --model")
    model = load_model(own["model"], own["weights"], precision, index=index_dir, runtime=runtime)
    if model.identity != manifest["model"]:
        raise ModelMismatchError(f"{index_dir}: the model its manifest names no longer loads as the one that "
                                 f"built it ({own['model']}); pass --model explicitly")
    return model
