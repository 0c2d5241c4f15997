"""HTML building blocks of the report pages, and the page shell.

Templating is :class:`string.Template` plus :func:`html.escape` (:func:`esc`) for every value from
a table.  The shell (``assets/page.html``) inlines ``assets/report.css`` and a small script,
``assets/report.js`` (sortable tables, a hover line under each heatmap, and
``data-report-ready="ok"`` on ``<body>`` once it has run, which the browser test checks); images
are ``data:`` URIs only, and the Content-Security-Policy (``default-src 'none'``) keeps the browser
from loading anything else even if something slipped in.  A section whose input stage did not run
says "Stage not run" (:func:`not_run`, ``class="not-run"``) instead of failing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import html as _html
import string
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import __version__, io
from cytoscreen.plate import format_treatment

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


@functools.cache
def asset(name: str) -> str:
    """The text of a package data file under ``cytoscreen/report/assets``."""
    return resources.files("cytoscreen.report").joinpath("assets", name).read_text(encoding="utf-8")


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


def is_number(value: Any) -> bool:
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
            elif is_number(v) and not pd.isna(v):
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


def page(
    *,
    kind: str,
    title: str,
    heading: str,
    subtitle: str,
    nav: Sequence[tuple[str, str]],
    body: str,
    footer: str,
) -> str:
    """The whole HTML page: shell, inline CSS and script, navigation, body and footer."""
    nav_html = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    return string.Template(asset("page.html")).substitute(
        csp=CSP,
        version=esc(__version__),
        title=esc(title),
        css=asset("report.css"),
        kind=esc(kind),
        heading=esc(heading),
        subtitle=subtitle,
        nav=nav_html,
        body=body,
        footer=footer,
        js=asset("report.js"),
    )


def footer(inputs: Mapping[str, str | None], config_hash: str | None) -> str:
    """The provenance footer: version, creation time, config hash and the input files."""
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


def treatment_text(rec: Mapping[str, Any]) -> str:
    """``"<perturbation> @ <concentration>"`` of one record (:func:`cytoscreen.plate.format_treatment`)."""
    return format_treatment(rec.get(io.PERTURBATION), rec.get(io.CONCENTRATION))
