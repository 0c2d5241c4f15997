"""Per-well tables of a plate report: pure functions, no file I/O, inputs never mutated.

- :func:`well_summary`: one row per well from the per-site ``qc.parquet`` (plus optional
  segmentation counts, well profiles and novelty scores): sites, sites failing QC, per-flag counts,
  worst-site focus, per-channel intensity means over the QC-passed sites, cell count, novelty.
- :func:`plate_matrix`: a (rows x columns) matrix of one value for a 96-, 384- or 1536-well plate.
- :func:`positions`, :func:`plate_format`, :func:`plate_rows`: where wells lie, which plate format
  holds them, one plate's rows of a table.

Which site failed QC is :func:`cytoscreen.plate.qc_failed`; :func:`image_qc_failed` is the subset
of image flags (unreadable, saturated, blurry, empty) that hides a site's intensities and counts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.plate import NEGCON, negcon_mask, qc_failed
from cytoscreen.qc import METRICS as QC_METRICS

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
#: Prefix of the novelty stage's columns (score, p, q, hit, split, ...), all carried into the summary.
NOVELTY_PREFIX = f"{io.METADATA_PREFIX}Novelty_"
#: Image-QC flags in the order a failing site is described and the gallery picks them.
FLAG_ORDER = io.QC_IMAGE_FLAGS

# derived per-well columns of well_summary
SITES = "sites"
SITES_FAILED = "sites_failed_qc"
QC_FAILED_FRACTION = "qc_failed_fraction"
QC_REASONS = "qc_flags"
FOCUS = "focus_log10"
SITES_PROFILED = "sites_profiled"

STANDARD_FORMATS = (96, 384, 1536)
AGGREGATIONS = ("mean", "median", "min", "max", "sum", "first")


def image_qc_failed(qc: pd.DataFrame) -> pd.Series:
    """True for the sites with an image-QC flag (unreadable, saturated, blurry, empty).

    Other ``QC_*`` flags, such as the segmentation stage's ``QC_low_count``, describe the biology
    rather than the image, so they do not hide a site's intensities or counts.
    """
    return qc_failed(qc, flags=io.QC_IMAGE_FLAGS)


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



def well_keys(table: pd.DataFrame) -> list[str]:
    """The well key columns (plate, well) that ``table`` has."""
    return [c for c in io.WELL_KEYS if c in table.columns]


def require_columns(table: pd.DataFrame, columns: Sequence[str], source: str, what: str) -> None:
    """Raise :class:`InputDataError` naming ``source`` when ``table`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputDataError(f"{source}: column(s) {', '.join(missing)} missing; is this {what}?")


def pert_types(table: pd.DataFrame) -> pd.Series:
    """``Metadata_pert_type`` as the reports use it: the known types (``cytoscreen.io.PERT_TYPES``)
    lower-cased, ``negcon`` wherever :func:`cytoscreen.plate.negcon_mask` says so (which also finds
    vehicle wells on a plate without pert types), ``unknown`` where missing."""
    if io.PERT_TYPE in table.columns:
        raw = table[io.PERT_TYPE].astype(object)
        text = raw.where(raw.notna(), "unknown").astype(str)
    else:
        text = pd.Series("unknown", index=table.index)
    canon = text.str.strip().str.lower()
    text = text.where(~canon.isin(io.PERT_TYPES), canon)
    return text.where(~negcon_mask(table), NEGCON)


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
        ``sites_profiled`` and the novelty columns (``Metadata_Novelty_*``) when given; sorted by plate, row, column.
    """
    require_columns(qc, [io.WELL], source, "a per-site qc.parquet")
    if qc.empty:
        raise InputDataError(f"{source}: the QC table has no sites")
    keys = well_keys(qc)
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
    out[io.PERT_TYPE] = pert_types(out)
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
    require_columns(novelty, [io.WELL, io.NOVELTY_SCORE], "novelty", "a novelty.parquet")
    nkeys = [k for k in keys if k in novelty.columns]
    nov = novelty
    if io.PLATE in novelty.columns and io.PLATE in out.columns:
        nov = novelty[novelty[io.PLATE].isin(out[io.PLATE].unique())]
    first = [io.NOVELTY_SCORE, io.NOVELTY_PVALUE, io.NOVELTY_QVALUE, io.NOVELTY_HIT]
    cols = [c for c in first if c in nov.columns]
    cols += [c for c in nov.columns if str(c).startswith(NOVELTY_PREFIX) and c not in cols and c not in nkeys]
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
    require_columns(table, [value], source, f"a table with {value}")
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




def plate_rows(table: pd.DataFrame | None, plate: str, source: str) -> pd.DataFrame | None:
    """The rows of ``plate`` (all rows of a table without a plate column); warns when none."""
    if table is None or io.PLATE not in table.columns:
        return table
    out = table[table[io.PLATE].astype(str) == str(plate)]
    if out.empty and len(table):
        logger.warning(
            "%s: no rows for plate %s (plates there: %s)",
            source,
            plate,
            ", ".join(map(str, table[io.PLATE].unique()[:10])),
        )
    return out
