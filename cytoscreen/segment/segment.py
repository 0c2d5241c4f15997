"""Cellpose segmentation per site, per-site counts, and the ``QC_low_count`` flag.

For every site of a plate the nuclei are segmented on the DNA channel (``segment.nuclei_channel``,
greyscale) and, when ``segment.cell_channel`` names a cytoplasm channel, the cells on that channel
with DNA as Cellpose's second (nuclear) channel.  Object diameters come from config, or are
estimated once per plate (:func:`estimate_diameter`): the model is run at its own training
diameter on a few QC-passed negcon sites and the median equivalent diameter of the objects it finds
is used for the whole plate, so every site of a plate is segmented at the same scale.

Per-site readouts (``segmentation.parquet``, one row per site, every column ``Metadata_*``):

``Metadata_Count_Nuclei``, ``Metadata_Count_Cells``
    objects found (nullable integers; missing when the site could not be read, cells missing when
    no cell channel is set),
``Metadata_MeanArea_Nuclei``, ``Metadata_MeanArea_Cells``
    mean object area in pixels,
``Metadata_BorderFraction_Nuclei``, ``Metadata_BorderFraction_Cells``
    fraction of objects touching the image border.

The readouts carry the ``Metadata_`` prefix on purpose: they are readouts for QC, toxicity and
the report, and adding them to a QC or profile table must never change the feature set (features
are every column not starting with ``Metadata_`` or ``QC_``).  ``segmentation.parquet`` is therefore
not a profile table; it has no feature columns.

:func:`cytoscreen.segment.lowcount.segmented_qc` joins the readouts into the plate's QC table and
adds ``QC_low_count``: a site whose nucleus count is a robust low outlier against the plate's
QC-passed negcon sites, ``(count - median) / (1.4826 MAD) < -low_count_z``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io, plate, stats
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.plate import read_site_image

logger = logging.getLogger(__name__)

STAGE = "segment"
OBJECTS: tuple[str, ...] = ("Nuclei", "Cells")


def count_column(obj: str) -> str:
    """``Metadata_Count_<Object>``."""
    return f"{io.METADATA_PREFIX}Count_{obj}"


def mean_area_column(obj: str) -> str:
    """``Metadata_MeanArea_<Object>`` (pixels)."""
    return f"{io.METADATA_PREFIX}MeanArea_{obj}"


def border_fraction_column(obj: str) -> str:
    """``Metadata_BorderFraction_<Object>``."""
    return f"{io.METADATA_PREFIX}BorderFraction_{obj}"


#: Every readout column of segmentation.parquet, in table order.
READOUT_COLUMNS: tuple[str, ...] = tuple(
    col for obj in OBJECTS
    for col in (count_column(obj), mean_area_column(obj), border_fraction_column(obj))
)


@dataclass(frozen=True)
class CropSettings:
    """The ``segment.crops`` config section (defaults equal the schema's; a test checks it)."""

    enabled: bool = False
    size_px: int = 96
    channels: tuple[str, ...] = ()
    embed: bool = False
    backbone: str | None = None
    weights: str | None = None
    scaling: str = "negcon"
    scaling_percentiles: tuple[float, float] = (0.1, 99.9)
    reference_max_crops: int = 2000
    batch_size: int = 64


@dataclass(frozen=True)
class SegmentSettings:
    """The ``segment`` config section (defaults equal the schema's; a test checks it)."""

    enabled: bool = False
    model: str | None = None
    nuclei_model: str | None = None
    nuclei_channel: str = "DNA"
    cell_channel: str | None = None
    nuclei_diameter_px: float | None = None
    cell_diameter_px: float | None = None
    diameter_sites: int = 8
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    min_size_px: int = 15
    batch_size: int = 8
    accelerator: str = "auto"
    threads: int = 2
    save_masks: bool = False
    ome_zarr_labels: str = "none"  # none | copy | input (cytoscreen/segment/omezarr_labels.py)
    low_count_z: float | None = 3.0
    min_reference_sites: int = 4
    reference: str = "negcon"
    crops: CropSettings = field(default_factory=CropSettings)

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> SegmentSettings:
        """Settings from a (validated) ``segment`` config mapping; unknown keys are ignored."""
        section = dict(section or {})
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in section and f.name != "crops":
                kwargs[f.name] = section[f.name]
        crops = dict(section.get("crops") or {})
        crop_kwargs: dict[str, Any] = {}
        for f in fields(CropSettings):
            if f.name in crops:
                value = crops[f.name]
                if f.name in ("channels", "scaling_percentiles") and value is not None:
                    value = tuple(value)
                crop_kwargs[f.name] = value
        kwargs["crops"] = CropSettings(**crop_kwargs)
        return cls(**kwargs)


# --- site table ------------------------------------------------------------------------------------
def site_table(images: pd.DataFrame, channels: Sequence[str], *, source: str = "images") -> pd.DataFrame:
    """One row per site: its ``Metadata_*`` columns plus ``path_<Channel>`` / ``frame_<Channel>``
    (and ``scale_<Channel>`` for a rescaled plate; :func:`cytoscreen.plate.sites_from_images`),
    sorted by plate, row, column and site.  Read its images with
    :func:`cytoscreen.plate.read_site_image`, which applies the ``intensity_scale``.

    Raises
    ------
    ConfigError
        A channel of the segment config has no images.
    InputDataError
        A required column is missing, or a site lacks one of ``channels``.
    """
    if io.CHANNEL in images.columns:
        present = list(dict.fromkeys(images[io.CHANNEL].astype(str)))
        absent = [ch for ch in channels if ch not in present]
        if absent and not images.empty:
            raise ConfigError(
                f"{source}: channel(s) {', '.join(absent)} named in the segment config are not in "
                f"the image table (channels: {', '.join(present)}); set `segment.nuclei_channel` / "
                f"`segment.cell_channel` to one of those"
            )
    return plate.sites_from_images(images, list(channels), source=source, key="the segment config")


def qc_flagged(sites: pd.DataFrame, qc: pd.DataFrame | None, column: str | None = None) -> np.ndarray:
    """Per site of ``sites`` (in order): True where ``qc`` has flag ``column`` set (any ``QC_*``
    flag when None); sites missing from ``qc`` count as not flagged."""
    if qc is None or qc.empty:
        return np.zeros(len(sites), dtype=bool)
    failed = plate.qc_failed(qc, [column] if column else None)
    if not failed.any():
        return np.zeros(len(sites), dtype=bool)
    flags = qc[list(io.SITE_KEYS)].copy()
    flags["_flag"] = failed.to_numpy()
    flags = flags.drop_duplicates(list(io.SITE_KEYS))
    merged = sites[list(io.SITE_KEYS)].merge(flags, on=list(io.SITE_KEYS), how="left")
    return merged["_flag"].fillna(False).astype(bool).to_numpy()


# --- per-site measurements -------------------------------------------------------------------------
def object_stats(labels: np.ndarray) -> tuple[int, float, float]:
    """(count, mean area in px, fraction of objects touching the border) of a label image."""
    labels = np.asarray(labels)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    if len(ids) == 0:
        return 0, math.nan, math.nan
    edge = np.concatenate([labels[0, :], labels[-1, :], labels[:, 0], labels[:, -1]])
    touching = np.intersect1d(np.unique(edge[edge > 0]), ids)
    return int(len(ids)), float(areas.mean()), float(len(touching) / len(ids))


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameter of the circle of equal area, per object of a label image."""
    labels = np.asarray(labels)
    _, areas = np.unique(labels[labels > 0], return_counts=True)
    return 2.0 * np.sqrt(areas / np.pi)


def _empty_readouts() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for obj in OBJECTS:
        out[count_column(obj)] = pd.NA
        out[mean_area_column(obj)] = math.nan
        out[border_fraction_column(obj)] = math.nan
    return out


def readouts(nuclei: np.ndarray, cells: np.ndarray | None) -> dict[str, Any]:
    """The per-site readout columns from nucleus (and cell) label images."""
    out = _empty_readouts()
    for obj, labels in (("Nuclei", nuclei), ("Cells", cells)):
        if labels is None:
            continue
        n, area, border = object_stats(labels)
        out[count_column(obj)] = n
        out[mean_area_column(obj)] = area
        out[border_fraction_column(obj)] = border
    return out


# --- mask files -----------------------------------------------------------------------------------
def mask_path(masks_dir: str | os.PathLike, plate: str, well: str, site: int, kind: str = "nuclei") -> Path:
    """``<masks_dir>/<plate>_<well>_s<site>_<kind>.tif`` (the name ``cytoscreen synth --masks`` uses)."""
    return Path(masks_dir) / f"{plate}_{well}_s{int(site)}_{kind}.tif"


def write_mask(labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a label image as a zlib-compressed TIFF, atomically."""
    import tifffile

    with io.atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(labels), compression="zlib")
    return Path(path)


