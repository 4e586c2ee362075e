"""The ``imgembed`` command line. The only module that prints, reads the environment or picks
exit codes: 0 success, 1 a runtime error (one line; the traceback with ``--debug``), 2 usage.

Heavy modules (torch, faiss) are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import click

from .. import __version__
from ..config import DEFAULT_KEEP, HEADS, LOSSES, MINERS, NEGATIVE_WEIGHT, PRECISIONS, RUNTIMES, SPLITS, TrainConfig
from ..errors import ImgembedError

DEFAULT_INDEX = "indexes/default"
_TRAIN = TrainConfig()  # the defaults `train` shows are TrainConfig's own
DEFAULT_MODEL = "efficientnet_lite0"


class _Main(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # e.g. `imgembed info | head`: the reader left, nothing to report
            sys.stdout = None
            ctx.exit(141)
        except KeyboardInterrupt:
            click.echo("interrupted: work committed so far is kept; re-run the same command to resume", err=True)
            ctx.exit(130)
        except ImgembedError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)
        except ModuleNotFoundError as e:
            if e.name not in ("torch", "torchvision") or (ctx.obj and ctx.obj.get("debug")):
                raise
            click.echo(f"error: this needs {e.name}, which this install lacks: pip install 'imgembed[train]'",
                       err=True)
            ctx.exit(1)
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: unexpected {type(e).__name__}: {e} (re-run with --debug for the traceback)",
                       err=True)
            ctx.exit(1)


def _index_option(f):
    return click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, envvar="IMGEMBED_INDEX",
                        type=click.Path(file_okay=False),
                        help="Index directory (env: IMGEMBED_INDEX).")(f)


_precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
    help="Torch inference precision; auto = bf16 where the CPU/GPU runs it natively (ONNX Runtime runs fp32).")
_runtime_option = click.option(
    "--runtime", type=click.Choice(RUNTIMES), default="auto", show_default=True,
    help="Inference engine; auto = ONNX Runtime where installed (model exported once and cached), else torch; "
         "`index` takes OpenVINO where installed.")


def _indexes_option(f):
    return click.option("--index", "index_dirs", multiple=True, default=(DEFAULT_INDEX,), show_default=True,
                        envvar="IMGEMBED_INDEX", type=click.Path(file_okay=False),
                        help="Index directory (env: IMGEMBED_INDEX). Repeat it to search several indexes built "
                             "by the same model as one.")(f)


def _model_options(default_model: str | None):
    def deco(f):
        f = _runtime_option(f)
        f = _precision_option(f)
        f = click.option("--weights", default="imagenet", show_default=True, metavar="imagenet|none|PATH",
                         help="Backbone weights: ImageNet, random init, or a local state-dict file.")(f)
        return click.option("--model", "model_name", default=default_model, show_default=default_model is not None,
                            metavar="NAME|CHECKPOINT",
                            help="Backbone name (see `imgembed models`) or a .pt checkpoint from `imgembed train`."
                            + ("" if default_model else " Default: the model that built the index."))(f)
    return deco


_target_recall_option = click.option(
    "--target-recall", type=click.FloatRange(0.5, 1.0), default=None,
    help="Recall@10 an approximate index is tuned to reach, measured on its own vectors "
         "[default: the index's own; 0.95 for a new index].")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
_wait_option = click.option("--wait", is_flag=True, help="If another process is writing this index, wait for it.")


def _html_options(f):
    f = click.option("--open", "open_page", is_flag=True, help="Open the --html page in the default browser.")(f)
    return click.option("--html", "html_file", type=click.Path(dir_okay=False),
                        help="Also write a self-contained HTML page of the results (thumbnails embedded).")(f)


def _gallery():
    from ..web import gallery  # only when a page is asked for: it is a tenth of a cold query's imports

    return gallery


def _write_page(html_file: str | None, page_html, open_page: bool) -> None:
    """Write the page (built lazily by ``page_html()``) atomically, and open it when asked."""
    if not html_file:
        if open_page:
            raise click.UsageError("--open needs --html FILE")
        return
    import webbrowser

    from ..imaging.files import atomic_path

    with atomic_path(html_file) as tmp:
        tmp.write_text(page_html(), encoding="utf-8")
    click.echo(f"wrote {html_file}", err=True)
    if open_page and not webbrowser.open(Path(html_file).resolve().as_uri()):
        click.echo("no browser found to open it", err=True)
_max_pixels_option = click.option("--max-pixels", type=click.IntRange(1), default=None,
                                  help="Reject larger images as likely decompression bombs [default: 150,000,000].")
_queries = click.argument("queries", nargs=-1, required=True,
                          type=click.Path(exists=True, dir_okay=False, readable=True))


def _max_pixels(value):
    from ..imaging.decode import DEFAULT_MAX_PIXELS

    return value or DEFAULT_MAX_PIXELS


def _load_model(name: str, weights: str, precision: str, index_dir: str | None = None, runtime: str = "auto"):
    from ..api import load_model

    return load_model(name, weights, precision, index=index_dir, runtime=runtime)


def _searcher(index_dirs: tuple[str, ...], model_name: str | None, weights: str, precision: str, runtime: str,
              max_pixels: int | None):
    """The indexes' own model, or ``--model`` checked against them."""
    from ..api import Searcher

    model = _load_model(model_name, weights, precision, index_dirs[0], runtime) if model_name else None
    searcher = Searcher(list(index_dirs), model, max_pixels=_max_pixels(max_pixels), precision=precision,
                        runtime=runtime)
    for idx in searcher.indexes:
        _warn_problem(idx.problem, str(idx.directory))
    return searcher


