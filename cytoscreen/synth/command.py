"""Draw a synthetic screen (demo data and test ground truth).

Writes OUT/images/<plate>/ (ImageXpress TIFFs), OUT/platemaps/<plate>.tsv, OUT/plates.tsv and
OUT/truth/<plate>.tsv; the same seed always gives the same pixels.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cytoscreen.argparse_ import add_command

    p = add_command(subparsers, "synth", __doc__)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--plates", type=int, default=2, help="number of plates")
    p.add_argument("--wells", type=int, default=96, choices=(96, 384), help="plate format")
    p.add_argument("--sites", type=int, default=2, help="sites (fields) per well")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--image-px", type=int, default=192, help="image width and height in pixels")
    p.add_argument("--masks", action="store_true", help="also write ground-truth nucleus label masks")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cytoscreen.synth.screen import default_settings, synth_screen

    table = synth_screen(args.out, plates=args.plates, wells=args.wells, sites=args.sites,
                         seed=args.seed, settings=default_settings(args.image_px), masks=args.masks)
    logger.info("wrote %d plates to %s (plate table %s/plates.tsv)", len(table), args.out, args.out)
    return 0
