"""Report wells: plate matrices and formats, the per-well summary on real QC output."""

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.report import wells as rw


def _wells(names, **cols):
    df = pd.DataFrame({io.WELL: names})
    for k, v in cols.items():
        df[k] = v
    return df



# --- plate matrices -------------------------------------------------------------------------------
def test_plate_matrix_96_from_well_table():
    table = _wells(["A01", "H12", "C05"], v=[1.0, 2.0, 3.0])
    m = rw.plate_matrix(table, "v")
    assert m.n_wells == 96 and m.shape == (8, 12)
    assert m.values[0, 0] == 1.0 and m.values[7, 11] == 2.0 and m.values[2, 4] == 3.0
    assert np.isnan(m.values).sum() == 96 - 3
    assert m.row_labels[-1] == "H" and m.col_labels[-1] == 12 and m.well(2, 4) == "C05"


def test_plate_matrix_384_from_site_table_aggregates_sites():
    # P24 forces 384; two sites of B03 average, a bool column counts as 0/1
    table = pd.DataFrame(
        {
            io.WELL: ["B03", "B03", "P24", "A01"],
            io.SITE: [1, 2, 1, 1],
            "v": [1.0, 4.0, 7.0, np.nan],
            "flag": [True, False, True, False],
        }
    )
    m = rw.plate_matrix(table, "v")
    assert m.n_wells == 384 and m.shape == (16, 24)
    assert m.values[1, 2] == pytest.approx(2.5) and m.values[15, 23] == 7.0
    assert np.isnan(m.values[0, 0])  # a well whose only value is NaN has no data
    assert rw.plate_matrix(table, "v", agg="max").values[1, 2] == 4.0
    assert rw.plate_matrix(table, "flag").values[1, 2] == pytest.approx(0.5)


def test_plate_matrix_uses_row_col_columns_and_1536():
    table = pd.DataFrame({io.ROW: [31, 0], io.COL: [48, 1], "v": [5.0, 6.0]})
    m = rw.plate_matrix(table, "v")
    assert m.n_wells == 1536 and m.values[31, 47] == 5.0 and m.well(31, 47) == "AF48"


def test_plate_format_rules():
    assert rw.plate_format(_wells(["A01", "H12"])) == 96
    assert rw.plate_format(_wells(["I01"])) == 384  # row I does not exist on a 96-well plate
    assert rw.plate_format(_wells(["A13"])) == 384
    assert rw.plate_format(_wells(["A01"]), n_wells=384) == 384
    with pytest.raises(InputDataError, match="outside a 96-well plate"):
        rw.plate_format(_wells(["P24"]), n_wells=96)
    with pytest.raises(ConfigError, match="unknown plate format"):
        rw.plate_format(_wells(["A01"]), n_wells=100)
    with pytest.raises(ConfigError, match="aggregation"):
        rw.plate_matrix(_wells(["A01"], v=[1.0]), "v", agg="mode")


