"""The embedding model: backbone -> global pooling -> projection head -> L2 norm.

Until a head is trained the head is the identity, so the embedding is the L2-normalised pooled
backbone feature. A model knows its :class:`Preprocess` and an identity dict that indexes record,
so an index is never searched with vectors from another model.

Checkpoints (written by ``imgembed train``) are self-describing dicts of plain types and tensors,
loadable with ``torch.load(..., weights_only=True)``; see :func:`save_checkpoint`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import __version__
from ..config import DEFAULT_WEIGHTS, parse_pooling
from ..errors import ModelError
from ..imaging.files import atomic_path
from ..imaging.preprocess import Preprocess
from .backbones import (
    DEFAULT_BACKBONE,
    build_classifier,
    feature_extractor,
    get_spec,
    load_tensors_file,
    model_identity,
    preprocess_and_pooling,
)
from .heads import build_head

CHECKPOINT_FORMAT = "imgembed-checkpoint"
CHECKPOINT_VERSION = 1


def pool(feature_map: torch.Tensor, spec: str = "avg") -> torch.Tensor:
    """(N, C, h, w) -> (N, C). GeM (Radenovic et al. 2018) is the p-th root of the mean of x^p:
    p=1 is average pooling, large p tends to max pooling, so it weights the strongest responses."""
    p = parse_pooling(spec)
    x = feature_map.float()
    if p is None:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
    return F.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(p), 1).flatten(1).pow(1.0 / p)


class EmbeddingModel(nn.Module):
    """Maps a (N, 3, crop, crop) batch to (N, dim) L2-normalised embeddings."""

    def __init__(self, backbone_name: str, backbone: nn.Module, weights_id: str,
                 preprocess: Preprocess, head_config: dict | None = None, checkpoint_id: str | None = None,
                 pooling: str = "avg", taps: tuple[int, ...] = ()):
        super().__init__()
        parse_pooling(pooling)
        self.pooling = pooling
        self.backbone_name = backbone_name
        self.backbone = backbone
        self.feature_dim = get_spec(backbone_name).feature_dim
        self.fp32_stem = get_spec(backbone_name).fp32_stem
        # Trunk modules whose pooled outputs follow the last feature map's in `features` (a head
        # that reads them records them in its config, so a checkpoint brings its own).
        self.taps = (head_config or {}).get("taps", taps)
        self.head_config = head_config
        self.head = build_head(head_config, self.feature_dim)
        self.weights_id = weights_id
        self.preprocess = preprocess
        self.checkpoint_id = checkpoint_id
        self.source: dict = {}  # how to load this model again: {"model": name|path, "weights": spec}
        self.precision = "fp32"
        self.folded = False

    def set_precision(self, precision: str = "auto") -> "EmbeddingModel":
        """Run inference at ``auto|fp32|bf16``, in channels_last layout (about 2x faster for
        these CNNs on CPU than the default layout, at either precision).

        Under bf16 the first ``fp32_stem`` trunk modules still run in fp32 (see BackboneSpec).
        """
        from .precision import resolve

        device = next(self.parameters()).device
        self.precision = resolve(precision, device)
        self.to(memory_format=torch.channels_last)
        return self

    def fold_batchnorm(self) -> "EmbeddingModel":
        """Fold eval-mode BatchNorm into the preceding convolution of the backbone (inference only).

        Same outputs up to float rounding, fewer passes over memory, and one rounding fewer per
        layer under bf16. A folded model cannot be fine-tuned.
        """
        for module in self.backbone.modules():
            if isinstance(module, nn.Sequential):
                for i in range(len(module) - 1):
                    conv, bn = module[i], module[i + 1]
                    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                        _fold_into(conv, bn)
                        module[i + 1] = nn.Identity()
        self.folded = True
        return self

    @property
    def dim(self) -> int:
        return int(self.head_config["dim"]) if self.head_config else self.feature_dim

    @property
    def identity(self) -> dict:
        """What must match for two sets of vectors to be comparable (:func:`~imgembed.model.backbones.model_identity`)."""
        return model_identity(self.backbone_name, self.weights_id, self.preprocess, self.pooling,
                              head=self.head_config, checkpoint=self.checkpoint_id, dim=self.dim)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's last feature map, (N, feature_dim, h, w), then those of ``taps``."""
        start = 0
        if self.precision == "bf16" and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                x = self.backbone[:self.fp32_stem](x.float())
            start = self.fp32_stem
        tapped = []
        for i in range(start, len(self.backbone)):
            x = self.backbone[i](x)
            if i in self.taps:
                tapped.append(x)
        return [x, *tapped]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, (N, feature_dim, h, w)."""
        return self.feature_maps(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, (N, pooled_dim): the last feature map's ``feature_dim``
        channels first, then each tap's."""
        return torch.cat([pool(m, self.pooling) for m in self.feature_maps(x)], 1)

    @property
    def taps(self) -> tuple[int, ...]:
        return self._taps

    @taps.setter
    def taps(self, taps) -> None:
        taps = tuple(int(t) for t in taps)
        if taps and (min(taps) < self.fp32_stem or max(taps) >= len(self.backbone) - 1):
            raise ModelError(f"taps {taps} must lie between the fp32 stem ({self.fp32_stem}) and the "
                             f"last trunk module ({len(self.backbone) - 1})")
        self._taps = taps
        self.tap_dims = [self.feature_dim, *(self._channels(t) for t in taps)]

    def use_blend_taps(self) -> "EmbeddingModel":
        """Read the taps the default trained head uses (``BackboneSpec.blend_taps``)."""
        self.taps = get_spec(self.backbone_name).blend_taps
        return self

    def _channels(self, module_index: int) -> int:
        """Output channels of a trunk module: those of its last convolution."""
        convs = [m for m in self.backbone[module_index].modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ModelError(f"trunk module {module_index} of {self.backbone_name} has no convolution to tap")
        return convs[-1].out_channels

    @property
    def pooled_dim(self) -> int:
        """Width of `features`: the sum of `tap_dims`."""
        return sum(self.tap_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)

    runtime = "torch"

    def embed_array(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, crop, crop) float32 preprocessed batch -> (N, dim) float32 unit vectors, as
        :class:`~imgembed.inference.runtime.OnnxModel` does."""
        return embed_tensor(self, torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight.detach() * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach(), requires_grad=False)


def load_model(name_or_checkpoint: str = DEFAULT_BACKBONE, weights: str = DEFAULT_WEIGHTS,
               precision: str = "fp32", *, inference: bool = True, like: dict | None = None) -> EmbeddingModel:
    """A backbone name from the registry, or a path to a ``.pt`` checkpoint from ``imgembed train``.

    ``precision`` (``auto|fp32|bf16``) is how inference runs; see :mod:`imgembed.model.precision`.
    With ``inference`` (the default) BatchNorm is folded into the convolutions; pass False for
    a model whose backbone will be trained. ``like`` is a model identity (as an index's manifest
    records it) whose preprocessing and pooling a backbone by name takes instead of today's
    defaults, so that an index keeps being searched the way it was built.
    """
    path = Path(name_or_checkpoint)
    if name_or_checkpoint.endswith(".pt") or path.is_file():
        model = load_checkpoint(path)
    else:
        classifier, weights_id = build_classifier(name_or_checkpoint, weights)
        backbone = feature_extractor(name_or_checkpoint, classifier)
        preprocess, pooling = preprocess_and_pooling(name_or_checkpoint, like)
        model = EmbeddingModel(name_or_checkpoint, backbone, weights_id, preprocess, pooling=pooling)
        model.source = {"model": name_or_checkpoint, "weights": weights}
    if inference:
        model.fold_batchnorm()
    return model.eval().set_precision(precision)


def save_checkpoint(model: EmbeddingModel, path: str | Path, *, weights: str, extra: dict | None = None,
                    include_backbone: bool = False, backbone_trained: bool = False) -> None:
    """Write a self-describing checkpoint.

    ``weights`` is the spec the backbone was built from (``imagenet`` or ``none``); the backbone's
    own tensors are stored only when ``include_backbone`` (fine-tuned, or built from a file), so a
    head trained on a frozen ImageNet backbone stays small.
    """
    if (include_backbone or backbone_trained) and model.folded:
        raise ModelError("cannot save the backbone of a model whose BatchNorm was folded for inference; "
                         "load it with inference=False")
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "imgembed_version": __version__,
        "backbone": model.backbone_name,
        "weights": weights,
        "weights_id": model.weights_id,
        "head": model.head_config,
        "dim": model.dim,
        "preprocess": model.preprocess.to_dict(),
        "pooling": model.pooling,
        "head_state": model.head.state_dict(),
        "backbone_state": model.backbone.state_dict() if include_backbone or backbone_trained else None,
        "backbone_trained": backbone_trained,
        **(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | Path) -> EmbeddingModel:
    path = Path(path)
    ckpt, digest = load_tensors_file(path, "imgembed checkpoint", "or pass a backbone name to --model")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not an imgembed checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise ModelError(f"{path}: checkpoint version {ckpt['version']} is newer than this imgembed "
                         f"supports ({CHECKPOINT_VERSION}); upgrade imgembed")
    name = ckpt["backbone"]
    own_backbone = ckpt.get("backbone_state") is not None
    classifier, weights_id = build_classifier(name, "none" if own_backbone else ckpt["weights"])
    backbone = feature_extractor(name, classifier)
    if own_backbone:
        backbone.load_state_dict(ckpt["backbone_state"])
        # A fine-tuned backbone is its own model: features cached for the original do not apply.
        weights_id = f"trained:{digest}" if ckpt.get("backbone_trained") else ckpt.get("weights_id", weights_id)
    model = EmbeddingModel(name, backbone, weights_id, Preprocess.from_dict(ckpt["preprocess"]),
                           ckpt.get("head"), checkpoint_id=digest, pooling=ckpt.get("pooling", "avg"))
    model.head.load_state_dict(ckpt["head_state"])
    model.source = {"model": str(path.resolve()), "weights": ckpt["weights"]}
    return model.eval()


def embed_tensor(model: EmbeddingModel, batch: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) preprocessed batch -> (N, dim) float32 unit vectors."""
    from .precision import autocast

    device = next(model.parameters()).device
    batch = batch.to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(model.precision, device):
        out = model(batch)
    # Normalise again in fp32: bf16 rounding leaves norms up to ~0.4% off 1.
    return torch.nn.functional.normalize(out.float(), dim=1).cpu().numpy()
