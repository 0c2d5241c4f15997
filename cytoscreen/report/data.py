"""What the reports show, computed from tables: pure functions, no file I/O, inputs never mutated.

- :func:`well_summary`: one row per well from the per-site ``qc.parquet`` (plus optional
  segmentation counts, well profiles and novelty scores): sites, sites failing QC, per-flag counts,
  worst-site focus, per-channel intensity means over the QC-passed sites, cell count, novelty.
- :func:`plate_matrix`: a (rows x columns) matrix of one value for a 96-, 384- or 1536-well plate.
- :func:`z_prime` and :func:`control_quality`: Z' = 1 - 3 (sd_p + sd_n) / |mu_p - mu_n| of a
  readout over the poscon and negcon wells (sample standard deviations, ``ddof=1``).
- :func:`select_gallery`: which sites get a thumbnail (QC failures, top hits).
- :func:`plate_summary`, :func:`hit_list`, :func:`cluster_table`, :func:`pca_2d`,
  :func:`evaluation_rows`: the tables of the plate and screen reports.

The readout of the control-quality section is ``report.readout``; ``auto`` takes the first of
``Metadata_Novelty_Score`` (novelty stage), the cell count (``report.count_column``, segmentation),
``Metadata_<dna_channel>_MeanIntensity`` (QC, always there) that has values.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

#: Per-well identity columns carried from the QC table when present.
ID_COLUMNS = (
    io.PLATE,
    io.BATCH,
    io.WELL,
    io.ROW,
    io.COL,
    io.PERTURBATION,
    io.CONCENTRATION,
    io.PERT_TYPE,
    io.MOA,
)
#: QC metrics measured per site and channel (cytoscreen.qc.METRICS).
QC_METRICS = (
    "FocusScore",
    "SaturationFraction",
    "MeanIntensity",
    "MedianIntensity",
    "P999Intensity",
    "Contrast",
)
#: QC flags in the order a failing site is described and the gallery picks them.
FLAG_ORDER = ("QC_unreadable", "QC_saturated", "QC_blurry", "QC_empty")

# derived per-well columns of well_summary
SITES = "sites"
SITES_FAILED = "sites_failed_qc"
QC_FAILED_FRACTION = "qc_failed_fraction"
QC_REASONS = "qc_flags"
FOCUS = "focus_log10"
SITES_PROFILED = "sites_profiled"

STANDARD_FORMATS = (96, 384, 1536)
AGGREGATIONS = ("mean", "median", "min", "max", "sum", "first")
THUMBNAIL_FORMATS = ("jpeg", "png")
THUMBNAIL_STRETCHES = ("plate", "image")
MAD_SCALE = 1.4826

EVALUATION_METRICS: tuple[tuple[str, str], ...] = (
    ("nsc", "not-same-compound 1-NN MoA accuracy"),
    ("nscb", "not-same-compound-or-batch 1-NN MoA accuracy"),
    ("map_replicate", "mean average precision: replicate wells against negcon wells"),
    ("map_moa", "mean average precision: same-MoA treatments against other MoAs"),
    ("cluster_ari", "adjusted Rand index of clusters against known MoAs"),
    ("n_wells", "wells evaluated"),
    ("n_treatments", "treatments"),
    ("n_moas", "known MoAs scored"),
    ("n_features", "features"),
)


@dataclass(frozen=True)
class ReportSettings:
    """The ``report:`` section of the config (see the schema for each key)."""

    readout: str = "auto"
    dna_channel: str = "DNA"
    count_column: str = "Count_Nuclei"
    plate_wells: int | None = None
    gallery_max_qc: int = 12
    gallery_max_hits: int = 12
    thumbnail_px: int = 128
    thumbnail_format: str = "jpeg"
    thumbnail_stretch: str = "plate"
    thumbnail_percentiles: tuple[float, float] = (0.5, 99.5)
    channel_colors: tuple[tuple[str, str], ...] = ()
    max_scatter_points: int = 5000

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> ReportSettings:
        """Settings from a validated config's ``report`` section (missing keys keep defaults)."""
        section = dict(section or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(
                f"report: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if "thumbnail_percentiles" in section:
            section["thumbnail_percentiles"] = tuple(
                float(v) for v in section["thumbnail_percentiles"]
            )
        if "channel_colors" in section:
            section["channel_colors"] = tuple(
                (str(k), str(v)) for k, v in dict(section["channel_colors"]).items()
            )
        settings = cls(**section)
        if settings.thumbnail_format not in THUMBNAIL_FORMATS:
            raise ConfigError(
                f"report.thumbnail_format: {settings.thumbnail_format!r} is not one of "
                f"{', '.join(THUMBNAIL_FORMATS)}"
            )
        if settings.thumbnail_stretch not in THUMBNAIL_STRETCHES:
            raise ConfigError(
                f"report.thumbnail_stretch: {settings.thumbnail_stretch!r} is not one of "
                f"{', '.join(THUMBNAIL_STRETCHES)}"
            )
        return settings


# --- per-well summary ----------------------------------------------------------------------------
def qc_failed(qc: pd.DataFrame) -> pd.Series:
    """True for the sites (rows) with any ``QC_*`` flag set."""
    cols = io.qc_columns(qc)
    if not cols:
        return pd.Series(False, index=qc.index)
    return qc[cols].fillna(False).astype(bool).any(axis=1)


def image_qc_failed(qc: pd.DataFrame) -> pd.Series:
    """True for the sites with an image-QC flag (unreadable, saturated, blurry, empty).

    Other ``QC_*`` flags, such as the segmentation stage's ``QC_low_count``, describe the biology
    rather than the image, so they do not hide a site's intensities or counts.
    """
    cols = [c for c in FLAG_ORDER if c in qc.columns]
    if not cols:
        return pd.Series(False, index=qc.index)
    return qc[cols].fillna(False).astype(bool).any(axis=1)


def qc_metric_columns(table: pd.DataFrame) -> list[str]:
    """The ``Metadata_<Channel>_<Metric>`` QC metric columns of a table, in table order."""
    pattern = re.compile(rf"^{io.METADATA_PREFIX}.+_({'|'.join(QC_METRICS)})$")
    return [
        c
        for c in table.columns
        if pattern.match(str(c)) and pd.api.types.is_numeric_dtype(table[c])
    ]


def positions(table: pd.DataFrame, *, source: str = "table") -> pd.DataFrame:
    """Zero-based row and one-based column of every row (from Metadata_Row/Col or the well name)."""
    if (
        io.ROW in table.columns
        and io.COL in table.columns
        and table[[io.ROW, io.COL]].notna().all().all()
    ):
        return pd.DataFrame(
            {io.ROW: table[io.ROW].astype(int), io.COL: table[io.COL].astype(int)},
            index=table.index,
        )
    if io.WELL not in table.columns:
        raise InputDataError(
            f"{source}: neither {io.ROW}/{io.COL} nor {io.WELL} columns; cannot place wells"
        )
    try:
        rc = [io.split_well(str(w)) for w in table[io.WELL]]
    except ValueError as err:
        raise InputDataError(f"{source}: {err}") from err
    return pd.DataFrame(rc, columns=[io.ROW, io.COL], index=table.index)


def _well_keys(table: pd.DataFrame) -> list[str]:
    return [c for c in (io.PLATE, io.WELL) if c in table.columns]


def _require(table: pd.DataFrame, columns: Sequence[str], source: str, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputDataError(f"{source}: column(s) {', '.join(missing)} missing; is this {what}?")


def well_summary(
    qc: pd.DataFrame,
    *,
    novelty: pd.DataFrame | None = None,
    wells: pd.DataFrame | None = None,
    counts: pd.DataFrame | None = None,
    count_column: str = "Count_Nuclei",
    source: str = "qc",
) -> pd.DataFrame:
    """One row per well of a per-site QC table, with what the reports show.

    Parameters
    ----------
    qc
        ``qc.parquet``: one row per site with ``Metadata_Well``, ``Metadata_Site``, the platemap
        columns, ``Metadata_<Channel>_<Metric>`` and ``QC_*`` flags.
    novelty
        Optional ``novelty.parquet`` (one row per well); rows of other plates are ignored.
    wells
        Optional well profiles (``Metadata_n_sites`` becomes ``sites_profiled``).
    counts
        Optional per-site (or per-well) table with a ``count_column`` (or
        ``Metadata_<count_column>``) column, e.g. segmentation nucleus counts; ``qc`` itself may
        hold that column too (``qc_segmented.parquet`` has ``Metadata_Count_Nuclei``).

    Returns
    -------
    DataFrame
        Identity columns (plate, well, row, col, platemap), ``sites``, ``sites_failed_qc``,
        ``qc_failed_fraction`` (any ``QC_*`` flag), one count column per flag (sites flagged),
        ``qc_flags`` (text), ``focus_log10`` (worst site: the median over channels of log10
        FocusScore), every QC metric averaged over the well's sites that passed image QC (see
        :func:`image_qc_failed`; NaN when none did), the cell count (same averaging),
        ``sites_profiled`` and the novelty columns when given; sorted by plate, row, column.
    """
    _require(qc, [io.WELL], source, "a per-site qc.parquet")
    if qc.empty:
        raise InputDataError(f"{source}: the QC table has no sites")
    keys = _well_keys(qc)
    failed = qc_failed(qc)
    ok = ~image_qc_failed(qc)
    group = [qc[k] for k in keys]
    ident = [c for c in ID_COLUMNS if c in qc.columns and c not in keys]
    sizes = qc.groupby(group, sort=False).size()
    out = qc.groupby(group, sort=False)[ident].first() if ident else pd.DataFrame(index=sizes.index)
    out[SITES] = sizes
    out[SITES_FAILED] = failed.groupby(group, sort=False).sum().astype(int)
    out[QC_FAILED_FRACTION] = out[SITES_FAILED] / out[SITES]
    flags = [f for f in FLAG_ORDER if f in qc.columns] + [
        f for f in io.qc_columns(qc) if f not in FLAG_ORDER
    ]
    if flags:
        per_flag = qc[flags].fillna(False).astype(bool).groupby(group, sort=False).sum().astype(int)
        out = out.join(per_flag)
    out[QC_REASONS] = _flag_text(out, flags)

    metrics = qc_metric_columns(qc)
    focus_cols = [c for c in metrics if c.endswith("_FocusScore")]
    if focus_cols:
        f = qc[focus_cols].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            site_focus = np.log10(f.where(f > 0)).median(axis=1, skipna=True)
        out[FOCUS] = site_focus.groupby(group, sort=False).min()
    if metrics:
        means = (
            qc.loc[ok, metrics]
            .astype(float)
            .groupby([qc.loc[ok, k] for k in keys], sort=False)
            .mean()
        )
        out = out.join(means)
    count = _site_counts(qc, counts, count_column, keys, ok)
    if count is not None:
        out[count_column] = count
    out = out.reset_index()

    if wells is not None and io.N_SITES in wells.columns:
        wkeys = [k for k in keys if k in wells.columns]
        if io.WELL in wkeys:
            prof = (
                wells[wkeys + [io.N_SITES]]
                .drop_duplicates(wkeys)
                .rename(columns={io.N_SITES: SITES_PROFILED})
            )
            out = out.merge(prof, on=wkeys, how="left")
    if novelty is not None:
        out = _merge_novelty(out, novelty, keys)
    pos = positions(out, source=source)
    out[io.ROW] = pos[io.ROW].to_numpy()
    out[io.COL] = pos[io.COL].to_numpy()
    if io.PERT_TYPE in out.columns:
        out[io.PERT_TYPE] = (
            out[io.PERT_TYPE].astype(object).where(out[io.PERT_TYPE].notna(), "unknown").astype(str)
        )
    else:
        out[io.PERT_TYPE] = "unknown"
    order = [c for c in (io.PLATE, io.ROW, io.COL) if c in out.columns]
    return out.sort_values(order, kind="stable").reset_index(drop=True)


def _flag_text(out: pd.DataFrame, flags: Sequence[str]) -> list[str]:
    if not flags:
        return [""] * len(out)
    names = [f.removeprefix(io.QC_PREFIX) for f in flags]
    return [
        ", ".join(f"{n} ({int(v)})" for n, v in zip(names, row, strict=True) if v)
        for row in out[list(flags)].to_numpy()
    ]


def _count_col(table: pd.DataFrame, count_column: str) -> str | None:
    for name in (count_column, f"{io.METADATA_PREFIX}{count_column}"):
        if name in table.columns and pd.api.types.is_numeric_dtype(table[name]):
            return name
    return None


def _site_counts(
    qc: pd.DataFrame, counts: pd.DataFrame | None, count_column: str, keys: list[str], ok: pd.Series
) -> pd.Series | None:
    """Mean cell count of each well's QC-passed sites (index: the well keys) or None."""
    col = _count_col(qc, count_column)
    if col is not None:
        values = qc[col].astype(float)
    elif counts is not None and (col := _count_col(counts, count_column)) is not None:
        # per-site counts join on the site; per-well counts (no Metadata_Site) on the well
        ckeys = [k for k in keys + [io.SITE] if k in counts.columns and k in qc.columns]
        if io.WELL not in ckeys:
            raise InputDataError(
                f"cell counts: column {io.WELL} missing; cannot join counts to sites"
            )
        joined = qc[ckeys].merge(counts[ckeys + [col]].drop_duplicates(ckeys), on=ckeys, how="left")
        values = pd.Series(joined[col].astype(float).to_numpy(), index=qc.index)
        missing = int(values.isna().sum())
        if missing:
            logger.warning("cell counts: %d of %d sites have no count", missing, len(values))
    else:
        return None
    group = [qc.loc[ok, k] for k in keys]
    return values[ok].groupby(group, sort=False).mean()


def _merge_novelty(out: pd.DataFrame, novelty: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    _require(novelty, [io.WELL, io.NOVELTY_SCORE], "novelty", "a novelty.parquet")
    nkeys = [k for k in keys if k in novelty.columns]
    nov = novelty
    if io.PLATE in novelty.columns and io.PLATE in out.columns:
        nov = novelty[novelty[io.PLATE].isin(out[io.PLATE].unique())]
    cols = [
        c
        for c in (io.NOVELTY_SCORE, io.NOVELTY_PVALUE, io.NOVELTY_QVALUE, io.NOVELTY_HIT)
        if c in nov.columns
    ]
    nov = nov[nkeys + cols].drop_duplicates(nkeys)
    if nov.empty:
        logger.warning(
            "novelty: no rows for plate(s) %s",
            ", ".join(map(str, out.get(io.PLATE, pd.Series()).unique())),
        )
    merged = out.merge(nov, on=nkeys, how="left")
    if io.NOVELTY_HIT in merged.columns:
        merged[io.NOVELTY_HIT] = merged[io.NOVELTY_HIT].astype("boolean")
    return merged


# --- plate matrices ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlateMatrix:
    """One value per well laid out as the plate: ``values[row, col - 1]``, NaN where no data."""

    values: np.ndarray = field(repr=False)
    n_wells: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape  # type: ignore[return-value]

    @property
    def row_labels(self) -> list[str]:
        return [io.row_index_to_letters(r) for r in range(self.shape[0])]

    @property
    def col_labels(self) -> list[int]:
        return list(range(1, self.shape[1] + 1))

    def well(self, row: int, col_index: int) -> str:
        """Well name of matrix cell (row, col_index) (both zero-based)."""
        return io.well_from_row_col(row, col_index + 1)


def plate_format(table: pd.DataFrame, *, n_wells: int | None = None, source: str = "table") -> int:
    """The plate format (96, 384 or 1536 wells) holding every well of ``table``.

    ``n_wells`` forces a format (any of ``cytoscreen.io.PLATE_SHAPES``); a well outside it is an
    :class:`InputDataError`.
    """
    pos = positions(table, source=source)
    max_row = int(pos[io.ROW].max()) if len(pos) else 0
    max_col = int(pos[io.COL].max()) if len(pos) else 1
    candidates = (n_wells,) if n_wells else STANDARD_FORMATS
    for n in candidates:
        if n not in io.PLATE_SHAPES:
            raise ConfigError(
                f"{source}: unknown plate format {n}; use one of "
                f"{', '.join(map(str, io.PLATE_SHAPES))}"
            )
        n_rows, n_cols = io.PLATE_SHAPES[n]
        if max_row < n_rows and max_col <= n_cols:
            return n
    raise InputDataError(
        f"{source}: well {io.well_from_row_col(max_row, max_col)} lies outside a "
        f"{candidates[-1]}-well plate"
    )


def plate_matrix(
    table: pd.DataFrame,
    value: str,
    *,
    agg: str = "mean",
    n_wells: int | None = None,
    source: str = "table",
) -> PlateMatrix:
    """Lay one column of a per-well or per-site table out as the plate.

    Rows of the same well (sites) are combined with ``agg`` (NaN skipped); booleans count as 0/1;
    wells without rows or without a finite value are NaN.
    """
    if agg not in AGGREGATIONS:
        raise ConfigError(
            f"plate_matrix: unknown aggregation {agg!r}; use one of {', '.join(AGGREGATIONS)}"
        )
    _require(table, [value], source, f"a table with {value}")
    n = plate_format(table, n_wells=n_wells, source=source)
    pos = positions(table, source=source)
    vals = pd.to_numeric(
        table[value].astype(float) if table[value].dtype == bool else table[value], errors="coerce"
    ).astype(float)
    frame = pd.DataFrame(
        {"r": pos[io.ROW].to_numpy(), "c": pos[io.COL].to_numpy(), "v": vals.to_numpy()}
    )
    grouped = frame.groupby(["r", "c"], sort=False)["v"].agg(agg)
    mat = np.full(io.PLATE_SHAPES[n], np.nan)
    r = grouped.index.get_level_values(0).to_numpy(int)
    c = grouped.index.get_level_values(1).to_numpy(int) - 1
    mat[r, c] = grouped.to_numpy(float)
    return PlateMatrix(values=mat, n_wells=n)


# --- control quality -----------------------------------------------------------------------------
def z_prime(
    positive: Sequence[float] | np.ndarray,
    negative: Sequence[float] | np.ndarray,
    *,
    robust: bool = False,
) -> float:
    """Z'-factor (Zhang et al. 1999): 1 - 3 (sd_p + sd_n) / |mu_p - mu_n|.

    Means and sample standard deviations (``ddof=1``); ``robust=True`` uses medians and
    1.4826 x MAD instead.  NaNs are dropped; NaN when either group has fewer than two values or
    the means are equal.
    """
    p = np.asarray(positive, dtype=float)
    n = np.asarray(negative, dtype=float)
    p, n = p[np.isfinite(p)], n[np.isfinite(n)]
    if len(p) < 2 or len(n) < 2:
        return float("nan")
    if robust:
        mu_p, mu_n = np.median(p), np.median(n)
        sd_p = MAD_SCALE * np.median(np.abs(p - mu_p))
        sd_n = MAD_SCALE * np.median(np.abs(n - mu_n))
    else:
        mu_p, mu_n = p.mean(), n.mean()
        sd_p, sd_n = p.std(ddof=1), n.std(ddof=1)
    diff = abs(mu_p - mu_n)
    if diff == 0:
        return float("nan")
    return float(1.0 - 3.0 * (sd_p + sd_n) / diff)


def z_prime_verdict(z: float) -> str:
    """The usual reading of a Z'-factor: excellent (>= 0.5), acceptable (0-0.5), poor (< 0)."""
    if not np.isfinite(z):
        return "n/a"
    return "excellent" if z >= 0.5 else "acceptable" if z >= 0 else "poor"


@dataclass(frozen=True)
class ControlQuality:
    """Negcon vs poscon statistics of one readout over the wells of a plate."""

    readout: str | None
    n_negcon: int = 0
    n_poscon: int = 0
    mean_negcon: float = float("nan")
    sd_negcon: float = float("nan")
    mean_poscon: float = float("nan")
    sd_poscon: float = float("nan")
    z_prime: float = float("nan")
    robust_z_prime: float = float("nan")
    note: str = ""

    @property
    def verdict(self) -> str:
        return z_prime_verdict(self.z_prime)


def control_quality(
    summary: pd.DataFrame, readout: str | None, *, negcon: str = "negcon", poscon: str = "poscon"
) -> ControlQuality:
    """Z' (and robust Z') of ``readout`` over the negcon and poscon wells of a well summary."""
    if readout is None or readout not in summary.columns:
        return ControlQuality(readout=readout, note=f"readout {readout} is not available")
    pert = summary[io.PERT_TYPE].astype(str).str.lower()
    values = pd.to_numeric(summary[readout], errors="coerce").astype(float)
    neg = values[pert == negcon].dropna().to_numpy()
    pos = values[pert == poscon].dropna().to_numpy()
    note = ""
    if len(neg) < 2 or len(pos) < 2:
        note = (
            f"Z' needs at least two {negcon} and two {poscon} wells with a value; "
            f"found {len(neg)} and {len(pos)}"
        )
    return ControlQuality(
        readout=readout,
        n_negcon=len(neg),
        n_poscon=len(pos),
        mean_negcon=float(neg.mean()) if len(neg) else float("nan"),
        sd_negcon=float(neg.std(ddof=1)) if len(neg) > 1 else float("nan"),
        mean_poscon=float(pos.mean()) if len(pos) else float("nan"),
        sd_poscon=float(pos.std(ddof=1)) if len(pos) > 1 else float("nan"),
        z_prime=z_prime(pos, neg),
        robust_z_prime=z_prime(pos, neg, robust=True),
        note=note,
    )


def _has_values(summary: pd.DataFrame, column: str) -> bool:
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
    """The readout column for the control section and how it was chosen.

    ``auto``: the first of the novelty score, the cell count, the DNA-channel mean intensity, any
    channel's mean intensity that has values.  A named column that is missing gives ``None`` and a
    note (the report says so instead of failing).
    """
    if requested != "auto":
        if _has_values(summary, requested):
            return requested, "set by report.readout"
        return None, f"report.readout {requested} is not in the tables given (stage not run?)"
    candidates = [
        (io.NOVELTY_SCORE, "novelty score (novelty stage)"),
        (count_column, "cell count (segmentation)"),
        (f"{io.METADATA_PREFIX}{dna_channel}_MeanIntensity", f"{dna_channel} mean intensity (QC)"),
    ]
    candidates += [
        (c, "mean intensity (QC)") for c in summary.columns if str(c).endswith("_MeanIntensity")
    ]
    for col, why in candidates:
        if _has_values(summary, col):
            return col, f"auto: {why}"
    return None, "no readout available: no novelty score, cell count or intensity column"


def candidate_readouts(summary: pd.DataFrame, *, count_column: str = "Count_Nuclei") -> list[str]:
    """Columns worth a Z' line: novelty score, cell count, every channel's mean intensity."""
    cols = [io.NOVELTY_SCORE, count_column]
    cols += [c for c in summary.columns if str(c).endswith("_MeanIntensity")]
    return [c for c in dict.fromkeys(cols) if _has_values(summary, c)]


# --- gallery ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gallery:
    """Sites chosen for thumbnails: ``items`` has ``kind`` (qc, hit or top), the site's identity and
    platemap columns and ``reason``; the counts say how many candidates there were."""

    items: pd.DataFrame = field(repr=False)
    n_qc_failed: int = 0
    n_hits: int = 0
    n_tested: int = 0
    top_instead_of_hits: bool = False


def select_gallery(
    qc: pd.DataFrame, *, novelty: pd.DataFrame | None = None, max_qc: int = 12, max_hits: int = 12
) -> Gallery:
    """Pick the sites of the thumbnail gallery.

    QC failures: up to ``max_qc`` failing sites, taken in turn from each flag (unreadable,
    saturated, blurry, empty) so every kind of failure shows, in plate order within a flag.
    Hits: up to ``max_hits`` wells with ``Metadata_Novelty_Hit``, by q-value then score; with no
    hit, the highest-scoring tested non-negcon wells (``kind`` top).  A well is shown by its first
    site that passed QC (its first site if none did).
    """
    _require(qc, [io.WELL, io.SITE], "qc", "a per-site qc.parquet")
    failed = qc_failed(qc)
    pos = positions(qc, source="qc")
    base = qc.assign(
        _r=pos[io.ROW].to_numpy(), _c=pos[io.COL].to_numpy(), _failed=failed.to_numpy()
    )
    meta = [c for c in ID_COLUMNS if c in qc.columns] + [io.SITE]
    meta = list(dict.fromkeys(meta))
    rows: list[dict[str, Any]] = []

    fail = base[base["_failed"]].sort_values(["_r", "_c", io.SITE], kind="stable")
    flags = [f for f in FLAG_ORDER if f in fail.columns] + [
        f for f in io.qc_columns(fail) if f not in FLAG_ORDER
    ]
    if len(fail) and flags:
        flagged = fail[flags].fillna(False).astype(bool)
        primary = flagged.idxmax(axis=1)
        queues = {f: list(fail.index[primary == f]) for f in flags}
        picked: list[Any] = []
        while len(picked) < max_qc and any(queues.values()):
            for f in flags:
                if queues[f] and len(picked) < max_qc:
                    picked.append(queues[f].pop(0))
        for idx in sorted(
            picked, key=lambda i: (fail.at[i, "_r"], fail.at[i, "_c"], fail.at[i, io.SITE])
        ):
            rec = fail.loc[idx]
            reasons = [f.removeprefix(io.QC_PREFIX) for f in flags if bool(flagged.at[idx, f])]
            rows.append(
                {"kind": "qc", **rec[meta].to_dict(), "reason": "QC: " + ", ".join(reasons)}
            )

    n_hits = n_tested = 0
    top_instead = False
    if novelty is not None and len(novelty):
        nov = novelty
        if io.PLATE in nov.columns and io.PLATE in qc.columns:
            nov = nov[nov[io.PLATE].isin(qc[io.PLATE].unique())]
        nov = (
            nov[nov[io.NOVELTY_SCORE].notna()] if io.NOVELTY_SCORE in nov.columns else nov.iloc[:0]
        )
        q = (
            nov[io.NOVELTY_QVALUE]
            if io.NOVELTY_QVALUE in nov.columns
            else pd.Series(np.nan, index=nov.index)
        )
        tested = nov[q.notna()] if q.notna().any() else nov
        n_tested = len(tested)
        hit = (
            tested[io.NOVELTY_HIT].fillna(False).astype(bool)
            if io.NOVELTY_HIT in tested.columns
            else pd.Series(False, index=tested.index)
        )
        n_hits = int(hit.sum())
        if n_hits:
            chosen = tested[hit]
        else:
            top_instead = True
            pert = (
                tested[io.PERT_TYPE].astype(str)
                if io.PERT_TYPE in tested.columns
                else pd.Series("", index=tested.index)
            )
            chosen = tested[pert != "negcon"]
        sort_cols = [c for c in (io.NOVELTY_QVALUE, io.NOVELTY_SCORE) if c in chosen.columns]
        chosen = chosen.sort_values(
            sort_cols, ascending=[True, False][: len(sort_cols)], kind="stable"
        )
        chosen = chosen.head(max_hits)
        # the site to show: first QC-passed site of the well
        sites = base.sort_values(["_failed", io.SITE], kind="stable").drop_duplicates(
            _well_keys(base)
        )
        wkeys = [k for k in _well_keys(base) if k in chosen.columns]
        nov_cols = [c for c in (io.NOVELTY_SCORE, io.NOVELTY_QVALUE) if c in chosen.columns]
        joined = chosen[wkeys + nov_cols].merge(sites, on=wkeys, how="inner", suffixes=("", "_qc"))
        for _, rec in joined.iterrows():
            parts = []
            if io.NOVELTY_SCORE in rec.index and pd.notna(rec[io.NOVELTY_SCORE]):
                parts.append(f"score {rec[io.NOVELTY_SCORE]:.3g}")
            if io.NOVELTY_QVALUE in rec.index and pd.notna(rec[io.NOVELTY_QVALUE]):
                parts.append(f"q {rec[io.NOVELTY_QVALUE]:.2g}")
            kind = "top" if top_instead else "hit"
            label = "top score" if top_instead else "hit"
            rows.append(
                {"kind": kind, **rec[meta].to_dict(), "reason": f"{label}: " + ", ".join(parts)}
            )
    items = pd.DataFrame(rows, columns=["kind", *meta, "reason"])
    return Gallery(
        items=items,
        n_qc_failed=int(failed.sum()),
        n_hits=n_hits,
        n_tested=n_tested,
        top_instead_of_hits=top_instead and n_tested > 0,
    )


# --- summaries ----------------------------------------------------------------------------------
def plate_summary(
    summary: pd.DataFrame, *, quality: ControlQuality | None = None
) -> dict[str, Any]:
    """Headline numbers of one plate from its :func:`well_summary`.

    Keys: plate, batch, sites, wells, wells_negcon, wells_poscon, wells_trt, sites_passed_qc,
    qc_pass_rate, one ``QC_*`` key per flag (sites flagged), wells_profiled (when well profiles
    were given), wells_tested and hits (when novelty was given), readout, z_prime, robust_z_prime.
    """
    pert = summary[io.PERT_TYPE].astype(str)
    sites = int(summary[SITES].sum())
    failed = int(summary[SITES_FAILED].sum())
    out: dict[str, Any] = {
        "plate": ", ".join(map(str, summary[io.PLATE].unique()))
        if io.PLATE in summary.columns
        else "",
        "batch": ", ".join(map(str, summary[io.BATCH].dropna().unique()))
        if io.BATCH in summary.columns
        else "",
        "sites": sites,
        "wells": len(summary),
        "wells_negcon": int((pert == "negcon").sum()),
        "wells_poscon": int((pert == "poscon").sum()),
        "wells_trt": int((pert == "trt").sum()),
        "sites_passed_qc": sites - failed,
        "qc_pass_rate": (sites - failed) / sites if sites else float("nan"),
    }
    for f in [c for c in summary.columns if str(c).startswith(io.QC_PREFIX)]:
        out[f] = int(summary[f].sum())
    if SITES_PROFILED in summary.columns:
        out["wells_profiled"] = int(summary[SITES_PROFILED].fillna(0).gt(0).sum())
    if io.NOVELTY_SCORE in summary.columns:
        tested = (
            summary[io.NOVELTY_QVALUE].notna()
            if io.NOVELTY_QVALUE in summary.columns
            else summary[io.NOVELTY_SCORE].notna()
        )
        out["wells_tested"] = int(tested.sum())
        out["hits"] = (
            int(summary[io.NOVELTY_HIT].fillna(False).astype(bool).sum())
            if io.NOVELTY_HIT in summary.columns
            else 0
        )
    if quality is not None:
        out["readout"] = quality.readout
        out["z_prime"] = quality.z_prime
        out["robust_z_prime"] = quality.robust_z_prime
    return out


def hit_list(novelty: pd.DataFrame) -> pd.DataFrame:
    """The hit wells of a novelty table (``Metadata_Novelty_Hit``), by q-value then score."""
    _require(novelty, [io.WELL, io.NOVELTY_SCORE, io.NOVELTY_HIT], "novelty", "a novelty.parquet")
    hits = novelty[novelty[io.NOVELTY_HIT].fillna(False).astype(bool)]
    sort = [c for c in (io.NOVELTY_QVALUE, io.NOVELTY_SCORE) if c in hits.columns]
    hits = hits.sort_values(sort, ascending=[True, False][: len(sort)], kind="stable")
    cols = [
        c
        for c in (
            io.PLATE,
            io.BATCH,
            io.WELL,
            io.PERTURBATION,
            io.CONCENTRATION,
            io.PERT_TYPE,
            io.MOA,
            io.NOVELTY_SCORE,
            io.NOVELTY_PVALUE,
            io.NOVELTY_QVALUE,
        )
        if c in hits.columns
    ]
    return hits[cols].reset_index(drop=True)


@dataclass(frozen=True)
class MoaColumns:
    """Column names found in a moa.parquet (None where absent)."""

    treatment: str | None
    cluster: str | None
    umap_1: str | None
    umap_2: str | None
    moa: str | None
    plate: str | None
    pert_type: str | None


def _find(columns: Sequence[str], exact: str, pattern: str) -> str | None:
    if exact in columns:
        return exact
    rx = re.compile(pattern, re.IGNORECASE)
    found = [c for c in columns if rx.search(str(c))]
    return found[0] if found else None


def moa_columns(moa: pd.DataFrame) -> MoaColumns:
    """Look up the MoA stage's columns by name (``cytoscreen.io`` constants), with a fallback to
    any column whose name matches (``cluster``, ``umap_1`` / ``umap1``, ...)."""
    cols = [str(c) for c in moa.columns]
    return MoaColumns(
        treatment=_find(cols, io.TREATMENT, r"treatment$"),
        cluster=_find(cols, io.CLUSTER, r"cluster(_label)?$"),
        umap_1=_find(cols, io.UMAP_1, r"umap[_ ]?(1|x)$"),
        umap_2=_find(cols, io.UMAP_2, r"umap[_ ]?(2|y)$"),
        moa=io.MOA if io.MOA in cols else None,
        plate=io.PLATE if io.PLATE in cols else None,
        pert_type=io.PERT_TYPE if io.PERT_TYPE in cols else None,
    )


def treatment_labels(table: pd.DataFrame, columns: MoaColumns | None = None) -> pd.Series:
    """``Metadata_Treatment`` when present, else ``<perturbation> @ <concentration>``."""
    if columns is not None and columns.treatment:
        return table[columns.treatment].astype(str)
    if io.PERTURBATION not in table.columns:
        return pd.Series([f"row {i}" for i in range(len(table))], index=table.index)
    pert = table[io.PERTURBATION].astype(str)
    if io.CONCENTRATION in table.columns:
        conc = table[io.CONCENTRATION].map(lambda v: "" if pd.isna(v) else f" @ {v:g}")
        return pert + conc
    return pert


def cluster_table(moa: pd.DataFrame, columns: MoaColumns | None = None) -> pd.DataFrame:
    """One row per cluster: size, known-MoA composition, purity (share of the most common MoA
    among its labelled non-negcon treatments) and its members."""
    columns = columns or moa_columns(moa)
    if columns.cluster is None:
        raise InputDataError(
            f"moa: no cluster column (looked for {io.CLUSTER} or a name ending in cluster)"
        )
    labels = treatment_labels(moa, columns)
    rows = []
    for cluster, idx in moa.groupby(columns.cluster, sort=True).groups.items():
        sub = moa.loc[idx]
        rec: dict[str, Any] = {"cluster": cluster, "treatments": len(sub)}
        if columns.moa:
            known = sub[columns.moa].dropna().astype(str)
            if columns.pert_type:
                known = known[sub.loc[known.index, columns.pert_type].astype(str) != "negcon"]
            counts = known.value_counts()
            rec["top_moa"] = counts.index[0] if len(counts) else ""
            rec["purity"] = float(counts.iloc[0] / counts.sum()) if len(counts) else float("nan")
            rec["moas"] = ", ".join(f"{m} ({n})" for m, n in counts.items())
        rec["members"] = ", ".join(labels.loc[idx])
        rows.append(rec)
    return pd.DataFrame(rows)


def pca_2d(
    profiles: pd.DataFrame, *, max_points: int = 5000, seed: int = 0
) -> tuple[pd.DataFrame, tuple[float, float]]:
    """First two principal components of a profile table (``cytoscreen.io.feature_columns``).

    Features with NaN or no variance are left out; at most ``max_points`` rows (a seeded random
    sample, in table order).  Returns the metadata columns plus ``PC1``/``PC2`` and the fractions
    of variance they explain.
    """
    features = io.feature_columns(profiles)
    io.check_numeric_features(profiles, features, source="profiles")
    if len(profiles) > max_points:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(profiles), max_points, replace=False))
        profiles = profiles.iloc[keep]
    x = profiles[features].to_numpy(dtype=float)
    good = np.isfinite(x).all(axis=0)
    x = x[:, good]
    if x.shape[1] < 2 or x.shape[0] < 3:
        raise InputDataError("profiles: fewer than two usable features or three rows; no PCA")
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    x = x[:, std > 0]
    if x.shape[1] < 2:
        raise InputDataError("profiles: fewer than two features vary; no PCA")
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    var = s**2 / np.sum(s**2)
    out = profiles[io.metadata_columns(profiles)].reset_index(drop=True).copy()
    out["PC1"] = u[:, 0] * s[0]
    out["PC2"] = u[:, 1] * s[1]
    return out, (float(var[0]), float(var[1]))


def evaluation_rows(evaluation: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """(metric, value, meaning) for the headline metrics of evaluation.json that it has."""
    rows = []
    for key, meaning in EVALUATION_METRICS:
        if key in evaluation and not isinstance(evaluation[key], dict | list):
            rows.append((key, evaluation[key], meaning))
    clustering = evaluation.get("clustering")
    if isinstance(clustering, Mapping):
        for key in ("n_clusters", "silhouette", "purity"):
            if key in clustering and not isinstance(clustering[key], dict | list):
                rows.append(
                    (f"clustering.{key}", clustering[key], f"clustering {key.replace('_', ' ')}")
                )
    return rows
