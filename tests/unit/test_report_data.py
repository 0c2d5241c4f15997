"""Report data: plate matrices, Z' against hand computations, gallery selection, summaries."""

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.config import load_config
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.report import data as rd
from tests.unit.report_fixtures import report_screen  # noqa: F401  (fixture)


def _wells(names, **cols):
    df = pd.DataFrame({io.WELL: names})
    for k, v in cols.items():
        df[k] = v
    return df


# --- plate matrices -------------------------------------------------------------------------------
def test_plate_matrix_96_from_well_table():
    table = _wells(["A01", "H12", "C05"], v=[1.0, 2.0, 3.0])
    m = rd.plate_matrix(table, "v")
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
    m = rd.plate_matrix(table, "v")
    assert m.n_wells == 384 and m.shape == (16, 24)
    assert m.values[1, 2] == pytest.approx(2.5) and m.values[15, 23] == 7.0
    assert np.isnan(m.values[0, 0])  # a well whose only value is NaN has no data
    assert rd.plate_matrix(table, "v", agg="max").values[1, 2] == 4.0
    assert rd.plate_matrix(table, "flag").values[1, 2] == pytest.approx(0.5)


def test_plate_matrix_uses_row_col_columns_and_1536():
    table = pd.DataFrame({io.ROW: [31, 0], io.COL: [48, 1], "v": [5.0, 6.0]})
    m = rd.plate_matrix(table, "v")
    assert m.n_wells == 1536 and m.values[31, 47] == 5.0 and m.well(31, 47) == "AF48"


def test_plate_format_rules():
    assert rd.plate_format(_wells(["A01", "H12"])) == 96
    assert rd.plate_format(_wells(["I01"])) == 384  # row I does not exist on a 96-well plate
    assert rd.plate_format(_wells(["A13"])) == 384
    assert rd.plate_format(_wells(["A01"]), n_wells=384) == 384
    with pytest.raises(InputDataError, match="outside a 96-well plate"):
        rd.plate_format(_wells(["P24"]), n_wells=96)
    with pytest.raises(ConfigError, match="unknown plate format"):
        rd.plate_format(_wells(["A01"]), n_wells=100)
    with pytest.raises(ConfigError, match="aggregation"):
        rd.plate_matrix(_wells(["A01"], v=[1.0]), "v", agg="mode")


# --- Z' -------------------------------------------------------------------------------------------
def test_z_prime_matches_hand_computation():
    pos, neg = [10.0, 12.0, 14.0], [1.0, 2.0, 3.0]
    # mu_p 12, sd_p 2, mu_n 2, sd_n 1  ->  1 - 3 * 3 / 10
    assert rd.z_prime(pos, neg) == pytest.approx(0.1)
    assert rd.z_prime(neg, pos) == pytest.approx(0.1)  # symmetric
    # robust: medians 12 and 2, MADs 2 and 1 -> 1 - 3 * 1.4826 * 3 / 10
    assert rd.z_prime(pos, neg, robust=True) == pytest.approx(1 - 3 * 1.4826 * 3 / 10)
    assert rd.z_prime([1.0, np.nan, 3.0], [10.0, 10.0, 10.0, 10.0]) == pytest.approx(
        1 - 3 * np.sqrt(2) / 8
    )
    assert np.isnan(rd.z_prime([1.0], [2.0, 3.0]))
    assert np.isnan(rd.z_prime([1.0, 2.0], [1.0, 2.0]))
    assert rd.z_prime_verdict(0.7) == "excellent" and rd.z_prime_verdict(0.2) == "acceptable"
    assert rd.z_prime_verdict(-1) == "poor" and rd.z_prime_verdict(float("nan")) == "n/a"


def test_control_quality_on_a_well_summary():
    summary = pd.DataFrame(
        {
            io.PERT_TYPE: ["poscon"] * 3 + ["negcon"] * 3 + ["trt"],
            "r": [10.0, 12.0, 14.0, 1.0, 2.0, 3.0, 100.0],
        }
    )
    cq = rd.control_quality(summary, "r")
    assert (cq.n_poscon, cq.n_negcon) == (3, 3)
    assert cq.z_prime == pytest.approx(0.1) and cq.verdict == "acceptable"
    assert (cq.mean_poscon, cq.sd_poscon, cq.mean_negcon, cq.sd_negcon) == pytest.approx(
        (12, 2, 2, 1)
    )
    missing = rd.control_quality(summary, "nope")
    assert np.isnan(missing.z_prime) and "not available" in missing.note
    few = rd.control_quality(summary.iloc[2:], "r")
    assert np.isnan(few.z_prime) and "at least two" in few.note


