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

Two regularisations (``regularization``):

``singular`` (default)
    pycytominer's: ``epsilon`` is added to the singular values, and the directions the reference
    does not span get the gain of the smallest singular value.
``shrinkage``
    Tikhonov (ridge) whitening ``W = (C + delta I)^(-1/2)`` with ``C`` the covariance of the
    centred (for ``ZCA-cor`` also scaled) reference rows (``ddof 1``, eigenvalues
    ``lambda_i = s_i^2 / (n - 1)``) and ``delta = epsilon * trace(C) / d``, so ``epsilon`` is
    relative to the mean variance: ``W = sum_i ((lambda_i + delta)^(-1/2) - delta^(-1/2)) v_i v_i^T
    + delta^(-1/2) I``.  Directions unseen in the reference keep the largest gain, so with few
    controls the control variation is projected out rather than amplified.  ZCA methods only.

Two centres (``center``):

``reference`` (default, pycytominer's)
    ``W ((x - mu_ref) / scale)``: the rows are centred on the reference mean first, so the
    controls end at the origin.
``normalization``
    ``W (x / scale)``: ``W`` is fitted on the centred reference as above but applied about the
    normalization's centre (the origin of the normalized table, e.g. each plate's median of all
    wells), not re-centred on the reference mean.  The controls keep their offset from that
    centre, so they stay a class of their own instead of becoming isotropic noise about the
    origin (issue 16: LINCS DMSO 1-NN 0.0 with ``reference``, 0.9 with ``normalization``).
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
from cytoscreen.profiles.normalize import SpherizeFit, fit_spherize
from cytoscreen.profiles.reference import reference_mask

logger = logging.getLogger(__name__)

#: How the whitening is regularised (module docstring).
REGULARIZATIONS = ("singular", "shrinkage")
#: About which point the whitening is applied (module docstring).
CENTERS = ("reference", "normalization")


@dataclass(frozen=True)
class ShrinkageWhitening:
    """``(x - center) / scale`` whitened by ``(C + delta I)^(-1/2)``, applied without forming it."""

    method: str
    center: np.ndarray
    scale: np.ndarray
    axes: np.ndarray  # (r, d)
    eigenvalues: np.ndarray  # (r,)
    delta: float
    columns: tuple[str, ...]

    @property
    def rank(self) -> int:
        return len(self.eigenvalues)

    @property
    def gains(self) -> np.ndarray:
        return (self.eigenvalues + self.delta) ** -0.5

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        null = self.delta**-0.5
        return z * null + ((z @ self.axes.T) * (self.gains - null)) @ self.axes


def fit_shrinkage(
    reference: np.ndarray, features: Sequence[str], *, method: str, epsilon: float,
    source: str = "reference",
) -> ShrinkageWhitening:
    """Fit shrinkage whitening on the reference rows (module docstring)."""
    if method not in ("ZCA", "ZCA-cor"):
        raise ConfigError(
            f"shrinkage sphering is defined for ZCA and ZCA-cor, not {method}; for fewer "
            f"dimensions use profiles.pca_components"
        )
    if not epsilon > 0:
        raise ConfigError(f"shrinkage sphering needs spherize_epsilon > 0, got {epsilon}")
    ref = np.asarray(reference, dtype=np.float64)
    n, d = ref.shape
    if n < 2:
        raise InputDataError(f"{source}: sphering needs at least 2 reference rows, got {n}")
    mu = ref.mean(axis=0)
    scale = np.ones(d)
    if method == "ZCA-cor":
        scale = ref.std(axis=0)
        if (scale == 0).any():
            raise InputDataError(
                f"{source}: {int((scale == 0).sum())} feature(s) are constant in the reference "
                f"rows; ZCA-cor divides by their standard deviation: remove them first"
            )
    _, sv, vt = np.linalg.svd((ref - mu) / scale, full_matrices=False)
    tol = (sv.max() if sv.size else 0.0) * max(n, d) * np.finfo(np.float64).eps
    r = int((sv > tol).sum())
    lam = sv[:r] ** 2 / (n - 1)
    mean_var = float(lam.sum() / d)
    if not mean_var > 0:
        raise InputDataError(f"{source}: the reference rows are all equal; nothing to whiten")
    return ShrinkageWhitening(method, mu, scale, vt[:r], lam, epsilon * mean_var, tuple(features))


