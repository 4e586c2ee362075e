"""``audit``: ranked findings on a labelled index (mislabels, outliers, duplicates, leaks)."""

from __future__ import annotations

import click

from ..config import AUDIT_K, DUPLICATE_THRESHOLDS, MISLABEL_THRESHOLD, OUTLIER_THRESHOLD
from ..config import AUDIT_KINDS as KINDS
from .common import emit_json, html_options, index_option, json_option, quiet_option, stage_bar, write_page


@click.command()
@index_option
@click.option("-k", type=click.IntRange(1, 1000), default=AUDIT_K, show_default=True,
              help="Neighbours that vote on each image's label and measure how far it lies.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS),
              help="Only findings of this kind (repeatable) [default: all four].")
@click.option("--all", "everything", is_flag=True,
              help="List every scored image and candidate pair, ranked, not only those past the thresholds.")
@click.option("--mislabel-threshold", type=click.FloatRange(-1, 1), default=MISLABEL_THRESHOLD, show_default=True,
              help="Mislabel score (best other label's vote share minus the image's own) above which it is listed.")
@click.option("--outlier-threshold", type=float, default=OUTLIER_THRESHOLD, show_default=True,
              help="Outlier score (robust z against its class and the collection) from which it is listed.")
@click.option("--duplicate-threshold", type=click.FloatRange(-1, 1), default=DUPLICATE_THRESHOLDS["relative"],
              show_default=True, help="Relative near-duplicate score (as `duplicates`) for duplicates and leaks.")
@html_options
@json_option
@quiet_option()
def audit(index_dir, k, kinds, everything, mislabel_threshold, outlier_threshold, duplicate_threshold, html_file,
          open_page, as_json, quiet):
    """Problems in a labelled index, ranked within each kind: mislabels (the label disagrees with
    the image's neighbourhood; with a suggested label), outliers (unlike the class and the
    collection), duplicates (one image filed under two labels) and leaks (near-duplicates across
    train/test/val folders or across indexed roots). Labels are sub-folder names."""
    from ..api import audit as run_audit

    progress = stage_bar(quiet)
    try:
        report = run_audit(index_dir, k, mislabel_threshold=mislabel_threshold, outlier_threshold=outlier_threshold,
                           duplicate_threshold=duplicate_threshold, everything=everything, kinds=kinds or KINDS,
                           progress=lambda d, t: progress("searching", d, t))
    finally:
        progress.close()
    if report.note:
        click.echo(report.note, err=True)

    def page() -> str:
        from ..web import audit_page

        return audit_page.audit_page(report)

    write_page(html_file, page, open_page)
    if as_json:
        emit_json([f.to_dict() for f in report.findings])
        return
    for f in report.findings:
        detail = (f" -> {f.suggested}" if f.suggested else "") + (f"  ~ {f.other.path}" if f.other else "")
        click.echo(f"{f.kind:<9} {f.score:8.4f}  {f.path}  [{f.label or '-'}]{detail}")
    summary = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in report.counts.items())
    click.echo(f"{report.images} images audited: {summary}" + ("" if everything else " past the thresholds"))


COMMANDS = [audit]
