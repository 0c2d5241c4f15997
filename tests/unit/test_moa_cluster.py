"""Similarity, nearest neighbours, treatment medians, clustering and UMAP."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.moa.cluster import cluster_profiles, hierarchical_clusters
from cytoscreen.moa.embed import umap_embedding
from cytoscreen.moa.metrics import adjusted_rand_index
from cytoscreen.moa.similarity import (
    cosine_similarity,
    nearest_neighbors,
    top_k_similar,
    treatment_profiles,
)
from cytoscreen.plate import format_treatment as treatment_label
from tests.fixtures.moa import synthetic_treatments, synthetic_wells


def test_cosine_similarity_values_and_zero_rows():
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [-2.0, 0.0]])
    s = cosine_similarity(x)
    assert s[0, 1] == pytest.approx(1 / np.sqrt(2))
    assert s[0, 3] == pytest.approx(-1.0)
    assert (s[2] == 0).all()  # a zero profile has no direction


def test_top_k_and_nearest_neighbors():
    angles = np.deg2rad([0, 10, 30, 90])
    df = pd.DataFrame({"Metadata_name": list("abcd"), "f1": np.cos(angles), "f2": np.sin(angles)})
    idx, sim = top_k_similar(df[["f1", "f2"]].to_numpy(), 2, block=2)
    np.testing.assert_array_equal(idx, [[1, 2], [0, 2], [1, 0], [2, 1]])
    assert sim[0, 0] == pytest.approx(np.cos(np.deg2rad(10)))
    nn = nearest_neighbors(df, labels=df["Metadata_name"], k=4)
    assert list(nn[io.neighbor_column(1)]) == ["b", "a", "b", "c"]
    assert nn[io.neighbor_similarity_column(2)].iloc[3] == pytest.approx(np.cos(np.deg2rad(80)))
    # only 3 other rows: the 4th neighbour is empty
    assert nn[io.neighbor_column(4)].isna().all()
    assert nn[io.neighbor_similarity_column(4)].isna().all()


def test_treatment_profiles_median_and_constant_metadata():
    wells = synthetic_wells(n_moas=2, compounds_per_moa=2, doses=(1.0,), replicates=3, n_dmso=2)
    wells.loc[0, "DNA_f0"] = 1e6  # an outlier well does not move the median
    tr = treatment_profiles(wells, by=[io.PERTURBATION, io.CONCENTRATION])
    assert len(tr) == 5 and tr["Metadata_n_wells"].tolist() == [3, 3, 3, 3, 12]
    first = wells[wells[io.PERTURBATION] == "moa1-cpd1"]
    assert tr.loc[0, "DNA_f0"] == pytest.approx(first["DNA_f0"].median())
    assert tr.loc[0, "DNA_f0"] < 1e3
    # MoA and pert type are constant within treatments and kept; plates, wells and batches
    # (DMSO lies in both) are not
    assert {io.MOA, io.PERT_TYPE} <= set(tr.columns)
    assert not {io.PLATE, io.WELL, io.BATCH} & set(tr.columns)
    assert io.feature_columns(tr) == io.feature_columns(wells)


def test_treatment_label():
    assert treatment_label("taxol", 0.3) == "taxol @ 0.3"
    assert treatment_label("taxol", 3) == "taxol @ 3"
    assert treatment_label("DMSO", float("nan")) == "DMSO"


def test_hierarchical_recovers_synthetic_moas_with_silhouette_k():
    tr = synthetic_treatments(n_moas=6, per_moa=8, seed=0)
    res = cluster_profiles(tr, method="hierarchical")
    assert res.n_clusters == 6
    assert adjusted_rand_index(tr[io.MOA], res.labels) >= 0.9
    assert max(res.silhouette_by_k, key=res.silhouette_by_k.get) == 6
    # labels 1.. by decreasing size
    sizes = np.bincount(res.labels)[1:]
    assert (np.diff(sizes) <= 0).all()


def test_hierarchical_fixed_k():
    tr = synthetic_treatments(n_moas=6, per_moa=8, seed=1)
    res = cluster_profiles(tr, method="hierarchical", n_clusters=3)
    assert res.n_clusters == 3 and res.silhouette_by_k == {}


def test_louvain_recovers_synthetic_moas():
    tr = synthetic_treatments(n_moas=6, per_moa=8, seed=2)
    res = cluster_profiles(tr, method="louvain", n_neighbors=6, seed=0)
    assert adjusted_rand_index(tr[io.MOA], res.labels) >= 0.9
    again = cluster_profiles(tr, method="louvain", n_neighbors=6, seed=0)
    np.testing.assert_array_equal(res.labels, again.labels)


def test_clustering_tiny_and_bad_inputs():
    tr = synthetic_treatments(n_moas=2, per_moa=1)
    res = hierarchical_clusters(tr[["f0", "f1"]].to_numpy())
    assert res.labels.tolist() == [1, 2]
    with pytest.raises(ConfigError, match="unknown clustering method 'kmeans'"):
        cluster_profiles(synthetic_treatments(), method="kmeans")
    bad = synthetic_treatments()
    bad.loc[3, "f2"] = np.nan
    with pytest.raises(InputDataError, match="NaN"):
        cluster_profiles(bad)


@pytest.mark.slow
def test_umap_shape_and_determinism():
    tr = synthetic_treatments(n_moas=4, per_moa=6, seed=0)
    a = umap_embedding(tr, seed=0, n_neighbors=5)
    b = umap_embedding(tr, seed=0, n_neighbors=5)
    assert a.shape == (24, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    c = umap_embedding(tr, seed=1, n_neighbors=5)
    assert not np.allclose(a, c)


def test_umap_falls_back_to_pca_for_tiny_tables():
    tr = synthetic_treatments(n_moas=3, per_moa=1)
    out = umap_embedding(tr)
    assert out.shape == (3, 2) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, umap_embedding(tr))
