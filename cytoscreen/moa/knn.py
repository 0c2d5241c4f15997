"""Cosine k-nearest neighbours that scale to campaign size: exact when small, approximate when large.

:func:`cytoscreen.moa.similarity.top_k_similar` compares every row with every other (n^2 work;
150k treatments x 600 features is hours on two cores).  :func:`cosine_knn` keeps that exact path
below ``exact_below`` rows and above it uses NN-descent (``pynndescent``, installed with
``umap-learn``), an approximate graph search whose cost grows about as n log n; its recall against
the exact neighbours is checked in the tests (>= 0.9).  :func:`knn_clusters` clusters on that graph
(Louvain on a sparse Jaccard-weighted graph, no dense distance matrix) and :func:`knn_umap` reuses
the neighbours for UMAP, so the MoA stage never builds an n x n matrix at campaign scale.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from cytoscreen.moa.similarity import top_k_similar

logger = logging.getLogger(__name__)

#: Rows up to which the neighbours are exact (block-wise all pairs).
EXACT_BELOW = 20_000


def cosine_knn(
    x: np.ndarray, k: int, *, exact_below: int = EXACT_BELOW, seed: int = 0, n_jobs: int = 1
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Each row's ``k`` most cosine-similar other rows.

    Returns
    -------
    indices, similarities, exact
        ``(n, k)`` neighbour indices (most similar first, the row itself excluded), their cosine
        similarities, and whether the exact path was used.  ``k`` is capped at n - 1.
    """
    x = np.asarray(x)
    n = len(x)
    k = max(0, min(int(k), n - 1))
    if n <= exact_below or k == 0:
        idx, sim = top_k_similar(x, k)
        return idx, sim, True
    from pynndescent import NNDescent

    unit = unit_rows32(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        index = NNDescent(unit, metric="cosine", n_neighbors=k + 1, random_state=seed,
                          n_jobs=n_jobs, low_memory=True, compressed=True)
        del unit  # the index normalises its own copy
        nbrs, dist = index.neighbor_graph
        del index
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float64)
    for i in range(n):  # drop the row itself (usually first), keep k others
        row = nbrs[i][nbrs[i] != i][:k]
        d = dist[i][nbrs[i] != i][:k]
        idx[i, : len(row)] = row
        sim[i, : len(row)] = 1.0 - d
        if len(row) < k:  # NN-descent left a gap: pad with the last neighbour found
            idx[i, len(row):] = row[-1] if len(row) else i
            sim[i, len(row):] = sim[i, len(row) - 1] if len(row) else 0.0
    logger.info("approximate cosine kNN (NN-descent): %d rows, k = %d", n, k)
    return idx, sim, False


def unit_rows32(x: np.ndarray) -> np.ndarray:
    """:func:`~cytoscreen.moa.similarity.unit_rows` of ``x`` as float32, computed in float32.

    The same values as ``unit_rows(x.astype(float32)).astype(float32)`` (the norm is taken of the
    float32 rows either way, and a float32 quotient rounded once equals the float64 quotient
    rounded to float32) without the float64 matrix (8 bytes per value).
    """
    x32 = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x32, axis=1, keepdims=True)
    return np.divide(x32, norm, out=np.zeros(x32.shape, dtype=np.float32), where=norm > 0)


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row's exact neighbours found by ``approx`` (same shape)."""
    hits = [len(np.intersect1d(a, e)) for a, e in zip(approx, exact, strict=True)]
    return float(np.sum(hits) / exact.size) if exact.size else 1.0


def jaccard_graph(idx: np.ndarray):
    """Sparse symmetric kNN graph, edges weighted by the Jaccard index of the neighbourhoods."""
    from scipy import sparse

    n, k = idx.shape
    rows = np.repeat(np.arange(n), k)
    cols = idx.ravel()
    inter = shared_neighbors(idx, rows, cols)
    weights = np.maximum(inter / (2 * k - inter), 1.0 / (2 * k))
    graph = sparse.csr_matrix((weights, (rows, cols)), shape=(n, n))
    return graph.maximum(graph.T)


#: kNN-graph edges whose neighbourhoods are compared at a time (edges x k x k booleans).
_EDGE_BLOCK = 1 << 15


def shared_neighbors(idx: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """For each edge ``(rows[e], cols[e])``, the neighbours the two rows of ``idx`` share (float32).

    A neighbour listed twice in a row counts with its multiplicity, i.e. the count is
    ``sum_c m_r(c) * m_s(c)`` over the neighbour multiplicities ``m``: the same values as the
    row products of the sparse membership matrix, computed in blocks of edges (memory
    ``_EDGE_BLOCK`` x k^2 booleans) instead of a (n k) x n sparse gather (k^2 values per edge).
    """
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), _EDGE_BLOCK):
        stop = min(len(rows), start + _EDGE_BLOCK)
        a = idx[rows[start:stop]]
        b = idx[cols[start:stop]]
        out[start:stop] = (a[:, :, None] == b[:, None, :]).sum(axis=(1, 2))
    return out


def knn_clusters(idx: np.ndarray, *, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Louvain communities (0 = largest) of the Jaccard kNN graph of ``idx``."""
    import networkx as nx

    n = len(idx)
    graph = nx.from_scipy_sparse_array(jaccard_graph(idx))
    communities = nx.community.louvain_communities(graph, weight="weight", resolution=resolution,
                                                   seed=seed)
    labels = np.empty(n, dtype=np.int64)
    ordered = sorted(communities, key=lambda c: (-len(c), min(c)))
    for c, members in enumerate(ordered):
        labels[list(members)] = c
    return labels


def knn_umap(x: np.ndarray, idx: np.ndarray, sim: np.ndarray, *, min_dist: float = 0.1,
             seed: int = 0, n_epochs: int | None = None) -> np.ndarray:
    """UMAP coordinates (n, 2) from precomputed cosine neighbours (no second neighbour search)."""
    import umap

    n, k = idx.shape
    knn_i = np.hstack([np.arange(n)[:, None], idx]).astype(np.int64)
    knn_d = np.hstack([np.zeros((n, 1)), 1.0 - sim]).astype(np.float32)
    reducer = umap.UMAP(n_components=2, n_neighbors=k + 1, min_dist=min_dist, metric="cosine",
                        random_state=seed, precomputed_knn=(knn_i, knn_d, None), n_epochs=n_epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coords = reducer.fit_transform(np.asarray(x, dtype=np.float32))
    return np.asarray(coords, dtype=np.float64)
