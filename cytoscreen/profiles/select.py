"""Feature selection with pycytominer's operations, on one float matrix.

Operations run in the order given; each sees the features the previous ones kept, and the dropped
columns of each are recorded (:class:`FeatureSelection`).  Statistics are computed on the
``samples`` rows (all rows by default), columns are dropped from every row.

``variance_threshold``
    pycytominer's frequency/uniqueness rule (called ``variance_threshold`` up to pycytominer 1.2 and
    ``frequency_threshold`` since): drop a feature when (count of its second most common value) /
    (count of its most common value) < ``freq_cut``, or (number of distinct values) / (rows) <
    ``unique_cut``.  Missing values are not counted as values.
``correlation_threshold``
    pycytominer's rule: compute the correlation matrix of the remaining features once, order the
    features by the sum of their absolute correlations (ascending, pandas' sort), and for every pair
    ``(a, b)`` of the lower triangle with correlation > ``threshold`` (signed, as pycytominer) drop
    the member that comes later in that order.  Pairs are judged independently, as in pycytominer.
``drop_na_columns``
    Drop features whose fraction of missing values is > ``na_cutoff``.
``blocklist``
    Drop the named features; names with ``*``, ``?`` or ``[`` are shell patterns.
``drop_outliers``
    Drop features whose largest absolute value is > ``outlier_cutoff`` (after normalization).
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles.arrays import check_finite, feature_matrix, replace_features
from cytoscreen.profiles.columns import check_unique, resolve_features, shown
from cytoscreen.profiles.reference import reference_mask

logger = logging.getLogger(__name__)

SELECT_OPERATIONS = (
    "variance_threshold",
    "correlation_threshold",
    "drop_na_columns",
    "blocklist",
    "drop_outliers",
)
DEFAULT_OPERATIONS = ("drop_na_columns", "variance_threshold", "correlation_threshold", "drop_outliers")
CORRELATION_METHODS = ("pearson", "spearman")

#: Values per block of rows of the float64 Gram matrix in the correlation filter (128 MB): a well
#: table is one block, one BLAS call (smaller blocks cost ~50% more on 7,680 x 944).
_GRAM_VALUES = 1 << 24
#: Values per column block of the frequency rule (small temporaries, reused by the allocator).
_COLUMN_BLOCK_VALUES = 1 << 19


@dataclass(frozen=True)
class OperationRecord:
    """What one operation saw and dropped."""

    operation: str
    parameters: Mapping[str, Any]
    n_before: int
    dropped: tuple[str, ...]

    @property
    def n_after(self) -> int:
        return self.n_before - len(self.dropped)


@dataclass(frozen=True)
class FeatureSelection:
    """Selected profiles, the kept features and one record per operation."""

    profiles: pd.DataFrame
    kept: tuple[str, ...]
    operations: tuple[OperationRecord, ...]
    n_samples: int = 0
    samples: str = "all rows"
    features_in: tuple[str, ...] = field(default=())

    def record(self) -> dict[str, Any]:
        """A JSON-ready account: parameters, per-operation dropped columns, the kept columns."""
        return {
            "n_features_in": len(self.features_in),
            "n_features_kept": len(self.kept),
            "samples": self.samples,
            "n_samples": self.n_samples,
            "operations": [
                {
                    "operation": r.operation,
                    "parameters": dict(r.parameters),
                    "n_before": r.n_before,
                    "n_after": r.n_after,
                    "dropped": list(r.dropped),
                }
                for r in self.operations
            ],
            "kept": list(self.kept),
        }

    def table(self) -> pd.DataFrame:
        """One row per input feature: ``feature``, ``kept`` and ``dropped_by`` (operation or empty)."""
        dropped_by = {f: r.operation for r in self.operations for f in r.dropped}
        return pd.DataFrame(
            {
                "feature": list(self.features_in),
                "kept": [f not in dropped_by for f in self.features_in],
                "dropped_by": [dropped_by.get(f, "") for f in self.features_in],
            }
        )


# --- the operations on a matrix -------------------------------------------------------------------
def variance_exclude(
    x: np.ndarray, names: Sequence[str], *, freq_cut: float = 0.05, unique_cut: float = 0.01
) -> list[str]:
    """Features failing pycytominer's frequency (``freq_cut``) or uniqueness (``unique_cut``) test."""
    if not 0 <= freq_cut <= 1 or not 0 <= unique_cut <= 1:
        raise ConfigError("freq_cut and unique_cut must be between 0 and 1")
    n, f = x.shape
    if f == 0:
        return []
    freq = np.zeros(f)
    n_unique = np.zeros(f, dtype=np.int64)
    step = max(1, _COLUMN_BLOCK_VALUES // max(n, 1))
    for j0 in range(0, f, step):  # column blocks keep the temporaries small and reused
        freq[j0 : j0 + step], n_unique[j0 : j0 + step] = _frequency_block(x[:, j0 : j0 + step])
    unique_ratio = n_unique / n if n else np.zeros(f)
    bad = (freq < freq_cut) | (unique_ratio < unique_cut)
    return [names[j] for j in np.flatnonzero(bad)]


def _frequency_block(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-two count ratio and number of distinct values of each column (NaN not counted)."""
    s = np.sort(x, axis=0)  # NaN sorts last
    valid = ~np.isnan(s)
    n_valid = valid.sum(axis=0)
    change = (s[1:] != s[:-1]) & valid[1:] & valid[:-1]
    n_unique = (n_valid > 0).astype(np.int64) + change.sum(axis=0)
    freq = np.where(n_valid >= 2, 1.0, 0.0)  # all values distinct: the two top counts are 1
    dup = np.flatnonzero((n_unique < n_valid) & (n_valid > 0))
    if len(dup):
        freq[dup] = _top_two_ratio(s[:, dup] if len(dup) < s.shape[1] else s, n_valid[dup])
    return freq, n_unique


def _top_two_ratio(s: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """(count of the 2nd most common value) / (count of the most common) for each column of ``s``.

    ``s`` holds sorted columns, each with its ``n_valid`` valid values first.  For every element
    the length of its run of equal values so far is ``i - start + 1`` (``start`` by a running
    maximum), the largest is the top count, and the largest outside the first top run the second;
    a column with a single run gives 0.
    """
    n, m = s.shape
    idx = np.arange(n, dtype=np.int32)[:, None]
    new_run = np.ones((n, m), dtype=bool)
    new_run[1:] = s[1:] != s[:-1]
    start = np.where(new_run, idx, np.int32(0))
    np.maximum.accumulate(start, axis=0, out=start)
    length = idx - start
    length += 1
    length[idx >= n_valid[None, :].astype(np.int32)] = 0  # NaN rows
    cols = np.arange(m)
    top_at = length.argmax(axis=0)
    top1 = length[top_at, cols]
    np.putmask(length, start == start[top_at, cols][None, :], 0)
    return length.max(axis=0) / top1


def _gram(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(x - mean)^T (x - mean)`` in float64, accumulated over blocks of rows, exactly symmetric.

    numpy's product (BLAS) costs the same CPU as scipy's ``dsyrk`` here (0.17-0.18 s on
    7,680 x 1,000) without importing ``scipy.linalg`` (0.13 CPU-s).
    """
    n, f = x.shape
    gram = np.zeros((f, f), dtype=np.float64)
    step = max(1, _GRAM_VALUES // max(f, 1))
    # column-major like the features of a table: the centring copy and BLAS read columns
    blk = np.empty((min(step, n), f), dtype=np.float64, order="F")
    for r0 in range(0, n, step):
        part = blk[: min(step, n - r0)] if n - r0 < step else blk
        np.subtract(x[r0 : r0 + step], mean, out=part)
        gram += part.T @ part
    upper = np.triu(gram)
    return upper + np.triu(upper, 1).T


def correlation_matrix(x: np.ndarray, *, method: str = "pearson") -> np.ndarray:
    """Feature-by-feature correlation (float64), NaN for constant features.

    Without missing values the Gram matrix of the centered data is accumulated in float64 blocks of
    rows (memory bounded by the block, not the table); with missing values pandas' pairwise
    ``DataFrame.corr`` is used, as pycytominer does.
    """
    if method not in CORRELATION_METHODS:
        raise ConfigError(
            f"unknown correlation method {method!r}; choose one of {', '.join(CORRELATION_METHODS)}"
        )
    n, f = x.shape
    if np.isnan(x).any():
        return pd.DataFrame(x).corr(method=method).to_numpy(dtype=np.float64)
    if method == "spearman":
        from scipy.stats import rankdata

        x = rankdata(x, axis=0, method="average")
    gram = _gram(x, x.mean(axis=0, dtype=np.float64))
    d = np.sqrt(np.diag(gram))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = gram / d[:, None] / d[None, :]
    corr[d == 0, :] = np.nan
    corr[:, d == 0] = np.nan
    np.clip(corr, -1, 1, out=corr)
    return corr


def correlation_exclude(
    x: np.ndarray, names: Sequence[str], *, threshold: float = 0.9, method: str = "pearson"
) -> list[str]:
    """Features dropped by pycytominer's correlation rule (see the module docstring)."""
    if not 0 <= threshold <= 1:
        raise ConfigError("corr_threshold must be between 0 and 1")
    if x.shape[1] < 2:
        return []
    return exclude_correlated(correlation_matrix(x, method=method), names, threshold=threshold)


def exclude_correlated(corr: np.ndarray, names: Sequence[str], *, threshold: float = 0.9) -> list[str]:
    """pycytominer's correlation rule on a correlation matrix ``corr`` of the features ``names``."""
    abs_sum = np.nansum(np.abs(corr), axis=0)
    # pycytominer: data_cor_df.abs().sum().sort_values().index; the same pandas sort, same ties
    order = pd.Series(abs_sum).sort_values().index.to_numpy()
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    with np.errstate(invalid="ignore"):
        above = np.tril(corr > threshold, k=-1)
    a, b = np.nonzero(above)  # a: row (pair_a), b: column (pair_b), a > b
    drop = np.where(position[a] > position[b], a, b)
    return [names[j] for j in np.unique(drop)]


def na_exclude(x: np.ndarray, names: Sequence[str], *, cutoff: float = 0.05) -> list[str]:
    """Features with a fraction of missing values above ``cutoff``."""
    if not 0 <= cutoff <= 1:
        raise ConfigError("na_cutoff must be between 0 and 1")
    if x.shape[0] == 0:
        return []
    frac = np.isnan(x).sum(axis=0) / x.shape[0]
    return [names[j] for j in np.flatnonzero(frac > cutoff)]


def outlier_exclude(x: np.ndarray, names: Sequence[str], *, cutoff: float = 500.0) -> list[str]:
    """Features whose largest absolute value exceeds ``cutoff`` (NaN skipped)."""
    if x.shape[0] == 0:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hi = np.abs(np.nanmax(x, axis=0))
        lo = np.abs(np.nanmin(x, axis=0))
    with np.errstate(invalid="ignore"):
        bad = (hi > cutoff) | (lo > cutoff)
    return [names[j] for j in np.flatnonzero(bad)]


def blocklist_exclude(names: Sequence[str], blocklist: Iterable[str]) -> list[str]:
    """Features named in ``blocklist``; entries with ``*``, ``?`` or ``[`` are shell patterns."""
    entries = [str(b) for b in blocklist]
    exact = {b for b in entries if not any(ch in b for ch in "*?[")}
    patterns = [b for b in entries if b not in exact]
    return [n for n in names if n in exact or any(fnmatch.fnmatchcase(n, p) for p in patterns)]


# --- the stage function ---------------------------------------------------------------------------
#: The settings in-memory (:func:`feature_select`) and streamed selection share; their defaults are
#: :func:`feature_select`'s (:func:`selection_options`).
SELECTION_OPTIONS = ("operations", "freq_cut", "unique_cut", "corr_threshold", "corr_method",
                     "na_cutoff", "outlier_cutoff", "blocklist")


def selection_options(**options: Any) -> dict[str, Any]:
    """Every :data:`SELECTION_OPTIONS` key: the value given, else :func:`feature_select`'s default.

    Raises TypeError for other keys and ConfigError as :func:`check_operations`.
    """
    unknown = sorted(set(options) - set(SELECTION_OPTIONS))
    if unknown:
        raise TypeError(f"unknown feature selection option(s): {', '.join(unknown)}")
    params = inspect.signature(feature_select).parameters
    out = {k: options[k] if k in options else params[k].default for k in SELECTION_OPTIONS}
    check_operations(out["operations"], out["blocklist"])
    return out


def check_operations(operations: Sequence[str], blocklist: Sequence[str]) -> None:
    """Raise ConfigError for operations not in :data:`SELECT_OPERATIONS` and for ``blocklist``
    without names (in memory and streamed selection)."""
    unknown = [op for op in operations if op not in SELECT_OPERATIONS]
    if unknown:
        raise ConfigError(
            f"unknown feature selection operation(s) {', '.join(map(str, unknown))}; choose from "
            f"{', '.join(SELECT_OPERATIONS)}"
        )
    if "blocklist" in operations and not list(blocklist):
        raise ConfigError(
            "the blocklist operation needs feature names: set profiles.blocklist in the config or "
            "pass --blocklist NAME ... / --blocklist-file FILE"
        )


def _columns(x: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    """``x[:, idx]`` without a copy when ``idx`` is every column in order."""
    return x if len(idx) == x.shape[1] else x[:, idx]


def feature_select(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    operations: Sequence[str] = DEFAULT_OPERATIONS,
    samples: str | pd.Series | np.ndarray = "all",
    samples_column: str | None = None,
    samples_value: str | Sequence[str] | None = None,
    freq_cut: float = 0.05,
    unique_cut: float = 0.01,
    corr_threshold: float = 0.9,
    corr_method: str = "pearson",
    na_cutoff: float = 0.05,
    outlier_cutoff: float = 500.0,
    blocklist: Sequence[str] = (),
    source: str = "profiles",
) -> FeatureSelection:
    """Apply feature-selection ``operations`` in order; keep every row and ``Metadata_*`` column.

    Parameters
    ----------
    profiles
        Normalized profiles (usually every plate of the screen, so all plates keep one column set).
    operations
        Names from :data:`SELECT_OPERATIONS`, applied in order.
    samples
        Rows the statistics are computed on: ``"all"`` (pycytominer's default), ``"negcon"`` or a
        pandas query / boolean mask (see :func:`cytoscreen.profiles.reference.reference_mask`);
        ``samples_column``/``samples_value`` name the rows directly.
    blocklist
        Feature names or shell patterns for the ``blocklist`` operation (required by it).

    Returns
    -------
    FeatureSelection
        ``profiles`` without the dropped features (features float32), the kept names and the record.
    """
    check_operations(operations, blocklist)
    cols = resolve_features(profiles, features, source=source)
    keys = [k for k in io.WELL_KEYS if k in profiles.columns]
    if len(keys) == 2:
        check_unique(profiles, keys, source=source, what="well")
    mask, rule = reference_mask(
        profiles, samples, column=samples_column, value=samples_value, source=source
    )
    if not mask.any():
        raise InputDataError(f"{source}: no rows match the feature selection samples ({rule})")
    x_all = feature_matrix(profiles, cols)
    check_finite(x_all, cols, source=source)
    x = x_all if mask.all() else x_all[mask]

    current = list(range(len(cols)))
    records = []
    for op in operations:
        names = [cols[j] for j in current]
        sub = _columns(x, current)
        if op == "variance_threshold":
            params: dict[str, Any] = {"freq_cut": freq_cut, "unique_cut": unique_cut}
            dropped = variance_exclude(sub, names, **params)
        elif op == "correlation_threshold":
            params = {"threshold": corr_threshold, "method": corr_method}
            dropped = correlation_exclude(sub, names, **params)
        elif op == "drop_na_columns":
            params = {"cutoff": na_cutoff}
            dropped = na_exclude(sub, names, **params)
        elif op == "drop_outliers":
            params = {"cutoff": outlier_cutoff}
            dropped = outlier_exclude(sub, names, **params)
        else:  # blocklist
            params = {"blocklist": list(blocklist)}
            dropped = blocklist_exclude(names, blocklist)
        gone = set(dropped)
        dropped = [n for n in names if n in gone]  # table order
        records.append(OperationRecord(op, params, len(names), tuple(dropped)))
        logger.info(
            "%s: %s dropped %d of %d features%s",
            source, op, len(dropped), len(names),
            f" ({shown(dropped)})" if dropped else "",
        )
        current = [j for j in current if cols[j] not in gone]
    kept = [cols[j] for j in current]
    if not kept:
        logger.warning("%s: feature selection dropped every feature", source)
    out = replace_features(profiles, cols, _columns(x_all, current), kept)
    logger.info(
        "%s: kept %d of %d features (statistics on %s, %d rows)",
        source, len(kept), len(cols), rule, int(mask.sum()),
    )
    return FeatureSelection(
        profiles=out,
        kept=tuple(kept),
        operations=tuple(records),
        n_samples=int(mask.sum()),
        samples=rule,
        features_in=tuple(cols),
    )


def apply_selection(
    profiles: pd.DataFrame, kept: Sequence[str], *, source: str = "profiles"
) -> pd.DataFrame:
    """Keep only the features ``kept`` (a saved selection), every other column unchanged.

    Raises
    ------
    InputDataError
        When a kept feature is not in ``profiles``.
    """
    cols = resolve_features(profiles, None, source=source)
    feat_set = set(cols)
    missing = [k for k in kept if k not in feat_set]
    if missing:
        raise InputDataError(
            f"{source}: {len(missing)} selected feature(s) are not in the table ({shown(missing)});"
            f" the selection was made on a table with other features"
        )
    x = feature_matrix(profiles, list(kept))
    logger.info("%s: kept %d of %d features from a saved selection", source, len(kept), len(cols))
    return replace_features(profiles, cols, x, list(kept))
