"""Image headers at ingest: dtype and bit depth per image, z-stacks, and plates mixing bit depths.

Only file headers are read (a TIFF's IFD, a PNG's IHDR, a Zarr array's metadata), in a thread
pool, so this costs milliseconds per thousand files, not a decode.

- Every image row gets ``dtype`` and ``bit_depth`` (:data:`cytoscreen.io.DTYPE`,
  :data:`cytoscreen.io.BIT_DEPTH`) and ``intensity_scale`` (1.0 unless rescaled).
- A file that a layout with a channel group names as one channel but that holds several planes
  is a z-stack: an error unless ``ingest.z_projection: max``, which reads it as the maximum
  projection over z (:func:`cytoscreen.io.z_max_frame`).  Planes held as samples of one page
  (RGB) are channels, not z: the error then points at layouts without a channel group.
- A channel whose images differ in dtype or bit depth (8-bit wells among 16-bit ones) is an error
  unless ``ingest.on_mixed_bit_depth: rescale``: then every image of the channel gets the factor
  that brings its full scale to the channel's largest (257 for 8-bit among 16-bit).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError

logger = logging.getLogger(__name__)

Z_PROJECTIONS = ("none", "max")
ON_MIXED_BIT_DEPTH = ("error", "rescale")


def _header(path: str) -> io.ImageHeader:
    if io.is_zarr_array(path):
        import zarr

        try:
            dtype = np.dtype(zarr.open_array(str(path), mode="r").dtype)
        except Exception as err:  # noqa: BLE001 - zarr raises many types for bad stores
            raise InputDataError(f"{path}: cannot open Zarr array ({err})") from err
        return io.ImageHeader(dtype=dtype.name, bit_depth=dtype.itemsize * 8, shape=(), axes="", planes=1)
    return io.read_image_header(path)


def read_headers(paths: list[str], threads: int | None = None) -> dict[str, io.ImageHeader]:
    """``{path: header}`` of every distinct path, read in a thread pool."""
    unique = list(dict.fromkeys(paths))
    workers = max(1, min(threads or (os.cpu_count() or 1) * 2, 16, len(unique)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(unique, pool.map(_header, unique), strict=True))


def _z_stack_message(path: str, h: io.ImageHeader) -> str:
    return (f"{path}: a 3-D TIFF (shape {h.shape}, axes {h.axes}) where the layout names one channel: "
            f"a z-stack of {h.planes} planes; set `ingest.z_projection: max` to read its maximum "
            f"projection over z, or use a layout without a channel group if its planes are channels")


def resolve_planes(df: pd.DataFrame, headers: dict[str, io.ImageHeader], *, z_projection: str) -> pd.DataFrame:
    """Rows naming one channel of a multi-plane file (``frame == -1``): z-stacks get the
    projection frame under ``z_projection: max``; otherwise one clear error."""
    if df.empty:
        return df
    frames = df[io.FRAME].to_numpy(np.int64).copy()
    stacks = []
    for i, (path, frame) in enumerate(zip(df[io.PATH], frames, strict=True)):
        h = headers[path]
        if frame != -1 or h.planes <= 1:
            continue
        if "S" in h.axes or h.channels > 1:
            raise InputDataError(
                f"{path}: {h.planes} channel planes (shape {h.shape}, axes {h.axes}) in a file the layout "
                f"names as one channel; use a layout without a channel group so each plane is one channel")
        stacks.append(path)
        frames[i] = io.z_max_frame(0)
    if stacks and z_projection != "max":
        raise InputDataError(f"{len(stacks)} image file(s) are z-stacks, e.g. "
                             + _z_stack_message(stacks[0], headers[stacks[0]]))
    if stacks:
        logger.info("%d z-stack file(s) read as their maximum projection over z (ingest.z_projection: max)",
                    len(stacks))
    out = df.copy()
    out[io.FRAME] = frames
    return out


def _full_scale(path: str, frame: int, h: io.ImageHeader) -> float:
    if not h.is_float:
        return float(2 ** h.bit_depth - 1)
    return io.image_full_scale(io.read_image(path, frame))  # a float file's range is in its pixels


def annotate(df: pd.DataFrame, headers: dict[str, io.ImageHeader], *, on_mixed_bit_depth: str,
             source: str) -> pd.DataFrame:
    """Add ``dtype``, ``bit_depth`` and ``intensity_scale``; check each channel has one image type."""
    out = df.copy()
    out[io.DTYPE] = [headers[p].dtype for p in out[io.PATH]]
    out[io.BIT_DEPTH] = np.array([headers[p].bit_depth for p in out[io.PATH]], dtype=np.int64)
    out[io.INTENSITY_SCALE] = 1.0
    for channel, g in out.groupby(io.CHANNEL, sort=False):
        kinds = g.groupby([io.DTYPE, io.BIT_DEPTH], sort=False)[io.PATH]
        if kinds.ngroups <= 1:
            continue
        if on_mixed_bit_depth != "rescale":
            groups = sorted(kinds, key=lambda kv: -len(kv[1]))  # the usual type first
            shown = "; ".join(f"{len(paths)} {dtype} {bits}-bit (e.g. {Path(paths.iloc[0]).name})"
                              for (dtype, bits), paths in groups)
            raise InputDataError(
                f"{source}: channel {channel} mixes image types: {shown}; their intensities are not "
                f"comparable (8-bit wells would look empty next to 16-bit ones). Re-export the plate "
                f"with one bit depth, or set `ingest.on_mixed_bit_depth: rescale` to scale every image "
                f"to the channel's largest full scale")
        full = np.array([_full_scale(p, int(f), headers[p]) for p, f in zip(g[io.PATH], g[io.FRAME], strict=True)])
        target = float(full.max())
        out.loc[g.index, io.INTENSITY_SCALE] = target / full
        logger.warning("%s: channel %s mixes %s; images rescaled to full scale %g "
                       "(ingest.on_mixed_bit_depth: rescale)", source, channel,
                       ", ".join(f"{d} {b}-bit" for d, b in kinds.groups), target)
    return out
