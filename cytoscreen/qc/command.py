"""Measure image QC per site and flag unreadable, constant, blurry, saturated and empty sites.

Reads images.parquet, writes qc.parquet (one row per site: Metadata_* keys, per-channel metrics
Metadata_<Channel>_FocusScore/SaturationFraction/..., bool QC_* flags).
"""

from __future__ import annotations

import argparse
import logging

from cytoscreen import io
from cytoscreen.argparse_ import add_command, add_override, load_config_with_overrides, section_schema

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "qc", __doc__)
    p.add_argument("images", help="images.parquet of one plate")
    p.add_argument("out", help="output qc.parquet")
    p.add_argument("--config", help="workflow config YAML (qc: section; schema defaults without it)")
    add_override(p, "--threads", "threads", "reader threads", schema=section_schema("qc"), section="qc",
                 type=int)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cytoscreen.qc import QCSettings, run_qc

    config = load_config_with_overrides(args, "qc")
    images = io.read_table(args.images)
    table = run_qc(images, QCSettings.from_config(config["qc"]))
    io.write_parquet(table, args.out, provenance=io.provenance("qc", config_hash=io.config_hash(config)))
    logger.info("read %s (%d images), wrote %s (%d sites)", args.images, len(images), args.out, len(table))
    return 0
