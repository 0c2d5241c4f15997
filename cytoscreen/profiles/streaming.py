"""Screen-wide feature selection and consensus streamed plate by plate (campaign scale).

:func:`cytoscreen.profiles.select.feature_select` and :func:`cytoscreen.profiles.consensus.consensus`
take the whole screen as one table; at thousands of plates that table does not fit in memory
(2,000 plates x 384 wells x 1,280 float32 features is 3.9 GB before any copy).  This module gives
the same results from one plate at a time:

:class:`SelectionStats`
    Per-feature counts of valid values, sums, largest absolute values and the float64 Gram matrix
    of the (shifted) features, accumulated plate by plate (``update``), plus a seeded uniform
    reservoir sample of rows for the frequency rule.  Memory: features^2 float64 (13 MB at 1,280
    features) plus the sample.
:func:`select_from_stats`
    The selection operations of ``select.py`` on those statistics, in order:

    - ``drop_na_columns``, ``drop_outliers``, ``blocklist``: exact (the same columns as in memory).
    - ``correlation_threshold`` (pearson): the correlation matrix from the Gram matrix; exact
      (up to float64 rounding) without missing values.  With missing values the in-memory path
      uses pairwise-complete correlations; here missing values count as the feature's running
      shift (close to mean imputation), an approximation.  ``spearman`` needs screen-wide ranks and
      is refused.
    - ``variance_threshold`` (frequency rule): on the reservoir sample, so exact when the screen
      has at most ``sample_rows`` statistic rows, approximate above.
:func:`stream_consensus`
    Treatments are hashed into buckets; each plate's rows are appended to their bucket's files
    (features as raw float32, metadata as pickled frames), and every bucket, holding all
    replicates of its treatments, goes through the product's
    :func:`~cytoscreen.profiles.consensus.consensus`: exact.  The bucket results are spilled too,
    then written in place into one preallocated float32 output block in their final (sorted)
    order, so memory is the output once plus one bucket.
"""

from __future__ import annotations

import logging
import pickle
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles.arrays import check_finite, feature_matrix
from cytoscreen.profiles.columns import resolve_features, shown
from cytoscreen.profiles.reference import reference_mask
from cytoscreen.profiles.select import (
    SELECTION_OPTIONS,
    FeatureSelection,
    OperationRecord,
    blocklist_exclude,
    exclude_correlated,
    selection_options,
    variance_exclude,
)

logger = logging.getLogger(__name__)

#: Rows kept for the frequency rule (``variance_threshold``): 50,000 x 1,280 float32 is 256 MB.
DEFAULT_SAMPLE_ROWS = 50_000


