"""Groups of rows (plates, wells, treatments): group codes, group metadata, grouped reductions.

:func:`group_reduce` is the per-group median or mean of a feature matrix that aggregate (sites
to wells) and consensus (wells to treatments) share; :func:`group_metadata` keeps the metadata
columns constant within every group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache

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
    if len(df) == 0:
        return list(cols), []
    first_of_row = first_rows(codes, n_groups)[codes]
    vary = set()
    for c in cols:  # a value differs from its group's first (NaN equals NaN, as nunique(dropna=False))
        values = pd.factorize(df[c], use_na_sentinel=False)[0]
        if np.any(values != values[first_of_row]):
            vary.add(c)
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
    # the group columns are constant within their groups by definition
    constant, varying = constant_columns(df, [m for m in meta if m not in set(by)], codes, n_groups)
    keep = set(constant) | set(by)
    if varying:
        logger.info(
            "%s: dropped %d metadata column(s) that vary within a %s: %s",
            source, len(varying), group_noun, shown(varying, 8),
        )
    first = first_rows(codes, n_groups)
    cols = [b for b in by if b not in set(meta)] + [m for m in meta if m in keep]
    out = df.loc[:, cols].iloc[first].reset_index(drop=True)  # columns first: no feature copy
    return out, first


def group_reduce(
    x: np.ndarray, codes: np.ndarray, n_groups: int, method: str, *,
    nan_cols: np.ndarray | None = None,
) -> np.ndarray:
    """Per-group median or mean of the rows of ``x`` (NaN skipped, as pandas does).

    ``nan_cols`` is :func:`~cytoscreen.profiles.arrays.nonfinite_columns` of ``x`` when the caller
    has it (one pass over the matrix less).

    Rows are handled in blocks of whole groups, so temporary copies are bounded by the block size.
    Groups of equal size ``k`` are reduced together by a median-selection network over their ``k``
    rows (:func:`median_network`), run on cache-sized tiles of (site, feature, group) values.
    """
    if method not in ("median", "mean"):
        raise ConfigError(f"unknown aggregation method {method!r}; use median or mean")
    n, f = x.shape
    # a median keeps the input's column-major layout (a table's feature block): the output table's
    # columns are then contiguous, which Arrow writes without gathering (0.11 vs 0.18-0.3 CPU-s for
    # 7,680 x 1,000)
    layout = "F" if method == "median" and x.strides[0] < x.strides[1] else "C"
    out = np.empty((n_groups, f), dtype=np.float64 if method == "mean" else x.dtype, order=layout)
    if n == 0 or n_groups == 0:
        return out
    counts = np.bincount(codes, minlength=n_groups)
    order = np.argsort(codes, kind="stable")
    sorted_already = bool(np.all(order == np.arange(n)))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nan_cols = nonfinite_columns(x) if nan_cols is None else nan_cols
    rows_per_block = max(int(counts.max()), _BLOCK_VALUES // max(f, 1))
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
            _median_block(block, counts[g0:g1], local_starts, nan_cols, out[g0:g1])
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
    out: np.ndarray,
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
            cube = block[r0 : r0 + g * k].reshape(g, k, f)  # a view in either memory order
        else:
            cube = block[(starts[groups][:, None] + np.arange(k)[None, :]).ravel()]
            cube = cube.reshape(g, k, f)
        if g == 1 or np.all(np.diff(groups) == 1):
            _cube_median(cube, out=out[int(groups[0]) : int(groups[-1]) + 1])
        else:
            out[groups] = _cube_median(cube)
        if nan_cols.any():
            out[groups[:, None], np.flatnonzero(nan_cols)[None, :]] = _nanmedian_axis1(
                cube[:, :, nan_cols]
            )


#: Values per wire of a median-network tile: ``k`` wires of 16,384 float32 stay in L2.
_TILE_LANES = 1 << 14


def _cube_median(cube: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Median over axis 1 of a (groups, k, features) array (NaN not skipped; see the caller), into
    ``out`` (groups, features) when given.

    The ``k`` values of every (group, feature) lane are copied, tile by tile, into ``k``
    contiguous wires, and :func:`median_network` is run on them with ``np.minimum``/``np.maximum``
    (vectorized over the lanes); the result equals the partition-based median (a selection network
    returns the exact order statistics), for even ``k`` the mean of the two middle values computed
    in float64 as pandas does.
    """
    g, k, f = cube.shape
    res = np.empty((g, f), dtype=cube.dtype) if out is None else out
    if k == 1:
        res[:] = cube[:, 0]
        return res
    if k > _NETWORK_MAX_ROWS:
        return _partition_median(cube, res)
    net = median_network(k)
    h = k // 2
    # lanes laid out so that the source's contiguous axis is read along the tile's rows
    f_major = cube.strides[2] > cube.strides[0]
    src = cube.transpose(1, 2, 0) if f_major else cube.transpose(1, 0, 2)  # (k, A, B)
    dst = res.T if f_major else res
    a_n, b_n = src.shape[1], src.shape[2]
    b_step = min(b_n, _TILE_LANES)
    a_step = max(1, _TILE_LANES // b_step)
    wires_buf = np.empty((k, a_step, b_step), dtype=cube.dtype)
    tmp_buf = np.empty((a_step, b_step), dtype=cube.dtype)
    for a0 in range(0, a_n, a_step):
        a1 = min(a_n, a0 + a_step)
        for b0 in range(0, b_n, b_step):
            b1 = min(b_n, b0 + b_step)
            w = wires_buf[:, : a1 - a0, : b1 - b0]
            np.copyto(w, src[:, a0:a1, b0:b1])
            wires = list(w)
            t = tmp_buf[: a1 - a0, : b1 - b0]
            for i, j in net:
                np.minimum(wires[i], wires[j], out=t)
                np.maximum(wires[i], wires[j], out=wires[j])
                wires[i], t = t, wires[i]
            if k % 2:
                dst[a0:a1, b0:b1] = wires[h]
            else:
                dst[a0:a1, b0:b1] = (wires[h - 1].astype(np.float64) + wires[h]) / 2
    return res


#: Groups larger than this take a partition median: the network's comparators (~k log^2 k) and its
#: k wires of a tile (k x 16,384 values: 4.2 GB of float32 for the 64,000 negcon wells of a
#: 2,000-plate campaign's DMSO treatment) stop paying for themselves.
_NETWORK_MAX_ROWS = 256


def _partition_median(cube: np.ndarray, res: np.ndarray) -> np.ndarray:
    """:func:`_cube_median` of large groups by ``np.partition``, a few features at a time (the same
    order statistics, so the same values); memory is one (groups, k, features chunk) copy."""
    g, k, f = cube.shape
    h = k // 2
    kth = [h] if k % 2 else [h - 1, h]
    step = max(1, _TILE_LANES * 16 // max(g * k, 1))
    for f0 in range(0, f, step):
        part = np.partition(cube[:, :, f0 : f0 + step], kth, axis=1)
        if k % 2:
            res[:, f0 : f0 + step] = part[:, h]
        else:
            res[:, f0 : f0 + step] = (part[:, h - 1].astype(np.float64) + part[:, h]) / 2
    return res


@cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort on ``n`` wires.

    Built for the next power of two; comparators touching a wire ``>= n`` are dropped (those
    wires hold +inf, so the comparators would not move anything).  After applying each comparator
    (smaller value to ``i``) in order, the wires are sorted.
    """
    p = 1
    while p < n:
        p *= 2
    pairs = []
    size = 1
    while size < p:
        step = size
        while step >= 1:
            for j in range(step % size, p - step, 2 * step):
                for i in range(min(step, p - j - step)):
                    if (i + j) // (size * 2) == (i + j + step) // (size * 2):
                        pairs.append((i + j, i + j + step))
            step //= 2
        size *= 2
    return tuple((a, b) for a, b in pairs if b < n)


@cache
def median_network(n: int) -> tuple[tuple[int, int], ...]:
    """The comparators of :func:`sorting_network` that the middle wire(s) depend on.

    Wire ``n // 2`` (odd ``n``) or wires ``n // 2 - 1`` and ``n // 2`` (even ``n``) then hold the
    same values as after the full network: the middle order statistics.
    """
    h = n // 2
    need = {h} if n % 2 else {h - 1, h}
    kept = []
    for a, b in reversed(sorting_network(n)):
        if a in need or b in need:
            kept.append((a, b))
            need |= {a, b}
    return tuple(reversed(kept))


def _nanmedian_axis1(cube: np.ndarray) -> np.ndarray:
    """Median over axis 1 of (groups, k, features), NaN skipped (all-NaN gives NaN)."""
    k = cube.shape[1]
    srt = np.sort(cube, axis=1)  # NaN sorts last
    n_valid = (~np.isnan(srt)).sum(axis=1)
    lo = np.take_along_axis(srt, (np.maximum(n_valid - 1, 0) // 2)[:, None, :], axis=1)[:, 0]
    hi = np.take_along_axis(srt, np.minimum(n_valid // 2, k - 1)[:, None, :], axis=1)[:, 0]
    med = (lo.astype(np.float64) + hi.astype(np.float64)) / 2
    return np.where(n_valid > 0, med, np.nan)
