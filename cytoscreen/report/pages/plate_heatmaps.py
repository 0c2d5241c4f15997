"""The plate page's heatmap section: QC failures, focus, signal, novelty score and q-value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.plate import has_values
from cytoscreen.report import plots, wells
from cytoscreen.report.components import esc, fmt_value, not_run, treatment_text
from cytoscreen.report.settings import ReportSettings


def well_tooltips(summary: pd.DataFrame, extra: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Well -> hover text: treatment, type and MoA; QC sites and flags; the ``extra`` values."""
    out = {}
    for rec in summary.to_dict(orient="records"):
        lines = [
            f"{rec[io.WELL]} \u00b7 {treatment_text(rec) or 'no treatment'} \u00b7 "
            f"{rec.get(io.PERT_TYPE, '')}"
        ]
        if rec.get(io.MOA) is not None and not pd.isna(rec.get(io.MOA)):
            lines[0] += f" \u00b7 {rec[io.MOA]}"
        qc_line = f"sites {rec[wells.SITES]}, failing QC {rec[wells.SITES_FAILED]}"
        if rec.get(wells.QC_REASONS):
            qc_line += f" ({rec[wells.QC_REASONS]})"
        lines.append(qc_line)
        vals = [
            f"{label} {fmt_value(rec.get(col))}"
            for col, label in extra
            if col in rec and rec.get(col) is not None and not pd.isna(rec.get(col))
        ]
        if vals:
            lines.append(", ".join(vals))
        out[str(rec[io.WELL])] = "\n".join(lines)
    return out


def _heatmap_block(uid: str, title: str, detail: str, svg: str) -> str:
    return (
        f'<figure class="hm" id="fig-{esc(uid)}"><figcaption>{esc(title)}'
        f'<span class="d">{esc(detail)}</span></figcaption>{svg}'
        f'<div class="info" id="info-{esc(uid)}">Hover over a well for its metadata.</div>'
        f"</figure>"
    )


def heatmaps_section(
    summary: pd.DataFrame,
    settings: ReportSettings,
    *,
    has_novelty: bool,
    has_wells: bool,
    n_wells: int | None,
) -> str:
    count_col = settings.count_column
    dna_col = f"{io.METADATA_PREFIX}{settings.dna_channel}_MeanIntensity"
    extra = [
        (wells.FOCUS, "focus"),
        (count_col, "cells"),
        (dna_col, f"{settings.dna_channel} mean"),
        (io.NOVELTY_SCORE, "novelty"),
        (io.NOVELTY_ROBUST_Z, "robust z"),
        (io.NOVELTY_QVALUE, "q"),
    ]
    tips = well_tooltips(summary, extra)
    controls = dict(
        zip(summary[io.WELL].astype(str), summary[io.PERT_TYPE].astype(str), strict=True)
    )
    hits: list[str] = []
    if io.NOVELTY_HIT in summary.columns:
        hits = (
            summary.loc[summary[io.NOVELTY_HIT].fillna(False).astype(bool), io.WELL]
            .astype(str)
            .tolist()
        )
    n = wells.plate_format(summary, n_wells=n_wells, source="qc")

    specs: list[tuple[str, str, str, str, dict[str, Any]]] = [
        (
            "hm-qc",
            wells.QC_FAILED_FRACTION,
            "QC failures",
            "fraction of the well's sites with any QC flag",
            {"cmap": "Reds", "vmin": 0.0, "vmax": 1.0, "robust": False},
        ),
    ]
    if wells.FOCUS in summary.columns:  # a QC table without FocusScore columns has no focus map
        specs.append(
            (
                "hm-focus",
                wells.FOCUS,
                "Focus",
                "log10 focus score of the worst site (median over channels); blurred sites are low",
                {"cmap": "viridis"},
            )
        )
    if has_values(summary, count_col):
        specs.append(
            (
                "hm-signal",
                count_col,
                "Cell count",
                f"{count_col}, mean of QC-passed sites",
                {"cmap": "viridis"},
            )
        )
    elif has_values(summary, dna_col):
        specs.append(
            (
                "hm-signal",
                dna_col,
                f"{settings.dna_channel} signal",
                f"{settings.dna_channel} mean intensity, mean of QC-passed sites (no cell counts: "
                f"segmentation not run)",
                {"cmap": "viridis"},
            )
        )
    if has_novelty and has_values(summary, io.NOVELTY_SCORE):
        specs.append(
            (
                "hm-novelty",
                io.NOVELTY_SCORE,
                "Novelty score",
                "autoencoder reconstruction error; black outline: hit",
                {"cmap": "magma", "hits": True},
            )
        )
        if has_values(summary, io.NOVELTY_ROBUST_Z):
            specs.append(
                (
                    "hm-robustz",
                    io.NOVELTY_ROBUST_Z,
                    "Novelty robust z",
                    "plate hit readout: robust z of the log score against the plate's control wells "
                    "(out-of-sample scores); black outline: hit",
                    {"cmap": "magma", "hits": True},
                )
            )
        if has_values(summary, io.NOVELTY_QVALUE):
            q = summary.assign(
                _mlq=-np.log10(summary[io.NOVELTY_QVALUE].astype(float).clip(lower=1e-300))
            )
            summary = q
            specs.append(
                (
                    "hm-qvalue",
                    "_mlq",
                    "Novelty \u2212log10 q",
                    "Benjamini-Hochberg q-value; black outline: hit",
                    {"cmap": "viridis", "hits": True, "vmin": 0.0},
                )
            )
    if has_wells and wells.SITES_PROFILED in summary.columns:
        specs.append(
            (
                "hm-profiled",
                wells.SITES_PROFILED,
                "Sites profiled",
                "sites aggregated into the well profile (QC-passed)",
                {"cmap": "Blues", "vmin": 0.0, "robust": False},
            )
        )
    blocks = []
    for uid, col, title, detail, opts in specs:
        opts = dict(opts)
        highlight = hits if opts.pop("hits", False) else ()
        matrix = wells.plate_matrix(summary, col, n_wells=n, source="qc")
        svg = plots.heatmap_svg(
            matrix,
            uid=uid,
            title=title,
            tooltips=tips,
            controls=controls,
            highlight=highlight,
            **opts,
        )
        blocks.append(_heatmap_block(uid, title, detail, svg))
    if not has_novelty:
        blocks.append(
            not_run(
                "novelty",
                "No novelty scores were given (--novelty), so there is no "
                "novelty heatmap and no hit calls.",
            )
        )
    legend = (
        '<p class="legend">Wells: \u2212 negcon, + poscon; grey: no data (no site, or every '
        "site failed QC); black outline: novelty hit. Hover over a well (or tap it) for its "
        'metadata; the full table is under <a href="#wells">Wells</a>.</p>'
    )
    return legend + '<div class="grid">' + "".join(blocks) + "</div>"

