"""Page assembly: :func:`plate_report` and :func:`screen_report` each return one HTML page.

Templating is :class:`string.Template` plus :func:`html.escape` for every value from a table.  The
page has inline CSS, a small inline script (sortable tables, a hover line under each heatmap, and
``data-report-ready="ok"`` on ``<body>`` once it has run, which the browser test checks) and only
``data:`` images; its Content-Security-Policy (``default-src 'none'``) keeps the browser from
loading anything else even if something slipped in.  A section whose input stage did not run says
"Stage not run" (``class="not-run"``) instead of failing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import logging
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import __version__, io
from cytoscreen.errors import InputDataError
from cytoscreen.report import data as rd
from cytoscreen.report import plots

logger = logging.getLogger(__name__)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

PAGE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="$csp">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="cytoscreen $version">
<link rel="icon" href="data:,">
<title>$title</title>
<style>$css</style>
</head>
<body data-report="$kind">
<header>
<h1>$heading</h1>
<p class="sub">$subtitle</p>
<nav>$nav</nav>
</header>
<main>
$body
</main>
<footer id="provenance">$footer</footer>
<script>$js</script>
</body>
</html>
""")

CSS = """
:root { --fg: #1d2327; --muted: #5f6b73; --line: #d8dee3; --bg: #ffffff; --panel: #f5f7f9;
  --good: #1a7f37; --warn: #b26a00; --bad: #c62828; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg);
  font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { padding: 14px 24px 6px; border-bottom: 1px solid var(--line); background: var(--panel); }
h1 { margin: 0 0 2px; font-size: 22px; }
h2 { font-size: 18px; margin: 0 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.sub { margin: 0 0 8px; color: var(--muted); }
nav a { margin-right: 14px; color: #0b5cad; text-decoration: none; }
nav a:hover { text-decoration: underline; }
main { padding: 8px 24px 24px; }
section { margin: 18px 0 26px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 6px 0 12px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 150px;
  background: var(--panel); }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
.card .v { font-size: 22px; font-weight: 600; }
.card .d { color: var(--muted); font-size: 12px; }
.good .v { color: var(--good); } .warn .v { color: var(--warn); } .bad .v { color: var(--bad); }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--panel); }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[data-sort="asc"]::after { content: " \\25B2"; font-size: 10px; }
table.sortable th[data-sort="desc"]::after { content: " \\25BC"; font-size: 10px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-weight: 600; margin-bottom: 4px; }
figcaption .d { font-weight: normal; color: var(--muted); display: block; font-size: 12px; }
svg text.tick { font-size: 9px; fill: #444; }
svg text.ctl { fill: #fff; stroke: #000; stroke-width: 0.8px; paint-order: stroke; font-weight: 700;
  pointer-events: none; }
svg rect.well:hover { stroke: #0b5cad; stroke-width: 2px; }
svg circle.pt:hover { stroke: #000; stroke-width: 1.5px; }
.info { min-height: 2.9em; font-size: 12px; color: var(--muted); white-space: pre-line;
  max-width: 560px; }
.legend { color: var(--muted); font-size: 12px; }
.not-run { padding: 8px 12px; background: #fff8e1; border: 1px solid #f0d58c; border-radius: 4px;
  display: inline-block; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.thumb { width: 150px; font-size: 11px; }
.thumb img, .thumb .missing { width: 140px; height: 140px; object-fit: contain; background: #000;
  display: block; }
.thumb .missing { color: #ddd; display: flex; align-items: center; justify-content: center;
  text-align: center; padding: 6px; font-size: 11px; }
.thumb.qc img, .thumb.qc .missing { outline: 3px solid var(--bad); }
.thumb.hit img, .thumb.top img { outline: 3px solid #6a1b9a; }
details summary { cursor: pointer; color: #0b5cad; margin: 4px 0; }
footer { padding: 10px 24px 18px; border-top: 1px solid var(--line); color: var(--muted);
  font-size: 12px; }
footer table { font-size: 12px; }
.scroll { max-height: 460px; overflow: auto; display: inline-block; max-width: 100%; }
.scroll thead th { position: sticky; top: 0; }
a.button { display: inline-block; padding: 4px 10px; border: 1px solid #0b5cad; border-radius: 4px;
  color: #0b5cad; text-decoration: none; }
"""

