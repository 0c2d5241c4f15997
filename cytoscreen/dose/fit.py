"""Dose response of one readout per compound: a monotone trend test and a 4-parameter log-logistic fit.

Trend (:func:`trend_test`)
    Spearman's rank correlation between dose and response over the compound's wells (replicates kept,
    ties mid-ranked) and its two-sided p-value (:func:`scipy.stats.spearmanr`); rho > 0 means the
    readout rises with dose.  NaN with fewer than three wells or a constant dose or response.

Curve (:func:`fit_log_logistic`)
    ``y = bottom + (top - bottom) / (1 + 10 ** (hill * (log10(EC50) - log10(dose))))``, fitted by
    least squares (:func:`scipy.optimize.curve_fit`, trust-region reflective with bounds) on the
    positive doses.  ``bottom`` is the response at low dose and ``top`` at high dose, so a falling
    curve has ``top < bottom`` and the Hill slope stays positive (``HILL_BOUNDS``); log10 EC50 is
    kept within two decades of the tested doses.  A fit that cannot be made gives NaN parameters and
    a ``fit_status`` saying why (:data:`FIT_STATUSES`), never an exception.

Table (:func:`dose_response`)
    One row per compound (``Metadata_perturbation``) of a well table such as ``novelty.parquet``:
    the dose is ``Metadata_concentration`` where the compound has at least ``min_doses`` distinct
    positive concentrations, else the fallback column (``Metadata_dose_index``, a platemap extra
    column) when that has; ``dose_column`` says which.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError

logger = logging.getLogger(__name__)

#: The platemap's dose-step column (``dose_index`` extra column), used when concentrations are missing.
DOSE_INDEX = f"{io.METADATA_PREFIX}dose_index"
#: Hill slope bounds of the fit (a positive slope; the direction is in ``top - bottom``).
HILL_BOUNDS = (0.1, 20.0)
#: Decades beyond the tested doses that log10 EC50 may take.
EC50_MARGIN_DECADES = 2.0

FIT_OK = "ok"
FIT_EC50_OUTSIDE = "ec50_outside_doses"
FIT_TOO_FEW_DOSES = "too_few_doses"
FIT_FLAT = "flat_response"
FIT_NOT_CONVERGED = "not_converged"
#: Every ``fit_status``: parameters are finite for the first two and NaN for the others.
FIT_STATUSES = (FIT_OK, FIT_EC50_OUTSIDE, FIT_TOO_FEW_DOSES, FIT_FLAT, FIT_NOT_CONVERGED)

# columns of the dose table
COMPOUND = io.PERTURBATION
READOUT = "readout"
DOSE_COLUMN = "dose_column"
N_WELLS = "n_wells"
N_DOSES = "n_doses"
DOSE_MIN = "dose_min"
DOSE_MAX = "dose_max"
SPEARMAN = "spearman"
TREND_P = "trend_p"
EC50 = "ec50"
HILL = "hill"
TOP = "top"
BOTTOM = "bottom"
R2 = "r2"
FIT_STATUS = "fit_status"
FIT_REASON = "fit_reason"
COLUMNS = (
    COMPOUND,
    READOUT,
    DOSE_COLUMN,
    N_WELLS,
    N_DOSES,
    DOSE_MIN,
    DOSE_MAX,
    SPEARMAN,
    TREND_P,
    EC50,
    HILL,
    TOP,
    BOTTOM,
    R2,
    FIT_STATUS,
    FIT_REASON,
)


def log_logistic4(
    dose: np.ndarray | float, bottom: float, top: float, ec50: float, hill: float
) -> np.ndarray:
    """The 4-parameter log-logistic curve at ``dose`` (> 0): ``bottom`` at low dose, ``top`` at high."""
    d = np.asarray(dose, dtype=np.float64)
    with np.errstate(over="ignore", divide="ignore"):
        return bottom + (top - bottom) / (1.0 + 10.0 ** (hill * (np.log10(ec50) - np.log10(d))))


def _log_curve(log_dose: np.ndarray, bottom: float, top: float, log_ec50: float, hill: float) -> np.ndarray:
    with np.errstate(over="ignore"):
        return bottom + (top - bottom) / (1.0 + 10.0 ** (hill * (log_ec50 - log_dose)))


@dataclass(frozen=True)
class Trend:
    """Spearman's rho of response against dose, its two-sided p-value and the wells used."""

    spearman: float
    pvalue: float
    n: int


