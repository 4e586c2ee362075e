"""``sort``: an unsorted folder into the labelled folders of an indexed one."""

from __future__ import annotations

import sys

import click

from ..config import SORT_MIN_CONFIDENCE
from .common import (
    confirm,
    emit_json,
    index_option,
    json_option,
    precision_option,
    quiet_option,
    report_failed,
    runtime_option,
    stage_bar,
)


@click.command("sort")
@click.argument("inbox", type=click.Path(exists=True, file_okay=False))
@click.option("--into", "root", required=True, type=click.Path(exists=True, file_okay=False),
              help="The indexed folder whose sub-folders are the labels; confident images move into ROOT/<label>/.")
@index_option
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=SORT_MIN_CONFIDENCE, show_default=True,
              help="Share of an image's label scores its best label must reach; below it the image stays.")
@click.option("--dry-run", is_flag=True, help="Show the proposals; move nothing.")
@click.option("-y", "--yes", is_flag=True, help="Move without asking for confirmation.")
@click.option("--wait", is_flag=True, help="Wait for another writer of the index instead of failing.")
@precision_option
@runtime_option
@json_option
@quiet_option()
def sort_command(inbox, root, index_dir, min_confidence, dry_run, yes, wait, precision, runtime, as_json, quiet):
    """Sort the images of INBOX into the labelled sub-folders of ROOT, an indexed folder: each
    gets a label and a confidence from the index and the other inbox images together (labels
    spread over their joint neighbour graph); the confident ones move into ROOT/<label>/ and
    join the index, the others stay. Every move is journalled first; `imgembed undo` reverses
    the run."""
    from ..api import plan_sort, sort_inbox

    progress = stage_bar(quiet)
    try:
        plan = plan_sort(inbox, root, index_dir, min_confidence=min_confidence, precision=precision, runtime=runtime,
                         progress=lambda d, t: progress("embedding the inbox", d, t))
    finally:
        progress.close()
    for path, reason in plan.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    moving = plan.moving
    if not as_json:
        for p in plan.proposals:
            where = f"-> {p.to}" if p.label else f"stays (best: {p.best})"
            click.echo(f"{p.confidence:.3f}  {p.path}  {where}")
        click.echo(f"{len(moving)} of {len(plan.proposals)} images to move into {plan.root}, "
                   f"{len(plan.proposals) - len(moving)} stay (confidence below {min_confidence})")
    if dry_run or not moving:
        if as_json:
            emit_json([p.to_dict() for p in plan.proposals])
        return
    confirm(yes, "sorting moves files and asks for confirmation: pass --yes (or --dry-run to see the proposals)",
            f"Move {len(moving)} images into {plan.root}?")
    report = sort_inbox(plan, wait=wait)
    if as_json:
        failed = {a.src: reason for a, reason in report.failed}
        emit_json([{**p.to_dict(), "label": p.label if p.path not in failed else None,
                    **({"failed": failed[p.path]} if p.path in failed else {})} for p in plan.proposals])
    else:
        report_failed(report.failed, "not moved")
        click.echo(f"{len(report.done)} images moved into {plan.root}, {len(report.failed)} left where they were; "
                   f"undo with: imgembed undo --index {index_dir}")
    if report.failed:
        sys.exit(1)


COMMANDS = [sort_command]
