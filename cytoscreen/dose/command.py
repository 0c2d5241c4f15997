"""Dose response per compound of a well table: cytoscreen dose NOVELTY.parquet OUT.parquet.

For each compound (Metadata_perturbation) with trt/poscon wells at several doses: Spearman's rho of
the readout against dose with its p-value (a monotone trend test), and a 4-parameter log-logistic
fit (EC50, Hill slope, top, bottom, R^2; fit_status says when and why a fit could not be made).
The dose is Metadata_concentration, or the platemap's dose_index column where a compound has no
concentrations.  The readout is report.readout (--readout overrides it); auto takes the plate
report's choice, the novelty score.

  cytoscreen dose results/screen/novelty/novelty.parquet results/screen/novelty/dose.parquet \\
      [--config CONFIG] [--readout COLUMN]
"""

from __future__ import annotations

import argparse
import logging

from cytoscreen.argparse_ import add_command, add_override, section_schema

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cytoscreen import io
    from cytoscreen.dose.fit import DOSE_INDEX

    p = add_command(subparsers, "dose", __doc__)
    p.add_argument("table", metavar="NOVELTY", help="well table with the readout (novelty.parquet)")
    p.add_argument("out", metavar="OUT", help="output Parquet, one row per compound")
    p.add_argument("--config", help="workflow config YAML (report.readout; schema defaults without it)")
    add_override(
        p,
        "--readout",
        "readout",
        "response column; auto: as the plate report chooses (the novelty score)",
        schema=section_schema("report"),
        section="report",
    )
    p.add_argument("--dose-column", default=io.CONCENTRATION, help="dose column")
    p.add_argument(
        "--fallback-dose-column",
        default=DOSE_INDEX,
        help="dose column for compounds without concentrations ('none': no fallback)",
    )
    p.add_argument("--min-doses", type=int, default=4, help="fewest distinct doses for a curve fit")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cytoscreen import io
    from cytoscreen.argparse_ import load_config_with_overrides
    from cytoscreen.dose.fit import FIT_OK, FIT_STATUS, dose_response, empty_table
    from cytoscreen.errors import InputDataError
    from cytoscreen.plate import resolve_readout

    config = load_config_with_overrides(args, "report")
    table = io.read_table(args.table)
    requested = config["report"]["readout"]
    readout, how = resolve_readout(table, requested)
    fallback = None if str(args.fallback_dose_column).lower() == "none" else args.fallback_dose_column
    if readout is None and requested != "auto":
        raise InputDataError(f"{args.table}: {how}")
    if readout is None:  # e.g. a plate with too few controls: novelty wrote NaN scores
        logger.warning("%s: %s; the dose table is empty", args.table, how)
        out = empty_table()
    else:
        out = dose_response(
            table,
            readout,
            dose_column=args.dose_column,
            fallback_column=fallback,
            min_doses=args.min_doses,
            source=args.table,
        )
    if out.empty:
        logger.warning("%s: no compound has wells at two or more doses; the table is empty", args.table)
    logger.info(
        "%s: readout %s (%s); %d compound(s), %d fitted (fit_status ok)",
        args.table,
        readout,
        how,
        len(out),
        int((out[FIT_STATUS] == FIT_OK).sum()),
    )
    io.write_parquet(out, args.out, provenance=io.provenance("dose", input=args.table, readout=readout))
    return 0
