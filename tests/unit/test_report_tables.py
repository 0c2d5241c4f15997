"""Report tables: gallery selection, plate summary, hit list, clusters, PCA, settings."""

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.config import load_config
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.report import controls as rc
from cytoscreen.report import gallery as rg
from cytoscreen.report import tables as rt
from cytoscreen.report import wells as rw
from cytoscreen.report.settings import ReportSettings


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
    g = rg.select_gallery(qc, max_qc=3)
    assert g.n_qc_failed == 5 and len(g.items) == 3
    # one unreadable, one saturated (its primary flag), one blurry; in plate order
    assert g.items[[io.WELL, io.SITE]].values.tolist() == [["A01", 1], ["B01", 2], ["C01", 2]]
    assert g.items["reason"].tolist() == ["QC: blurry", "QC: saturated, blurry", "QC: unreadable"]
    assert set(g.items["kind"]) == {"qc"}
    assert len(rg.select_gallery(qc, max_qc=50).items) == 5
    assert rg.select_gallery(qc, max_qc=0).items.empty


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
    g = rg.select_gallery(qc, novelty=novelty, max_qc=0, max_hits=2)
    assert g.n_hits == 3 and g.n_tested == 4 and not g.top_instead_of_hits
    assert g.items[io.WELL].tolist() == ["B01", "A02"]  # q 0.001 first, then the higher score
    # B01 site 2 failed QC: site 1 is shown; A02 failed on both sites: its first site
    assert g.items[io.SITE].tolist() == [1, 1]
    assert g.items["reason"].iloc[0] == "hit: score 4, q 0.001"
    a01 = rg.select_gallery(qc, novelty=novelty, max_qc=0, max_hits=3).items.set_index(io.WELL)
    assert a01.loc["A01", io.SITE] == 2  # A01 site 1 is blurry
    none = novelty.assign(**{io.NOVELTY_HIT: False})
    top = rg.select_gallery(qc, novelty=none, max_qc=0, max_hits=5)
    assert top.top_instead_of_hits and top.n_hits == 0
    assert set(top.items["kind"]) == {"top"} and "B02" not in set(top.items[io.WELL])  # no negcon
    assert top.items[io.WELL].tolist()[0] == "B01"


# --- summaries -----------------------------------------------------------------------------------
def test_plate_summary_counts(report_screen):
    qc = pd.read_parquet(report_screen.plate("SYN001", "qc.parquet"))
    novelty = pd.read_parquet(report_screen.novelty)
    s = rw.well_summary(qc, novelty=novelty)
    cq = rc.control_quality(s, io.NOVELTY_SCORE)
    p = rt.plate_summary(s, quality=cq)
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
    hits = rt.hit_list(nov)
    assert hits[[io.PLATE, io.WELL]].values.tolist() == [["Q", "A01"], ["P", "A02"], ["P", "A01"]]
    with pytest.raises(InputDataError, match="Metadata_Novelty_Hit"):
        rt.hit_list(nov.drop(columns=io.NOVELTY_HIT))


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
    cols = rt.moa_columns(moa)
    assert (cols.cluster, cols.umap_1, cols.umap_2, cols.treatment) == (
        "cluster_label",
        "umap1",
        "UMAP_2",
        None,
    )
    ct = rt.cluster_table(moa, cols).set_index("cluster")
    assert ct.loc[1, "treatments"] == 3 and ct.loc[1, "top_moa"] == "x"
    assert (
        ct.loc[1, "purity"] == pytest.approx(2 / 3)
        and ct.loc[1, "members"] == "a @ 1, b @ 1, c @ 2"
    )
    assert np.isnan(ct.loc[2, "purity"])  # only an unlabelled treatment and a negcon
    std = pd.DataFrame(
        {io.TREATMENT: ["a @ 1"], io.CLUSTER: [1], io.UMAP_1: [0.0], io.UMAP_2: [1.0]}
    )
    assert rt.moa_columns(std) == rt.MoaColumns(
        io.TREATMENT, io.CLUSTER, io.UMAP_1, io.UMAP_2, None, None, None
    )
    with pytest.raises(InputDataError, match="no cluster column"):
        rt.cluster_table(pd.DataFrame({io.PERTURBATION: ["a"]}))


