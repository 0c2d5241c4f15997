"""Figures for the reports: inline SVG plate heatmaps and scatter plots, matplotlib data URIs.

Heatmaps and scatter plots are written as inline ``<svg>`` (no ``xmlns``: the HTML parser puts
inline SVG in the SVG namespace itself, so the page holds no ``http://`` reference): every well or
point carries a ``<title>`` (the browser's hover tooltip) and ``data-*`` attributes that the
page's script shows in an info line.  Distribution plots are matplotlib figures (Agg canvas,
object-oriented API, no pyplot state) embedded as base64 PNG ``data:`` URIs.
"""

from __future__ import annotations

import base64
import html
import io as _io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cytoscreen.report.wells import PlateMatrix

#: Marks drawn on control wells of a heatmap: pert_type -> glyph.
CONTROL_GLYPHS = {"negcon": "\u2212", "poscon": "+"}
NO_DATA = "#e6e6e6"
#: Qualitative palette (matplotlib tab20, reordered so neighbours differ) for categories.
CATEGORY_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "NA"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}"


def colors(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> list[str]:
    """Hex colours of ``values`` under a matplotlib colormap; NaN gets the no-data grey."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    v = np.asarray(values, dtype=float)
    span = vmax - vmin if vmax > vmin else 1.0
    t = np.clip((v - vmin) / span, 0.0, 1.0)
    rgba = cm(np.nan_to_num(t))
    out = []
    for x, c in zip(v, rgba, strict=True):
        out.append(
            NO_DATA
            if not np.isfinite(x)
            else "#" + "".join(f"{int(round(255 * k)):02x}" for k in c[:3])
        )
    return out


def value_range(
    values: np.ndarray, *, vmin: float | None = None, vmax: float | None = None, robust: bool = True
) -> tuple[float, float]:
    """Colour limits: given ones, else the 2nd and 98th percentile (``robust``) or min/max."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return (0.0 if vmin is None else vmin, 1.0 if vmax is None else vmax)
    lo, hi = (
        np.percentile(finite, [2, 98])
        if robust and len(finite) > 10
        else (finite.min(), finite.max())
    )
    lo = float(lo) if vmin is None else vmin
    hi = float(hi) if vmax is None else vmax
    if hi <= lo:
        hi = lo + (abs(lo) * 0.01 or 1.0)
    return lo, hi


def _gradient(
    uid: str,
    cmap: str,
    x: float,
    y: float,
    width: float,
    height: float,
    vmin: float,
    vmax: float,
    label: str,
) -> str:
    stops = np.linspace(0, 1, 11)
    cols = colors(vmin + stops * (vmax - vmin), cmap, vmin, vmax)
    parts = [f'<linearGradient id="g-{uid}" x1="0" x2="1" y1="0" y2="0">']
    parts += [
        f'<stop offset="{s:.2f}" stop-color="{c}"/>' for s, c in zip(stops, cols, strict=True)
    ]
    parts.append("</linearGradient>")
    return (
        f"<defs>{''.join(parts)}</defs>"
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" '
        f'fill="url(#g-{uid})" '
        f'stroke="#999" stroke-width="0.5"/>'
        f'<text x="{x:.1f}" y="{y + height + 11:.1f}" class="tick">{_esc(_fmt(vmin))}</text>'
        f'<text x="{x + width:.1f}" y="{y + height + 11:.1f}" class="tick" '
        f'text-anchor="end">{_esc(_fmt(vmax))}</text>'
        f'<text x="{x + width / 2:.1f}" y="{y - 3:.1f}" class="tick" '
        f'text-anchor="middle">{_esc(label)}</text>'
    )


def heatmap_svg(
    matrix: PlateMatrix,
    *,
    uid: str,
    title: str,
    tooltips: Mapping[str, str] | None = None,
    controls: Mapping[str, str] | None = None,
    highlight: Sequence[str] = (),
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    robust: bool = True,
    unit: str = "",
) -> str:
    """A plate heatmap as inline SVG.

    Parameters
    ----------
    matrix
        The values (see :func:`cytoscreen.report.wells.plate_matrix`).
    uid
        Unique id (element ids and the gradient).
    tooltips
        Well name -> hover text (the well's metadata).
    controls
        Well name -> pert type; negcon wells get a minus and poscon wells a plus.
    highlight
        Wells outlined in black (e.g. hits).
    """
    tooltips = tooltips or {}
    controls = controls or {}
    highlight = set(highlight)
    n_rows, n_cols = matrix.shape
    cell = 22.0 if n_cols <= 12 else 14.0 if n_cols <= 24 else 9.0
    left, top = 22.0, 16.0
    width = left + n_cols * cell + 4
    grid_h = top + n_rows * cell
    height = grid_h + 44
    lo, hi = value_range(matrix.values, vmin=vmin, vmax=vmax, robust=robust)
    fills = np.array(colors(matrix.values.ravel(), cmap, lo, hi)).reshape(matrix.shape)
    font = max(6.0, min(10.0, cell * 0.55))
    out = [
        f'<svg class="heatmap" id="{_esc(uid)}" role="img" aria-label="{_esc(title)}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
        f'data-rows="{n_rows}" data-cols="{n_cols}">'
    ]
    step = 1 if n_cols <= 24 else 4
    for c in range(0, n_cols, step):
        out.append(
            f'<text class="tick" x="{left + (c + 0.5) * cell:.1f}" y="{top - 4:.1f}" '
            f'text-anchor="middle">{c + 1}</text>'
        )
    for r in range(0, n_rows, 1 if n_rows <= 16 else 2):
        out.append(
            f'<text class="tick" x="{left - 3:.1f}" y="{top + (r + 0.5) * cell + 3:.1f}" '
            f'text-anchor="end">{matrix.row_labels[r]}</text>'
        )
    for r in range(n_rows):
        for c in range(n_cols):
            well = matrix.well(r, c)
            v = matrix.values[r, c]
            x, y = left + c * cell, top + r * cell
            tip = tooltips.get(well, well)
            value = _fmt(v) + (f" {unit}" if unit and np.isfinite(v) else "")
            stroke = ' stroke="#000" stroke-width="2"' if well in highlight else ""
            cls = "well hit" if well in highlight else "well"
            out.append(
                f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{cell - 1:.1f}" '
                f'height="{cell - 1:.1f}" '
                f'fill="{fills[r, c]}"{stroke} data-well="{well}" data-value="{_esc(value)}">'
                f"<title>{_esc(tip)}\n{_esc(title)}: {_esc(value)}</title></rect>"
            )
            glyph = CONTROL_GLYPHS.get(controls.get(well, ""))
            if glyph:
                out.append(
                    f'<text class="ctl" x="{x + (cell - 1) / 2:.1f}" '
                    f'y="{y + (cell - 1) / 2 + font * 0.36:.1f}" '
                    f'font-size="{font:.1f}" text-anchor="middle">{glyph}</text>'
                )
    out.append(_gradient(uid, cmap, left, grid_h + 18, min(160.0, n_cols * cell), 9, lo, hi, title))
    out.append("</svg>")
    return "".join(out)


def category_colors(categories: Sequence[object]) -> dict[str, str]:
    """A colour per distinct category (first-seen order; the palette repeats after 20)."""
    uniq = list(dict.fromkeys(str(c) for c in categories))
    return {c: CATEGORY_COLORS[i % len(CATEGORY_COLORS)] for i, c in enumerate(uniq)}


def scatter_svg(
    x: Sequence[float],
    y: Sequence[float],
    *,
    uid: str,
    title: str,
    categories: Sequence[object],
    tooltips: Sequence[str],
    x_label: str = "",
    y_label: str = "",
    size: float = 360.0,
    max_legend: int = 20,
) -> str:
    """A scatter plot as inline SVG, points coloured by category, with a legend and tooltips."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    cats = [str(c) for c in categories]
    palette = category_colors(sorted(set(cats), key=_natural_key))
    ok = np.isfinite(xs) & np.isfinite(ys)
    pad = 28.0
    legend_w = 170.0
    width, height = size + pad + legend_w, size + pad + 14
    if ok.any():
        x0, x1 = xs[ok].min(), xs[ok].max()
        y0, y1 = ys[ok].min(), ys[ok].max()
    else:
        x0 = y0 = 0.0
        x1 = y1 = 1.0
    sx = (size - 16) / (x1 - x0 if x1 > x0 else 1.0)
    sy = (size - 16) / (y1 - y0 if y1 > y0 else 1.0)
    r = 4.0 if ok.sum() < 500 else 2.5
    out = [
        f'<svg class="scatter" id="{_esc(uid)}" role="img" aria-label="{_esc(title)}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}">',
        f'<rect x="{pad:.0f}" y="4" width="{size:.0f}" height="{size:.0f}" fill="#fafafa" '
        'stroke="#bbb"/>',
        f'<text class="tick" x="{pad + size / 2:.0f}" y="{size + 20:.0f}" '
        f'text-anchor="middle">{_esc(x_label)}</text>',
        f'<text class="tick" x="10" y="{4 + size / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 10 {4 + size / 2:.0f})">{_esc(y_label)}</text>',
    ]
    for i in np.flatnonzero(ok):
        px = pad + 8 + (xs[i] - x0) * sx
        py = 4 + size - 8 - (ys[i] - y0) * sy
        out.append(
            f'<circle class="pt" cx="{px:.1f}" cy="{py:.1f}" r="{r}" fill="{palette[cats[i]]}" '
            f'fill-opacity="0.85" stroke="#333" stroke-width="0.4" data-cat="{_esc(cats[i])}">'
            f"<title>{_esc(tooltips[i])}</title></circle>"
        )
    lx = pad + size + 10
    items = sorted(palette.items(), key=lambda kv: _natural_key(kv[0]))
    for k, (cat, col) in enumerate(items[:max_legend]):
        ly = 14 + k * 15
        n = cats.count(cat)
        out.append(
            f'<circle cx="{lx + 5:.0f}" cy="{ly:.0f}" r="5" fill="{col}"/>'
            f'<text class="tick" x="{lx + 14:.0f}" y="{ly + 4:.0f}">'
            f"{_esc(_short(cat))} ({n})</text>"
        )
    if len(items) > max_legend:
        out.append(
            f'<text class="tick" x="{lx:.0f}" y="{14 + max_legend * 15 + 4:.0f}">'
            f"+ {len(items) - max_legend} more</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _short(text: str, n: int = 24) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _natural_key(text: str) -> tuple:
    import re

    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text)))


def figure_data_uri(fig, *, dpi: int = 96) -> str:
    """A matplotlib Figure as a ``data:image/png;base64,...`` URI (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def control_distribution(
    values: Mapping[str, np.ndarray], *, readout: str, z_prime: float, seed: int = 0
) -> str:
    """Strip and box plot of a readout per pert type (negcon, poscon, trt, ...) as a PNG data URI.

    ``values`` maps a pert type to its wells' values; the negcon and poscon means +- 3 SD are
    shaded (the bands Z' compares).
    """
    from matplotlib.figure import Figure

    groups = [(k, np.asarray(v, dtype=float)) for k, v in values.items()]
    groups = [(k, v[np.isfinite(v)]) for k, v in groups]
    groups = [(k, v) for k, v in groups if len(v)]
    fig = Figure(figsize=(6.4, 2.9))
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(seed)
    palette = {"negcon": "#1f77b4", "poscon": "#d62728", "trt": "#7f7f7f"}
    for i, (name, v) in enumerate(groups):
        col = palette.get(name, "#9467bd")
        style = {f"{part}props": {"color": col} for part in ("median", "box", "whisker", "cap")}
        try:  # matplotlib >= 3.10 spells it orientation=, older versions vert=False
            ax.boxplot(
                [v], positions=[i], widths=0.5, orientation="horizontal", showfliers=False, **style
            )
        except TypeError:
            ax.boxplot([v], positions=[i], widths=0.5, vert=False, showfliers=False, **style)
        ax.scatter(v, i + rng.uniform(-0.18, 0.18, len(v)), s=9, color=col, alpha=0.6, linewidths=0)
        if name in ("negcon", "poscon") and len(v) > 1:
            m, s = v.mean(), v.std(ddof=1)
            ax.axvspan(m - 3 * s, m + 3 * s, color=col, alpha=0.08, lw=0)
    every = np.concatenate([v for _, v in groups]) if groups else np.array([])
    if len(every) and every.min() > 0 and every.max() / every.min() > 100:
        ax.set_xscale("log")  # heavy-tailed positive readouts (novelty scores) read better in log
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels([f"{k} (n={len(v)})" for k, v in groups])
    ax.set_xlabel(readout)
    zp = "NA" if not np.isfinite(z_prime) else f"{z_prime:.2f}"
    ax.set_title(f"Z' = {zp}   (shaded: mean \u00b1 3 SD of negcon / poscon)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return figure_data_uri(fig)


@dataclass(frozen=True)
class DosePanel:
    """One compound's dose-response panel: well points, the fitted curve (empty when there is none),
    its EC50 (NaN when none), the negcon median as a reference level (NaN when unknown) and the
    dose axis label."""

    title: str
    dose: np.ndarray
    response: np.ndarray
    curve_dose: np.ndarray
    curve_response: np.ndarray
    ec50: float = float("nan")
    reference: float = float("nan")
    dose_label: str = "dose"


def dose_curves(panels: Sequence[DosePanel], *, readout: str, ncols: int = 3) -> str:
    """Small multiples of dose-response curves (log dose axis) as a PNG data URI."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    n = max(len(panels), 1)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.3 * ncols, 2.6 * nrows))
    for i, p in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.scatter(p.dose, p.response, s=14, color="#1f77b4", alpha=0.75, linewidths=0, label="wells")
        if len(p.curve_dose):
            ax.plot(p.curve_dose, p.curve_response, color="#d62728", lw=1.5, label="log-logistic fit")
        if np.isfinite(p.ec50):
            ax.axvline(p.ec50, color="#d62728", lw=0.8, ls="--")
        if np.isfinite(p.reference):
            ax.axhline(p.reference, color="#7f7f7f", lw=0.8, ls=":", label="negcon median")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(p.title, fontsize=9)
        ax.set_xlabel(p.dose_label, fontsize=8)
        ax.set_ylabel(_short(readout, 28), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.tight_layout()
    return figure_data_uri(fig)
