"""Batch correction across plates with Harmony (Korsunsky et al. 2019), through ``harmonypy``.

Harmony soft-clusters the rows, and within each cluster regresses out the batch (``Metadata_Plate``
by default) with a ridge penalty, iterating until the clustering is diverse in batches
(``theta`` sets how hard it pushes).  Arevalo et al. 2024 (Nat Commun 15:6516) rank it among the
best batch corrections for Cell Painting profiles.  It is meant for a low-dimensional embedding:
run PCA first (``profiles.pca_components``), as Harmony users do.

``harmonypy`` is an optional dependency (``pip install -c constraints.txt harmonypy``, or the
``batch`` extra), imported only here and only when the operation runs.  The saved statistics are
the settings, the batch sizes, the objective per iteration and the final cluster centroids.
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles.arrays import check_finite, feature_matrix, replace_features
from cytoscreen.profiles.columns import resolve_by, resolve_features

logger = logging.getLogger(__name__)

DEFAULT_BATCH = (io.PLATE,)


@dataclass(frozen=True)
class HarmonyFit:
    """What one Harmony run did: settings, batches, convergence and cluster centroids."""

    batch_columns: tuple[str, ...]
    batch_sizes: dict[str, int]
    settings: dict[str, Any]
    n_clusters: int
    objective: list[float]
    features: tuple[str, ...]
    centroids: np.ndarray = field(repr=False)  # (d, K), in the input's feature space

    def record(self) -> dict[str, Any]:
        return {
            "operation": "harmony",
            "batch_columns": list(self.batch_columns),
            "batch_sizes": self.batch_sizes,
            "n_clusters": self.n_clusters,
            "n_iterations": max(len(self.objective) - 1, 0),
            "objective": self.objective,
            **self.settings,
        }

    def table(self) -> pd.DataFrame:
        """One row per feature: its value in every cluster centroid (``cluster_k``)."""
        cols = [f"cluster_{k}" for k in range(1, self.centroids.shape[1] + 1)]
        return pd.concat(
            [pd.DataFrame({"feature": list(self.features)}),
             pd.DataFrame(self.centroids, columns=cols)],
            axis=1,
        )


def _import_harmonypy():
    try:
        import harmonypy
    except ImportError as err:
        raise ConfigError(
            "profiles.harmony needs the optional package harmonypy, which is not installed: "
            "pip install -c constraints.txt harmonypy (or pip install 'cytoscreen[batch]'), or "
            "set profiles.harmony: false"
        ) from err
    return harmonypy


def harmony(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    batch: Sequence[str] | str = DEFAULT_BATCH,
    theta: float = 2.0,
    sigma: float = 0.1,
    n_clusters: int | None = None,
    max_iter: int = 10,
    seed: int = 0,
    source: str = "profiles",
) -> tuple[pd.DataFrame, HarmonyFit]:
    """Harmony-corrected features (same columns) and the fit.

    Parameters
    ----------
    batch
        Column(s) whose values are the batches to mix (plates by default).
    theta, sigma, n_clusters, max_iter, seed
        harmonypy's ``theta`` (diversity penalty), ``sigma`` (soft-clustering bandwidth),
        ``nclust`` (None: ``min(rows / 30, 100)``), ``max_iter_harmony`` and ``random_state``.

    Raises
    ------
    ConfigError
        harmonypy is not installed; bad settings.
    InputDataError
        Missing batch column, a single batch, missing feature values.
    """
    if theta < 0 or sigma <= 0 or max_iter < 1 or (n_clusters is not None and n_clusters < 1):
        raise ConfigError(
            f"harmony needs theta >= 0, sigma > 0, max_iter >= 1 and n_clusters >= 1 or null; got "
            f"theta={theta}, sigma={sigma}, max_iter={max_iter}, n_clusters={n_clusters}"
        )
    cols = resolve_features(profiles, features, source=source)
    by = resolve_by(profiles, batch, source=source, option="--harmony-batch")
    if not by:
        raise ConfigError("harmony needs at least one batch column (profiles.harmony_batch)")
    x = feature_matrix(profiles, cols, dtype=np.float64)
    check_finite(x, cols, source=source, allow_nan=False)
    labels = profiles[by].astype(str).agg("/".join, axis=1) if len(by) > 1 else profiles[by[0]].astype(str)
    sizes = labels.value_counts(sort=False).sort_index()
    if len(sizes) < 2:
        raise InputDataError(
            f"{source}: harmony needs at least two batches in {'/'.join(by)}, found "
            f"{len(sizes)} ({', '.join(sizes.index[:3])}); set profiles.harmony: false"
        )
    k = n_clusters if n_clusters is not None else int(min(round(len(x) / 30.0), 100))
    k = max(1, min(k, len(x)))
    harmonypy = _import_harmonypy()
    meta = pd.DataFrame({"batch": labels.to_numpy()})
    with contextlib.redirect_stdout(_io.StringIO()):  # harmonypy prints progress on stdout
        run = harmonypy.run_harmony(
            x, meta, "batch", theta=theta, sigma=sigma, nclust=k, max_iter_harmony=max_iter,
            random_state=seed, verbose=False,
        )
    corrected = np.asarray(run.Z_corr, dtype=np.float64)
    if corrected.shape != x.shape:
        corrected = corrected.T
    objective = [float(v) for v in np.asarray(getattr(run, "objective_harmony", []), dtype=float).ravel()]
    fit = HarmonyFit(
        batch_columns=tuple(by),
        batch_sizes={str(b): int(n) for b, n in sizes.items()},
        settings={"theta": float(theta), "sigma": float(sigma), "max_iter": int(max_iter), "seed": int(seed)},
        n_clusters=k,
        objective=objective,
        features=tuple(cols),
        centroids=_centroids(run, len(cols)),
    )
    logger.info(
        "%s: harmony over %d batches of %s (%d rows, %d features, %d clusters, theta %g)",
        source, len(sizes), "/".join(by), len(x), len(cols), k, theta,
    )
    return replace_features(profiles, cols, corrected), fit


def _centroids(run: Any, d: int) -> np.ndarray:
    """Cluster centroids ``Y`` as (features x clusters), empty when harmonypy does not expose them."""
    y = getattr(run, "Y", None)
    if y is None:
        return np.zeros((d, 0))
    y = np.asarray(y, dtype=np.float64)
    return y if y.shape[0] == d else y.T
