"""Per-channel preprocessing of one site before the backbone: pure array functions.

The order, for each channel of a site:

1. **to float** (8-bit, 16-bit and float images; NaN/inf become 0; with ``scaling: dtype`` the
   image is divided by its dtype's full-scale value),
2. **illumination correction** (optional): divide by the plate's illumination function for the
   channel, a heavily smoothed mean image normalised to mean 1 (CellProfiler's
   CorrectIlluminationCalculate with the "Regular" method, Gaussian smoothing),
3. **resize or tile** to the backbone's input (antialiased bilinear; ``tile`` cuts a centred grid
   of ``tile_px`` squares at native resolution, each resized to the input size),
4. **intensity scaling** to [0, 1] with clipping:

   ``negcon`` (default)
       fixed per plate and channel: ``lo``/``hi`` are the medians, over the plate's QC-passed
       negcon sites, of each site's lower/upper percentile.  One affine map for every site keeps
       intensity differences between treatments (a brighter DNA stain stays brighter), which a
       profiling readout needs; per-image scaling would erase them.
   ``image``
       per image percentile clip (``lo``/``hi`` of the image itself): removes plate and site
       intensity drift but also real intensity phenotypes.
   ``dtype``
       divide by the dtype's full scale (65535 for 16-bit); no data-driven scaling.

Scaling is computed on the resized image (resizing is linear and preserves constants, so it
commutes with the affine map up to the final clip), which keeps percentiles cheap.  A constant or
all-zero image maps to a constant (zero) image, so features stay finite.  Replication of the grey
channel to RGB and ImageNet mean/std normalisation happen on the device (``embed.SiteEmbedder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cytoscreen import io
from cytoscreen.errors import ConfigError

SCALING_METHODS: tuple[str, ...] = ("negcon", "image", "dtype")
SPATIAL_MODES: tuple[str, ...] = ("resize", "tile")
DEFAULT_PERCENTILES: tuple[float, float] = (0.1, 99.9)
#: Lowest value of a normalised illumination function (avoids blowing up dark corners).
ILLUM_FLOOR = 0.05
_EPS = 1e-6


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """Everything the dataset needs to turn raw channel images into backbone inputs.

    ``levels`` (``(n_channels, 2)``: lo, hi in raw units after illumination correction) is set
    for ``scaling="negcon"`` by :func:`cytoscreen.features.dataset.fit_reference`; ``illum`` holds
    one illumination function per channel when correction is on.
    """

    input_px: int
    spatial: str = "resize"
    tile_px: int | None = None
    scaling: str = "negcon"
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    levels: np.ndarray | None = None
    illum: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        if self.spatial not in SPATIAL_MODES:
            raise ConfigError(
                f"features.spatial: unknown mode {self.spatial!r}; choose one of {', '.join(SPATIAL_MODES)}"
            )
        if self.scaling not in SCALING_METHODS:
            raise ConfigError(
                f"features.scaling: unknown method {self.scaling!r}; choose one of "
                f"{', '.join(SCALING_METHODS)}"
            )
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(
                f"features.scaling_percentiles: need 0 <= low < high <= 100, got {list(self.percentiles)}"
            )
        if self.input_px < 1 or (self.tile_px is not None and self.tile_px < 1):
            raise ConfigError("features.tile_px and the backbone input size must be positive")

    @property
    def tile_size(self) -> int:
        """Native-resolution tile side (``tile_px``, or the backbone input size)."""
        return int(self.tile_px or self.input_px)


# --- per channel ------------------------------------------------------------------------------------
def as_float(img: np.ndarray, *, dtype_scale: bool = False) -> np.ndarray:
    """A float32 copy of ``img`` with NaN/inf set to 0; divided by the dtype's full scale if asked."""
    out = np.array(img, dtype=np.float32, copy=True)  # one copy, also for float32 input
    if not np.issubdtype(np.asarray(img).dtype, np.integer):
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if dtype_scale:
        out /= io.image_dtype_max(np.asarray(img))
    return out


