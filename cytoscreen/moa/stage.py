"""The screen-level MoA stage: clusters, UMAP coordinates and nearest neighbours of treatments.

``moa.parquet`` has one row per treatment and only ``Metadata_*`` columns: the treatment's
metadata from the consensus table, ``Metadata_Treatment`` (``<perturbation> @ <concentration>``),
``Metadata_Cluster`` (1 = largest cluster), ``Metadata_UMAP_1``/``Metadata_UMAP_2`` (display
only) and ``Metadata_Neighbor_<i>`` / ``Metadata_Neighbor_<i>_Similarity`` (cosine, most similar
first).  Features stay out of it, so no tool can mistake coordinates or similarities for features;
join on the treatment columns to get them back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError
from cytoscreen.moa import metrics
from cytoscreen.moa.cluster import Clustering, cluster_profiles
from cytoscreen.moa.embed import umap_embedding
from cytoscreen.moa.similarity import feature_matrix, nearest_neighbors, treatment_label

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MoaResult:
    """Result of :func:`moa_table`."""

    table: pd.DataFrame = field(repr=False)
    clustering: Clustering = field(repr=False)


def moa_table(
    treatments: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    perturbation_col: str = io.PERTURBATION,
    concentration_col: str | None = io.CONCENTRATION,
    cluster_method: str = "hierarchical",
    n_clusters: int | None = None,
    max_clusters: int = 30,
    graph_neighbors: int = 15,
    resolution: float = 1.0,
    neighbors: int = 5,
    umap_neighbors: int = 15,
    umap_min_dist: float = 0.1,
    seed: int = 0,
) -> MoaResult:
    """Cluster, embed and list the nearest neighbours of treatment profiles.

    Parameters
    ----------
    treatments
        One row per treatment (consensus profiles); row order is kept.
    perturbation_col, concentration_col
        Columns naming a treatment in ``Metadata_Treatment`` and the neighbour columns.
    cluster_method, n_clusters, max_clusters, graph_neighbors, resolution
        See :func:`cytoscreen.moa.cluster.cluster_profiles`.
    neighbors
        Nearest neighbours listed per treatment.
    umap_neighbors, umap_min_dist, seed
        UMAP settings and the seed of UMAP and Louvain.
    """
    if perturbation_col not in treatments.columns:
        raise InputDataError(f"treatments: column {perturbation_col!r} missing")
    if len(treatments) == 0:
        raise InputDataError("treatments: the table has no rows")
    _, cols = feature_matrix(treatments, features, source="treatments")
    if concentration_col and concentration_col in treatments.columns:
        conc = treatments[concentration_col].tolist()
    else:
        conc = [None] * len(treatments)
    labels = [treatment_label(p, c) for p, c in zip(treatments[perturbation_col], conc, strict=True)]
    if len(set(labels)) != len(labels):
        dup = pd.Series(labels)[pd.Series(labels).duplicated()].iloc[0]
        raise InputDataError(
            f"treatments: treatment {dup!r} appears more than once; the table must have one row "
            f"per perturbation x concentration"
        )
    clustering = cluster_profiles(
        treatments,
        features=cols,
        method=cluster_method,
        n_clusters=n_clusters,
        max_clusters=max_clusters,
        n_neighbors=graph_neighbors,
        resolution=resolution,
        seed=seed,
    )
    coords = umap_embedding(treatments, features=cols, n_neighbors=umap_neighbors, min_dist=umap_min_dist, seed=seed)
    nn = nearest_neighbors(treatments, labels=labels, features=cols, k=neighbors)
    meta = treatments[io.metadata_columns(treatments)].drop(
        columns=[io.TREATMENT, io.CLUSTER, io.UMAP_1, io.UMAP_2], errors="ignore"
    )
    meta = meta.drop(columns=[c for c in nn.columns if c in meta.columns])
    extra = pd.DataFrame(
        {
            io.TREATMENT: labels,
            io.CLUSTER: clustering.labels,
            io.UMAP_1: coords[:, 0],
            io.UMAP_2: coords[:, 1],
        },
        index=treatments.index,
    )
    table = pd.concat([meta, extra, nn], axis=1).reset_index(drop=True)
    return MoaResult(table=table, clustering=clustering)


def cluster_agreement(
    table: pd.DataFrame,
    *,
    moa_col: str = io.MOA,
    pert_type_col: str = io.PERT_TYPE,
) -> dict[str, Any] | None:
    """ARI and purity of ``Metadata_Cluster`` against the MoA of non-control treatments.

    None when the table has no MoA labels.  Negative-control treatments (pert type ``negcon``)
    and treatments without a MoA are left out.
    """
    if moa_col not in table.columns:
        return None
    keep = table[moa_col].notna()
    if pert_type_col in table.columns:
        keep &= table[pert_type_col].astype(str).str.lower() != "negcon"
    if keep.sum() < 2:
        return None
    truth = table.loc[keep, moa_col]
    clusters = table.loc[keep, io.CLUSTER]
    return {
        "ari": metrics.adjusted_rand_index(truth, clusters),
        "purity": metrics.cluster_purity(truth, clusters),
        "n_treatments": int(keep.sum()),
        "n_moas": int(truth.nunique()),
    }
