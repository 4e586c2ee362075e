"""The ``imgembed`` command line. The only module that prints, reads the environment or picks
exit codes: 0 success, 1 a runtime error (one line; the traceback with ``--debug``), 2 usage.

Heavy modules (torch, faiss) are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import sys
import time

import click

from . import __version__
from .errors import ImgembedError

DEFAULT_INDEX = "indexes/default"
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


def _model_options(default_model: str | None):
    def deco(f):
        f = click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
                         help="Inference precision; auto = bf16 where the CPU/GPU runs it natively.")(f)
        f = click.option("--weights", default="imagenet", show_default=True, metavar="imagenet|none|PATH",
                         help="Backbone weights: ImageNet, random init, or a local state-dict file.")(f)
        return click.option("--model", "model_name", default=default_model, show_default=default_model is not None,
                            metavar="NAME|CHECKPOINT",
                            help="Backbone name (see `imgembed models`) or a .pt checkpoint from `imgembed train`."
                            + ("" if default_model else " Default: the model that built the index."))(f)
    return deco


_json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
_max_pixels_option = click.option("--max-pixels", type=click.IntRange(1), default=None,
                                  help="Reject larger images as likely decompression bombs [default: 150,000,000].")
_queries = click.argument("queries", nargs=-1, required=True,
                          type=click.Path(exists=True, dir_okay=False, readable=True))


def _max_pixels(value):
    from .images import DEFAULT_MAX_PIXELS

    return value or DEFAULT_MAX_PIXELS


def _load_model(name: str, weights: str, precision: str):
    from .api import load_model

    return load_model(name, weights, precision)


def _searcher(index_dir: str, model_name: str | None, weights: str, precision: str, max_pixels: int | None):
    """The index's own model, or ``--model`` checked against it."""
    from .api import Searcher

    model = _load_model(model_name, weights, precision) if model_name else None
    return Searcher(index_dir, model, max_pixels=_max_pixels(max_pixels), precision=precision)


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


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


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@_index_option
@_model_options(DEFAULT_MODEL)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Decoding processes [default: CPU cores - 1, at most 4].")
@_max_pixels_option
@click.option("--no-prune", is_flag=True, help="Keep entries of files that disappeared from FOLDER.")
@_json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def index(folder, index_dir, model_name, weights, precision, batch_size, workers, max_pixels, no_prune, as_json, quiet):
    """Embed the images under FOLDER into the index (sub-folder names become labels).

    Re-running is cheap: unchanged files are not read again, changed ones are re-embedded,
    and files that cannot be decoded are reported and skipped.
    """
    from tqdm import tqdm

    from .api import index_folder

    model = _load_model(model_name, weights, precision)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="img", desc="embedding", file=sys.stderr, disable=quiet or None)
        bar.update(done - bar.n)

    try:
        report = index_folder(folder, index_dir, model, batch_size=batch_size, workers=workers,
                              max_pixels=_max_pixels(max_pixels), prune=not no_prune, progress=progress)
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
    click.echo(f"  added {report.added}, updated {report.updated}, removed {report.removed}, "
               f"unchanged {report.unchanged}, skipped {len(report.skipped)}; {report.total} images in the index")
    for path, reason in report.skipped:
        click.echo(f"  skipped {path}: {reason}")


@main.command()
@_queries
@_index_option
@click.option("-k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Results per query.")
@_model_options(None)
@_max_pixels_option
@_json_option
def search(queries, index_dir, k, model_name, weights, precision, max_pixels, as_json):
    """Find the indexed images most similar to each QUERY image."""
    with _searcher(index_dir, model_name, weights, precision, max_pixels) as searcher:
        results = searcher.search(list(queries), k)
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
@_index_option
@click.option("-k", type=click.IntRange(1, 1000), default=5, show_default=True, help="Neighbours that vote.")
@_model_options(None)
@_max_pixels_option
@_json_option
def classify(queries, index_dir, k, model_name, weights, precision, max_pixels, as_json):
    """Label each QUERY image by a similarity-weighted vote of its k nearest indexed images."""
    with _searcher(index_dir, model_name, weights, precision, max_pixels) as searcher:
        results = searcher.classify(list(queries), k)
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
def compare(a, b, model_name, weights, precision, max_pixels, as_json):
    """Cosine similarity of images A and B (1 = identical embeddings)."""
    from .api import compare as compare_images

    score = compare_images(_load_model(model_name, weights, precision), a, b, max_pixels=_max_pixels(max_pixels))
    if as_json:
        _emit_json({"a": a, "b": b, "score": round(score, 6)})
    else:
        click.echo(f"{score:.4f}  {a}  {b}")


@main.command()
@_index_option
@_json_option
def info(index_dir, as_json):
    """Describe an index: model, counts, labels and skipped files."""
    from .api import index_info

    data = index_info(index_dir)
    if as_json:
        _emit_json(data)
        return
    m = data["manifest"]
    model = m["model"]
    click.echo(f"index:    {data['index']} ({data['size_bytes'] / 1e6:.1f} MB, format v{m['format_version']})")
    click.echo(f"model:    {model['backbone']} ({model['weights']}"
               + (f", checkpoint {model['checkpoint']}" if model.get("checkpoint") else "")
               + f"), {model['dim']}-d, FAISS {m['faiss']['factory']}")
    click.echo(f"roots:    {', '.join(m.get('roots', [])) or '-'}")
    click.echo(f"updated:  {m.get('updated_at', '-')}")
    click.echo(f"images:   {data['images']}")
    labels = data["labels"]
    if any(labels):
        click.echo(f"labels:   {len([k for k in labels if k])}")
        for label, n in labels.items():
            click.echo(f"  {label or '(root, unlabelled)'}: {n}")
    click.echo(f"skipped:  {len(data['skipped'])}")
    for s in data["skipped"]:
        click.echo(f"  {s['path']}: {s['reason']}")


@main.command()
def models():
    """List the available backbones."""
    from .backbones import BACKBONES, DEFAULT_BACKBONE

    for spec in BACKBONES.values():
        note = " (default; ImageNet weights ship with imgembed, offline)" if spec.name == DEFAULT_BACKBONE else \
            " (--weights imagenet downloads once via torchvision)"
        click.echo(f"{spec.name:<20} {spec.feature_dim:>5}-d{note}")
