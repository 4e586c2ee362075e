"""Building and keeping an index: ``index``, ``info``, ``rebuild``, ``remove``, ``gc`` and ``check``."""

from __future__ import annotations

import contextlib
import sys
import time

import click

from ..config import COMMIT_EVERY, DEFAULT_DECODE_TIMEOUT, DEFAULT_MODEL, DEFAULT_WEIGHTS, EXECUTORS, INDEX_BATCH_SIZE
from .common import (
    emit_json,
    index_option,
    json_option,
    load_model,
    max_pixels_option,
    model_options,
    pixel_limit,
    quiet_option,
    recall_line,
    target_recall_option,
    wait_option,
    warn_problem,
)

INDEX_TYPES = "auto|flat|hnsw|ivfpq|ondisk[:CODE]|FACTORY"
expand_option = click.option(
    "--expand/--no-expand", default=None,
    help="Search expansion: searches also weigh each image's nearest neighbours and expand the query with its "
         "best hits (better at finding a whole category; docs/quality.md) [default: the index's own; on for a "
         "new index].")


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@index_option
@model_options(None)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=INDEX_BATCH_SIZE, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Decoding processes [default: one per CPU core, at most 4].")
@max_pixels_option
@click.option("--no-prune", is_flag=True, help="Keep entries of files that disappeared from FOLDER.")
@click.option("--allow-removal", is_flag=True,
              help="Remove entries even when all of FOLDER's, or over half and at least 50, disappeared "
                   "(refused by default: an unmounted drive looks like an empty folder).")
@click.option("--index-type", default=None, metavar=INDEX_TYPES,
              help="FAISS index type [default: the index's own; auto for a new index].")
@target_recall_option
@expand_option
@click.option("--engine", type=click.Choice(EXECUTORS), default=EXECUTORS[0], show_default=True,
              help="Where decoding and the model run: this process, or a Ray cluster (pip install 'imgembed[ray]').")
@click.option("--ray-address", metavar="ADDRESS", default=None,
              help="Ray cluster to join with --engine ray, e.g. 10.0.0.5:6379 [default: $RAY_ADDRESS, else a local cluster].")
@click.option("--ray-actors", type=click.IntRange(1), default=None,
              help="Model replicas with --engine ray [default: one per GPU, else one per CPU].")
@click.option("--commit-every", type=click.IntRange(1), default=COMMIT_EVERY, show_default=True,
              help="Images per committed chunk: an interrupted run keeps every finished chunk.")
@click.option("--decode-timeout", type=click.FloatRange(0, min_open=True), default=DEFAULT_DECODE_TIMEOUT,
              show_default=True, help="Seconds one image may take to decode before it is skipped.")
@wait_option
@json_option
@quiet_option()
def index(folder, index_dir, model_name, weights, precision, runtime, batch_size, workers, max_pixels, no_prune,
          allow_removal, index_type, target_recall, expand, engine, ray_address, ray_actors, commit_every,
          decode_timeout, wait, as_json, quiet):
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
    options = IndexOptions(batch_size=batch_size, max_pixels=pixel_limit(max_pixels), decode_timeout=decode_timeout,
                           prune=not no_prune, allow_removal=allow_removal, commit_every=commit_every,
                           index_type=index_type, target_recall=target_recall, expand=expand, wait=wait,
                           precision=precision, runtime=runtime)

    # Without --model or --weights an existing index keeps its own model, loaded only if
    # something needs embedding (an unchanged folder never imports torch); a new one gets the
    # default backbone.
    model = None
    if model_name or weights != DEFAULT_WEIGHTS:
        from ..inference.runtime import for_indexing

        model = load_model(model_name or DEFAULT_MODEL, weights, precision, index_dir,
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
        emit_json(report.to_dict())
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


@click.command()
@index_option
@json_option
def info(index_dir, as_json):
    """Describe an index: model, counts, labels and skipped files."""
    from ..api import index_info

    data = index_info(index_dir)
    warn_problem(data["problem"], index_dir)
    if as_json:
        emit_json(data)
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
    click.echo(f"recall:   {recall_line(m['recall']) if m.get('recall') else 'exact search (every vector compared)'}")
    e = data["expansion"]
    click.echo(f"search:   {e['describe']}" + (f"; neighbour lists of {e['lists']} images"
                                                  + (f", {e['missing']} to make" if e["missing"] else "")
                                                  + (f", {e['stale']} naming removed images" if e["stale"] else "")
                                                  + (" (the next index run or rebuild makes them)"
                                                     if e["missing"] or e["stale"] else "")
                                                  if e["dba_k"] else ""))
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


@click.command()
@index_option
@click.option("--index-type", default=None, metavar=INDEX_TYPES,
              help="Rebuild as this type [default: the index's own].")
@target_recall_option
@expand_option
@wait_option
@json_option
def rebuild(index_dir, index_type, target_recall, expand, wait, as_json):
    """Rebuild the FAISS file from the vectors stored in the index (no images are read)."""
    from ..api import rebuild_index
    from ..index.expansion import Expansion

    started = time.perf_counter()
    spec = rebuild_index(index_dir, index_type, target_recall=target_recall, expand=expand, wait=wait)
    if as_json:
        emit_json(spec)
        return
    click.echo(f"rebuilt {index_dir} as {spec['index_type']}: FAISS {spec['factory']}"
               + (f" ({spec['params']})" if spec["params"] else "") + f" in {time.perf_counter() - started:.1f} s")
    if spec.get("recall"):
        click.echo(f"  {recall_line(spec['recall'])}")
    click.echo(f"  search: {Expansion.from_dict(spec['expansion']).describe()}")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@index_option
@wait_option
@json_option
def remove(paths, index_dir, wait, as_json):
    """Drop the entries of files, or of everything under folders, from the index.

    Their vectors are kept for 30 days (`imgembed gc` drops them now): the same files indexed
    again are restored without embedding.
    """
    from ..api import remove_paths

    result = remove_paths(index_dir, paths, wait=wait)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"removed {result['removed']} images (and {result['forgotten_skipped']} skipped entries) "
                   f"from {index_dir}")


@click.command()
@index_option
@wait_option
@json_option
def gc(index_dir, wait, as_json):
    """Drop the vectors kept for removed files now (they go by themselves after 30 days)."""
    from ..api import drop_tombstones

    dropped = drop_tombstones(index_dir, wait=wait)
    if as_json:
        emit_json({"dropped": dropped})
    else:
        click.echo(f"dropped {dropped} removed images' vectors from {index_dir}")


@click.command()
@index_option
@click.option("--repair", is_flag=True, help="Fix what is found: rebuild the FAISS file from the stored vectors.")
@wait_option
@json_option
def check(index_dir, repair, wait, as_json):
    """Check that the index's files agree with each other; exit 1 if they do not (and --repair is not given)."""
    from ..api import check_index

    result = check_index(index_dir, repair=repair, wait=wait)
    if as_json:
        emit_json(result)
    else:
        for problem in result["problems"]:
            click.echo(f"problem: {problem}")
        state = "repaired" if result["repaired"] else "ok" if not result["problems"] else \
            "damaged; run `imgembed check --repair`"
        click.echo(f"{index_dir}: {result['images']} images, {state}")
    if result["problems"] and not result["repaired"]:
        sys.exit(1)


COMMANDS = [index, info, rebuild, remove, gc, check]
