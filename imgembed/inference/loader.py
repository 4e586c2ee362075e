"""Loading a model ready to embed: a cached ONNX model, one made now without torch, or the torch
model (exported to ONNX when it can be). :func:`imgembed.api.load_model` adds what an index
records; this is the part that needs no index."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import DEFAULT_MODEL, DEFAULT_WEIGHTS
from ..errors import TorchUnavailableError
from . import runtime as rt

if TYPE_CHECKING:
    from . import Embedder


def load(name_or_checkpoint: str = DEFAULT_MODEL, weights: str = DEFAULT_WEIGHTS, precision: str = "auto",
         runtime: str = "auto", like: dict | None = None) -> "Embedder":
    """A registry backbone or a ``.pt`` checkpoint, ready to embed under ``runtime``
    (:func:`imgembed.inference.runtime.choose`); ``like`` is a model identity whose
    preprocessing and pooling a backbone by name takes instead of today's defaults."""
    choice = rt.choose(runtime, precision)
    if choice != "torch":
        key = rt.source_key(name_or_checkpoint, weights, like)
        found = rt.cached_source(key, choice) or rt.without_torch(name_or_checkpoint, weights, like, key, choice)
        if found is not None:
            return found
        if not rt.torch_available():
            raise needs_torch(name_or_checkpoint, weights)
    from ..model.network import load_model as load_torch

    model = load_torch(name_or_checkpoint, weights, "fp32" if choice != "torch" else precision, like=like)
    if choice != "torch":
        return rt.export(model, key, choice) or model.set_precision(precision)
    return model


def needs_torch(name_or_checkpoint: str, weights: str) -> TorchUnavailableError:
    """Why a model cannot run in this install (no torch), and what to do about it."""
    fix = "pip install 'imgembed[train]'"
    if name_or_checkpoint.endswith(".pt") or Path(name_or_checkpoint).is_file():
        side = rt.beside_path(name_or_checkpoint)
        state = "is for another version of it" if side.is_file() else "is missing"
        return TorchUnavailableError(
            f"{name_or_checkpoint}: its ONNX export {side} {state}, and this install has no torch to load the "
            f"checkpoint: run `imgembed export {name_or_checkpoint}` where torch is installed ({fix}), or "
            "install it here")
    return TorchUnavailableError(f"--model {name_or_checkpoint} --weights {weights} needs torch, which this install "
                                 "lacks (only the EfficientNet-Lite backbones with ImageNet weights run without it): "
                                 f"{fix}")
