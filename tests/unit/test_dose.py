"""Dose response: the log-logistic fit recovers known EC50s, the trend test tells monotone from flat."""

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.dose import fit
from cytoscreen.errors import InputDataError


def _series(ec50, hill, bottom, top, *, doses, replicates=4, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    d = np.repeat(np.asarray(doses, dtype=float), replicates)
    y = fit.log_logistic4(d, bottom, top, ec50, hill)
    return d, y + rng.normal(0.0, noise * abs(top - bottom), d.size)


def test_curve_definition():
    # at the EC50 the response is half-way; far below bottom, far above top
    assert fit.log_logistic4(2.0, 1.0, 5.0, 2.0, 1.3) == pytest.approx(3.0)
    assert fit.log_logistic4(2e-6, 1.0, 5.0, 2.0, 1.0) == pytest.approx(1.0, abs=1e-4)
    assert fit.log_logistic4(2e6, 1.0, 5.0, 2.0, 1.0) == pytest.approx(5.0, abs=1e-4)
    # hill 1: a dose 9x the EC50 gives 90% of the span
    assert fit.log_logistic4(18.0, 0.0, 1.0, 2.0, 1.0) == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("ec50", "hill", "bottom", "top", "doses"),
    [
        (1.0, 1.0, 0.0, 10.0, np.geomspace(0.01, 100, 9)),
        (0.05, 2.0, 3.0, 0.5, np.geomspace(0.001, 10, 8)),  # a falling curve
        (25.0, 0.8, 1.0, 4.0, [0.31, 0.63, 1.25, 2.5, 5, 10, 20, 40, 80, 160, 320]),
    ],
)
def test_fit_recovers_a_known_ec50(ec50, hill, bottom, top, doses):
    d, y = _series(ec50, hill, bottom, top, doses=doses, seed=int(ec50 * 100))
    got = fit.fit_log_logistic(d, y)
    assert got.status == fit.FIT_OK and got.fitted and got.reason == ""
    assert got.ec50 == pytest.approx(ec50, rel=0.10)
    assert got.hill == pytest.approx(hill, rel=0.25)
    assert got.bottom == pytest.approx(bottom, abs=0.1 * abs(top - bottom))
    assert got.top == pytest.approx(top, abs=0.1 * abs(top - bottom))
    assert got.r2 > 0.95
    assert got.predict(ec50) == pytest.approx((bottom + top) / 2, abs=0.1 * abs(top - bottom))


def test_fit_failures_are_nan_with_a_reason():
    few = fit.fit_log_logistic([1, 1, 2, 2, 3, 3], [1, 2, 3, 4, 5, 6])
    assert few.status == fit.FIT_TOO_FEW_DOSES and "3 distinct" in few.reason
    assert np.isnan([few.ec50, few.hill, few.top, few.bottom]).all() and not few.fitted
    flat = fit.fit_log_logistic([1, 2, 4, 8, 16], [2.0] * 5)
    assert flat.status == fit.FIT_FLAT and np.isnan(flat.ec50)
    # zero and NaN doses are dropped (a log-logistic curve has no dose 0): 3 doses left
    zeros = fit.fit_log_logistic([0, 0, 1, 2, 4, np.nan], [0, 0, 1, 2, 3, 9])
    assert zeros.status == fit.FIT_TOO_FEW_DOSES
    # an optimiser that gives up is a status, not an exception
    d, y = _series(1.0, 1.0, 0.0, 10.0, doses=np.geomspace(0.01, 100, 9))
    stuck = fit.fit_log_logistic(d, y, max_evaluations=1)
    assert stuck.status == fit.FIT_NOT_CONVERGED and np.isnan(stuck.ec50) and stuck.reason
    # still rising at the top dose: the EC50 lies beyond the tested doses and says so
    d, y = _series(500.0, 1.0, 0.0, 10.0, doses=np.geomspace(0.01, 10, 7), noise=0.001)
    out = fit.fit_log_logistic(d, y)
    assert out.status == fit.FIT_EC50_OUTSIDE and out.ec50 > 10 and "outside" in out.reason
    # a step between two adjacent doses: fitted, the EC50 between them, the slope at its bound said
    d = np.repeat(np.geomspace(0.01, 100, 9), 3)
    step = fit.fit_log_logistic(d, np.where(d > 1.5, 10.0, 0.0) + np.tile([0.0, 0.1, -0.1], 9))
    assert step.status == fit.FIT_OK and 1.0 < step.ec50 < 3.17 and "Hill slope at its bound" in step.reason


def test_trend_test_monotone_vs_flat():
    d, y = _series(1.0, 1.0, 0.0, 10.0, doses=np.geomspace(0.01, 100, 9), replicates=3)
    rising = fit.trend_test(d, y)
    assert rising.spearman > 0.9 and rising.pvalue < 1e-6 and rising.n == 27
    falling = fit.trend_test(d, -y)
    assert falling.spearman < -0.9 and falling.pvalue == pytest.approx(rising.pvalue)
    rng = np.random.default_rng(3)
    flat = fit.trend_test(d, rng.normal(0, 1, d.size))
    assert abs(flat.spearman) < 0.4 and flat.pvalue > 0.05
    # a perfectly monotone series has rho 1; constant inputs and too few pairs give NaN
    assert fit.trend_test([1, 2, 3, 4], [1, 4, 9, 16]).spearman == pytest.approx(1.0)
    assert np.isnan(fit.trend_test([1, 2, 3], [5, 5, 5]).pvalue)
    assert np.isnan(fit.trend_test([1, 2, np.nan], [1, 2, 3]).spearman)


