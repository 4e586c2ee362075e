"""Choices and defaults that the command line shows and the layers below use, defined once.

Plain Python: the CLI imports this module to build its options, so ``--help`` loads no torch,
numpy or FAISS. :class:`TrainConfig`'s fields carry what ``imgembed train`` shows for them
(:func:`setting`), and the command's options are generated from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InputError, ModelError

DEFAULT_MODEL = "efficientnet_lite0"  # the backbone of new indexes and of `train`
DEFAULT_WEIGHTS = "imagenet"  # backbone weights: imagenet, none or a state-dict file
DEFAULT_INDEX = "indexes/default"  # the index directory without --index or $IMGEMBED_INDEX
PRECISIONS = ("auto", "fp32", "bf16")  # torch inference precision (see imgembed.model.precision)
RUNTIMES = ("auto", "onnx", "openvino", "torch")  # where a model runs (see imgembed.inference.runtime)
EXECUTORS = ("local", "ray")  # where an index run decodes and embeds (`index --engine`; imgembed.inference)
MINERS = ("batch-hard", "semi-hard", "all")  # see imgembed.train.losses
HEADS = ("blend", "mlp", "linear")
LOSSES = ("triplet", "contrastive")
SPLITS = ("images", "classes")
DUPLICATE_ACTIONS = ("move", "link", "trash")  # see imgembed.collection.tidy
KEEP_RULES = ("resolution", "size", "oldest", "newest")  # which copy of a duplicate group stays
DEFAULT_KEEP = ("resolution", "size", "oldest")
NEGATIVE_WEIGHT = 0.25  # counter-examples' pull in a combined query (imgembed.collection.knn.combine)
SEARCH_K = 10  # results per query
EXPANSIONS = ("index", "none", "dba", "dba+aqe")  # how `search` ranks (imgembed.api.Searcher)
CLASSIFY_K = 5  # neighbours that vote on a label (classify, and evaluate's k-NN accuracy)
DUPLICATE_K = 10  # neighbours examined per image for near-duplicates (imgembed.collection.dedup)
# near-duplicate score -> default threshold, each chosen from the curves of bench/duplicates.py
DUPLICATE_THRESHOLDS = {"relative": 0.5, "cosine": 0.85}
DUPLICATE_MIN_COSINE = 0.85  # the relative score's floor on the raw cosine (imgembed.collection.dedup)
INDEX_BATCH_SIZE = 32  # images per forward pass of an index run
COMMIT_EVERY = 256  # images per committed chunk of an index run
DEFAULT_MAX_PIXELS = 150_000_000  # larger images are rejected as likely decompression bombs
DEFAULT_DECODE_TIMEOUT = 30.0  # seconds one file may take to decode before it is skipped
DEFAULT_TARGET_RECALL = 0.95  # Recall@10 a new approximate index is tuned to (imgembed.index.recall)
AUDIT_K = 10  # neighbours that measure how far an image lies, and are shown with each finding
AUDIT_KINDS = ("mislabel", "outlier", "duplicate", "leak")
MISLABEL_THRESHOLD = 0.5  # mislabel score above which a label is reported (bench/audit.py, tuning sets)
OUTLIER_THRESHOLD = 3.5  # robust z-score from which an image is reported as an outlier
SORT_MIN_CONFIDENCE = 0.4  # share of an inbox image's label scores below which it stays (bench/sort.py)
CLUSTER_K = 10  # neighbours per image in the graph `clusters` splits (bench/clusters.py)
CLUSTER_RESOLUTION = 1.0  # modularity resolution of `clusters` (bench/clusters.py): above 1 a compact group holding much of a folder is cut in two
CLUSTER_SAMPLE = 5000  # above this many images `clusters` splits a sample and assigns the rest to the nearest
MAX_UPLOAD_MB = 25  # the largest upload `imgembed serve` takes


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


def setting(default: Any, help: str | None = None, *, choices: tuple[str, ...] | None = None,
            bounds: tuple[float | None, float | None] | None = None, min_open: bool = False,
            max_open: bool = False, metavar: str | None = None, cli: bool = True) -> Any:
    """A :class:`TrainConfig` field and what ``imgembed train`` shows for it: its ``--help``
    text, the choices or the ``(low, high)`` bounds it takes (``None`` for no bound; open ends
    with ``min_open``/``max_open``), a metavar; ``cli=False`` keeps it off the command line. The
    option's flag is the field's name with dashes; its type is the field's."""
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds, "min_open": min_open,
                                            "max_open": max_open, "metavar": metavar, "cli": cli})


@dataclass
class TrainConfig:
    model: str = setting(DEFAULT_MODEL, "Backbone to train on.")
    weights: str = setting(DEFAULT_WEIGHTS, metavar="imagenet|none|PATH")
    dim: int = setting(128, "Embedding dimension of the mlp and linear heads (blend keeps the backbone's, twice).",
                       bounds=(2, 4096))
    head: str = setting("blend", "blend: the untrained embedding plus a WCCN-initialised projection, weighed on "
                        "validation (docs/quality.md); mlp: Linear-BN-ReLU-Linear; linear: one Linear layer.",
                        choices=HEADS)
    hidden: int = setting(1024, "Hidden width of the mlp head.", bounds=(2, 8192))
    loss: str = setting("triplet", choices=LOSSES)
    margin: float = setting(0.2, "Triplet margin (distance units).", bounds=(0, 2))
    miner: str = setting("batch-hard", choices=MINERS)
    pos_margin: float = setting(0.0, "Contrastive: positives closer than this cost nothing.", bounds=(0, 2))
    neg_margin: float = setting(1.0, "Contrastive: negatives farther than this cost nothing.", bounds=(0, 2))
    classes_per_batch: int = setting(16, bounds=(2, None))
    images_per_class: int = setting(4, bounds=(2, None))
    epochs: int = setting(50, bounds=(1, None))
    lr: float = setting(1e-3, bounds=(0, None), min_open=True)
    weight_decay: float = setting(1e-4, cli=False)
    views: int = setting(3, "Frozen mode: cached views per image (1 plain + augmented ones).", bounds=(1, 64))
    finetune_blocks: int = setting(0, "Also train the last N backbone stages on augmented images (slow on a CPU).",
                                   bounds=(0, None))
    val_split: float = setting(0.2, bounds=(0, 1), max_open=True)
    split: str = setting("images", "Hold out a share of each class's images, or whole classes (open set).",
                         choices=SPLITS)
    patience: int = setting(10, "Stop after this many epochs without a better validation mAP@R (0: never).",
                            bounds=(0, None))
    seed: int = setting(0)
    # fit on augmented views of unlabelled images (see blend.fit_unlabelled)
    unlabelled: bool = setting(False, "Self-supervised: fit the head on augmented views of every image under "
                               "DATA_DIR, labels ignored.")
    # how the backbone's features are computed:
    batch_size: int = setting(64, "Images per backbone pass when computing features.", bounds=(1, 4096))
    workers: int | None = setting(None, "Decoding processes.", bounds=(0, 64))
    precision: str = setting("auto", choices=PRECISIONS)

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