# --- running cellpose ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segmenter:
    """Cellpose models and settings for one plate: nuclei (greyscale) and optional cells (2 channels)."""

    nuclei_model: Any
    cell_model: Any | None = None
    nuclei_diameter_px: float | None = None
    cell_diameter_px: float | None = None
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    min_size_px: int = 15
    batch_size: int = 8

    def _eval(self, model, x: np.ndarray, *, diameter: float | None, cells: bool) -> np.ndarray:
        kwargs: dict[str, Any] = dict(
            batch_size=self.batch_size,
            normalize={"normalize": True},  # a fresh dict: cellpose mutates its module default
            diameter=diameter,
            flow_threshold=self.flow_threshold,
            cellprob_threshold=self.cellprob_threshold,
            min_size=self.min_size_px,
        )
        if cells:
            masks = model.eval(x, channels=[1, 2], channel_axis=0, **kwargs)[0]
        else:
            masks = model.eval(x, channels=[0, 0], **kwargs)[0]
        masks = np.asarray(masks)
        if masks.shape != x.shape[-2:]:
            raise InputDataError(f"cellpose returned masks of shape {masks.shape} for an image of {x.shape}")
        return masks.astype(np.uint32 if masks.max(initial=0) > np.iinfo(np.uint16).max else np.uint16,
                            copy=False)

    def nuclei(self, dna: np.ndarray, *, diameter: float | None = None) -> np.ndarray:
        """Nucleus label image of one DNA image (``diameter`` overrides the plate's)."""
        d = diameter if diameter is not None else self.nuclei_diameter_px
        return self._eval(self.nuclei_model, _as_float(dna), diameter=d, cells=False)

    def cells(self, cyto: np.ndarray, dna: np.ndarray, *, diameter: float | None = None) -> np.ndarray:
        """Cell label image from a cytoplasm image with DNA as the nuclear channel."""
        if self.cell_model is None:
            raise ConfigError("no cell model; set `segment.cell_channel` to segment cells")
        d = diameter if diameter is not None else self.cell_diameter_px
        x = np.stack([_as_float(cyto), _as_float(dna)])
        return self._eval(self.cell_model, x, diameter=d, cells=True)


