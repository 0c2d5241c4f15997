"""Cosine similarity, nearest neighbours and median treatment profiles.

Profiles are compared by cosine similarity throughout the MoA stage (DESIGN.md §4), as in Ljosa et
al. 2013 and the JUMP/copairs evaluations.  A profile whose features are all zero has no direction;
its similarity to every other profile is defined as 0 rather than NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError

logger = logging.getLogger(__name__)


def feature_matrix(
    profiles: pd.DataFrame, features: Sequence[str] | None = None, *, source: str = "profiles"
) -> tuple[np.ndarray, list[str]]:
    """The float64 feature matrix of ``profiles`` and its column names.

    Raises
    ------
    InputDataError
        When there are no feature columns, a feature is not numeric or a value is NaN/infinite.
    """
    cols = list(features) if features is not None else io.feature_columns(profiles)
    if not cols:
        raise InputDataError(
            f"{source}: no feature columns (features are the columns not starting with Metadata_ or QC_)"
        )
    missing = [c for c in cols if c not in profiles.columns]
    if missing:
        raise InputDataError(f"{source}: feature column(s) missing: {', '.join(missing[:5])}")
    io.check_numeric_features(profiles, cols, source=source)
    x = profiles[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(x)
    if bad.any():
        _raise_nonfinite(source, cols, int(bad.sum()), bad.any(axis=0))
    return x, cols


def checked_features(
    profiles: pd.DataFrame, features: Sequence[str] | None = None, *, source: str = "profiles",
    block: int = 64,
) -> list[str]:
    """The feature columns of ``profiles`` after the checks of :func:`feature_matrix` (same errors),
    made ``block`` columns at a time: no float64 copy of the whole table."""
    cols = list(features) if features is not None else io.feature_columns(profiles)
    if not cols:
        feature_matrix(profiles, cols, source=source)  # raises: no feature columns
    missing = [c for c in cols if c not in profiles.columns]
    if missing:
        raise InputDataError(f"{source}: feature column(s) missing: {', '.join(missing[:5])}")
    io.check_numeric_features(profiles, cols, source=source)
    n_bad, bad_cols = 0, np.zeros(len(cols), dtype=bool)
    for start in range(0, len(cols), block):
        part = profiles[cols[start:start + block]].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(part)
        n_bad += int(bad.sum())
        bad_cols[start:start + block] = bad.any(axis=0)
    if n_bad:
        _raise_nonfinite(source, cols, n_bad, bad_cols)
    return cols


def _raise_nonfinite(source: str, cols: Sequence[str], n_bad: int, bad_cols: np.ndarray) -> None:
    raise InputDataError(
        f"{source}: {n_bad} NaN or infinite feature value(s) in {int(bad_cols.sum())} column(s) "
        f"(e.g. {cols[int(np.flatnonzero(bad_cols)[0])]}); drop or impute them first, "
        f"e.g. with the profiles stage's feature selection"
    )


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm; all-zero rows stay zero."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x, dtype=np.float64), where=norm > 0)


def cosine_similarity(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity between the rows of ``a`` and the rows of ``b`` (default: ``a``).

    Values are clipped to [-1, 1]; a zero row has similarity 0 to everything.
    """
    ua = unit_rows(np.asarray(a, dtype=np.float64))
    ub = ua if b is None else unit_rows(np.asarray(b, dtype=np.float64))
    return np.clip(ua @ ub.T, -1.0, 1.0)


def top_k_similar(x: np.ndarray, k: int, *, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of each row's ``k`` most similar other rows.

    Computed in blocks of rows, so memory is ``block`` x n.  Equal similarities keep row order.
    ``k`` is capped at n - 1.
    """
    unit = unit_rows(np.asarray(x, dtype=np.float64))
    n = len(unit)
    k = max(0, min(k, n - 1))
    idx = np.zeros((n, k), dtype=np.int64)
    val = np.zeros((n, k), dtype=np.float64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sim = np.clip(unit[start:stop] @ unit.T, -1.0, 1.0)
        sim[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        idx[start:stop] = order
        val[start:stop] = np.take_along_axis(sim, order, axis=1)
    return idx, val


def nearest_neighbors(
    profiles: pd.DataFrame,
    *,
    labels: Sequence[str],
    features: Sequence[str] | None = None,
    k: int = 5,
) -> pd.DataFrame:
    """The ``k`` most cosine-similar other rows of every row.

    Parameters
    ----------
    profiles
        One row per treatment.
    labels
        A name per row, written into the neighbour columns.
    k
        Neighbours per row; fewer when the table has fewer other rows (missing ranks are empty).

    Returns
    -------
    DataFrame
        Same index as ``profiles``; columns ``Metadata_Neighbor_<i>`` (label) and
        ``Metadata_Neighbor_<i>_Similarity`` (float) for i = 1..k, most similar first.
    """
    if len(labels) != len(profiles):
        raise ValueError("labels must have one entry per profile")
    x, _ = feature_matrix(profiles, features)
    n = len(profiles)
    order, sims = top_k_similar(x, k)
    k_eff = order.shape[1]
    names = np.asarray(list(labels), dtype=object)
    out: dict[str, object] = {}
    for rank in range(1, k + 1):
        if rank <= k_eff:
            out[io.neighbor_column(rank)] = names[order[:, rank - 1]]
            out[io.neighbor_similarity_column(rank)] = sims[:, rank - 1]
        else:
            out[io.neighbor_column(rank)] = np.full(n, None, dtype=object)
            out[io.neighbor_similarity_column(rank)] = np.full(n, np.nan)
    return pd.DataFrame(out, index=profiles.index)


def treatment_profiles(
    wells: pd.DataFrame,
    *,
    by: Sequence[str],
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Median profile of the wells of each treatment: :func:`cytoscreen.profiles.consensus.consensus`
    with ``method="median"``, on wells whose features are all finite.

    Parameters
    ----------
    wells
        Well-level profiles.
    by
        Columns that define a treatment, e.g. ``("Metadata_perturbation",
        "Metadata_concentration")``; missing values form their own group.

    Returns
    -------
    DataFrame
        One row per treatment in order of first appearance: the ``by`` columns, every other
        ``Metadata_*`` column that is constant within all treatments, ``Metadata_n_wells`` and the
        median features (float32, as in ``consensus.parquet``).
    """
    from cytoscreen.profiles.consensus import consensus

    by = list(by)
    missing = [c for c in by if c not in wells.columns]
    if missing:
        raise InputDataError(f"wells: treatment column(s) missing: {', '.join(missing)}")
    _, cols = feature_matrix(wells, features, source="wells")  # finite values only
    out = consensus(wells, features=cols, method="median", by=by, source="wells")
    meta = [c for c in io.metadata_columns(out) if c not in by and c != io.N_WELLS]
    return out[[*by, *meta, io.N_WELLS, *cols]]
