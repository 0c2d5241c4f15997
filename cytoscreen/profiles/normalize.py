"""Normalization of profiles against reference wells, per plate, with pycytominer's definitions.

Each group of rows (``Metadata_Plate`` by default) is normalized with statistics of its reference
rows (negcon wells by default, see :func:`cytoscreen.profiles.reference.reference_mask`):

``mad_robustize`` (default)
    ``(x - median) / (1.4826 * MAD + epsilon)``, pycytominer's ``RobustMAD`` (epsilon 1e-18).
``standardize``
    ``(x - mean) / std`` (population std), scikit-learn's ``StandardScaler`` as pycytominer uses
    it; a constant reference feature gets scale 1.
``robustize``
    ``(x - median) / (q75 - q25)``, scikit-learn's ``RobustScaler``; a zero IQR gets scale 1.
``spherize``
    Whitening fitted on the reference rows: ``ZCA``, ``ZCA-cor``, ``PCA``, ``PCA-cor`` (see
    :func:`fit_spherize`).  ``PCA`` methods name the outputs ``PC1``, ``PC2``, ...

Statistics skip missing values (pycytominer does the same through pandas/scikit-learn), so a NaN
stays NaN; infinite values are an error.  A group with fewer than ``min_reference`` reference rows is
an :class:`InputDataError` naming the group.  Statistics are float64, outputs float32.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles.arrays import check_finite, feature_matrix, nanmedian0, replace_features
from cytoscreen.profiles.columns import check_unique, resolve_by, resolve_features, shown
from cytoscreen.profiles.groups import first_rows, group_codes, group_label
from cytoscreen.profiles.reference import reference_mask
from cytoscreen.stats import MAD_SCALE

logger = logging.getLogger(__name__)

NORMALIZE_METHODS = ("mad_robustize", "standardize", "robustize", "spherize")
SPHERIZE_METHODS = ("ZCA", "ZCA-cor", "PCA", "PCA-cor")
#: Where the scale of the normalization is measured (``normalize_scale``).
NORMALIZE_SCALES = ("plate", "screen")
#: MAD to standard deviation of a normal distribution, as in pycytominer's ``RobustMAD``.


@dataclass(frozen=True)
class SpherizeFit:
    """A fitted whitening transform: ``((x - center) / scale) @ weights``."""

    method: str
    center: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    columns: tuple[str, ...]
    rank: int

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.center) / self.scale) @ self.weights


def fit_spherize(
    reference: np.ndarray,
    features: Sequence[str],
    *,
    method: str = "ZCA-cor",
    epsilon: float = 1e-6,
    center: bool = True,
    source: str = "reference",
) -> SpherizeFit:
    """Fit a whitening (sphering) transform on reference rows.

    The definition is pycytominer's ``Spherize`` as fixed for its issue #747 (pycytominer >= 1.7 via
    PR #748; older releases took the SVD of the raw rather than the centered input and did not
    whiten): with ``Z`` the centered reference (scaled to unit variance for the ``-cor`` methods)
    and ``Z = U S V^T``, ``W_PCA = V diag(sqrt(n - 1) / (s + epsilon))`` and ``W_ZCA = W_PCA V^T``,
    so ``cov(Z W) = I`` up to epsilon.  When there are no more reference rows than features (rank
    ``r < d``) the missing singular values are set to the smallest non-zero one, as pycytominer
    does, so directions unseen in the reference are not amplified without bound.
    """
    if method not in SPHERIZE_METHODS:
        raise ConfigError(
            f"unknown spherize method {method!r}; choose one of {', '.join(SPHERIZE_METHODS)}"
        )
    ref = np.asarray(reference, dtype=np.float64)
    n, d = ref.shape
    if np.isnan(ref).any():
        raise InputDataError(
            f"{source}: spherize needs complete features but the reference rows have missing "
            f"values; drop those features first (profiles select --operations drop_na_columns "
            f"--na-cutoff 0)"
        )
    if n < 2:
        raise InputDataError(f"{source}: spherize needs at least 2 reference rows, got {n}")
    cor = method.endswith("-cor")
    if cor and not center:
        raise ConfigError(f"spherize method {method} needs centering")
    mu = ref.mean(axis=0) if center else np.zeros(d)
    scale = np.ones(d)
    if cor:
        scale = ref.std(axis=0)
        zero = scale == 0
        if zero.any():
            names = [features[i] for i in np.flatnonzero(zero)]
            raise InputDataError(
                f"{source}: {int(zero.sum())} feature(s) are constant in the reference rows "
                f"({shown(names)}); {method} divides by their standard deviation: remove them "
                f"first (profiles select --operations variance_threshold)"
            )
    z = (ref - mu) / scale
    _, sigma, vt = np.linalg.svd(z, full_matrices=n <= d)
    tol = (sigma.max() if sigma.size else 0.0) * max(n, d) * np.finfo(np.float64).eps
    r = int((sigma > tol).sum())
    full = r == d or (center and r == n - 1) or (not center and r == n)
    if not full or r == 0:
        raise InputDataError(
            f"{source}: the reference rows are not of full rank (n = {n}, d = {d}, rank = {r}): "
            f"some features are exact linear combinations of others; remove them first "
            f"(profiles select --operations correlation_threshold)"
        )
    if n <= d:
        sigma = np.concatenate([sigma[:r], np.repeat(sigma[r - 1], d - r)])
        logger.warning(
            "%s: %d reference rows for %d features (rank %d): %s is regularized in the %d unseen "
            "directions",
            source, n, d, r, method, d - r,
        )
    w = (vt / (sigma + epsilon)[:, None]).T * np.sqrt(n - 1)
    if method.startswith("ZCA"):
        w = w @ vt
        columns = tuple(features)
    else:
        columns = tuple(f"PC{i}" for i in range(1, d + 1))
    return SpherizeFit(method, mu, scale, w, columns, r)


def _sklearn_constant(var: np.ndarray, mean: np.ndarray, n: np.ndarray) -> np.ndarray:
    """scikit-learn's test for a constant feature (``_is_constant_feature``)."""
    eps = np.finfo(np.float64).eps
    upper = n * eps * var + (n * mean * eps) ** 2
    return var <= upper


