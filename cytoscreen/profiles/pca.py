"""Principal component analysis of profiles, fitted on reference rows and applied to every row.

With ``X`` the reference rows (all rows by default, or the negative controls), ``mu`` their feature
means and ``X - mu = U S V^T`` the thin SVD, the principal axes are the rows of ``V^T``, the
explained variances ``s^2 / (n - 1)``, and every row ``x`` becomes ``(x - mu) V_k`` (columns
``PC1..PCk``), as scikit-learn's ``PCA`` (without whitening).  Signs are fixed as scikit-learn's
``svd_flip`` on ``V^T`` does: the largest-magnitude loading of every axis is positive.

``n_components`` is a count (an integer >= 1, capped at the rank of the reference) or, below 1, a
fraction of the variance: the fewest leading components whose explained variance ratio sums to at
least that fraction (scikit-learn's rule).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles.arrays import check_finite, feature_matrix, replace_features
from cytoscreen.profiles.columns import resolve_features
from cytoscreen.profiles.reference import reference_mask

logger = logging.getLogger(__name__)

PC_PREFIX = "PC"


@dataclass(frozen=True)
class PcaFit:
    """A fitted PCA: ``(x - center) @ components.T`` gives the ``PC1..PCk`` scores."""

    features: tuple[str, ...]
    center: np.ndarray = field(repr=False)
    components: np.ndarray = field(repr=False)  # (k, d), rows are principal axes
    explained_variance: np.ndarray = field(repr=False)
    explained_variance_ratio: np.ndarray = field(repr=False)
    n_reference: int = 0
    reference_rule: str = ""
    n_components_requested: float | int | None = None

    @property
    def columns(self) -> list[str]:
        return [f"{PC_PREFIX}{i}" for i in range(1, len(self.components) + 1)]

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.center) @ self.components.T

    def record(self) -> dict[str, Any]:
        """JSON-ready summary of the fit (the loadings are in :meth:`table`)."""
        return {
            "operation": "pca",
            "n_components_requested": self.n_components_requested,
            "n_components": len(self.components),
            "n_features": len(self.features),
            "n_reference_rows": self.n_reference,
            "reference": self.reference_rule,
            "explained_variance": self.explained_variance.tolist(),
            "explained_variance_ratio": self.explained_variance_ratio.tolist(),
            "explained_variance_ratio_total": float(self.explained_variance_ratio.sum()),
        }

    def table(self) -> pd.DataFrame:
        """One row per input feature: its reference mean and its loading on every component."""
        out = pd.DataFrame({"feature": list(self.features), "center": self.center})
        loadings = pd.DataFrame(self.components.T, columns=self.columns)
        return pd.concat([out, loadings], axis=1)


def _n_kept(n_components: float | int | None, ratio: np.ndarray, rank: int) -> int:
    if n_components is None:
        return rank
    if isinstance(n_components, bool) or not isinstance(n_components, int | float | np.number):
        raise ConfigError(f"pca n_components must be a number, not {n_components!r}")
    if 0 < n_components < 1:
        cum = np.cumsum(ratio)
        return int(min(np.searchsorted(cum, n_components, side="right") + 1, rank))
    if n_components >= 1 and float(n_components).is_integer():
        return int(min(int(n_components), rank))
    raise ConfigError(
        f"pca n_components must be an integer >= 1 or a variance fraction in (0, 1), not "
        f"{n_components!r}"
    )


def fit_pca(
    reference: np.ndarray,
    features: Sequence[str],
    *,
    n_components: float | int | None = None,
    source: str = "reference",
) -> PcaFit:
    """Fit PCA on the reference rows (module docstring for the definition)."""
    ref = np.asarray(reference, dtype=np.float64)
    n, d = ref.shape
    if n < 2:
        raise InputDataError(f"{source}: PCA needs at least 2 reference rows, got {n}")
    if np.isnan(ref).any():
        raise InputDataError(
            f"{source}: PCA needs complete features but the reference rows have missing values; "
            f"drop those features first (profiles select --operations drop_na_columns --na-cutoff 0)"
        )
    mu = ref.mean(axis=0)
    _, s, vt = np.linalg.svd(ref - mu, full_matrices=False)
    tol = (s.max() if s.size else 0.0) * max(n, d) * np.finfo(np.float64).eps
    rank = int((s > tol).sum())
    if rank == 0:
        raise InputDataError(f"{source}: the reference rows are all equal; PCA has no axis")
    # svd_flip (scikit-learn, V-based): the largest |loading| of every axis is positive
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    signs[signs == 0] = 1.0
    vt = vt * signs[:, None]
    var = s**2 / (n - 1)
    ratio = var / var.sum()
    k = _n_kept(n_components, ratio, rank)
    return PcaFit(
        features=tuple(features),
        center=mu,
        components=vt[:k],
        explained_variance=var[:k],
        explained_variance_ratio=ratio[:k],
        n_reference=n,
        n_components_requested=n_components,
    )


def pca(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    n_components: float | int | None = 0.99,
    reference: str | pd.Series | np.ndarray = "all",
    reference_column: str | None = None,
    reference_value: str | Sequence[str] | None = None,
    source: str = "profiles",
) -> tuple[pd.DataFrame, PcaFit]:
    """Replace the features by their principal component scores ``PC1..PCk``.

    Parameters
    ----------
    profiles
        Rows to transform; row order and every non-feature column are kept.
    n_components
        A count, a variance fraction below 1, or None for every component of the reference's rank.
    reference, reference_column, reference_value
        Rows PCA is fitted on (:func:`cytoscreen.profiles.reference.reference_mask`): ``"all"``
        (default) or ``"negcon"``, a query, a mask, or a column/value pair.

    Returns
    -------
    (DataFrame, PcaFit)
        The transformed table and the fit (its :meth:`PcaFit.record` and :meth:`PcaFit.table` are
        what the CLI saves beside the output).
    """
    cols = resolve_features(profiles, features, source=source)
    mask, rule = reference_mask(
        profiles, reference, column=reference_column, value=reference_value, source=source
    )
    x = feature_matrix(profiles, cols, dtype=np.float64)
    check_finite(x, cols, source=source, allow_nan=False)
    fit = fit_pca(x[mask], cols, n_components=n_components, source=source)
    fit = replace(fit, reference_rule=rule)
    logger.info(
        "%s: PCA fitted on %d rows (%s): %d features -> %d components (%.1f%% of the variance)",
        source, fit.n_reference, rule, len(cols), len(fit.components),
        100 * fit.explained_variance_ratio.sum(),
    )
    return replace_features(profiles, cols, fit.transform(x), fit.columns), fit
