"""cytoscreen export anndata: round trip through anndata.read_h5ad, var annotation, provenance, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.errors import InputDataError
from cytoscreen.export.anndata import feature_annotation, to_anndata

anndata = pytest.importorskip("anndata")


def _profiles(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        io.PLATE: pd.Categorical(["P1"] * n),
        io.WELL: [f"A{i + 1:02d}" for i in range(n)],
        io.PERT_TYPE: pd.Categorical(["negcon", "trt"] * (n // 2), categories=["negcon", "poscon", "trt"]),
        io.CONCENTRATION: np.linspace(0.0, 1.0, n),
        io.N_SITES: np.arange(n, dtype=np.int64),
        io.COUNT_NUCLEI: pd.array([5, None, 7, 8, 9, 10], dtype="Int64"),
        "QC_blurry": [False, True, False, False, False, False],
    })
    for ch in ("DNA", "Cell_Mask"):
        for i in range(3):
            df[f"{ch}_efficientnet_lite0_{i:04d}"] = rng.normal(size=n).astype(np.float32)
        df[f"{ch}_efficientnet_lite0_mid_0000"] = rng.normal(size=n).astype(np.float32)
    df["Cells_AreaShape_Area"] = rng.normal(size=n)  # a CellProfiler-style feature (float64)
    return df


def test_round_trip_values_obs_var_uns(tmp_path):
    df = _profiles()
    src = tmp_path / "wells.parquet"
    prov = io.provenance("profiles.normalize", upstream={"stage": "features", "backbone": "efficientnet_lite0",
                                                       "channels": ["DNA", "Cell_Mask"], "plate": None})
    io.write_parquet(df, src, provenance=prov)
    out = tmp_path / "out" / "wells.h5ad"
    assert main(["export", "anndata", str(src), str(out)]) == 0
    ad = anndata.read_h5ad(out)
    feats = io.feature_columns(df)
    assert ad.X.dtype == np.float32
    np.testing.assert_array_equal(ad.X, df[feats].to_numpy(np.float32))
    assert list(ad.var_names) == feats
    assert list(ad.obs_names) == [f"P1_A{i + 1:02d}" for i in range(6)]
    # obs: every Metadata_/QC_ column, categoricals kept with their categories, values equal
    assert list(ad.obs.columns) == io.metadata_columns(df) + io.qc_columns(df)
    assert isinstance(ad.obs[io.PERT_TYPE].dtype, pd.CategoricalDtype)
    assert list(ad.obs[io.PERT_TYPE].cat.categories) == ["negcon", "poscon", "trt"]
    assert list(ad.obs[io.PERT_TYPE]) == list(df[io.PERT_TYPE])
    assert list(ad.obs[io.WELL]) == list(df[io.WELL])
    np.testing.assert_array_equal(ad.obs[io.CONCENTRATION].to_numpy(), df[io.CONCENTRATION].to_numpy())
    assert ad.obs[io.COUNT_NUCLEI].isna().tolist() == [False, True, False, False, False, False]
    assert ad.obs[io.COUNT_NUCLEI].iloc[2] == 7
    assert ad.obs["QC_blurry"].tolist() == df["QC_blurry"].tolist()
    # var: channel names with "_" parsed through the provenance's channel list
    var = ad.var
    assert var.loc["Cell_Mask_efficientnet_lite0_0002", "channel"] == "Cell_Mask"
    assert var.loc["Cell_Mask_efficientnet_lite0_0002", "backbone"] == "efficientnet_lite0"
    assert var.loc["Cell_Mask_efficientnet_lite0_0002", "index"] == 2
    assert var.loc["DNA_efficientnet_lite0_mid_0000", "layer"] == "mid"
    assert var.loc["DNA_efficientnet_lite0_0001", "layer"] == "final"
    assert pd.isna(var.loc["Cells_AreaShape_Area", "channel"])
    assert (var["channel"] == "DNA").sum() == 4
    # uns: the source provenance (None values dropped) and the export's own record
    uns = ad.uns["provenance"]
    assert uns["source"]["stage"] == "profiles.normalize"
    assert uns["source"]["upstream"]["backbone"] == "efficientnet_lite0"
    assert list(uns["source"]["upstream"]["channels"]) == ["DNA", "Cell_Mask"]
    assert "plate" not in uns["source"]["upstream"]
    assert uns["export"]["stage"] == "export.anndata"
    assert uns["export"]["source"] == str(src)


def test_feature_annotation_without_provenance():
    var = feature_annotation(["DNA_efficientnet_lite0_0007", "ER_timm_resnet18_mid_0012", "Nuclei_Area"])
    assert var["channel"].tolist()[:2] == ["DNA", "ER"]
    assert var["backbone"].tolist()[:2] == ["efficientnet_lite0", "timm_resnet18"]
    assert var["index"].tolist()[:2] == [7, 12]
    assert var["layer"].tolist()[:2] == ["final", "mid"]
    assert var.iloc[2].isna().all()


def test_obs_names_fall_back_to_row_numbers():
    df = _profiles().assign(**{io.WELL: "A01"})  # duplicate (plate, well): not a usable key
    ad = to_anndata(df)
    assert list(ad.obs_names) == [str(i) for i in range(6)]


def test_errors(tmp_path, capsys):
    df = _profiles()
    src = tmp_path / "p.parquet"
    io.write_parquet(df, src)
    assert main(["export", "anndata", str(src), str(tmp_path / "p.zarr")]) == 3
    assert "must end in .h5ad" in capsys.readouterr().err
    assert main(["export", "anndata", str(tmp_path / "missing.parquet"), str(tmp_path / "x.h5ad")]) == 4
    assert "missing.parquet: file not found" in capsys.readouterr().err
    bad = df.assign(Cells_Label=["a"] * 6)
    io.write_parquet(bad, tmp_path / "bad.parquet")
    assert main(["export", "anndata", str(tmp_path / "bad.parquet"), str(tmp_path / "bad.h5ad")]) == 4
    err = capsys.readouterr().err
    assert "bad.parquet" in err and "Cells_Label" in err and "Traceback" not in err
    assert not (tmp_path / "bad.h5ad").exists()
    with pytest.raises(InputDataError, match="no feature columns"):
        to_anndata(df[io.metadata_columns(df)])