JS = """
(function () {
  "use strict";
  var body = document.body;
  var errors = 0;
  window.addEventListener("error", function () {
    errors += 1;
    body.setAttribute("data-js-errors", String(errors));
  });
  function cellValue(td) {
    var v = td.getAttribute("data-value");
    return v === null ? td.textContent.trim() : v;
  }
  function compare(x, y) {
    var nx = parseFloat(x), ny = parseFloat(y);
    return (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead || !table.tBodies.length) { return; }
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, i) {
      th.addEventListener("click", function () {
        var tbody = table.tBodies[0];
        var rows = Array.prototype.slice.call(tbody.rows);
        var asc = th.getAttribute("data-sort") !== "asc";
        rows.sort(function (a, b) {
          var c = compare(cellValue(a.cells[i]), cellValue(b.cells[i]));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { tbody.appendChild(r); });
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("data-sort"); });
        th.setAttribute("data-sort", asc ? "asc" : "desc");
      });
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("svg.heatmap"), function (svg) {
    var info = document.getElementById("info-" + svg.id);
    if (!info) { return; }
    svg.addEventListener("mouseover", function (e) {
      var t = e.target;
      if (t && t.getAttribute && t.getAttribute("data-well")) {
        var title = t.querySelector("title");
        info.textContent = title ? title.textContent : t.getAttribute("data-well");
      }
    });
  });
  if (location.hash === "#selftest") {
    // the browser test: hover the first well, sort the first sortable table both ways
    var ok = true;
    var svg = document.querySelector("svg.heatmap");
    if (svg) {
      var rect = svg.querySelector("rect.well");
      rect.dispatchEvent(new MouseEvent("mouseover", {bubbles: true}));
      var info = document.getElementById("info-" + svg.id);
      ok = ok && info.textContent.indexOf(rect.getAttribute("data-well")) === 0;
    }
    var table = document.querySelector("table.sortable");
    if (table && table.tBodies.length) {
      var th = table.tHead.rows[0].cells[0];
      [1, -1].forEach(function (direction) {
        th.click();
        var rows = table.tBodies[0].rows;
        for (var k = 1; k < rows.length; k += 1) {
          var c = compare(cellValue(rows[k - 1].cells[0]), cellValue(rows[k].cells[0]));
          ok = ok && direction * c <= 0;
        }
      });
      ok = ok && th.getAttribute("data-sort") === "desc";
    }
    body.setAttribute("data-selftest", ok ? "ok" : "failed");
  }
  var external = 0;
  if (window.performance && performance.getEntriesByType) {
    performance.getEntriesByType("resource").forEach(function (r) {
      if (!/^data:/.test(r.name)) { external += 1; }
    });
  }
  body.setAttribute("data-external-requests", String(external));
  body.setAttribute("data-report-ready", errors ? "error" : "ok");
})();
"""


# --- small HTML helpers --------------------------------------------------------------------------
def esc(value: object) -> str:
    """HTML-escape any value (quotes too)."""
    return _html.escape("" if value is None else str(value), quote=True)