def _as_float(img: np.ndarray) -> np.ndarray:
    x = np.asarray(img, dtype=np.float32)
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return x


def diameter_sample(sites: pd.DataFrame, *, qc: pd.DataFrame | None = None, n_sites: int = 8,
                    reference: str = "negcon") -> pd.DataFrame:
    """Up to ``n_sites`` QC-passed reference (negcon) sites spread over the plate (any sites if none)."""
    ok = ~qc_flagged(sites, qc, None)
    ref = ok & plate.pert_type_mask(sites, reference)
    pool = np.flatnonzero(ref) if ref.any() else np.flatnonzero(ok)
    if len(pool) == 0:
        pool = np.arange(len(sites))
    return sites.iloc[pool[stats.spread(len(pool), n_sites)]]


def estimate_diameter(masks: Sequence[np.ndarray], *, fallback: float) -> float:
    """Median equivalent diameter of all objects in ``masks``; ``fallback`` when there are none."""
    d = np.concatenate([equivalent_diameters(m) for m in masks]) if len(masks) else np.zeros(0)
    if len(d) == 0:
        return float(fallback)
    return float(np.median(d))


def fit_diameters(segmenter: Segmenter, sample: pd.DataFrame, *, nuclei_channel: str,
                  cell_channel: str | None, model_diameters: tuple[float, float | None],
                  plate: str = "") -> Segmenter:
    """Fill the segmenter's missing diameters from a sample of sites (two-pass estimate).

    Each model is run at its training diameter (``model_diameters``) on the sample; the median
    equivalent diameter of the objects found becomes the plate's diameter.  When the sample yields
    no objects, the model's training diameter is used (and logged).
    """
    out = segmenter
    need_n = segmenter.nuclei_diameter_px is None
    need_c = cell_channel is not None and segmenter.cell_diameter_px is None
    if not (need_n or need_c) or sample.empty:
        return out
    n_masks, c_masks = [], []
    for row in sample.to_dict(orient="records"):
        try:
            dna = read_site_image(row, nuclei_channel)
            cyto = read_site_image(row, cell_channel) if need_c else None
        except InputDataError as err:
            logger.warning("diameter estimate: skipped a site (%s)", err)
            continue
        if need_n:
            n_masks.append(segmenter.nuclei(dna, diameter=model_diameters[0]))
        if need_c and cyto is not None:
            c_masks.append(segmenter.cells(cyto, dna, diameter=model_diameters[1]))
    changes: dict[str, float] = {}
    for obj, need, masks, fallback, attr in (
        ("nuclei", need_n, n_masks, model_diameters[0], "nuclei_diameter_px"),
        ("cells", need_c, c_masks, model_diameters[1], "cell_diameter_px"),
    ):
        if not need:
            continue
        n_obj = int(sum(len(np.unique(m)) - 1 for m in masks))
        d = estimate_diameter(masks, fallback=float(fallback))
        if n_obj == 0:
            logger.warning(
                "plate %s: the %s model found no %s on %d sample site(s); using its training "
                "diameter %.1f px (set `segment.%s` to fix it)", plate, obj, obj, len(masks), d,
                "nuclei_diameter_px" if obj == "nuclei" else "cell_diameter_px",
            )
        else:
            logger.info("plate %s: estimated %s diameter %.1f px from %d objects on %d site(s)",
                        plate, obj, d, n_obj, len(masks))
        changes[attr] = d
    return replace(out, **changes)


