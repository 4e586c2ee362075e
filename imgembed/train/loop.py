"""Fitting the projection head (and optionally the last backbone stages) with metric learning.

Frozen mode (the default) computes backbone features once per image and view through the
:class:`~imgembed.train.featcache.FeatureCache`, then trains only the head on them, which takes
seconds to minutes on a CPU. ``finetune_blocks > 0`` also trains the last trunk modules on
freshly augmented images each epoch.

Each epoch draws P classes x K images per batch, mines triplets (or takes all pairs), steps
AdamW under a cosine learning-rate schedule and measures retrieval on the validation part.
The best epoch (by mAP@R) is written to ``out`` as a self-describing checkpoint; the full
training state goes to ``<out>.resume.pt`` after every epoch so that an interrupted run can
continue with ``resume=True``.

Over 400 lines because the frozen and fine-tuning runners share the loop, its resume state and
the checkpoint written at the end: split, each half would need the other's private state.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..collection.metrics import retrieval_metrics
from ..config import TrainConfig
from ..errors import InputError, ModelError
from ..imaging.files import atomic_path
from ..inference.lifetime import worker_init_fn
from ..model.network import EmbeddingModel, load_model, save_checkpoint
from ..model.precision import autocast
from .data import LabelledSet, pk_batches, scan_labelled, scan_unlabelled, split
from .featcache import FeatureCache, augmentations
from .losses import contrastive_loss, triplet_loss


@dataclass
class EpochLog:
    epoch: int
    loss: float
    metrics: dict
    lr: float
    seconds: float
    best: bool

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "loss": round(self.loss, 6), "lr": self.lr, "seconds": round(self.seconds, 3),
                "best": self.best, **{k: _round(v) for k, v in self.metrics.items()}}


@dataclass
class TrainResult:
    checkpoint: str
    classes: list[str]
    dropped_classes: dict[str, int]
    failed: list[tuple[str, str]]
    train_images: int
    val_images: int
    baseline: dict  # untrained backbone on the validation part
    metrics: dict  # the kept (best) epoch on the validation part
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    feature_seconds: float
    train_seconds: float
    history: list[EpochLog] = field(default_factory=list)
    blend_weight: float | None = None  # blend head: 0 means the untrained embedding won validation
    onnx: str | None = None  # the export beside the checkpoint, for installs without torch
    onnx_problem: str | None = None  # why there is none

    @property
    def kept_untrained(self) -> bool:
        return self.blend_weight == 0

    def to_dict(self) -> dict:
        return {
            "checkpoint": self.checkpoint, "classes": len(self.classes), "train_images": self.train_images,
            "val_images": self.val_images, "dropped_classes": self.dropped_classes,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "baseline": {k: _round(v) for k, v in self.baseline.items()},
            "metrics": {k: _round(v) for k, v in self.metrics.items()},
            "best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "stopped_early": self.stopped_early,
            "feature_seconds": round(self.feature_seconds, 2), "train_seconds": round(self.train_seconds, 2),
            "history": [h.to_dict() for h in self.history], "onnx": self.onnx, "onnx_problem": self.onnx_problem,
            **({"blend_weight": self.blend_weight, "kept_untrained": self.kept_untrained}
               if self.blend_weight is not None else {}),
        }


def _round(v):
    return round(v, 6) if isinstance(v, float) else v


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Learning rate for 0-based ``epoch``: cosine decay from ``base`` to 5% of it."""
    t = epoch / max(1, epochs - 1)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def metric_loss(config: TrainConfig, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if config.loss == "triplet":
        return triplet_loss(embeddings, labels, margin=config.margin, miner=config.miner)
    return contrastive_loss(embeddings, labels, pos_margin=config.pos_margin, neg_margin=config.neg_margin)


def resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume.pt")


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def train(data_dir: str | Path, out: str | Path, config: TrainConfig | None = None, *,
          cache_dir: str | Path, resume: bool = False, on_epoch: Callable[[EpochLog], None] | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Train on the labelled folder ``data_dir`` and write the best checkpoint to ``out``."""
    config = config or TrainConfig()
    config.check()
    out = Path(out)
    if config.unlabelled:
        data, dropped = scan_unlabelled(data_dir), {}
        train_idx, val_idx = np.arange(len(data.paths)), np.zeros(0, np.int64)
    else:
        data, dropped = scan_labelled(data_dir)
        train_idx, val_idx = split(data, config.val_split, config.split, config.seed)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    state = _load_resume(out, config) if resume else None
    if config.finetune_blocks > 0:
        runner = _FinetuneRunner(config, data, train_idx, val_idx, progress)
    else:
        runner = _FrozenRunner(config, data, train_idx, val_idx, cache_dir, progress)
    if config.head == "blend" and config.finetune_blocks == 0:
        return _train_blend(_Job(config, data, dropped, runner, train_idx, val_idx, out, rng, on_epoch))
    head_config = config.head_config()
    trainable = runner.build(head_config)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)

    history: list[EpochLog] = []
    best, best_epoch, start_epoch, bad_epochs = -1.0, 0, 0, 0
    if state is not None:
        runner.model.load_state_dict(state["model_state"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = state["numpy_rng"]
        best, best_epoch, bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        start_epoch = state["epoch"] + 1
        history = [EpochLog(**h) for h in state["history"]]

    baseline = runner.evaluate(untrained=True) if len(val_idx) else {}
    started = time.perf_counter()
    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        lr = cosine_lr(config.lr, epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = runner.train_epoch(optimizer, rng)
        metrics = runner.evaluate() if len(val_idx) else {}
        score = metrics.get("map_at_r", -loss)  # without validation, the lowest loss is best
        improved = score > best
        if improved:
            best, best_epoch, bad_epochs = score, epoch + 1, 0
            _save(runner, config, data, out, metrics, baseline, epoch + 1)
        else:
            bad_epochs += 1
        log = EpochLog(epoch + 1, loss, metrics, lr, time.perf_counter() - t0, improved)
        history.append(log)
        _save_resume(_Job(config, data, dropped, runner, train_idx, val_idx, out, rng, on_epoch), optimizer,
                     epoch, (best, best_epoch, bad_epochs), history)
        if on_epoch:
            on_epoch(log)
        if len(val_idx) and config.patience and bad_epochs >= config.patience:
            stopped_early = True
            break
    if not out.is_file():
        raise ModelError(f"no epoch was trained (epochs={config.epochs}); nothing written to {out}")
    resume_path(out).unlink(missing_ok=True)
    kept = next((h.metrics for h in history if h.epoch == best_epoch), {})
    return _with_export(out, TrainResult(
        checkpoint=str(out), classes=data.classes, dropped_classes=dropped,
        failed=[(str(data.paths[i]), r) for i, r in runner.failed], train_images=len(train_idx),
        val_images=len(val_idx), baseline=baseline, metrics=kept, best_epoch=best_epoch, epochs_run=epoch + 1,
        stopped_early=stopped_early, feature_seconds=runner.feature_seconds,
        train_seconds=time.perf_counter() - started, history=history))


@dataclass
class _Job:
    """One run of :func:`train`, as it set it up, for the code that fits and saves."""

    config: TrainConfig
    data: LabelledSet
    dropped: dict
    runner: "_FrozenRunner | _FinetuneRunner"
    train_idx: np.ndarray
    val_idx: np.ndarray
    out: Path
    rng: np.random.Generator
    on_epoch: Callable[[EpochLog], None] | None


def _train_blend(job: _Job) -> TrainResult:
    """The default head: see :mod:`imgembed.train.blend`. Seconds on a CPU, so it does not resume."""
    from . import blend

    config, data, runner, rng, on_epoch = job.config, job.data, job.runner, job.rng, job.on_epoch
    train_idx, val_idx, out, dropped = job.train_idx, job.val_idx, job.out, job.dropped
    started = time.perf_counter()
    loss_fn = lambda emb, labels: metric_loss(config, emb, labels)  # noqa: E731
    batches = lambda labels: pk_batches(labels, config.classes_per_batch, config.images_per_class, rng)  # noqa: E731
    val_ok = len(runner.val_labels) > 0 and len(np.unique(runner.val_labels)) >= 2
    parts = runner.base.tap_dims
    history: list[EpochLog] = []
    if config.unlabelled:
        weight, epochs, metrics, baseline = blend.UNLABELLED_WEIGHT, 0, {}, {}
        feats, labels = runner.train_feats, runner.train_labels
    elif val_ok:
        result = blend.fit(runner.train_feats, runner.train_labels, runner.val_feats[:, 0], runner.val_labels,
                           blend.Fitting(config.epochs, config.lr, loss_fn, batches, parts, seed=config.seed))
        for epoch, loss, weight, metrics in result.history:
            log = EpochLog(epoch, loss, {**metrics, "weight": weight}, config.lr, 0.0, epoch == result.epochs)
            history.append(log)
            if on_epoch:
                on_epoch(log)
        weight, epochs, metrics, baseline = result.weight, result.epochs, result.validation, result.untrained
        feats = torch.cat([runner.train_feats, runner.val_feats])
        labels = np.concatenate([runner.train_labels, runner.val_labels])
    else:  # nothing to choose on: the closed form, at an even blend
        weight, epochs, metrics, baseline = 1.0, 0, {}, {}
        feats, labels = runner.train_feats, runner.train_labels
    model = runner.base
    if weight > 0:
        # unlabelled: each image is its own class, so WCCN learns what augmentations change
        linear = blend.refit(feats, labels, blend.Fitting(epochs, config.lr, loss_fn, batches, parts))
        head_config = blend.head_config(parts, linear.out_features, weight, model.taps)
        model = EmbeddingModel(model.backbone_name, model.backbone, model.weights_id, model.preprocess,
                               head_config, pooling=model.pooling)
        model.folded = runner.base.folded
        model.head.linear.load_state_dict(linear.state_dict())
    runner.model = model
    _save(runner, config, data, out, metrics, baseline, epochs)
    resume_path(out).unlink(missing_ok=True)
    return _with_export(out, TrainResult(
        checkpoint=str(out), classes=data.classes, dropped_classes=dropped,
        failed=[(str(data.paths[i]), r) for i, r in runner.failed], train_images=len(train_idx),
        val_images=len(val_idx), baseline=baseline, metrics=metrics, best_epoch=epochs,
        epochs_run=config.epochs if val_ok and not config.unlabelled else 0, stopped_early=False, feature_seconds=runner.feature_seconds,
        train_seconds=time.perf_counter() - started, history=history, blend_weight=weight))


def _with_export(out: Path, result: TrainResult) -> TrainResult:
    """Write the checkpoint's ONNX export beside it (:func:`imgembed.inference.runtime.write_beside`), so
    that an install without torch indexes and searches with it. The checkpoint stands without
    it: a failed export is reported in the result, not raised."""
    from ..inference.runtime import write_beside

    try:
        result.onnx = str(write_beside(load_model(str(out), precision="fp32"), out))
    except ModelError as e:
        result.onnx_problem = str(e)
    except Exception as e:  # noqa: BLE001 - the exporter's own errors (an op it lacks)
        result.onnx_problem = f"ONNX export failed ({type(e).__name__}: {str(e)[:160]})"
    return result


def _save(runner, config: TrainConfig, data: LabelledSet, out: Path, metrics: dict, baseline: dict, epoch: int):
    extra = {"classes": data.classes, "train_config": asdict(config), "metrics": metrics,
             "baseline_metrics": baseline, "epoch": epoch}
    own_backbone = config.finetune_blocks > 0 or config.weights not in ("imagenet", "none")
    save_checkpoint(runner.model, out, weights=config.weights, extra=extra, include_backbone=own_backbone,
                    backbone_trained=config.finetune_blocks > 0)


def _save_resume(job: _Job, optimizer, epoch: int, best: tuple[float, int, int], history: list) -> None:
    """The whole state after ``epoch`` (``best``: score, its epoch, epochs since), for ``--resume``."""
    config, runner, rng, out = job.config, job.runner, job.rng, job.out
    (best, best_epoch, bad_epochs) = best
    state = {
        "config": asdict(config), "epoch": epoch, "model_state": runner.trainable_state(),
        "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
        "numpy_rng": rng.bit_generator.state, "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
        "history": [asdict(h) for h in history],
    }
    with atomic_path(resume_path(out)) as tmp:
        torch.save(state, tmp)


def _load_resume(out: Path, config: TrainConfig) -> dict:
    path = resume_path(out)
    if not path.is_file():
        raise InputError(f"nothing to resume: {path} does not exist (run without --resume to start)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not config.same_run(TrainConfig(**state["config"])):
        raise InputError(f"{path} was written by a run with other settings; use the same options, "
                         "or start afresh without --resume")
    return state


class _FrozenRunner:
    """Head-only training on cached backbone features."""

    def __init__(self, config, data, train_idx, val_idx, cache_dir, progress):
        self.config, self.data, self.progress = config, data, progress
        own_weights = config.weights not in ("imagenet", "none")
        # A backbone from a weights file is stored in the checkpoint, so it must stay unfolded.
        self.base = load_model(config.model, config.weights, config.precision, inference=not own_weights)
        if config.head == "blend" and self.base.head_config is None:
            self.base.use_blend_taps()
        cache = FeatureCache(cache_dir, self.base)
        t0 = time.perf_counter()
        self.failed = []
        self.train_feats, self.train_labels = self._features(cache, train_idx, config.views, "features (train)")
        # The blend head is fitted again on all images at the end, so validation needs every view.
        val_views = config.views if config.head == "blend" else 1
        self.val_feats, self.val_labels = self._features(cache, val_idx, val_views, "features (validation)")
        self.feature_seconds = time.perf_counter() - t0
        if len(np.unique(self.train_labels)) < 2:
            raise InputError("fewer than 2 classes left to train on")

    def _features(self, cache, idx, views, stage):
        if not len(idx):
            return torch.zeros((0, views, self.base.pooled_dim)), np.zeros(0, np.int64)
        paths = [self.data.paths[i] for i in idx]
        got = cache.features(paths, views, batch_size=self.config.batch_size, workers=self.config.workers,
                             progress=(lambda d, t: self.progress(stage, d, t)) if self.progress else None)
        self.failed += [(int(idx[pos]), reason) for pos, reason in got.failed]
        return torch.from_numpy(got.features), self.data.labels[idx[got.ok]]

    def build(self, head_config: dict):
        self.model = EmbeddingModel(self.base.backbone_name, self.base.backbone, self.base.weights_id,
                                    self.base.preprocess, head_config, pooling=self.base.pooling)
        self.model.folded = self.base.folded
        return list(self.model.head.parameters())

    def trainable_state(self) -> dict:
        return {f"head.{k}": v for k, v in self.model.head.state_dict().items()}

    def train_epoch(self, optimizer, rng) -> float:
        head = self.model.head.train()
        losses = []
        batches = list(pk_batches(self.train_labels, self.config.classes_per_batch, self.config.images_per_class, rng))
        for n, batch in enumerate(batches):
            views = rng.integers(0, self.train_feats.shape[1], len(batch))
            x = self.train_feats[torch.from_numpy(batch), torch.from_numpy(views)]
            loss = metric_loss(self.config, F.normalize(head(x), dim=1), torch.from_numpy(self.train_labels[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    @torch.no_grad()
    def evaluate(self, untrained: bool = False) -> dict:
        x = self.val_feats[:, 0]
        emb = F.normalize(x if untrained else self.model.head.eval()(x), dim=1)
        return retrieval_metrics(emb.numpy(), self.val_labels)


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths, transform, min_side: int, timeout: float | None = None):
        from ..imaging.decode import DEFAULT_DECODE_TIMEOUT

        self.paths, self.transform, self.min_side = paths, transform, min_side
        self.timeout = DEFAULT_DECODE_TIMEOUT if timeout is None else timeout

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from ..imaging.decode import load_for_model

        try:
            return i, self.transform(load_for_model(self.paths[i], min_side=self.min_side, timeout=self.timeout).image), None
        except Exception as e:  # reported, and left out of the batch
            return i, None, str(e)


def _collate(items):
    return items


class _FinetuneRunner:
    """Trains the last ``finetune_blocks`` trunk modules and the head on augmented images."""

    def __init__(self, config, data, train_idx, val_idx, progress):
        self.config, self.data, self.train_idx, self.val_idx, self.progress = config, data, train_idx, val_idx, progress
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.failed = []
        self.bad: set[int] = set()
        self.feature_seconds = 0.0

    def build(self, head_config: dict):
        base = load_model(self.config.model, self.config.weights, self.config.precision, inference=False)
        self.model = EmbeddingModel(base.backbone_name, base.backbone, base.weights_id, base.preprocess, head_config,
                                    pooling=base.pooling)
        self.model.source = base.source
        self.model.to(self.device).set_precision(self.config.precision)
        trunk = self.model.backbone
        n = min(self.config.finetune_blocks, len(trunk))
        for p in trunk.parameters():
            p.requires_grad_(False)
        self.tuned = trunk[len(trunk) - n:]
        for p in self.tuned.parameters():
            p.requires_grad_(True)
        self.augment = augmentations(self.model.preprocess)
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state(self) -> dict:
        return {k: v for k, v in self.model.state_dict().items()
                if k.startswith("head.") or any(k.startswith(f"backbone.{len(self.model.backbone) - len(self.tuned) + i}.")
                                                 for i in range(len(self.tuned)))}

    def _train_mode(self) -> None:
        # BatchNorm statistics stay frozen: P x K batches are too small to estimate them.
        self.model.eval()
        self.tuned.train()
        for m in self.tuned.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        self.model.head.train()

    def train_epoch(self, optimizer, rng) -> float:
        self._train_mode()
        labels = self.data.labels[self.train_idx]
        batches = [self.train_idx[b] for b in pk_batches(labels, self.config.classes_per_batch,
                                                         self.config.images_per_class, rng)]
        loader = torch.utils.data.DataLoader(_Images(self.data.paths, self.augment, self.model.preprocess.min_side), batch_sampler=batches,
                                             num_workers=self.config.workers or 0, collate_fn=_collate,
                                             worker_init_fn=worker_init_fn())
        losses = []
        for n, items in enumerate(loader):
            good = [(i, t) for i, t, err in items if err is None]
            for i, _, err in items:
                if err is not None and i not in self.bad:
                    self.bad.add(i)
                    self.failed.append((i, err))
            if len(good) < 2:
                continue
            x = torch.stack([t for _, t in good]).to(self.device).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(self.data.labels[[i for i, _ in good]]).to(self.device)
            with autocast(self.model.precision, self.device):
                emb = self.model(x)
            loss = metric_loss(self.config, F.normalize(emb.float(), dim=1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if self.progress:
                self.progress("fine-tuning", n + 1, len(batches))
        return float(np.mean(losses)) if losses else 0.0

    @torch.no_grad()
    def evaluate(self, untrained: bool = False) -> dict:
        from ..inference.pool import embed_files

        self.model.eval()
        paths = [self.data.paths[i] for i in self.val_idx]
        if untrained:
            model = load_model(self.config.model, self.config.weights, self.config.precision)
        else:
            model = self.model
        vecs, labels = [], []
        for batch in embed_files(model, paths, batch_size=self.config.batch_size, workers=self.config.workers):
            vecs.append(batch.vectors)
            labels.append(self.data.labels[self.val_idx[batch.ok]])
        return retrieval_metrics(np.concatenate(vecs), np.concatenate(labels))
