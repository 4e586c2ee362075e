"""``imgembed serve``: the collection in a web browser, and a JSON API."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import MAX_UPLOAD_MB
from .common import indexes_option, precision_option, runtime_option, warn_problem


@click.command()
@indexes_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 exposes it to the network).")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True, help="Requests served at once.")
@click.option("--max-upload-mb", type=click.IntRange(1, 1024), default=MAX_UPLOAD_MB, show_default=True)
@click.option("--thumbnail-cache", type=click.Path(file_okay=False),
              help="Where thumbnails are kept between requests and runs [default: ~/.cache/imgembed/thumbnails].")
@precision_option
@runtime_option
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
        warn_problem(idx.problem, str(idx.directory))
    app = create_app(searcher, max_upload_bytes=max_upload_mb * 1024 * 1024,
                     thumbnail_cache=Path(thumbnail_cache) if thumbnail_cache else None)
    click.echo(f"serving {', '.join(index_dirs)} ({len(searcher)} images) at http://{host}:{port}/  (Ctrl-C stops)",
               err=True)
    # waitress warns on stderr whenever requests wait for a free thread ("Task queue depth is 2"):
    # under a burst that is expected, and not the user's to act on.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    waitress.serve(app, host=host, port=port, threads=threads, ident="imgembed", _quiet=True)


COMMANDS = [serve]