MaskSink = Callable[[Mapping[str, Any], np.ndarray, "np.ndarray | None"], None]


def segment_sites(
    sites: pd.DataFrame,
    segmenter: Segmenter,
    *,
    nuclei_channel: str = "DNA",
    cell_channel: str | None = None,
    skip: np.ndarray | None = None,
    mask_sink: MaskSink | None = None,
    source: str = "segment",
) -> pd.DataFrame:
    """Segment every site of a site table; one row per site with its metadata and readouts.

    Parameters
    ----------
    sites
        From :func:`site_table` (``path_<Channel>`` / ``frame_<Channel>`` columns).
    segmenter
        Models and (fixed) diameters.
    skip
        Boolean per site: not segmented (readouts missing), e.g. ``QC_unreadable`` sites.
    mask_sink
        Called as ``mask_sink(site_row, nuclei, cells)`` for every segmented site (mask writing).

    Unreadable images are recorded as missing readouts with a warning, not raised.
    """
    meta = [c for c in io.metadata_columns(sites) if c != io.CHANNEL]
    skip = np.zeros(len(sites), dtype=bool) if skip is None else np.asarray(skip, dtype=bool)
    rows = []
    n_unreadable = 0
    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=len(sites), desc="segment", unit="site", file=sys.stderr)
    for i, row in enumerate(sites.to_dict(orient="records")):
        rec = {c: row[c] for c in meta}
        out = _empty_readouts()
        if not skip[i]:
            try:
                dna = read_site_image(row, nuclei_channel)
                cyto = read_site_image(row, cell_channel) if cell_channel else None
            except InputDataError as err:
                logger.warning("%s: site not segmented: %s", source, err)
                n_unreadable += 1
            else:
                nuclei = segmenter.nuclei(dna)
                cells = segmenter.cells(cyto, dna) if cyto is not None else None
                out = readouts(nuclei, cells)
                if mask_sink is not None:
                    mask_sink(row, nuclei, cells)
        rows.append({**rec, **out})
        if progress is not None:
            progress.update(1)
        elif (i + 1) % 50 == 0 or i + 1 == len(sites):
            logger.info("%s: segmented %d/%d sites", source, i + 1, len(sites))
    if progress is not None:
        progress.close()
    table = pd.DataFrame(rows, columns=[*meta, *READOUT_COLUMNS])
    for obj in OBJECTS:
        table[count_column(obj)] = table[count_column(obj)].astype("Int64")
        table[mean_area_column(obj)] = table[mean_area_column(obj)].astype(np.float64)
        table[border_fraction_column(obj)] = table[border_fraction_column(obj)].astype(np.float64)
    if skip.any():
        logger.info("%s: skipped %d site(s) flagged QC_unreadable", source, int(skip.sum()))
    if n_unreadable:
        logger.warning("%s: %d site(s) could not be read and have no counts", source, n_unreadable)
    return table
