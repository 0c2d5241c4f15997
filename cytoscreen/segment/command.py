"""Optional Cellpose segmentation: cell counts, the QC_low_count flag and single-cell crops.

actions:
  run    segment every site of a plate (nuclei on the DNA channel, cells on a cytoplasm channel
         plus DNA) and write segmentation.parquet: one row per site, Metadata_* keys plus
         Metadata_Count_Nuclei, Metadata_Count_Cells, Metadata_MeanArea_*, Metadata_BorderFraction_*;
         with --masks, also the label masks as compressed TIFFs
  qc     join the counts into the plate's QC table and add QC_low_count (robust low outlier of the
         nucleus count against the plate's negcon sites): qc_segmented.parquet
  crops  fixed-size crops around every nucleus centre into a Zarr array plus an index table
  embed  embed the crops with the features backbone and aggregate cell -> site -> well

The model is a Cellpose 3 file named in `segment.model` (or a name found in Cellpose's local model
folder, CELLPOSE_LOCAL_MODELS_PATH); nothing is ever downloaded.  Options given on the command line
override the `segment:` section of the config; their shown defaults are the schema defaults.

examples:
  cytoscreen segment run --config config/config.yaml --plate P1 \\
      --images results/P1/images.parquet --qc results/P1/qc.parquet \\
      --out results/P1/segmentation.parquet --masks results/P1/masks
  cytoscreen segment qc results/P1/qc.parquet results/P1/segmentation.parquet \\
      results/P1/qc_segmented.parquet --config config/config.yaml
  cytoscreen segment crops --config config/config.yaml --plate P1 \\
      --images results/P1/images.parquet --masks results/P1/masks \\
      --out results/P1/crops.zarr --index results/P1/crops.parquet
  cytoscreen segment embed --config config/config.yaml --plate P1 --crops results/P1/crops.zarr \\
      --index results/P1/crops.parquet --qc results/P1/qc_segmented.parquet \\
      --out results/P1/single_cell_sites.parquet --wells results/P1/single_cell_wells.parquet
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: (flag, config key, type, help) of the options that override `segment.<key>`.
OVERRIDES: tuple[tuple[str, str, Any, str], ...] = (
    ("--model", "model", str, "Cellpose 3 model file or name in the Cellpose model folder"),
    ("--nuclei-model", "nuclei_model", str, "model for nuclei (none: the --model one)"),
    ("--nuclei-channel", "nuclei_channel", str, "channel the nuclei are segmented on"),
    ("--cell-channel", "cell_channel", str, "cytoplasm channel for cells (none: nuclei only)"),
    ("--nuclei-diameter-px", "nuclei_diameter_px", float, "nucleus diameter (px); none: estimated"),
    ("--cell-diameter-px", "cell_diameter_px", float, "cell diameter (px); none: estimated"),
    ("--batch-size", "batch_size", int, "224 px tiles per network batch"),
    ("--accelerator", "accelerator", str, "cpu, gpu, or auto (GPU when one is visible)"),
    ("--threads", "threads", int, "torch CPU threads"),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cytoscreen.argparse_ import HelpFormatter, add_command, add_override, section_schema

    parser = add_command(subparsers, "segment", __doc__)
    actions = parser.add_subparsers(dest="segment_action", metavar="<action>", required=True)
    props = section_schema("segment")

    def common(p: argparse.ArgumentParser, *, plate: bool = True) -> None:
        p.add_argument("--config", default=None, help="workflow config YAML (schema defaults if omitted)")
        if plate:
            p.add_argument("--plate", required=True, help="plate name (as in plates.tsv)")

    run_p = actions.add_parser("run", help="segment a plate: segmentation.parquet (+ masks)",
                               description=__doc__, formatter_class=HelpFormatter)
    common(run_p)
    run_p.add_argument("--images", default=None,
                       help="the plate's images.parquet; if omitted, <results>/<plate>/images.parquet")
    run_p.add_argument("--qc", default=None,
                       help="the plate's qc.parquet (QC_unreadable sites are skipped, QC-passed negcon "
                            "sites estimate diameters); optional")
    run_p.add_argument("--out", default=None,
                       help="segmentation.parquet to write; if omitted, <results>/<plate>/segmentation.parquet")
    run_p.add_argument("--masks", default=None,
                       help="folder for label masks <plate>_<well>_s<site>_{nuclei,cells}.tif; if omitted, "
                            "<results>/<plate>/masks when segment.save_masks or segment.crops.enabled, "
                            "else none are written")
    for flag, key, typ, text in OVERRIDES:
        add_override(run_p, flag, key, text, schema=props, section="segment", type=typ)
    run_p.set_defaults(func=run)

    qc_p = actions.add_parser("qc", help="join counts into the QC table, add QC_low_count",
                              description=__doc__, formatter_class=HelpFormatter)
    qc_p.add_argument("qc", help="the plate's qc.parquet")
    qc_p.add_argument("segmentation", help="the plate's segmentation.parquet")
    qc_p.add_argument("out", help="qc_segmented.parquet to write")
    common(qc_p, plate=False)
    add_override(qc_p, "--low-count-z", "low_count_z", "robust z below which a site is QC_low_count",
                 schema=props, section="segment", type=float)
    qc_p.set_defaults(func=run)

    crops_p = actions.add_parser("crops", help="crops around nucleus centres into a Zarr array",
                                 description=__doc__, formatter_class=HelpFormatter)
    common(crops_p)
    crops_p.add_argument("--images", default=None,
                         help="the plate's images.parquet; if omitted, <results>/<plate>/images.parquet")
    crops_p.add_argument("--masks", default=None,
                         help="folder of nucleus masks from `segment run --masks`; if omitted, <results>/<plate>/masks")
    crops_p.add_argument("--qc", default=None, help="qc.parquet; QC_unreadable sites are not cropped (optional)")
    crops_p.add_argument("--out", default=None, help="crops.zarr to write; if omitted, <results>/<plate>/crops.zarr")
    crops_p.add_argument("--index", default=None,
                         help="crop index table to write; if omitted, <results>/<plate>/crops.parquet")
    crops_p.set_defaults(func=run)

    embed_p = actions.add_parser("embed", help="embed crops, aggregate cell -> site -> well",
                                 description=__doc__, formatter_class=HelpFormatter)
    common(embed_p)
    embed_p.add_argument("--crops", default=None, help="crops.zarr; if omitted, <results>/<plate>/crops.zarr")
    embed_p.add_argument("--index", default=None, help="crops.parquet; if omitted, <results>/<plate>/crops.parquet")
    embed_p.add_argument("--qc", default=None,
                         help="QC table whose QC_* flags go into the site table (QC-failed sites are "
                              "left out of the well aggregate); optional")
    embed_p.add_argument("--out", default=None,
                         help="site-level table; if omitted, <results>/<plate>/single_cell_sites.parquet")
    embed_p.add_argument("--wells", default=None, help="also write the well-level table here (optional)")
    add_override(embed_p, "--accelerator", "accelerator", "cpu, gpu, or auto", schema=props,
                 section="segment")
    embed_p.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the chosen action (``run``, ``qc``, ``crops`` or ``embed``)."""
    actions = {"run": run_segment, "qc": run_qc, "crops": run_crops, "embed": run_embed}
    return actions[args.segment_action](args)