def _plate(seed=0):
    """A BBBC013-like plate: compound A with concentrations, B with a dose index only, DMSO."""
    rng = np.random.default_rng(seed)
    rows = []
    conc = [0.31, 0.63, 1.25, 2.5, 5, 10, 20, 40, 80]
    for _rep in range(4):
        for i, c in enumerate(conc):
            score = fit.log_logistic4(c, 1.0, 9.0, 5.0, 1.5) + rng.normal(0, 0.1)
            rows.append({io.PERTURBATION: "A", io.CONCENTRATION: c, fit.DOSE_INDEX: i + 1,
                         io.PERT_TYPE: "trt", io.NOVELTY_SCORE: score})
            score = fit.log_logistic4(i + 1, 1.0, 5.0, 4.0, 3.0) + rng.normal(0, 0.1)
            rows.append({io.PERTURBATION: "B", io.CONCENTRATION: np.nan, fit.DOSE_INDEX: i + 1,
                         io.PERT_TYPE: "trt", io.NOVELTY_SCORE: score})
        rows.append({io.PERTURBATION: "DMSO", io.CONCENTRATION: 0.0, fit.DOSE_INDEX: 0,
                     io.PERT_TYPE: "negcon", io.NOVELTY_SCORE: 1.0})
        rows.append({io.PERTURBATION: "C", io.CONCENTRATION: 1.0, fit.DOSE_INDEX: 1,
                     io.PERT_TYPE: "trt", io.NOVELTY_SCORE: 2.0})
    rows.append({io.PERTURBATION: "D", io.CONCENTRATION: 1.0, fit.DOSE_INDEX: 1,
                 io.PERT_TYPE: "trt", io.NOVELTY_SCORE: 2.0})
    rows.append({io.PERTURBATION: "D", io.CONCENTRATION: 2.0, fit.DOSE_INDEX: 2,
                 io.PERT_TYPE: "trt", io.NOVELTY_SCORE: 3.0})
    return pd.DataFrame(rows)


def test_dose_response_table_per_compound():
    out = fit.dose_response(_plate(), io.NOVELTY_SCORE).set_index(fit.COMPOUND)
    assert list(out.reset_index().columns) == list(fit.COLUMNS)
    # DMSO (negcon) and C (one dose) have no row; D has two doses: a trend, no fit
    assert sorted(out.index) == ["A", "B", "D"]
    a, b, d = out.loc["A"], out.loc["B"], out.loc["D"]
    assert a[fit.DOSE_COLUMN] == io.CONCENTRATION and a[fit.N_DOSES] == 9 and a[fit.N_WELLS] == 36
    assert a[fit.EC50] == pytest.approx(5.0, rel=0.10) and a[fit.FIT_STATUS] == fit.FIT_OK
    assert a[fit.SPEARMAN] > 0.9 and a[fit.TREND_P] < 1e-6
    assert (a[fit.DOSE_MIN], a[fit.DOSE_MAX]) == (0.31, 80.0)
    assert b[fit.DOSE_COLUMN] == fit.DOSE_INDEX and b[fit.EC50] == pytest.approx(4.0, rel=0.10)
    assert d[fit.FIT_STATUS] == fit.FIT_TOO_FEW_DOSES and np.isnan(d[fit.EC50])
    assert out[fit.READOUT].eq(io.NOVELTY_SCORE).all()
    # the fitted row gives back the curve
    curve = fit.curve_from_row(a)
    assert curve.fitted and curve.predict(a[fit.EC50]) == pytest.approx((a[fit.TOP] + a[fit.BOTTOM]) / 2)


def test_dose_response_errors():
    table = _plate()
    with pytest.raises(InputDataError, match="Metadata_Nope"):
        fit.dose_response(table, "Metadata_Nope")
    # a screen without doses is not an error: an empty table of the same columns and types
    no_dose = fit.dose_response(table.drop(columns=[io.CONCENTRATION, fit.DOSE_INDEX]), io.NOVELTY_SCORE)
    assert no_dose.empty and no_dose.dtypes.equals(fit.dose_response(table, io.NOVELTY_SCORE).dtypes)
    empty = fit.dose_response(table[table[io.PERT_TYPE] == "negcon"], io.NOVELTY_SCORE)
    assert empty.empty and list(empty.columns) == list(fit.COLUMNS)


def test_dose_command(tmp_path):
    src = tmp_path / "novelty.parquet"
    io.write_parquet(_plate(), src)
    out = tmp_path / "dose.parquet"
    assert main(["dose", str(src), str(out), "--readout", "auto"]) == 0
    table = pd.read_parquet(out)
    assert sorted(table[fit.COMPOUND]) == ["A", "B", "D"]
    assert table[fit.READOUT].eq(io.NOVELTY_SCORE).all()
    assert main(["dose", str(src), str(out), "--fallback-dose-column", "none"]) == 0
    assert sorted(pd.read_parquet(out)[fit.COMPOUND]) == ["A", "D"]  # B has no concentrations
    assert main(["dose", str(src), str(out), "--readout", "Metadata_missing"]) != 0  # a named readout must exist
    # novelty with too few controls writes NaN scores: the auto readout finds none, the table is empty
    nan_scores = _plate().assign(**{io.NOVELTY_SCORE: np.nan})
    io.write_parquet(nan_scores, src)
    assert main(["dose", str(src), str(out)]) == 0
    assert pd.read_parquet(out).empty and list(pd.read_parquet(out).columns) == list(fit.COLUMNS)
