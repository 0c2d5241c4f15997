"""Scoring with cross-fitted models: p-values by hand, table layout, who is tested, plate readout.

Untrained models stand in for trained ones here (the arithmetic is the same and needs no fit)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from cytoscreen.errors import InputDataError, ModelError
from cytoscreen.io import (
    NOVELTY_HIT,
    NOVELTY_PLATE_ZPRIME,
    NOVELTY_POSCON_Z,
    NOVELTY_POSCON_ZPRIME,
    NOVELTY_PVALUE,
    NOVELTY_QVALUE,
    NOVELTY_ROBUST_Z,
    NOVELTY_SCORE,
    NOVELTY_SPLIT,
    PERT_TYPE,
    PLATE,
)
from cytoscreen.novelty.data import crossfit_folds, well_keys
from cytoscreen.novelty.model import CrossFitModel, NoveltyAutoencoder
from cytoscreen.novelty.score import (
    check_features,
    conformal_pvalues,
    cross_conformal_pvalues,
    gaussian_pvalues,
    leave_one_out_pvalues,
    plate_robust_z,
    pvalue_method,
    score_profiles,
)
from tests.fixtures.novelty import synthetic_wells

torch.set_num_threads(1)


def test_conformal_pvalues_by_hand():
    cal = np.array([4.0, 1.0, 3.0, 2.0])
    p = conformal_pvalues(np.array([2.5, 5.0, 0.0, 2.0]), cal)
    # (1 + #{cal >= s}) / (n + 1)
    np.testing.assert_allclose(p, [3 / 5, 1 / 5, 5 / 5, 4 / 5])
    np.testing.assert_allclose(leave_one_out_pvalues(cal), [1 / 4, 4 / 4, 2 / 4, 3 / 4])


def test_cross_conformal_pvalues_by_hand():
    # fold 0 controls score [1, 3] under model 0, fold 1 controls [2, 4, 6] under model 1
    scores = np.array([[2.0, 5.0], [0.0, 0.0], [9.0, 9.0]])
    p = cross_conformal_pvalues(scores, [np.array([1.0, 3.0]), np.array([2.0, 4.0, 6.0])])
    # well 0: #{1,3 >= 2} = 1, #{2,4,6 >= 5} = 1 -> (1 + 2) / 6
    np.testing.assert_allclose(p, [3 / 6, 6 / 6, 1 / 6])
    # one fold: the plain conformal p-value
    np.testing.assert_allclose(cross_conformal_pvalues(np.array([[2.5]]), [np.array([4.0, 1.0, 3.0, 2.0])]),
                               [3 / 5])


def test_gaussian_pvalues_are_the_predictive_t_test():
    ref = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # mean 2, sd sqrt(2.5)
    t = (6.0 - 2.0) / (np.sqrt(2.5) * np.sqrt(1 + 1 / 5))
    np.testing.assert_allclose(gaussian_pvalues(np.array([6.0, 2.0]), ref),
                               [scipy.stats.t.sf(t, df=4), 0.5])
    # calibration: a new draw from the reference's normal is uniform (checked over many samples)
    rng = np.random.default_rng(0)
    p = [gaussian_pvalues(rng.normal(size=1), rng.normal(size=12))[0] for _ in range(4000)]
    assert scipy.stats.kstest(p, "uniform").pvalue > 0.01
    with pytest.raises(ValueError, match="at least three"):
        gaussian_pvalues(np.array([1.0]), np.array([1.0, 2.0]))


def test_pvalue_method_auto():
    assert pvalue_method("auto", 16, 200) == "gaussian"
    assert pvalue_method("auto", 200, 200) == "conformal"
    assert pvalue_method("conformal", 16, 200) == "conformal"
    with pytest.raises(ValueError):
        pvalue_method("exact", 16, 200)


def test_feature_columns_must_match_the_checkpoint_exactly():
    df = synthetic_wells(n_plates=1, n_features=6, seed=0)
    feats = [f"DNA_test_{i}" for i in range(6)]
    assert check_features(feats, df, source="t") == feats
    with pytest.raises(ModelError, match="1 checkpoint feature.*missing from the table.*DNA_test_5"):
        check_features(feats, df.drop(columns=["DNA_test_5"]), source="t")
    with pytest.raises(ModelError, match="1 table feature.*unknown to the checkpoint.*Extra_1"):
        check_features(feats, df.assign(Extra_1=1.0), source="t")
    reordered = df[[*df.columns[:6], *reversed(feats)]]
    with pytest.raises(ModelError, match="same feature columns in a different order"):
        check_features(feats, reordered, source="t")


def _untrained(df, *, folds: int = 3) -> CrossFitModel:
    feats = [c for c in df.columns if c.startswith("DNA_")]
    models = []
    for k in range(folds):
        torch.manual_seed(k)
        models.append(NoveltyAutoencoder(feats, hidden_sizes=[8], latent_size=2).eval())
    return CrossFitModel(models=tuple(models), folds=crossfit_folds(df, folds=folds, seed=0),
                         features=tuple(feats))


def test_score_table_layout_who_is_tested_and_out_of_sample_scores():
    df = synthetic_wells(n_plates=2, seed=0)
    df.loc[df.index[df[PERT_TYPE] == "trt"][-3:], PERT_TYPE] = "empty"
    crossfit = _untrained(df)
    res = score_profiles(df, crossfit, hit_q=0.05, pvalue="conformal")
    out = res.novelty
    assert list(out.columns[: df.shape[1] - 24]) == [c for c in df.columns if c.startswith("Metadata_")]
    assert list(out.columns[-9:]) == [NOVELTY_SCORE, NOVELTY_PVALUE, NOVELTY_QVALUE, NOVELTY_HIT,
                                      NOVELTY_SPLIT, NOVELTY_ROBUST_Z, NOVELTY_PLATE_ZPRIME,
                                      NOVELTY_POSCON_Z, NOVELTY_POSCON_ZPRIME]
    assert out[NOVELTY_POSCON_Z].isna().all()  # no poscon wells
    assert len(out) == len(df) and (out["Metadata_Well"].to_numpy() == df["Metadata_Well"].to_numpy()).all()
    assert res.n_controls == 64 and res.pvalue_method == "conformal"
    assert set(out.loc[out[PERT_TYPE] == "negcon", NOVELTY_SPLIT]) == {"crossfit"}
    tested = (out[NOVELTY_SPLIT] == "none") & (out[PERT_TYPE] != "empty")
    assert res.n_tested == tested.sum() == 2 * 64 - 3
    assert out.loc[~tested, NOVELTY_QVALUE].isna().all()
    assert not out.loc[~tested, NOVELTY_HIT].any()
    assert out[NOVELTY_PVALUE].between(0, 1).all() and out[NOVELTY_PVALUE].notna().all()
    assert (out[NOVELTY_HIT] == (tested & (out[NOVELTY_QVALUE] <= 0.05))).all()

    feats = list(crossfit.features)
    x = torch.from_numpy(df[feats].to_numpy(copy=True))
    with torch.no_grad():
        recon = np.stack([(m(x) - x).numpy() for m in crossfit.models])  # (K, rows, features)
    per_model = (recon.astype(np.float64) ** 2).mean(axis=2).T  # (rows, K)
    fold = crossfit.folds.fold_of(well_keys(df))
    ctrl = fold >= 0
    # a control well is scored only by the model of its fold (which never saw it)
    np.testing.assert_allclose(out.loc[ctrl, NOVELTY_SCORE], per_model[ctrl, fold[ctrl]], rtol=1e-6)
    # any other well: geometric mean over the models
    np.testing.assert_allclose(out.loc[~ctrl, NOVELTY_SCORE],
                               np.exp(np.log(per_model[~ctrl]).mean(axis=1)), rtol=1e-6)
    # residuals: the fold model's for controls, the mean reconstruction's for the others
    assert list(res.residuals.columns) == list(df.columns)
    resid = res.residuals[feats].to_numpy()
    assert resid.dtype == np.float32
    np.testing.assert_allclose(resid[ctrl], recon[fold[ctrl], np.flatnonzero(ctrl)], atol=1e-6)
    np.testing.assert_allclose(resid[~ctrl], recon[:, ~ctrl].mean(axis=0), atol=1e-6)
    # cross-conformal p-value of one tested well, by hand
    i = int(np.flatnonzero(tested.to_numpy())[0])
    count = sum(int((per_model[fold == k, k] >= per_model[i, k]).sum()) for k in range(3))
    assert out[NOVELTY_PVALUE].iloc[i] == pytest.approx((1 + count) / 65)


def test_gaussian_pvalues_and_plate_robust_z():
    df = synthetic_wells(n_plates=2, seed=0)
    pos = df.index[(df[PERT_TYPE] == "trt")][:6]
    df.loc[pos, PERT_TYPE] = "poscon"
    df.loc[pos, [f"DNA_test_{i}" for i in range(6)]] += 6.0
    res = score_profiles(df, _untrained(df), pvalue="gaussian")
    out = res.novelty
    ctrl = (out[NOVELTY_SPLIT] == "crossfit").to_numpy()
    log = np.log(out[NOVELTY_SCORE].to_numpy())
    tested = out[NOVELTY_QVALUE].notna().to_numpy()
    np.testing.assert_allclose(out.loc[tested, NOVELTY_PVALUE], gaussian_pvalues(log[tested], log[ctrl]))
    for plate in ("P1", "P2"):
        on = (out[PLATE] == plate).to_numpy()
        ref = log[on & ctrl]
        med, mad = np.median(ref), 1.4826 * np.median(np.abs(ref - np.median(ref)))
        np.testing.assert_allclose(out.loc[on, NOVELTY_ROBUST_Z], (log[on] - med) / mad)
    # Z' per plate of the robust z: poscon (P1 only) vs controls
    z = out[NOVELTY_ROBUST_Z].to_numpy()
    on = (out[PLATE] == "P1").to_numpy()
    zp = z[on & (out[PERT_TYPE] == "poscon").to_numpy()]
    zn = z[on & ctrl]
    expected = 1 - 3 * (zp.std(ddof=1) + zn.std(ddof=1)) / abs(zp.mean() - zn.mean())
    assert res.zprime["P1"] == pytest.approx(expected)
    assert np.isnan(res.zprime["P2"])  # no poscon there
    assert (out.loc[on, NOVELTY_PLATE_ZPRIME] == res.zprime["P1"]).all()
    # the poscon-direction readout separates the shifted poscon wells on P1, NaN on P2 (no poscon)
    pz = out[NOVELTY_POSCON_Z].to_numpy()
    assert pz[on & (out[PERT_TYPE] == "poscon").to_numpy()].min() > 3
    assert np.isnan(pz[~on]).all() and res.poscon_zprime["P1"] > 0
    assert (out.loc[on, NOVELTY_POSCON_ZPRIME] == res.poscon_zprime["P1"]).all()


def test_poscon_direction_z_is_cross_fitted_by_hand():
    from cytoscreen.novelty.readout import poscon_direction_z

    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [10.0, 0.0], [12.0, 2.0], [5.0, 1.0]])
    plates = np.array(["P"] * 6)
    neg = np.array([True, True, True, False, False, False])
    pos = np.array([False, False, False, True, True, False])
    z = poscon_direction_z(x, plates, neg, pos)

    def proj(v, centre, direction):
        return float((v - centre) @ (direction / np.linalg.norm(direction)))

    mu_n, mu_p = x[:3].mean(axis=0), x[3:5].mean(axis=0)
    s = []
    for i in range(3):  # each negcon: centre and direction without it
        c = np.delete(x[:3], i, axis=0).mean(axis=0)
        s.append(proj(x[i], c, mu_p - c))
    s.append(proj(x[3], mu_n, x[4] - mu_n))  # each poscon: direction without it
    s.append(proj(x[4], mu_n, x[3] - mu_n))
    s.append(proj(x[5], mu_n, mu_p - mu_n))
    s = np.array(s)
    med = np.median(s[:3])
    mad = 1.4826 * np.median(np.abs(s[:3] - med))
    np.testing.assert_allclose(z, (s - med) / mad)
    # too few poscon on a plate: NaN
    assert np.isnan(poscon_direction_z(x, plates, neg, np.array([False] * 3 + [True] + [False] * 2))).all()


def test_plate_robust_z_pools_the_screen_for_plates_with_few_controls():
    plates = np.array(["A"] * 5 + ["B"] * 3)
    log = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 5.0, 1.0, 2.0])
    ctrl = np.array([True, True, True, True, False, False, True, True])  # B has 2 controls
    z = plate_robust_z(plates, log, ctrl)
    np.testing.assert_allclose(z[:5], (log[:5] - 1.5) / 1.4826)  # A: median 1.5, MAD 1
    screen = log[ctrl]  # 0 1 2 3 1 2: median 1.5, MAD 0.5
    np.testing.assert_allclose(z[5:], (log[5:] - np.median(screen)) / (1.4826 * 0.5))


def test_no_models_give_nan_scores_and_no_hits():
    df = synthetic_wells(n_plates=1, seed=0)
    empty = CrossFitModel(models=(), folds=crossfit_folds(df.iloc[:0]), features=tuple(df.columns[6:]))
    res = score_profiles(df, empty)
    assert res.novelty[NOVELTY_SCORE].isna().all() and not res.novelty[NOVELTY_HIT].any()
    assert res.n_tested == 0 and res.residuals[list(df.columns[6:])].isna().all().all()


def test_scoring_needs_the_same_platemap():
    df = synthetic_wells(n_plates=2, seed=0)
    crossfit = _untrained(df)
    relabeled = df.copy()
    first = well_keys(df).index(crossfit.folds.held_out[0][0])
    relabeled.loc[first, PERT_TYPE] = "trt"
    relabeled.loc[first, "Metadata_perturbation"] = "cpd1"
    with pytest.raises(InputDataError, match="are not 'negcon' wells here"):
        score_profiles(relabeled, crossfit)
    assert isinstance(relabeled, pd.DataFrame)