def fit_scale(
    ref: np.ndarray, method: str, epsilon: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Center, divisor and a mask of features with zero spread in the reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN statistics
        if method == "mad_robustize":
            med = nanmedian0(ref)
            mad = nanmedian0(np.abs(ref - med)) * MAD_SCALE
            return med, mad + epsilon, mad == 0
        if method == "standardize":
            n = (~np.isnan(ref)).sum(axis=0)
            mean = np.nanmean(ref, axis=0)
            var = np.nanvar(ref, axis=0)
            const = _sklearn_constant(var, mean, n)
            scale = np.sqrt(var)
            scale[const] = 1.0
            return mean, scale, const
        if method == "robustize":
            med = nanmedian0(ref)
            if np.isnan(ref).any():
                q25, q75 = np.nanpercentile(ref, [25, 75], axis=0)
            else:
                q25, q75 = np.percentile(ref, [25, 75], axis=0)
            scale = q75 - q25
            const = scale < 10 * np.finfo(np.float64).eps
            scale[const] = 1.0
            return med, scale, const
    raise ConfigError(f"unknown normalize method {method!r}")


def normalize(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    method: str = "mad_robustize",
    reference: str | pd.Series | np.ndarray = "negcon",
    reference_column: str | None = None,
    reference_value: str | Sequence[str] | None = None,
    by: Sequence[str] = (io.PLATE,),
    epsilon: float = 1e-18,
    spherize_method: str = "ZCA-cor",
    spherize_epsilon: float = 1e-6,
    min_reference: int = 2,
    scale_over: str = "plate",
    source: str = "profiles",
) -> pd.DataFrame:
    """Normalize features per ``by`` group against that group's reference rows.

    Parameters
    ----------
    profiles
        Well (or any) rows; row order and every ``Metadata_*`` column are kept.
    method
        One of :data:`NORMALIZE_METHODS`.
    reference
        ``"negcon"`` (``Metadata_pert_type == "negcon"``, or a DMSO perturbation column when that is
        absent), ``"all"``, a pandas query, or a boolean mask of rows.
    reference_column, reference_value
        Reference rows are ``profiles[reference_column] == reference_value`` (overrides
        ``reference``).
    by
        Group columns; ``()`` normalizes the whole table at once.
    epsilon
        Added to ``1.4826 * MAD`` by ``mad_robustize`` (pycytominer's ``mad_robustize_epsilon``).
    spherize_method, spherize_epsilon
        Whitening variant and regularizer when ``method="spherize"``.
    min_reference
        Fewest reference rows a group may have.
    scale_over
        ``"plate"``: centre and scale with each group's statistics.  ``"screen"``: only centre
        here; the screen-level select step then divides by the spread of the reference rows of
        every plate together (:func:`cytoscreen.profiles.screen_scale.screen_scale`).

    Raises
    ------
    InputDataError
        Groups with too few reference rows (all named), missing columns, bad features.
    ConfigError
        Unknown method.
    """
    if method not in NORMALIZE_METHODS:
        raise ConfigError(
            f"unknown normalize method {method!r}; choose one of {', '.join(NORMALIZE_METHODS)}"
        )
    if scale_over not in NORMALIZE_SCALES:
        raise ConfigError(
            f"unknown normalize scale {scale_over!r}; choose one of {', '.join(NORMALIZE_SCALES)}"
        )
    cols = resolve_features(profiles, features, source=source)
    by = resolve_by(profiles, by, source=source, option="--by")
    keys = [k for k in io.WELL_KEYS if k in profiles.columns]
    if len(keys) == 2:
        check_unique(profiles, keys, source=source, what="well")
    mask, rule = reference_mask(
        profiles, reference, column=reference_column, value=reference_value, source=source
    )
    # the table's own float type (no float64 copy of the table); statistics and the normalized
    # values are computed in float64 plate by plate, from exact conversions, as before
    x = feature_matrix(profiles, cols)
    check_finite(x, cols, source=source, allow_nan=method != "spherize")
    codes, n_groups = group_codes(profiles, by)
    first = first_rows(codes, n_groups) if n_groups else np.zeros(0, dtype=np.intp)

    n_ref = np.bincount(codes, weights=mask, minlength=n_groups).astype(int)
    short = np.flatnonzero(n_ref < min_reference)
    if len(short):
        listed = ", ".join(
            f"{group_label(profiles, by, int(first[g]))} ({n_ref[g]})" for g in short[:10]
        )
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        what = "plate" if by == [io.PLATE] else "group"
        raise InputDataError(
            f"{source}: {len(short)} {what}(s) have fewer than {min_reference} reference rows "
            f"({rule}): {listed}{more}; add control wells, choose other reference rows with "
            f"--reference-col/--reference-value, or normalize against every well with "
            f"--reference all"
        )

    out_cols = list(cols)
    # column-major, as a table holds its features: contiguous columns for the writer
    result = np.empty((len(profiles), len(cols)), dtype=np.float32, order="F")
    flat_groups: list[str] = []
    flat_features: set[int] = set()
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=n_groups))[:-1]
    in_order = bool(np.all(order == np.arange(len(order))))
    for g, rows in enumerate(np.split(order, bounds)):
        if in_order and len(rows):  # the group's rows are one range: views, not copies
            rows = slice(int(rows[0]), int(rows[-1]) + 1)
            ref_rows = np.flatnonzero(mask[rows]) + rows.start
        else:
            ref_rows = rows[mask[rows]]
        label = group_label(profiles, by, int(first[g]))
        xg = x[rows]
        ref = x[ref_rows].astype(np.float64)
        if method == "spherize":
            xg = xg.astype(np.float64)
            fit = fit_spherize(
                ref, cols, method=spherize_method, epsilon=spherize_epsilon,
                source=f"{source} {label}",
            )
            result[rows] = fit.transform(xg)
            out_cols = list(fit.columns)
            continue
        center, scale, const = fit_scale(ref, method, epsilon)
        if scale_over == "screen":  # the screen-wide scale comes later (screen_scale)
            result[rows] = xg - center
            continue
        if const.any():
            flat_groups.append(label)
            flat_features.update(np.flatnonzero(const).tolist())
            logger.debug(
                "%s %s: %d feature(s) have zero spread in the %d reference rows (%s)",
                source, label, int(const.sum()), len(ref_rows),
                shown([cols[i] for i in np.flatnonzero(const)]),
            )
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            result[rows] = (xg - center) / scale
    if flat_groups:
        logger.warning(
            "%s: %d feature(s) have zero spread in the reference rows of %d group(s) (%s; groups "
            "%s); %s",
            source, len(flat_features), len(flat_groups),
            shown([cols[i] for i in sorted(flat_features)]), shown(flat_groups, 3),
            f"they are divided by epsilon ({epsilon:g}), as pycytominer does"
            if method == "mad_robustize" else "their scale is set to 1, as scikit-learn does",
        )
    logger.info(
        "%s: normalized %d rows x %d features in %d group(s) by %s with %s against %s "
        "(%d reference rows)",
        source, len(profiles), len(cols), n_groups, "/".join(by) or "(whole table)", method,
        rule, int(mask.sum()),
    )
    return replace_features(profiles, cols, result, out_cols)


def spherize(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    method: str = "ZCA-cor",
    reference: str | pd.Series | np.ndarray = "negcon",
    reference_column: str | None = None,
    reference_value: str | Sequence[str] | None = None,
    by: Sequence[str] = (),
    epsilon: float = 1e-6,
    source: str = "profiles",
) -> pd.DataFrame:
    """Whiten features with a transform fitted on the reference rows (whole table by default).

    A shortcut for ``normalize(method="spherize", by=())``, the optional last step of feature
    selection (JUMP's "sphering on negcon").
    """
    return normalize(
        profiles, features=features, method="spherize", reference=reference,
        reference_column=reference_column, reference_value=reference_value, by=by,
        spherize_method=method, spherize_epsilon=epsilon, source=source,
    )
