"""Image readers: one 2-D plane of a TIFF, PNG or Zarr array, z projections, headers, full scale."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cytoscreen.errors import InputDataError


def is_zarr_array(path: str | os.PathLike) -> bool:
    """True if ``path`` is a Zarr array folder (v3 ``zarr.json`` or v2 ``.zarray``)."""
    p = Path(path)
    if (p / ".zarray").exists():
        return True
    meta = p / "zarr.json"
    if meta.exists():
        try:
            return json.loads(meta.read_text()).get("node_type") == "array"
        except (OSError, ValueError):
            return False
    return False


def read_image(path: str | os.PathLike, frame: int = -1) -> np.ndarray:
    """Read one 2-D image plane.

    Parameters
    ----------
    path
        A TIFF or PNG file, or a Zarr array folder (e.g. ``images.zarr/images``).
    frame
        For a TIFF: the page (plane) index, ``-1`` for a single-plane file, and
        :func:`z_max_frame` ``(c)`` (``-2 - c``) for the maximum projection over z of channel ``c``
        of a z-stack (``ingest.z_projection: max``).  For a Zarr array of shape ``(..., y, x)``: the
        flat index over the leading dimensions (for ``(site, channel, y, x)`` it is
        ``site * n_channels + channel``).

    Raises
    ------
    InputDataError
        When the file is missing, unreadable, truncated, or the plane is not 2-D.
    """
    p = Path(path)
    try:
        if is_zarr_array(p):
            import zarr

            arr = zarr.open_array(str(p), mode="r")
            lead = arr.shape[:-2]
            idx = np.unravel_index(max(frame, 0), lead) if lead else ()
            img = np.asarray(arr[tuple(int(i) for i in idx)])
        elif p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                if frame <= Z_MAX_FRAME:
                    img = _z_max(tif, Z_MAX_FRAME - frame)
                elif frame >= 0 and len(tif.pages) > 1:
                    img = tif.pages[frame].asarray()
                elif frame >= 0:  # one page holding several samples (planar or interleaved)
                    img = _sample_plane(np.squeeze(tif.pages[0].asarray()), frame)
                else:
                    img = tif.asarray()
        elif p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            import matplotlib.image as mpimg

            img = mpimg.imread(p)
            if img.ndim == 3:
                img = img[..., :3].mean(axis=-1)
        else:
            raise InputDataError(f"{p}: unknown image format {p.suffix!r}")
    except InputDataError:
        raise
    except Exception as err:  # tifffile/zarr raise many types for corrupt files
        raise InputDataError(f"{p}: cannot read image ({type(err).__name__}: {err})") from err
    img = np.squeeze(img)
    if img.size == 0:
        raise InputDataError(f"{p}: cannot read image (no pixel data; the file is truncated or corrupt)")
    if img.ndim != 2:
        raise InputDataError(
            f"{p}: expected a 2-D image plane, got shape {img.shape}: a z-stack needs "
            f"`ingest.z_projection: max`, and multi-channel TIFFs need a layout without a channel "
            f"group so each page is read as one channel"
        )
    return img


def apply_intensity_scale(img: np.ndarray, scale: float) -> np.ndarray:
    """``img`` times its ``intensity_scale`` (:data:`cytoscreen.io.INTENSITY_SCALE`) as float32;
    ``img`` itself when the scale is 1.

    The scale is what ``ingest.on_mixed_bit_depth: rescale`` records per image so that a plate
    mixing bit depths shares one full scale (257 for an 8-bit image among 16-bit ones).  Every
    reader of pixel values for display or measurement applies it through this function.
    """
    scale = float(scale)
    if scale == 1.0:
        return img
    return np.asarray(img, dtype=np.float32) * np.float32(scale)


#: ``frame`` of the maximum projection over z of channel 0 of a z-stack TIFF; channel ``c`` is
#: ``Z_MAX_FRAME - c`` (see :func:`z_max_frame`).
Z_MAX_FRAME = -2


def z_max_frame(channel: int = 0) -> int:
    """The ``frame`` that makes :func:`read_image` return the z maximum projection of ``channel``."""
    return Z_MAX_FRAME - int(channel)


def _z_max(tif: Any, channel: int) -> np.ndarray:
    """Maximum over z of channel ``channel`` of a TIFF's first series (pages are z unless the
    series has a C axis, as ImageJ hyperstacks do)."""
    series = tif.series[0]
    arr = series.asarray()
    axes = series.axes
    if "C" in axes:
        arr = np.take(arr, channel, axis=axes.index("C"))
        axes = axes.replace("C", "")
    elif channel:
        raise InputDataError(f"channel {channel} of a z-stack without a channel axis (axes {series.axes})")
    lead = tuple(i for i, a in enumerate(axes) if a not in "YXS")
    return arr.max(axis=lead) if lead else arr


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, without decoding pixels.

    ``planes`` counts the 2-D planes of the file (TIFF pages, or samples of one page);
    ``z`` and ``channels`` are the sizes of the Z and C axes that the file declares (ImageJ
    hyperstacks and OME-TIFF do; plain multi-page TIFFs do not, their pages are axis ``Q``).
    """

    dtype: str
    bit_depth: int
    shape: tuple[int, ...]
    axes: str
    planes: int
    z: int = 1
    channels: int = 1

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"


