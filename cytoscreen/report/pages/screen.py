"""The screen page: :func:`screen_report` (plates, hits, treatment map, clusters, evaluation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError
from cytoscreen.plate import resolve_readout
from cytoscreen.report import controls, plots, tables
from cytoscreen.report.components import (
    Column,
    csv_data_uri,
    esc,
    footer,
    not_run,
    page,
    section,
    table_html,
    treatment_text,
)
from cytoscreen.report.settings import ReportSettings
from cytoscreen.report.wells import plate_rows, well_summary


def _plates_section(
    qc_tables: Sequence[pd.DataFrame],
    novelty: pd.DataFrame | None,
    links: Mapping[str, str],
    settings: ReportSettings,
) -> str:
    rows = []
    for qc in qc_tables:
        plates = qc[io.PLATE].astype(str).unique() if io.PLATE in qc.columns else ["?"]
        for plate in plates:
            sub = qc[qc[io.PLATE].astype(str) == plate] if io.PLATE in qc.columns else qc
            nov = plate_rows(novelty, plate, "novelty") if novelty is not None else None
            summary = well_summary(
                sub, novelty=nov, count_column=settings.count_column, source=f"plate {plate} qc"
            )
            readout, _ = resolve_readout(
                summary,
                settings.readout,
                dna_channel=settings.dna_channel,
                count_column=settings.count_column,
            )
            quality = controls.control_quality(summary, readout)
            rec = tables.plate_summary(summary, quality=quality)
            rec["verdict"] = quality.verdict
            href = links.get(plate)
            rec["link"] = f'<a href="{esc(href)}">{esc(plate)}</a>' if href else esc(plate)
            rows.append(rec)
    flags = list(dict.fromkeys(k for r in rows for k in r if k.startswith(io.QC_PREFIX)))
    cols: list[Column] = [
        ("link", "plate"),
        ("batch", "batch"),
        ("wells", "wells"),
        ("sites", "sites"),
        ("qc_pass_rate", "QC pass", "pct"),
    ]
    cols += [(f, f.removeprefix(io.QC_PREFIX)) for f in flags]
    cols += [("readout", "Z' readout"), ("z_prime", "Z'"), ("verdict", "")]
    if novelty is not None:
        cols += [("wells_tested", "tested"), ("hits", "hits")]
    return table_html(rows, cols, table_id="plate-table", raw=("link",))


def _evaluation_section(evaluation: Mapping[str, Any] | None) -> str:
    if evaluation is None:
        return not_run("moa (evaluation.json)", "No evaluation was given (--evaluation).")
    rows = [{"metric": k, "value": v, "meaning": m} for k, v, m in tables.evaluation_rows(evaluation)]
    if not rows:
        return "<p>evaluation.json holds no headline metrics.</p>"
    extra = ""
    if evaluation.get("representation"):
        extra = f"<p>Profiles: {esc(evaluation.get('representation'))}.</p>"
    return extra + table_html(
        rows,
        [("metric", "metric"), ("value", "value"), ("meaning", "meaning")],
        table_id="evaluation-table",
        sortable=False,
    )


def _umap_section(
    moa: pd.DataFrame | None,
    profiles: pd.DataFrame | None,
    settings: ReportSettings,
    pca_note: str,
    novelty: pd.DataFrame | None = None,
) -> str:
    blocks = []
    if moa is None:
        blocks.append(not_run("moa", "No moa.parquet was given (--moa): no UMAP of treatments."))
    else:
        cols = tables.moa_columns(moa)
        if cols.umap_1 is None or cols.umap_2 is None:
            blocks.append(
                f'<p class="not-run">moa.parquet has no UMAP columns (looked for {esc(io.UMAP_1)}, '
                f"{esc(io.UMAP_2)} or names ending in umap_1 / umap_2).</p>"
            )
        else:
            drawn = tables.map_sample(moa, cols, novelty=novelty,
                                      max_points=settings.max_map_points)
            if drawn.sampled:
                moa = moa.iloc[drawn.keep]
                blocks.append(_map_note(drawn))
            labels = tables.treatment_labels(moa, cols)
            tips = []
            for i, rec in enumerate(moa.to_dict(orient="records")):
                parts = [labels.iloc[i]]
                if cols.moa and not pd.isna(rec.get(cols.moa)):
                    parts.append(f"MoA {rec[cols.moa]}")
                if cols.cluster:
                    parts.append(f"cluster {rec[cols.cluster]}")
                if cols.plate:
                    parts.append(f"plate {rec[cols.plate]}")
                tips.append(" \u00b7 ".join(str(p) for p in parts))
            colourings = []
            if cols.cluster:
                colourings.append(("umap-cluster", "by cluster", moa[cols.cluster]))
            if cols.moa:
                colourings.append(
                    ("umap-moa", "by known MoA", moa[cols.moa].astype(object).fillna("unknown"))
                )
            if cols.plate:
                colourings.append(("umap-plate", "by plate", moa[cols.plate]))
            elif cols.pert_type:
                colourings.append(("umap-pert", "by pert type", moa[cols.pert_type]))
            for uid, title, cats in colourings:
                svg = plots.scatter_svg(
                    moa[cols.umap_1],
                    moa[cols.umap_2],
                    uid=uid,
                    title=title,
                    categories=cats.tolist(),
                    tooltips=tips,
                    x_label="UMAP 1",
                    y_label="UMAP 2",
                )
                blocks.append(
                    f"<figure><figcaption>Treatments {esc(title)}</figcaption>{svg}</figure>"
                )
            if not cols.plate:
                blocks.append(
                    '<p class="legend">moa.parquet has one row per treatment across plates, so '
                    "plates (batch effects) show in the well-level projection instead.</p>"
                )
    if profiles is not None:
        try:
            pcs, var = tables.pca_2d(profiles, max_points=settings.max_scatter_points)
        except InputDataError as err:
            blocks.append(f'<p class="not-run">No well projection: {esc(err)}</p>')
        else:
            tips = [
                f"{r.get(io.PLATE, '')} {r.get(io.WELL, '')} \u00b7 {treatment_text(r)} \u00b7 "
                f"{r.get(io.PERT_TYPE, '')}"
                for r in pcs.to_dict(orient="records")
            ]
            for uid, col, title in (
                ("pca-plate", io.PLATE, "by plate"),
                ("pca-pert", io.PERT_TYPE, "by pert type"),
            ):
                if col not in pcs.columns:
                    continue
                svg = plots.scatter_svg(
                    pcs["PC1"],
                    pcs["PC2"],
                    uid=uid,
                    title=title,
                    categories=pcs[col].astype(str).tolist(),
                    tooltips=tips,
                    x_label=f"PC1 ({100 * var[0]:.0f}%)",
                    y_label=f"PC2 ({100 * var[1]:.0f}%)",
                )
                blocks.append(
                    f"<figure><figcaption>Well profiles (PCA) {esc(title)}"
                    f'<span class="d">{esc(pca_note)}</span></figcaption>{svg}</figure>'
                )
    return '<div class="grid">' + "".join(blocks) + "</div>"


def _map_note(drawn: tables.MapSample) -> str:
    hits = (f"all {drawn.hits:,} hit treatments" if drawn.hits_shown == drawn.hits
            else f"{drawn.hits_shown:,} of {drawn.hits:,} hit treatments (a random sample)")
    return (
        f'<p class="legend" id="umap-sampled">{len(drawn.keep):,} of {drawn.total:,} treatments '
        f"shown: all {drawn.poscon:,} poscon treatments, {hits} and a random sample of the rest "
        f"(report.max_map_points).</p>"
    )


def _clusters_section(moa: pd.DataFrame | None) -> str:
    if moa is None:
        return not_run("moa", "No moa.parquet was given (--moa): no clusters.")
    cols = tables.moa_columns(moa)
    if cols.cluster is None:
        looked = esc(io.CLUSTER)
        return f'<p class="not-run">moa.parquet has no cluster column (looked for {looked}).</p>'
    table = tables.cluster_table(moa, cols)
    columns: list[Column] = [("cluster", "cluster"), ("treatments", "treatments")]
    if "top_moa" in table.columns:
        columns += [
            ("top_moa", "most common MoA"),
            ("purity", "purity", "pct"),
            ("moas", "known MoAs"),
        ]
    columns.append(("members", "members"))
    return '<div class="scroll">' + table_html(table, columns, table_id="cluster-table") + "</div>"


def _hits_section(
    novelty: pd.DataFrame | None, links: Mapping[str, str], max_rows: int = 500
) -> str:
    if novelty is None:
        return not_run("novelty", "No novelty.parquet was given (--novelty): no hit list.")
    hits = tables.hit_list(novelty)
    tested = (
        int(novelty[io.NOVELTY_QVALUE].notna().sum())
        if io.NOVELTY_QVALUE in novelty.columns
        else len(novelty)
    )
    link = (
        f'<a class="button" id="hits-csv" download="cytoscreen_hits.csv" '
        f'href="{csv_data_uri(hits)}">'
        f"Download all {len(hits):,} hits as CSV</a>"
    )
    intro = f"<p>{len(hits):,} hits among {tested:,} tested wells, by q-value. {link}</p>"
    if hits.empty:
        return intro
    shown = hits.head(max_rows).copy()
    if io.PLATE in shown.columns:
        shown["_plate"] = [
            f'<a href="{esc(links[p])}">{esc(p)}</a>' if p in links else esc(p)
            for p in shown[io.PLATE].astype(str)
        ]
    shown["_treatment"] = [treatment_text(r) for r in shown.to_dict(orient="records")]
    cols: list[Column] = [("_plate", "plate"), (io.WELL, "well"), ("_treatment", "treatment")]
    for col, label in (
        (io.PERT_TYPE, "type"),
        (io.MOA, "MoA"),
        (io.NOVELTY_SCORE, "score"),
        (io.NOVELTY_ROBUST_Z, "robust z"),
        (io.NOVELTY_PVALUE, "p"),
        (io.NOVELTY_QVALUE, "q"),
    ):
        if col in shown.columns:
            cols.append((col, label))
    more = (
        f"<p>Showing the first {max_rows:,}; the CSV has all.</p>" if len(hits) > max_rows else ""
    )
    return (
        intro
        + '<div class="scroll">'
        + table_html(shown, cols, table_id="hit-table", raw=("_plate",))
        + "</div>"
        + more
    )


def screen_report(
    qc_tables: Sequence[pd.DataFrame],
    *,
    novelty: pd.DataFrame | None = None,
    moa: pd.DataFrame | None = None,
    evaluation: Mapping[str, Any] | None = None,
    profiles: pd.DataFrame | None = None,
    plate_links: Mapping[str, str] | None = None,
    settings: ReportSettings | None = None,
    inputs: Mapping[str, str | None] | None = None,
    config_hash: str | None = None,
    profiles_note: str = "",
) -> str:
    """The HTML index of a screen: plate table with QC and Z', MoA evaluation, UMAP scatter plots,
    clusters and the hit list (with a CSV download).  Every input but ``qc_tables`` is optional."""
    settings = settings or ReportSettings()
    if not qc_tables:
        raise InputDataError("screen report: no QC tables given")
    links = dict(plate_links or {})
    n_plates = sum(qc[io.PLATE].nunique() if io.PLATE in qc.columns else 1 for qc in qc_tables)
    body = [
        section(
            "plates",
            "Plates",
            _plates_section(qc_tables, novelty, links, settings),
            intro="Per-plate QC and control quality (Z' on the readout report.readout picks; "
            "&ge; 0.5 excellent, 0 to 0.5 acceptable, &lt; 0 poor). Click a plate for its report.",
        ),
        section("hits", "Hits", _hits_section(novelty, links)),
        section("umap", "Treatment map", _umap_section(moa, profiles, settings, profiles_note,
                                                            novelty)),
        section("clusters", "Clusters", _clusters_section(moa)),
        section("evaluation", "MoA evaluation", _evaluation_section(evaluation)),
    ]
    nav = [
        ("plates", "Plates"),
        ("hits", "Hits"),
        ("umap", "Map"),
        ("clusters", "Clusters"),
        ("evaluation", "Evaluation"),
        ("provenance", "Inputs"),
    ]
    return page(
        kind="screen",
        title="cytoscreen screen report",
        heading="Screen report",
        subtitle=f"{n_plates} plate{'s' if n_plates != 1 else ''} &middot; cytoscreen",
        nav=nav,
        body="\n".join(body),
        footer=footer(inputs or {}, config_hash),
    )
