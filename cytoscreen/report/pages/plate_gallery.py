"""The plate page's thumbnail gallery: QC failures and top hits as composite thumbnails."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from cytoscreen import io
from cytoscreen.report import thumbnails
from cytoscreen.report.components import esc, not_run, treatment_text
from cytoscreen.report.gallery import select_gallery
from cytoscreen.report.settings import ReportSettings
from cytoscreen.report.wells import require_columns


def gallery_section(
    qc: pd.DataFrame,
    images: pd.DataFrame | None,
    novelty: pd.DataFrame | None,
    settings: ReportSettings,
) -> str:
    gallery = select_gallery(
        qc, novelty=novelty, max_qc=settings.gallery_max_qc, max_hits=settings.gallery_max_hits
    )
    if images is None:
        return not_run(
            "ingest (images.parquet)", "No image table was given (--images), so no thumbnails."
        )
    require_columns(images, [io.WELL, io.SITE, io.CHANNEL, io.PATH], "images", "an images.parquet")
    channels = [str(c) for c in dict.fromkeys(images[io.CHANNEL])]
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
        treat = treatment_text(rec)
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
    legend = ", ".join(f"{ch} {thumbnails.color_name(colors[ch])}" for ch in channels)
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

