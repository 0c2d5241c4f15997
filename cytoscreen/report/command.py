"""Self-contained HTML reports: one per plate (QC, controls, hits) and an index for the screen.

  cytoscreen report plate --config CONFIG --plate P --qc results/P/qc.parquet \\
      --images results/P/images.parquet [--wells results/P/wells.parquet] \\
      [--novelty results/screen/novelty/novelty.parquet] [--counts COUNTS] \\
      [--dose results/screen/novelty/dose.parquet] --out reports/P.html
  cytoscreen report screen --config CONFIG --qc results/*/qc.parquet \\
      [--novelty results/screen/novelty/novelty.parquet] [--moa results/screen/moa.parquet] \\
      [--evaluation results/screen/evaluation.json] \\
      [--profiles results/screen/moa_profiles.parquet] \\
      [--plate-reports reports/P1.html ...] --out reports/index.html

Settings come from the config's report: section.  Every input but --qc is optional; a section whose
input is missing says "Stage not run".  The pages open offline: CSS, script and images are inline.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

PLATE_DOC = """Write the HTML report of one plate.

Heatmaps (QC failures, focus, cell count or DNA signal, novelty score and q-value), control
quality (negcon vs poscon distribution and Z' on report.readout, out-of-sample values only),
dose-response curves (with --dose), a thumbnail gallery of QC
failures and top hits, a summary and a table of every well.
"""

SCREEN_DOC = """Write the HTML index of a screen.

Links to the plate reports, per-plate QC and Z', the hit list across plates (with a CSV download),
UMAP scatter plots of the treatments coloured by cluster / known MoA / plate, a PCA of the well
profiles by plate (batch effects), the cluster table and the MoA evaluation metrics.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cytoscreen.argparse_ import add_command, add_override, section_schema

    schema = section_schema("report")
    p = add_command(subparsers, "report", __doc__)
    actions = p.add_subparsers(dest="report_action", metavar="<action>", required=True)

    pl = add_command(actions, "plate", PLATE_DOC)
    pl.add_argument(
        "--config", help="workflow config YAML (report: section; schema defaults without it)"
    )
    pl.add_argument("--plate", required=True, help="plate name (Metadata_Plate)")
    pl.add_argument("--qc", required=True, help="the plate's qc.parquet (one row per site)")
    pl.add_argument("--images", help="the plate's images.parquet (for thumbnails)")
    pl.add_argument("--wells", help="optional well profiles (wells.parquet; Metadata_n_sites)")
    pl.add_argument(
        "--novelty", help="optional novelty.parquet (any plates; this plate's rows are used)"
    )
    pl.add_argument(
        "--counts", help="optional per-site table with the report.count_column cell counts"
    )
    pl.add_argument("--dose", help="optional dose.parquet (cytoscreen dose): dose-response curves")
    add_override(pl, "--readout", "readout", "Z' readout column", schema=schema, section="report")
    pl.add_argument("--out", required=True, help="output HTML, e.g. reports/P1.html")
    pl.set_defaults(func=run)

    sc = add_command(actions, "screen", SCREEN_DOC)
    sc.add_argument(
        "--config", help="workflow config YAML (report: section; schema defaults without it)"
    )
    sc.add_argument("--qc", required=True, nargs="+", help="qc.parquet of every plate")
    sc.add_argument("--novelty", help="optional novelty.parquet")
    sc.add_argument("--moa", help="optional moa.parquet (clusters, UMAP)")
    sc.add_argument("--evaluation", help="optional evaluation.json")
    sc.add_argument("--profiles", help="optional well-level profiles of all plates (PCA by plate)")
    sc.add_argument(
        "--plate-reports",
        nargs="*",
        default=None,
        help="plate report HTML files to link (file stem = plate); default: <plate>.html "
        "beside --out when it exists",
    )
    add_override(sc, "--readout", "readout", "Z' readout column", schema=schema, section="report")
    sc.add_argument("--out", required=True, help="output HTML, e.g. reports/index.html")
    sc.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the chosen action (``plate`` or ``screen``)."""
    return {"plate": run_plate, "screen": run_screen}[args.report_action](args)


def _settings(args: argparse.Namespace):
    from cytoscreen.argparse_ import load_config_with_overrides
    from cytoscreen.io import config_hash
    from cytoscreen.report.settings import ReportSettings

    config = load_config_with_overrides(args, "report")
    return ReportSettings.from_config(config["report"]), config_hash(config)


def _optional(
    path: str | None, what: str, missing: str = "its report sections say 'stage not run'"
):
    from cytoscreen import io

    if not path:
        logger.info("no %s given: %s", what, missing)
        return None
    table = io.read_table(path)
    logger.info("read %s (%d rows)", path, len(table))
    return table


def run_plate(args: argparse.Namespace) -> int:
    from cytoscreen import io
    from cytoscreen.report.pages.plate import plate_report

    settings, chash = _settings(args)
    qc = io.read_table(args.qc)
    logger.info("read %s (%d sites)", args.qc, len(qc))
    images = _optional(args.images, "images table (--images)")
    wells = _optional(args.wells, "well profiles (--wells)")
    novelty = _optional(args.novelty, "novelty table (--novelty)")
    counts = _optional(
        args.counts, "cell counts (--counts)", "counts come from the QC table when it has them"
    )
    dose = _optional(args.dose, "dose table (--dose)")
    inputs = {
        "qc": args.qc,
        "images": args.images,
        "wells": args.wells,
        "novelty": args.novelty,
        "counts": args.counts,
        "dose": args.dose,
    }
    page = plate_report(
        qc,
        plate=args.plate,
        images=images,
        wells=wells,
        novelty=novelty,
        counts=counts,
        dose=dose,
        settings=settings,
        inputs=inputs,
        config_hash=chash,
    )
    io.write_text(page, args.out)
    logger.info("plate %s: wrote %s (%.0f kB)", args.plate, args.out, len(page.encode()) / 1024)
    return 0


def _plate_links(out: Path, reports: list[str] | None, plates: list[str]) -> dict[str, str]:
    """Plate -> href of its report, relative to the index's folder."""
    if reports is None:
        found = {p: out.parent / f"{p}.html" for p in plates}
        found = {p: f for p, f in found.items() if f.exists()}
        missing = sorted(set(plates) - set(found))
        if missing:
            logger.warning(
                "no plate report beside %s for %s: listed without a link", out, ", ".join(missing)
            )
    else:
        found = {Path(r).stem: Path(r) for r in reports}
    base = out.parent.resolve()
    return {p: Path(os.path.relpath(Path(f).resolve(), base)).as_posix() for p, f in found.items()}


def run_screen(args: argparse.Namespace) -> int:
    import json

    from cytoscreen import io
    from cytoscreen.errors import InputDataError
    from cytoscreen.report.pages.screen import screen_report

    settings, chash = _settings(args)
    qc_tables = []
    for path in args.qc:
        qc_tables.append(io.read_table(path))
        logger.info("read %s (%d sites)", path, len(qc_tables[-1]))
    novelty = _optional(args.novelty, "novelty table (--novelty)")
    moa = _optional(args.moa, "MoA table (--moa)")
    profiles = _optional(args.profiles, "well profiles (--profiles)")
    evaluation = None
    if args.evaluation:
        try:
            evaluation = json.loads(Path(args.evaluation).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputDataError(f"{args.evaluation}: cannot read evaluation JSON ({err})") from err
    plates = [str(p) for qc in qc_tables if io.PLATE in qc.columns for p in qc[io.PLATE].unique()]
    links = _plate_links(Path(args.out), args.plate_reports, plates)
    inputs = {
        "qc": " ".join(args.qc),
        "novelty": args.novelty,
        "moa": args.moa,
        "evaluation": args.evaluation,
        "profiles": args.profiles,
    }
    note = f"from {args.profiles}" if args.profiles else ""
    page = screen_report(
        qc_tables,
        novelty=novelty,
        moa=moa,
        evaluation=evaluation,
        profiles=profiles,
        plate_links=links,
        settings=settings,
        inputs=inputs,
        config_hash=chash,
        profiles_note=note,
    )
    io.write_text(page, args.out)
    logger.info(
        "screen: %d plates, wrote %s (%.0f kB)", len(plates), args.out, len(page.encode()) / 1024
    )
    return 0
