"""NSC/NSCB, mAP and ARI (BH: test_stats.py) on hand-built cases with known answers, and against copairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoscreen.moa import metrics
from cytoscreen.moa.metrics import (
    average_precision_ranked,
    moa_map,
    nn_accuracy,
    null_average_precision,
    replicate_map,
    shared_batch_matrix,
)

# Treatments on the unit circle; cosine similarity falls with the angle between them.
#   compound  dose  MoA  angle  batch
_CASE = [
    ("A", 1.0, "X", 0.0, "b1"),
    ("A", 2.0, "X", 2.0, "b1"),
    ("B", 1.0, "X", 40.0, "b2"),
    ("E", 1.0, "Z", 10.0, "b1"),
    ("F", 1.0, "Z", 100.0, "b2"),
    ("C", 1.0, "Y", 60.0, "b1"),
    ("D", 1.0, "Y", 65.0, "b1"),
    ("G", 1.0, "W", 62.0, "b2"),  # the only compound of MoA W
]


def _case() -> pd.DataFrame:
    rows = []
    for cpd, dose, moa, angle, batch in _CASE:
        a = np.deg2rad(angle)
        rows.append(
            {
                "Metadata_cpd": cpd,
                "Metadata_dose": dose,
                "Metadata_moa": moa,
                "Metadata_batch": batch,
                "f1": np.cos(a),
                "f2": np.sin(a),
            }
        )
    return pd.DataFrame(rows)


def test_nsc_excludes_same_compound_and_unscorable_moas():
    res = nn_accuracy(_case(), moa_col="Metadata_moa", compound_col="Metadata_cpd")
    # W has one compound: no query of W can be right, so W leaves queries and candidates
    assert res.dropped_moas == ("W",)
    pred = res.predictions.set_index("row")["predicted_moa"].to_dict()
    # A@1 (0 deg): A@2 is excluded (same compound), E (10 deg, Z) is nearest -> wrong
    # A@2 -> E wrong; B (40) -> C (60, Y) wrong; E (10) -> A@2 (2, X) wrong;
    # F (100) -> D (65, Y) wrong; C (60) -> D (65) right, not G (62, dropped); D -> C right
    assert pred == {0: "Z", 1: "Z", 2: "Y", 3: "X", 4: "Y", 5: "Y", 6: "Y"}
    assert res.n_queries == 7 and res.n_correct == 2
    assert res.accuracy == pytest.approx(2 / 7)
    per_moa = res.per_moa.set_index("moa")
    assert per_moa.loc["Y", "accuracy"] == 1.0 and per_moa.loc["X", "n_queries"] == 3


def test_nscb_excludes_same_batch_and_drops_single_batch_moas():
    res = nn_accuracy(_case(), moa_col="Metadata_moa", compound_col="Metadata_cpd", batch_col="Metadata_batch")
    # Y (C, D) lies in batch b1 only: no same-MoA candidate in another batch -> dropped, as W
    assert set(res.dropped_moas) == {"W", "Y"}
    pred = res.predictions.set_index("row")["predicted_moa"].to_dict()
    # A@1, A@2 (b1) -> B (b2) right; B (b2) -> E (b1, 30 deg) wrong; E (b1) -> B wrong;
    # F (b2) -> E (90 deg, Z) right
    assert pred == {0: "X", 1: "X", 2: "Z", 3: "X", 4: "Z"}
    assert res.accuracy == pytest.approx(3 / 5)


def test_nscb_treatment_in_several_batches_excludes_all_of_them():
    case = _case()
    case["Metadata_batch"] = case["Metadata_batch"].astype(object)
    case.at[0, "Metadata_batch"] = frozenset({"b1", "b2"})  # A@1 imaged in both batches
    res = nn_accuracy(case, moa_col="Metadata_moa", compound_col="Metadata_cpd", batch_col="Metadata_batch")
    row = res.predictions.set_index("row").loc[0]
    assert pd.isna(row["predicted_moa"]) and not row["correct"]  # nothing left to compare with
    assert res.accuracy == pytest.approx(2 / 5)


def test_shared_batch_matrix():
    m = shared_batch_matrix(["a", frozenset({"a", "b"}), "b", None])
    expected = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(m, expected)


def test_nsc_no_scorable_moa():
    case = _case().iloc[[0, 1]]  # one compound only
    res = nn_accuracy(case, moa_col="Metadata_moa", compound_col="Metadata_cpd")
    assert res.accuracy is None and res.dropped_moas == ("X",)


# --- average precision ---------------------------------------------------------------------------
def test_average_precision_known_rankings():
    sim = np.array([[0.9, 0.8, 0.7, 0.6]] * 4)
    pos = np.array(
        [
            [True, True, False, False],  # perfect
            [False, False, True, True],  # worst: (1/3 + 2/4) / 2
            [False, True, False, True],  # (1/2 + 2/4) / 2
            [False, False, False, False],  # no positive
        ]
    )
    ap = average_precision_ranked(sim, pos, ~pos)
    np.testing.assert_allclose(ap[:3], [1.0, (1 / 3 + 2 / 4) / 2, 0.5])
    assert np.isnan(ap[3])


def test_average_precision_ties_and_unranked():
    sim = np.array([[0.5, 0.5, 0.9, 0.1]])
    pos = np.array([[False, True, False, True]])
    neg = np.array([[True, False, False, True]]) & ~pos
    # candidate 2 is in neither mask: not ranked; the tie at 0.5 ranks the positive first
    # ranking: pos(0.5), neg(0.5), pos(0.1) -> (1/1 + 2/3) / 2
    ap = average_precision_ranked(sim, pos, neg)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)


def _expected_random_ap(m: int, n: int) -> float:
    """E[AP] of a uniformly random ranking of m positives among n candidates."""
    h = sum(1.0 / k for k in range(1, n + 1))
    return (m - 1) / (n - 1) + h * (n - m) / (n * (n - 1))


@pytest.mark.parametrize(("m", "n"), [(1, 10), (2, 30), (5, 12)])
def test_null_average_precision_matches_random_expectation(m, n):
    null = null_average_precision(m, n, null_size=20000, seed=3)
    assert null.mean() == pytest.approx(_expected_random_ap(m, n), abs=4 * null.std() / 141)
    again = null_average_precision(m, n, null_size=20000, seed=3)
    np.testing.assert_array_equal(null, again)
    assert not np.array_equal(null, null_average_precision(m, n, null_size=20000, seed=4))


def _tight_treatments(seed: int = 0, signal: float = 5.0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows, x = [], []
    for t in range(6):
        centre = rng.normal(size=10)
        for _ in range(3):
            rows.append({"Metadata_cpd": f"c{t}", "Metadata_dose": 1.0})
            x.append(signal * centre + 0.1 * rng.normal(size=10))
    for _ in range(12):
        rows.append({"Metadata_cpd": "DMSO", "Metadata_dose": 0.0})
        x.append(rng.normal(size=10))
    df = pd.concat(
        [pd.DataFrame(rows), pd.DataFrame(np.array(x), columns=[f"f{i}" for i in range(10)])],
        axis=1,
    )
    return df, (df["Metadata_cpd"] == "DMSO").to_numpy()


def test_replicate_map_perfect_ranking():
    wells, negcon = _tight_treatments()
    res = replicate_map(wells, treatment_cols=["Metadata_cpd", "Metadata_dose"], negcon=negcon, null_size=999)
    assert res.mean_map == pytest.approx(1.0)
    assert res.n_groups == 6
    # a perfect mAP is never exceeded by the null: p = 1 / (null_size + 1)
    np.testing.assert_allclose(res.per_group["p_value"], 1 / 1000)
    assert res.fraction_significant == 1.0
    assert (res.per_query["n_pos_pairs"] == 2).all() and (res.per_query["n_total_pairs"] == 14).all()


def test_replicate_map_random_profiles_is_not_significant():
    rng = np.random.default_rng(1)
    n_t, reps, n_ctrl = 40, 3, 30
    meta = pd.DataFrame(
        {
            "Metadata_cpd": [f"c{t}" for t in range(n_t) for _ in range(reps)] + ["DMSO"] * n_ctrl,
            "Metadata_dose": 1.0,
        }
    )
    x = pd.DataFrame(rng.normal(size=(len(meta), 16)), columns=[f"f{i}" for i in range(16)])
    wells = pd.concat([meta, x], axis=1)
    res = replicate_map(
        wells,
        treatment_cols=["Metadata_cpd"],
        negcon=(meta["Metadata_cpd"] == "DMSO").to_numpy(),
        null_size=2000,
        seed=0,
    )
    expected = _expected_random_ap(reps - 1, reps - 1 + n_ctrl)
    assert res.mean_map == pytest.approx(expected, abs=0.05)
    assert res.fraction_significant <= 0.05
    assert 0.3 < res.per_group["p_value"].median() < 0.7


def test_replicate_map_without_controls_reports_nothing():
    wells, _ = _tight_treatments()
    res = replicate_map(wells, treatment_cols=["Metadata_cpd"], negcon=np.zeros(len(wells), bool), null_size=10)
    assert res.mean_map is None and res.n_groups == 0


def test_moa_map_same_compound_is_not_ranked():
    case = _case()
    res = moa_map(case, moa_col="Metadata_moa", compound_col="Metadata_cpd", null_size=100)
    q = res.per_query.set_index("row")
    # A@1: positives are B only (A@2 is the same compound); negatives: E, F, C, D, G
    assert q.loc[0, "n_pos_pairs"] == 1 and q.loc[0, "n_total_pairs"] == 6
    # ranking of A@1 by angle: E (10), B (40), C (60), G (62), D (65), F (100): B is second
    assert q.loc[0, "average_precision"] == pytest.approx(1 / 2)
    # G (W) has no positive: no AP, and W has no mAP row
    assert np.isnan(q.loc[7, "average_precision"])
    assert set(res.per_group["Metadata_moa"]) == {"X", "Y", "Z"}


def test_cluster_agreement_scores():
    truth = ["a", "a", "b", "b", "c", "c"]
    assert metrics.adjusted_rand_index(truth, [1, 1, 2, 2, 3, 3]) == pytest.approx(1.0)
    assert metrics.adjusted_rand_index(truth, [5, 5, 7, 7, 9, 9]) == pytest.approx(1.0)
    assert metrics.cluster_purity(truth, [1, 1, 1, 1, 2, 2]) == pytest.approx(4 / 6)


# --- agreement with copairs -----------------------------------------------------------------------
def test_replicate_and_moa_map_agree_with_copairs(tmp_path):
    copairs_map = pytest.importorskip("copairs.map")
    rng = np.random.default_rng(7)
    cpd = np.repeat(["a", "b", "c", "d", "e", "DMSO"], [3, 4, 2, 3, 3, 12])
    x = rng.normal(size=(len(cpd), 8))
    x[:3] += 1.0
    wells = pd.concat(
        [pd.DataFrame({"Metadata_cpd": cpd}), pd.DataFrame(x, columns=[f"f{i}" for i in range(8)])],
        axis=1,
    )
    negcon = cpd == "DMSO"
    ours = replicate_map(wells, treatment_cols=["Metadata_cpd"], negcon=negcon, null_size=20000, seed=0)
    # the copairs "phenotypic activity" recipe: a unique reference index per control well
    meta = pd.DataFrame({"cpd": cpd, "ref": np.where(negcon, np.arange(len(cpd)), -1)})
    theirs = copairs_map.average_precision(meta, x, ["cpd", "ref"], [], [], ["cpd", "ref"], progress_bar=False)
    rows = ours.per_query["row"].to_numpy()
    np.testing.assert_allclose(ours.per_query["average_precision"], theirs.loc[rows, "average_precision"], atol=1e-12)
    np.testing.assert_array_equal(ours.per_query["n_total_pairs"], theirs.loc[rows, "n_total_pairs"])
    their_map = copairs_map.mean_average_precision(
        theirs[~negcon],
        ["cpd"],
        null_size=20000,
        threshold=0.05,
        seed=0,
        progress_bar=False,
        cache_dir=tmp_path,
    ).set_index("cpd")
    mine = ours.per_group.set_index("Metadata_cpd")
    np.testing.assert_allclose(mine["mean_average_precision"], their_map.loc[mine.index, "mean_average_precision"])
    # independent permutation draws: p-values agree within Monte-Carlo error
    np.testing.assert_allclose(mine["p_value"], their_map.loc[mine.index, "p_value"], atol=0.02)

    # MoA retrieval: positives same MoA and other compound, negatives other MoAs
    moa = np.repeat(["m1", "m1", "m2", "m2", "m3", "m3"], 1)
    tr = pd.DataFrame({"Metadata_moa": moa, "Metadata_cpd": [f"k{i}" for i in range(6)]}).join(
        pd.DataFrame(rng.normal(size=(6, 5)), columns=[f"f{i}" for i in range(5)])
    )
    tr = pd.concat([tr, tr.assign(Metadata_cpd=tr["Metadata_cpd"])], ignore_index=True)
    tr.iloc[6:, 2:] += rng.normal(scale=0.5, size=(6, 5))
    ours_moa = moa_map(tr, moa_col="Metadata_moa", compound_col="Metadata_cpd", null_size=100)
    theirs_moa = copairs_map.average_precision(
        tr[["Metadata_moa", "Metadata_cpd"]],
        tr[[f"f{i}" for i in range(5)]].to_numpy(),
        ["Metadata_moa"],
        ["Metadata_cpd"],
        [],
        ["Metadata_moa"],
        progress_bar=False,
    )
    rows = ours_moa.per_query["row"].to_numpy()
    np.testing.assert_allclose(ours_moa.per_query["average_precision"], theirs_moa.loc[rows, "average_precision"])
