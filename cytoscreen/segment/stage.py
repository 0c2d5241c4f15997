"""The segment stage's steps on one plate, as ``cytoscreen segment ACTION`` runs them.

Each function reads its inputs, calls :mod:`cytoscreen.segment.segment` (Cellpose per site, counts,
``QC_low_count``) or :mod:`cytoscreen.segment.crops` (crops, crop embeddings), and writes its
outputs with provenance: :func:`segment_plate` (segmentation.parquet and masks), :func:`segment_qc`
(qc_segmented.parquet), :func:`crop_plate` (crops.zarr and its index), :func:`embed_plate_crops`
(single-cell site and well tables).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError

if TYPE_CHECKING:
    import pandas as pd

    from cytoscreen.segment.segment import SegmentSettings

logger = logging.getLogger(__name__)


def plate_images(path: str | Path, plate: str) -> pd.DataFrame:
    """The rows of ``plate`` in an images.parquet (one clear error when it has none)."""
    path = Path(path)
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
def quiet_cellpose(verbose: int) -> Iterator[None]:
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



# --- steps ------------------------------------------------------------------------------------------
def segment_plate(
    settings: SegmentSettings,
    *,
    plate: str,
    images_path: str | Path,
    out: str | Path,
    qc_path: str | Path | None = None,
    masks: str | Path | None = None,
    config_hash: str | None = None,
    verbose: int = 0,
) -> pd.DataFrame:
    """Segment every site of ``plate``: write segmentation.parquet to ``out`` (and label masks to
    ``masks`` when given); return the table.  Models are resolved before any image is read."""
    import numpy as np
    import torch

    from cytoscreen.segment import model as sm
    from cytoscreen.segment import segment as sg
    from cytoscreen.segment.segment import mask_path, write_mask

    images_path, out = Path(images_path), Path(out)
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
    images = plate_images(images_path, plate)
    qc = io.read_table(qc_path) if qc_path else None
    channels = [settings.nuclei_channel] + ([settings.cell_channel] if settings.cell_channel else [])
    sites = sg.site_table(images, channels, source=str(images_path))
    skip = sg.qc_flagged(sites, qc, io.QC_UNREADABLE)
    logger.info("plate %s: %d sites from %s; nuclei on %s%s, %s", plate, len(sites), images_path,
                settings.nuclei_channel,
                f", cells on {settings.cell_channel} + {settings.nuclei_channel}" if settings.cell_channel else "",
                f"device {device}")
    with quiet_cellpose(verbose):
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
            plate=plate,
        )
        sink = None
        if masks:
            masks_dir = Path(masks)
            masks_dir.mkdir(parents=True, exist_ok=True)

            def sink(row, nuclei: np.ndarray, cells: np.ndarray | None) -> None:
                key = (row[io.PLATE], row[io.WELL], row[io.SITE])
                write_mask(nuclei, mask_path(masks_dir, *key, kind="nuclei"))
                if cells is not None:
                    write_mask(cells, mask_path(masks_dir, *key, kind="cells"))

        table = sg.segment_sites(sites, segmenter, nuclei_channel=settings.nuclei_channel,
                                 cell_channel=settings.cell_channel, skip=skip, mask_sink=sink,
                                 source=f"plate {plate}")
    record = io.provenance(
        sg.STAGE, plate=plate, config_hash=config_hash,
        cellpose_version=_cellpose_version(),
        **nuc_spec.provenance("segment_nuclei_model"),
        **(cell_spec.provenance("segment_cell_model") if cell_spec is not None else {}),
        nuclei_channel=settings.nuclei_channel, cell_channel=settings.cell_channel,
        nuclei_diameter_px=segmenter.nuclei_diameter_px,
        cell_diameter_px=segmenter.cell_diameter_px if cell_model is not None else None,
        flow_threshold=settings.flow_threshold, cellprob_threshold=settings.cellprob_threshold,
        min_size_px=settings.min_size_px, device=str(device), images=str(images_path),
        qc=str(qc_path) if qc_path else None, masks=str(masks) if masks else None,
    )
    io.write_parquet(table, out, provenance=record)
    counts = table[sg.count_column("Nuclei")]
    if counts.notna().any() and int(counts.fillna(0).sum()) == 0:
        logger.warning(
            "plate %s: no nuclei found on any site; check `segment.model` (a Cellpose 3 nuclei or cyto "
            "model?), `segment.nuclei_channel` and `segment.nuclei_diameter_px`", plate,
        )
    logger.info("plate %s: wrote %s (%d sites, median %s nuclei per site, %d sites without nuclei)%s",
                plate, out, len(table),
                f"{counts.median():.0f}" if counts.notna().any() else "n/a", int((counts == 0).sum()),
                f", masks in {masks}" if masks else "")
    return table


def _cellpose_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellpose")
    except PackageNotFoundError:
        return None


def segment_qc(
    settings: SegmentSettings,
    *,
    qc_path: str | Path,
    segmentation_path: str | Path,
    out: str | Path,
    config_hash: str | None = None,
) -> pd.DataFrame:
    """Join a plate's counts into its QC table and add ``QC_low_count``; write ``out``, return it."""
    from cytoscreen.segment import segment as sg
    from cytoscreen.segment.lowcount import segmented_qc

    qc = io.read_table(qc_path)
    seg = io.read_table(segmentation_path)
    table = segmented_qc(qc, seg, low_count_z=settings.low_count_z, reference=settings.reference,
                         min_reference_sites=settings.min_reference_sites, source=str(segmentation_path))
    record = io.provenance(sg.STAGE, action="qc", config_hash=config_hash, qc=str(qc_path),
                           segmentation=str(segmentation_path), low_count_z=settings.low_count_z,
                           reference=settings.reference)
    io.write_parquet(table, out, provenance=record)
    logger.info("wrote %s (%d sites, %d QC_low_count)", out, len(table), int(table[io.QC_LOW_COUNT].sum()))
    return table


