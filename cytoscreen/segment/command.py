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
import contextlib
import logging
import warnings
from collections.abc import Iterator
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
    from cytoscreen.argparse_ import OVERRIDES_DEST, ConfigOverride, HelpFormatter, add_command, section_schema

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
                       help="folder for label masks <plate>_<well>_s<site>_{nuclei,cells}.tif (not written if omitted)")
    for flag, key, typ, text in OVERRIDES:
        prop = props.get(key, {})
        run_p.add_argument(flag, dest=key, type=typ, default=prop.get("default"),
                           choices=prop.get("enum"), action=ConfigOverride,
                           help=f"{text} (config: segment.{key})")
    run_p.set_defaults(func=run, **{OVERRIDES_DEST: None})

    qc_p = actions.add_parser("qc", help="join counts into the QC table, add QC_low_count",
                              description=__doc__, formatter_class=HelpFormatter)
    qc_p.add_argument("qc", help="the plate's qc.parquet")
    qc_p.add_argument("segmentation", help="the plate's segmentation.parquet")
    qc_p.add_argument("out", help="qc_segmented.parquet to write")
    common(qc_p, plate=False)
    qc_p.add_argument("--low-count-z", dest="low_count_z", type=float,
                      default=props.get("low_count_z", {}).get("default"), action=ConfigOverride,
                      help="robust z below which a site is QC_low_count (config: segment.low_count_z)")
    qc_p.set_defaults(func=run, **{OVERRIDES_DEST: None})

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
    embed_p.add_argument("--accelerator", dest="accelerator", default=props.get("accelerator", {}).get("default"),
                         choices=props.get("accelerator", {}).get("enum"), action=ConfigOverride,
                         help="cpu, gpu, or auto (config: segment.accelerator)")
    embed_p.set_defaults(func=run, **{OVERRIDES_DEST: None})
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the chosen action (``run``, ``qc``, ``crops`` or ``embed``)."""
    actions = {"run": run_segment, "qc": run_qc, "crops": run_crops, "embed": run_embed}
    return actions[args.segment_action](args)


# --- helpers ----------------------------------------------------------------------------------------
def _config(args: argparse.Namespace) -> dict[str, Any]:
    from cytoscreen.argparse_ import load_config_with_overrides

    return load_config_with_overrides(args, "segment")


def _plate_path(config: dict[str, Any], plate: str, given: str | None, name: str) -> Path:
    return Path(given) if given else Path(config["results"]) / plate / name


def _plate_images(path: Path, plate: str):
    from cytoscreen import io
    from cytoscreen.errors import InputDataError

    images = io.read_table(path)
    if io.PLATE not in images.columns:
        raise InputDataError(f"{path}: no {io.PLATE} column; pass the images.parquet written by ingest")
    keep = images[io.PLATE].astype(str) == plate
    if not keep.any():
        plates = sorted(map(str, images[io.PLATE].dropna().unique()))
        raise InputDataError(f"{path}: no images of plate {plate!r} (plates in the table: {', '.join(plates[:5])})")
    if not keep.all():
        logger.info("%s: using the %d images of plate %s, leaving %d of other plates", path,
                    int(keep.sum()), plate, int((~keep).sum()))
    return images.loc[keep].reset_index(drop=True)


@contextlib.contextmanager
def _quiet_cellpose(verbose: int) -> Iterator[None]:
    """Cellpose logs every empty site as a warning and torch warns about sparse checks; keep the
    rule logs readable unless -vv (cytoscreen logs its own per-plate counts)."""
    level = logging.DEBUG if verbose > 1 else logging.ERROR
    cp_logger = logging.getLogger("cellpose")
    saved = cp_logger.level
    cp_logger.setLevel(level)
    with warnings.catch_warnings():
        if verbose <= 1:
            warnings.filterwarnings("ignore", message=".*[Ss]parse invariant checks.*")
        try:
            yield
        finally:
            cp_logger.setLevel(saved)


# --- actions ----------------------------------------------------------------------------------------
def run_segment(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from cytoscreen import io
    from cytoscreen.segment import model as sm
    from cytoscreen.segment import segment as sg
    from cytoscreen.segment.segment import mask_path, write_mask

    config = _config(args)
    settings = sg.SegmentSettings.from_config(config["segment"])
    if not settings.enabled:
        logger.info("segment.enabled is false; running anyway because it was asked for by hand")
    # models first: a missing model fails before any image is read
    if settings.nuclei_model:
        nuc_spec = sm.resolve_model(settings.nuclei_model, key="segment.nuclei_model")
    else:
        nuc_spec = sm.resolve_model(settings.model, key="segment.model")
    cell_spec = sm.resolve_model(settings.model, key="segment.model") if settings.cell_channel else None
    device = sm.resolve_device(settings.accelerator)
    torch.set_num_threads(max(int(settings.threads), 1))
    images_path = _plate_path(config, args.plate, args.images, "images.parquet")
    out = _plate_path(config, args.plate, args.out, "segmentation.parquet")
    images = _plate_images(images_path, args.plate)
    qc = io.read_table(args.qc) if args.qc else None
    channels = [settings.nuclei_channel] + ([settings.cell_channel] if settings.cell_channel else [])
    sites = sg.site_table(images, channels, source=str(images_path))
    skip = sg.qc_flagged(sites, qc, "QC_unreadable")
    logger.info("plate %s: %d sites from %s; nuclei on %s%s, %s", args.plate, len(sites), images_path,
                settings.nuclei_channel,
                f", cells on {settings.cell_channel} + {settings.nuclei_channel}" if settings.cell_channel else "",
                f"device {device}")
    with _quiet_cellpose(args.verbose):
        nuc_model = sm.load_model(nuc_spec, device=device)
        cell_model = None
        if cell_spec is not None:
            cell_model = nuc_model if cell_spec.path == nuc_spec.path else sm.load_model(cell_spec, device=device)
        segmenter = sg.Segmenter(
            nuclei_model=nuc_model, cell_model=cell_model,
            nuclei_diameter_px=settings.nuclei_diameter_px, cell_diameter_px=settings.cell_diameter_px,
            flow_threshold=settings.flow_threshold, cellprob_threshold=settings.cellprob_threshold,
            min_size_px=settings.min_size_px, batch_size=settings.batch_size,
        )
        sample = sg.diameter_sample(sites[~skip], qc=qc, n_sites=settings.diameter_sites,
                                    reference=settings.reference)
        segmenter = sg.fit_diameters(
            segmenter, sample, nuclei_channel=settings.nuclei_channel, cell_channel=settings.cell_channel,
            model_diameters=(sm.model_diameter(nuc_model),
                             sm.model_diameter(cell_model) if cell_model is not None else None),
            plate=args.plate,
        )
        sink = None
        if args.masks:
            masks_dir = Path(args.masks)
            masks_dir.mkdir(parents=True, exist_ok=True)

            def sink(row, nuclei: np.ndarray, cells: np.ndarray | None) -> None:
                key = (row[io.PLATE], row[io.WELL], row[io.SITE])
                write_mask(nuclei, mask_path(masks_dir, *key, kind="nuclei"))
                if cells is not None:
                    write_mask(cells, mask_path(masks_dir, *key, kind="cells"))

        table = sg.segment_sites(sites, segmenter, nuclei_channel=settings.nuclei_channel,
                                 cell_channel=settings.cell_channel, skip=skip, mask_sink=sink,
                                 source=f"plate {args.plate}")
    record = io.provenance(
        sg.STAGE, plate=args.plate, config_hash=io.config_hash(config),
        cellpose_version=_cellpose_version(),
        **nuc_spec.provenance("segment_nuclei_model"),
        **(cell_spec.provenance("segment_cell_model") if cell_spec is not None else {}),
        nuclei_channel=settings.nuclei_channel, cell_channel=settings.cell_channel,
        nuclei_diameter_px=segmenter.nuclei_diameter_px,
        cell_diameter_px=segmenter.cell_diameter_px if cell_model is not None else None,
        flow_threshold=settings.flow_threshold, cellprob_threshold=settings.cellprob_threshold,
        min_size_px=settings.min_size_px, device=str(device), images=str(images_path),
        qc=str(args.qc) if args.qc else None, masks=str(args.masks) if args.masks else None,
    )
    io.write_parquet(table, out, provenance=record)
    counts = table[sg.count_column("Nuclei")]
    if counts.notna().any() and int(counts.fillna(0).sum()) == 0:
        logger.warning(
            "plate %s: no nuclei found on any site; check `segment.model` (a Cellpose 3 nuclei or cyto "
            "model?), `segment.nuclei_channel` and `segment.nuclei_diameter_px`", args.plate,
        )
    logger.info("plate %s: wrote %s (%d sites, median %s nuclei per site, %d sites without nuclei)%s",
                args.plate, out, len(table),
                f"{counts.median():.0f}" if counts.notna().any() else "n/a", int((counts == 0).sum()),
                f", masks in {args.masks}" if args.masks else "")
    return 0


def _cellpose_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellpose")
    except PackageNotFoundError:
        return None


def run_qc(args: argparse.Namespace) -> int:
    from cytoscreen import io
    from cytoscreen.segment import segment as sg

    config = _config(args)
    settings = sg.SegmentSettings.from_config(config["segment"])
    qc = io.read_table(args.qc)
    seg = io.read_table(args.segmentation)
    table = sg.segmented_qc(qc, seg, low_count_z=settings.low_count_z, reference=settings.reference,
                            min_reference_sites=settings.min_reference_sites, source=str(args.segmentation))
    record = io.provenance(sg.STAGE, action="qc", config_hash=io.config_hash(config), qc=str(args.qc),
                           segmentation=str(args.segmentation), low_count_z=settings.low_count_z,
                           reference=settings.reference)
    io.write_parquet(table, args.out, provenance=record)
    logger.info("wrote %s (%d sites, %d QC_low_count)", args.out, len(table), int(table[io.QC_LOW_COUNT].sum()))
    return 0


def run_crops(args: argparse.Namespace) -> int:
    import numpy as np

    from cytoscreen import io
    from cytoscreen.errors import ConfigError, InputDataError
    from cytoscreen.segment import crops as cr
    from cytoscreen.segment import segment as sg

    config = _config(args)
    settings = sg.SegmentSettings.from_config(config["segment"])
    cs = settings.crops
    images_path = _plate_path(config, args.plate, args.images, "images.parquet")
    masks_dir = _plate_path(config, args.plate, args.masks, "masks")
    out = _plate_path(config, args.plate, args.out, "crops.zarr")
    index_path = _plate_path(config, args.plate, args.index, "crops.parquet")
    if not masks_dir.is_dir():
        raise InputDataError(f"{masks_dir}: no mask folder; run `cytoscreen segment run --masks {masks_dir}` first")
    images = _plate_images(images_path, args.plate)
    present = list(dict.fromkeys(images.sort_values([io.PATH, io.FRAME], kind="stable")[io.CHANNEL].astype(str)))
    channels = list(cs.channels) or present
    if cs.size_px < 1:
        raise ConfigError("segment.crops.size_px must be at least 1")
    sites = sg.site_table(images, channels, source=str(images_path))
    qc = io.read_table(args.qc) if args.qc else None
    skip = sg.qc_flagged(sites, qc, "QC_unreadable")

    def labels_for(row) -> np.ndarray | None:
        path = cr.mask_path(masks_dir, row[io.PLATE], row[io.WELL], row[io.SITE], kind="nuclei")
        if not path.exists():
            return None
        return io.read_image(path)

    dtype = _crop_dtype(sites[~skip], channels)
    with cr.CropWriter(out, channels=channels, size_px=cs.size_px, dtype=dtype,
                       attrs={"plate": args.plate}) as writer:
        index = cr.crop_sites(sites, labels_for, writer, channels=channels, size_px=cs.size_px,
                              skip=skip, source=f"plate {args.plate}")
    record = io.provenance(sg.STAGE, action="crops", plate=args.plate, config_hash=io.config_hash(config),
                           channels=channels, size_px=cs.size_px, crops=str(out), masks=str(masks_dir),
                           dtype=str(np.dtype(dtype)))
    io.write_parquet(index, index_path, provenance=record)
    logger.info("plate %s: wrote %s (%d crops x %d channels x %d px) and %s", args.plate, out, len(index),
                len(channels), cs.size_px, index_path)
    return 0


def _crop_dtype(sites, channels):
    """dtype of the crop array: that of the images of the first readable site (all channels)."""
    import numpy as np

    from cytoscreen import io
    from cytoscreen.errors import InputDataError

    errors = []
    for row in sites.head(8).to_dict(orient="records"):
        try:
            return np.result_type(*[io.read_image(row[f"path_{ch}"], int(row[f"frame_{ch}"])).dtype
                                    for ch in channels])
        except InputDataError as err:
            errors.append(str(err))
    raise InputDataError(f"crops: cannot read the first sites' images ({'; '.join(errors[:2]) or 'no sites'})")


def run_embed(args: argparse.Namespace) -> int:
    import torch
    import zarr

    from cytoscreen import io
    from cytoscreen.errors import InputDataError
    from cytoscreen.backbones import create_backbone
    from cytoscreen.segment import crops as cr
    from cytoscreen.segment import model as sm
    from cytoscreen.segment import segment as sg

    config = _config(args)
    settings = sg.SegmentSettings.from_config(config["segment"])
    cs = settings.crops
    crops_path = _plate_path(config, args.plate, args.crops, "crops.zarr")
    index_path = _plate_path(config, args.plate, args.index, "crops.parquet")
    out = _plate_path(config, args.plate, args.out, "single_cell_sites.parquet")
    if not io.is_zarr_array(crops_path):
        raise InputDataError(f"{crops_path}: not a crop array; run `cytoscreen segment crops` first")
    array = zarr.open_array(str(crops_path), mode="r")
    index = io.read_table(index_path)
    if len(index) != array.shape[0]:
        raise InputDataError(f"{index_path}: {len(index)} rows but {crops_path} holds {array.shape[0]} crops; "
                             f"re-run `cytoscreen segment crops`")
    if len(index) == 0:
        raise InputDataError(
            f"{index_path}: plate {args.plate} has no crops (segmentation found no nuclei); check "
            f"`segment.model`, `segment.nuclei_channel` and `segment.nuclei_diameter_px`"
        )
    channels = [str(c) for c in array.attrs.get("channels", [])]
    device = sm.resolve_device(settings.accelerator)
    torch.set_num_threads(max(int(settings.threads), 1))
    features = config.get("features", {})
    name = cs.backbone or features.get("backbone", "efficientnet_lite0")
    weights = cs.weights if cs.backbone or cs.weights else features.get("weights")
    backbone = create_backbone(name, weights)
    levels = None
    if cs.scaling == "negcon":
        levels = cr.reference_levels(array, index, reference=settings.reference,
                                     percentiles=cs.scaling_percentiles, max_crops=cs.reference_max_crops)
    sites = cr.embed_crops(array, index, backbone, channels=channels, scaling=cs.scaling, levels=levels,
                           percentiles=cs.scaling_percentiles, batch_size=cs.batch_size, device=device,
                           source=f"plate {args.plate}")
    qc = io.read_table(args.qc) if args.qc else None
    sites = cr.join_site_qc(sites, qc)
    record = io.provenance(
        sg.STAGE, action="embed", plate=args.plate, config_hash=io.config_hash(config), **backbone.spec.provenance(),
        channels=channels, scaling=cs.scaling, scaling_percentiles=list(cs.scaling_percentiles),
        scaling_levels=({c: [float(v) for v in lv] for c, lv in zip(channels, levels, strict=True)}
                        if levels is not None else None),
        crops=str(crops_path), size_px=int(array.shape[-1]), aggregate="median",
    )
    io.write_parquet(sites, out, provenance=record)
    logger.info("plate %s: wrote %s (%d sites from %d cells)", args.plate, out, len(sites), len(index))
    if args.wells:
        wells = cr.sites_to_wells(sites)
        io.write_parquet(wells, args.wells, provenance={**record, "level": "well"})
        logger.info("plate %s: wrote %s (%d wells)", args.plate, args.wells, len(wells))
    return 0
