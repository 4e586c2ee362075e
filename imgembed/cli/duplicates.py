"""Duplicate images: ``duplicates`` (find them, and act on all but one of each group) and ``undo``."""

from __future__ import annotations

import sys

import click

from ..config import DEFAULT_KEEP, DUPLICATE_K, DUPLICATE_THRESHOLDS
from .common import (
    confirm,
    emit_json,
    gallery,
    html_options,
    index_option,
    json_option,
    quiet_option,
    report_failed,
    stage_bar,
    write_page,
)

_ACTION_VERBS = {"trash": "Trash", "move": "Move", "link": "Hard-link"}
_ACTION_PAST = {"trash": "trashed", "move": "moved", "link": "hard-linked"}
_WAIT_HELP = "Wait for another writer of the index instead of failing."


def _default_thresholds() -> str:
    return ", ".join(f"{value} {score}" for score, value in DUPLICATE_THRESHOLDS.items())


@click.command()
@index_option
@click.option("--exact", is_flag=True,
              help="Only files with the same bytes, found from the index alone (no model, instant).")
@click.option("--score", type=click.Choice(list(DUPLICATE_THRESHOLDS)), default="relative", show_default=True,
              help="relative: a pair's cosine against each image's k-th neighbour (docs/quality.md); cosine: raw.")
@click.option("--threshold", type=click.FloatRange(-1, 1), default=None,
              help=f"Score from which two images count as near-duplicates [default: {_default_thresholds()}].")
@click.option("-k", type=click.IntRange(1, 1000), default=DUPLICATE_K, show_default=True,
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
@click.option("--wait", is_flag=True, help=_WAIT_HELP)
@html_options
@json_option
@quiet_option()
def duplicates(index_dir, exact, score, threshold, k, op, move_to, keep, prefer, dry_run, yes, wait, html_file,
               open_page, as_json, quiet):
    """Groups of duplicate images in the index (exact copies, or resized, recompressed, lightly
    edited ones), and what to do with them: --trash, --move-to DIR or --link all but one of each
    group. Every action is journalled first; `imgembed undo` reverses the last one."""
    from ..api import act_on_duplicates, exact_duplicates, find_duplicates

    if move_to is not None:
        if op is not None:
            raise click.UsageError("choose one action: --trash, --move-to DIR or --link")
        op = "move"
    threshold = DUPLICATE_THRESHOLDS[score] if threshold is None else threshold
    if exact:
        groups, what = exact_duplicates(index_dir), "with the same bytes"
    else:
        progress = stage_bar(quiet)
        try:
            groups = find_duplicates(index_dir, threshold, k, score=score,
                                     progress=lambda d, t: progress("searching", d, t))
        finally:
            progress.close()
        what = f"at {score} score >= {threshold}"
    write_page(html_file, lambda: gallery().duplicates_page(groups, what.replace(">=", "&ge;")), open_page)
    if op is None:
        if as_json:
            emit_json([g.to_dict() for g in groups])
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
            emit_json(plan.to_dict())
        elif not count:
            click.echo("nothing to do")
        return
    confirm(yes, "acting on duplicates asks for confirmation: pass --yes (or --dry-run to see the plan)",
            f"{_ACTION_VERBS[op]} {count} files?")
    report = act_on_duplicates(index_dir, groups, op, move_to=move_to, keep=rules, prefer=prefer, wait=wait)
    if as_json:
        emit_json(report.to_dict())
    else:
        report_failed(report.failed, "not done")
        click.echo(f"{len(report.done)} files {_ACTION_PAST[op]}, {len(report.failed)} left as they were; "
                   f"undo with: imgembed undo --index {index_dir}")
    if report.failed:
        sys.exit(1)


def _print_plan(report) -> None:
    for n, (keep, actions) in enumerate(report.planned, 1):
        click.echo(f"group {n}: keep {keep}")
        for a in actions:
            click.echo(f"  {a.op:<5}  {a.src}" + (f" -> {a.dst}" if a.op != "link" else f" => {a.keep}"))


@click.command()
@click.argument("journal", required=False, type=click.Path(dir_okay=False, exists=True))
@index_option
@click.option("--wait", is_flag=True, help=_WAIT_HELP)
@json_option
def undo(journal, index_dir, wait, as_json):
    """Undo the last `duplicates` action on the index (or the one whose JOURNAL is given):
    moved and trashed files go back, hard links become files of their own again."""
    from ..api import undo_duplicate_actions

    report = undo_duplicate_actions(index_dir, journal, wait=wait)
    if as_json:
        emit_json(report.to_dict())
    else:
        report_failed(report.failed, "not undone")
        click.echo(f"{len(report.done)} actions undone ({report.journal}), {len(report.failed)} could not be")
    if report.failed:
        sys.exit(1)


COMMANDS = [duplicates, undo]