def crop_plate(
    settings: SegmentSettings,
    *,
    plate: str,
    images_path: str | Path,
    masks_dir: str | Path,
    out: str | Path,
    index_path: str | Path,
    qc_path: str | Path | None = None,
    config_hash: str | None = None,
) -> pd.DataFrame:
    """Crop every nucleus of ``plate`` into the Zarr array ``out``; write and return the crop index."""
    import numpy as np

    from cytoscreen.segment import crops as cr
    from cytoscreen.segment import segment as sg

    cs = settings.crops
    images_path, masks_dir, out = Path(images_path), Path(masks_dir), Path(out)
    if not masks_dir.is_dir():
        raise InputDataError(f"{masks_dir}: no mask folder; run `cytoscreen segment run --masks {masks_dir}` first")
    images = plate_images(images_path, plate)
    present = list(dict.fromkeys(images.sort_values([io.PATH, io.FRAME], kind="stable")[io.CHANNEL].astype(str)))
    channels = list(cs.channels) or present
    if cs.size_px < 1:
        raise ConfigError("segment.crops.size_px must be at least 1")
    sites = sg.site_table(images, channels, source=str(images_path))
    qc = io.read_table(qc_path) if qc_path else None
    skip = sg.qc_flagged(sites, qc, io.QC_UNREADABLE)

    def labels_for(row) -> np.ndarray | None:
        path = cr.mask_path(masks_dir, row[io.PLATE], row[io.WELL], row[io.SITE], kind="nuclei")
        if not path.exists():
            return None
        return io.read_image(path)

    dtype = _crop_dtype(sites[~skip], channels)
    with cr.CropWriter(out, channels=channels, size_px=cs.size_px, dtype=dtype,
                       attrs={"plate": plate}) as writer:
        index = cr.crop_sites(sites, labels_for, writer, channels=channels, size_px=cs.size_px,
                              skip=skip, source=f"plate {plate}")
    record = io.provenance(sg.STAGE, action="crops", plate=plate, config_hash=config_hash,
                           channels=channels, size_px=cs.size_px, crops=str(out), masks=str(masks_dir),
                           dtype=str(np.dtype(dtype)))
    io.write_parquet(index, index_path, provenance=record)
    logger.info("plate %s: wrote %s (%d crops x %d channels x %d px) and %s", plate, out, len(index),
                len(channels), cs.size_px, index_path)
    return index


