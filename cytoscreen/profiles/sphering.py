"""Sphering (whitening) of a whole screen on its control wells, with the fit kept for saving.

This is Typical Variation Normalization (Ando et al. 2017) and JUMP's "sphering on negcon": one
whitening transform is fitted on the reference rows (negative controls by default, by the rule of
:func:`cytoscreen.profiles.reference.reference_mask`) of every plate together and applied to every
row, so the controls' covariance becomes the identity (up to the regulariser ``epsilon``).  The
transform is :func:`cytoscreen.profiles.normalize.fit_spherize`, pycytominer's ``Spherize``
(``ZCA``, ``ZCA-cor``, ``PCA``, ``PCA-cor``); the output equals
:func:`cytoscreen.profiles.normalize.spherize` with ``by=()``.

The saved statistics (:meth:`SpheringFit.record`, :meth:`SpheringFit.table`) are the reference
centre and scale of every feature, the singular values ``s_1..s_r`` of the centred (scaled)
reference and its ``r`` right singular vectors ``v_i`` (the ``axis_i`` columns).  With
``a_i = sqrt(n - 1) / (s_i + epsilon)`` and ``a_null = sqrt(n - 1) / (s_r + epsilon)`` for the
directions the reference does not span, ZCA is
``W = sum_i (a_i - a_null) v_i v_i^T + a_null I`` and PCA's first ``r`` columns are ``a_i v_i``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen.profiles.arrays import check_finite, feature_matrix, with_features
from cytoscreen.profiles.columns import resolve_features
from cytoscreen.profiles.normalize import SpherizeFit, fit_spherize
from cytoscreen.profiles.reference import reference_mask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpheringFit:
    """A fitted sphering transform and the statistics that describe it."""

    fit: SpherizeFit = field(repr=False)
    features: tuple[str, ...]
    epsilon: float
    n_reference: int
    reference_rule: str
    singular_values: np.ndarray = field(repr=False)
    axes: np.ndarray = field(repr=False)  # (r, d): right singular vectors of the reference

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit.transform(x)

    @property
    def null_weight(self) -> float:
        """``a_null``: the gain of every direction the reference does not span."""
        n = self.n_reference
        return float(np.sqrt(n - 1) / (self.singular_values[-1] + self.epsilon))

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (the per-feature statistics and axes are in :meth:`table`)."""
        d, r = len(self.features), len(self.singular_values)
        return {
            "operation": "spherize",
            "method": self.fit.method,
            "epsilon": self.epsilon,
            "n_reference_rows": self.n_reference,
            "reference": self.reference_rule,
            "n_features": d,
            "rank": r,
            "n_unseen_directions": d - r,
            "singular_values": self.singular_values.tolist(),
            "null_weight": self.null_weight if r < d else None,
            "output_columns": len(self.fit.columns),
        }

    def table(self) -> pd.DataFrame:
        """One row per input feature: reference centre, scale and the ``axis_i`` loadings."""
        out = pd.DataFrame(
            {"feature": list(self.features), "center": self.fit.center, "scale": self.fit.scale}
        )
        axes = pd.DataFrame(
            self.axes.T, columns=[f"axis_{i}" for i in range(1, len(self.axes) + 1)]
        )
        return pd.concat([out, axes], axis=1)


def _axes(z: np.ndarray, fit: SpherizeFit, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Singular values and right singular vectors of the reference (thin SVD), signed as in ``fit``."""
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    r = fit.rank
    s, vt = s[:r], vt[:r]
    if fit.method.startswith("PCA"):  # align each axis with the column of W it scales
        signs = np.sign(np.einsum("id,di->i", vt, fit.weights[:, :r]))
        signs[signs == 0] = 1.0
        vt = vt * signs[:, None]
    return s, vt


def sphere(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    method: str = "ZCA",
    reference: str | pd.Series | np.ndarray = "negcon",
    reference_column: str | None = None,
    reference_value: str | Sequence[str] | None = None,
    epsilon: float = 1e-6,
    source: str = "profiles",
) -> tuple[pd.DataFrame, SpheringFit]:
    """Whiten every row with a transform fitted on the reference rows of the whole table.

    Parameters
    ----------
    method
        ``ZCA``, ``ZCA-cor``, ``PCA`` or ``PCA-cor`` (pycytominer's names).
    reference, reference_column, reference_value
        The rows the transform is fitted on (negative controls by default).
    epsilon
        Added to the reference's singular values: larger values whiten less (the JUMP recipe
        chooses it by replicate mAP).

    Returns
    -------
    (DataFrame, SpheringFit)
        The whitened table (every non-feature column kept) and the fit.
    """
    cols = resolve_features(profiles, features, source=source)
    mask, rule = reference_mask(
        profiles, reference, column=reference_column, value=reference_value, source=source
    )
    x = feature_matrix(profiles, cols, dtype=np.float64)
    check_finite(x, cols, source=source, allow_nan=False)
    ref = x[mask]
    fit = fit_spherize(ref, cols, method=method, epsilon=epsilon, source=source)
    s, axes = _axes((ref - fit.center) / fit.scale, fit, epsilon)
    result = SpheringFit(
        fit=fit, features=tuple(cols), epsilon=float(epsilon), n_reference=int(mask.sum()),
        reference_rule=rule, singular_values=s, axes=axes,
    )
    logger.info(
        "%s: %s sphering fitted on %d reference rows (%s), %d features, rank %d, epsilon %g",
        source, method, result.n_reference, rule, len(cols), fit.rank, epsilon,
    )
    feat_set = set(cols)
    meta = [c for c in profiles.columns if c not in feat_set]
    return with_features(profiles, meta, fit.transform(x), list(fit.columns)), result