def _warn_problem(problem: str | None, index_dir: str) -> None:
    if problem:
        click.echo(f"warning: {problem}; used a copy rebuilt in memory from the stored vectors; "
                   f"`imgembed check --repair --index {index_dir}` fixes the file", err=True)


def _emit_json(data) -> None:
    # ASCII escapes keep the output valid UTF-8 JSON even for file names that are not UTF-8
    click.echo(json.dumps(data, indent=2))


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imgembed")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Image similarity search: index a folder of images, then search, classify and compare.

    \b
      imgembed index ./photos          build or update indexes/default
      imgembed search query.jpg        the most similar indexed images
      imgembed classify query.jpg      label by a vote of the nearest neighbours
      imgembed compare a.jpg b.jpg     cosine similarity of two images
    """
    ctx.ensure_object(dict)["debug"] = debug
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as their own bytes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@_index_option
@_model_options(None)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Decoding processes [default: one per CPU core, at most 4].")
@_max_pixels_option
@click.option("--no-prune", is_flag=True, help="Keep entries of files that disappeared from FOLDER.")
@click.option("--allow-removal", is_flag=True,
              help="Remove entries even when all of FOLDER's, or over half and at least 50, disappeared "
                   "(refused by default: an unmounted drive looks like an empty folder).")
@click.option("--index-type", default=None, metavar="auto|flat|hnsw|ivfpq|ondisk[:CODE]|FACTORY",
              help="FAISS index type [default: the index's own; auto for a new index].")
@_target_recall_option
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where decoding and the model run: this process, or a Ray cluster (pip install 'imgembed[ray]').")
@click.option("--ray-address", metavar="ADDRESS", default=None,
              help="Ray cluster to join with --engine ray, e.g. 10.0.0.5:6379 [default: $RAY_ADDRESS, else a local cluster].")
@click.option("--ray-actors", type=click.IntRange(1), default=None,
              help="Model replicas with --engine ray [default: one per GPU, else one per CPU].")
@click.option("--commit-every", type=click.IntRange(1), default=256, show_default=True,
              help="Images per committed chunk: an interrupted run keeps every finished chunk.")
@click.option("--decode-timeout", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
              help="Seconds one image may take to decode before it is skipped.")
@_wait_option
@_json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def index(folder, index_dir, model_name, weights, precision, runtime, batch_size, workers, max_pixels, no_prune, allow_removal,
          index_type, target_recall, engine, ray_address, ray_actors, commit_every, decode_timeout, wait, as_json,
          quiet):
    """Embed the images under FOLDER into the index (sub-folder names become labels).

    Re-running is cheap: unchanged files are not read again, changed ones are re-embedded,
    and files that cannot be decoded are reported and skipped.
    """
    from tqdm import tqdm

    from ..api import IndexOptions, LocalPool, RayCluster, index_folder

    if engine != "ray" and (ray_address or ray_actors):
        raise click.UsageError("--ray-address and --ray-actors need --engine ray")
    executor = RayCluster(ray_address, ray_actors) if engine == "ray" else LocalPool(workers)
    executor.check()  # before a model is loaded for it
    options = IndexOptions(batch_size=batch_size, max_pixels=_max_pixels(max_pixels), decode_timeout=decode_timeout,
                           prune=not no_prune, allow_removal=allow_removal, commit_every=commit_every,
                           index_type=index_type, target_recall=target_recall, wait=wait, precision=precision,
                           runtime=runtime)

    # Without --model or --weights an existing index keeps its own model, loaded only if
    # something needs embedding (an unchanged folder never imports torch); a new one gets the
    # default backbone.
    model = None
    if model_name or weights != "imagenet":
        from ..inference.runtime import for_indexing

        model = _load_model(model_name or DEFAULT_MODEL, weights, precision, index_dir,
                            executor.runtime or for_indexing(runtime, precision))
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="img", desc="embedding", file=sys.stderr, disable=quiet or None)
        bar.update(done - bar.n)

    try:
        # Nothing but the report goes to stdout: Ray's driver prints cluster events there (a lost
        # node's raylet log, say), which would break --json.
        with contextlib.redirect_stdout(sys.stderr):
            report = index_folder(folder, index_dir, model, options, executor=executor, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        _emit_json(report.to_dict())
        return
    if report.embedded:
        click.echo(f"indexed {report.root} into {report.index}: {report.embedded} embedded in "
                   f"{report.elapsed_s:.1f} s ({report.images_per_s:.1f} images/s)")
    else:
        click.echo(f"indexed {report.root} into {report.index}: nothing new to embed ({report.elapsed_s:.1f} s)")
    click.echo(f"  added {report.added}, updated {report.updated}, moved {report.moved}, restored {report.restored}, "
               f"removed {report.removed}, unchanged {report.unchanged}, skipped {len(report.skipped)}; "
               f"{report.total} images in the index")
    for path, reason in report.skipped:
        click.echo(f"  skipped {path}: {reason}")


@main.command()
@_queries
@_indexes_option
@click.option("-k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Results per query.")
@_model_options(None)
@_max_pixels_option
@click.option("--not", "negatives", multiple=True, type=click.Path(dir_okay=False),
              help="A counter-example (repeatable): one query combined from every QUERY minus these.")
@click.option("--combine", is_flag=True, help="Search once for what all QUERY images share (implied by --not).")
@click.option("--not-weight", type=click.FloatRange(0, 2), default=NEGATIVE_WEIGHT, show_default=True,
              help="How strongly counter-examples push results away.")
@_html_options
@_json_option
def search(queries, index_dirs, k, negatives, combine, not_weight, model_name, weights, precision, runtime,
           max_pixels, html_file, open_page, as_json):
    """Find the indexed images most similar to each QUERY image; with --not or --combine, the
    images most similar to all QUERY images together and least to the --not ones (the examples
    themselves are left out)."""
    from ..api import QueryResult

    with _searcher(index_dirs, model_name, weights, precision, runtime, max_pixels) as searcher:
        if negatives or combine:
            name = " + ".join(queries) + "".join(f" - {n}" for n in negatives)
            results = [QueryResult(name, searcher.search_combined(list(queries), list(negatives), k,
                                                                  weight=not_weight))]
        else:
            results = searcher.search(list(queries), k)
    _write_page(html_file, lambda: _gallery().search_page(results), open_page)
    if as_json:
        _emit_json([r.to_dict() for r in results])
        return
    for n, r in enumerate(results):
        if n:
            click.echo()
        click.echo(f"query: {r.query}")
        width = max([5] + [len(h.row.label or "-") for h in r.hits])
        click.echo(f"{'rank':>4}  {'score':>6}  {'label':<{width}}  path")
        for h in r.hits:
            click.echo(f"{h.rank:>4}  {h.score:>6.4f}  {h.row.label or '-':<{width}}  {h.row.full_path}")


@main.command()
@_queries
@_indexes_option
@click.option("-k", type=click.IntRange(1, 1000), default=5, show_default=True, help="Neighbours that vote.")
@_model_options(None)
@_max_pixels_option
@_html_options
@_json_option
def classify(queries, index_dirs, k, model_name, weights, precision, runtime, max_pixels, html_file, open_page,
             as_json):
    """Label each QUERY image by a similarity-weighted vote of its k nearest indexed images."""
    with _searcher(index_dirs, model_name, weights, precision, runtime, max_pixels) as searcher:
        results = searcher.classify(list(queries), k)
    _write_page(html_file, lambda: _gallery().classify_page(results), open_page)
    if as_json:
        _emit_json([r.to_dict() for r in results])
        return
    for r in results:
        votes = ", ".join(f"{label} {n}" for label, n in sorted(r.vote.votes.items(), key=lambda kv: -kv[1]))
        click.echo(f"{r.query}: {r.vote.label or '(no labelled neighbours)'} "
                   f"(confidence {r.vote.confidence:.2f}; votes: {votes or 'none'})")


@main.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.argument("b", type=click.Path(exists=True, dir_okay=False, readable=True))
@_model_options(DEFAULT_MODEL)
@_max_pixels_option
@_json_option
def compare(a, b, model_name, weights, precision, runtime, max_pixels, as_json):
    """Cosine similarity of images A and B (1 = identical embeddings)."""
    from ..api import compare as compare_images

    score = compare_images(_load_model(model_name, weights, precision, runtime=runtime), a, b,
                           max_pixels=_max_pixels(max_pixels))
    if as_json:
        _emit_json({"a": a, "b": b, "score": round(score, 6)})
    else:
        click.echo(f"{score:.4f}  {a}  {b}")


@main.command()
@_index_option
@_json_option
def info(index_dir, as_json):
    """Describe an index: model, counts, labels and skipped files."""
    from ..api import index_info

    data = index_info(index_dir)
    _warn_problem(data["problem"], index_dir)
    if as_json:
        _emit_json(data)
        return
    m = data["manifest"]
    model = m["model"]
    click.echo(f"index:    {data['index']} ({data['size_bytes'] / 1e6:.1f} MB, format v{m['format_version']})")
    click.echo(f"model:    {model['backbone']} ({model['weights']}"
               + (f", checkpoint {model['checkpoint']}" if model.get("checkpoint") else "")
               + f"), {model['dim']}-d")
    f = m["faiss"]
    click.echo(f"vectors:  {f.get('index_type', 'flat')}: FAISS {f['factory']}"
               + (f" ({f['params']})" if f.get("params") else ""))
    click.echo(f"recall:   {_recall_line(m['recall']) if m.get('recall') else 'exact search (every vector compared)'}")
    click.echo(f"roots:    {', '.join(m.get('roots', [])) or '-'}")
    click.echo(f"updated:  {m.get('updated_at', '-')}")
    click.echo(f"images:   {data['images']}")
    labels = data["labels"]
    if any(labels):
        click.echo(f"labels:   {len([k for k in labels if k])}")
        for label, n in labels.items():
            click.echo(f"  {label or '(root, unlabelled)'}: {n}")
    click.echo(f"removed:  {data['tombstones']} kept for restoring (imgembed gc drops them)")
    click.echo(f"skipped:  {len(data['skipped'])}")
    for s in data["skipped"]:
        click.echo(f"  {s['path']}: {s['reason']}")


def _recall_line(check: dict) -> str:
    from ..index.recall import RecallCheck

    return RecallCheck.from_dict(check).describe()


def _default_cache() -> str:
    from ..imaging.files import user_cache

    return str(user_cache("features"))


_cache_option = click.option("--cache", "cache_dir", envvar="IMGEMBED_CACHE", default=None, type=click.Path(file_okay=False),
                             help="Feature cache directory (env: IMGEMBED_CACHE) [default: ~/.cache/imgembed/features].")


def _stage_bar(quiet: bool):
    """A progress callback ``(stage, done, total)`` that keeps one tqdm bar per stage."""
    from tqdm import tqdm

    bars = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", file=sys.stderr, disable=quiet or None,
                                     leave=False)
        bar.update(done - bar.n)

    progress.close = lambda: [b.close() for b in bars.values()]
    return progress


_METRIC_COLUMNS = [("precision_at_1", "P@1"), ("recall_at_1", "R@1"), ("recall_at_5", "R@5"),
                   ("recall_at_10", "R@10"), ("map_at_r", "mAP@R"), ("knn_accuracy", "kNN acc")]


def _metrics_line(metrics: dict) -> str:
    return "  ".join(f"{label} {metrics[key]:.3f}" for key, label in _METRIC_COLUMNS if key in metrics)


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write, e.g. models/mine.pt.")
@click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True, help="Backbone to train on.")
@click.option("--weights", default="imagenet", show_default=True, metavar="imagenet|none|PATH")
@click.option("--dim", type=click.IntRange(2, 4096), default=_TRAIN.dim, show_default=True,
              help="Embedding dimension of the mlp and linear heads (blend keeps the backbone's, twice).")
@click.option("--head", type=click.Choice(HEADS), default=_TRAIN.head, show_default=True,
              help="blend: the untrained embedding plus a WCCN-initialised projection, weighed on validation "
                   "(docs/quality.md); mlp: Linear-BN-ReLU-Linear; linear: one Linear layer.")
@click.option("--hidden", type=click.IntRange(2, 8192), default=_TRAIN.hidden, show_default=True, help="Hidden width of the mlp head.")
@click.option("--loss", type=click.Choice(LOSSES), default=_TRAIN.loss, show_default=True)
@click.option("--margin", type=click.FloatRange(0, 2), default=_TRAIN.margin, show_default=True, help="Triplet margin (distance units).")
@click.option("--miner", type=click.Choice(MINERS), default=_TRAIN.miner, show_default=True)
@click.option("--pos-margin", type=click.FloatRange(0, 2), default=_TRAIN.pos_margin, show_default=True,
              help="Contrastive: positives closer than this cost nothing.")
@click.option("--neg-margin", type=click.FloatRange(0, 2), default=_TRAIN.neg_margin, show_default=True,
              help="Contrastive: negatives farther than this cost nothing.")
@click.option("--classes-per-batch", type=click.IntRange(2), default=_TRAIN.classes_per_batch, show_default=True)
@click.option("--images-per-class", type=click.IntRange(2), default=_TRAIN.images_per_class, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=_TRAIN.epochs, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=_TRAIN.lr, show_default=True)
@click.option("--views", type=click.IntRange(1, 64), default=_TRAIN.views, show_default=True,
              help="Frozen mode: cached views per image (1 plain + augmented ones).")
@click.option("--finetune-blocks", type=click.IntRange(0), default=_TRAIN.finetune_blocks, show_default=True,
              help="Also train the last N backbone stages on augmented images (slow on a CPU).")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True), default=_TRAIN.val_split, show_default=True)
@click.option("--split", "split_by", type=click.Choice(SPLITS), default=_TRAIN.split, show_default=True,
              help="Hold out a share of each class's images, or whole classes (open set).")
@click.option("--patience", type=click.IntRange(0), default=_TRAIN.patience, show_default=True,
              help="Stop after this many epochs without a better validation mAP@R (0: never).")
@click.option("--seed", type=int, default=_TRAIN.seed, show_default=True)
@click.option("--unlabelled", is_flag=True,
              help="Self-supervised: fit the head on augmented views of every image under DATA_DIR, labels ignored.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same command.")
@_cache_option
@click.option("--batch-size", type=click.IntRange(1, 4096), default=_TRAIN.batch_size, show_default=True,
              help="Images per backbone pass when computing features.")
@click.option("--workers", type=click.IntRange(0, 64), default=None, help="Decoding processes.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@_json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
def train(data_dir, out, model_name, weights, dim, head, hidden, loss, margin, miner, pos_margin, neg_margin,
          classes_per_batch, images_per_class, epochs, lr, views, finetune_blocks, val_split, split_by, patience,
          seed, unlabelled, resume, cache_dir, batch_size, workers, precision, as_json, quiet):
    """Fit the embedding head to a labelled folder (one sub-folder per class), or with
    --unlabelled to any folder of images.

    Prints loss, Recall@1, mAP@R and k-NN accuracy on the validation part after each epoch and
    keeps the best epoch in --out, and its ONNX export beside it (OUT with .onnx), which
    installs without torch embed with; `imgembed index --model OUT` then indexes with it.
    """
    from ..model.backbones import require_torch

    require_torch("imgembed train")
    from ..train.loop import train as run_training

    config = TrainConfig(model=model_name, weights=weights, dim=dim, head=head, hidden=hidden, loss=loss,
                         margin=margin, miner=miner, pos_margin=pos_margin, neg_margin=neg_margin,
                         classes_per_batch=classes_per_batch, images_per_class=images_per_class, epochs=epochs,
                         lr=lr, views=views, finetune_blocks=finetune_blocks, val_split=val_split, split=split_by,
                         patience=patience, seed=seed, batch_size=batch_size, workers=workers, precision=precision,
                         unlabelled=unlabelled)
    progress = _stage_bar(quiet)
    echo = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo

    def on_epoch(log) -> None:
        if not quiet:
            echo(f"epoch {log.epoch:>3}  loss {log.loss:.4f}  {_metrics_line(log.metrics)}"
                 f"{'  *' if log.best else ''}  ({log.seconds:.1f} s)")

    try:
        result = run_training(data_dir, out, config, cache_dir=cache_dir or _default_cache(), resume=resume,
                              on_epoch=on_epoch, progress=progress)
    finally:
        progress.close()
    if as_json:
        _emit_json(result.to_dict())
        return
    for name, n in result.dropped_classes.items():
        click.echo(f"left out class {name or '(root)'!s}: {n} image(s), need 2+")
    for path, reason in result.failed:
        click.echo(f"skipped {path}: {reason}")
    if unlabelled:
        click.echo(f"fitted on augmented views of {result.train_images} unlabelled images; features "
                   f"{result.feature_seconds:.1f} s, fitting {result.train_seconds:.1f} s")
    else:
        click.echo(f"trained on {result.train_images} images of {len(result.classes)} classes, validated on "
                   f"{result.val_images}; features {result.feature_seconds:.1f} s, training {result.train_seconds:.1f} s")
    if result.baseline:
        click.echo(f"untrained: {_metrics_line(result.baseline)}")
        if result.kept_untrained:
            click.echo("validation: no trained head beat the untrained embedding, so the checkpoint is the "
                       "untrained model (indexes built with it match the plain backbone's quality)")
        elif result.blend_weight is not None:
            click.echo(f"trained:   {_metrics_line(result.metrics)}  (blend weight {result.blend_weight:g}, "
                       f"{result.best_epoch} fine-tuning epoch(s) from the closed form)")
        else:
            click.echo(f"trained:   {_metrics_line(result.metrics)}  (epoch {result.best_epoch} of {result.epochs_run}"
                       f"{', stopped early' if result.stopped_early else ''})")
    click.echo(f"wrote {result.checkpoint}" + (f" and {result.onnx}" if result.onnx else ""))
    if result.onnx_problem:
        click.echo(f"warning: no ONNX export beside it, so installs without torch cannot use it: "
                   f"{result.onnx_problem}", err=True)


@main.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@_json_option
def export_cmd(checkpoint, as_json):
    """Write CHECKPOINT's ONNX export beside it (mine.pt -> mine.onnx), as `train` does, so that
    an install without torch indexes and searches with it. Needs torch: for checkpoints written
    before `train` exported them."""
    from ..model.backbones import require_torch

    require_torch("imgembed export")
    from ..inference.runtime import write_beside
    from ..model.network import load_model

    dest = write_beside(load_model(checkpoint, precision="fp32"), checkpoint)
    if as_json:
        _emit_json({"checkpoint": checkpoint, "onnx": str(dest)})
        return
    click.echo(f"wrote {dest}")


@main.command()
@click.argument("data_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True, metavar="NAME|CHECKPOINT")
@click.option("--weights", default="imagenet", show_default=True, metavar="imagenet|none|PATH")
@click.option("--query", "query_dir", type=click.Path(exists=True, file_okay=False), help="Labelled query folder.")
@click.option("--gallery", "gallery_dir", type=click.Path(exists=True, file_okay=False), help="Labelled gallery folder.")
@click.option("--baseline", is_flag=True, help="Also evaluate the untrained backbone, side by side.")
@click.option("-k", "knn_k", type=click.IntRange(1, 1000), default=5, show_default=True, help="Neighbours for k-NN accuracy.")
@_cache_option
@click.option("--workers", type=click.IntRange(0, 64), default=None)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@_html_options
@_json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def evaluate(data_dir, model_name, weights, query_dir, gallery_dir, baseline, knn_k, cache_dir, workers, precision,
             html_file, open_page, as_json, quiet):
    """Retrieval quality on a labelled folder (leave-one-out) or --query DIR against --gallery DIR:
    Precision@1, Recall@1/5/10, mAP@R and k-NN accuracy."""
    from ..train.evaluate import evaluate as run_evaluation

    if (data_dir is None) == (query_dir is None or gallery_dir is None):
        raise click.UsageError("give DATA_DIR, or both --query DIR and --gallery DIR")
    progress = _stage_bar(quiet)
    try:
        rows, failed = run_evaluation(
            _load_model(model_name, weights, precision, runtime=_evaluate_runtime()), cache_dir=cache_dir or _default_cache(), data_dir=data_dir,
            query_dir=query_dir, gallery_dir=gallery_dir, baseline=baseline, knn_k=knn_k, workers=workers,
            progress=lambda d, t: progress("embedding", d, t))
    finally:
        progress.close()
    _write_page(html_file, lambda: _gallery().evaluation_page(rows), open_page)
    if as_json:
        _emit_json({"results": [r.to_dict() for r in rows], "skipped": [{"path": p, "reason": r} for p, r in failed]})
        return
    width = max(len("model"), *(len(r.name) for r in rows))
    click.echo(f"{'model':<{width}}  " + "  ".join(f"{label:>7}" for _, label in _METRIC_COLUMNS) + "  queries")
    for r in rows:
        click.echo(f"{r.name:<{width}}  " + "  ".join(f"{r.metrics[key]:>7.3f}" for key, _ in _METRIC_COLUMNS)
                   + f"  {r.metrics['queries']:>7}")
    for path, reason in failed:
        click.echo(f"skipped {path}: {reason}")


def _evaluate_runtime() -> str:
    """torch where installed (its feature cache shares the backbone between a checkpoint and its
    baseline), else ONNX Runtime."""
    from ..inference.runtime import torch_available

    return "torch" if torch_available() else "auto"


@main.command()
@_index_option
@click.option("--index-type", default=None, metavar="auto|flat|hnsw|ivfpq|ondisk[:CODE]|FACTORY",
              help="Rebuild as this type [default: the index's own].")
@_target_recall_option
@_wait_option
@_json_option
def rebuild(index_dir, index_type, target_recall, wait, as_json):
    """Rebuild the FAISS file from the vectors stored in the index (no images are read)."""
    from ..api import rebuild_index

    started = time.perf_counter()
    spec = rebuild_index(index_dir, index_type, target_recall=target_recall, wait=wait)
    if as_json:
        _emit_json(spec)
        return
    click.echo(f"rebuilt {index_dir} as {spec['index_type']}: FAISS {spec['factory']}"
               + (f" ({spec['params']})" if spec["params"] else "") + f" in {time.perf_counter() - started:.1f} s")
    if spec.get("recall"):
        click.echo(f"  {_recall_line(spec['recall'])}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@_index_option
@_wait_option
@_json_option
def remove(paths, index_dir, wait, as_json):
    """Drop the entries of files, or of everything under folders, from the index.

    Their vectors are kept for 30 days (`imgembed gc` drops them now): the same files indexed
    again are restored without embedding.
    """
    from ..api import remove_paths

    result = remove_paths(index_dir, paths, wait=wait)
    if as_json:
        _emit_json(result)
    else:
        click.echo(f"removed {result['removed']} images (and {result['forgotten_skipped']} skipped entries) "
                   f"from {index_dir}")


@main.command()
@_index_option
@_wait_option
@_json_option
def gc(index_dir, wait, as_json):
    """Drop the vectors kept for removed files now (they go by themselves after 30 days)."""
    from ..api import drop_tombstones

    dropped = drop_tombstones(index_dir, wait=wait)
    if as_json:
        _emit_json({"dropped": dropped})
    else:
        click.echo(f"dropped {dropped} removed images' vectors from {index_dir}")


@main.command()
@_index_option
@click.option("--repair", is_flag=True, help="Fix what is found: rebuild the FAISS file from the stored vectors.")
@_wait_option
@_json_option
def check(index_dir, repair, wait, as_json):
    """Check that the index's files agree with each other; exit 1 if they do not (and --repair is not given)."""
    from ..api import check_index

    result = check_index(index_dir, repair=repair, wait=wait)
    if as_json:
        _emit_json(result)
    else:
        for problem in result["problems"]:
            click.echo(f"problem: {problem}")
        state = "repaired" if result["repaired"] else "ok" if not result["problems"] else \
            "damaged; run `imgembed check --repair`"
        click.echo(f"{index_dir}: {result['images']} images, {state}")
    if result["problems"] and not result["repaired"]:
        sys.exit(1)


