"""Helpers shared by the profiles modules: feature matrices, groups, reference rows, checks.

Everything here is pure (no file I/O) and works on numpy arrays taken once from the table, so each
operation converts its features to one float matrix, works column-vectorised on it and builds the
output table once.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

#: Count of wells behind each consensus row (a derived value of the profiles stage).
N_WELLS = "Metadata_n_wells"
#: Sites of a well left out of its aggregate because a ``QC_*`` flag was set.
N_SITES_QC_FAILED = "Metadata_n_sites_qc_failed"

#: ``reference`` values with a fixed meaning; any other string is a pandas query.
NEGCON = "negcon"
ALL = "all"
#: Vehicle-control values recognised when a table has no ``Metadata_pert_type`` column.
VEHICLE_VALUES = ("DMSO",)
#: Perturbation columns searched (in this order) for a vehicle control when ``Metadata_pert_type``
#: is absent, and used as the treatment column of consensus when ``Metadata_perturbation`` is.
PERTURBATION_ALIASES = (
    io.PERTURBATION,
    "Metadata_Compound",
    "Metadata_compound",
    "Metadata_pert_iname",
    "Metadata_broad_sample",
    "Metadata_Treatment",
    "Metadata_treatment",
)
#: Concentration columns tried when ``Metadata_concentration`` is absent.
CONCENTRATION_ALIASES = (
    io.CONCENTRATION,
    "Metadata_Concentration",
    "Metadata_dose",
    "Metadata_mmoles_per_liter",
)

#: Rows gathered per block in grouped reductions (bounds the temporary copy to a few hundred MB).
_BLOCK_VALUES = 1 << 24


def shown(names: Sequence[Any], limit: int = 5) -> str:
    """First few names joined by commas, with ``...`` when there are more."""
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


# --- features -------------------------------------------------------------------------------------
def resolve_features(
    df: pd.DataFrame, features: Sequence[str] | None, *, source: str
) -> list[str]:
    """The feature columns to use (``io.feature_columns`` when None), checked to exist and be numeric."""
    cols = io.feature_columns(df) if features is None else list(features)
    if not cols:
        raise InputDataError(
            f"{source}: no feature columns (features are the columns not starting with Metadata_ "
            f"or QC_)"
        )
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputDataError(f"{source}: feature column(s) not in the table: {shown(missing)}")
    dtypes = dict(zip(df.columns, df.dtypes, strict=True))
    if not all(pd.api.types.is_numeric_dtype(dtypes[col]) for col in cols):
        io.check_numeric_features(df, cols, source=source)  # raises with the standard message
    return cols


def matrix_dtype(df: pd.DataFrame, cols: Sequence[str]) -> type:
    """float32 when every feature column is float32 or a smaller type, else float64."""
    small = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int8), np.dtype(np.int16),
             np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.bool_))
    dtypes = set(df.dtypes[list(cols)].tolist()) if len(cols) else set()
    try:
        return np.float32 if all(np.dtype(d) in small for d in dtypes) else np.float64
    except TypeError:  # pandas extension dtypes
        return np.float64


def feature_matrix(
    df: pd.DataFrame, cols: Sequence[str], *, dtype: type | None = None
) -> np.ndarray:
    """The features as one float matrix (missing values as NaN), read-only.

    No copy is made when the features already form one block of ``dtype`` in the table (as
    :func:`cytoscreen.profiles.command.read_profiles` builds it), so callers must not write to it.
    """
    dtype = dtype or matrix_dtype(df, cols)
    sub = df[list(cols)]
    if all(pd.api.types.is_float_dtype(t) and not isinstance(t, pd.api.extensions.ExtensionDtype)
           for t in sub.dtypes):
        return sub.to_numpy(dtype=dtype, copy=False)
    return sub.to_numpy(dtype=dtype, na_value=np.nan)


def nonfinite_columns(x: np.ndarray) -> np.ndarray:
    """Mask of columns that may hold NaN or inf (a superset: a column sum may also overflow)."""
    if x.size == 0:
        return np.zeros(x.shape[1], dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        return ~np.isfinite(x.sum(axis=0))


def check_finite(
    x: np.ndarray, cols: Sequence[str], *, source: str, allow_nan: bool = True
) -> int:
    """Count missing values (logged); raise on infinite ones (and on NaN unless ``allow_nan``).

    Returns the number of NaN values.
    """
    suspect = nonfinite_columns(x)
    if not suspect.any():
        return 0
    idx = np.flatnonzero(suspect)
    sub = x[:, idx]
    isinf = np.isinf(sub)
    if isinf.any():
        bad = idx[isinf.any(axis=0)]
        raise InputDataError(
            f"{source}: {int(isinf.sum())} infinite feature value(s) in {len(bad)} column(s) "
            f"({shown([cols[i] for i in bad])}); replace them with NaN (missing) upstream so "
            f"`profiles select --operations drop_na_columns` can drop those features"
        )
    isnan = np.isnan(sub)
    n_nan = int(isnan.sum())
    if n_nan:
        bad = idx[isnan.any(axis=0)]
        if not allow_nan:
            raise InputDataError(
                f"{source}: {n_nan} missing (NaN) feature value(s) in {len(bad)} column(s) "
                f"({shown([cols[i] for i in bad])}); drop those features first, e.g. with "
                f"`cytoscreen profiles select --operations drop_na_columns --na-cutoff 0`"
            )
        logger.warning(
            "%s: %d missing (NaN) feature value(s) in %d column(s) (%s); they are skipped by the "
            "statistics and stay missing",
            source, n_nan, len(bad), shown([cols[i] for i in bad]),
        )
    return n_nan


def with_features(
    df: pd.DataFrame, meta_cols: Sequence[str], x: np.ndarray, cols: Sequence[str]
) -> pd.DataFrame:
    """A table of ``df[meta_cols]`` (index reset) followed by float32 features ``x``."""
    meta = df.loc[:, list(meta_cols)].reset_index(drop=True)
    values = np.asarray(x, dtype=np.float32)
    if not values.flags.writeable:  # a view of the input table: the output gets its own copy
        values = values.copy()
    feats = pd.DataFrame(values, columns=pd.Index(list(cols)), copy=False)
    return pd.concat([meta, feats], axis=1)


# --- columns and groups ---------------------------------------------------------------------------
def resolve_column(
    df: pd.DataFrame, name: str, *, source: str, aliases: Sequence[str] = (), option: str = ""
) -> str:
    """``name`` if present, else a case-insensitive match, else the first alias present."""
    if name in df.columns:
        return name
    lower = {str(c).lower(): c for c in df.columns}
    for candidate in (name, *aliases):
        if candidate in df.columns:
            found = candidate
            break
        if candidate.lower() in lower:
            found = lower[candidate.lower()]
            break
    else:
        hint = f"; name the column with {option}" if option else ""
        raise InputDataError(f"{source}: column {name} not in the table{hint}")
    logger.info("%s: no column %s; using %s", source, name, found)
    return str(found)


def resolve_by(
    df: pd.DataFrame, by: Sequence[str] | str, *, source: str, option: str
) -> list[str]:
    """Grouping columns, each resolved by :func:`resolve_column`."""
    if isinstance(by, str):
        by = (by,)
    return [resolve_column(df, b, source=source, option=option) for b in by]


def group_codes(df: pd.DataFrame, by: Sequence[str]) -> tuple[np.ndarray, int]:
    """Group number of every row (groups numbered in order of first appearance) and the count."""
    if not by or len(df) == 0:
        return np.zeros(len(df), dtype=np.intp), int(len(df) > 0)
    codes = df.groupby(list(by), sort=False, dropna=False, observed=True).ngroup()
    codes = codes.to_numpy(dtype=np.intp)
    return codes, int(codes.max()) + 1


def group_label(df: pd.DataFrame, by: Sequence[str], row: int) -> str:
    """``value`` (one column) or ``col=value, ...`` naming the group of ``row``."""
    if not by:
        return "table"
    values = [df[b].iloc[row] for b in by]
    if len(by) == 1:
        return str(values[0])
    return ", ".join(f"{b}={v}" for b, v in zip(by, values, strict=True))


def check_unique(df: pd.DataFrame, keys: Sequence[str], *, source: str, what: str) -> None:
    """Raise when two rows share ``keys`` (only checked when every key column is present)."""
    if not keys or not all(k in df.columns for k in keys):
        return
    dup = df.duplicated(list(keys), keep=False)
    if dup.any():
        examples = df.loc[dup, list(keys)].drop_duplicates().head(5)
        names = ["/".join(str(v) for v in row) for row in examples.itertuples(index=False)]
        raise InputDataError(
            f"{source}: {int(dup.sum())} rows share their {'/'.join(keys)} with another row "
            f"(e.g. {', '.join(names)}); each {what} must appear once: drop the duplicates, or "
            f"aggregate them first with `cytoscreen profiles aggregate`"
        )


def constant_columns(
    df: pd.DataFrame, cols: Sequence[str], codes: np.ndarray, n_groups: int
) -> tuple[list[str], list[str]]:
    """Split ``cols`` into those constant within every group and those that vary."""
    if not cols:
        return [], []
    frame = df.loc[:, list(cols)].copy()
    frame["__group"] = codes
    nunique = frame.groupby("__group", sort=False).nunique(dropna=False)
    varying = nunique.columns[(nunique > 1).any(axis=0)].tolist()
    vary = set(varying)
    return [c for c in cols if c not in vary], [c for c in cols if c in vary]


def first_rows(codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Row index of the first row of each group."""
    values, first = np.unique(codes, return_index=True)
    if len(values) != n_groups:
        raise ValueError("group codes must number every group from 0")
    return first.astype(np.intp)


