"""`cytoscreen moa`: moa.parquet and evaluation.json from screen tables and the config."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.moa.similarity import treatment_profiles
from cytoscreen.moa.stage import cluster_agreement, moa_table
from tests.fixtures.moa import synthetic_wells


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """feature_selected.parquet (wells), consensus.parquet and residuals.parquet."""
    root = tmp_path_factory.mktemp("screen")
    wells = synthetic_wells(seed=5, n_moas=5, compounds_per_moa=3)
    cons = treatment_profiles(wells, by=[io.PERTURBATION, io.CONCENTRATION])
    io.write_parquet(wells, root / "feature_selected.parquet")
    io.write_parquet(cons, root / "consensus.parquet")
    resid = wells.copy()
    feats = io.feature_columns(wells)
    resid[feats] = wells[feats] * 0.5  # a stand-in for novelty residuals (same columns)
    io.write_parquet(resid, root / "residuals.parquet")
    return root, wells, cons


def _config(path, **moa):
    path.write_text(yaml.safe_dump({"moa": {"null_size": 200, **moa}}))
    return str(path)


def _moa_args(root, cfg, out):
    return [
        "moa",
        "--config",
        cfg,
        "--profiles",
        str(root / "feature_selected.parquet"),
        "--consensus",
        str(root / "consensus.parquet"),
        "--out",
        str(out / "moa.parquet"),
        "--evaluation",
        str(out / "evaluation.json"),
    ]


@pytest.mark.slow
def test_moa_command_writes_tables(screen, tmp_path):
    root, wells, cons = screen
    cfg = _config(tmp_path / "c.yaml", neighbors=3)
    assert main(_moa_args(root, cfg, tmp_path)) == 0
    moa = pd.read_parquet(tmp_path / "moa.parquet")
    assert len(moa) == len(cons) == 31
    assert io.feature_columns(moa) == []  # every column is Metadata_*
    for col in (io.TREATMENT, io.CLUSTER, io.UMAP_1, io.UMAP_2, io.MOA, io.PERTURBATION):
        assert col in moa.columns
    assert io.neighbor_column(3) in moa.columns and io.neighbor_column(4) not in moa.columns
    assert moa[io.TREATMENT].iloc[0] == "moa1-cpd1 @ 1"
    assert set(moa[io.neighbor_column(1)]) <= set(moa[io.TREATMENT])
    sims = moa[[io.neighbor_similarity_column(i) for i in (1, 2, 3)]].to_numpy()
    assert (np.diff(sims, axis=1) <= 1e-12).all()
    assert np.isfinite(moa[[io.UMAP_1, io.UMAP_2]].to_numpy()).all()
    assert io.read_provenance(tmp_path / "moa.parquet")["stage"] == "moa"
    ev = json.loads((tmp_path / "evaluation.json").read_text())
    assert {"nsc", "nscb", "map_replicate", "map_moa", "cluster_ari"} <= set(ev)
    assert ev["cluster_ari"] >= 0.9 and ev["clustering"]["k_choice"] == "silhouette"
    assert ev["nsc"] == 1.0 and ev["representation"] == "profiles"
    assert ev["treatment_profiles"].endswith("consensus.parquet")

    # same seed, same table (UMAP and clusters are deterministic)
    out2 = tmp_path / "again"
    out2.mkdir()
    assert main(_moa_args(root, cfg, out2)) == 0
    pd.testing.assert_frame_equal(moa, pd.read_parquet(out2 / "moa.parquet"))

    # residual representation
    cfg_r = _config(tmp_path / "r.yaml", representation="residuals", cluster_method="louvain")
    out3 = tmp_path / "resid"
    args = [
        "moa", "--config", cfg_r, "--residuals", str(root / "residuals.parquet"),
        "--out", str(out3 / "moa.parquet"), "--evaluation", str(out3 / "evaluation.json"),
    ]  # fmt: skip
    assert main(args) == 0
    ev = json.loads((out3 / "evaluation.json").read_text())
    assert ev["representation"] == "residuals" and ev["clustering"]["method"] == "louvain"
    assert ev["treatment_profiles"].startswith("median of")


def test_moa_table_and_agreement_without_umap_cost():
    wells = synthetic_wells(seed=2, n_moas=2, compounds_per_moa=1, doses=(1.0,))
    cons = treatment_profiles(wells, by=[io.PERTURBATION, io.CONCENTRATION])
    res = moa_table(cons, neighbors=2, n_clusters=3)  # 3 treatments: PCA stands in for UMAP
    t = res.table
    assert list(t[io.TREATMENT]) == ["moa1-cpd1 @ 1", "moa2-cpd1 @ 1", "DMSO @ 0"]
    assert t[io.CLUSTER].tolist() == [1, 2, 3]
    agree = cluster_agreement(t)
    assert agree["n_treatments"] == 2 and agree["ari"] == pytest.approx(1.0)
    dup = pd.concat([cons, cons.iloc[[0]]], ignore_index=True)
    with pytest.raises(Exception, match="appears more than once"):
        moa_table(dup)


def test_moa_residuals_needs_table(screen, tmp_path, capsys):
    root, _, _ = screen
    cfg = _config(tmp_path / "c.yaml", representation="residuals")
    rc = main(_moa_args(root, cfg, tmp_path))
    err = capsys.readouterr().err
    assert rc == 3 and "--residuals" in err and "Traceback" not in err


def test_moa_bad_config_key(screen, tmp_path, capsys):
    root, _, _ = screen
    cfg = _config(tmp_path / "c.yaml", n_cluster=4)
    rc = main(_moa_args(root, cfg, tmp_path))
    err = capsys.readouterr().err
    assert rc == 3 and "n_cluster" in err and "Traceback" not in err


def test_moa_schema_defaults_match_evaluate_cli():
    from cytoscreen.cli import build_parser
    from cytoscreen.config import load_config

    cfg = load_config()["moa"]
    parser = build_parser()
    ns = parser.parse_args(["evaluate", "t.csv", "--out", "e.json"])
    assert (ns.null_size, ns.seed, ns.fdr) == (cfg["null_size"], cfg["seed"], cfg["fdr"])


def test_checked_features_raises_as_feature_matrix():
    """moa_table checks its features block by block (no float64 copy): same columns, same errors."""
    import re

    from cytoscreen.errors import InputDataError
    from cytoscreen.moa.similarity import checked_features, feature_matrix

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(20, 9)).astype(np.float32), columns=[f"f{i}" for i in range(9)])
    df.insert(0, io.PERTURBATION, [f"c{i}" for i in range(20)])
    assert checked_features(df, block=2) == feature_matrix(df)[1]
    bad = df.copy()
    bad.loc[3, "f5"] = np.nan
    bad.loc[[4, 6], "f7"] = np.inf
    for args in ((bad, None), (bad, ["f1", "f7"]), (df, ["f1", "nope"]), (df[[io.PERTURBATION]], None)):
        with pytest.raises(InputDataError) as want:
            feature_matrix(*args, source="t")
        with pytest.raises(InputDataError, match=re.escape(str(want.value))):
            checked_features(*args, source="t", block=2)