def _finite_pairs(
    dose: Sequence[float] | np.ndarray, response: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(dose, dtype=np.float64).ravel()
    y = np.asarray(response, dtype=np.float64).ravel()
    if d.shape != y.shape:
        raise ValueError(f"dose ({d.size}) and response ({y.size}) differ in length")
    ok = np.isfinite(d) & np.isfinite(y)
    return d[ok], y[ok]


def trend_test(dose: Sequence[float] | np.ndarray, response: Sequence[float] | np.ndarray) -> Trend:
    """Monotone trend of ``response`` with ``dose`` (see the module docstring); NaN pairs are dropped."""
    from scipy.stats import spearmanr

    d, y = _finite_pairs(dose, response)
    if d.size < 3 or np.ptp(d) == 0 or np.ptp(y) == 0:
        return Trend(float("nan"), float("nan"), int(d.size))
    res = spearmanr(d, y)
    return Trend(float(res.statistic), float(res.pvalue), int(d.size))


@dataclass(frozen=True)
class CurveFit:
    """A fitted log-logistic curve; NaN parameters unless ``status`` is ok or ec50_outside_doses."""

    ec50: float = float("nan")
    hill: float = float("nan")
    top: float = float("nan")
    bottom: float = float("nan")
    r2: float = float("nan")
    status: str = FIT_NOT_CONVERGED
    reason: str = ""

    @property
    def fitted(self) -> bool:
        return self.status in (FIT_OK, FIT_EC50_OUTSIDE)

    def predict(self, dose: np.ndarray | float) -> np.ndarray:
        """The fitted curve at ``dose``."""
        return log_logistic4(dose, self.bottom, self.top, self.ec50, self.hill)


def fit_log_logistic(
    dose: Sequence[float] | np.ndarray,
    response: Sequence[float] | np.ndarray,
    *,
    min_doses: int = 4,
    max_evaluations: int = 10000,
) -> CurveFit:
    """Fit the 4-parameter log-logistic curve to the wells with a finite positive dose and response.

    Parameters
    ----------
    dose, response
        One value per well (replicates as separate wells).
    min_doses
        Fewest distinct positive doses to fit four parameters (fewer: ``too_few_doses``).
    max_evaluations
        Function evaluations allowed to the optimiser (``max_nfev``).

    Returns
    -------
    CurveFit
        EC50 in dose units; ``ec50_outside_doses`` when it lies beyond the tested doses (the curve
        is then an extrapolation); NaN parameters and the reason otherwise.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    d, y = _finite_pairs(dose, response)
    keep = d > 0
    d, y = d[keep], y[keep]
    n_doses = int(np.unique(d).size)
    if n_doses < max(int(min_doses), 4):
        return CurveFit(
            status=FIT_TOO_FEW_DOSES,
            reason=f"{n_doses} distinct positive dose(s); at least {max(int(min_doses), 4)} needed",
        )
    if np.ptp(y) == 0:
        return CurveFit(status=FIT_FLAT, reason="the response is the same at every dose")
    x = np.log10(d)
    lo_x, hi_x = float(x.min()), float(x.max())
    low = float(np.mean(y[x == lo_x]))
    high = float(np.mean(y[x == hi_x]))
    span = float(np.ptp(y))
    p0 = [low, high if high != low else low + span, 0.5 * (lo_x + hi_x), 1.0]
    bounds = (
        [-np.inf, -np.inf, lo_x - EC50_MARGIN_DECADES, HILL_BOUNDS[0]],
        [np.inf, np.inf, hi_x + EC50_MARGIN_DECADES, HILL_BOUNDS[1]],
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            popt, _ = curve_fit(
                _log_curve, x, y, p0=p0, bounds=bounds, method="trf", max_nfev=int(max_evaluations)
            )
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as err:
        return CurveFit(status=FIT_NOT_CONVERGED, reason=str(err).splitlines()[0][:200])
    bottom, top, log_ec50, hill = (float(v) for v in popt)
    if not np.all(np.isfinite(popt)):
        return CurveFit(status=FIT_NOT_CONVERGED, reason="the optimiser returned non-finite parameters")
    resid = y - _log_curve(x, *popt)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")
    status, reasons = FIT_OK, []
    if not lo_x <= log_ec50 <= hi_x:
        status = FIT_EC50_OUTSIDE
        reasons.append(f"EC50 {10**log_ec50:.3g} outside the tested doses {10**lo_x:.3g}-{10**hi_x:.3g}")
    if hill >= 0.999 * HILL_BOUNDS[1]:
        reasons.append(
            f"Hill slope at its bound {HILL_BOUNDS[1]:g}: the response steps between two adjacent doses, "
            "so the EC50 is only known to lie between them"
        )
    reason = "; ".join(reasons)
    return CurveFit(
        ec50=float(10.0**log_ec50), hill=hill, top=top, bottom=bottom, r2=r2, status=status, reason=reason
    )


def _dose_values(rows: pd.DataFrame, column: str | None) -> np.ndarray:
    if column is None or column not in rows.columns:
        return np.full(len(rows), np.nan)
    return pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float64)


def _n_positive_doses(values: np.ndarray) -> int:
    return int(np.unique(values[np.isfinite(values) & (values > 0)]).size)


def choose_dose_column(
    rows: pd.DataFrame,
    *,
    dose_column: str = io.CONCENTRATION,
    fallback_column: str | None = DOSE_INDEX,
    min_doses: int = 4,
) -> str | None:
    """``dose_column`` when ``rows`` hold at least ``min_doses`` distinct positive values in it, else
    ``fallback_column`` when that has them, else the one of the two with more (None if neither has one)."""
    counts = {}
    for col in (dose_column, fallback_column):
        if col is not None and col in rows.columns:
            counts[col] = _n_positive_doses(_dose_values(rows, col))
            if counts[col] >= min_doses:
                return col
    best = max(counts.items(), key=lambda kv: kv[1], default=(None, 0))
    return best[0] if best[1] > 0 else None


def dose_response(
    table: pd.DataFrame,
    readout: str,
    *,
    dose_column: str = io.CONCENTRATION,
    fallback_column: str | None = DOSE_INDEX,
    compound_column: str = io.PERTURBATION,
    pert_types: Sequence[str] = ("trt", "poscon"),
    min_doses: int = 4,
    source: str = "table",
) -> pd.DataFrame:
    """One row per compound of a well table: trend test and log-logistic fit of ``readout`` on dose.

    Parameters
    ----------
    table
        One row per well (``novelty.parquet``): ``compound_column``, ``readout`` and a dose column.
    readout
        The response column (e.g. ``Metadata_Novelty_Score``).
    dose_column, fallback_column
        Dose columns, tried per compound (see :func:`choose_dose_column`).
    pert_types
        ``Metadata_pert_type`` values whose wells enter a compound's series (negative controls have no
        dose); all rows when the table has no pert type column.
    min_doses
        Fewest distinct positive doses for a fit (and a row with ``too_few_doses`` otherwise).

    Returns
    -------
    DataFrame
        :data:`COLUMNS`, sorted by compound.  Compounds with a single dose or none are left out; a
        table without any dose column gives an empty table (and a warning): a screen without dose
        series is not an error.
    """
    for col in (compound_column, readout):
        if col not in table.columns:
            raise InputDataError(
                f"{source}: no {col} column (columns: {', '.join(map(str, table.columns[:15]))})"
            )
    if dose_column not in table.columns and (fallback_column is None or fallback_column not in table.columns):
        logger.warning(
            "%s: no dose column (%s%s): no dose response; the table is empty",
            source,
            dose_column,
            f" or {fallback_column}" if fallback_column else "",
        )
        return empty_table()
    rows = table
    if io.PERT_TYPE in table.columns:
        wanted = {str(t).strip().lower() for t in pert_types}
        rows = table[table[io.PERT_TYPE].astype(str).str.strip().str.lower().isin(wanted)]
    records = []
    for compound, sub in rows.groupby(compound_column, sort=True, dropna=True):
        col = choose_dose_column(sub, dose_column=dose_column, fallback_column=fallback_column, min_doses=min_doses)
        if col is None:
            continue
        dose = _dose_values(sub, col)
        resp = pd.to_numeric(sub[readout], errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(dose) & (dose > 0) & np.isfinite(resp)
        n_doses = int(np.unique(dose[ok]).size)
        if n_doses < 2:
            continue
        trend = trend_test(dose[ok], resp[ok])
        fit = fit_log_logistic(dose[ok], resp[ok], min_doses=min_doses)
        records.append(
            {
                COMPOUND: compound,
                READOUT: readout,
                DOSE_COLUMN: col,
                N_WELLS: int(ok.sum()),
                N_DOSES: n_doses,
                DOSE_MIN: float(dose[ok].min()),
                DOSE_MAX: float(dose[ok].max()),
                SPEARMAN: trend.spearman,
                TREND_P: trend.pvalue,
                EC50: fit.ec50,
                HILL: fit.hill,
                TOP: fit.top,
                BOTTOM: fit.bottom,
                R2: fit.r2,
                FIT_STATUS: fit.status,
                FIT_REASON: fit.reason,
            }
        )
    return _typed(pd.DataFrame(records, columns=list(COLUMNS)))


def _typed(out: pd.DataFrame) -> pd.DataFrame:
    for col in (N_WELLS, N_DOSES):
        out[col] = out[col].astype("int64")
    for col in (DOSE_MIN, DOSE_MAX, SPEARMAN, TREND_P, EC50, HILL, TOP, BOTTOM, R2):
        out[col] = out[col].astype("float64")
    for col in (COMPOUND, READOUT, DOSE_COLUMN, FIT_STATUS, FIT_REASON):
        out[col] = out[col].astype(object)
    return out.reset_index(drop=True)


def empty_table() -> pd.DataFrame:
    """A dose table with no compound (:data:`COLUMNS`, typed as :func:`dose_response` writes them)."""
    return _typed(pd.DataFrame(columns=list(COLUMNS)))


def curve_from_row(row: pd.Series | dict) -> CurveFit:
    """The :class:`CurveFit` of one row of a dose table."""
    return CurveFit(
        ec50=float(row[EC50]),
        hill=float(row[HILL]),
        top=float(row[TOP]),
        bottom=float(row[BOTTOM]),
        r2=float(row[R2]),
        status=str(row[FIT_STATUS]),
        reason=str(row[FIT_REASON] or ""),
    )
