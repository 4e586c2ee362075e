"""Choices and defaults that the command line shows and the layers below use, defined once.

Plain Python: the CLI imports this module to build its options, so ``--help`` loads no torch,
numpy or FAISS.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import InputError, ModelError

DEFAULT_MODEL = "efficientnet_lite0"  # the backbone of new indexes and of `train`
PRECISIONS = ("auto", "fp32", "bf16")  # torch inference precision (see imgembed.model.precision)
RUNTIMES = ("auto", "onnx", "openvino", "torch")  # inference engine (see imgembed.inference.runtime)
MINERS = ("batch-hard", "semi-hard", "all")  # see imgembed.train.losses
HEADS = ("blend", "mlp", "linear")
LOSSES = ("triplet", "contrastive")
SPLITS = ("images", "classes")
DUPLICATE_ACTIONS = ("move", "link", "trash")  # see imgembed.collection.tidy
KEEP_RULES = ("resolution", "size", "oldest", "newest")  # which copy of a duplicate group stays
DEFAULT_KEEP = ("resolution", "size", "oldest")
NEGATIVE_WEIGHT = 0.25  # counter-examples' pull in a combined query (imgembed.collection.knn.combine)


def parse_pooling(spec: str) -> float | None:
    """``"avg"`` -> None (average pooling); ``"gem:P"`` -> P (generalised-mean pooling)."""
    if spec == "avg":
        return None
    kind, _, p = spec.partition(":")
    try:
        value = float(p)
    except ValueError:
        value = 0.0
    if kind != "gem" or value <= 0:
        raise ModelError(f"unknown pooling {spec!r} (expected avg or gem:P with P > 0)")
    return value


@dataclass
class TrainConfig:
    model: str = "efficientnet_lite0"
    weights: str = "imagenet"
    dim: int = 128
    head: str = "blend"
    hidden: int = 1024
    loss: str = "triplet"
    margin: float = 0.2
    miner: str = "batch-hard"
    pos_margin: float = 0.0
    neg_margin: float = 1.0
    classes_per_batch: int = 16
    images_per_class: int = 4
    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    views: int = 3
    finetune_blocks: int = 0
    val_split: float = 0.2
    split: str = "images"
    patience: int = 10
    seed: int = 0
    batch_size: int = 64  # images per backbone forward pass when caching features
    workers: int | None = None
    precision: str = "auto"
    unlabelled: bool = False  # fit on augmented views of unlabelled images (see blend.fit_unlabelled)

    def check(self) -> None:
        if self.unlabelled and (self.views < 2 or self.head != "blend" or self.finetune_blocks):
            raise InputError("--unlabelled needs --views 2 or more and the blend head, without --finetune-blocks")
        if self.head not in HEADS:
            raise InputError(f"head must be one of {HEADS}")
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {LOSSES}")
        if self.miner not in MINERS:
            raise InputError(f"miner must be one of {MINERS}")
        if self.split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}")
        if not 0 <= self.val_split < 1:
            raise InputError("--val-split must be in [0, 1)")
        if self.images_per_class < 2 or self.classes_per_batch < 2:
            raise InputError("batches need at least 2 classes and 2 images per class")

    def head_config(self) -> dict:
        """The mlp and linear heads' shape; the blend head's depends on the data (see :mod:`.blend`)."""
        if self.head == "linear":
            return {"type": "linear", "dim": self.dim}
        return {"type": "mlp", "hidden": self.hidden, "dim": self.dim}

    def same_run(self, other: "TrainConfig") -> bool:
        """Whether ``other`` describes the same run, ignoring how long it may go on."""
        ignore = {"epochs", "patience", "workers", "batch_size"}
        a, b = asdict(self), asdict(other)
        return all(a[k] == b[k] for k in a if k not in ignore)
