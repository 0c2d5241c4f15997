"""Plate-level rules with one definition each: negative controls, failed sites, treatment labels,
and the images-to-sites pivot.

Negative controls (:func:`negcon_mask`, :func:`negcon_rule`)
    A row is a negative control when its ``Metadata_pert_type``, stripped of surrounding blanks and
    lower-cased, is ``"negcon"`` (so ``"NegCon"`` and ``" negcon"`` count).  When the table has no
    ``Metadata_pert_type`` column, or that column has no ``negcon`` value, the rows whose first
    perturbation column present (:data:`PERTURBATION_ALIASES`, in order) holds a vehicle value
    (:data:`VEHICLE_VALUES`, compared stripped and case-insensitively) are the negative controls:
    for BBBC021, ``Metadata_Compound == "DMSO"``.  No such rows: an all-False mask.

Failed sites (:func:`qc_failed`)
    A site failed QC when any of its ``QC_*`` flags is set; a missing flag (NaN) counts as passed.

The plate readout (:func:`resolve_readout`)
    ``report.readout``, or with ``auto`` the first column with values of the novelty robust z, the
    novelty score, the cell count, the DNA channel's mean intensity, any mean intensity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError

NEGCON = "negcon"
#: Vehicle-control values recognised when no row has ``Metadata_pert_type == "negcon"``.
VEHICLE_VALUES: tuple[str, ...] = ("DMSO",)
#: Perturbation columns searched, in this order, for a vehicle control.
PERTURBATION_ALIASES: tuple[str, ...] = (
    io.PERTURBATION,
    "Metadata_Compound",
    "Metadata_compound",
    "Metadata_pert_iname",
    "Metadata_broad_sample",
    io.TREATMENT,
    "Metadata_treatment",
)


def _normalised(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip().str.lower()


# --- negative controls -----------------------------------------------------------------------------
def negcon_rule(
    df: pd.DataFrame, *, vehicle: Sequence[str] = VEHICLE_VALUES
) -> tuple[np.ndarray, str]:
    """The negative-control rows of ``df`` (the rule in the module docstring) and a sentence saying
    which rule found them (for the log), such as ``"Metadata_pert_type == 'negcon' (16 rows)"``."""
    missing_why = f"no {io.PERT_TYPE} column"
    if io.PERT_TYPE in df.columns:
        mask = (_normalised(df[io.PERT_TYPE]) == NEGCON).to_numpy()
        if mask.any():
            return mask, f"{io.PERT_TYPE} == {NEGCON!r} ({int(mask.sum())} rows)"
        values = sorted(map(str, df[io.PERT_TYPE].dropna().unique()))[:8]
        missing_why = f"no row has {io.PERT_TYPE} == {NEGCON!r} (values: {', '.join(values)})"
    wanted = {str(v).strip().lower() for v in vehicle}
    for col in PERTURBATION_ALIASES:
        if col in df.columns:
            mask = _normalised(df[col]).isin(wanted).to_numpy()
            if mask.any():
                found = str(df.loc[mask, col].iloc[0]).strip()
                return mask, f"{missing_why}; {col} == {found!r} ({int(mask.sum())} rows)"
    return np.zeros(len(df), dtype=bool), (
        f"{missing_why} and no perturbation column ({', '.join(PERTURBATION_ALIASES[:3])}, ...) "
        f"holds {'/'.join(vehicle)}: no negative-control rows"
    )


def negcon_mask(df: pd.DataFrame, *, vehicle: Sequence[str] = VEHICLE_VALUES) -> np.ndarray:
    """Boolean mask of the negative-control rows of ``df`` (see the module docstring)."""
    return negcon_rule(df, vehicle=vehicle)[0]


def pert_type_mask(df: pd.DataFrame, pert_type: str = NEGCON) -> np.ndarray:
    """Rows of a ``Metadata_pert_type`` value, compared stripped and case-insensitively;
    ``"negcon"`` is :func:`negcon_mask` (with its vehicle fallback).  A table without the column
    has no rows of any other type."""
    value = str(pert_type).strip().lower()
    if value == NEGCON:
        return negcon_mask(df)
    if io.PERT_TYPE not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return (_normalised(df[io.PERT_TYPE]) == value).to_numpy()


# --- failed sites ----------------------------------------------------------------------------------
def qc_failed(qc: pd.DataFrame, flags: Sequence[str] | None = None) -> pd.Series:
    """True for the rows (sites) with any ``QC_*`` flag set (only ``flags`` when given; those absent
    from the table are ignored).  Missing values count as passed; the index is that of ``qc``."""
    cols = io.qc_columns(qc) if flags is None else [c for c in flags if c in qc.columns]
    if not cols:
        return pd.Series(False, index=qc.index, dtype=bool)
    return qc[cols].astype("boolean").fillna(False).astype(bool).any(axis=1)


# --- treatment labels ------------------------------------------------------------------------------
def format_treatment(perturbation: object, concentration: object = None) -> str:
    """``"taxol @ 0.3"``; the perturbation alone when the concentration is missing, ``""`` when the
    perturbation is.  Numeric concentrations are written with ``:g``."""
    if perturbation is None or (not isinstance(perturbation, str) and pd.isna(perturbation)):
        return ""
    if concentration is None or (not isinstance(concentration, str) and pd.isna(concentration)):
        return str(perturbation)
    if isinstance(concentration, int | float | np.number) and not isinstance(concentration, bool):
        return f"{perturbation} @ {float(concentration):g}"
    return f"{perturbation} @ {concentration}"


def treatment_label(
    df: pd.DataFrame,
    *,
    perturbation: str = io.PERTURBATION,
    concentration: str | None = io.CONCENTRATION,
    use_existing: bool = True,
) -> pd.Series:
    """One label per row: ``Metadata_Treatment`` when present (and ``use_existing``), else
    ``"<perturbation> @ <concentration>"`` (:func:`format_treatment`).

    Raises
    ------
    InputDataError
        Neither ``Metadata_Treatment`` nor the ``perturbation`` column is in the table.
    """
    if use_existing and io.TREATMENT in df.columns:
        return df[io.TREATMENT].astype(str)
    if perturbation not in df.columns:
        raise InputDataError(
            f"cannot label treatments: no {perturbation} column "
            f"(metadata columns: {', '.join(io.metadata_columns(df)[:12])})"
        )
    conc = df[concentration] if concentration and concentration in df.columns else None
    pert = df[perturbation].tolist()
    concs = conc.tolist() if conc is not None else [None] * len(df)
    return pd.Series(
        [format_treatment(p, c) for p, c in zip(pert, concs, strict=True)], index=df.index, dtype=object
    )


# --- images -> sites -------------------------------------------------------------------------------
def path_column(channel: str) -> str:
    """Column of :func:`sites_from_images` holding ``channel``'s image path."""
    return f"path_{channel}"


