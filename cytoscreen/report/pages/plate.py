"""The plate page: :func:`plate_report` (summary, heatmaps, controls, thumbnails, well table)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError
from cytoscreen.plate import resolve_readout
from cytoscreen.report import controls, tables
from cytoscreen.report.components import (
    Column,
    card,
    esc,
    fmt_value,
    footer,
    page,
    section,
    table_html,
    treatment_text,
)
from cytoscreen.report.pages.plate_controls import controls_section
from cytoscreen.report.pages.plate_dose import dose_section
from cytoscreen.report.pages.plate_gallery import gallery_section
from cytoscreen.report.pages.plate_heatmaps import heatmaps_section
from cytoscreen.report.settings import ReportSettings
from cytoscreen.report.wells import (
    FOCUS,
    QC_REASONS,
    SITES,
    SITES_FAILED,
    SITES_PROFILED,
    plate_rows,
    well_summary,
)

logger = logging.getLogger(__name__)


def _summary_section(psum: Mapping[str, Any], quality: controls.ControlQuality) -> str:
    rate = psum["qc_pass_rate"]
    rate_level = "good" if rate >= 0.95 else "warn" if rate >= 0.85 else "bad"
    z = quality.z_prime
    z_level = {"excellent": "good", "acceptable": "warn", "poor": "bad"}.get(quality.verdict, "")
    cards = [
        card(
            "QC pass rate",
            fmt_value(rate, "pct"),
            f"{psum['sites_passed_qc']:,} of {psum['sites']:,} sites",
            rate_level,
        ),
        card(
            "Z'",
            fmt_value(z) or "NA",
            f"{quality.verdict}; {quality.readout or 'no readout'}",
            z_level,
        ),
    ]
    if "hits" in psum:
        cards.append(card("Hits", f"{psum['hits']:,}", f"of {psum['wells_tested']:,} tested wells"))
    else:
        cards.append(card("Hits", "\u2013", "novelty stage not run"))
    if "wells_profiled" in psum:
        cards.append(
            card("Wells profiled", f"{psum['wells_profiled']:,}", f"of {psum['wells']:,} wells")
        )
    labels = {
        "plate": "plate",
        "batch": "batch",
        "sites": "sites",
        "wells": "wells",
        "wells_negcon": "negcon wells",
        "wells_poscon": "poscon wells",
        "wells_trt": "treated wells",
        "sites_passed_qc": "sites passing QC",
        "qc_pass_rate": "QC pass rate",
        "wells_profiled": "wells profiled",
        "wells_tested": "wells tested for novelty",
        "hits": "hits",
        "novelty_zprime": "Z' of the novelty stage's plate readout",
        "readout": "control readout",
        "z_prime": "Z'",
        "robust_z_prime": "robust Z'",
    }
    layout, results = [], []
    for key, value in psum.items():
        label = labels.get(
            key, f"sites {key.removeprefix(io.QC_PREFIX)}" if key.startswith(io.QC_PREFIX) else key
        )
        row = {"item": label, "value": fmt_value(value, "pct" if key == "qc_pass_rate" else "auto")}
        (layout if key in _LAYOUT_KEYS else results).append(row)
    cols: list[Column] = [("item", "item"), ("value", "value")]
    return (
        '<div class="cards" id="glance">'
        + "".join(cards)
        + "</div>"
        + '<div class="grid" id="summary-table">'
        + table_html(layout, cols, sortable=False)
        + table_html(results, cols, sortable=False)
        + "</div>"
    )


_LAYOUT_KEYS = ("plate", "batch", "sites", "wells", "wells_negcon", "wells_poscon", "wells_trt")


def _well_table(summary: pd.DataFrame, settings: ReportSettings) -> str:
    cols: list[Column] = [(io.WELL, "well"), ("_treatment", "treatment"), (io.PERT_TYPE, "type")]
    if io.MOA in summary.columns:
        cols.append((io.MOA, "MoA"))
    cols += [(SITES, "sites"), (SITES_FAILED, "QC failed"), (QC_REASONS, "flags")]
    for col, label in (
        (FOCUS, "focus (log10)"),
        (settings.count_column, "cells"),
        (
            f"{io.METADATA_PREFIX}{settings.dna_channel}_MeanIntensity",
            f"{settings.dna_channel} mean",
        ),
        (SITES_PROFILED, "sites profiled"),
        (io.NOVELTY_SCORE, "novelty"),
        (io.NOVELTY_ROBUST_Z, "robust z"),
        (io.NOVELTY_QVALUE, "q"),
        (io.NOVELTY_HIT, "hit"),
    ):
        if col in summary.columns:
            cols.append((col, label))
    table = summary.assign(_treatment=[treatment_text(r) for r in summary.to_dict(orient="records")])
    if io.NOVELTY_HIT in table.columns:
        table[io.NOVELTY_HIT] = (
            table[io.NOVELTY_HIT].astype(object).where(table[io.NOVELTY_HIT].notna(), None)
        )
    return (
        f"<details><summary>Show all {len(summary):,} wells (click a header to sort)</summary>"
        + '<div class="scroll">'
        + table_html(table, cols, table_id="well-table")
        + "</div></details>"
    )


def plate_report(
    qc: pd.DataFrame,
    *,
    plate: str,
    images: pd.DataFrame | None = None,
    wells: pd.DataFrame | None = None,
    novelty: pd.DataFrame | None = None,
    counts: pd.DataFrame | None = None,
    dose: pd.DataFrame | None = None,
    settings: ReportSettings | None = None,
    n_wells: int | None = None,
    inputs: Mapping[str, str | None] | None = None,
    config_hash: str | None = None,
) -> str:
    """The HTML report of one plate.

    ``qc`` is required; ``images`` (thumbnails), ``wells`` (well profiles), ``novelty`` (scores and
    hits, any plates), ``counts`` (per-site cell counts) and ``dose`` (``cytoscreen dose`` table) are
    optional and their sections say "Stage not run" when missing.  Rows of other plates are ignored.
    ``inputs`` (name -> path or None) is listed in the footer.
    """
    settings = settings or ReportSettings()
    qc = plate_rows(qc, plate, "qc")
    if qc.empty:
        raise InputDataError(f"plate {plate}: no sites in the QC table")
    images = plate_rows(images, plate, "images") if images is not None else None
    wells = plate_rows(wells, plate, "wells") if wells is not None else None
    counts = plate_rows(counts, plate, "counts") if counts is not None else None
    nov = plate_rows(novelty, plate, "novelty") if novelty is not None else None
    summary = well_summary(
        qc,
        novelty=nov,
        wells=wells,
        counts=counts,
        count_column=settings.count_column,
        source=f"plate {plate} qc",
    )
    readout, how = resolve_readout(
        summary,
        settings.readout,
        dna_channel=settings.dna_channel,
        count_column=settings.count_column,
    )
    if readout is None:
        logger.warning("plate %s: %s", plate, how)
    quality = controls.control_quality(summary, readout)
    psum = tables.plate_summary(summary, quality=quality)
    batch = psum.get("batch") or ""
    subtitle = (
        f"{psum['wells']:,} wells, {psum['sites']:,} sites"
        + (f" &middot; batch {esc(batch)}" if batch else "")
        + " &middot; cytoscreen plate report"
    )
    body = [
        section("summary", "Summary", _summary_section(psum, quality)),
        section(
            "heatmaps",
            "Plate heatmaps",
            heatmaps_section(
                summary,
                settings,
                has_novelty=nov is not None,
                has_wells=wells is not None,
                n_wells=n_wells or settings.plate_wells,
            ),
        ),
        section("controls", "Control quality", controls_section(summary, quality, how, settings)),
        section("dose", "Dose response", dose_section(dose, nov)),
        section("gallery", "Thumbnails", gallery_section(qc, images, nov, settings)),
        section("wells", "Wells", _well_table(summary, settings)),
    ]
    nav = [
        ("summary", "Summary"),
        ("heatmaps", "Heatmaps"),
        ("controls", "Controls"),
        ("dose", "Dose"),
        ("gallery", "Thumbnails"),
        ("wells", "Wells"),
        ("provenance", "Inputs"),
    ]
    logger.info(
        "plate %s: %d wells, %d sites, QC pass rate %.1f%%, Z' %s (%s), %s hits",
        plate,
        psum["wells"],
        psum["sites"],
        100 * psum["qc_pass_rate"],
        fmt_value(quality.z_prime) or "NA",
        readout,
        psum.get("hits", "no novelty;"),
    )
    return page(
        kind="plate",
        title=f"{plate} \u2013 cytoscreen plate report",
        heading=f"Plate {plate}",
        subtitle=subtitle,
        nav=nav,
        body="\n".join(body),
        footer=footer(inputs or {}, config_hash),
    )