def test_resolve_readout_order():
    s = pd.DataFrame({"Metadata_DNA_MeanIntensity": [1.0], "Metadata_Actin_MeanIntensity": [2.0]})
    assert rd.resolve_readout(s)[0] == "Metadata_DNA_MeanIntensity"
    s["Count_Nuclei"] = [3.0]
    assert rd.resolve_readout(s)[0] == "Count_Nuclei"
    s[io.NOVELTY_SCORE] = [np.nan]  # present but empty: skipped
    assert rd.resolve_readout(s)[0] == "Count_Nuclei"
    s[io.NOVELTY_SCORE] = [0.5]
    assert rd.resolve_readout(s) == (io.NOVELTY_SCORE, "auto: novelty score (novelty stage)")
    assert (
        rd.resolve_readout(s, "Metadata_Actin_MeanIntensity")[0] == "Metadata_Actin_MeanIntensity"
    )
    col, note = rd.resolve_readout(s, "Metadata_Mito_MeanIntensity")
    assert col is None and "not in the tables" in note
    assert rd.resolve_readout(s, dna_channel="Hoechst")[0] == io.NOVELTY_SCORE
    assert rd.resolve_readout(pd.DataFrame({"x": [1]}))[0] is None


# --- per-well summary on real QC output -------------------------------------------------------
def test_well_summary_from_real_qc(report_screen):  # noqa: F811
    qc = pd.read_parquet(report_screen.plate("SYN001", "qc.parquet"))
    counts = pd.read_parquet(report_screen.plate("SYN001", "segmentation.parquet"))
    wells = pd.read_parquet(report_screen.plate("SYN001", "wells.parquet"))
    novelty = pd.read_parquet(report_screen.novelty)
    s = rd.well_summary(qc, novelty=novelty, wells=wells, counts=counts)
    failed = qc[io.qc_columns(qc)].any(axis=1)
    assert len(s) == 96 and s[rd.SITES].sum() == len(qc)
    assert s[rd.SITES_FAILED].sum() == failed.sum() == 3
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
    assert "blurry (1)" in by_well.loc[blurry.iloc[0], rd.QC_REASONS]
    assert by_well[rd.FOCUS].idxmin() in set(blurry)  # the blurred sites have the lowest focus
    nov = novelty[novelty[io.PLATE] == "SYN001"].set_index(io.WELL)
    assert by_well[io.NOVELTY_SCORE].to_numpy() == pytest.approx(
        nov.loc[by_well.index, io.NOVELTY_SCORE].to_numpy()
    )
    assert by_well[rd.SITES_PROFILED].fillna(0).sum() == (~failed).sum()
    # input not mutated, no optional input needed
    assert list(qc.columns) == list(
        pd.read_parquet(report_screen.plate("SYN001", "qc.parquet")).columns
    )
    plain = rd.well_summary(qc)
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
    s = rd.well_summary(qc).set_index(io.WELL)
    assert s.loc["A01", "Count_Nuclei"] == 3.0 and np.isnan(s.loc["A02", "Count_Nuclei"])
    assert s.loc["A01", rd.SITES_FAILED] == 2 and s.loc["A01", rd.QC_REASONS] == "low_count (2)"


def test_well_summary_errors_and_pert_type_fill():
    with pytest.raises(InputDataError, match="Metadata_Well"):
        rd.well_summary(pd.DataFrame({"x": [1]}))
    with pytest.raises(InputDataError, match="no sites"):
        rd.well_summary(pd.DataFrame({io.WELL: []}))
    s = rd.well_summary(
        pd.DataFrame(
            {
                io.WELL: ["A01", "B02"],
                io.SITE: [1, 1],
                io.PERT_TYPE: ["trt", None],
                "QC_blurry": [False, True],
            }
        )
    )
    assert s[io.PERT_TYPE].tolist() == ["trt", "unknown"] and s[rd.QC_FAILED_FRACTION].tolist() == [
        0,
        1,
    ]