def test_pca_2d_separates_a_plate_offset():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(0, 1, (60, 5)), columns=[f"f{i}" for i in range(5)])
    df.iloc[30:] += 5.0
    df.insert(0, io.PLATE, ["P1"] * 30 + ["P2"] * 30)
    df["const"] = 1.0
    pcs, var = rt.pca_2d(df)
    assert list(pcs.columns) == [io.PLATE, "PC1", "PC2"] and var[0] > 0.8
    sep = pcs.groupby(io.PLATE)["PC1"].mean()
    assert abs(sep["P1"] - sep["P2"]) > 8
    sub, _ = rt.pca_2d(df, max_points=20, seed=1)
    assert len(sub) == 20
    with pytest.raises(InputDataError, match="PCA"):
        rt.pca_2d(df[[io.PLATE, "f0"]])


def test_settings_defaults_match_schema():
    cfg = load_config(None)
    assert ReportSettings.from_config(cfg["report"]) == ReportSettings()
    with pytest.raises(ConfigError, match="unknown key"):
        ReportSettings.from_config({"bogus": 1})
    with pytest.raises(ConfigError, match="thumbnail_format"):
        ReportSettings.from_config({"thumbnail_format": "gif"})


def test_evaluation_rows():
    rows = rt.evaluation_rows(
        {"nsc": 0.5, "nscb": None, "nsc_details": {"a": 1}, "clustering": {"n_clusters": 4}}
    )
    assert [r[0] for r in rows] == ["nsc", "nscb", "clustering.n_clusters"]


def test_map_sample_keeps_poscon_and_hits_then_a_seeded_sample():
    n = 30
    moa = pd.DataFrame({
        io.PERTURBATION: [f"c{i:02d}" for i in range(n)],
        io.CONCENTRATION: [1.0] * n,
        io.PERT_TYPE: ["poscon" if i in (3, 17) else "trt" for i in range(n)],
        io.UMAP_1: np.arange(n, dtype=float), io.UMAP_2: np.zeros(n),
    })
    novelty = pd.DataFrame({  # two wells per treatment; hits on c05, c11, c17 (poscon), c29
        io.PLATE: "P1", io.WELL: [f"W{i}" for i in range(2 * n)],
        io.PERTURBATION: [f"c{i % n:02d}" for i in range(2 * n)],
        io.CONCENTRATION: 1.0, io.NOVELTY_SCORE: 0.0,
        io.NOVELTY_HIT: [i in (5, 11 + n, 17, 29) for i in range(2 * n)],
    })
    cols = rt.moa_columns(moa)
    full = rt.map_sample(moa, cols, novelty=novelty, max_points=30)
    assert not full.sampled and list(full.keep) == list(range(n))
    assert (full.poscon, full.hits, full.hits_shown) == (2, 3, 3)
    drawn = rt.map_sample(moa, cols, novelty=novelty, max_points=10)
    assert drawn.sampled and len(drawn.keep) == 10 and drawn.total == n
    assert {3, 17, 5, 11, 29} <= set(drawn.keep.tolist())  # every poscon and hit treatment
    assert list(drawn.keep) == sorted(drawn.keep)  # table order
    again = rt.map_sample(moa, cols, novelty=novelty, max_points=10)
    assert list(again.keep) == list(drawn.keep)  # deterministic (seeded)
    other = rt.map_sample(moa, cols, novelty=novelty, max_points=10, seed=1)
    assert list(other.keep) != list(drawn.keep) and {3, 17, 5, 11, 29} <= set(other.keep.tolist())
    # a cap below poscon + hits: every poscon, a sample of the hits
    tight = rt.map_sample(moa, cols, novelty=novelty, max_points=3)
    assert len(tight.keep) == 3 and {3, 17} <= set(tight.keep.tolist())
    assert (tight.hits, tight.hits_shown) == (3, 1)
    # no pert type in the MoA table: poscon treatments from the novelty wells' pert type
    wells = novelty.assign(**{io.PERT_TYPE: ["poscon" if i % n == 3 else "trt" for i in range(2 * n)]})
    bare = rt.map_sample(moa.drop(columns=[io.PERT_TYPE]), None, novelty=wells, max_points=10)
    assert bare.poscon == 1 and bare.hits == 4 and {3, 5, 11, 17, 29} <= set(bare.keep.tolist())
    # no novelty: only the cap
    plain = rt.map_sample(moa.drop(columns=[io.PERT_TYPE]), None, max_points=7)
    assert len(plain.keep) == 7 and plain.hits == plain.poscon == 0
