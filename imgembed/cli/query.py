"""Asking the index about images: ``search``, ``classify`` and ``compare``."""

from __future__ import annotations

import click

from ..config import CLASSIFY_K, DEFAULT_MODEL, EXPANSIONS, NEGATIVE_WEIGHT, SEARCH_K
from .common import (
    emit_json,
    gallery,
    html_options,
    indexes_option,
    json_option,
    load_model,
    max_pixels_option,
    model_options,
    pixel_limit,
    queries_argument,
    searcher,
    write_page,
)


@click.command()
@queries_argument
@indexes_option
@click.option("-k", type=click.IntRange(1, 10_000), default=SEARCH_K, show_default=True, help="Results per query.")
@model_options(None)
@max_pixels_option
@click.option("--not", "negatives", multiple=True, type=click.Path(dir_okay=False),
              help="A counter-example (repeatable): one query combined from every QUERY minus these.")
@click.option("--combine", is_flag=True, help="Search once for what all QUERY images share (implied by --not).")
@click.option("--not-weight", type=click.FloatRange(0, 2), default=NEGATIVE_WEIGHT, show_default=True,
              help="How strongly counter-examples push results away.")
@click.option("--expansion", type=click.Choice(EXPANSIONS), default="index", show_default=True,
              help="How results rank: as the index says (`imgembed info`), by the raw vectors (none), by vectors "
                   "augmented with their neighbours (dba), or also expanding each query with its best hits (dba+aqe).")
@html_options
@json_option
def search(queries, index_dirs, k, negatives, combine, not_weight, expansion, model_name, weights, precision, runtime,
           max_pixels, html_file, open_page, as_json):
    """Find the indexed images most similar to each QUERY image; with --not or --combine, the
    images most similar to all QUERY images together and least to the --not ones (the examples
    themselves are left out)."""
    from ..api import QueryResult

    with searcher(index_dirs, model_name, weights, precision, runtime, max_pixels, expansion) as s:
        if negatives or combine:
            name = " + ".join(queries) + "".join(f" - {n}" for n in negatives)
            results = [QueryResult(name, s.search_combined(list(queries), list(negatives), k, weight=not_weight))]
        else:
            results = s.search(list(queries), k)
    write_page(html_file, lambda: gallery().search_page(results), open_page)
    if as_json:
        emit_json([r.to_dict() for r in results])
        return
    for n, r in enumerate(results):
        if n:
            click.echo()
        click.echo(f"query: {r.query}")
        width = max([5] + [len(h.row.label or "-") for h in r.hits])
        click.echo(f"{'rank':>4}  {'score':>6}  {'label':<{width}}  path")
        for h in r.hits:
            click.echo(f"{h.rank:>4}  {h.score:>6.4f}  {h.row.label or '-':<{width}}  {h.row.full_path}")


@click.command()
@queries_argument
@indexes_option
@click.option("-k", type=click.IntRange(1, 1000), default=CLASSIFY_K, show_default=True, help="Neighbours that vote.")
@model_options(None)
@max_pixels_option
@html_options
@json_option
def classify(queries, index_dirs, k, model_name, weights, precision, runtime, max_pixels, html_file, open_page,
             as_json):
    """Label each QUERY image by a similarity-weighted vote of its k nearest indexed images."""
    with searcher(index_dirs, model_name, weights, precision, runtime, max_pixels) as s:
        results = s.classify(list(queries), k)
    write_page(html_file, lambda: gallery().classify_page(results), open_page)
    if as_json:
        emit_json([r.to_dict() for r in results])
        return
    for r in results:
        votes = ", ".join(f"{label} {n}" for label, n in sorted(r.vote.votes.items(), key=lambda kv: -kv[1]))
        click.echo(f"{r.query}: {r.vote.label or '(no labelled neighbours)'} "
                   f"(confidence {r.vote.confidence:.2f}; votes: {votes or 'none'})")


@click.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.argument("b", type=click.Path(exists=True, dir_okay=False, readable=True))
@model_options(DEFAULT_MODEL)
@max_pixels_option
@json_option
def compare(a, b, model_name, weights, precision, runtime, max_pixels, as_json):
    """Cosine similarity of images A and B (1 = identical embeddings)."""
    from ..api import compare as compare_images

    score = compare_images(load_model(model_name, weights, precision, runtime=runtime), a, b,
                           max_pixels=pixel_limit(max_pixels))
    if as_json:
        emit_json({"a": a, "b": b, "score": round(score, 6)})
    else:
        click.echo(f"{score:.4f}  {a}  {b}")


COMMANDS = [search, classify, compare]
