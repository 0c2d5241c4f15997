"""Normalization: values by hand, reference rules (negcon, DMSO fallback, all, query), bad input."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles import NORMALIZE_METHODS, normalize
from cytoscreen.profiles.normalize import fit_spherize
from tests.fixtures.profiles import bbbc021_wells, synthetic_wells


def well_table() -> pd.DataFrame:
    """Two plates; negcon values of x are 1, 2, 3, 10 on P1 (median 2.5, MAD 1)."""
    return pd.DataFrame(
        {
            io.PLATE: ["P1"] * 5 + ["P2"] * 3,
            io.WELL: ["A01", "A02", "A03", "A04", "B01", "A01", "A02", "B01"],
            io.PERT_TYPE: ["negcon"] * 4 + ["trt"] + ["negcon"] * 2 + ["trt"],
            "Metadata_extra": list("abcdefgh"),
            "x": np.array([1, 2, 3, 10, 6.5, 0, 2, 5], dtype=np.float32),
            "c": np.array([4, 4, 4, 4, 5, 1, 1, 1], dtype=np.float32),
        }
    )


def test_mad_robustize_by_hand():
    out = normalize(well_table())
    mad = 1.4826 * 1.0  # |1,2,3,10 - 2.5| = 1.5, .5, .5, 7.5 -> median 1.0
    assert out["x"].iloc[4] == pytest.approx((6.5 - 2.5) / mad, rel=1e-6)
    # P2: controls 0 and 2 -> median 1, MAD 1
    assert out["x"].iloc[7] == pytest.approx((5 - 1) / 1.4826, rel=1e-6)
    # constant control feature: divided by epsilon, not zero (0 stays 0)
    assert out["c"].iloc[0] == 0 and out["c"].iloc[4] == pytest.approx(1e18, rel=1e-6)
    assert list(out.columns) == list(well_table().columns)
    assert out["Metadata_extra"].tolist() == list("abcdefgh")
    assert out["x"].dtype == np.float32


def test_standardize_and_robustize_by_hand():
    ref = np.array([1, 2, 3, 10.0])
    out = normalize(well_table(), method="standardize")
    assert out["x"].iloc[4] == pytest.approx((6.5 - ref.mean()) / ref.std(), rel=1e-6)
    assert out["c"].iloc[4] == pytest.approx(1.0)  # constant: scale 1
    out = normalize(well_table(), method="robustize")
    q25, q75 = np.percentile(ref, [25, 75])
    assert out["x"].iloc[4] == pytest.approx((6.5 - 2.5) / (q75 - q25), rel=1e-6)


def test_reference_all_and_query_and_column():
    df = well_table()
    all_rows = normalize(df, reference="all", method="standardize")
    p1 = df["x"].iloc[:5].to_numpy(np.float64)
    assert all_rows["x"].iloc[0] == pytest.approx((1 - p1.mean()) / p1.std(), rel=1e-6)
    by_query = normalize(df, reference="Metadata_pert_type == 'negcon'")
    by_col = normalize(df, reference_column=io.PERT_TYPE, reference_value="negcon")
    default = normalize(df)
    pd.testing.assert_frame_equal(by_query, default)
    pd.testing.assert_frame_equal(by_col, default)


def test_whole_table_when_by_is_empty():
    out = normalize(well_table(), by=())
    ref = np.array([1, 2, 3, 10, 0, 2.0])
    med = np.median(ref)
    mad = np.median(np.abs(ref - med)) * 1.4826
    assert out["x"].iloc[4] == pytest.approx((6.5 - med) / mad, rel=1e-6)


def test_dmso_fallback_on_bbbc021(caplog):
    wells = bbbc021_wells()
    assert io.PERT_TYPE not in wells
    with caplog.at_level(logging.INFO):
        out = normalize(wells)
    assert "negcon reference rows are Metadata_Compound == 'DMSO' (18 rows)" in caplog.text
    dmso = out[wells["Metadata_Compound"] == "DMSO"]
    med = dmso.groupby(io.PLATE)["Nuclei_AreaShape_Area"].median()
    assert np.allclose(med.to_numpy(), 0, atol=1e-6)
    assert list(out.columns) == list(wells.columns)


def test_no_reference_column_is_a_clear_error():
    df = well_table().drop(columns=[io.PERT_TYPE])
    with pytest.raises(InputDataError, match="--reference-col COLUMN --reference-value VALUE"):
        normalize(df)


def test_no_negcon_value_lists_found_values(caplog):
    df = well_table()
    df[io.PERT_TYPE] = "control"
    with pytest.raises(InputDataError, match="values: control"):
        normalize(df)
    df[io.PERTURBATION] = ["DMSO"] * 4 + ["x"] + ["DMSO"] * 2 + ["y"]
    with caplog.at_level(logging.WARNING):
        out = normalize(df)  # falls back to the DMSO rows, with a warning
    pd.testing.assert_frame_equal(out.drop(columns=[io.PERTURBATION]),
                                  normalize(well_table()).assign(**{io.PERT_TYPE: "control"}))
    assert "negcon reference rows are Metadata_perturbation == 'DMSO'" in caplog.text


def test_plate_without_controls_is_named():
    df = well_table()
    df.loc[df[io.PLATE] == "P2", io.PERT_TYPE] = "trt"
    df.loc[1, io.PERT_TYPE] = "trt"
    with pytest.raises(InputDataError, match=r"1 plate\(s\) have fewer than 2 reference rows .*P2 \(0\)"):
        normalize(df)
    df.loc[df[io.PLATE] == "P2", io.PERT_TYPE] = ["negcon", "trt", "trt"]
    with pytest.raises(InputDataError, match=r"P2 \(1\)"):
        normalize(df)


def test_duplicate_wells_error():
    df = pd.concat([well_table(), well_table().iloc[[0]]])
    with pytest.raises(InputDataError, match="share their Metadata_Plate/Metadata_Well.*P1/A01"):
        normalize(df)


def test_nan_counted_and_kept_inf_rejected(caplog):
    df = well_table()
    df.loc[4, "x"] = np.nan
    with caplog.at_level(logging.WARNING):
        out = normalize(df)
    assert np.isnan(out["x"].iloc[4]) and "1 missing (NaN) feature value" in caplog.text
    df.loc[4, "x"] = np.inf
    with pytest.raises(InputDataError, match="infinite"):
        normalize(df)


def test_non_numeric_feature_and_unknown_method():
    df = well_table()
    df["compound"] = "x"
    with pytest.raises(InputDataError, match="not numeric"):
        normalize(df)
    with pytest.raises(ConfigError, match="unknown normalize method"):
        normalize(well_table(), method="zscore")


def test_input_not_mutated_and_row_order_kept():
    df = synthetic_wells(plates=2, wells=20).sample(frac=1, random_state=1)
    before = df.copy()
    for method in NORMALIZE_METHODS:
        if method == "spherize":
            continue
        out = normalize(df, method=method)
        assert out[io.WELL].tolist() == df[io.WELL].tolist()
    pd.testing.assert_frame_equal(df, before)



@pytest.mark.parametrize("method", ["mad_robustize", "standardize", "robustize"])
def test_plate_order_and_shuffled_rows_give_the_same_values(method):
    """Rows in plate order (one slice per plate) and shuffled (gathered rows) give bit-equal values,
    float32 and float64 tables alike (statistics in float64 from exact conversions)."""
    ordered = synthetic_wells(plates=3, wells=24).reset_index(drop=True)
    shuffled = ordered.sample(frac=1, random_state=3)
    feats = io.feature_columns(ordered)
    for table in (ordered, ordered.astype(dict.fromkeys(feats, np.float64))):
        a = normalize(table, method=method)
        b = normalize(table.loc[shuffled.index], method=method)
        b = b.set_axis(shuffled.index).loc[ordered.index].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    by_hand = normalize(well_table(), method="mad_robustize")
    assert by_hand["x"].tolist()[:5] == pytest.approx([-1.5 / 1.4826, -0.5 / 1.4826, 0.5 / 1.4826,
                                                      7.5 / 1.4826, 4 / 1.4826], rel=1e-6)

def test_spherize_errors_and_rank_deficient_regularization(caplog):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8))
    with caplog.at_level(logging.WARNING):
        fit = fit_spherize(x, [f"f{i}" for i in range(8)], method="ZCA")
    assert "5 reference rows for 8 features (rank 4)" in caplog.text
    z = fit.transform(x)
    assert np.isfinite(z).all()
    dup = np.column_stack([x[:, :3], x[:, 0]])
    big = np.vstack([dup, dup + rng.normal(size=dup.shape)])
    big[:, 3] = big[:, 0]
    with pytest.raises(InputDataError, match="not of full rank"):
        fit_spherize(big, list("abcd"), method="ZCA")
    const = rng.normal(size=(20, 3))
    const[:, 1] = 2.0
    with pytest.raises(InputDataError, match="constant in the reference"):
        fit_spherize(const, list("abc"), method="ZCA-cor")
    with pytest.raises(ConfigError, match="unknown spherize method"):
        fit_spherize(const, list("abc"), method="cholesky")