def group_metadata(
    df: pd.DataFrame, codes: np.ndarray, n_groups: int, *, by: Sequence[str], derived: set[str],
    source: str, group_noun: str,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Metadata of each group: the ``by`` columns and every ``Metadata_*`` column constant within
    all groups (the ``derived`` counts excluded), taken from the group's first row; a column that
    varies within a group is dropped and logged.

    Returns the group metadata table and the row index of each group's first row.
    """
    meta = [m for m in io.metadata_columns(df) if m not in derived]
    constant, varying = constant_columns(df, meta, codes, n_groups)
    keep = set(constant) | set(by)
    if varying:
        logger.info(
            "%s: dropped %d metadata column(s) that vary within a %s: %s",
            source, len(varying), group_noun, shown(varying, 8),
        )
    first = first_rows(codes, n_groups)
    out = df.iloc[first].loc[:, [m for m in meta if m in keep]].reset_index(drop=True)
    return out, first


# --- grouped reductions -----------------------------------------------------------------------------
def group_reduce(x: np.ndarray, codes: np.ndarray, n_groups: int, method: str) -> np.ndarray:
    """Per-group median or mean of the rows of ``x`` (NaN skipped, as pandas does).

    Rows are handled in blocks of whole groups, so temporary copies are bounded by the block size.
    Groups of equal size are reduced together: their rows are laid out as (group, feature, site)
    in one reused buffer and partitioned in place along the contiguous last axis.
    """
    if method not in ("median", "mean"):
        raise ConfigError(f"unknown aggregation method {method!r}; use median or mean")
    n, f = x.shape
    out = np.empty((n_groups, f), dtype=np.float64 if method == "mean" else x.dtype)
    if n == 0 or n_groups == 0:
        return out
    counts = np.bincount(codes, minlength=n_groups)
    order = np.argsort(codes, kind="stable")
    sorted_already = bool(np.all(order == np.arange(n)))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nan_cols = nonfinite_columns(x)
    rows_per_block = max(int(counts.max()), _BLOCK_VALUES // max(f, 1))
    buffer = np.empty(min(n, rows_per_block) * f, dtype=x.dtype) if method == "median" else None
    g0 = 0
    while g0 < n_groups:
        # whole groups whose rows fit in one block (at least one group)
        limit = starts[g0] + rows_per_block
        g1 = int(np.searchsorted(starts + counts, limit, side="right"))
        g1 = min(max(g1, g0 + 1), n_groups)
        r0, r1 = int(starts[g0]), int(starts[g1 - 1] + counts[g1 - 1])
        block = x[r0:r1] if sorted_already else x[order[r0:r1]]
        local_starts = starts[g0:g1] - r0
        if method == "mean":
            _mean_block(block, counts[g0:g1], local_starts, nan_cols, out[g0:g1])
        else:
            _median_block(block, counts[g0:g1], local_starts, nan_cols, buffer, out[g0:g1])
        g0 = g1
    return out


def _mean_block(
    block: np.ndarray, counts: np.ndarray, starts: np.ndarray, nan_cols: np.ndarray,
    out: np.ndarray,
) -> None:
    out[:] = np.add.reduceat(block, starts, axis=0, dtype=np.float64) / counts[:, None]
    if nan_cols.any():
        idx = np.flatnonzero(nan_cols)
        sub = block[:, idx]
        valid = ~np.isnan(sub)
        sums = np.add.reduceat(np.where(valid, sub, 0), starts, axis=0, dtype=np.float64)
        n_valid = np.add.reduceat(valid, starts, axis=0, dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, idx] = sums / n_valid


def _median_block(
    block: np.ndarray, counts: np.ndarray, starts: np.ndarray, nan_cols: np.ndarray,
    buffer: np.ndarray, out: np.ndarray,
) -> None:
    f = block.shape[1]
    # runs of consecutive groups with the same number of rows are views of the block
    change = np.flatnonzero(np.diff(counts)) + 1
    run_bounds = np.concatenate([[0], change, [len(counts)]])
    if len(run_bounds) - 1 > len(counts) // 4:  # sizes interleaved: gather groups by size
        runs = [np.flatnonzero(counts == k) for k in np.unique(counts)]
    else:
        runs = [np.arange(a, b) for a, b in zip(run_bounds[:-1], run_bounds[1:], strict=True)]
    for groups in runs:
        k = int(counts[groups[0]])
        g = len(groups)
        if g == 1 or np.all(np.diff(groups) == 1):
            r0 = int(starts[groups[0]])
            cube = block[r0 : r0 + g * k].reshape(g, k, f)
        else:
            cube = block[(starts[groups][:, None] + np.arange(k)[None, :]).ravel()]
            cube = cube.reshape(g, k, f)
        work = buffer[: g * f * k].reshape(g, f, k)
        np.copyto(work, cube.transpose(0, 2, 1))
        h = k // 2
        if k % 2:
            work.partition(h, axis=2)
            out[groups] = work[:, :, h]
        else:
            work.partition((h - 1, h), axis=2)
            out[groups] = (work[:, :, h - 1].astype(np.float64) + work[:, :, h]) / 2
        if nan_cols.any():
            out[groups[:, None], np.flatnonzero(nan_cols)[None, :]] = _nanmedian_axis1(
                cube[:, :, nan_cols]
            )


def _nanmedian_axis1(cube: np.ndarray) -> np.ndarray:
    """Median over axis 1 of (groups, k, features), NaN skipped (all-NaN gives NaN)."""
    k = cube.shape[1]
    srt = np.sort(cube, axis=1)  # NaN sorts last
    n_valid = (~np.isnan(srt)).sum(axis=1)
    lo = np.take_along_axis(srt, (np.maximum(n_valid - 1, 0) // 2)[:, None, :], axis=1)[:, 0]
    hi = np.take_along_axis(srt, np.minimum(n_valid // 2, k - 1)[:, None, :], axis=1)[:, 0]
    med = (lo.astype(np.float64) + hi.astype(np.float64)) / 2
    return np.where(n_valid > 0, med, np.nan)


def nanmedian0(x: np.ndarray) -> np.ndarray:
    """Column medians skipping NaN (plain median when there is none)."""
    if not np.isnan(x).any():
        return np.median(x, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(x, axis=0)


# --- reference rows -------------------------------------------------------------------------------
def reference_mask(
    df: pd.DataFrame,
    reference: str | pd.Series | np.ndarray,
    *,
    column: str | None = None,
    value: str | Sequence[str] | None = None,
    source: str = "table",
) -> tuple[np.ndarray, str]:
    """Boolean mask of the reference rows and a description of the rule used.

    ``reference`` is ``"negcon"``, ``"all"``, a pandas query string or a boolean mask; ``column`` and
    ``value`` (when ``column`` is given) override it with ``df[column] == value``.

    ``"negcon"`` means ``Metadata_pert_type == "negcon"``.  A table without ``Metadata_pert_type``
    (such as the BBBC021 well table), or whose ``Metadata_pert_type`` has no ``negcon`` value (a
    warning), falls back to the first perturbation column present among
    :data:`PERTURBATION_ALIASES` that contains a vehicle control value (:data:`VEHICLE_VALUES`,
    compared case-insensitively): for BBBC021 that is ``Metadata_Compound == "DMSO"``.
    """
    if column is not None:
        if column not in df.columns:
            raise InputDataError(
                f"{source}: reference column {column} not in the table; metadata columns are "
                f"{shown(io.metadata_columns(df), 12)}"
            )
        values = [value] if isinstance(value, str) else list(value or [])
        if not values:
            raise ConfigError(
                f"a reference column ({column}) needs a reference value: pass --reference-value"
            )
        mask = df[column].astype(str).isin([str(v) for v in values]).to_numpy()
        return mask, f"{column} in {values}" if len(values) > 1 else f"{column} == {values[0]!r}"
    if isinstance(reference, pd.Series | np.ndarray):
        mask = np.asarray(reference, dtype=bool)
        if mask.shape != (len(df),):
            raise ConfigError(
                f"{source}: the reference mask has {mask.shape[0]} entries for {len(df)} rows"
            )
        return mask, "the given reference rows"
    if reference == ALL:
        return np.ones(len(df), dtype=bool), "all rows"
    if reference == NEGCON:
        found_types = ""
        if io.PERT_TYPE in df.columns:
            mask = (df[io.PERT_TYPE].astype(str) == NEGCON).to_numpy()
            if mask.any():
                return mask, f"{io.PERT_TYPE} == 'negcon'"
            found_types = shown(sorted(map(str, df[io.PERT_TYPE].dropna().unique())), 8)
        vehicles = {v.lower() for v in VEHICLE_VALUES}
        for col in PERTURBATION_ALIASES:
            if col in df.columns:
                mask = df[col].astype(str).str.strip().str.lower().isin(vehicles).to_numpy()
                if mask.any():
                    found = df.loc[mask, col].iloc[0]
                    (logger.warning if found_types else logger.info)(
                        "%s: %s; negcon reference rows are %s == %r (%d rows)",
                        source,
                        f"no row has {io.PERT_TYPE} == 'negcon' (values: {found_types})"
                        if found_types else f"no {io.PERT_TYPE} column",
                        col, found, int(mask.sum()),
                    )
                    return mask, f"{col} == {found!r}"
        where = (
            f"no row has {io.PERT_TYPE} == 'negcon' (values: {found_types})"
            if found_types else f"there is no {io.PERT_TYPE} column"
        )
        raise InputDataError(
            f"{source}: cannot find the negcon reference rows: {where} and no perturbation column "
            f"({', '.join(PERTURBATION_ALIASES[:3])}, ...) holds {'/'.join(VEHICLE_VALUES)}; pass "
            f"--reference-col COLUMN --reference-value VALUE (e.g. --reference-col "
            f"Metadata_Compound --reference-value DMSO), or --reference all"
        )
    if not isinstance(reference, str) or not reference.strip():
        raise ConfigError(f"reference must be 'negcon', 'all' or a pandas query, not {reference!r}")
    try:
        selected = df.query(reference)
    except Exception as err:  # pandas raises many types for a bad expression
        raise ConfigError(
            f"reference {reference!r} is neither 'negcon', 'all' nor a valid pandas query "
            f"({type(err).__name__}: {err})"
        ) from err
    mask = df.index.isin(selected.index) if df.index.is_unique else None
    if mask is None:
        tmp = df.reset_index(drop=True)
        mask = tmp.index.isin(tmp.query(reference).index)
    return np.asarray(mask, dtype=bool), reference