def frame_column(channel: str) -> str:
    """Column of :func:`sites_from_images` holding ``channel``'s frame (-1 = whole file)."""
    return f"frame_{channel}"


def scale_column(channel: str) -> str:
    """Column of :func:`sites_from_images` holding ``channel``'s ``intensity_scale`` (only when the
    table records a rescale, ``ingest.on_mixed_bit_depth: rescale``)."""
    return f"scale_{channel}"


def read_site_image(site: Mapping[str, Any], channel: str) -> np.ndarray:
    """``channel``'s image of one :func:`sites_from_images` row, with its ``intensity_scale``
    applied (:func:`cytoscreen.io.apply_intensity_scale`: float32 when rescaled)."""
    img = io.read_image(site[path_column(channel)], int(site[frame_column(channel)]))
    return io.apply_intensity_scale(img, float(site.get(scale_column(channel), 1.0)))


def site_sort_keys(df: pd.DataFrame) -> list[str]:
    """Plate, row, column, well, site when the table has row/column, else plate, well, site."""
    if io.ROW in df.columns and io.COL in df.columns:
        return [io.PLATE, io.ROW, io.COL, io.WELL, io.SITE]
    return list(io.SITE_KEYS)


def _site_text(rec: pd.Series) -> str:
    return f"{rec.get(io.PLATE, '?')} {rec.get(io.WELL, '?')} s{rec.get(io.SITE, '?')}"