@dataclass(frozen=True)
class SpheringFit:
    """A fitted sphering transform and the statistics that describe it."""

    fit: SpherizeFit | ShrinkageWhitening = field(repr=False)
    features: tuple[str, ...]
    epsilon: float
    n_reference: int
    reference_rule: str
    singular_values: np.ndarray = field(repr=False)
    axes: np.ndarray = field(repr=False)  # (r, d): right singular vectors of the reference
    regularization: str = "singular"
    #: ``reference`` or ``normalization`` (module docstring)
    center: str = "reference"
    #: the mean of the reference rows (the applied centre is ``fit.center``: it, or 0)
    reference_mean: np.ndarray | None = field(default=None, repr=False)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit.transform(x)

    @property
    def null_weight(self) -> float:
        """``a_null``: the gain of every direction the reference does not span."""
        if isinstance(self.fit, ShrinkageWhitening):
            return float(self.fit.delta**-0.5)
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
            "regularization": self.regularization,
            "center": self.center,
            **(
                {"shrinkage_delta": self.fit.delta, "eigenvalues": self.fit.eigenvalues.tolist()}
                if isinstance(self.fit, ShrinkageWhitening) else {}
            ),
        }

    def table(self) -> pd.DataFrame:
        """One row per input feature: reference centre, scale and the ``axis_i`` loadings."""
        out = pd.DataFrame(
            {"feature": list(self.features), "center": self.fit.center, "scale": self.fit.scale}
        )
        if self.reference_mean is not None:
            out["reference_mean"] = self.reference_mean
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
    regularization: str = "singular",
    center: str = "reference",
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
        ``singular``: added to the reference's singular values; ``shrinkage``: the ridge added to
        the covariance, relative to its mean eigenvalue.  Larger values whiten less (the JUMP
        recipe chooses it by replicate mAP).
    regularization
        ``singular`` (pycytominer) or ``shrinkage`` (module docstring).
    center
        ``reference`` (pycytominer: subtract the reference mean before ``W``) or ``normalization``
        (apply ``W`` about the table's origin, the normalization's centre; module docstring).

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
    if regularization not in REGULARIZATIONS:
        raise ConfigError(
            f"unknown sphering regularization {regularization!r}; choose one of "
            f"{', '.join(REGULARIZATIONS)}"
        )
    if center not in CENTERS:
        raise ConfigError(
            f"unknown sphering centre {center!r}; choose one of {', '.join(CENTERS)}"
        )
    if regularization == "shrinkage":
        fit = fit_shrinkage(ref, cols, method=method, epsilon=epsilon, source=source)
        sv = np.sqrt(fit.eigenvalues * (len(ref) - 1))
        axes = fit.axes
    else:
        fit = fit_spherize(ref, cols, method=method, epsilon=epsilon, source=source)
        sv, axes = _axes((ref - fit.center) / fit.scale, fit, epsilon)
    reference_mean = None
    if center == "normalization":  # same W, applied about the origin instead of the reference mean
        reference_mean = np.asarray(fit.center, dtype=np.float64)
        fit = replace(fit, center=np.zeros_like(reference_mean))
    result = SpheringFit(
        fit=fit, features=tuple(cols), epsilon=float(epsilon), n_reference=int(mask.sum()),
        reference_rule=rule, singular_values=sv, axes=axes, regularization=regularization,
        center=center, reference_mean=reference_mean,
    )
    logger.info(
        "%s: %s sphering (%s, about the %s centre) fitted on %d reference rows (%s), %d features, "
        "rank %d, epsilon %g", source, method, regularization, center, result.n_reference, rule,
        len(cols), fit.rank, epsilon,
    )
    return replace_features(profiles, cols, fit.transform(x), list(fit.columns)), result
