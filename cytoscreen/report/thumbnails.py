"""Small contrast-stretched multi-channel composite thumbnails of sites, as ``data:`` URIs.

Each channel is read with :func:`cytoscreen.io.read_image` (times its ``intensity_scale``, so a
rescaled 8-bit site looks like its 16-bit twin), reduced (box filter) to at most
``size_px`` on its long side, mapped linearly from its limits ``(lo, hi)`` to 0..1 and added in
its colour; the sum is clipped and encoded as JPEG or PNG.  Limits are either the plate's
(``plate``: the median over QC-passed negcon sites of each channel's median intensity and 99.9th
percentile, taken from qc.parquet, so brightness compares across thumbnails and a saturated site
looks saturated) or each image's own percentiles (``image``).
"""

from __future__ import annotations

import base64
import io as _io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.plate import negcon_mask, qc_failed

logger = logging.getLogger(__name__)

NAMED_COLORS = {
    "blue": (0.2, 0.4, 1.0),
    "green": (0.0, 1.0, 0.0),
    "red": (1.0, 0.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "gray": (0.6, 0.6, 0.6),
    "grey": (0.6, 0.6, 0.6),
    "orange": (1.0, 0.55, 0.0),
}
#: Channels whose name says they stain nuclei are blue; the others take this order.
NUCLEAR_NAMES = ("dna", "dapi", "hoechst", "nuclei", "nucleus", "h2b")
PALETTE = ("green", "red", "magenta", "cyan", "yellow", "orange", "white")


def parse_color(text: str) -> tuple[float, float, float]:
    """``#rrggbb`` or a colour name (``NAMED_COLORS``) -> RGB in 0..1."""
    t = str(text).strip().lower()
    if t in NAMED_COLORS:
        return NAMED_COLORS[t]
    if len(t) == 7 and t.startswith("#"):
        try:
            return tuple(int(t[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    raise ConfigError(
        f"report.channel_colors: {text!r} is not a colour; use #rrggbb or one of "
        f"{', '.join(NAMED_COLORS)}"
    )


def channel_colors(
    channels: Sequence[str], overrides: Mapping[str, str] | None = None
) -> dict[str, tuple[float, float, float]]:
    """A colour per channel: ``overrides`` first, nuclear stains blue, the rest from ``PALETTE``."""
    overrides = dict(overrides or {})
    out: dict[str, tuple[float, float, float]] = {}
    free = iter(PALETTE * (len(channels) // len(PALETTE) + 1))
    for ch in channels:
        if ch in overrides:
            out[ch] = parse_color(overrides[ch])
        elif ch.lower() in NUCLEAR_NAMES:
            out[ch] = NAMED_COLORS["blue"]
        else:
            out[ch] = NAMED_COLORS[next(free)]
    return out


def color_name(rgb: tuple[float, float, float]) -> str:
    """The name of an RGB colour in ``NAMED_COLORS``, else its ``#rrggbb``."""
    for name, val in NAMED_COLORS.items():
        if np.allclose(val, rgb):
            return name
    return "#" + "".join(f"{int(round(255 * v)):02x}" for v in rgb)


def plate_limits(qc: pd.DataFrame, channels: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Per-channel display limits from qc.parquet: median over the QC-passed negative-control
    sites (:func:`cytoscreen.plate.negcon_mask`; all QC-passed sites when the plate has none) of
    each site's median intensity (lo) and 99.9th percentile (hi).  Channels without those columns
    are left out."""
    ok = ~qc_failed(qc).to_numpy()
    negcon = negcon_mask(qc)
    if (ok & negcon).any():
        ok = ok & negcon
    out = {}
    for ch in channels:
        lo_col = f"{io.METADATA_PREFIX}{ch}_MedianIntensity"
        hi_col = f"{io.METADATA_PREFIX}{ch}_P999Intensity"
        if lo_col in qc.columns and hi_col in qc.columns and ok.any():
            lo = float(np.nanmedian(qc.loc[ok, lo_col].astype(float)))
            hi = float(np.nanmedian(qc.loc[ok, hi_col].astype(float)))
            if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
                out[ch] = (lo, hi)
    return out


def reduce(img: np.ndarray, size_px: int) -> np.ndarray:
    """Box-filter resize of a 2-D image so its long side is at most ``size_px`` (float32)."""
    from PIL import Image

    x = np.asarray(img, dtype=np.float32)
    h, w = x.shape
    scale = size_px / max(h, w)
    if scale >= 1:
        return x
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(x).resize(new, Image.Resampling.BOX), dtype=np.float32)


def composite(
    planes: Sequence[np.ndarray],
    colors: Sequence[tuple[float, float, float]],
    limits: Sequence[tuple[float, float]],
) -> np.ndarray:
    """Additive colour composite of 2-D planes, each mapped from its (lo, hi) to 0..1; uint8 RGB."""
    if not planes:
        raise InputDataError("composite: no channel planes")
    shape = planes[0].shape
    rgb = np.zeros((*shape, 3), dtype=np.float32)
    for plane, color, (lo, hi) in zip(planes, colors, limits, strict=True):
        if plane.shape != shape:
            raise InputDataError(
                f"composite: channel planes differ in shape ({plane.shape} vs {shape})"
            )
        span = hi - lo if hi > lo else 1.0
        v = np.clip((plane.astype(np.float32) - lo) / span, 0.0, 1.0)
        rgb += v[..., None] * np.asarray(color, dtype=np.float32)
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str = "jpeg", *, quality: int = 85) -> str:
    """An RGB uint8 image as a ``data:image/jpeg`` or ``data:image/png`` base64 URI."""
    from PIL import Image

    buf = _io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality, optimize=True)
    elif fmt == "png":
        img.save(buf, format="PNG", optimize=True)
    else:
        raise ConfigError(f"report.thumbnail_format: {fmt!r} is not jpeg or png")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Thumbnail:
    """A site's thumbnail URI, or ``None`` and why it could not be drawn."""

    uri: str | None
    error: str = ""


def site_thumbnail(
    site_images: pd.DataFrame,
    *,
    channels: Sequence[str],
    colors: Mapping[str, tuple[float, float, float]],
    limits: Mapping[str, tuple[float, float]] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    size_px: int = 128,
    fmt: str = "jpeg",
) -> Thumbnail:
    """Thumbnail of one site from its rows of images.parquet (one per channel).

    Channels without ``limits`` are stretched between their own ``percentiles``.  An unreadable
    image gives a :class:`Thumbnail` without URI and the error, never an exception.
    """
    by_channel = {str(r[io.CHANNEL]): r for _, r in site_images.iterrows()}
    planes, cols, lims = [], [], []
    limits = limits or {}
    try:
        for ch in channels:
            if ch not in by_channel:
                continue
            rec = by_channel[ch]
            raw = io.apply_intensity_scale(
                io.read_image(rec[io.PATH], int(rec[io.FRAME]) if io.FRAME in rec.index else -1),
                float(rec.get(io.INTENSITY_SCALE, 1.0)),
            )
            if ch in limits:
                lim = limits[ch]
            else:
                lo, hi = np.percentile(raw, percentiles)
                lim = (float(lo), float(hi))
            plane = reduce(raw, size_px)
            if planes and plane.shape != planes[0].shape:
                from PIL import Image

                plane = np.asarray(
                    Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize(
                        planes[0].shape[::-1]
                    )
                )
            planes.append(plane)
            cols.append(colors.get(ch, NAMED_COLORS["white"]))
            lims.append(lim)
        if not planes:
            return Thumbnail(None, "no image of the site in images.parquet")
        return Thumbnail(encode(composite(planes, cols, lims), fmt))
    except InputDataError as err:
        logger.warning("thumbnail: %s", err)
        return Thumbnail(None, str(err))
