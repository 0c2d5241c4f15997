"""moa.knn in the MoA stage: approximate (NN-descent) neighbours, Louvain and UMAP on them, close
to the exact path; auto switches at the documented treatment count; the CLI reads the key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.errors import ConfigError
from cytoscreen.moa import metrics
from cytoscreen.moa.stage import MoaSettings, moa_table


def _treatments(n_moa=6, per_moa=60, n_feat=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_moa, n_feat)) * 3
    moa = np.repeat(np.arange(n_moa), per_moa)
    x = centres[moa] + rng.normal(size=(len(moa), n_feat))
    df = pd.DataFrame(x.astype(np.float32), columns=[f"f{j:02d}" for j in range(n_feat)])
    df.insert(0, io.PERTURBATION, [f"c{i:04d}" for i in range(len(df))])
    df.insert(1, io.MOA, [f"moa{m}" for m in moa])
    return df


def _neighbours(table, k):
    return table[[io.neighbor_column(r) for r in range(1, k + 1)]].to_numpy()


def test_approximate_neighbours_clusters_and_umap_track_the_exact_path():
    df = _treatments()
    exact = moa_table(df, knn="exact", cluster_method="louvain", neighbors=5, concentration_col=None)
    approx = moa_table(df, knn="approximate", cluster_method="hierarchical", neighbors=5,
                       concentration_col=None)
    a, e = _neighbours(approx.table, 5), _neighbours(exact.table, 5)
    recall = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a, e, strict=True)])
    assert recall >= 0.9
    sim_a = approx.table[io.neighbor_similarity_column(1)].to_numpy()
    sim_e = exact.table[io.neighbor_similarity_column(1)].to_numpy()
    assert np.all(sim_a <= sim_e + 1e-5) and np.mean(np.isclose(sim_a, sim_e, atol=1e-5)) >= 0.9
    # hierarchical needs all pairs: the approximate path clusters by Louvain on the kNN graph
    assert approx.clustering.method == "louvain" and approx.clustering.silhouette is None
    labels = approx.table[io.CLUSTER].to_numpy()
    assert labels.min() == 1 and np.bincount(labels)[1:].argmax() == 0  # 1 = largest
    assert metrics.adjusted_rand_index(df[io.MOA], labels) >= 0.9
    # UMAP on the same neighbours keeps the MoAs apart: each point's nearest embedded point
    xy = approx.table[[io.UMAP_1, io.UMAP_2]].to_numpy()
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    assert np.mean(df[io.MOA].to_numpy()[d.argmin(axis=1)] == df[io.MOA].to_numpy()) >= 0.95
    assert list(approx.table.columns) == list(exact.table.columns)


def test_auto_switches_at_exact_below(monkeypatch):
    import cytoscreen.moa.knn as knn

    df = _treatments(n_moa=3, per_moa=30)
    auto = moa_table(df, knn="auto", cluster_method="hierarchical", concentration_col=None)
    assert auto.clustering.method == "hierarchical"  # 90 treatments <= 20,000: exact
    monkeypatch.setattr(knn, "EXACT_BELOW", 50)
    auto = moa_table(df, knn="auto", cluster_method="hierarchical", concentration_col=None)
    assert auto.clustering.method == "louvain"
    with pytest.raises(ConfigError, match="moa.knn must be one of"):
        moa_table(df, knn="fast", concentration_col=None)
    assert MoaSettings().knn == "auto"


@pytest.mark.slow
def test_cli_reads_moa_knn(tmp_path):
    df = _treatments(n_moa=4, per_moa=25)
    wells = pd.concat([df.assign(**{io.PLATE: f"P{p}", io.WELL: [f"W{i}" for i in range(len(df))]})
                       for p in range(2)], ignore_index=True)
    wells[io.PERT_TYPE] = "trt"
    io.write_parquet(wells, tmp_path / "wells.parquet")
    io.write_parquet(df, tmp_path / "consensus.parquet")
    for mode in ("exact", "approximate"):
        cfg = tmp_path / f"{mode}.yaml"
        cfg.write_text(yaml.safe_dump({"moa": {"knn": mode, "null_size": 100}}))
        assert main(["moa", "--config", str(cfg), "--profiles", str(tmp_path / "wells.parquet"),
                     "--consensus", str(tmp_path / "consensus.parquet"), "--out",
                     str(tmp_path / f"{mode}.parquet"), "--evaluation",
                     str(tmp_path / f"{mode}.json")]) == 0
    exact, approx = (pd.read_parquet(tmp_path / f"{m}.parquet") for m in ("exact", "approximate"))
    assert len(exact) == len(approx) == 100
    recall = np.mean([len(set(x) & set(y)) / 5 for x, y in
                      zip(_neighbours(approx, 5), _neighbours(exact, 5), strict=True)])
    assert recall >= 0.9
