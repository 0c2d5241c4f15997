"""Scoring maths of the novelty stage: conformal p-values, BH q-values, feature checks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from cytoscreen.errors import InputDataError, ModelError
from cytoscreen.io import (
    NOVELTY_HIT,
    NOVELTY_PVALUE,
    NOVELTY_QVALUE,
    NOVELTY_SCORE,
    NOVELTY_SPLIT,
    PERT_TYPE,
)
from cytoscreen.novelty.data import split_wells
from cytoscreen.novelty.model import NoveltyAutoencoder
from cytoscreen.novelty.score import (
    bh_qvalues,
    check_features,
    conformal_pvalues,
    leave_one_out_pvalues,
    score_profiles,
)
from tests.unit.novelty_fixtures import synthetic_wells

torch.set_num_threads(1)


def test_conformal_pvalues_by_hand():
    cal = np.array([4.0, 1.0, 3.0, 2.0])
    p = conformal_pvalues(np.array([2.5, 5.0, 0.0, 2.0]), cal)
    # (1 + #{cal >= s}) / (n + 1)
    np.testing.assert_allclose(p, [3 / 5, 1 / 5, 5 / 5, 4 / 5])
    np.testing.assert_allclose(leave_one_out_pvalues(cal), [1 / 4, 4 / 4, 2 / 4, 3 / 4])


def test_bh_qvalues_match_scipy_and_ignore_nan():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.01, size=10)])
    np.testing.assert_allclose(bh_qvalues(p), scipy.stats.false_discovery_control(p), rtol=1e-12)
    with_nan = np.concatenate([p, [np.nan, np.nan]])
    q = bh_qvalues(with_nan)
    assert np.isnan(q[-2:]).all()
    np.testing.assert_allclose(q[:-2], scipy.stats.false_discovery_control(p), rtol=1e-12)
    assert np.isnan(bh_qvalues(np.array([np.nan]))).all()


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


def _untrained(df):
    torch.manual_seed(0)
    return NoveltyAutoencoder([c for c in df.columns if c.startswith("DNA_")], hidden_sizes=[8],
                              latent_size=2).eval()


def test_score_table_layout_and_who_is_tested():
    df = synthetic_wells(n_plates=2, seed=0)
    df.loc[df.index[df[PERT_TYPE] == "trt"][-3:], PERT_TYPE] = "empty"
    split = split_wells(df, seed=0)
    model = _untrained(df)
    res = score_profiles(df, model, split, hit_q=0.05)
    out = res.novelty
    assert list(out.columns[: df.shape[1] - 24]) == [c for c in df.columns if c.startswith("Metadata_")]
    assert list(out.columns[-5:]) == [NOVELTY_SCORE, NOVELTY_PVALUE, NOVELTY_QVALUE, NOVELTY_HIT,
                                      NOVELTY_SPLIT]
    assert len(out) == len(df) and (out["Metadata_Well"].to_numpy() == df["Metadata_Well"].to_numpy()).all()
    tested = (out[NOVELTY_SPLIT] == "none") & (out[PERT_TYPE] != "empty")
    assert res.n_tested == tested.sum() == 2 * 64 - 3
    assert out.loc[~tested, NOVELTY_QVALUE].isna().all()
    assert not out.loc[~tested, NOVELTY_HIT].any()
    assert out[NOVELTY_PVALUE].between(0, 1).all() and out[NOVELTY_PVALUE].notna().all()
    # score is the mean squared residual of the row
    feats = [c for c in df.columns if c.startswith("DNA_")]
    assert list(res.residuals.columns) == list(df.columns)
    assert (res.residuals[feats].dtypes == np.float32).all()
    resid = res.residuals[feats].to_numpy()
    np.testing.assert_allclose(out[NOVELTY_SCORE], (resid.astype(np.float64) ** 2).mean(axis=1), rtol=1e-6)
    x = torch.from_numpy(df[feats].to_numpy(copy=True))
    with torch.no_grad():
        np.testing.assert_allclose(resid, (model(x) - x).numpy(), atol=1e-6)
    # hits are exactly the tested wells with q <= hit_q
    assert (out[NOVELTY_HIT] == (tested & (out[NOVELTY_QVALUE] <= 0.05))).all()


def test_scoring_needs_the_calibration_wells_and_the_same_platemap():
    df = synthetic_wells(n_plates=2, seed=0)
    split = split_wells(df, seed=0)
    model = _untrained(df)
    cal = {k for k in split.calibration}
    keys = list(zip(df["Metadata_Plate"], df["Metadata_Well"], strict=True))
    without_cal = df[[k not in cal for k in keys]]
    with pytest.raises(InputDataError, match="0 of the checkpoint's 19 calibration wells"):
        score_profiles(without_cal, model, split)
    relabeled = df.copy()
    first_cal = keys.index(sorted(cal)[0])
    relabeled.loc[first_cal, PERT_TYPE] = "trt"
    with pytest.raises(InputDataError, match="not Metadata_pert_type == 'negcon' here"):
        score_profiles(relabeled, model, split)
