"""Approximate cosine kNN (NN-descent) against the exact all-pairs neighbours."""

import numpy as np

from cytoscreen.moa.knn import cosine_knn, jaccard_graph, knn_clusters, recall
from cytoscreen.moa.similarity import top_k_similar


def _clustered(n=3000, d=32, centers=10, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)) * 3
    labels = rng.integers(0, centers, size=n)
    return (c[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def test_exact_below_threshold_is_top_k_similar():
    x, _ = _clustered(n=300)
    idx, sim, exact = cosine_knn(x, 5, exact_below=1000)
    ref_idx, ref_sim = top_k_similar(x, 5)
    assert exact
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sim, ref_sim)


def test_approximate_recall_at_least_0_9():
    x, _ = _clustered()
    idx, sim, exact = cosine_knn(x, 10, exact_below=100)
    ref_idx, ref_sim = top_k_similar(x, 10)
    assert not exact
    assert idx.shape == (3000, 10)
    assert not (idx == np.arange(3000)[:, None]).any()  # never the row itself
    assert recall(idx, ref_idx) >= 0.9
    # similarities are the cosine of the rows found
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(sim[:, 0], np.einsum("ij,ij->i", u, u[idx[:, 0]]), atol=1e-4)


def test_knn_clusters_recover_the_groups():
    x, labels = _clustered(n=600, centers=4, d=16)
    idx, _, _ = cosine_knn(x, 15)
    found = knn_clusters(idx)
    graph = jaccard_graph(idx)
    assert (graph != graph.T).nnz == 0
    # every true group lies (almost) within one found cluster
    for g in range(4):
        share = np.bincount(found[labels == g]).max() / (labels == g).sum()
        assert share > 0.95