@dataclass
class SelectionStats:
    """Feature statistics accumulated one plate (chunk of rows) at a time.

    Parameters
    ----------
    features
        The feature names, in column order of every chunk.
    sample_rows
        Size of the uniform row sample kept for the frequency rule.
    seed
        Seed of the sample.
    """

    features: tuple[str, ...]
    sample_rows: int = DEFAULT_SAMPLE_ROWS
    seed: int = 0
    n_rows: int = 0
    n_valid: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    max_abs: np.ndarray = field(init=False)
    gram: np.ndarray = field(init=False)
    shift: np.ndarray | None = field(init=False, default=None)
    _sample: np.ndarray = field(init=False)
    _n_sample: int = field(init=False, default=0)
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        f = len(self.features)
        self.n_valid = np.zeros(f, dtype=np.int64)
        self.total = np.zeros(f, dtype=np.float64)
        self.max_abs = np.full(f, np.nan)
        self.gram = np.zeros((f, f), dtype=np.float64, order="F")
        self._sample = np.empty((0, f), dtype=np.float32)
        self._rng = np.random.default_rng(self.seed)

    def update(self, x: np.ndarray) -> None:
        """Add the rows of ``x`` (rows x features, NaN for missing)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"expected rows x {len(self.features)} features, got {x.shape}")
        if len(x) == 0:
            return
        valid = ~np.isnan(x)
        if self.shift is None:  # the first chunk's means: keeps the Gram sums small (no cancellation)
            with np.errstate(invalid="ignore"):
                counts = valid.sum(axis=0)
                self.shift = np.where(counts > 0, np.nansum(x, axis=0, dtype=np.float64)
                                      / np.maximum(counts, 1), 0.0)
        part = x.astype(np.float64) - self.shift
        part[~valid] = 0.0
        self.n_valid += valid.sum(axis=0)
        self.total += part.sum(axis=0)
        with np.errstate(invalid="ignore"):
            chunk_max = np.abs(x).max(axis=0, initial=-np.inf, where=valid)
        chunk_max[np.isneginf(chunk_max)] = np.nan
        self.max_abs = np.fmax(self.max_abs, chunk_max)
        self._accumulate_gram(part)
        self._add_sample(x)
        self.n_rows += len(x)

    def _accumulate_gram(self, part: np.ndarray) -> None:
        try:
            from scipy.linalg.blas import dsyrk
        except ImportError:  # pragma: no cover - scipy is a dependency
            self.gram += part.T @ part
            return
        self.gram = dsyrk(1.0, part.T, beta=1.0, c=self.gram, trans=0, lower=0, overwrite_c=1)

    def _add_sample(self, x: np.ndarray) -> None:
        """Reservoir sampling (algorithm R): every row seen so far is in the sample equally likely."""
        cap = self.sample_rows
        n = len(x)
        room = max(0, min(cap - self._n_sample, n))
        if room:
            self._sample = np.concatenate([self._sample, x[:room].astype(np.float32)])
            self._n_sample += room
        if room == n:
            return
        seen = self.n_rows + np.arange(room, n)  # global index of each remaining row
        slot = self._rng.integers(0, seen + 1)
        take = slot < cap
        # in order, a later row replaces an earlier one in the same slot (as the sequential rule)
        self._sample[slot[take]] = x[room:][take]

    @property
    def sample(self) -> np.ndarray:
        """The row sample (all rows, in order, while the screen has at most ``sample_rows``)."""
        return self._sample

    def correlation(self, idx: Sequence[int]) -> np.ndarray:
        """Pearson correlation of the features ``idx`` (NaN for constant features)."""
        idx = np.asarray(idx, dtype=np.int64)
        upper = np.triu(self.gram)
        gram = upper + np.triu(upper, 1).T
        gram = gram[np.ix_(idx, idx)]
        n = max(self.n_rows, 1)
        d = self.total[idx] / n
        centered = gram - n * np.outer(d, d)
        diag = np.sqrt(np.clip(np.diag(centered), 0, None))
        # features constant to rounding: relative variance below float64 resolution
        scale = np.maximum(np.abs(self.shift[idx]) if self.shift is not None else 0, 1.0)
        const = diag <= 1e-12 * scale * np.sqrt(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = centered / diag[:, None] / diag[None, :]
        corr[const, :] = np.nan
        corr[:, const] = np.nan
        np.clip(corr, -1, 1, out=corr)
        return corr


def select_from_stats(
    stats: SelectionStats, *, source: str = "screen", **options: Any
) -> tuple[list[str], list[OperationRecord]]:
    """The kept features and one record per operation, from streamed statistics (module docstring).

    ``options`` are :data:`~cytoscreen.profiles.select.SELECTION_OPTIONS` (operations, cut-offs,
    blocklist), with :func:`~cytoscreen.profiles.select.feature_select`'s defaults.
    """
    opts = selection_options(**options)
    operations, freq_cut, unique_cut, corr_threshold, corr_method, na_cutoff, outlier_cutoff, \
        blocklist = (opts[k] for k in SELECTION_OPTIONS)
    if "correlation_threshold" in operations and corr_method != "pearson":
        raise ConfigError(
            f"streamed feature selection supports corr_method 'pearson' only (got {corr_method!r}):"
            " rank correlations need the whole screen in memory"
        )
    if not 0 <= na_cutoff <= 1:
        raise ConfigError("na_cutoff must be between 0 and 1")
    if not 0 <= corr_threshold <= 1:
        raise ConfigError("corr_threshold must be between 0 and 1")
    cols = list(stats.features)
    current = list(range(len(cols)))
    records: list[OperationRecord] = []
    n = stats.n_rows
    for op in operations:
        names = [cols[j] for j in current]
        idx = np.asarray(current, dtype=np.int64)
        if op == "drop_na_columns":
            params: dict[str, Any] = {"cutoff": na_cutoff}
            frac = (n - stats.n_valid[idx]) / n if n else np.zeros(len(idx))
            dropped = [names[i] for i in np.flatnonzero(frac > na_cutoff)]
        elif op == "drop_outliers":
            params = {"cutoff": outlier_cutoff}
            with np.errstate(invalid="ignore"):
                dropped = [names[i] for i in np.flatnonzero(stats.max_abs[idx] > outlier_cutoff)]
        elif op == "variance_threshold":
            params = {"freq_cut": freq_cut, "unique_cut": unique_cut}
            dropped = variance_exclude(stats.sample[:, idx], names, **params)
        elif op == "correlation_threshold":
            params = {"threshold": corr_threshold, "method": corr_method}
            dropped = (exclude_correlated(stats.correlation(idx), names, threshold=corr_threshold)
                       if len(idx) >= 2 else [])
        else:  # blocklist
            params = {"blocklist": list(blocklist)}
            dropped = blocklist_exclude(names, blocklist)
        gone = set(dropped)
        dropped = [nm for nm in names if nm in gone]
        records.append(OperationRecord(op, params, len(names), tuple(dropped)))
        logger.info("%s: %s dropped %d of %d features%s", source, op, len(dropped), len(names),
                    f" ({shown(dropped)})" if dropped else "")
        current = [j for j in current if cols[j] not in gone]
    return [cols[j] for j in current], records


def _plate_features(df: pd.DataFrame, features: Sequence[str] | None, source: str) -> list[str]:
    return resolve_features(df, features, source=source)


def stream_select(
    paths: Sequence[str | Path],
    *,
    features: Sequence[str] | None = None,
    samples: str = "all",
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    seed: int = 0,
    read: Callable[[Path], pd.DataFrame] | None = None,
    **operation_options: Any,
) -> FeatureSelection:
    """Fit feature selection on every plate's table, reading one plate at a time.

    Parameters
    ----------
    paths
        One normalized table per plate (every plate has the same feature columns).
    samples
        Rows the statistics use: ``"all"`` or ``"negcon"`` (or a query, per plate).
    read
        Reads one table (default :func:`cytoscreen.io.read_table`).
    operation_options
        ``operations``, cut-offs and ``blocklist`` as :func:`select_from_stats`.

    Returns
    -------
    FeatureSelection
        ``profiles`` is an empty table with the kept columns (apply the selection plate by plate
        with :func:`cytoscreen.profiles.select.apply_selection`); ``kept``, ``operations`` and
        ``record()``/``table()`` as from :func:`~cytoscreen.profiles.select.feature_select`.
    """
    read = read or io.read_table
    if not paths:
        raise InputDataError("no plate tables given to feature selection")
    stats: SelectionStats | None = None
    rule = samples
    n_samples = 0
    for path in paths:
        path = Path(path)
        df = read(path)
        cols = _plate_features(df, features, str(path))
        if stats is None:
            stats = SelectionStats(tuple(cols), sample_rows=sample_rows, seed=seed)
        elif list(cols) != list(stats.features):
            raise InputDataError(
                f"{path}: its feature columns differ from the first plate's ({paths[0]}); every plate"
                " must have the same features for one screen-wide selection"
            )
        mask, rule = reference_mask(df, samples, source=str(path))
        x = feature_matrix(df, cols)
        check_finite(x, cols, source=str(path))
        stats.update(x if mask.all() else x[mask])
        n_samples += int(mask.sum())
        del df, x
    if n_samples == 0:
        raise InputDataError(f"no rows match the feature selection samples ({rule}) in any plate")
    kept, records = select_from_stats(stats, **operation_options)
    logger.info("screen: kept %d of %d features (statistics on %s, %d rows of %d plates)",
                len(kept), len(stats.features), rule, n_samples, len(paths))
    return FeatureSelection(
        profiles=pd.DataFrame(columns=kept),
        kept=tuple(kept),
        operations=tuple(records),
        n_samples=n_samples,
        samples=rule,
        features_in=tuple(stats.features),
    )


# --- consensus ----------------------------------------------------------------------------------
def treatment_bucket(labels: pd.Series, n_buckets: int) -> np.ndarray:
    """A stable bucket (0 .. n_buckets - 1) per treatment label (CRC-32 of the label)."""
    codes, uniques = pd.factorize(labels.astype(str), sort=False)
    bucket_of = np.array([zlib.crc32(u.encode()) % n_buckets for u in uniques], dtype=np.int64)
    return bucket_of[codes] if len(codes) else np.zeros(0, dtype=np.int64)


def stream_consensus(
    tables: Iterable[tuple[str, pd.DataFrame]],
    spill_dir: str | Path,
    *,
    by: Sequence[str],
    n_buckets: int = 16,
    consensus_fn: Callable[..., pd.DataFrame] | None = None,
    order: str = "sorted",
    **consensus_options: Any,
) -> pd.DataFrame:
    """Per-treatment consensus of a screen given one plate table at a time.

    Parameters
    ----------
    tables
        ``(name, table)`` per plate; each table has the ``by`` columns and the features.
    spill_dir
        Folder for the bucket files (features as raw float32, metadata pickled, per bucket; the
        consensus of each bucket while the others run; all removed at the end).
    by
        Treatment columns (``resolve_treatment_columns`` of the first plate is a good choice).
    n_buckets
        Buckets; besides the output, peak memory is about one bucket (the screen / n_buckets rows).
    consensus_fn
        The consensus of one table (default :func:`cytoscreen.profiles.consensus.consensus`).
    order
        ``sorted``: rows sorted by ``by`` (stable); ``first``: in order of first appearance of
        each treatment in ``tables``, as the in-memory consensus.

    Returns
    -------
    DataFrame
        One row per treatment, the same rows as the in-memory consensus.  Its features are one
        float32 block allocated once (each column contiguous) and filled bucket by bucket, so the
        output is held about once (not concatenated, then sorted).
    """
    from cytoscreen.profiles.arrays import with_features
    from cytoscreen.profiles.consensus import consensus

    if order not in ("sorted", "first"):
        raise ConfigError(f"stream_consensus order must be 'sorted' or 'first', not {order!r}")
    consensus_fn = consensus_fn or consensus
    spill = Path(spill_dir)
    spill.mkdir(parents=True, exist_ok=True)
    for stale in spill.glob("bucket*.*"):  # left by an interrupted run
        stale.unlink()
    first_seen: dict[str, int] = {}
    buckets, features = _spill_buckets(tables, spill, by, n_buckets, first_seen)
    if not buckets:
        raise InputDataError("no rows to build a consensus from")
    # each bucket's consensus: metadata kept (small), features spilled until the output size is known
    metas = []
    for b in buckets:
        rows = _read_pickles(spill / f"bucket{b:04d}.meta")
        rows = with_features(rows, list(rows.columns),
                             _read_f32(spill / f"bucket{b:04d}.f32", len(features)), features)
        part = consensus_fn(rows, by=list(by), source=f"bucket {b}", **consensus_options)
        del rows
        cols = io.feature_columns(part)
        if cols != features:
            raise InputDataError(f"bucket {b}: the consensus changed the feature columns")
        meta_cols = [c for c in part.columns if c not in set(cols)]
        metas.append(part[meta_cols].reset_index(drop=True))
        np.ascontiguousarray(feature_matrix(part, cols), dtype=np.float32).tofile(
            spill / f"bucket{b:04d}.out")
        del part
    meta = pd.concat(metas, ignore_index=True)
    perm = meta.sort_values(list(by), kind="stable").index.to_numpy()
    if order == "first":
        keys = _treatment_labels(meta.iloc[perm], by).map(first_seen).to_numpy()
        perm = perm[np.argsort(keys, kind="stable")]
    meta = meta.iloc[perm].reset_index(drop=True)
    dest = np.empty(len(perm), dtype=np.int64)
    dest[perm] = np.arange(len(perm))  # output row of each concatenated bucket row
    block = np.empty((len(features), len(perm)), dtype=np.float32)  # (features, rows): columns contiguous
    start = 0
    for b, part_meta in zip(buckets, metas, strict=True):
        values = _read_f32(spill / f"bucket{b:04d}.out", len(features))
        block[:, dest[start:start + len(part_meta)]] = values.T
        start += len(part_meta)
        del values
    return with_features(meta, list(meta.columns), block.T, features)


def _treatment_labels(df: pd.DataFrame, by: Sequence[str]) -> pd.Series:
    """One string per row naming its treatment (the ``by`` values)."""
    if len(by) > 1:
        return df[list(by)].astype(str).agg("\x1f".join, axis=1)
    return df[by[0]].astype(str)


def _spill_buckets(tables, spill: Path, by: Sequence[str], n_buckets: int,
                   first_seen: dict[str, int]) -> tuple[list[int], list[str]]:
    """Append every plate's rows to their treatment bucket's files: ``bucket<b>.f32`` (features,
    raw float32) and ``bucket<b>.meta`` (the metadata rows, pickled frames); fills ``first_seen``
    (treatment label -> order of first appearance).  Returns the buckets used and the features."""
    used: set[int] = set()
    features: list[str] | None = None
    for name, df in tables:
        missing = [b for b in by if b not in df.columns]
        if missing:
            raise InputDataError(f"{name}: no treatment column(s) {', '.join(missing)}")
        cols = io.feature_columns(df)
        if features is None:
            features = cols
        elif cols != features:
            raise InputDataError(f"{name}: its feature columns differ from the first table's")
        label = _treatment_labels(df, by)
        for key in dict.fromkeys(label):
            first_seen.setdefault(key, len(first_seen))
        bucket = treatment_bucket(label, n_buckets)
        x = np.ascontiguousarray(feature_matrix(df, cols), dtype=np.float32)
        meta_cols = [c for c in df.columns if c not in set(cols)]
        for b in np.unique(bucket).tolist():
            rows = bucket == b
            with open(spill / f"bucket{b:04d}.f32", "ab") as fh:
                x[rows].tofile(fh)
            with open(spill / f"bucket{b:04d}.meta", "ab") as fh:
                pickle.dump(df.loc[rows, meta_cols].reset_index(drop=True), fh,
                            protocol=pickle.HIGHEST_PROTOCOL)
            used.add(b)
    return sorted(used), features or []


def _read_f32(path: Path, n_features: int) -> np.ndarray:
    values = np.fromfile(path, dtype=np.float32).reshape(-1, n_features)
    path.unlink()
    return values


def _read_pickles(path: Path) -> pd.DataFrame:
    """The frames pickled one after another into ``path`` (written by this module), concatenated."""
    frames = []
    with open(path, "rb") as fh:
        while True:
            try:
                frames.append(pickle.load(fh))  # noqa: S301 - our own spill file
            except EOFError:
                break
    path.unlink()
    return pd.concat(frames, ignore_index=True)
