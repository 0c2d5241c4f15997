"""Plate-level hit readouts next to the novelty q-value: robust z scores and their Z'-factors.

- :func:`plate_robust_z`: the robust z (median, 1.4826 MAD; :func:`cytoscreen.stats.robust_z`) of each
  well's log novelty score against the out-of-sample scores of its plate's control wells (the
  screen's controls for plates with fewer than :data:`MIN_PLATE_CONTROLS`).
- :func:`poscon_direction_z`: the projection of each well's profile on its plate's
  ``mean(poscon) - mean(negcon)`` direction, measured from the negcon centre, as a robust z against
  the plate's negcon wells.  It is cross-fitted like the novelty scores: a negcon well is projected
  on a direction and centre computed without it, a poscon well on a direction computed without it,
  so no control scores itself.  Plates with fewer than 2 poscon or :data:`MIN_PLATE_CONTROLS` negcon
  wells get NaN.
- :func:`plate_zprime`: the Z'-factor (:func:`cytoscreen.stats.z_prime`) of a readout per plate,
  poscon vs negcon wells (NaN without 2 of each).
"""

from __future__ import annotations

import logging

import numpy as np

from cytoscreen import stats

logger = logging.getLogger(__name__)

#: Fewest control wells of a plate for its own reference (robust z centre and scale).
MIN_PLATE_CONTROLS = 3


def plate_rows(plates: np.ndarray) -> dict:
    """Row indices of each plate (plates in order of first appearance, rows in order): one pass
    instead of one comparison of the whole column per plate (quadratic in plates at campaign scale)."""
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(plates, dtype=object), sort=False, use_na_sentinel=False)
    order = np.argsort(codes, kind="stable")
    parts = np.split(order, np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1])
    return dict(zip(uniques, parts, strict=True))


def plate_robust_z(plates: np.ndarray, log_score: np.ndarray, is_ctrl: np.ndarray, *,
                   source: str = "profiles") -> np.ndarray:
    """Robust z of each well's log score against its plate's control wells; the screen's control
    wells for plates with fewer than :data:`MIN_PLATE_CONTROLS`."""
    z = np.full(len(log_score), np.nan)
    screen_ref = log_score[is_ctrl & np.isfinite(log_score)]
    pooled = []
    usable = is_ctrl & np.isfinite(log_score)
    for plate, on in plate_rows(plates).items():
        ref = log_score[on[usable[on]]]
        if len(ref) < MIN_PLATE_CONTROLS:
            pooled.append(str(plate))
            ref = screen_ref
        if len(ref):
            z[on] = stats.robust_z(log_score[on], ref)
    if pooled and len(screen_ref):
        logger.warning(
            "%s: plate(s) %s have fewer than %d control wells; their robust z uses the screen's %d",
            source, ", ".join(pooled[:5]), MIN_PLATE_CONTROLS, len(screen_ref),
        )
    return z


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else np.full_like(v, np.nan)


def poscon_direction_z(x: np.ndarray, plates: np.ndarray, is_neg: np.ndarray,
                       is_pos: np.ndarray) -> np.ndarray:
    """Cross-fitted projection on each plate's poscon - negcon direction, as a robust z against the
    plate's negcon wells (see the module docstring).  ``x`` is ``(wells, features)``."""
    x = np.asarray(x, dtype=np.float64)
    z = np.full(len(x), np.nan)
    for on in plate_rows(plates).values():
        neg, pos = on[is_neg[on]], on[is_pos[on] & ~is_neg[on]]
        if len(neg) < MIN_PLATE_CONTROLS or len(pos) < 2:
            continue
        sum_n, sum_p = x[neg].sum(axis=0), x[pos].sum(axis=0)
        mu_n, mu_p = sum_n / len(neg), sum_p / len(pos)
        s = np.empty(len(on))
        u = _unit(mu_p - mu_n)
        pos_set = set(pos.tolist())
        for i, row in enumerate(on):
            if is_neg[row]:  # its own centre and direction leave it out
                c = (sum_n - x[row]) / (len(neg) - 1)
                s[i] = (x[row] - c) @ _unit(mu_p - c)
            elif row in pos_set:
                s[i] = (x[row] - mu_n) @ _unit((sum_p - x[row]) / (len(pos) - 1) - mu_n)
            else:
                s[i] = (x[row] - mu_n) @ u
        z[on] = stats.robust_z(s, s[is_neg[on]])
    return z


def plate_zprime(values: np.ndarray, plates: np.ndarray, is_neg: np.ndarray,
                 is_pos: np.ndarray) -> dict[str, float]:
    """Z'-factor per plate of ``values``, poscon vs negcon wells (NaN without 2 of each)."""
    return {
        str(p): stats.z_prime(values[on[is_pos[on]]], values[on[is_neg[on]]])
        for p, on in plate_rows(plates).items()
    }
