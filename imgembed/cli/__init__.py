"""The ``imgembed`` command line: the only code that prints, reads the environment or picks
exit codes: 0 success, 1 a runtime error (one line; the traceback with ``--debug``), 2 usage.

One module per command group: :mod:`.indexing` (index, info, remove, gc, check, rebuild),
:mod:`.query` (search, classify, compare), :mod:`.training` (train, evaluate, export, models),
:mod:`.duplicates` (duplicates, undo), :mod:`.audit`, :mod:`.sorting` (sort), :mod:`.clusters` and
:mod:`.serve`; :mod:`.common` holds what they share.
Heavy modules (torch, numpy, faiss) are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import ImgembedError
from . import audit, clusters, duplicates, indexing, query, serve, sorting, training


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


for _group in (indexing, query, training, duplicates, audit, sorting, clusters, serve):
    for _command in _group.COMMANDS:
        main.add_command(_command)


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
