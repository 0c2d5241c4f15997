"""Feature selection: each rule on tables whose answer is known, the record, bad options."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles import SELECT_OPERATIONS, apply_selection, feature_select
from cytoscreen.profiles.select import correlation_matrix, variance_exclude


def table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n)
    df = pd.DataFrame(
        {
            io.PLATE: ["P1"] * (n // 2) + ["P2"] * (n - n // 2),
            io.WELL: [f"W{i:03d}" for i in range(n)],
            io.PERT_TYPE: ["negcon", "trt"] * (n // 2),
            "good": rng.normal(size=n),
            "twin": base,
            "twin_copy": base * 2 + rng.normal(0, 0.01, n),  # r > 0.99 with twin
            "anti": -base + rng.normal(0, 0.01, n),  # r < -0.99: kept (pycytominer: signed)
            "rare": np.r_[np.ones(n - 5), np.zeros(5)],  # freq ratio 5/195 < 0.05
            "few": np.arange(n) % 2,  # 2 distinct values / 200 rows = 0.01: kept (not < 0.01)
            "holes": np.where(np.arange(n) % 10 == 0, np.nan, rng.normal(size=n)),  # 10% NaN
            "big": np.r_[rng.normal(size=n - 1), 600.0],
        }
    )
    feats = io.feature_columns(df)
    df[feats] = df[feats].astype(np.float32)
    return df


def test_each_operation():
    df = table()
    sel = feature_select(df, operations=["variance_threshold"])
    assert sel.operations[0].dropped == ("rare",)
    sel = feature_select(df, operations=["drop_na_columns"])
    assert sel.operations[0].dropped == ("holes",)
    sel = feature_select(df, operations=["drop_na_columns"], na_cutoff=0.2)
    assert sel.operations[0].dropped == ()
    sel = feature_select(df, operations=["drop_outliers"])
    assert sel.operations[0].dropped == ("big",)
    sel = feature_select(df.drop(columns=["holes"]), operations=["correlation_threshold"])
    assert len(sel.operations[0].dropped) == 1
    assert sel.operations[0].dropped[0] in ("twin", "twin_copy")
    assert "anti" in sel.kept
    sel = feature_select(df, operations=["blocklist"], blocklist=["good", "tw*"])
    assert sel.operations[0].dropped == ("good", "twin", "twin_copy")


def test_operations_run_in_order_and_record():
    df = table()
    sel = feature_select(df, operations=["drop_na_columns", "variance_threshold",
                                         "correlation_threshold"])
    rec = sel.record()
    assert [o["operation"] for o in rec["operations"]] == ["drop_na_columns",
                                                            "variance_threshold",
                                                            "correlation_threshold"]
    assert rec["operations"][1]["n_before"] == rec["operations"][0]["n_after"]
    assert rec["kept"] == list(sel.kept)
    assert rec["n_features_in"] == 8
    tab = sel.table()
    assert tab.loc[tab.feature == "holes", "dropped_by"].item() == "drop_na_columns"
    assert tab["kept"].sum() == len(sel.kept)
    # rows and metadata untouched, features float32 and in table order
    out = sel.profiles
    assert out[io.WELL].tolist() == df[io.WELL].tolist()
    assert io.feature_columns(out) == list(sel.kept)
    assert (out[list(sel.kept)].dtypes == np.float32).all()


def test_variance_threshold_counts_like_pycytominer_definition():
    x = np.array([[1, 1, 1, 1, 2, np.nan]]).T.astype(np.float64)
    # counts 4 and 1 -> 0.25 >= 0.05; unique 2/6 >= 0.01 -> kept
    assert variance_exclude(x, ["a"]) == []
    assert variance_exclude(x, ["a"], freq_cut=0.3) == ["a"]
    assert variance_exclude(np.full((4, 1), np.nan), ["a"]) == ["a"]


def test_correlation_matrix_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 7)).astype(np.float32)
    x[:, 6] = 1.0
    ours = correlation_matrix(x)
    ref = np.corrcoef(x[:, :6].T.astype(np.float64))
    np.testing.assert_allclose(ours[:6, :6], ref, atol=1e-10)
    assert np.isnan(ours[6]).all()
    spear = correlation_matrix(x[:, :6], method="spearman")
    ref = pd.DataFrame(x[:, :6]).corr(method="spearman").to_numpy()
    np.testing.assert_allclose(spear, ref, atol=1e-10)


def test_samples_negcon_uses_reference_rows_only():
    df = table()
    df.loc[df[io.PERT_TYPE] == "trt", "good"] = 1.0  # constant only among treatments
    sel = feature_select(df, operations=["variance_threshold"], samples="negcon")
    assert "good" in sel.kept
    assert sel.n_samples == 100


def test_apply_selection():
    df = table()
    out = apply_selection(df, ["twin", "good"])
    assert io.feature_columns(out) == ["twin", "good"]
    with pytest.raises(InputDataError, match="not in the table"):
        apply_selection(df, ["nope"])


def test_bad_options():
    df = table()
    with pytest.raises(ConfigError, match="unknown feature selection operation"):
        feature_select(df, operations=["pca"])
    with pytest.raises(ConfigError, match="blocklist operation needs feature names"):
        feature_select(df, operations=["blocklist"])
    with pytest.raises(ConfigError, match="between 0 and 1"):
        feature_select(df, operations=["correlation_threshold"], corr_threshold=2)
    with pytest.raises(ConfigError, match="unknown correlation method"):
        feature_select(df, operations=["correlation_threshold"], corr_method="kendall")
    dup = pd.concat([df, df.iloc[[0]]])
    with pytest.raises(InputDataError, match="share their"):
        feature_select(dup)
    assert set(SELECT_OPERATIONS) >= {"variance_threshold", "correlation_threshold",
                                      "drop_na_columns", "blocklist", "drop_outliers"}


def test_variance_threshold_random_tables_match_the_definition():
    """pycytominer's rule with pandas' value_counts/nunique, on tables full of ties and NaN."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, f = int(rng.integers(1, 30)), int(rng.integers(1, 6))
        x = rng.integers(0, int(rng.integers(1, 6)), (n, f)).astype(float)
        x[rng.random((n, f)) < 0.2] = np.nan
        names = [f"f{j}" for j in range(f)]
        df = pd.DataFrame(x, columns=names)

        def freq(col: pd.Series) -> float:
            counts = col.value_counts()
            return 0.0 if len(counts) < 2 else counts.iloc[1] / counts.iloc[0]

        expected = [c for c in names if freq(df[c]) < 0.5 or df[c].nunique() / n < 0.1]
        assert variance_exclude(x, names, freq_cut=0.5, unique_cut=0.1) == expected
