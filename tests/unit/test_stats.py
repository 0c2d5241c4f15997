"""cytoscreen.stats against hand-worked numbers and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from cytoscreen import stats


def test_mad_scale_is_the_normal_consistency_constant():
    assert stats.MAD_SCALE == pytest.approx(1 / scipy.stats.norm.ppf(0.75), abs=1e-4)
    assert stats.MEAN_AD_SCALE == pytest.approx(np.sqrt(np.pi / 2), abs=1e-4)


def test_robust_center_scale_by_hand():
    # median 3, |dev| = 2 1 0 1 97 -> MAD 1
    assert stats.robust_center_scale([1, 2, 3, 4, 100]) == (3.0, pytest.approx(1.4826))
    # NaN and inf are dropped
    assert stats.robust_center_scale([1, 2, np.nan, 3, 4, 100, np.inf]) == (3.0, pytest.approx(1.4826))
    # MAD 0 (3 of 5 tie): mean abs dev (0 0 0 1 4)/5 = 1 -> 1.2533
    assert stats.robust_center_scale([5, 5, 5, 6, 9]) == (5.0, pytest.approx(1.2533))
    assert stats.robust_center_scale([2, 2, 2]) == (2.0, 0.0)
    med, scale = stats.robust_center_scale([np.nan])
    assert np.isnan(med) and np.isnan(scale)


def test_robust_center_scale_matches_scipy():
    x = np.random.default_rng(0).normal(size=101)
    med, scale = stats.robust_center_scale(x)
    assert med == pytest.approx(np.median(x))
    assert scale == pytest.approx(scipy.stats.median_abs_deviation(x, scale="normal"), rel=1e-4)
    assert stats.mad(x) == pytest.approx(scale)
    cols = np.stack([x, 2 * x], axis=1)
    np.testing.assert_allclose(stats.mad(cols, axis=0), [scale, 2 * scale])


def test_robust_z():
    z = stats.robust_z([1, 2, 3, 4, 100])
    np.testing.assert_allclose(z, np.array([-2, -1, 0, 1, 97]) / 1.4826)
    # against a reference sample
    np.testing.assert_allclose(stats.robust_z([3, 6], reference=[1, 2, 3, 4, 100]), [0, 3 / 1.4826])
    # zero-scale reference: 0 at the median, +-inf elsewhere; NaN stays NaN
    z = stats.robust_z([2, 3, 1, np.nan], reference=[2, 2, 2])
    assert z[0] == 0 and z[1] == np.inf and z[2] == -np.inf and np.isnan(z[3])
    assert np.isnan(stats.robust_z([1.0], reference=[np.nan])).all()


def test_benjamini_hochberg_by_hand_and_against_scipy():
    # sorted p 0.01 0.02 0.03 0.04 0.05 (m = 5): p*m/rank = 0.05 0.05 0.05 0.05 0.05
    np.testing.assert_allclose(stats.benjamini_hochberg([0.05, 0.01, 0.03, 0.02, 0.04]), [0.05] * 5)
    # 0.001 0.2 0.5: 0.003, 0.3, 0.5
    np.testing.assert_allclose(stats.benjamini_hochberg([0.5, 0.001, 0.2]), [0.5, 0.003, 0.3])
    p = np.random.default_rng(1).uniform(size=50)
    np.testing.assert_allclose(stats.benjamini_hochberg(p), scipy.stats.false_discovery_control(p))
    q = stats.benjamini_hochberg([0.01, np.nan, 0.04])  # NaN not counted: m = 2
    np.testing.assert_allclose(q[[0, 2]], [0.02, 0.04])
    assert np.isnan(q[1])
    assert stats.benjamini_hochberg([]).shape == (0,)


def test_benjamini_hochberg_hand_values():  # was test_moa_metrics.py
    q = stats.benjamini_hochberg([0.01, 0.04, 0.03, 0.2, np.nan])
    np.testing.assert_allclose(q[:4], [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert np.isnan(q[4])


def test_bh_qvalues_match_scipy_and_ignore_nan():  # was test_novelty_score.py
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.01, size=10)])
    np.testing.assert_allclose(stats.benjamini_hochberg(p), scipy.stats.false_discovery_control(p), rtol=1e-12)
    with_nan = np.concatenate([p, [np.nan, np.nan]])
    q = stats.benjamini_hochberg(with_nan)
    assert np.isnan(q[-2:]).all()
    np.testing.assert_allclose(q[:-2], scipy.stats.false_discovery_control(p), rtol=1e-12)
    assert np.isnan(stats.benjamini_hochberg(np.array([np.nan]))).all()


def test_spread():
    np.testing.assert_array_equal(stats.spread(10, 3), [0, 4, 9])  # linspace 0 4.5 9 -> round half even
    np.testing.assert_array_equal(stats.spread(5, 0), np.arange(5))
    np.testing.assert_array_equal(stats.spread(3, 8), np.arange(3))
    assert len(stats.spread(100, 7)) == 7


def test_z_prime_by_hand():
    # means 10 and 0, sd 1 each: 1 - 3*2/10 = 0.4
    assert stats.z_prime([9, 10, 11], [-1, 0, 1]) == pytest.approx(0.4)
    # robust: medians 10 and 0, MAD 1 each: 1 - 3*2*1.4826/10
    assert stats.z_prime([9, 10, 11], [-1, 0, 1], robust=True) == pytest.approx(1 - 0.6 * 1.4826)
    assert np.isnan(stats.z_prime([1], [0, 1]))
    assert np.isnan(stats.z_prime([1, 2], [1, 2]))