def fmt_value(value: Any, kind: str = "auto") -> str:
    """Format a table value: ints with separators, floats to 3-4 significant digits, rates in %."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if value is pd.NA or value is pd.NaT:
        return ""
    if kind == "pct":
        return f"{100 * float(value):.1f}%"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        if kind == "int" and v == int(v):
            return f"{int(v):,}"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}" if abs(v) >= 1 else f"{v:.3g}"
    return str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


Column = tuple[str, str] | tuple[str, str, str]


def table_html(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    table_id: str = "",
    sortable: bool = True,
    raw: Sequence[str] = (),
) -> str:
    """An HTML table of ``rows``; ``columns`` are (key, header[, kind]); ``raw`` keys hold HTML."""
    records = rows.to_dict(orient="records") if isinstance(rows, pd.DataFrame) else list(rows)
    cls = ' class="sortable"' if sortable else ""
    tid = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f"<th>{esc(col[1])}</th>" for col in columns)
    body = []
    for rec in records:
        cells = []
        for col in columns:
            key, kind = col[0], (col[2] if len(col) > 2 else "auto")
            v = rec.get(key)
            if isinstance(v, float) and np.isnan(v):
                v = None
            if key in raw:
                cells.append(f"<td>{'' if v is None else v}</td>")
            elif _is_num(v) and not pd.isna(v):
                cells.append(
                    f'<td class="num" data-value="{float(v):.10g}">{esc(fmt_value(v, kind))}</td>'
                )
            else:
                cells.append(f"<td>{esc(fmt_value(v, kind))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{tid}{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(sid: str, title: str, body: str, *, intro: str = "") -> str:
    intro_html = f"<p>{intro}</p>" if intro else ""
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{intro_html}{body}</section>'


def not_run(stage: str, detail: str) -> str:
    """The placeholder of a section whose input is missing."""
    return (
        f'<p class="not-run" data-status="not-run"><strong>Stage not run: {esc(stage)}.</strong> '
        f"{esc(detail)}</p>"
    )


def card(key: str, value: str, detail: str = "", level: str = "") -> str:
    return (
        f'<div class="card {esc(level)}"><div class="k">{esc(key)}</div>'
        f'<div class="v">{esc(value)}</div>'
        f'<div class="d">{esc(detail)}</div></div>'
    )


def csv_data_uri(table: pd.DataFrame) -> str:
    """A table as a ``data:text/csv`` base64 URI (for a download link)."""
    text = table.to_csv(index=False)
    return "data:text/csv;charset=utf-8;base64," + base64.b64encode(text.encode("utf-8")).decode(
        "ascii"
    )


def _page(
    *,
    kind: str,
    title: str,
    heading: str,
    subtitle: str,
    nav: Sequence[tuple[str, str]],
    body: str,
    footer: str,
) -> str:
    nav_html = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    return PAGE.substitute(
        csp=CSP,
        version=esc(__version__),
        title=esc(title),
        css=CSS,
        kind=esc(kind),
        heading=esc(heading),
        subtitle=subtitle,
        nav=nav_html,
        body=body,
        footer=footer,
        js=JS,
    )


def _footer(inputs: Mapping[str, str | None], config_hash: str | None) -> str:
    rows = [
        {"input": k, "file": v if v else "not given (stage not run)"} for k, v in inputs.items()
    ]
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta = f"cytoscreen {esc(__version__)} &middot; created {esc(created)}"
    if config_hash:
        meta += f" &middot; config {esc(config_hash)}"
    return f"<p>{meta}</p>" + table_html(
        rows, [("input", "input"), ("file", "file")], sortable=False
    )


def _treatment(rec: Mapping[str, Any]) -> str:
    pert = rec.get(io.PERTURBATION)
    if pert is None or (isinstance(pert, float) and np.isnan(pert)):
        return ""
    conc = rec.get(io.CONCENTRATION)
    if conc is not None and not pd.isna(conc):
        try:
            return f"{pert} @ {float(conc):g}"
        except (TypeError, ValueError):
            return f"{pert} @ {conc}"
    return str(pert)


# --- plate report --------------------------------------------------------------------------------
def _well_tooltips(summary: pd.DataFrame, extra: Sequence[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for rec in summary.to_dict(orient="records"):
        lines = [
            f"{rec[io.WELL]} \u00b7 {_treatment(rec) or 'no treatment'} \u00b7 "
            f"{rec.get(io.PERT_TYPE, '')}"
        ]
        if rec.get(io.MOA) is not None and not pd.isna(rec.get(io.MOA)):
            lines[0] += f" \u00b7 {rec[io.MOA]}"
        qc_line = f"sites {rec[rd.SITES]}, failing QC {rec[rd.SITES_FAILED]}"
        if rec.get(rd.QC_REASONS):
            qc_line += f" ({rec[rd.QC_REASONS]})"
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


def _heatmaps(
    summary: pd.DataFrame,
    settings: rd.ReportSettings,
    *,
    has_novelty: bool,
    has_wells: bool,
    n_wells: int | None,
) -> str:
    count_col = settings.count_column
    dna_col = f"{io.METADATA_PREFIX}{settings.dna_channel}_MeanIntensity"
    extra = [
        (rd.FOCUS, "focus"),
        (count_col, "cells"),
        (dna_col, f"{settings.dna_channel} mean"),
        (io.NOVELTY_SCORE, "novelty"),
        (io.NOVELTY_QVALUE, "q"),
    ]
    tips = _well_tooltips(summary, extra)
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
    n = rd.plate_format(summary, n_wells=n_wells, source="qc")

    specs: list[tuple[str, str, str, str, dict[str, Any]]] = [
        (
            "hm-qc",
            rd.QC_FAILED_FRACTION,
            "QC failures",
            "fraction of the well's sites with any QC flag",
            {"cmap": "Reds", "vmin": 0.0, "vmax": 1.0, "robust": False},
        ),
        (
            "hm-focus",
            rd.FOCUS,
            "Focus",
            "log10 focus score of the worst site (median over channels); blurred sites are low",
            {"cmap": "viridis"},
        ),
    ]
    if rd._has_values(summary, count_col):
        specs.append(
            (
                "hm-signal",
                count_col,
                "Cell count",
                f"{count_col}, mean of QC-passed sites",
                {"cmap": "viridis"},
            )
        )
    elif rd._has_values(summary, dna_col):
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
    if has_novelty and rd._has_values(summary, io.NOVELTY_SCORE):
        specs.append(
            (
                "hm-novelty",
                io.NOVELTY_SCORE,
                "Novelty score",
                "autoencoder reconstruction error; black outline: hit",
                {"cmap": "magma", "hits": True},
            )
        )
        if rd._has_values(summary, io.NOVELTY_QVALUE):
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
    if has_wells and rd.SITES_PROFILED in summary.columns:
        specs.append(
            (
                "hm-profiled",
                rd.SITES_PROFILED,
                "Sites profiled",
                "sites aggregated into the well profile (QC-passed)",
                {"cmap": "Blues", "vmin": 0.0, "robust": False},
            )
        )
    blocks = []
    for uid, col, title, detail, opts in specs:
        opts = dict(opts)
        highlight = hits if opts.pop("hits", False) else ()
        matrix = rd.plate_matrix(summary, col, n_wells=n, source="qc")
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


def _controls(
    summary: pd.DataFrame, quality: rd.ControlQuality, how: str, settings: rd.ReportSettings
) -> str:
    if quality.readout is None:
        return not_run("readout", how)
    pert = summary[io.PERT_TYPE].astype(str)
    values = pd.to_numeric(summary[quality.readout], errors="coerce").astype(float)
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
    for col in rd.candidate_readouts(summary, count_column=settings.count_column):
        cq = rd.control_quality(summary, col)
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


def _gallery(
    qc: pd.DataFrame,
    images: pd.DataFrame | None,
    novelty: pd.DataFrame | None,
    settings: rd.ReportSettings,
) -> str:
    gallery = rd.select_gallery(
        qc, novelty=novelty, max_qc=settings.gallery_max_qc, max_hits=settings.gallery_max_hits
    )
    if images is None:
        return not_run(
            "ingest (images.parquet)", "No image table was given (--images), so no thumbnails."
        )
    rd._require(images, [io.WELL, io.SITE, io.CHANNEL, io.PATH], "images", "an images.parquet")
    channels = [str(c) for c in dict.fromkeys(images[io.CHANNEL])]
    from cytoscreen.report import thumbnails

    colors = thumbnails.channel_colors(channels, dict(settings.channel_colors))
    limits = thumbnails.plate_limits(qc, channels) if settings.thumbnail_stretch == "plate" else {}
    keys = [
        k
        for k in (io.PLATE, io.WELL, io.SITE)
        if k in images.columns and k in gallery.items.columns
    ]
    by_site = images.groupby(keys, sort=False) if len(gallery.items) else None

    def figure(rec: Mapping[str, Any]) -> str:
        key = tuple(rec[k] for k in keys)
        try:
            rows = by_site.get_group(key)  # type: ignore[union-attr]
        except KeyError:
            rows = images.iloc[:0]
        thumb = thumbnails.site_thumbnail(
            rows,
            channels=channels,
            colors=colors,
            limits=limits,
            percentiles=settings.thumbnail_percentiles,
            size_px=settings.thumbnail_px,
            fmt=settings.thumbnail_format,
        )
        label = f"{rec[io.WELL]} s{rec[io.SITE]}"
        treat = _treatment(rec)
        if thumb.uri:
            pic = f'<img src="{thumb.uri}" alt="{esc(label)}">'
        else:
            pic = f'<div class="missing">image not readable: {esc(thumb.error[-120:])}</div>'
        moa = rec.get(io.MOA)
        moa_txt = f" ({esc(moa)})" if moa is not None and not pd.isna(moa) else ""
        return (
            f'<figure class="thumb {esc(rec["kind"])}" data-well="{esc(rec[io.WELL])}" '
            f'data-site="{esc(rec[io.SITE])}">{pic}<figcaption><strong>{esc(label)}</strong><br>'
            f"{esc(treat)}{moa_txt}<br>{esc(rec['reason'])}</figcaption></figure>"
        )

    items = gallery.items.to_dict(orient="records")
    qc_items = [r for r in items if r["kind"] == "qc"]
    hit_items = [r for r in items if r["kind"] in ("hit", "top")]
    legend = ", ".join(f"{ch} {_color_name(colors[ch])}" for ch in channels)
    stretch = (
        "plate stretch: each channel from the negcon sites' median to their 99.9th percentile"
        if limits
        else f"each image stretched between its {settings.thumbnail_percentiles[0]:g} and "
        f"{settings.thumbnail_percentiles[1]:g} percentiles"
    )
    parts = [
        f'<p class="legend">Composite: {esc(legend)}; {esc(stretch)}.</p>',
        f"<h3>QC failures ({len(qc_items)} of {gallery.n_qc_failed} failing sites shown)</h3>",
    ]
    if qc_items:
        parts.append(
            '<div class="gallery" id="gallery-qc">'
            + "".join(figure(r) for r in qc_items)
            + "</div>"
        )
    else:
        parts.append("<p>No site failed QC.</p>")
    if novelty is None:
        parts.append(
            "<h3>Top hits</h3>" + not_run("novelty", "No novelty scores were given (--novelty).")
        )
    else:
        title = (
            f"Top hits ({len(hit_items)} of {gallery.n_hits} hits shown)"
            if not gallery.top_instead_of_hits
            else f"Highest novelty scores (no hit among {gallery.n_tested} tested wells)"
        )
        parts.append(f"<h3>{esc(title)}</h3>")
        parts.append(
            '<div class="gallery" id="gallery-hits">'
            + "".join(figure(r) for r in hit_items)
            + "</div>"
            if hit_items
            else "<p>No tested wells on this plate.</p>"
        )
    return "".join(parts)


def _color_name(rgb: tuple[float, float, float]) -> str:
    from cytoscreen.report.thumbnails import NAMED_COLORS

    for name, val in NAMED_COLORS.items():
        if np.allclose(val, rgb):
            return name
    return "#" + "".join(f"{int(round(255 * v)):02x}" for v in rgb)


def _summary_section(psum: Mapping[str, Any], quality: rd.ControlQuality) -> str:
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


def _well_table(summary: pd.DataFrame, settings: rd.ReportSettings) -> str:
    cols: list[Column] = [(io.WELL, "well"), ("_treatment", "treatment"), (io.PERT_TYPE, "type")]
    if io.MOA in summary.columns:
        cols.append((io.MOA, "MoA"))
    cols += [(rd.SITES, "sites"), (rd.SITES_FAILED, "QC failed"), (rd.QC_REASONS, "flags")]
    for col, label in (
        (rd.FOCUS, "focus (log10)"),
        (settings.count_column, "cells"),
        (
            f"{io.METADATA_PREFIX}{settings.dna_channel}_MeanIntensity",
            f"{settings.dna_channel} mean",
        ),
        (rd.SITES_PROFILED, "sites profiled"),
        (io.NOVELTY_SCORE, "novelty"),
        (io.NOVELTY_QVALUE, "q"),
        (io.NOVELTY_HIT, "hit"),
    ):
        if col in summary.columns:
            cols.append((col, label))
    table = summary.assign(_treatment=[_treatment(r) for r in summary.to_dict(orient="records")])
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
    settings: rd.ReportSettings | None = None,
    n_wells: int | None = None,
    inputs: Mapping[str, str | None] | None = None,
    config_hash: str | None = None,
) -> str:
    """The HTML report of one plate.

    ``qc`` is required; ``images`` (thumbnails), ``wells`` (well profiles), ``novelty`` (scores and
    hits, any plates) and ``counts`` (per-site cell counts) are optional and their sections say
    "Stage not run" when missing.  Rows of other plates are ignored.  ``inputs`` (name -> path or
    None) is listed in the footer.
    """
    settings = settings or rd.ReportSettings()
    qc = _one_plate(qc, plate, "qc")
    if qc.empty:
        raise InputDataError(f"plate {plate}: no sites in the QC table")
    images = _one_plate(images, plate, "images") if images is not None else None
    wells = _one_plate(wells, plate, "wells") if wells is not None else None
    counts = _one_plate(counts, plate, "counts") if counts is not None else None
    nov = _one_plate(novelty, plate, "novelty") if novelty is not None else None
    summary = rd.well_summary(
        qc,
        novelty=nov,
        wells=wells,
        counts=counts,
        count_column=settings.count_column,
        source=f"plate {plate} qc",
    )
    readout, how = rd.resolve_readout(
        summary,
        settings.readout,
        dna_channel=settings.dna_channel,
        count_column=settings.count_column,
    )
    if readout is None:
        logger.warning("plate %s: %s", plate, how)
    quality = rd.control_quality(summary, readout)
    psum = rd.plate_summary(summary, quality=quality)
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
            _heatmaps(
                summary,
                settings,
                has_novelty=nov is not None,
                has_wells=wells is not None,
                n_wells=n_wells or settings.plate_wells,
            ),
        ),
        section("controls", "Control quality", _controls(summary, quality, how, settings)),
        section("gallery", "Thumbnails", _gallery(qc, images, nov, settings)),
        section("wells", "Wells", _well_table(summary, settings)),
    ]
    nav = [
        ("summary", "Summary"),
        ("heatmaps", "Heatmaps"),
        ("controls", "Controls"),
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
    return _page(
        kind="plate",
        title=f"{plate} \u2013 cytoscreen plate report",
        heading=f"Plate {plate}",
        subtitle=subtitle,
        nav=nav,
        body="\n".join(body),
        footer=_footer(inputs or {}, config_hash),
    )


def _one_plate(table: pd.DataFrame | None, plate: str, source: str) -> pd.DataFrame | None:
    if table is None or io.PLATE not in table.columns:
        return table
    out = table[table[io.PLATE].astype(str) == str(plate)]
    if out.empty and len(table):
        logger.warning(
            "%s: no rows for plate %s (plates there: %s)",
            source,
            plate,
            ", ".join(map(str, table[io.PLATE].unique()[:10])),
        )
    return out


# --- screen report -------------------------------------------------------------------------------
def _plates_section(
    qc_tables: Sequence[pd.DataFrame],
    novelty: pd.DataFrame | None,
    links: Mapping[str, str],
    settings: rd.ReportSettings,
) -> str:
    rows = []
    for qc in qc_tables:
        plates = qc[io.PLATE].astype(str).unique() if io.PLATE in qc.columns else ["?"]
        for plate in plates:
            sub = qc[qc[io.PLATE].astype(str) == plate] if io.PLATE in qc.columns else qc
            nov = _one_plate(novelty, plate, "novelty") if novelty is not None else None
            summary = rd.well_summary(
                sub, novelty=nov, count_column=settings.count_column, source=f"plate {plate} qc"
            )
            readout, _ = rd.resolve_readout(
                summary,
                settings.readout,
                dna_channel=settings.dna_channel,
                count_column=settings.count_column,
            )
            quality = rd.control_quality(summary, readout)
            rec = rd.plate_summary(summary, quality=quality)
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
    rows = [{"metric": k, "value": v, "meaning": m} for k, v, m in rd.evaluation_rows(evaluation)]
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
    settings: rd.ReportSettings,
    pca_note: str,
) -> str:
    blocks = []
    if moa is None:
        blocks.append(not_run("moa", "No moa.parquet was given (--moa): no UMAP of treatments."))
    else:
        cols = rd.moa_columns(moa)
        if cols.umap_1 is None or cols.umap_2 is None:
            blocks.append(
                f'<p class="not-run">moa.parquet has no UMAP columns (looked for {esc(io.UMAP_1)}, '
                f"{esc(io.UMAP_2)} or names ending in umap_1 / umap_2).</p>"
            )
        else:
            labels = rd.treatment_labels(moa, cols)
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
            pcs, var = rd.pca_2d(profiles, max_points=settings.max_scatter_points)
        except InputDataError as err:
            blocks.append(f'<p class="not-run">No well projection: {esc(err)}</p>')
        else:
            tips = [
                f"{r.get(io.PLATE, '')} {r.get(io.WELL, '')} \u00b7 {_treatment(r)} \u00b7 "
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


def _clusters_section(moa: pd.DataFrame | None) -> str:
    if moa is None:
        return not_run("moa", "No moa.parquet was given (--moa): no clusters.")
    cols = rd.moa_columns(moa)
    if cols.cluster is None:
        looked = esc(io.CLUSTER)
        return f'<p class="not-run">moa.parquet has no cluster column (looked for {looked}).</p>'
    table = rd.cluster_table(moa, cols)
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
    hits = rd.hit_list(novelty)
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
    shown["_treatment"] = [_treatment(r) for r in shown.to_dict(orient="records")]
    cols: list[Column] = [("_plate", "plate"), (io.WELL, "well"), ("_treatment", "treatment")]
    for col, label in (
        (io.PERT_TYPE, "type"),
        (io.MOA, "MoA"),
        (io.NOVELTY_SCORE, "score"),
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
    settings: rd.ReportSettings | None = None,
    inputs: Mapping[str, str | None] | None = None,
    config_hash: str | None = None,
    profiles_note: str = "",
) -> str:
    """The HTML index of a screen: plate table with QC and Z', MoA evaluation, UMAP scatter plots,
    clusters and the hit list (with a CSV download).  Every input but ``qc_tables`` is optional."""
    settings = settings or rd.ReportSettings()
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
        section("umap", "Treatment map", _umap_section(moa, profiles, settings, profiles_note)),
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
    return _page(
        kind="screen",
        title="cytoscreen screen report",
        heading="Screen report",
        subtitle=f"{n_plates} plate{'s' if n_plates != 1 else ''} &middot; cytoscreen",
        nav=nav,
        body="\n".join(body),
        footer=_footer(inputs or {}, config_hash),
    )
