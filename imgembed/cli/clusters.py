"""``clusters``: groups of look-alike images among the unlabelled ones, optionally moved into folders."""

from __future__ import annotations

import sys

import click

from ..config import CLUSTER_RESOLUTION
from .common import confirm, emit_json, html_options, index_option, json_option, report_failed, write_page


@click.command("clusters")
@index_option
@click.option("--all", "everything", is_flag=True,
              help="Cluster every indexed image, labelled ones too [default: only those without a label, "
                   "i.e. directly in an indexed folder].")
@click.option("--resolution", type=click.FloatRange(0, None, min_open=True), default=CLUSTER_RESOLUTION,
              show_default=True, help="Higher: more, smaller clusters; lower: fewer, larger ones.")
@click.option("--into", "into", type=click.Path(file_okay=False),
              help="Move each cluster's images into a new folder DIR/cluster-01, DIR/cluster-02, ... "
                   "(journalled: `imgembed undo` moves them back).")
@click.option("--dry-run", is_flag=True, help="With --into: show what would move; move nothing.")
@click.option("-y", "--yes", is_flag=True, help="With --into: move without asking for confirmation.")
@click.option("--wait", is_flag=True, help="With --into: wait for another writer of the index instead of failing.")
@html_options
@json_option
def clusters_command(index_dir, everything, resolution, into, dry_run, yes, wait, html_file, open_page, as_json):
    """Group the index's images without a label (those directly in an indexed folder) by what
    they look like: communities of their neighbour graph, the number of clusters found from the
    graph. Prints one line per cluster, largest first, with its most typical image; --json lists
    every member, --html draws them. With --into DIR each cluster moves into a folder of its
    own (nothing is overwritten; every move is journalled first), and the index follows: the
    images keep their vectors under their new paths, labelled by their cluster's folder."""
    from ..api import clusters, move_into, plan_into

    if (dry_run or yes or wait) and not into:
        raise click.UsageError("--dry-run, --yes and --wait go with --into DIR")
    report = clusters(index_dir, unlabelled_only=not everything, resolution=resolution)

    def page() -> str:
        from ..web import clusters_page

        return clusters_page.clusters_page(report)

    write_page(html_file, page, open_page)
    plan = plan_into(report, into) if into else None
    if not as_json:
        for c in report.clusters:
            where = f"  -> {plan.folders[c.number - 1]}/" if plan else ""
            click.echo(f"cluster {c.number:>3}: {c.size:>5} images, cohesion {c.cohesion:.3f}, "
                       f"e.g. {c.representative.full_path}{where}")
        left = f"; {report.left_out} labelled images left out (--all includes them)" if report.left_out else ""
        click.echo(f"{report.images} images in {len(report.clusters)} clusters{left}")
    if plan is None:
        if as_json:
            emit_json([c.to_dict() for c in report.clusters])
        return
    what = f"{plan.count} images into {len(plan.folders)} new folders under {plan.into}"
    if dry_run:
        if as_json:
            emit_json(plan.to_dict())
        else:
            click.echo(f"dry run: would move {what}; nothing moved")
        return
    confirm(yes, "--into moves files and asks for confirmation: pass --yes (or --dry-run to see what would move)",
            f"Move {what}?")
    done = move_into(plan, wait=wait)
    if as_json:
        emit_json(plan.to_dict({a.src: reason for a, reason in done.failed}))
    else:
        report_failed(done.failed, "not moved")
        click.echo(f"moved {len(done.done)} of {plan.count} images into {len(plan.folders)} folders under "
                   f"{plan.into}; undo with: imgembed undo --index {index_dir}")
    if done.failed:
        sys.exit(1)


COMMANDS = [clusters_command]