@main.command()
@_index_option
@click.option("--exact", is_flag=True,
              help="Only files with the same bytes, found from the index alone (no model, instant).")
@click.option("--score", type=click.Choice(["relative", "cosine"]), default="relative", show_default=True,
              help="relative: a pair's cosine against each image's k-th neighbour (docs/quality.md); cosine: raw.")
@click.option("--threshold", type=click.FloatRange(-1, 1), default=None,
              help="Score from which two images count as near-duplicates [default: 0.5 relative, 0.85 cosine].")
@click.option("-k", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Neighbours examined per image (the k-th is the background of the relative score).")
@click.option("--trash", "op", flag_value="trash",
              help="Move all but the kept image of each group into .imgembed-trash/ at the top of its indexed folder (undoable).")
@click.option("--move-to", "move_to", type=click.Path(file_okay=False),
              help="Move all but the kept image of each group to DIR, keeping their relative paths (undoable).")
@click.option("--link", "op", flag_value="link",
              help="Replace exact copies by hard links to the kept one (with --exact; undoable).")
@click.option("--keep", default=",".join(DEFAULT_KEEP), show_default=True,
              help="Which image of a group to keep: rules in order, from resolution, size, oldest, newest.")
@click.option("--prefer", "prefer", multiple=True, type=click.Path(file_okay=False),
              help="Keep the image under this folder first (repeatable, in order of preference).")
@click.option("--dry-run", is_flag=True, help="Show what an action would do; change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Act without asking for confirmation.")
@click.option("--wait", is_flag=True, help="Wait for another writer of the index instead of failing.")
@_html_options
@_json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def duplicates(index_dir, exact, score, threshold, k, op, move_to, keep, prefer, dry_run, yes, wait, html_file,
               open_page, as_json, quiet):
    """Groups of duplicate images in the index (exact copies, or resized, recompressed, lightly
    edited ones), and what to do with them: --trash, --move-to DIR or --link all but one of each
    group. Every action is journalled first; `imgembed undo` reverses the last one."""
    from ..api import act_on_duplicates, exact_duplicates, find_duplicates
    from ..collection.dedup import SCORES

    if move_to is not None:
        if op is not None:
            raise click.UsageError("choose one action: --trash, --move-to DIR or --link")
        op = "move"
    threshold = SCORES[score] if threshold is None else threshold
    if exact:
        groups, what = exact_duplicates(index_dir), "with the same bytes"
    else:
        progress = _stage_bar(quiet)
        try:
            groups = find_duplicates(index_dir, threshold, k, score=score,
                                     progress=lambda d, t: progress("searching", d, t))
        finally:
            progress.close()
        what = f"at {score} score >= {threshold}"
    _write_page(html_file, lambda: _gallery().duplicates_page(groups, what.replace(">=", "&ge;")), open_page)
    if op is None:
        if as_json:
            _emit_json([g.to_dict() for g in groups])
            return
        for n, g in enumerate(groups, 1):
            click.echo(f"group {n}: {len(g.rows)} images" + (" (same bytes)" if g.exact else ""))
            for row, value in zip(g.rows, g.scores):
                click.echo(f"  {value:.4f}  {row.full_path}")
        click.echo(f"{len(groups)} groups, {sum(len(g.rows) for g in groups)} images {what}")
        return
    rules = [r.strip() for r in keep.split(",") if r.strip()]
    plan = act_on_duplicates(index_dir, groups, op, move_to=move_to, keep=rules, prefer=prefer, dry_run=True)
    count = sum(len(actions) for _, actions in plan.planned)
    if not (as_json and (dry_run or yes)):
        _print_plan(plan)
    if dry_run or not count:
        if as_json:
            _emit_json(plan.to_dict())
        elif not count:
            click.echo("nothing to do")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("acting on duplicates asks for confirmation: pass --yes (or --dry-run to see the plan)")
        click.confirm(f"{_ACTION_VERBS[op]} {count} files?", abort=True)
    report = act_on_duplicates(index_dir, groups, op, move_to=move_to, keep=rules, prefer=prefer, wait=wait)
    if as_json:
        _emit_json(report.to_dict())
    else:
        for a, reason in report.failed:
            click.echo(f"not done: {reason}", err=True)
        click.echo(f"{len(report.done)} files {_ACTION_PAST[op]}, {len(report.failed)} left as they were; "
                   f"undo with: imgembed undo --index {index_dir}")
    if report.failed:
        sys.exit(1)


_ACTION_VERBS = {"trash": "Trash", "move": "Move", "link": "Hard-link"}
_ACTION_PAST = {"trash": "trashed", "move": "moved", "link": "hard-linked"}


def _print_plan(report) -> None:
    for n, (keep, actions) in enumerate(report.planned, 1):
        click.echo(f"group {n}: keep {keep}")
        for a in actions:
            click.echo(f"  {a.op:<5}  {a.src}" + (f" -> {a.dst}" if a.op != "link" else f" => {a.keep}"))


@main.command()
@click.argument("journal", required=False, type=click.Path(dir_okay=False, exists=True))
@_index_option
@click.option("--wait", is_flag=True, help="Wait for another writer of the index instead of failing.")
@_json_option
def undo(journal, index_dir, wait, as_json):
    """Undo the last `duplicates` action on the index (or the one whose JOURNAL is given):
    moved and trashed files go back, hard links become files of their own again."""
    from ..api import undo_duplicate_actions

    report = undo_duplicate_actions(index_dir, journal, wait=wait)
    if as_json:
        _emit_json(report.to_dict())
    else:
        for a, reason in report.failed:
            click.echo(f"not undone: {reason}", err=True)
        click.echo(f"{len(report.done)} actions undone ({report.journal}), {len(report.failed)} could not be")
    if report.failed:
        sys.exit(1)


@main.command()
@_indexes_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 exposes it to the network).")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True, help="Requests served at once.")
@click.option("--max-upload-mb", type=click.IntRange(1, 1024), default=25, show_default=True)
@click.option("--thumbnail-cache", type=click.Path(file_okay=False),
              help="Where thumbnails are kept between requests and runs [default: ~/.cache/imgembed/thumbnails].")