# --- actions: flags and config -> one library call ------------------------------------------------
def _config(args: argparse.Namespace) -> dict[str, Any]:
    from cytoscreen.argparse_ import load_config_with_overrides

    return load_config_with_overrides(args, "segment")


def _plate_path(config: dict[str, Any], plate: str, given: str | None, name: str) -> Path:
    return Path(given) if given else Path(config["results"]) / plate / name


def _settings(config: dict[str, Any]):
    from cytoscreen.segment.segment import SegmentSettings

    return SegmentSettings.from_config(config["segment"])


def run_segment(args: argparse.Namespace) -> int:
    from cytoscreen import io
    from cytoscreen.segment.stage import segment_plate

    config = _config(args)
    settings = _settings(config)
    # masks go to --masks, else to <results>/<plate>/masks when the config keeps them (crops need them)
    masks = args.masks
    if masks is None and (settings.save_masks or settings.crops.enabled or settings.ome_zarr_labels != "none"):
        masks = str(_plate_path(config, args.plate, None, "masks"))
    segment_plate(
        settings, plate=args.plate,
        images_path=_plate_path(config, args.plate, args.images, "images.parquet"),
        out=_plate_path(config, args.plate, args.out, "segmentation.parquet"),
        qc_path=args.qc, masks=masks, config_hash=io.config_hash(config), verbose=args.verbose,
    )
    return 0


def run_qc(args: argparse.Namespace) -> int:
    from cytoscreen import io
    from cytoscreen.segment.stage import segment_qc

    config = _config(args)
    segment_qc(_settings(config), qc_path=args.qc, segmentation_path=args.segmentation, out=args.out,
               config_hash=io.config_hash(config))
    return 0


def run_crops(args: argparse.Namespace) -> int:
    from cytoscreen import io
    from cytoscreen.segment.stage import crop_plate

    config = _config(args)
    crop_plate(
        _settings(config), plate=args.plate,
        images_path=_plate_path(config, args.plate, args.images, "images.parquet"),
        masks_dir=_plate_path(config, args.plate, args.masks, "masks"),
        out=_plate_path(config, args.plate, args.out, "crops.zarr"),
        index_path=_plate_path(config, args.plate, args.index, "crops.parquet"),
        qc_path=args.qc, config_hash=io.config_hash(config),
    )
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from cytoscreen import io
    from cytoscreen.segment.stage import embed_plate_crops

    config = _config(args)
    features = config.get("features", {})
    embed_plate_crops(
        _settings(config), plate=args.plate,
        crops_path=_plate_path(config, args.plate, args.crops, "crops.zarr"),
        index_path=_plate_path(config, args.plate, args.index, "crops.parquet"),
        out=_plate_path(config, args.plate, args.out, "single_cell_sites.parquet"),
        qc_path=args.qc, wells_path=args.wells,
        features_backbone=features.get("backbone", "efficientnet_lite0"),
        features_weights=features.get("weights"), config_hash=io.config_hash(config),
    )
    return 0
