"""Numba kernels for the QC metrics of 8- and 16-bit images: one pass for the histogram and the
sums, one for the Laplacian sums, both exact integer arithmetic and GIL-free, so the reader
threads measure in parallel at about a tenth of the decode time.

Imported lazily (numba takes a moment to import); :mod:`cytoscreen.qc.metrics` falls back to
numpy for other dtypes.  Compiled functions are cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(nogil=True, cache=True)
def int_image_sums(img, nbins, full):  # pragma: no cover - compiled
    """(histogram, sum, sum of squares, Laplacian sum, Laplacian sum of squares, pixels >= full).

    The Laplacian is the 4-neighbour one over the interior pixels (as the numpy reference)."""
    h, w = img.shape
    hist = np.zeros(nbins, np.int64)
    s = 0
    ss = 0
    for i in range(h):
        row = img[i]
        for j in range(w):
            v = np.int64(row[j])
            hist[v] += 1
            s += v
            ss += v * v
    ls = 0
    lss = 0
    for i in range(1, h - 1):
        up = img[i - 1]
        mid = img[i]
        dn = img[i + 1]
        for j in range(1, w - 1):
            lap = (np.int64(up[j]) + np.int64(dn[j]) + np.int64(mid[j - 1]) + np.int64(mid[j + 1])
                   - 4 * np.int64(mid[j]))
            ls += lap
            lss += lap * lap
    nsat = 0
    for v in range(min(full, nbins), nbins):
        nsat += hist[v]
    return hist, s, ss, ls, lss, nsat


@nb.njit(nogil=True, cache=True)
def hist_percentiles(hist, qs):  # pragma: no cover - compiled
    """numpy's default (linear) percentiles ``qs`` of the values counted in ``hist``."""
    n = 0
    for c in hist:
        n += c
    out = np.empty(len(qs), np.float64)
    for k in range(len(qs)):
        hpos = (n - 1) * qs[k] / 100.0
        lo = np.int64(np.floor(hpos))
        hi = min(lo + 1, n - 1)
        v_lo = -1
        v_hi = -1
        cum = 0
        for v in range(len(hist)):
            cum += hist[v]
            if v_lo < 0 and cum > lo:
                v_lo = v
            if cum > hi:
                v_hi = v
                break
        out[k] = v_lo + (hpos - lo) * (v_hi - v_lo)
    return out