def read_image_header(path: str | os.PathLike) -> ImageHeader:
    """dtype, bits per sample and plane layout of a TIFF or PNG from its header.

    Raises
    ------
    InputDataError
        The file cannot be opened or its header cannot be read.
    """
    p = Path(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                series = tif.series[0]
                page = tif.pages[0]
                axes = series.axes
                shape = tuple(int(n) for n in series.shape)
                pages = len(tif.pages)
                samples = int(getattr(page, "samplesperpixel", 1) or 1)
                return ImageHeader(
                    dtype=np.dtype(series.dtype).name, bit_depth=int(page.bitspersample), shape=shape,
                    axes=axes, planes=pages if pages > 1 else samples,
                    z=shape[axes.index("Z")] if "Z" in axes else 1,
                    channels=shape[axes.index("C")] if "C" in axes else 1,
                )
        if p.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(p) as im:
                modes = {"1": ("bool", 1), "L": ("uint8", 8), "LA": ("uint8", 8), "P": ("uint8", 8),
                         "RGB": ("uint8", 8), "RGBA": ("uint8", 8), "I;16": ("uint16", 16),
                         "I;16B": ("uint16", 16), "I": ("int32", 32), "F": ("float32", 32)}
                dtype, bits = modes.get(im.mode, ("uint8", 8))
                return ImageHeader(dtype=dtype, bit_depth=bits, shape=(im.height, im.width), axes="YX",
                                   planes=1)
        raise InputDataError(f"{p}: unknown image format {p.suffix!r}")
    except InputDataError:
        raise
    except Exception as err:  # noqa: BLE001 - decoders raise many types for corrupt files
        raise InputDataError(f"{p}: cannot read image header ({type(err).__name__}: {err})") from err


def _sample_plane(arr: np.ndarray, index: int) -> np.ndarray:
    """Plane ``index`` of a (C, y, x) or (y, x, C) array from a single multi-sample TIFF page."""
    if arr.ndim == 2 and index == 0:
        return arr
    if arr.ndim != 3:
        raise InputDataError(f"cannot take channel {index} of an image of shape {arr.shape}")
    axis = 0 if arr.shape[0] <= arr.shape[-1] else arr.ndim - 1
    if index >= arr.shape[axis]:
        raise InputDataError(f"channel {index} requested but the image has {arr.shape[axis]} channels")
    return np.take(arr, index, axis=axis)


def tiff_channel_count(path: str | os.PathLike) -> int:
    """Number of channel planes of a TIFF: its pages, or the samples of a single page."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) > 1:
            return len(tif.pages)
        shape = np.squeeze(np.empty(tif.pages[0].shape, dtype=np.uint8)).shape
        return 1 if len(shape) == 2 else min(shape[0], shape[-1])


def image_dtype_max(img: np.ndarray) -> float:
    """Full-scale value of an image's dtype (255 for uint8, 65535 for uint16); for float images
    their actual range (:func:`image_full_scale`: 1.0 for a 0-1 image)."""
    if np.issubdtype(img.dtype, np.integer):
        return float(np.iinfo(img.dtype).max)
    return image_full_scale(img)


def image_full_scale(img: np.ndarray, bit_depth: int | None = None) -> float:
    """The value a saturated pixel of ``img`` has.

    Integer images: ``2**bit_depth - 1`` when the file declares fewer bits than its dtype holds
    (a 12-bit camera in a 16-bit TIFF), else the dtype's maximum.  Float images, by their actual
    range: 1.0 when every value is at most 1 (a 0-1 image), else the smallest ``2**k - 1`` at or
    above the maximum (raw counts stored as float: 4095 for a 12-bit camera, 65535 for 16-bit).
    """
    if np.issubdtype(img.dtype, np.integer):
        full = float(np.iinfo(img.dtype).max)
        if bit_depth and 0 < bit_depth < np.iinfo(img.dtype).bits:
            full = float(2 ** int(bit_depth) - 1)
        return full
    top = float(np.nanmax(img)) if img.size else 0.0
    if not np.isfinite(top) or top <= 1.0:
        return 1.0
    return float(2 ** int(np.ceil(np.log2(top + 1.0))) - 1)
