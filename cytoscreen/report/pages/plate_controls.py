"""The plate page's control-quality section: negcon vs poscon distribution and Z' per readout."""

from __future__ import annotations

import pandas as pd

from cytoscreen import io
from cytoscreen.report import controls, plots
from cytoscreen.report.components import esc, fmt_value, not_run, table_html
from cytoscreen.report.settings import ReportSettings


def controls_section(
    summary: pd.DataFrame, quality: controls.ControlQuality, how: str, settings: ReportSettings
) -> str:
    """Distribution of the readout per pert type (out-of-sample values only), control statistics and
    Z' on every candidate readout."""
    if quality.readout is None:
        return not_run("readout", how)
    pert = summary[io.PERT_TYPE].astype(str)
    values = controls.control_values(summary, quality.readout)  # in-sample novelty values left out
    groups = {
        k: values[pert == k].to_numpy() for k in ("negcon", "poscon", "trt") if (pert == k).any()
    }
    img = plots.control_distribution(groups, readout=quality.readout, z_prime=quality.z_prime)
    stats = [
        {
            "group": "negcon",
            "wells": quality.n_negcon,
            "mean": quality.mean_negcon,
            "sd": quality.sd_negcon,
        },
        {
            "group": "poscon",
            "wells": quality.n_poscon,
            "mean": quality.mean_poscon,
            "sd": quality.sd_poscon,
        },
    ]
    z_rows = []
    for col in controls.candidate_readouts(summary, count_column=settings.count_column):
        cq = controls.control_quality(summary, col)
        z_rows.append(
            {"readout": col, "z": cq.z_prime, "rz": cq.robust_z_prime, "verdict": cq.verdict}
        )
    note = f'<p class="legend">{esc(quality.note)}</p>' if quality.note else ""
    return (
        f"<p>Readout <code>{esc(quality.readout)}</code> ({esc(how)}), one value per well. "
        f"Z' = 1 \u2212 3(\u03c3<sub>p</sub> + \u03c3<sub>n</sub>) / |\u03bc<sub>p</sub> \u2212 "
        f'\u03bc<sub>n</sub>| = <strong id="zprime">{esc(fmt_value(quality.z_prime))}</strong> '
        f"({esc(quality.verdict)}; robust Z' with median and MAD: "
        f"{esc(fmt_value(quality.robust_z_prime))}). Z' \u2265 0.5 is an excellent assay window, "
        f"0 to 0.5 acceptable, below 0 the controls overlap.</p>"
        f"{note}"
        f'<div class="grid"><figure><img id="control-plot" alt="negcon vs poscon distribution" '
        f'src="{img}"></figure><div>'
        + table_html(
            stats,
            [("group", "controls"), ("wells", "wells"), ("mean", "mean"), ("sd", "SD")],
            table_id="control-stats",
            sortable=False,
        )
        + "<h3>Z' on other readouts</h3>"
        + table_html(
            z_rows,
            [("readout", "readout"), ("z", "Z'"), ("rz", "robust Z'"), ("verdict", "")],
            table_id="zprime-table",
        )
        + "</div></div>"
    )

