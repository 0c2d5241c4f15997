"""Groups of rows (plates, wells, treatments): group codes, group metadata, grouped reductions.

:func:`group_reduce` is the per-group median or mean of a feature matrix that aggregate (sites
to wells) and consensus (wells to treatments) share; :func:`group_metadata` keeps the metadata
columns constant within every group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError
from cytoscreen.profiles.arrays import nonfinite_columns
from cytoscreen.profiles.columns import shown

logger = logging.getLogger(__name__)

#: Rows gathered per block in grouped reductions (bounds the temporary copy to a few hundred MB).
_BLOCK_VALUES = 1 << 24


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
    cols = [b for b in by if b not in set(meta)] + [m for m in meta if m in keep]
    out = df.iloc[first].loc[:, cols].reset_index(drop=True)
    return out, first


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