# --- gallery -------------------------------------------------------------------------------------
def _site_table():
    rows = []
    for well in ("A01", "A02", "B01", "B02", "C01"):
        for site in (1, 2):
            rows.append(
                {
                    io.PLATE: "P",
                    io.WELL: well,
                    io.SITE: site,
                    io.PERT_TYPE: "trt",
                    io.PERTURBATION: f"c-{well}",
                    "QC_blurry": False,
                    "QC_saturated": False,
                    "QC_empty": False,
                    "QC_unreadable": False,
                }
            )
    qc = pd.DataFrame(rows)
    qc.loc[(qc[io.WELL] == "A01") & (qc[io.SITE] == 1), "QC_blurry"] = True
    qc.loc[(qc[io.WELL] == "A02"), "QC_blurry"] = True
    qc.loc[(qc[io.WELL] == "B01") & (qc[io.SITE] == 2), ["QC_saturated", "QC_blurry"]] = True
    qc.loc[(qc[io.WELL] == "C01") & (qc[io.SITE] == 2), "QC_unreadable"] = True
    qc.loc[qc[io.WELL] == "B02", io.PERT_TYPE] = "negcon"
    return qc


def test_gallery_qc_failures_take_turns_by_flag():
    qc = _site_table()
    g = rd.select_gallery(qc, max_qc=3)
    assert g.n_qc_failed == 5 and len(g.items) == 3
    # one unreadable, one saturated (its primary flag), one blurry; in plate order
    assert g.items[[io.WELL, io.SITE]].values.tolist() == [["A01", 1], ["B01", 2], ["C01", 2]]
    assert g.items["reason"].tolist() == ["QC: blurry", "QC: saturated, blurry", "QC: unreadable"]
    assert set(g.items["kind"]) == {"qc"}
    assert len(rd.select_gallery(qc, max_qc=50).items) == 5
    assert rd.select_gallery(qc, max_qc=0).items.empty


def test_gallery_hits_by_q_then_score_on_first_passing_site():
    qc = _site_table()
    novelty = pd.DataFrame(
        {
            io.PLATE: ["P", "P", "P", "P", "Q"],
            io.WELL: ["A01", "A02", "B01", "B02", "A01"],
            io.PERT_TYPE: ["trt", "trt", "trt", "negcon", "trt"],
            io.NOVELTY_SCORE: [3.0, 5.0, 4.0, 1.0, 9.0],
            io.NOVELTY_QVALUE: [0.01, 0.01, 0.001, 0.9, 0.0001],
            io.NOVELTY_HIT: [True, True, True, False, True],
        }
    )
    g = rd.select_gallery(qc, novelty=novelty, max_qc=0, max_hits=2)
    assert g.n_hits == 3 and g.n_tested == 4 and not g.top_instead_of_hits
    assert g.items[io.WELL].tolist() == ["B01", "A02"]  # q 0.001 first, then the higher score
    # B01 site 2 failed QC: site 1 is shown; A02 failed on both sites: its first site
    assert g.items[io.SITE].tolist() == [1, 1]
    assert g.items["reason"].iloc[0] == "hit: score 4, q 0.001"
    a01 = rd.select_gallery(qc, novelty=novelty, max_qc=0, max_hits=3).items.set_index(io.WELL)
    assert a01.loc["A01", io.SITE] == 2  # A01 site 1 is blurry
    none = novelty.assign(**{io.NOVELTY_HIT: False})
    top = rd.select_gallery(qc, novelty=none, max_qc=0, max_hits=5)
    assert top.top_instead_of_hits and top.n_hits == 0
    assert set(top.items["kind"]) == {"top"} and "B02" not in set(top.items[io.WELL])  # no negcon
    assert top.items[io.WELL].tolist()[0] == "B01"


# --- summaries -----------------------------------------------------------------------------------
def test_plate_summary_counts(report_screen):  # noqa: F811
    qc = pd.read_parquet(report_screen.plate("SYN001", "qc.parquet"))
    novelty = pd.read_parquet(report_screen.novelty)
    s = rd.well_summary(qc, novelty=novelty)
    cq = rd.control_quality(s, io.NOVELTY_SCORE)
    p = rd.plate_summary(s, quality=cq)
    assert p["plate"] == "SYN001" and p["sites"] == 96 and p["wells"] == 96
    assert (p["wells_negcon"], p["wells_poscon"], p["wells_trt"]) == (20, 4, 72)
    assert p["sites_passed_qc"] == 93 and p["qc_pass_rate"] == pytest.approx(93 / 96)
    assert p["QC_blurry"] == 2 and p["QC_saturated"] == 1
    nov = novelty[novelty[io.PLATE] == "SYN001"]
    assert p["hits"] == int(nov[io.NOVELTY_HIT].sum()) and p["wells_tested"] == int(
        nov[io.NOVELTY_QVALUE].notna().sum()
    )
    assert p["z_prime"] == cq.z_prime and p["readout"] == io.NOVELTY_SCORE


