"""Index one plate's images, join its platemap and write images.parquet.

Reads the plate's row of the plate table named in the config, parses file names with the plate's
layout, checks that every site has every channel, and joins the platemap.
"""

from __future__ import annotations

import argparse
import logging

from cytoscreen import io

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cytoscreen.argparse_ import add_command

    p = add_command(subparsers, "ingest", __doc__)
    p.add_argument("--config", required=True, help="workflow config YAML")
    p.add_argument("--plate", required=True, help="plate name (a row of the plate table)")
    p.add_argument("--out", required=True, help="output images.parquet")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cytoscreen.config import load_config, plate_info
    from cytoscreen.ingest import IngestSettings, ingest_plate

    config = load_config(args.config)
    table = ingest_plate(args.plate, plate_info(config, args.plate), IngestSettings.from_config(config))
    io.write_parquet(table, args.out, provenance=io.provenance("ingest", plate=args.plate,
                                                               config_hash=io.config_hash(config)))
    logger.info("plate %s: wrote %s (%d images, %d wells)", args.plate, args.out, len(table),
                table[io.WELL].nunique())
    return 0
