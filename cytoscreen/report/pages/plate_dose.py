"""The plate page's dose-response section: fitted curves of ``dose.parquet`` over the plate's wells."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.dose import fit
from cytoscreen.plate import negcon_mask
from cytoscreen.report import controls, plots
from cytoscreen.report.components import Column, esc, not_run, table_html

#: Most compounds drawn as panels (the table lists every one).
MAX_PANELS = 12
#: Fewest doses of a compound drawn as a panel.
MIN_PANEL_DOSES = 3


def _panel(row: pd.Series, wells: pd.DataFrame, reference: float) -> plots.DosePanel:
    readout, dose_col = str(row[fit.READOUT]), str(row[fit.DOSE_COLUMN])
    sub = wells[wells[fit.COMPOUND].astype(str) == str(row[fit.COMPOUND])]
    sub = sub[~negcon_mask(sub)]
    dose = pd.to_numeric(sub[dose_col], errors="coerce") if dose_col in sub.columns else pd.Series(dtype=float)
    resp = pd.to_numeric(sub[readout], errors="coerce") if readout in sub.columns else pd.Series(dtype=float)
    ok = (dose > 0) & dose.notna() & resp.notna()
    curve = fit.curve_from_row(row)
    cx = cy = np.array([])
    if curve.fitted:
        lo, hi = float(row[fit.DOSE_MIN]), float(row[fit.DOSE_MAX])
        cx = np.geomspace(lo / 2, hi * 2, 120)
        cy = curve.predict(cx)
    status = f"EC50 {curve.ec50:.3g}" if curve.fitted else str(row[fit.FIT_STATUS]).replace("_", " ")
    rho = row[fit.SPEARMAN]
    title = f"{row[fit.COMPOUND]}: {status}" + (f", \u03c1 {rho:.2f}" if np.isfinite(rho) else "")
    return plots.DosePanel(
        title=title,
        dose=dose[ok].to_numpy(float),
        response=resp[ok].to_numpy(float),
        curve_dose=cx,
        curve_response=cy,
        ec50=curve.ec50 if curve.fitted else float("nan"),
        reference=reference,
        dose_label=dose_col,
    )


def _negcon_median(wells: pd.DataFrame, readout: str) -> float:
    """Median of the readout over the out-of-sample negcon wells (NaN when there is none)."""
    if readout not in wells.columns or io.PERT_TYPE not in wells.columns:
        return float("nan")
    neg = negcon_mask(wells)
    values = controls.control_values(wells, readout)[neg].dropna()
    return float(values.median()) if len(values) else float("nan")


def dose_section(dose: pd.DataFrame | None, wells: pd.DataFrame | None) -> str:
    """Curves and table of the compounds of ``dose`` (``cytoscreen dose``) that are on this plate.

    ``wells`` holds this plate's rows of the table the curves were fitted on (``novelty.parquet``):
    the points drawn.  The curves themselves are the fitted parameters of ``dose``, over every plate.
    """
    if dose is None:
        return not_run("dose", "No dose table was given (--dose): no dose-response curves.")
    if wells is None:
        return not_run("novelty", "No novelty table was given (--novelty): no wells to plot the doses of.")
    missing = [c for c in fit.COLUMNS if c not in dose.columns]
    if missing:
        return f'<p class="not-run">The dose table lacks {esc(", ".join(missing))}; is it a dose.parquet?</p>'
    on_plate = set(wells[fit.COMPOUND].astype(str)) if fit.COMPOUND in wells.columns else set()
    rows = dose[dose[fit.COMPOUND].astype(str).isin(on_plate)].reset_index(drop=True)
    if rows.empty:
        return (
            "<p>No compound on this plate has wells at two or more doses (the platemap's "
            f"{esc(io.CONCENTRATION)} or dose_index column), so there is no dose response.</p>"
        )
    readout = sorted(set(rows[fit.READOUT].astype(str)))[0]
    reference = _negcon_median(wells, readout)
    # panels: compounds with a series to fit, fitted ones first, strongest trend first
    series = rows[rows[fit.N_DOSES] >= MIN_PANEL_DOSES]
    order = series.assign(
        _fitted=~series[fit.FIT_STATUS].isin([fit.FIT_OK, fit.FIT_EC50_OUTSIDE]),
        _trend=-series[fit.SPEARMAN].abs().fillna(0.0),
    ).sort_values(["_fitted", "_trend"], kind="stable")
    shown = order.head(MAX_PANELS)
    if len(shown):
        panels = [_panel(r, wells, reference) for _, r in shown.iterrows()]
        img = plots.dose_curves(panels, readout=readout)
        figure = f'<figure><img id="dose-plot" alt="dose-response curves" src="{img}"></figure>'
        if len(series) > len(shown):
            figure += f"<p>Curves of {len(shown)} of {len(series)} compounds; the table lists all.</p>"
    else:
        figure = (
            f'<p class="legend">No compound has {MIN_PANEL_DOSES} or more doses, so there is no curve '
            "to draw; the table gives each compound's trend.</p>"
        )
    cols: list[Column] = [
        (fit.COMPOUND, "compound"),
        (fit.DOSE_COLUMN, "dose column"),
        (fit.N_DOSES, "doses"),
        (fit.N_WELLS, "wells"),
        (fit.SPEARMAN, "Spearman \u03c1"),
        (fit.TREND_P, "trend p"),
        (fit.EC50, "EC50"),
        (fit.HILL, "Hill"),
        (fit.BOTTOM, "bottom"),
        (fit.TOP, "top"),
        (fit.R2, "R\u00b2"),
        (fit.FIT_STATUS, "fit"),
        (fit.FIT_REASON, "why"),
    ]
    return (
        f"<p>Readout <code>{esc(readout)}</code> against dose per compound: Spearman's \u03c1 with its "
        "p-value (a monotone trend test) and a 4-parameter log-logistic fit "
        "(bottom + (top \u2212 bottom) / (1 + (EC50 / dose)<sup>Hill</sup>)). Points: this plate's "
        "wells; curves: fitted over every plate's wells; dotted line: negcon median (out-of-sample "
        "values).</p>"
        + figure
        + table_html(rows, cols, table_id="dose-table")
    )
