"""Percent replicating (Way et al. 2022; the JUMP Cell Painting consortium's replicate metric).

A treatment's **replicate correlation** is the median Pearson correlation (across features) over
all pairs of its wells.  The **null** for a treatment with ``k`` wells is the same statistic on
``null_size`` random groups of ``k`` wells that are not replicates of each other (each group draws
its wells from ``k`` different treatments; seeded by ``seed`` and ``k``).  A treatment is
*replicating* when its replicate correlation is above the ``quantile`` (95th percentile) of its
null; **percent replicating** is the fraction of the non-control treatments with two or more wells
that are replicating (reported as a fraction in [0, 1]).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cytoscreen.moa.similarity import feature_matrix

logger = logging.getLogger(__name__)

DEFAULT_QUANTILE = 0.95


@dataclass(frozen=True)
class PercentReplicating:
    """Result of :func:`percent_replicating`: ``fraction`` is None when no treatment qualifies."""

    fraction: float | None
    n_treatments: int
    thresholds: dict[int, float]
    per_group: pd.DataFrame = field(repr=False)


def _row_correlations(x: np.ndarray) -> np.ndarray:
    """Pearson correlation matrix of the rows of ``x`` (a constant row correlates 0)."""
    z = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)
    return np.clip(z @ z.T, -1.0, 1.0)


def _median_pair_correlation(corr: np.ndarray, rows: np.ndarray) -> float:
    sub = corr[np.ix_(rows, rows)]
    return float(np.median(sub[np.triu_indices(len(rows), k=1)]))


def _null(
    corr: np.ndarray, codes: np.ndarray, k: int, *, null_size: int, seed: int
) -> np.ndarray:
    """Median pair correlations of ``null_size`` groups of ``k`` wells of ``k`` distinct treatments."""
    rng = np.random.default_rng([int(seed), int(k)])
    counts = np.bincount(codes)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.empty(null_size)
    iu = np.triu_indices(k, k=1)
    step = max(1, 2_000_000 // max(len(counts), k * k))
    for start in range(0, null_size, step):
        m = min(step, null_size - start)
        chosen = np.argsort(rng.random((m, len(counts))), axis=1)[:, :k]  # k distinct treatments
        offset = (rng.random((m, k)) * counts[chosen]).astype(np.intp)  # one well of each
        rows = order[starts[chosen] + offset]
        sub = corr[rows[:, :, None], rows[:, None, :]]
        out[start : start + m] = np.median(sub[:, iu[0], iu[1]], axis=1)
    return out


def percent_replicating(
    wells: pd.DataFrame,
    *,
    treatment_cols: Sequence[str],
    negcon: Sequence[bool] | np.ndarray,
    features: Sequence[str] | None = None,
    null_size: int = 1000,
    seed: int = 0,
    quantile: float = DEFAULT_QUANTILE,
) -> PercentReplicating:
    """Percent replicating of the non-control treatments (module docstring for the definition).

    Returns
    -------
    PercentReplicating
        ``per_group`` has the ``treatment_cols``, ``n_wells``, ``median_correlation``,
        ``null_threshold`` and ``replicating``; ``thresholds`` maps each group size to its null
        quantile.
    """
    negcon = np.asarray(negcon, dtype=bool)
    if len(negcon) != len(wells):
        raise ValueError("negcon must have one entry per well")
    treatment_cols = list(treatment_cols)
    keys = wells[treatment_cols].reset_index(drop=True)
    codes = keys.groupby(treatment_cols, dropna=False, sort=False).ngroup().to_numpy()
    counts = np.bincount(codes) if len(codes) else np.zeros(0, dtype=int)
    n_codes = len(counts)
    groups = [g for g in range(n_codes) if counts[g] >= 2 and not negcon[codes == g].any()]
    empty = pd.DataFrame(columns=[*treatment_cols, "n_wells", "median_correlation",
                                  "null_threshold", "replicating"])
    if not groups:
        logger.warning("percent replicating not computed: no treatment has 2 or more wells")
        return PercentReplicating(None, 0, {}, empty)
    x, _ = feature_matrix(wells, features, source="wells")
    corr = _row_correlations(x)
    thresholds: dict[int, float] = {}
    rows_out = []
    for g in groups:
        members = np.flatnonzero(codes == g)
        k = len(members)
        if k not in thresholds:
            if k > n_codes:  # fewer treatments than replicates: no null group of k treatments
                thresholds[k] = float("nan")
            else:
                null = _null(corr, codes, k, null_size=null_size, seed=seed)
                thresholds[k] = float(np.quantile(null, quantile))
        med = _median_pair_correlation(corr, members)
        first = members[0]
        rows_out.append(
            (*keys.iloc[first].tolist(), k, med, thresholds[k],
             bool(np.isfinite(thresholds[k]) and med > thresholds[k]))
        )
    per_group = pd.DataFrame(rows_out, columns=empty.columns)
    return PercentReplicating(
        fraction=float(per_group["replicating"].mean()),
        n_treatments=len(per_group),
        thresholds=thresholds,
        per_group=per_group,
    )