def sites_from_images(
    images: pd.DataFrame,
    channels: Sequence[str] = (),
    *,
    source: str = "images.parquet",
    key: str = "channels",
) -> pd.DataFrame:
    """Pivot ``images.parquet`` (one row per site and channel) to one row per site.

    Columns: the site keys, every other ``Metadata_*`` column constant within each site, then
    :func:`path_column` / :func:`frame_column` per channel (frames int64, -1 when the table has no
    ``frame`` column), and :func:`scale_column` per channel when some image's ``intensity_scale``
    is not 1 (read the images with :func:`read_site_image`).  Rows are sorted by
    :func:`site_sort_keys`.

    Parameters
    ----------
    channels
        Channels to keep, in this order; empty means every channel in order of first appearance.
    key
        The config key naming ``channels``, for messages.

    Raises
    ------
    InputDataError
        Missing columns, no images, a named channel without images, a channel listed twice for a
        site, or a site lacking one of the channels (naming the site and the files it has).
    """
    keys = list(io.SITE_KEYS)
    need = [*keys, io.CHANNEL, io.PATH]
    missing = [c for c in need if c not in images.columns]
    if missing:
        raise InputDataError(f"{source}: missing column(s) {', '.join(missing)}; rerun cytoscreen ingest")
    if images.empty:
        raise InputDataError(f"{source}: no images listed")
    df = images.copy()
    if io.FRAME not in df.columns:
        df[io.FRAME] = -1
    df[io.CHANNEL] = df[io.CHANNEL].astype(str)
    present = list(dict.fromkeys(df[io.CHANNEL]))
    if channels:
        unknown = [c for c in channels if c not in present]
        if unknown:
            raise InputDataError(
                f"{source}: channel(s) {', '.join(unknown)} named in {key} have no images; "
                f"channels present: {', '.join(present)}"
            )
        df = df[df[io.CHANNEL].isin(list(channels))]
    chans = list(channels) if channels else present

    dup = df.duplicated([*keys, io.CHANNEL], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        same = dup & (df[io.PLATE] == first[io.PLATE]) & (df[io.WELL] == first[io.WELL]) & (
            df[io.SITE] == first[io.SITE]) & (df[io.CHANNEL] == first[io.CHANNEL])
        files = df.loc[same, io.PATH].astype(str).tolist()
        raise InputDataError(
            f"{source}: {int(dup.sum())} images share a site and channel, e.g. site "
            f"{_site_text(first)} channel {first[io.CHANNEL]}: {', '.join(files[:3])}; check the "
            f"file-name layout"
        )

    meta = [c for c in io.metadata_columns(df) if c != io.CHANNEL]
    grouped = df.groupby(keys, sort=False, dropna=False)
    others = [c for c in meta if c not in keys]
    if others:
        varying = grouped[others].nunique(dropna=False).max()
        others = [c for c in others if int(varying.get(c, 0)) <= 1]
    sites = grouped[others].first() if others else grouped.size().to_frame().iloc[:, :0]
    rescaled = io.INTENSITY_SCALE in df.columns and bool((df[io.INTENSITY_SCALE] != 1.0).any())
    pivot = [io.PATH, io.FRAME, io.INTENSITY_SCALE] if rescaled else [io.PATH, io.FRAME]
    by_channel = df.set_index([*keys, io.CHANNEL])[pivot].unstack(io.CHANNEL)
    for ch in chans:
        sites[path_column(ch)] = by_channel[(io.PATH, ch)].reindex(sites.index)
        sites[frame_column(ch)] = by_channel[(io.FRAME, ch)].reindex(sites.index)
        if rescaled:
            sites[scale_column(ch)] = by_channel[(io.INTENSITY_SCALE, ch)].reindex(sites.index).astype(np.float64)
    sites = sites.reset_index()

    holes = sites[[path_column(ch) for ch in chans]].isna().to_numpy()
    if holes.any():
        rows = np.flatnonzero(holes.any(axis=1))
        examples = []
        for r in rows[:3]:
            rec = sites.iloc[r]
            lacking = [chans[c] for c in np.flatnonzero(holes[r])]
            have = [str(rec[path_column(ch)]) for ch in chans if not pd.isna(rec[path_column(ch)])]
            examples.append(f"site {_site_text(rec)} lacks {', '.join(lacking)} (has {', '.join(have[:3])})")
        raise InputDataError(
            f"{source}: {len(rows)} site(s) miss a channel: {'; '.join(examples)}; every site needs "
            f"every channel of {key} ({', '.join(chans)})"
        )
    for ch in chans:
        sites[frame_column(ch)] = sites[frame_column(ch)].astype(np.int64)
    return sites.sort_values(site_sort_keys(sites), kind="stable").reset_index(drop=True)


# --- the plate readout -----------------------------------------------------------------------------
def has_values(summary: pd.DataFrame, column: str) -> bool:
    """True when ``column`` exists and holds at least one numeric value."""
    return (
        column in summary.columns and pd.to_numeric(summary[column], errors="coerce").notna().any()
    )


def resolve_readout(
    summary: pd.DataFrame,
    requested: str = "auto",
    *,
    dna_channel: str = "DNA",
    count_column: str = "Count_Nuclei",
) -> tuple[str | None, str]:
    """The plate's readout column (``report.readout``) and how it was chosen; the report's control
    section and the dose stage use it.

    ``auto``: the first of the plate hit readout (``Metadata_Novelty_RobustZ``), the novelty score,
    the cell count, the DNA-channel mean intensity, any channel's mean intensity that has values.
    A named column that is missing gives ``None`` and a note (the report says so instead of failing).
    """
    if requested != "auto":
        if has_values(summary, requested):
            return requested, "set by report.readout"
        return None, f"report.readout {requested} is not in the tables given (stage not run?)"
    candidates = [
        (io.NOVELTY_ROBUST_Z, "plate hit readout: robust z of the novelty score (novelty stage)"),
        (io.NOVELTY_SCORE, "novelty score (novelty stage)"),
        (count_column, "cell count (segmentation)"),
        (f"{io.METADATA_PREFIX}{dna_channel}_MeanIntensity", f"{dna_channel} mean intensity (QC)"),
    ]
    candidates += [
        (c, "mean intensity (QC)") for c in summary.columns if str(c).endswith("_MeanIntensity")
    ]
    for col, why in candidates:
        if has_values(summary, col):
            return col, f"auto: {why}"
    return None, "no readout available: no novelty score, cell count or intensity column"
