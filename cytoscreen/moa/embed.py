"""Two-dimensional UMAP coordinates of treatment profiles, for display only.

The embedding never feeds a metric: NSC/NSCB, mAP and clusters are computed on the profiles.
umap-learn is seeded (``random_state``), which also makes it single-threaded and so reproducible.
With fewer than 5 profiles UMAP's spectral initialisation is not defined; the first two principal
components are returned instead (with a logged note).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cytoscreen.moa.similarity import feature_matrix, unit_rows

logger = logging.getLogger(__name__)

_MIN_UMAP_ROWS = 5


def _pca_2d(x: np.ndarray) -> np.ndarray:
    out = np.zeros((len(x), 2), dtype=np.float64)
    if len(x) < 2:
        return out
    xc = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    comps = u[:, :2] * s[:2]
    # deterministic sign: the largest-magnitude entry of each component is positive
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(comps.shape[1])])
    signs[signs == 0] = 1.0
    out[:, : comps.shape[1]] = comps * signs
    return out


def umap_embedding(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """UMAP (cosine metric) coordinates of every row, shape (n_rows, 2).

    Parameters
    ----------
    n_neighbors
        UMAP's neighbourhood size, capped at n_rows - 1.
    min_dist
        UMAP's minimum distance between embedded points.
    seed
        ``random_state`` of UMAP; the same seed and input give the same coordinates.
    """
    x, _ = feature_matrix(profiles, features)
    n = len(x)
    if n < _MIN_UMAP_ROWS:
        logger.info("UMAP needs at least %d profiles, got %d: using PCA", _MIN_UMAP_ROWS, n)
        return _pca_2d(unit_rows(x))
    import umap

    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(n_neighbors, n - 1)),
        min_dist=min_dist,
        metric="cosine",
        random_state=seed,
        init="spectral" if n > _MIN_UMAP_ROWS + 5 else "random",
    )
    with warnings.catch_warnings():
        # "n_jobs overridden by setting random_state" and small-graph notices are expected
        warnings.simplefilter("ignore", UserWarning)
        coords = reducer.fit_transform(x)
    return np.asarray(coords, dtype=np.float64)
