"""Loading a model ready to embed, and embedding images with it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from ..errors import ImageLoadError, InputError, ModelMismatchError, TorchUnavailableError
from ..imaging.decode import DEFAULT_MAX_PIXELS, load_for_model, to_rgb
from ..index import MANIFEST, read_manifest

if TYPE_CHECKING:
    from ..inference import Embedder

Query = str | Path | Image.Image


def load_model(name_or_checkpoint: str = "efficientnet_lite0", weights: str = "imagenet",
               precision: str = "auto", *, index: str | Path | None = None,
               runtime: str = "auto", like: dict | None = None) -> "Embedder":
    """A registry backbone (default: offline EfficientNet-Lite0) or a ``.pt`` checkpoint, ready
    to embed.

    ``runtime="auto"`` runs it under ONNX Runtime where that is installed (exported once per
    model and cached; a cached model loads without importing torch), else under torch; see
    :mod:`imgembed.inference.runtime`. Under torch, ``precision="auto"`` runs bf16 where the hardware does
    so natively, fp32 elsewhere. With ``index``, an existing index built by the same backbone
    lends its preprocessing and pooling, so that an index built before today's defaults keeps
    embedding its images the old way; so does ``like``, a model identity.
    """
    from ..inference import runtime as rt

    if index is not None and (Path(index) / MANIFEST).is_file():
        like = read_manifest(Path(index)).get("model")
    engine = rt.choose(runtime, precision)
    if engine != "torch":
        key = rt.source_key(name_or_checkpoint, weights, like)
        found = rt.cached_source(key, engine) or rt.without_torch(name_or_checkpoint, weights, like, key, engine)
        if found is not None:
            return found
        if not rt.torch_available():
            raise _needs_torch(name_or_checkpoint, weights)
    from ..model.network import load_model as _load

    model = _load(name_or_checkpoint, weights, "fp32" if engine != "torch" else precision, like=like)
    if engine != "torch":
        return rt.export(model, key, engine) or model.set_precision(precision)
    return model


def _needs_torch(name_or_checkpoint: str, weights: str) -> TorchUnavailableError:
    """Why a model cannot run in this install (no torch), and what to do about it."""
    from ..inference import runtime as rt

    fix = "pip install 'imgembed[train]'"
    if name_or_checkpoint.endswith(".pt") or Path(name_or_checkpoint).is_file():
        side = rt.beside_path(name_or_checkpoint)
        state = "is for another version of it" if side.is_file() else "is missing"
        return TorchUnavailableError(
            f"{name_or_checkpoint}: its ONNX export {side} {state}, and this install has no torch to load the "
            f"checkpoint: run `imgembed export {name_or_checkpoint}` where torch is installed ({fix}), or "
            "install it here")
    return TorchUnavailableError(f"--model {name_or_checkpoint} --weights {weights} needs torch, which this install "
                                 f"lacks (only the default backbone with ImageNet weights runs without it): {fix}")


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

    engine = rt.choose(runtime, precision)
    if engine != "torch":
        found = rt.cached(manifest["model"], engine)
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