# --- per-well summary on real QC output -------------------------------------------------------
def test_well_summary_from_real_qc(report_screen):
    qc = pd.read_parquet(report_screen.plate("SYN001", "qc.parquet"))
    counts = pd.read_parquet(report_screen.plate("SYN001", "segmentation.parquet"))
    wells = pd.read_parquet(report_screen.plate("SYN001", "wells.parquet"))
    novelty = pd.read_parquet(report_screen.novelty)
    s = rw.well_summary(qc, novelty=novelty, wells=wells, counts=counts)
    failed = qc[io.qc_columns(qc)].any(axis=1)
    assert len(s) == 96 and s[rw.SITES].sum() == len(qc)
    assert s[rw.SITES_FAILED].sum() == failed.sum() == 3
    assert s["QC_blurry"].sum() == qc["QC_blurry"].sum() and s["QC_saturated"].sum() == 1
    assert (s[io.WELL].iloc[:2] == ["A01", "A02"]).all() and s[io.ROW].iloc[0] == 0
    # intensity and counts average QC-passed sites only: failing wells (one site each) are NaN
    bad = set(qc.loc[failed, io.WELL])
    by_well = s.set_index(io.WELL)
    assert by_well.loc[sorted(bad), "Metadata_DNA_MeanIntensity"].isna().all()
    good = qc[~failed].set_index(io.WELL)
    assert by_well.loc[good.index, "Metadata_DNA_MeanIntensity"].to_numpy() == pytest.approx(
        good["Metadata_DNA_MeanIntensity"].to_numpy()
    )
    truth = counts.set_index(io.WELL)["Count_Nuclei"]
    assert by_well.loc[good.index, "Count_Nuclei"].to_numpy() == pytest.approx(
        truth.loc[good.index].to_numpy()
    )
    blurry = qc.loc[qc["QC_blurry"], io.WELL]
    assert "blurry (1)" in by_well.loc[blurry.iloc[0], rw.QC_REASONS]
    assert by_well[rw.FOCUS].idxmin() in set(blurry)  # the blurred sites have the lowest focus
    nov = novelty[novelty[io.PLATE] == "SYN001"].set_index(io.WELL)
    assert by_well[io.NOVELTY_SCORE].to_numpy() == pytest.approx(
        nov.loc[by_well.index, io.NOVELTY_SCORE].to_numpy()
    )
    assert by_well[rw.SITES_PROFILED].fillna(0).sum() == (~failed).sum()
    # input not mutated, no optional input needed
    assert list(qc.columns) == list(
        pd.read_parquet(report_screen.plate("SYN001", "qc.parquet")).columns
    )
    plain = rw.well_summary(qc)
    assert "Count_Nuclei" not in plain.columns and io.NOVELTY_SCORE not in plain.columns


def test_low_count_flag_fails_qc_but_keeps_the_count():
    qc = pd.DataFrame(
        {
            io.WELL: ["A01", "A01", "A02"],
            io.SITE: [1, 2, 1],
            io.PERT_TYPE: "trt",
            "Metadata_Count_Nuclei": pd.array([2, 4, 50], dtype="Int64"),
            "QC_blurry": [False, False, True],
            "QC_low_count": [True, True, False],
        }
    )
    s = rw.well_summary(qc).set_index(io.WELL)
    assert s.loc["A01", "Count_Nuclei"] == 3.0 and np.isnan(s.loc["A02", "Count_Nuclei"])
    assert s.loc["A01", rw.SITES_FAILED] == 2 and s.loc["A01", rw.QC_REASONS] == "low_count (2)"


def test_well_summary_errors_and_pert_type_fill():
    with pytest.raises(InputDataError, match="Metadata_Well"):
        rw.well_summary(pd.DataFrame({"x": [1]}))
    with pytest.raises(InputDataError, match="no sites"):
        rw.well_summary(pd.DataFrame({io.WELL: []}))
    s = rw.well_summary(
        pd.DataFrame(
            {
                io.WELL: ["A01", "B02"],
                io.SITE: [1, 1],
                io.PERT_TYPE: ["trt", None],
                "QC_blurry": [False, True],
            }
        )
    )
    assert s[io.PERT_TYPE].tolist() == ["trt", "unknown"] and s[rw.QC_FAILED_FRACTION].tolist() == [
        0,
        1,
    ]


def test_pert_types_follow_the_negcon_rule():
    s = rw.well_summary(
        _wells(
            ["A01", "A02", "A03", "A04", "A05"],
            **{io.SITE: 1, io.PERT_TYPE: [" NegCon", "negcon", "POSCON", None, "trt"]},
        )
    )
    assert s[io.PERT_TYPE].tolist() == ["negcon", "negcon", "poscon", "unknown", "trt"]
    vehicle = rw.well_summary(_wells(["A01", "A02"], **{io.SITE: 1, io.PERTURBATION: ["DMSO", "taxol"]}))
    assert vehicle[io.PERT_TYPE].tolist() == ["negcon", "unknown"]
