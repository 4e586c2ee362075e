"""What several command groups share: the common options, model and index loading, progress
bars, JSON output and HTML pages. Imports nothing heavy at its top, so ``--help`` stays fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..config import DEFAULT_INDEX, DEFAULT_MAX_PIXELS, DEFAULT_TARGET_RECALL, DEFAULT_WEIGHTS, PRECISIONS, RUNTIMES


def index_option(f):
    return click.option("--index", "index_dir", default=DEFAULT_INDEX, show_default=True, envvar="IMGEMBED_INDEX",
                        type=click.Path(file_okay=False),
                        help="Index directory (env: IMGEMBED_INDEX).")(f)


def indexes_option(f):
    return click.option("--index", "index_dirs", multiple=True, default=(DEFAULT_INDEX,), show_default=True,
                        envvar="IMGEMBED_INDEX", type=click.Path(file_okay=False),
                        help="Index directory (env: IMGEMBED_INDEX). Repeat it to search several indexes built "
                             "by the same model as one.")(f)


precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
    help="Torch inference precision; auto = bf16 where the CPU/GPU runs it natively (ONNX Runtime runs fp32).")
runtime_option = click.option(
    "--runtime", type=click.Choice(RUNTIMES), default="auto", show_default=True,
    help="Where the model runs; auto = ONNX Runtime where installed (model exported once and cached), else torch; "
         "`index` takes OpenVINO where installed.")


def weights_option(help: str | None = None):
    return click.option("--weights", default=DEFAULT_WEIGHTS, show_default=True, metavar="imagenet|none|PATH",
                        help=help)


def model_options(default_model: str | None):
    """``--model``, ``--weights``, ``--precision`` and ``--runtime``; without ``default_model``
    the model is the one that built the index."""
    def deco(f):
        f = runtime_option(f)
        f = precision_option(f)
        f = weights_option("Backbone weights: ImageNet, random init, or a local state-dict file.")(f)
        return click.option("--model", "model_name", default=default_model, show_default=default_model is not None,
                            metavar="NAME|CHECKPOINT",
                            help="Backbone name (see `imgembed models`) or a .pt checkpoint from `imgembed train`."
                            + ("" if default_model else " Default: the model that built the index."))(f)
    return deco


target_recall_option = click.option(
    "--target-recall", type=click.FloatRange(0.5, 1.0), default=None,
    help="Recall@10 an approximate index is tuned to reach, measured on its own vectors "
         f"[default: the index's own; {DEFAULT_TARGET_RECALL} for a new index].")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
wait_option = click.option("--wait", is_flag=True, help="If another process is writing this index, wait for it.")
max_pixels_option = click.option("--max-pixels", type=click.IntRange(1), default=None,
                                 help=f"Reject larger images as likely decompression bombs [default: "
                                      f"{DEFAULT_MAX_PIXELS:,}].")
queries_argument = click.argument("queries", nargs=-1, required=True,
                                  type=click.Path(exists=True, dir_okay=False, readable=True))
cache_option = click.option("--cache", "cache_dir", envvar="IMGEMBED_CACHE", default=None,
                            type=click.Path(file_okay=False),
                            help="Feature cache directory (env: IMGEMBED_CACHE) [default: ~/.cache/imgembed/features].")


def quiet_option(help: str = "No progress bar."):
    return click.option("-q", "--quiet", is_flag=True, help=help)


def html_options(f):
    f = click.option("--open", "open_page", is_flag=True, help="Open the --html page in the default browser.")(f)
    return click.option("--html", "html_file", type=click.Path(dir_okay=False),
                        help="Also write a self-contained HTML page of the results (thumbnails embedded).")(f)


def gallery():
    from ..web import gallery  # only when a page is asked for: it is a tenth of a cold query's imports

    return gallery


def write_page(html_file: str | None, page_html, open_page: bool) -> None:
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


def pixel_limit(max_pixels: int | None) -> int:
    """``--max-pixels``, or the default where it is not given."""
    return max_pixels or DEFAULT_MAX_PIXELS


def load_model(name: str, weights: str, precision: str, index_dir: str | None = None, runtime: str = "auto"):
    from ..api import load_model as load

    return load(name, weights, precision, index=index_dir, runtime=runtime)


def searcher(index_dirs: tuple[str, ...], model_name: str | None, weights: str, precision: str, runtime: str,
             max_pixels: int | None, expansion: str = "index"):
    """The indexes' own model, or ``--model`` checked against them."""
    from ..api import Searcher

    model = load_model(model_name, weights, precision, index_dirs[0], runtime) if model_name else None
    found = Searcher(list(index_dirs), model, max_pixels=pixel_limit(max_pixels), precision=precision,
                     runtime=runtime, expansion=expansion)
    for idx in found.indexes:
        warn_problem(idx.problem, str(idx.directory))
    return found


def warn_problem(problem: str | None, index_dir: str) -> None:
    if problem:
        click.echo(f"warning: {problem}; used a copy rebuilt in memory from the stored vectors; "
                   f"`imgembed check --repair --index {index_dir}` fixes the file", err=True)


def confirm(yes: bool, refusal: str, question: str) -> None:
    """Ask ``question`` before files are touched, unless ``--yes`` was given; without a terminal
    nobody can answer, so refuse with ``refusal`` (a usage error: exit 2)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(refusal)
    click.confirm(question, abort=True)


def report_failed(failed, prefix: str) -> None:
    """One stderr line per ``(action, reason)`` of a journalled run that did not happen."""
    for _, reason in failed:
        click.echo(f"{prefix}: {reason}", err=True)


def emit_json(data) -> None:
    # ASCII escapes keep the output valid UTF-8 JSON even for file names that are not UTF-8
    click.echo(json.dumps(data, indent=2))


def recall_line(check: dict) -> str:
    from ..index.recall import RecallCheck

    return RecallCheck.from_dict(check).describe()


def default_cache() -> str:
    from ..imaging.files import user_cache

    return str(user_cache("features"))


def stage_bar(quiet: bool):
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


METRIC_COLUMNS = [("precision_at_1", "P@1"), ("recall_at_1", "R@1"), ("recall_at_5", "R@5"),
                  ("recall_at_10", "R@10"), ("map_at_r", "mAP@R"), ("knn_accuracy", "kNN acc")]


def metrics_line(metrics: dict) -> str:
    return "  ".join(f"{label} {metrics[key]:.3f}" for key, label in METRIC_COLUMNS if key in metrics)
