"""QC metrics of one 2-D image plane (any dtype).

- ``FocusScore``: variance of the Laplacian divided by the variance of the image: the share of
  the image's contrast at the finest scale (scale- and density-free; blur lowers it sharply);
  NaN for a constant image,
- ``SaturationFraction``: fraction of pixels at the image's full-scale value
  (:func:`cytoscreen.io.image_full_scale`: the bit depth of its file, or for float images their
  actual range),
- ``MeanIntensity``, ``StdIntensity``, ``MedianIntensity``, ``P999Intensity`` (99.9th percentile),
  and ``Contrast`` = P99.9 / median, which is near 1 for a field without cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cytoscreen import io

METRICS = ("FocusScore", "SaturationFraction", "MeanIntensity", "StdIntensity", "MedianIntensity",
           "P999Intensity", "Contrast")


def metric_column(channel: str, metric: str) -> str:
    """``Metadata_<channel>_<metric>``: a metric column of ``qc.parquet`` (never a feature)."""
    return f"{io.METADATA_PREFIX}{channel}_{metric}"


def image_metrics(img: np.ndarray, full_scale: float | None = None, scale: float = 1.0) -> dict[str, float]:
    """QC metrics of one 2-D image.

    ``full_scale`` defaults to :func:`cytoscreen.io.image_full_scale`; ``scale`` multiplies the
    image's values first (``ingest.on_mixed_bit_depth: rescale``), which scales the intensities and
    the full scale alike and leaves the focus score and the saturated fraction as they are.  8- and
    16-bit images are measured by GIL-free exact integer kernels (:mod:`cytoscreen.qc._kernels`),
    others by numpy; both give the same values.
    """
    full = io.image_full_scale(img) if full_scale is None else float(full_scale)
    if img.dtype in (np.uint8, np.uint16) and img.ndim == 2 and img.size < _MAX_KERNEL_PIXELS:
        m = _integer_metrics(img, full)
    else:
        m = _numpy_metrics(img, full)
    if scale != 1.0:
        for k in ("MeanIntensity", "StdIntensity", "MedianIntensity", "P999Intensity"):
            m[k] *= scale
    return m


#: Above this many pixels the kernels' int64 sums could overflow: numpy instead.
_MAX_KERNEL_PIXELS = 1 << 26


def _finish(focus: float, saturated: float, mean: float, std: float, median: float, p999: float,
            full: float) -> dict[str, float]:
    return {
        "FocusScore": focus,
        "SaturationFraction": saturated,
        "MeanIntensity": mean,
        "StdIntensity": std,
        "MedianIntensity": median,
        "P999Intensity": p999,
        "Contrast": p999 / max(median, 1e-6 * full, 1e-12),
    }


def _integer_metrics(img: np.ndarray, full: float) -> dict[str, float]:
    from cytoscreen.qc import _kernels

    nbins = 256 if img.dtype == np.uint8 else 65536
    sat_from = int(np.ceil(full)) if np.isfinite(full) else nbins
    hist, s, ss, ls, lss, nsat = _kernels.int_image_sums(img, nbins, sat_from)
    n = img.size
    s, ss, ls, lss = int(s), int(ss), int(ls), int(lss)
    var = (n * ss - s * s) / (n * n)  # exact integers, then one division
    focus = np.nan
    if var > 0 and min(img.shape) > 2:
        m = (img.shape[0] - 2) * (img.shape[1] - 2)
        focus = (m * lss - ls * ls) / (m * m) / var
    median, p999 = _kernels.hist_percentiles(hist, _QS)
    return _finish(float(focus), int(nsat) / n, s / n, float(np.sqrt(var)), float(median), float(p999), full)


_QS = np.array([50.0, 99.9])


def _numpy_metrics(img: np.ndarray, full: float) -> dict[str, float]:
    """The reference definitions, for any dtype."""
    x = img.astype(np.float32, copy=False)
    var = float(x.var())
    focus = np.nan
    if var > 0 and min(x.shape) > 2:
        lap = (-4.0 * x[1:-1, 1:-1] + x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:])
        focus = float(lap.var() / var)
    median, p999 = _percentiles(img, (50.0, 99.9))
    return _finish(focus, float(np.count_nonzero(img >= full) / img.size), float(x.mean()), float(np.sqrt(var)),
                   median, p999, full)


def warm_up() -> None:
    """Compile (or load from the on-disk cache) the kernels before threads call them."""
    for dtype in (np.uint8, np.uint16):
        _integer_metrics(np.arange(16, dtype=dtype).reshape(4, 4), 255.0)


def nan_metrics() -> dict[str, float]:
    """The metrics of an image that could not be read: all NaN."""
    return {m: np.nan for m in METRICS}


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