def _crop_dtype(sites, channels):
    """dtype of the crop array: that of the images of the first readable site (all channels) that
    is not rescaled (``intensity_scale`` 1, the channel's full-scale type); float32 when every site
    is rescaled."""
    import numpy as np

    from cytoscreen.plate import scale_column

    rescaled = np.zeros(len(sites), dtype=bool)
    for ch in channels:
        if scale_column(ch) in sites.columns:
            rescaled |= sites[scale_column(ch)].to_numpy(np.float64) != 1.0
    if len(sites) and rescaled.all():
        return np.dtype(np.float32)
    errors = []
    for row in sites[~rescaled].head(8).to_dict(orient="records"):
        try:
            return np.result_type(*[io.read_image(row[f"path_{ch}"], int(row[f"frame_{ch}"])).dtype
                                    for ch in channels])
        except InputDataError as err:
            errors.append(str(err))
    raise InputDataError(f"crops: cannot read the first sites' images ({'; '.join(errors[:2]) or 'no sites'})")


def embed_plate_crops(
    settings: SegmentSettings,
    *,
    plate: str,
    crops_path: str | Path,
    index_path: str | Path,
    out: str | Path,
    qc_path: str | Path | None = None,
    wells_path: str | Path | None = None,
    features_backbone: str = "efficientnet_lite0",
    features_weights: str | None = None,
    config_hash: str | None = None,
) -> pd.DataFrame:
    """Embed a plate's crops and aggregate cell -> site (``out``) and, with ``wells_path``, -> well.

    The backbone is ``segment.crops.backbone`` (weights ``segment.crops.weights``), else the
    features stage's (``features_backbone``, ``features_weights``).  Returns the site table.
    """
    import torch
    import zarr

    from cytoscreen.backbones import create_backbone
    from cytoscreen.segment import crops as cr
    from cytoscreen.segment import model as sm
    from cytoscreen.segment import segment as sg

    cs = settings.crops
    crops_path, index_path = Path(crops_path), Path(index_path)
    if not io.is_zarr_array(crops_path):
        raise InputDataError(f"{crops_path}: not a crop array; run `cytoscreen segment crops` first")
    array = zarr.open_array(str(crops_path), mode="r")
    index = io.read_table(index_path)
    if len(index) != array.shape[0]:
        raise InputDataError(f"{index_path}: {len(index)} rows but {crops_path} holds {array.shape[0]} crops; "
                             f"re-run `cytoscreen segment crops`")
    if len(index) == 0:
        raise InputDataError(
            f"{index_path}: plate {plate} has no crops (segmentation found no nuclei); check "
            f"`segment.model`, `segment.nuclei_channel` and `segment.nuclei_diameter_px`"
        )
    channels = [str(c) for c in array.attrs.get("channels", [])]
    device = sm.resolve_device(settings.accelerator)
    torch.set_num_threads(max(int(settings.threads), 1))
    name = cs.backbone or features_backbone
    weights = cs.weights if cs.backbone or cs.weights else features_weights
    backbone = create_backbone(name, weights)
    levels = None
    if cs.scaling == "negcon":
        levels = cr.reference_levels(array, index, reference=settings.reference,
                                     percentiles=cs.scaling_percentiles, max_crops=cs.reference_max_crops)
    sites = cr.embed_crops(array, index, backbone, channels=channels, scaling=cs.scaling, levels=levels,
                           percentiles=cs.scaling_percentiles, batch_size=cs.batch_size, device=device,
                           source=f"plate {plate}")
    qc = io.read_table(qc_path) if qc_path else None
    sites = cr.join_site_qc(sites, qc)
    record = io.provenance(
        sg.STAGE, action="embed", plate=plate, config_hash=config_hash, **backbone.spec.provenance(),
        channels=channels, scaling=cs.scaling, scaling_percentiles=list(cs.scaling_percentiles),
        scaling_levels=({c: [float(v) for v in lv] for c, lv in zip(channels, levels, strict=True)}
                        if levels is not None else None),
        crops=str(crops_path), size_px=int(array.shape[-1]), aggregate="median",
    )
    io.write_parquet(sites, out, provenance=record)
    logger.info("plate %s: wrote %s (%d sites from %d cells)", plate, out, len(sites), len(index))
    if wells_path:
        wells = cr.sites_to_wells(sites)
        io.write_parquet(wells, wells_path, provenance={**record, "level": "well"})
        logger.info("plate %s: wrote %s (%d wells)", plate, wells_path, len(wells))
    return sites