def tile_origins(height: int, width: int, tile_px: int) -> list[tuple[int, int]]:
    """Top-left corners of a centred grid of whole ``tile_px`` tiles (one tile if the image is smaller)."""
    ny, nx = max(height // tile_px, 1), max(width // tile_px, 1)
    y0 = max((height - ny * tile_px) // 2, 0)
    x0 = max((width - nx * tile_px) // 2, 0)
    return [(y0 + i * tile_px, x0 + j * tile_px) for i in range(ny) for j in range(nx)]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, H, W)`` to ``(N, size, size)``: antialiased bilinear (stretches non-square)."""
    if x.shape[-2:] == (size, size):
        return x
    down = x.shape[-2] > size or x.shape[-1] > size
    out = F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False,
                        antialias=down)
    return out[:, 0]


def fit_to_input(img: np.ndarray, *, input_px: int, spatial: str = "resize",
                 tile_px: int | None = None) -> torch.Tensor:
    """Resize (``(1, P, P)``) or tile (``(T, P, P)``) a float32 2-D image for a P-pixel backbone."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    if spatial == "resize":
        return _resize(x[None], input_px)
    size = int(tile_px or input_px)
    h, w = x.shape
    tiles = [x[y : y + size, xx : xx + size] for y, xx in tile_origins(h, w, size)]
    return _resize(torch.stack(tiles), input_px) if tiles[0].shape == (size, size) else _resize(x[None], input_px)


def prepare_channel(img: np.ndarray, prep: Preprocessing, *, illum: np.ndarray | None = None,
                    scale: float = 1.0) -> torch.Tensor:
    """Steps 1-3 for one channel image: float, illumination correction, resize or tile.

    ``scale`` is the image's ``intensity_scale`` (``ingest.on_mixed_bit_depth: rescale``); it
    multiplies the values unless ``scaling="dtype"``, where each image is already divided by its
    own full scale (which the rescale would cancel).
    """
    x = as_float(img, dtype_scale=prep.scaling == "dtype")
    if scale != 1.0 and prep.scaling != "dtype":
        x *= np.float32(scale)
    if illum is not None:
        x /= illum
    return fit_to_input(x, input_px=prep.input_px, spatial=prep.spatial, tile_px=prep.tile_size)


def channel_levels(x: torch.Tensor | np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES
                   ) -> tuple[float, float]:
    """(lo, hi) percentiles of one fitted channel (all tiles together)."""
    arr = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    lo, hi = np.percentile(arr.reshape(-1), [float(percentiles[0]), float(percentiles[1])])
    return float(lo), float(hi)


def scale_site(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Step 4 for a fitted site ``(C, T, P, P)``: map to [0, 1] per channel (in place) and clip."""
    if prep.scaling == "dtype":
        return x.clamp_(0.0, 1.0)
    if prep.scaling == "negcon":
        if prep.levels is None:
            raise ValueError("negcon scaling needs levels; fit them with dataset.fit_reference")
        levels = np.asarray(prep.levels, dtype=np.float64)
        if levels.shape[0] != x.shape[0]:
            raise ValueError(f"levels for {levels.shape[0]} channels, site has {x.shape[0]}")
    else:
        levels = np.array([channel_levels(x[c], prep.percentiles) for c in range(x.shape[0])])
    for c, (lo, hi) in enumerate(levels):
        x[c].sub_(float(lo)).div_(max(float(hi - lo), _EPS))
    return x.clamp_(0.0, 1.0)


def scale_sites(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Step 4 for a batch of fitted sites ``(B, C, T, P, P)`` (in place): :func:`scale_site` of
    each site, with ``negcon`` levels as three whole-batch operations (the same float32 values:
    per-plane ops on small planes stall a busy machine's thread pool at every call)."""
    if prep.scaling != "negcon" or prep.levels is None:
        for site in x:
            scale_site(site, prep)
        return x
    levels = torch.as_tensor(np.asarray(prep.levels, dtype=np.float64))
    if levels.shape[0] != x.shape[1]:
        raise ValueError(f"levels for {levels.shape[0]} channels, site has {x.shape[1]}")
    span = (levels[:, 1] - levels[:, 0]).clamp_min(_EPS)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    x -= levels[:, 0].to(torch.float32).view(shape)
    x /= span.to(torch.float32).view(shape)
    return x.clamp_(0.0, 1.0)


def fit_batch(raw: torch.Tensor, prep: Preprocessing, *, dtype_max: torch.Tensor | None = None,
              scale: torch.Tensor | None = None, illum: torch.Tensor | None = None,
              levels: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Steps 1-4 for a batch of raw sites ``(B, C, H, W)`` at once, on the tensor's device.

    The batched form of :func:`prepare_channel` + :func:`scale_site` for ``spatial="resize"``:
    the same operations in the same order on the whole batch (one conversion, one resize call for
    all ``B * C`` planes, one affine map), so it runs where the backbone runs (a GPU, or the main
    process on CPU) instead of per channel in the DataLoader workers.  Returns ``(B, C, 1, P, P)``
    float32 in [0, 1].

    Parameters
    ----------
    raw
        uint8, uint16 or float32 planes as read (float planes may hold NaN/inf).
    dtype_max
        ``(B, C)`` full scale of each plane's dtype (:func:`cytoscreen.io.image_dtype_max`), used
        by ``scaling="dtype"``.
    scale
        ``(B, C)`` ``intensity_scale`` of each plane (ignored by ``scaling="dtype"``).
    illum
        ``(C, H, W)`` illumination functions, or None.
    levels
        ``(C, 2)`` negcon levels as a tensor (default: ``prep.levels``).
    out
        A float32 buffer of ``raw``'s shape to convert into (reused between batches); its
        content is overwritten.
    """
    if prep.spatial != "resize":
        raise ValueError("fit_batch handles spatial='resize' only; tiles are cut per site")
    b, c, h, w = raw.shape
    floating = raw.is_floating_point()
    if out is None or out.shape != raw.shape or out.device != raw.device:
        out = torch.empty(raw.shape, dtype=torch.float32, device=raw.device)
    x = out.copy_(raw)  # into a reused buffer: no fresh full-size allocation per batch
    if floating:
        torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0)
    if illum is not None:
        x /= illum.to(x.device, torch.float32).view(1, c, h, w)
    x = _resize(x.view(b * c, h, w), prep.input_px).view(b, c, 1, prep.input_px, prep.input_px)
    # per-plane factors commute with the (linear) resize: applied on the small planes
    if prep.scaling == "dtype":
        if dtype_max is None:
            raise ValueError("dtype scaling needs dtype_max")
        x /= dtype_max.to(x.device, torch.float32).view(b, c, 1, 1, 1)
        return x.clamp_(0.0, 1.0)
    if scale is not None:
        x *= scale.to(x.device, torch.float32).view(b, c, 1, 1, 1)
    if prep.scaling == "negcon":
        if levels is None:
            if prep.levels is None:
                raise ValueError("negcon scaling needs levels; fit them with dataset.fit_reference")
            levels = torch.as_tensor(np.asarray(prep.levels, dtype=np.float64))
        lv = levels.to(x.device, torch.float64)
        if lv.shape[0] != c:
            raise ValueError(f"levels for {lv.shape[0]} channels, site has {c}")
        lo, hi = lv[:, 0].view(1, c), lv[:, 1].view(1, c)
        lo, hi = lo.expand(b, c), hi.expand(b, c)
    else:  # image: each plane's own percentiles (np.percentile's linear interpolation)
        q = torch.tensor([float(prep.percentiles[0]) / 100.0, float(prep.percentiles[1]) / 100.0],
                         dtype=torch.float64, device=x.device)
        per = torch.stack([torch.quantile(x[i].reshape(c, -1).to(torch.float64), q, dim=-1)
                           for i in range(b)], dim=1)  # (2, B, C); per site: quantile's size limit
        lo, hi = per[0], per[1]
    span = (hi - lo).clamp_min(_EPS)
    x -= lo.to(torch.float32).view(b, c, 1, 1, 1)
    x /= span.to(torch.float32).view(b, c, 1, 1, 1)
    return x.clamp_(0.0, 1.0)


def reference_levels(site_levels: np.ndarray) -> np.ndarray:
    """Plate levels ``(C, 2)`` from per-site levels ``(S, C, 2)``: the median over sites."""
    arr = np.asarray(site_levels, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError("need per-site levels of shape (sites, channels, 2)")
    return np.median(arr, axis=0)


# --- illumination ----------------------------------------------------------------------------------
class IlluminationAccumulator:
    """Streaming per-channel sum of raw images (float64); memory is one image per channel."""

    def __init__(self, n_channels: int) -> None:
        self.sums: list[np.ndarray | None] = [None] * n_channels
        self.count = 0

    def add(self, images: Sequence[np.ndarray]) -> None:
        """Add one site (one float image per channel, same shape as earlier sites)."""
        for c, img in enumerate(images):
            if self.sums[c] is None:
                self.sums[c] = np.zeros(img.shape, np.float64)
            elif self.sums[c].shape != img.shape:
                raise ValueError(f"channel {c}: image shape {img.shape} differs from {self.sums[c].shape}")
            self.sums[c] += img
        self.count += 1

    def functions(self, sigma_px: float) -> tuple[np.ndarray, ...]:
        """One illumination function per channel from the mean images so far."""
        if self.count == 0:
            raise ValueError("no images added")
        return tuple(illumination_function(s / self.count, sigma_px) for s in self.sums)


def illumination_function(mean_image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-smoothed mean image, normalised to mean 1 and floored at :data:`ILLUM_FLOOR`.

    A flat (or all-zero) mean image gives all ones, i.e. no correction.
    """
    from scipy.ndimage import gaussian_filter

    img = np.asarray(mean_image, dtype=np.float64)
    smooth = gaussian_filter(img, sigma=float(sigma_px), mode="nearest") if sigma_px > 0 else img
    mean = float(smooth.mean())
    if not np.isfinite(mean) or mean <= 0:
        return np.ones(img.shape, np.float32)
    return np.maximum(smooth / mean, ILLUM_FLOOR).astype(np.float32)
