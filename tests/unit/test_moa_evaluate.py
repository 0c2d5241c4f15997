"""`cytoscreen evaluate` and the library behind it, on synthetic well tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.moa.evaluate import derive_batches, evaluate_profiles, format_summary, negcon_wells
from tests.fixtures.moa import rename_for_evaluate, synthetic_wells

EXACT_CALL = [
    "--moa-col",
    "Metadata_moa",
    "--compound-col",
    "Metadata_Compound",
    "--dose-col",
    "Metadata_Concentration",
    "--batch-col",
    "Metadata_Plate",
]
KEYS = {"nsc", "nscb", "map_replicate", "map_moa"}


@pytest.fixture(scope="module")
def wells() -> pd.DataFrame:
    return synthetic_wells(seed=0)


def test_evaluate_profiles_on_separable_screen(wells):
    res = evaluate_profiles(wells, null_size=500)
    s = res.summary
    assert s["nsc"] == 1.0 and s["nscb"] == 1.0
    assert s["map_replicate"] > 0.95 and s["map_moa"] > 0.9
    assert s["cluster_ari"] > 0.9
    assert s["n_treatments"] == 4 * 3 * 2 + 1 and s["n_negcon_treatments"] == 1
    assert s["n_scored_treatments"] == 24 and s["n_moas"] == 4
    assert s["negcon_definition"] == "Metadata_pert_type == negcon"
    assert s["batch_definition"]["column"] == io.BATCH and s["batch_definition"]["n_batches"] == 2
    assert s["nsc_details"]["dropped_moas"] == [] and s["nsc_details"]["n_queries"] == 24
    assert s["map_replicate_details"]["n_groups"] == 24
    assert s["map_replicate_details"]["fraction_significant"] == 1.0
    rec = s["map_moa_details"]["per_group"][0]
    assert {"moa", "mean_average_precision", "p_value", "q_value"} <= set(rec)
    json.dumps(io.json_safe(s))  # JSON-ready


def test_evaluate_noise_screen_scores_near_chance():
    rng = np.random.default_rng(3)
    wells = synthetic_wells(seed=1, n_moas=4, compounds_per_moa=3)
    feats = io.feature_columns(wells)
    wells[feats] = rng.normal(size=(len(wells), len(feats))).astype(np.float32)
    s = evaluate_profiles(wells, null_size=500, cluster=False).summary
    assert s["nsc"] < 0.6  # chance is ~0.2 for 4 MoAs
    assert s["map_replicate_details"]["fraction_significant"] <= 0.2


def test_nscb_drops_single_batch_moa_and_regex_batches(wells):
    w = wells.copy()
    # MoA 1 moved wholly into batch B1 (plates B1_P*): it cannot be scored by NSCB
    moa1 = w[io.MOA] == "MoA 1"
    w.loc[moa1, io.PLATE] = w.loc[moa1, io.PLATE].str.replace("B2_", "B1_")
    s = evaluate_profiles(w, batch_col=io.PLATE, batch_regex=r"^(B\d+)_", null_size=200, cluster=False).summary
    assert s["nscb_details"]["dropped_moas"] == ["MoA 1"]
    assert s["nsc_details"]["dropped_moas"] == []
    assert s["nscb_details"]["n_queries"] == 18
    assert s["batch_definition"]["regex"] == r"^(B\d+)_"
    assert s["batch_definition"]["n_batches"] == 2
    assert s["batch_definition"]["examples"]["B1_P1"] == "B1"


def test_consensus_table_replaces_the_median(wells):
    from cytoscreen.moa.similarity import treatment_profiles

    cons = treatment_profiles(wells, by=[io.PERTURBATION, io.CONCENTRATION])
    a = evaluate_profiles(wells, null_size=200, cluster=False).summary
    b = evaluate_profiles(wells, treatments=cons, null_size=200, cluster=False).summary
    assert a["nsc"] == b["nsc"] and a["map_moa"] == pytest.approx(b["map_moa"])
    assert b["treatment_definition"]["profile"] == "given treatment table"
    with pytest.raises(InputDataError, match="no row"):
        evaluate_profiles(wells, treatments=cons.iloc[1:], null_size=10)


def test_negcon_recognition():
    df = pd.DataFrame({"Metadata_cpd": ["dmso", "DMSO ", "x", "ctrl"], "Metadata_pert_type": ["trt"] * 4})
    mask, how = negcon_wells(df, compound_col="Metadata_cpd", negcon=("DMSO", "Ctrl"))
    assert mask.tolist() == [True, True, False, True]
    assert "case-insensitive" in how
    df["Metadata_pert_type"] = ["negcon", "trt", "trt", "trt"]
    mask, how = negcon_wells(df, compound_col="Metadata_cpd")
    assert mask.tolist() == [True, False, False, False] and how.startswith("Metadata_pert_type")


def test_derive_batches():
    s = pd.Series(["Week4_27481", "Week10_1"], name="Metadata_Plate")
    assert derive_batches(s, r"^(Week\d+)").tolist() == ["Week4", "Week10"]
    assert derive_batches(s, r"^Week\d").tolist() == ["Week4", "Week1"]  # whole match
    with pytest.raises(InputDataError, match="matches no part of 1 value"):
        derive_batches(pd.Series(["Week4_1", "Plate7"], name="p"), r"^(Week\d+)")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        derive_batches(s, "(")


def test_bad_features_are_left_out_with_a_record(wells):
    w = wells.copy()
    w["Image_FileName"] = "x.tif"  # a stray text column without the Metadata_ prefix
    w.loc[3, "DNA_f1"] = np.nan
    s = evaluate_profiles(w, null_size=50, cluster=False).summary
    assert s["features_left_out"] == {"non_numeric": ["Image_FileName"], "non_finite": ["DNA_f1"]}
    assert s["n_features"] == len(io.feature_columns(wells)) - 1


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_exact_cli_call(tmp_path, wells, suffix, capsys):
    table = tmp_path / f"wells{suffix}"
    io.write_table(rename_for_evaluate(wells), table)
    out = tmp_path / "evaluation.json"
    rc = main(["evaluate", str(table), *EXACT_CALL, "--null-size", "300", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert KEYS <= set(res)
    assert res["nsc"] == 1.0 and res["nscb"] == 1.0 and res["map_moa"] > 0.9
    assert res["negcon_definition"].startswith("Metadata_Compound in ['DMSO']")
    assert res["batch_definition"]["column"] == "Metadata_Plate"
    assert res["batch_definition"]["n_batches"] == 6
    assert res["n_treatments"] == 25
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["metric", "value", "n", "note"]
    assert [ln.split()[0] for ln in lines[1:5]] == ["nsc", "nscb", "map_replicate", "map_moa"]
    assert "INFO" in captured.err and "INFO" not in captured.out


def test_cli_batch_regex_and_disabled_columns(tmp_path, wells, capsys):
    table = tmp_path / "wells.parquet"
    io.write_table(rename_for_evaluate(wells), table)
    out = tmp_path / "e.json"
    args = ["evaluate", str(table), *EXACT_CALL, "--null-size", "100", "--no-cluster"]
    assert main([*args, "--batch-regex", r"^(B\d+)_", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["batch_definition"]["regex"] == r"^(B\d+)_"
    assert res["batch_definition"]["n_batches"] == 2 and res["cluster_ari"] is None
    rc = main(
        ["evaluate", str(table), "--compound-col", "Metadata_Compound", "--moa-col", "none",
         "--batch-col", "none", "--null-size", "50", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["nsc"] is None and res["map_replicate"] > 0.9
    assert res["nsc_details"]["reason"] == "no MoA column"
    # no dose column given and none named Metadata_concentration: a treatment is a compound
    assert res["treatment_definition"]["dose"] is None and res["n_treatments"] == 13


def test_cli_missing_column(tmp_path, wells, capsys):
    table = tmp_path / "wells.csv"
    io.write_table(rename_for_evaluate(wells).drop(columns=["Metadata_moa"]), table)
    out = tmp_path / "e.json"
    rc = main(["evaluate", str(table), *EXACT_CALL, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == InputDataError.exit_code == 4
    assert "error:" in err and "'Metadata_moa' not found" in err and "Metadata_Compound" in err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        (None, 4, "file not found"),
        ("Metadata_Compound,Metadata_moa\nDMSO,DMSO\n", 4, "no usable feature columns"),
    ],
)
def test_cli_bad_tables(tmp_path, capsys, content, code, message):
    table = tmp_path / "t.csv"
    if content is not None:
        table.write_text(content)
    rc = main(
        ["evaluate", str(table), "--compound-col", "Metadata_Compound", "--out",
         str(tmp_path / "e.json")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == code and message in err and "Traceback" not in err


def test_cli_bad_regex_and_settings(tmp_path, wells, capsys):
    table = tmp_path / "wells.parquet"
    io.write_table(rename_for_evaluate(wells), table)
    out = str(tmp_path / "e.json")
    assert main(["evaluate", str(table), *EXACT_CALL, "--batch-regex", "(", "--out", out]) == 3
    assert main(["evaluate", str(table), *EXACT_CALL, "--batch-regex", "^W", "--out", out]) == 4
    assert main(["evaluate", str(table), *EXACT_CALL, "--null-size", "0", "--out", out]) == 3
    err = capsys.readouterr().err
    assert "matches no part" in err and "Traceback" not in err


def test_single_batch_screen_has_no_nscb(wells):
    w = wells.assign(**{io.BATCH: "batch1"})  # e.g. the demo: one batch in plates.tsv
    s = evaluate_profiles(w, null_size=50, cluster=False).summary
    assert s["nsc"] == 1.0 and s["nscb"] is None
    assert sorted(s["nscb_details"]["dropped_moas"]) == ["MoA 1", "MoA 2", "MoA 3", "MoA 4"]
    assert "different batches" in s["nscb_details"]["reason"]


def test_treatment_profiles_are_the_median_consensus(wells):
    from cytoscreen.moa.similarity import treatment_profiles
    from cytoscreen.profiles.consensus import consensus

    by = [io.PERTURBATION, io.CONCENTRATION]
    tr = treatment_profiles(wells, by=by)
    cons = consensus(wells, method="median", by=by)
    feats = io.feature_columns(wells)
    assert tr[by].reset_index(drop=True).equals(cons[by])
    np.testing.assert_array_equal(tr[feats].to_numpy(), cons[feats].to_numpy())
    assert tr[io.N_WELLS].tolist() == cons[io.N_WELLS].tolist()
    # and both are the per-treatment median of the wells (pandas, float64), in first-seen order
    ref = wells.groupby(by, sort=False, dropna=False)[feats].median()
    np.testing.assert_allclose(tr[feats].to_numpy(), ref.to_numpy(), rtol=1e-6, atol=1e-6)
    assert list(tr.columns[: len(by)]) == by


def test_negcon_wells_follow_the_plate_rule():
    from cytoscreen import plate

    df = pd.DataFrame({"Metadata_cpd": ["DMSO", "x", "y", "DMSO"],
                       io.PERT_TYPE: [" NegCon", "trt", "negcon", "trt"]})
    mask, how = negcon_wells(df, compound_col="Metadata_cpd")
    assert mask.tolist() == [True, False, True, False] and how == f"{io.PERT_TYPE} == negcon"
    renamed = df.rename(columns={"Metadata_cpd": io.PERTURBATION})
    assert mask.tolist() == plate.negcon_mask(renamed).tolist()


# --- multi-label MoA and percent replicating (issue 16 item 5) ---------------------------------
def _multi_label_treatments() -> pd.DataFrame:
    """A (x|y) is nearest B (y); C (x) is nearest D (z); z has no other treatment."""
    return pd.DataFrame(
        {
            "Metadata_cpd": ["a", "b", "c", "d"],
            "Metadata_moa": ["x|y", "y", "x", "z"],
            "f0": [1.0, 0.9, 0.0, 0.1],
            "f1": [0.0, 0.1, 1.0, 0.9],
        }
    )


def test_multi_label_moas_match_when_their_sets_intersect():
    from cytoscreen.moa import metrics

    assert metrics.moa_label_sets(["x|y", " y ", "z"]) == [{"x", "y"}, {"y"}, {"z"}]
    same = metrics.shared_moa_matrix(["x|y", "y", "x", "z"])
    assert same.tolist() == [[True, True, True, False], [True, True, False, False],
                             [True, False, True, False], [False, False, False, True]]
    t = _multi_label_treatments()
    res = metrics.nn_accuracy(t, moa_col="Metadata_moa", compound_col="Metadata_cpd")
    # z is dropped (no other treatment shares it); A -> B (shares y) and B -> A are right,
    # C -> D (z) is wrong: 2 of 3
    assert res.dropped_moas == ("z",)
    assert res.n_queries == 3 and res.n_correct == 2 and res.accuracy == pytest.approx(2 / 3)
    assert res.predictions["correct"].tolist() == [True, True, False]
    mp = metrics.moa_map(t, moa_col="Metadata_moa", compound_col="Metadata_cpd", null_size=50)
    by = mp.per_group.set_index("Metadata_moa")["mean_average_precision"]
    # A: positives B, C (share x or y), negative D; ranked B, D, C -> AP (1/1 + 2/3) / 2
    # B: positive A, negatives C, D -> AP 1; C: positive A, negatives B, D; ranked D, B, A -> 1/3
    assert by["x|y"] == pytest.approx((1 + 2 / 3) / 2)
    assert by["y"] == pytest.approx(1.0) and by["x"] == pytest.approx(1 / 3)


def test_evaluate_reads_multi_label_moas():
    rows = []
    for cpd, moa, f in [("a", "x|y", (1.0, 0.0)), ("b", "y", (0.9, 0.1)), ("c", "x", (0.0, 1.0)),
                        ("d", "z", (0.1, 0.9)), ("DMSO", None, (0.5, 0.5))]:
        for rep in range(2):
            rows.append({io.PERTURBATION: cpd, io.MOA: moa, io.PERT_TYPE: "negcon" if moa is None else "trt",
                         "f0": f[0] + 0.01 * rep, "f1": f[1] - 0.01 * rep})
    s = evaluate_profiles(pd.DataFrame(rows), dose_col=None, batch_col=None, null_size=50, cluster=False).summary
    assert s["nsc"] == pytest.approx(2 / 3) and s["nsc_details"]["dropped_moas"] == ["z"]


def test_percent_replicating_by_hand():
    from cytoscreen.moa.replicating import percent_replicating

    wells = pd.DataFrame(
        {
            "Metadata_t": ["t1", "t1", "t2", "t2", "t3", "t3", "ctl", "ctl"],
            "f0": [3.0, 3.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.1],
            "f1": [1.0, 1.2, 0.0, 0.2, -1.0, 1.0, 0.1, 0.0],
            "f2": [0.0, 0.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0],
            "f3": [0.0, 0.1, 1.0, 1.0, 0.5, 0.5, 0.0, 0.0],
        }
    )
    negcon = (wells["Metadata_t"] == "ctl").to_numpy()
    res = percent_replicating(wells, treatment_cols=["Metadata_t"], negcon=negcon, null_size=2000)
    x = wells[["f0", "f1", "f2", "f3"]].to_numpy()
    corr = np.corrcoef(x)
    per = res.per_group.set_index("Metadata_t")
    assert per.index.tolist() == ["t1", "t2", "t3"]  # the control is never a query
    for t, (i, j) in {"t1": (0, 1), "t2": (2, 3), "t3": (4, 5)}.items():
        assert per.loc[t, "median_correlation"] == pytest.approx(corr[i, j])  # one pair: its r
    # the null: wells of two different treatments (controls included); its 95th percentile lies
    # among those cross-treatment correlations
    same = wells["Metadata_t"].to_numpy()[:, None] == wells["Metadata_t"].to_numpy()[None]
    cross = corr[np.triu_indices(8, 1)][~same[np.triu_indices(8, 1)]]
    assert cross.min() <= res.thresholds[2] <= cross.max()
    assert per["replicating"].tolist() == [True, True, False]  # t3's wells anti-correlate
    assert res.fraction == pytest.approx(2 / 3) and res.n_treatments == 3


def test_percent_replicating_in_the_summary(wells):
    s = evaluate_profiles(wells, null_size=300, cluster=False).summary
    assert s["percent_replicating"] == 1.0
    d = s["percent_replicating_details"]
    assert d["n_treatments"] == 24 and d["quantile"] == 0.95 and len(d["per_group"]) == 24
    rng = np.random.default_rng(5)
    noise = wells.copy()
    feats = io.feature_columns(noise)
    noise[feats] = rng.normal(size=(len(noise), len(feats)))
    s = evaluate_profiles(noise, null_size=300, cluster=False).summary
    assert s["percent_replicating"] <= 0.25  # chance is 5%
    assert "percent_replicating" in format_summary(s)
