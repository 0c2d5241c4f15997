"""Embed every image site of a plate with an ImageNet-pretrained CNN (segmentation-free profiling).

Reads the plate's images.parquet and qc.parquet, scales each channel (fixed per plate from
negcon wells by default), optionally corrects illumination, resizes or tiles each channel to the
backbone's input, and writes one row per site: Metadata_* and QC_* columns plus float32 features
named <Channel>_<backbone>_<i> (e.g. DNA_efficientnet_lite0_0000).  Sites flagged QC_unreadable
are skipped and logged.  Runs on CPU, one GPU, or several GPUs (Lightning DDP).

Options given on the command line override the `features:` section of the config; their shown
defaults are the schema defaults, used when neither sets them.

example:
  cytoscreen features --config config/config.yaml --plate P1 \\
      --images results/P1/images.parquet --qc results/P1/qc.parquet --out results/P1/sites.parquet
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from cytoscreen.argparse_ import add_command, add_override, load_config_with_overrides, section_schema

logger = logging.getLogger(__name__)

#: (flag, config key, type, help) of the options that override `features.<key>`.
OVERRIDES: tuple[tuple[str, str, Any, str], ...] = (
    ("--backbone", "backbone", str, "backbone name (see `cytoscreen backbones`) or timm:<arch>"),
    ("--weights", "weights", str, "weights file to load instead of the packaged weights"),
    ("--batch-size", "batch_size", int, "sites per batch"),
    ("--num-workers", "num_workers", int, "DataLoader worker processes (0: read in the main process)"),
    ("--threads", "threads", int, "torch CPU threads of each process"),
    ("--accelerator", "accelerator", str, "cpu, gpu, or auto (GPU when one is visible)"),
    ("--devices", "devices", int, "devices (GPUs or CPU processes) per node; >1 runs DDP"),
    ("--num-nodes", "num_nodes", int, "nodes for multi-node DDP"),
    ("--strategy", "strategy", str, "Lightning strategy (auto, ddp, ddp_spawn, ...)"),
    ("--precision", "precision", str, "auto (16-mixed on GPU, 32-true on CPU) or a Lightning precision"),
    ("--scaling", "scaling", str, "intensity scaling: negcon, image or dtype"),
    ("--spatial", "spatial", str, "resize or tile each channel to the backbone input"),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, "features", __doc__)
    parser.add_argument("--config", default=None, help="workflow config YAML (schema defaults if omitted)")
    parser.add_argument("--plate", required=True, help="plate name (as in plates.tsv)")
    parser.add_argument("--images", default=None,
                        help="the plate's images.parquet; if omitted, <results>/<plate>/images.parquet")
    qc = parser.add_mutually_exclusive_group()
    qc.add_argument("--qc", default=None,
                    help="the plate's qc.parquet; if omitted, <results>/<plate>/qc.parquet")
    qc.add_argument("--no-qc", action="store_true", help="embed every site, without QC flags")
    parser.add_argument("--out", default=None,
                        help="sites.parquet to write; if omitted, <results>/<plate>/sites.parquet")
    props = section_schema("features")
    for flag, key, typ, text in OVERRIDES:
        add_override(parser, flag, key, text, schema=props, section="features", type=typ)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from cytoscreen import io
    from cytoscreen.features.embed import FeatureSettings, extract_features

    config = load_config_with_overrides(args, "features")
    settings = FeatureSettings.from_config(config["features"])
    torch.set_num_threads(max(int(settings.threads), 1))
    plate_dir = Path(config["results"]) / args.plate
    images_path = Path(args.images) if args.images else plate_dir / "images.parquet"
    out = Path(args.out) if args.out else plate_dir / "sites.parquet"
    images = io.read_table(images_path)
    if io.PLATE in images.columns:
        plates = sorted(map(str, images[io.PLATE].dropna().unique()))
        if args.plate not in plates:
            raise_plate_mismatch(images_path, args.plate, plates)
        if len(plates) > 1:
            n_other = int((images[io.PLATE].astype(str) != args.plate).sum())
            logger.info("%s: using the %d images of plate %s, leaving %d images of other plates",
                        images_path, len(images) - n_other, args.plate, n_other)
            images = images[images[io.PLATE].astype(str) == args.plate]
    qc = None
    qc_path: Path | None = None
    if not args.no_qc:
        qc_path = Path(args.qc) if args.qc else plate_dir / "qc.parquet"
        qc = io.read_table(qc_path)
    logger.info("plate %s: read %d images from %s%s", args.plate, len(images), images_path,
                f" and {len(qc)} QC rows from {qc_path}" if qc is not None else " (no QC table)")
    result = extract_features(
        images, qc, out=out, settings=settings, plate=args.plate,
        provenance={"config_hash": io.config_hash(config), "images": str(images_path),
                    "qc": str(qc_path) if qc_path else None},
        source=str(images_path), qc_source=str(qc_path or "qc"),
    )
    if result.out is not None and result.n_skipped:
        logger.info("plate %s: %d site(s) skipped as QC_unreadable", args.plate, result.n_skipped)
    return 0


def raise_plate_mismatch(path: Path, plate: str, plates: list[str]) -> None:
    from cytoscreen.errors import InputDataError

    shown = ", ".join(plates[:5]) + (" ..." if len(plates) > 5 else "")
    raise InputDataError(f"{path}: no images of plate {plate!r} (plates in the table: {shown})")
