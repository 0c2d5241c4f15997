"""Robust statistics shared by every stage: one definition of each.

- :data:`MAD_SCALE` (1.4826) turns a median absolute deviation into a normal standard deviation.
- :func:`robust_center_scale` is the one robust location/scale with its documented fallback:
  ``1.4826 * MAD``; when that is zero (more than half the values tie), ``1.2533 * mean absolute
  deviation`` (``sqrt(pi/2)``, again the standard deviation of a normal); when that is zero too
  (all values equal) the scale is 0 and callers decide (:func:`robust_z` gives 0 / +-inf).
- :func:`robust_z`: ``(x - median) / scale`` against a reference sample.
- :func:`benjamini_hochberg`: BH q-values via :func:`scipy.stats.false_discovery_control`, NaN-aware.
- :func:`spread`: ``k`` indices spread evenly over ``range(n)`` (site and crop sampling).
- :func:`z_prime`: the Z'-factor of a positive and a negative control sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

#: MAD -> standard deviation of a normal distribution (1 / Phi^-1(3/4)).
MAD_SCALE = 1.4826
#: Mean absolute deviation -> standard deviation of a normal distribution (sqrt(pi / 2)).
MEAN_AD_SCALE = 1.2533


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def mad(values: np.ndarray, *, axis: int | None = None) -> np.ndarray | float:
    """``1.4826 * median(|x - median(x)|)`` skipping NaN, along ``axis`` (all values when None)."""
    x = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
        med = np.nanmedian(x, axis=axis, keepdims=True)
        out = MAD_SCALE * np.nanmedian(np.abs(x - med), axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def robust_center_scale(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(median, robust scale) of the finite values; the fallback chain is in the module docstring.

    Returns ``(nan, nan)`` when there is no finite value and a scale of 0 when all values are equal.
    """
    v = _finite(values)
    if v.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(v))
    dev = np.abs(v - med)
    scale = MAD_SCALE * float(np.median(dev))
    if not scale > 0:
        scale = MEAN_AD_SCALE * float(np.mean(dev))
    return med, scale


def robust_z(
    values: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Robust z-scores ``(x - median) / scale`` of ``values`` against ``reference`` (``values`` itself
    when None), with :func:`robust_center_scale`.

    NaN values stay NaN.  A reference with scale 0 (all values equal) gives 0 for values equal to
    its median and +-inf for the others; one with no finite value gives NaN everywhere.
    """
    v = np.asarray(values, dtype=np.float64)
    med, scale = robust_center_scale(v if reference is None else reference)
    if not np.isfinite(med):
        return np.full(v.shape, np.nan)
    if scale > 0:
        return (v - med) / scale
    with np.errstate(invalid="ignore"):
        return np.where(v == med, 0.0, np.sign(v - med) * np.inf)


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN and are not counted."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def spread(n: int, k: int) -> np.ndarray:
    """At most ``k`` indices spread evenly over ``range(n)`` (first and last included); all of them
    when ``k <= 0`` or ``n <= k``."""
    if k <= 0 or n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def z_prime(
    positive: Sequence[float] | np.ndarray,
    negative: Sequence[float] | np.ndarray,
    *,
    robust: bool = False,
) -> float:
    """Z'-factor (Zhang et al. 1999): ``1 - 3 (sd_p + sd_n) / |mu_p - mu_n|``.

    Means and sample standard deviations (``ddof=1``); ``robust=True`` uses medians and
    ``1.4826 x MAD`` instead.  NaNs are dropped; NaN when either group has fewer than two values or
    the centres are equal.
    """
    p, n = _finite(positive), _finite(negative)
    if len(p) < 2 or len(n) < 2:
        return float("nan")
    if robust:
        mu_p, mu_n = float(np.median(p)), float(np.median(n))
        sd_p = MAD_SCALE * float(np.median(np.abs(p - mu_p)))
        sd_n = MAD_SCALE * float(np.median(np.abs(n - mu_n)))
    else:
        mu_p, mu_n = float(p.mean()), float(n.mean())
        sd_p, sd_n = float(p.std(ddof=1)), float(n.std(ddof=1))
    diff = abs(mu_p - mu_n)
    if diff == 0:
        return float("nan")
    return float(1.0 - 3.0 * (sd_p + sd_n) / diff)
