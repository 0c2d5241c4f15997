"""The screen-wide scale of ``normalize_scale: screen``: one divisor per feature for every plate.

With few control wells per plate (LINCS: 2 DMSO wells), a per-plate MAD is too noisy to divide by.
``normalize_scale: screen`` therefore splits normalization in two: the per-plate step only centres
each plate on its reference rows (:func:`cytoscreen.profiles.normalize.normalize` with
``scale_over="screen"``), and the screen-level select step divides every feature by the spread of
the reference rows of all plates together, measured the normalization method's way
(:func:`cytoscreen.profiles.normalize.fit_scale`: ``1.4826 * MAD + epsilon`` for
``mad_robustize``, the IQR for ``robustize``, the standard deviation for ``standardize``, a zero
spread set to 1 as scikit-learn does for the last two).  The values are not re-centred.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen.errors import ConfigError
from cytoscreen.profiles.arrays import check_finite, feature_matrix, replace_features
from cytoscreen.profiles.columns import resolve_features
from cytoscreen.profiles.normalize import fit_scale
from cytoscreen.profiles.reference import reference_mask

logger = logging.getLogger(__name__)

SCALE_METHODS = ("mad_robustize", "robustize", "standardize")


@dataclass(frozen=True)
class ScreenScale:
    """The divisor of every feature and where it came from."""

    method: str
    features: tuple[str, ...]
    scale: np.ndarray = field(repr=False)
    n_reference: int = 0
    reference_rule: str = ""
    epsilon: float = 0.0

    def record(self) -> dict[str, Any]:
        return {
            "operation": "scale",
            "method": self.method,
            "over": "screen",
            "n_reference_rows": self.n_reference,
            "reference": self.reference_rule,
            "epsilon": self.epsilon,
            "n_features": len(self.features),
        }

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"feature": list(self.features), "scale": self.scale})


def screen_scale(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    method: str = "mad_robustize",
    reference: str | pd.Series | np.ndarray = "negcon",
    reference_column: str | None = None,
    reference_value: str | Sequence[str] | None = None,
    epsilon: float = 1e-18,
    source: str = "profiles",
) -> tuple[pd.DataFrame, ScreenScale]:
    """Divide every feature by the spread of the reference rows of the whole (centred) table."""
    if method not in SCALE_METHODS:
        raise ConfigError(
            f"normalize_scale: screen needs normalize_method {', '.join(SCALE_METHODS)}, not {method}"
        )
    cols = resolve_features(profiles, features, source=source)
    mask, rule = reference_mask(
        profiles, reference, column=reference_column, value=reference_value, source=source
    )
    x = feature_matrix(profiles, cols, dtype=np.float64)
    check_finite(x, cols, source=source)
    _, scale, const = fit_scale(x[mask], method, epsilon)
    if const.any():
        logger.warning("%s: %d feature(s) have zero spread in the reference rows of the screen",
                       source, int(const.sum()))
    fit = ScreenScale(method, tuple(cols), np.asarray(scale, dtype=np.float64), int(mask.sum()),
                      rule, float(epsilon))
    logger.info("%s: %s scale over the screen from %d reference rows (%s)", source, method,
                fit.n_reference, rule)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        values = x / fit.scale
    return replace_features(profiles, cols, values), fit
