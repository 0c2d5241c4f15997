"""Per-site QC flags (bool ``QC_*`` columns) from the per-channel metrics of a plate.

Absolute flags, whatever the plate:

- ``QC_unreadable``: a channel could not be decoded (set by :func:`cytoscreen.qc.measure`),
- ``QC_constant``: a channel is one value everywhere (a dead channel: all zero, or a flat fill),
  so its focus score is undefined; checked per channel, so one dead channel fails the site.

Robust outliers within the plate (median and MAD over the sites that are readable and not
constant; only when the plate has ``min_sites_for_outliers`` of them):

- ``QC_blurry``: median over channels of the log-focus z < -blur_z (defocus blurs every channel,
  a phenotype changes the texture of one or two),
- ``QC_saturated``: in any channel, the saturated fraction is above ``saturation_fraction`` and
  its z > saturation_z,
- ``QC_empty``: median over channels of the robust z of the log 99.9th percentile < -empty_z (no
  bright structure, i.e. no cells; a confluent field has low contrast but stays bright), or in any
  single channel that z is below -2 * empty_z (a channel without signal while the others have it).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.qc.metrics import metric_column
from cytoscreen.qc.settings import QCSettings
from cytoscreen.stats import robust_z

logger = logging.getLogger(__name__)

#: The flags of qc.parquet, in the order the log lists them.
FLAGS = (io.QC_BLURRY, io.QC_SATURATED, io.QC_EMPTY, io.QC_CONSTANT, io.QC_UNREADABLE)


def _median_over_channels(z: list[np.ndarray]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return np.nanmedian(np.vstack(z), axis=0)


def _z(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Robust z of every site against the reference sites (NaN outside the reference)."""
    z = np.full(len(values), np.nan)
    z[ref] = robust_z(values[ref])
    return z


def _log(values: pd.Series) -> np.ndarray:
    return np.log(np.clip(values.to_numpy(float), 1e-12, None))


def flag(metrics: pd.DataFrame, *, channels: Sequence[str], settings: QCSettings) -> pd.DataFrame:
    """Add the QC flags to a per-site metrics table (returns a new frame)."""
    out = metrics.copy()
    unreadable = out[io.QC_UNREADABLE].to_numpy(bool)
    constant = np.zeros(len(out), bool)
    for ch in channels:
        std = out[metric_column(ch, "StdIntensity")].to_numpy(float)
        constant |= (std == 0) & ~unreadable
    out[io.QC_CONSTANT] = constant
    for f in (io.QC_BLURRY, io.QC_SATURATED, io.QC_EMPTY):
        out[f] = False
    for plate, idx in out.groupby(io.PLATE, sort=False).groups.items():
        pos = out.index.get_indexer(idx)
        ref = ~unreadable[pos] & ~constant[pos]
        if ref.sum() < settings.min_sites_for_outliers:
            logger.warning("plate %s: only %d readable, non-constant sites (< %d): no outlier flags", plate,
                           int(ref.sum()), settings.min_sites_for_outliers)
            continue
        sub = out.loc[idx]
        focus_z, bright_z = [], []
        saturated = np.zeros(len(sub), bool)
        for ch in channels:
            focus_z.append(_z(_log(sub[metric_column(ch, "FocusScore")]), ref))
            sat = sub[metric_column(ch, "SaturationFraction")].to_numpy(float)
            saturated |= (sat > settings.saturation_fraction) & (_z(sat, ref) > settings.saturation_z)
            # brightest structures, not contrast: a confluent field has low contrast but bright cells
            bright_z.append(_z(_log(sub[metric_column(ch, "P999Intensity")]), ref))
        blurry = _median_over_channels(focus_z) < -settings.blur_z
        with np.errstate(invalid="ignore"):
            empty = (_median_over_channels(bright_z) < -settings.empty_z) | (
                np.vstack(bright_z) < -2 * settings.empty_z).any(axis=0)
        out.loc[idx, io.QC_BLURRY] = blurry & ref
        out.loc[idx, io.QC_SATURATED] = saturated & ref
        out.loc[idx, io.QC_EMPTY] = empty & ref
    for f in FLAGS:
        out[f] = out[f].astype(bool)
    return out
