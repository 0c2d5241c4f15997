"""Image QC per site: focus, saturation and intensity per channel, and robust per-plate flags.

Metrics per site and channel (columns ``Metadata_<Channel>_<Metric>``, so they never count as
features):

- ``FocusScore``: variance of the Laplacian divided by the variance of the image: the share of
  the image's contrast at the finest scale (scale- and density-free; blur lowers it sharply),
- ``SaturationFraction``: fraction of pixels at the dtype's full-scale value,
- ``MeanIntensity``, ``MedianIntensity``, ``P999Intensity`` (99.9th percentile), and
  ``Contrast`` = P99.9 / median, which is near 1 for a field without cells.

Flags (bool ``QC_*``) are robust outliers within the plate, median and MAD over readable sites:

- ``QC_blurry``: median over channels of the log-focus z < -blur_z,
- ``QC_saturated``: saturated fraction above ``saturation_fraction`` and z > saturation_z in any
  channel,
- ``QC_empty``: median over channels of the robust z of the log 99.9th percentile < -empty_z (no
  bright structure, i.e. no cells; a confluent field has low contrast but stays bright),
- ``QC_unreadable``: a channel could not be decoded (recorded, not raised).

Images are read in batches of sites, so memory is bounded by a batch, never a plate.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError

logger = logging.getLogger(__name__)

METRICS = ("FocusScore", "SaturationFraction", "MeanIntensity", "MedianIntensity", "P999Intensity",
           "Contrast")
FLAGS = ("QC_blurry", "QC_saturated", "QC_empty", "QC_unreadable")
MAD_SCALE = 1.4826


def metric_column(channel: str, metric: str) -> str:
    return f"{io.METADATA_PREFIX}{channel}_{metric}"


def image_metrics(img: np.ndarray) -> dict[str, float]:
    """QC metrics of one 2-D image (any dtype)."""
    full = io.image_dtype_max(img)
    x = img.astype(np.float32, copy=False)
    mean = float(x.mean())
    lap = (-4.0 * x[1:-1, 1:-1] + x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:])
    var = float(x.var())
    focus = float(lap.var() / var) if var > 0 and min(x.shape) > 2 else np.nan
    median, p999 = _percentiles(img, (50.0, 99.9))
    return {
        "FocusScore": focus,
        "SaturationFraction": float(np.count_nonzero(img >= full) / img.size),
        "MeanIntensity": mean,
        "MedianIntensity": median,
        "P999Intensity": p999,
        "Contrast": p999 / max(median, 1e-6 * full, 1e-12),
    }


def _percentiles(img: np.ndarray, qs: Sequence[float]) -> list[float]:
    """numpy's default (linear) percentiles; for 8/16-bit images from a histogram, ~10x faster."""
    if img.dtype not in (np.uint8, np.uint16):
        return [float(v) for v in np.percentile(img, qs)]
    cdf = np.cumsum(np.bincount(img.ravel(), minlength=256))
    n = img.size
    out = []
    for q in qs:
        h = (n - 1) * q / 100.0
        lo = int(np.floor(h))
        v_lo = np.searchsorted(cdf, lo, side="right")
        v_hi = np.searchsorted(cdf, min(lo + 1, n - 1), side="right")
        out.append(float(v_lo + (h - lo) * (v_hi - v_lo)))
    return out


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD), NaN-aware; zero MAD falls back to the mean absolute deviation."""
    v = np.asarray(values, dtype=np.float64)
    med = np.nanmedian(v)
    mad = MAD_SCALE * np.nanmedian(np.abs(v - med))
    if not np.isfinite(mad) or mad == 0:
        mad = 1.2533 * np.nanmean(np.abs(v - med))  # sqrt(pi/2) * mean abs dev = sigma for a normal
    if not np.isfinite(mad) or mad == 0:
        with np.errstate(invalid="ignore"):
            return np.where(v == med, 0.0, np.sign(v - med) * np.inf)
    return (v - med) / mad


def _site_groups(images: pd.DataFrame) -> list[pd.DataFrame]:
    return [g for _, g in images.groupby([io.WELL, io.SITE], sort=False)]


def _measure_site(site: pd.DataFrame) -> dict[str, float | str | bool]:
    out: dict[str, float | str | bool] = {}
    unreadable = False
    for rec in site[[io.CHANNEL, io.PATH, io.FRAME]].itertuples(index=False):
        channel, path, frame = rec
        try:
            metrics = image_metrics(io.read_image(path, int(frame)))
        except InputDataError as err:
            logger.warning("QC_unreadable: %s", err)
            unreadable = True
            metrics = {m: np.nan for m in METRICS}
        for m, v in metrics.items():
            out[metric_column(channel, m)] = v
    out["QC_unreadable"] = unreadable
    return out


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def measure(images: pd.DataFrame, *, batch_size: int = 16, threads: int = 2) -> pd.DataFrame:
    """Per-site metrics of an ``images.parquet`` table; one row per site with its metadata."""
    if images.empty:
        raise InputDataError("QC: the image table is empty")
    sites = _site_groups(images)
    meta_cols = [c for c in images.columns if c.startswith(io.METADATA_PREFIX) and c != io.CHANNEL]
    rows = []
    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=len(sites), desc="QC", unit="site", file=sys.stderr)
    with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
        done = 0
        for batch in _batches(sites, batch_size):
            for site, result in zip(batch, pool.map(_measure_site, batch), strict=True):
                rows.append({**site.iloc[0][meta_cols].to_dict(), **result})
            done += len(batch)
            if progress is not None:
                progress.update(len(batch))
            elif done % max(batch_size * 16, 1) < batch_size or done == len(sites):
                logger.info("QC: measured %d/%d sites", done, len(sites))
    if progress is not None:
        progress.close()
    return pd.DataFrame(rows)


def _median_over_channels(z: list[np.ndarray]) -> np.ndarray:
    stacked = np.vstack(z)
    out = np.full(stacked.shape[1], np.nan)
    ok = np.isfinite(stacked).any(axis=0)
    out[ok] = np.nanmedian(stacked[:, ok], axis=0)
    return out


def flag(metrics: pd.DataFrame, *, channels: Sequence[str], blur_z: float = 3.5,
         saturation_fraction: float = 0.002, saturation_z: float = 3.5, empty_z: float = 6.0,
         min_sites_for_outliers: int = 8) -> pd.DataFrame:
    """Add the robust per-plate flags to a per-site metrics table (returns a new frame)."""
    out = metrics.copy()
    for f in ("QC_blurry", "QC_saturated", "QC_empty"):
        out[f] = False
    for _, idx in out.groupby(io.PLATE, sort=False).groups.items():
        plate = out.loc[idx]
        readable = ~plate["QC_unreadable"].to_numpy(bool)
        if readable.sum() < min_sites_for_outliers:
            logger.warning("plate %s: only %d readable sites (< %d): no outlier flags", plate[io.PLATE].iloc[0],
                           int(readable.sum()), min_sites_for_outliers)
            continue
        focus_z = []
        saturated = np.zeros(len(plate), bool)
        contrast_z = []
        for ch in channels:
            focus = np.log(np.clip(plate[metric_column(ch, "FocusScore")].to_numpy(float), 1e-12, None))
            z = np.full(len(plate), np.nan)
            z[readable] = robust_z(focus[readable])
            focus_z.append(z)
            sat = plate[metric_column(ch, "SaturationFraction")].to_numpy(float)
            zs = np.full(len(plate), np.nan)
            zs[readable] = robust_z(sat[readable])
            saturated |= (sat > saturation_fraction) & (zs > saturation_z)
            # brightest structures, not contrast: a confluent field has low contrast but bright cells
            bright = np.log(np.clip(plate[metric_column(ch, "P999Intensity")].to_numpy(float), 1e-12, None))
            zc = np.full(len(plate), np.nan)
            zc[readable] = robust_z(bright[readable])
            contrast_z.append(zc)
        # defocus blurs every channel, a phenotype changes the texture of one or two: use the median
        blurry = _median_over_channels(focus_z) < -blur_z
        out.loc[idx, "QC_blurry"] = blurry & readable
        out.loc[idx, "QC_saturated"] = saturated & readable
        empty = _median_over_channels(contrast_z) < -empty_z
        out.loc[idx, "QC_empty"] = empty & readable
    for f in FLAGS:
        out[f] = out[f].astype(bool)
    return out


def run_qc(images: pd.DataFrame, qc_config: Mapping) -> pd.DataFrame:
    """Measure and flag one plate as the workflow does: the ``qc.parquet`` table."""
    channels = list(dict.fromkeys(images[io.CHANNEL]))
    metrics = measure(images, batch_size=qc_config["batch_size"], threads=qc_config["threads"])
    flagged = flag(metrics, channels=channels, blur_z=qc_config["blur_z"],
                   saturation_fraction=qc_config["saturation_fraction"],
                   saturation_z=qc_config["saturation_z"], empty_z=qc_config["empty_z"],
                   min_sites_for_outliers=qc_config["min_sites_for_outliers"])
    counts = {f: int(flagged[f].sum()) for f in FLAGS}
    logger.info("QC: %d sites, flagged %s", len(flagged), ", ".join(f"{n} {f}" for f, n in counts.items()))
    return flagged


def failed(qc: pd.DataFrame) -> pd.Series:
    """True for sites with any ``QC_*`` flag set."""
    cols = io.qc_columns(qc)
    return qc[cols].any(axis=1) if cols else pd.Series(False, index=qc.index)