def test_hit_list_sorted_and_requires_columns():
    nov = pd.DataFrame(
        {
            io.PLATE: ["P", "P", "Q"],
            io.WELL: ["A01", "A02", "A01"],
            io.NOVELTY_SCORE: [1.0, 3.0, 2.0],
            io.NOVELTY_QVALUE: [0.01, 0.01, 0.001],
            io.NOVELTY_HIT: [True, True, True],
        }
    )
    hits = rd.hit_list(nov)
    assert hits[[io.PLATE, io.WELL]].values.tolist() == [["Q", "A01"], ["P", "A02"], ["P", "A01"]]
    with pytest.raises(InputDataError, match="Metadata_Novelty_Hit"):
        rd.hit_list(nov.drop(columns=io.NOVELTY_HIT))


def test_moa_columns_fallbacks_and_cluster_table():
    moa = pd.DataFrame(
        {
            io.PERTURBATION: ["a", "b", "c", "d", "DMSO"],
            io.CONCENTRATION: [1.0, 1.0, 2.0, 1.0, 0.0],
            io.MOA: ["x", "x", "y", None, "control"],
            io.PERT_TYPE: ["trt", "trt", "trt", "trt", "negcon"],
            "cluster_label": [1, 1, 1, 2, 2],
            "umap1": [0.0, 1, 2, 3, 4],
            "UMAP_2": [0.0, 1, 2, 3, 4],
        }
    )
    cols = rd.moa_columns(moa)
    assert (cols.cluster, cols.umap_1, cols.umap_2, cols.treatment) == (
        "cluster_label",
        "umap1",
        "UMAP_2",
        None,
    )
    ct = rd.cluster_table(moa, cols).set_index("cluster")
    assert ct.loc[1, "treatments"] == 3 and ct.loc[1, "top_moa"] == "x"
    assert (
        ct.loc[1, "purity"] == pytest.approx(2 / 3)
        and ct.loc[1, "members"] == "a @ 1, b @ 1, c @ 2"
    )
    assert np.isnan(ct.loc[2, "purity"])  # only an unlabelled treatment and a negcon
    std = pd.DataFrame(
        {io.TREATMENT: ["a @ 1"], io.CLUSTER: [1], io.UMAP_1: [0.0], io.UMAP_2: [1.0]}
    )
    assert rd.moa_columns(std) == rd.MoaColumns(
        io.TREATMENT, io.CLUSTER, io.UMAP_1, io.UMAP_2, None, None, None
    )
    with pytest.raises(InputDataError, match="no cluster column"):
        rd.cluster_table(pd.DataFrame({io.PERTURBATION: ["a"]}))


def test_pca_2d_separates_a_plate_offset():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(0, 1, (60, 5)), columns=[f"f{i}" for i in range(5)])
    df.iloc[30:] += 5.0
    df.insert(0, io.PLATE, ["P1"] * 30 + ["P2"] * 30)
    df["const"] = 1.0
    pcs, var = rd.pca_2d(df)
    assert list(pcs.columns) == [io.PLATE, "PC1", "PC2"] and var[0] > 0.8
    sep = pcs.groupby(io.PLATE)["PC1"].mean()
    assert abs(sep["P1"] - sep["P2"]) > 8
    sub, _ = rd.pca_2d(df, max_points=20, seed=1)
    assert len(sub) == 20
    with pytest.raises(InputDataError, match="PCA"):
        rd.pca_2d(df[[io.PLATE, "f0"]])


def test_settings_defaults_match_schema():
    cfg = load_config(None)
    assert rd.ReportSettings.from_config(cfg["report"]) == rd.ReportSettings()
    with pytest.raises(ConfigError, match="unknown key"):
        rd.ReportSettings.from_config({"bogus": 1})
    with pytest.raises(ConfigError, match="thumbnail_format"):
        rd.ReportSettings.from_config({"thumbnail_format": "gif"})


def test_evaluation_rows():
    rows = rd.evaluation_rows(
        {"nsc": 0.5, "nscb": None, "nsc_details": {"a": 1}, "clustering": {"n_clusters": 4}}
    )
    assert [r[0] for r in rows] == ["nsc", "nscb", "clustering.n_clusters"]
