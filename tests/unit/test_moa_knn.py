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


def test_jaccard_graph_counts_shared_neighbours_as_the_sparse_product():
    """The blocked count equals the row products of the sparse membership matrix (the former
    computation), duplicate neighbours (NN-descent padding) included: same graph, same dtype."""
    from scipy import sparse

    from cytoscreen.moa import knn

    rng = np.random.default_rng(3)
    n, k = 700, 6
    idx = rng.integers(0, n, size=(n, k))
    idx[::5, -1] = idx[::5, -2]  # a padded row repeats its last neighbour
    rows, cols = np.repeat(np.arange(n), k), idx.ravel()
    member = sparse.csr_matrix((np.ones(n * k, dtype=np.float32), (rows, cols)), shape=(n, n))
    ref = np.asarray(member[rows].multiply(member[cols]).sum(axis=1)).ravel()
    old_block, knn._EDGE_BLOCK = knn._EDGE_BLOCK, 97  # several blocks
    try:
        inter = knn.shared_neighbors(idx, rows, cols)
        graph = jaccard_graph(idx)
    finally:
        knn._EDGE_BLOCK = old_block
    assert inter.dtype == ref.dtype == np.float32 and np.array_equal(inter, ref) and ref.max() >= 2
    w = np.maximum(ref / (2 * k - ref), 1.0 / (2 * k))
    expect = sparse.csr_matrix((w, (rows, cols)), shape=(n, n))
    expect = expect.maximum(expect.T)
    assert graph.dtype == expect.dtype and (graph != expect).nnz == 0


def test_unit_rows32_equals_the_float64_path_bit_for_bit():
    from cytoscreen.moa.knn import unit_rows32
    from cytoscreen.moa.similarity import unit_rows

    x, _ = _clustered(n=500, d=40)
    x[7] = 0  # a zero row stays zero
    for a in (x, x.astype(np.float64)):
        ref = unit_rows(np.asarray(a, dtype=np.float32)).astype(np.float32)
        got = unit_rows32(a)
        assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), ref.view(np.int32))
