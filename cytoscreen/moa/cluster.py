"""Clustering of treatment profiles by cosine similarity.

Two methods, named as in config (``moa.cluster_method``) and the CLI:

- ``hierarchical``: agglomerative clustering with average linkage on the cosine distance
  (1 - cosine similarity), cut into ``n_clusters`` clusters.  Without a fixed ``n_clusters`` the
  cut is chosen by the mean silhouette width (cosine distance) over k = 2 .. ``max_clusters``
  (capped at n - 1); the smallest k with the largest silhouette wins.
- ``louvain``: a PhenoGraph-style graph clustering (Levine et al., Cell 2015): every profile is
  joined to its ``n_neighbors`` most cosine-similar profiles, each edge is weighted by the Jaccard
  index of the two neighbourhoods, and the graph is split by Louvain modularity optimisation
  (networkx, seeded, ``resolution`` as in networkx).  The number of clusters follows from the graph.

Cluster labels are integers from 1, numbered by decreasing cluster size (ties: first appearance).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cytoscreen.errors import ConfigError
from cytoscreen.moa.similarity import cosine_similarity, feature_matrix, top_k_similar

logger = logging.getLogger(__name__)

CLUSTER_METHODS = ("hierarchical", "louvain")


@dataclass(frozen=True)
class Clustering:
    """Result of :func:`cluster_profiles`."""

    labels: np.ndarray
    n_clusters: int
    method: str
    silhouette: float | None
    #: mean silhouette per tried k (hierarchical with automatic k), else empty
    silhouette_by_k: dict[int, float]


def cosine_distance_matrix(x: np.ndarray) -> np.ndarray:
    """Symmetric cosine distance matrix with a zero diagonal, values in [0, 2]."""
    d = 1.0 - cosine_similarity(x)
    d = np.clip((d + d.T) / 2.0, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    uniq, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(uniq)), key=lambda i: (-counts[i], first[i]))
    mapping = {uniq[i]: rank + 1 for rank, i in enumerate(order)}
    return np.array([mapping[v] for v in labels], dtype=np.int64)


def _silhouette(d: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import silhouette_score

    k = len(np.unique(labels))
    if k < 2 or k > len(labels) - 1:
        return None
    return float(silhouette_score(d, labels, metric="precomputed"))


def hierarchical_clusters(x: np.ndarray, *, n_clusters: int | None = None, max_clusters: int = 30) -> Clustering:
    """Average-linkage clustering on cosine distance; k fixed or chosen by silhouette."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(x)
    if n < 3:
        logger.warning("only %d profile(s): every profile is its own cluster", n)
        labels = np.arange(1, n + 1, dtype=np.int64)
        return Clustering(labels, n, "hierarchical", None, {})
    d = cosine_distance_matrix(x)
    z = linkage(squareform(d, checks=False), method="average")
    by_k: dict[int, float] = {}
    if n_clusters is None:
        best_k, best_s = 1, -np.inf
        for k in range(2, min(max_clusters, n - 1) + 1):
            labels = fcluster(z, k, criterion="maxclust")
            s = _silhouette(d, labels)
            if s is None:
                continue
            by_k[k] = s
            if s > best_s + 1e-12:
                best_k, best_s = k, s
        k = best_k
        logger.info("hierarchical clustering: k = %d by silhouette (%.3f)", k, best_s)
    else:
        k = min(int(n_clusters), n)
    labels = _relabel_by_size(fcluster(z, k, criterion="maxclust"))
    return Clustering(
        labels=labels,
        n_clusters=len(np.unique(labels)),
        method="hierarchical",
        silhouette=_silhouette(d, labels),
        silhouette_by_k=by_k,
    )


def knn_graph(x: np.ndarray, *, n_neighbors: int = 15):
    """PhenoGraph's graph: kNN (cosine) edges weighted by the Jaccard index of neighbourhoods."""
    import networkx as nx
    from scipy import sparse

    n = len(x)
    nbrs, _ = top_k_similar(x, n_neighbors)
    k = nbrs.shape[1]
    rows = np.repeat(np.arange(n), k)
    member = sparse.csr_matrix((np.ones(n * k), (rows, nbrs.ravel())), shape=(n, n))
    cols = nbrs.ravel()
    # shared neighbours of every kNN edge (i, j): row i of member dotted with row j
    inter = np.asarray(member[rows].multiply(member[cols]).sum(axis=1)).ravel()
    jaccard = inter / (2 * k - inter)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    # neighbours with disjoint neighbourhoods still keep a weak edge
    weights = np.maximum(jaccard, 1.0 / (2 * k))
    graph.add_weighted_edges_from((int(i), int(j), float(w)) for i, j, w in zip(rows, cols, weights, strict=True))
    return graph


def louvain_clusters(x: np.ndarray, *, n_neighbors: int = 15, resolution: float = 1.0, seed: int = 0) -> Clustering:
    """Louvain communities of the Jaccard-weighted kNN graph (PhenoGraph-style)."""
    import networkx as nx

    n = len(x)
    if n < 3:
        logger.warning("only %d profile(s): every profile is its own cluster", n)
        return Clustering(np.arange(1, n + 1, dtype=np.int64), n, "louvain", None, {})
    graph = knn_graph(x, n_neighbors=n_neighbors)
    communities = nx.community.louvain_communities(graph, weight="weight", resolution=resolution, seed=seed)
    labels = np.empty(n, dtype=np.int64)
    for c, members in enumerate(sorted(communities, key=min)):
        labels[list(members)] = c
    labels = _relabel_by_size(labels)
    d = cosine_distance_matrix(x)
    k = len(np.unique(labels))
    logger.info("louvain clustering: %d clusters (%d neighbours per profile)", k, n_neighbors)
    return Clustering(labels, k, "louvain", _silhouette(d, labels), {})


def cluster_profiles(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    method: str = "hierarchical",
    n_clusters: int | None = None,
    max_clusters: int = 30,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    seed: int = 0,
) -> Clustering:
    """Cluster the rows of a profile table (one row per treatment) by cosine similarity.

    Parameters
    ----------
    method
        ``hierarchical`` or ``louvain`` (see the module docstring).
    n_clusters
        Fixed k for ``hierarchical``; None chooses k by silhouette up to ``max_clusters``.
    n_neighbors, resolution
        kNN graph size and Louvain resolution for ``louvain``.
    seed
        Seed of the Louvain node order (``hierarchical`` is deterministic).
    """
    if method not in CLUSTER_METHODS:
        raise ConfigError(f"unknown clustering method {method!r}; choose one of {', '.join(CLUSTER_METHODS)}")
    x, _ = feature_matrix(profiles, features)
    if method == "hierarchical":
        return hierarchical_clusters(x, n_clusters=n_clusters, max_clusters=max_clusters)
    return louvain_clusters(x, n_neighbors=n_neighbors, resolution=resolution, seed=seed)
