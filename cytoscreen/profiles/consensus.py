"""Consensus profiles: one row per treatment (perturbation x concentration) from its replicate wells.

``median``
    Feature-wise median of the replicate wells (NaN skipped), as pycytominer's ``consensus``.
``modz``
    pycytominer's MODZ (from cmapPy): each replicate is weighted by its mean (Spearman by default)
    correlation with the other replicates, negative correlations set to 0, weights clipped below at
    ``min_weight``, normalized to sum 1 and rounded to ``precision`` decimals; the consensus is the
    weighted sum.  A single replicate is its own consensus.

Treatments are groups of the ``by`` columns, plate-independent (replicates on different plates are
combined), in order of first appearance.  With the default ``by`` (``Metadata_perturbation``,
``Metadata_concentration``) a table without those columns uses the first perturbation column found
(``Metadata_Compound``, ...) and concentration column (``Metadata_Concentration``, ...), and a table
without any concentration column is grouped by perturbation alone.  The output keeps the
``Metadata_*`` columns constant within every treatment, adds ``Metadata_n_wells`` and float32
features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles.arrays import check_finite, feature_matrix, with_features
from cytoscreen.profiles.columns import (
    CONCENTRATION_ALIASES,
    PERTURBATION_ALIASES,
    check_unique,
    resolve_by,
    resolve_column,
    resolve_features,
)
from cytoscreen.profiles.groups import group_codes, group_metadata, group_reduce

logger = logging.getLogger(__name__)

CONSENSUS_METHODS = ("median", "modz")
MODZ_CORRELATIONS = ("spearman", "pearson")
DEFAULT_CONSENSUS_BY = (io.PERTURBATION, io.CONCENTRATION)


def resolve_treatment_columns(
    profiles: pd.DataFrame, by: Sequence[str], *, source: str = "profiles"
) -> list[str]:
    """The group columns; the default ``by`` falls back to known column aliases (module docstring)."""
    by = [by] if isinstance(by, str) else list(by)
    if tuple(by) != DEFAULT_CONSENSUS_BY:
        return resolve_by(profiles, by, source=source, option="--by")
    pert = resolve_column(
        profiles, io.PERTURBATION, source=source, aliases=PERTURBATION_ALIASES[1:],
        option="--by",
    )
    try:
        conc = resolve_column(
            profiles, io.CONCENTRATION, source=source, aliases=CONCENTRATION_ALIASES[1:]
        )
    except InputDataError:
        logger.info("%s: no concentration column; treatments are %s alone", source, pert)
        return [pert]
    return [pert, conc]


def modz_weights(
    x: np.ndarray, *, method: str = "spearman", min_weight: float = 0.01, precision: int = 4
) -> np.ndarray:
    """MODZ replicate weights of the rows of ``x`` (replicates x features), pycytominer's rules."""
    k = x.shape[0]
    if k == 1:
        return np.ones(1)
    if np.isnan(x).any():
        cor = pd.DataFrame(x.T).corr(method=method).to_numpy(dtype=np.float64, copy=True)  # writable (copy-on-write)
    else:
        values = x.astype(np.float64)
        if method == "spearman":
            from scipy.stats import rankdata

            values = rankdata(values, axis=1, method="average")
        with np.errstate(invalid="ignore", divide="ignore"):
            cor = np.corrcoef(values)
        cor = np.atleast_2d(cor)
    np.fill_diagonal(cor, np.nan)
    cor = np.where(np.isnan(cor), np.nan, np.maximum(cor, 0))
    with np.errstate(invalid="ignore"):
        valid = (~np.isnan(cor)).sum(axis=1)
        raw = np.where(valid > 0, np.nansum(cor, axis=1) / np.maximum(valid, 1), np.nan)
    raw = np.where(np.isnan(raw), np.nan, np.maximum(raw, min_weight))
    total = np.nansum(raw)
    weights = np.full(k, 1 / k) if total == 0 else raw / total
    return np.round(weights, precision)


def consensus(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    method: str = "median",
    by: Sequence[str] = DEFAULT_CONSENSUS_BY,
    modz_method: str = "spearman",
    modz_min_weight: float = 0.01,
    modz_precision: int = 4,
    source: str = "profiles",
) -> pd.DataFrame:
    """One consensus row per treatment (``by`` group) of the replicate rows.

    Raises
    ------
    ConfigError
        Unknown method.
    InputDataError
        Missing group columns, duplicate wells, bad features.
    """
    if method not in CONSENSUS_METHODS:
        raise ConfigError(
            f"unknown consensus method {method!r}; choose one of {', '.join(CONSENSUS_METHODS)}"
        )
    if modz_method not in MODZ_CORRELATIONS:
        raise ConfigError(
            f"unknown MODZ correlation {modz_method!r}; choose one of {', '.join(MODZ_CORRELATIONS)}"
        )
    by = resolve_treatment_columns(profiles, by, source=source)
    cols = resolve_features(profiles, features, source=source)
    keys = [k for k in io.WELL_KEYS if k in profiles.columns]
    if len(keys) == 2:
        check_unique(profiles, keys, source=source, what="well")
    if len(profiles) == 0:
        raise InputDataError(f"{source}: the table has no rows")
    x = feature_matrix(profiles, cols)
    check_finite(x, cols, source=source)
    codes, n_groups = group_codes(profiles, by)
    counts = np.bincount(codes, minlength=n_groups)
    if method == "median":
        values = group_reduce(x, codes, n_groups, "median")
    else:
        values = np.empty((n_groups, len(cols)), dtype=np.float64)
        order = np.argsort(codes, kind="stable")
        for g, rows in enumerate(np.split(order, np.cumsum(counts)[:-1])):
            xg = x[rows].astype(np.float64)
            w = modz_weights(
                xg, method=modz_method, min_weight=modz_min_weight, precision=modz_precision
            )
            values[g] = np.nansum(xg * w[:, None], axis=0) if len(rows) > 1 else xg[0]
    out_meta, _ = group_metadata(profiles, codes, n_groups, by=by, derived={io.N_WELLS},
                                   source=source, group_noun="treatment")
    out_meta[io.N_WELLS] = counts.astype(np.int64)
    logger.info(
        "%s: %s consensus of %d rows -> %d treatments by %s (%d with a single well)",
        source, method, len(profiles), n_groups, "/".join(by), int((counts == 1).sum()),
    )
    return with_features(out_meta, list(out_meta.columns), values, cols)