@_precision_option
@_runtime_option
def serve(index_dirs, host, port, threads, max_upload_mb, thumbnail_cache, precision, runtime):
    """The collection in a web browser: browse it, open an image and its nearest neighbours,
    search by examples and counter-examples, review and act on duplicates; and a JSON API."""
    import logging

    try:
        import waitress

        from ..web.server import create_app
    except ImportError as e:
        raise click.ClickException(f"serve needs Flask and waitress ({e.name} missing): "
                                   "pip install 'imgembed[serve]'") from None
    from ..api import Searcher

    searcher = Searcher(list(index_dirs), precision=precision, runtime=runtime)
    for idx in searcher.indexes:
        _warn_problem(idx.problem, str(idx.directory))
    app = create_app(searcher, max_upload_bytes=max_upload_mb * 1024 * 1024,
                     thumbnail_cache=Path(thumbnail_cache) if thumbnail_cache else None)
    click.echo(f"serving {', '.join(index_dirs)} ({len(searcher)} images) at http://{host}:{port}/  (Ctrl-C stops)",
               err=True)
    # waitress warns on stderr whenever requests wait for a free thread ("Task queue depth is 2"):
    # under a burst that is expected, and not the user's to act on.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    waitress.serve(app, host=host, port=port, threads=threads, ident="imgembed", _quiet=True)


@main.command()
@_json_option
def models(as_json):
    """List the available backbones."""
    from ..model.backbones import BACKBONES, DEFAULT_BACKBONE

    if as_json:
        _emit_json([{"name": s.name, "dim": s.feature_dim, "default": s.name == DEFAULT_BACKBONE,
                     "offline_weights": s.tv_weights is None} for s in BACKBONES.values()])
        return
    from ..inference.runtime import torch_available

    others = " (--weights imagenet downloads once via torchvision)" if torch_available() else \
        " (needs torch: pip install 'imgembed[train]')"
    for spec in BACKBONES.values():
        note = " (default; ImageNet weights ship with imgembed, offline)" if spec.name == DEFAULT_BACKBONE else others
        click.echo(f"{spec.name:<20} {spec.feature_dim:>5}-d{note}")


def entry() -> None:
    """The ``imgembed`` executable: :func:`main`, then the exit without the interpreter's
    teardown. Every command has closed its files and indexes by the time it returns, and
    unloading FAISS and ONNX Runtime modules would cost a cold query 0.15 s for nothing."""
    import os

    try:
        main(prog_name="imgembed")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed, or None after a broken pipe
            pass
    os._exit(code)
