"""Single-cell crops around nucleus centres, and crop embeddings aggregated cell -> site -> well.

Crops
    For every nucleus of a site (its label image from ``segment run --masks``), a fixed
    ``size_px`` square of every crop channel centred on the nucleus centroid; crops reaching past
    the image edge are zero-padded (``Metadata_Crop_Padded``), so a plate has exactly one crop per
    nucleus.  Crops keep the images' dtype (a rescaled image, ``intensity_scale``, is rounded into
    the type of the channel's full-scale images) and go into one Zarr array per plate of shape
    ``(cells, channels, size_px, size_px)`` (attributes: ``channels``, ``size_px``, ``plate``),
    written in whole chunks and renamed into place when complete.  The index table
    (``crops.parquet``) has one row per crop, in array order: the site's ``Metadata_*`` columns,
    ``Metadata_Crop`` (row in the array), ``Metadata_Cell`` (nucleus label),
    ``Metadata_Cell_Y`` / ``Metadata_Cell_X`` (centroid, px), ``Metadata_Cell_Area`` (px) and
    ``Metadata_Crop_Padded``.

Crop embeddings
    Each crop channel is scaled to [0, 1] (``negcon``: one lo/hi per channel from the pooled pixels
    of up to ``reference_max_crops`` crops of negcon wells, so intensity differences survive;
    ``image``: per crop and channel percentiles; ``dtype``: divide by full scale), resized to the
    backbone input, repeated to RGB, ImageNet-normalised and embedded with the features stage's
    backbone (:func:`cytoscreen.backbones.create_backbone`, same column names
    ``<Channel>_<backbone>_<i>``).  Cells are reduced to sites by the median while streaming (memory
    is one batch plus one site's cells), giving a table shaped like the features stage's
    ``sites.parquet`` plus ``Metadata_n_cells``; sites are reduced to wells by the profiles stage's
    aggregation (median, QC-failed sites left out), so single-cell and segmentation-free profiles
    of one screen can be compared like for like.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io, plate, stats
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.plate import read_site_image
from cytoscreen.segment.segment import mask_path, write_mask  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

CROP = "Metadata_Crop"
CELL = "Metadata_Cell"
CELL_Y = "Metadata_Cell_Y"
CELL_X = "Metadata_Cell_X"
CELL_AREA = "Metadata_Cell_Area"
CROP_PADDED = "Metadata_Crop_Padded"
N_CELLS = "Metadata_n_cells"
CELL_COLUMNS: tuple[str, ...] = (CROP, CELL, CELL_Y, CELL_X, CELL_AREA, CROP_PADDED)
SCALING_METHODS: tuple[str, ...] = ("negcon", "image", "dtype")
_EPS = 1e-6


# --- centres and crops -----------------------------------------------------------------------------
def nucleus_centres(labels: np.ndarray) -> pd.DataFrame:
    """Per object of a label image: ``label``, centroid ``y``, ``x`` (px) and ``area`` (px)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputDataError(f"expected a 2-D label image, got shape {labels.shape}")
    flat = labels.ravel().astype(np.int64)
    n = int(flat.max(initial=0)) + 1
    area = np.bincount(flat, minlength=n)
    yy, xx = np.divmod(np.arange(flat.size, dtype=np.int64), labels.shape[1])
    sy = np.bincount(flat, weights=yy, minlength=n)
    sx = np.bincount(flat, weights=xx, minlength=n)
    ids = np.flatnonzero(area)
    ids = ids[ids > 0]
    return pd.DataFrame({
        "label": ids.astype(np.int64),
        "y": sy[ids] / area[ids],
        "x": sx[ids] / area[ids],
        "area": area[ids].astype(np.int64),
    })


def extract_crops(stack: np.ndarray, centres_yx: np.ndarray, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops ``(N, C, size, size)`` of a ``(C, Y, X)`` stack around ``(N, 2)`` centres.

    A crop's top-left corner is ``round(centre) - size // 2``; parts outside the image are zero.
    Returns the crops (the stack's dtype) and a bool per crop: True when it was padded.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise InputDataError(f"expected a (channels, y, x) stack, got shape {stack.shape}")
    if size_px < 1:
        raise ConfigError("segment.crops.size_px must be at least 1")
    c, h, w = stack.shape
    centres = np.asarray(centres_yx, dtype=np.float64).reshape(-1, 2)
    n = len(centres)
    out = np.zeros((n, c, size_px, size_px), dtype=stack.dtype)
    if n == 0:
        return out, np.zeros(0, dtype=bool)
    padded_stack = np.pad(stack, ((0, 0), (size_px, size_px), (size_px, size_px)))
    top = np.rint(centres[:, 0]).astype(np.int64) - size_px // 2
    left = np.rint(centres[:, 1]).astype(np.int64) - size_px // 2
    for i in range(n):
        y0, x0 = int(top[i]) + size_px, int(left[i]) + size_px
        out[i] = padded_stack[:, y0 : y0 + size_px, x0 : x0 + size_px]
    padded = (top < 0) | (left < 0) | (top + size_px > h) | (left + size_px > w)
    return out, padded


# --- the crop store --------------------------------------------------------------------------------
class CropWriter:
    """Appends crops to a Zarr array ``(cells, C, S, S)`` written in whole chunks, then renamed.

    Use as a context manager; the array appears at ``path`` only when the block succeeds (a
    previous array there is replaced).
    """

    def __init__(self, path: str | os.PathLike, *, channels: Sequence[str], size_px: int,
                 dtype: Any, chunk_cells: int = 64, attrs: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.channels = tuple(channels)
        self.size_px = int(size_px)
        self.dtype = np.dtype(dtype)
        self.chunk_cells = max(int(chunk_cells), 1)
        self.attrs = dict(attrs or {})
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self.n_written = 0
        self._array = None
        self._tmp: Path | None = None

    def __enter__(self) -> CropWriter:
        import zarr

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        shape = (0, len(self.channels), self.size_px, self.size_px)
        self._array = zarr.create_array(
            store=str(self._tmp), shape=shape, dtype=self.dtype, fill_value=0,
            chunks=(self.chunk_cells, *shape[1:]), overwrite=True,
        )
        self._array.attrs.update({"channels": list(self.channels), "size_px": self.size_px, **self.attrs})
        return self

    def add(self, crops: np.ndarray) -> tuple[int, int]:
        """Queue crops; returns their (start, stop) rows in the final array."""
        crops = np.asarray(crops)
        expected = (len(self.channels), self.size_px, self.size_px)
        if crops.shape[1:] != expected:
            raise ValueError(f"crops of shape {crops.shape[1:]} do not fit the array ({expected})")
        start = self.n_written + self._buffered
        if len(crops):
            self._buffer.append(crops.astype(self.dtype, copy=False))
            self._buffered += len(crops)
            if self._buffered >= self.chunk_cells:
                self._flush(final=False)
        return start, start + len(crops)

    def _flush(self, *, final: bool) -> None:
        if not self._buffered:
            return
        data = np.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        n = len(data) if final else (len(data) // self.chunk_cells) * self.chunk_cells
        if n:
            self._array.append(data[:n], axis=0)
            self.n_written += n
        rest = data[n:]
        self._buffer = [rest] if len(rest) else []
        self._buffered = len(rest)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush(final=True)
                if self.path.exists():
                    shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
                os.replace(self._tmp, self.path)
        finally:
            if self._tmp is not None and self._tmp.exists():
                shutil.rmtree(self._tmp, ignore_errors=True)


LabelReader = Callable[[Mapping[str, Any]], "np.ndarray | None"]


def as_crop_dtype(stack: np.ndarray, dtype: Any) -> np.ndarray:
    """``stack`` in the crop array's ``dtype``: rescaled (float) values of an integer array are
    rounded and clipped to the type's range, so a rescaled 8-bit site crops as its 16-bit twin."""
    dtype = np.dtype(dtype)
    if stack.dtype == dtype:
        return stack
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(stack.dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(stack), info.min, info.max).astype(dtype)
    return stack.astype(dtype)


def crop_sites(
    sites: pd.DataFrame,
    labels_for: LabelReader,
    writer: CropWriter,
    *,
    channels: Sequence[str],
    size_px: int,
    skip: np.ndarray | None = None,
    source: str = "crops",
) -> pd.DataFrame:
    """Crop every nucleus of every site into ``writer``; return the index table (one row per crop).

    Parameters
    ----------
    sites
        A site table from :func:`cytoscreen.segment.segment.site_table` with the crop channels.
    labels_for
        Returns the nucleus label image of a site row, or None when the site has none (skipped,
        counted in the log).
    skip
        Boolean per site: not cropped (e.g. ``QC_unreadable``).
    """
    meta = [c for c in io.metadata_columns(sites) if c != io.CHANNEL]
    skip = np.zeros(len(sites), dtype=bool) if skip is None else np.asarray(skip, dtype=bool)
    parts = []
    n_no_mask = n_unreadable = 0
    for i, row in enumerate(sites.to_dict(orient="records")):
        if skip[i]:
            continue
        labels = labels_for(row)
        if labels is None:
            n_no_mask += 1
            continue
        try:
            stack = as_crop_dtype(np.stack([read_site_image(row, ch) for ch in channels]), writer.dtype)
        except (InputDataError, ValueError) as err:
            logger.warning("%s: site not cropped: %s", source, err)
            n_unreadable += 1
            continue
        if stack.shape[1:] != np.shape(labels):
            raise InputDataError(
                f"{source}: mask of {row[io.PLATE]} {row[io.WELL]} s{row[io.SITE]} has shape "
                f"{np.shape(labels)} but its images {stack.shape[1:]}; re-run `segment run`"
            )
        centres = nucleus_centres(labels)
        crops, padded = extract_crops(stack, centres[["y", "x"]].to_numpy(), size_px)
        start, stop = writer.add(crops)
        part = pd.DataFrame({c: [row[c]] * len(centres) for c in meta})
        part[CROP] = np.arange(start, stop, dtype=np.int64)
        part[CELL] = centres["label"].to_numpy()
        part[CELL_Y] = centres["y"].to_numpy()
        part[CELL_X] = centres["x"].to_numpy()
        part[CELL_AREA] = centres["area"].to_numpy()
        part[CROP_PADDED] = padded
        parts.append(part)
    if n_no_mask:
        logger.warning("%s: %d site(s) have no nucleus mask and were not cropped", source, n_no_mask)
    if n_unreadable:
        logger.warning("%s: %d site(s) could not be read and were not cropped", source, n_unreadable)
    if parts:
        index = pd.concat(parts, ignore_index=True)
    else:
        index = pd.DataFrame({c: pd.Series(dtype=sites[c].dtype) for c in meta})
        for col, dt in ((CROP, np.int64), (CELL, np.int64), (CELL_Y, np.float64), (CELL_X, np.float64),
                        (CELL_AREA, np.int64), (CROP_PADDED, bool)):
            index[col] = pd.Series(dtype=dt)
    logger.info("%s: %d crops of %d px from %d site(s), %d padded at the image edge", source,
                len(index), size_px, index.drop_duplicates(list(io.SITE_KEYS)).shape[0] if len(index) else 0,
                int(index[CROP_PADDED].sum()) if len(index) else 0)
    return index


# --- crop embeddings -------------------------------------------------------------------------------
def reference_levels(array, index: pd.DataFrame, *, reference: str = "negcon",
                     percentiles: Sequence[float] = (0.1, 99.9), max_crops: int = 2000) -> np.ndarray:
    """Per-channel (lo, hi) from the pooled pixels of up to ``max_crops`` reference crops.

    Reference crops are those of ``Metadata_pert_type == reference`` wells
    (:func:`cytoscreen.plate.pert_type_mask`; every crop when there are none, with a warning);
    they are spread evenly over the plate.  Padding is left out.
    """
    if len(index) == 0:
        raise InputDataError("no crops to fit intensity levels on")
    is_ref = plate.pert_type_mask(index, reference)
    if not is_ref.any():
        logger.warning("crops: no %s crops; intensity levels fitted on all crops", reference)
        is_ref = np.ones(len(index), dtype=bool)
    rows = index[CROP].to_numpy()[np.flatnonzero(is_ref)]
    pick = np.sort(rows[stats.spread(len(rows), max_crops)])
    data = np.asarray(array.oindex[pick] if hasattr(array, "oindex") else array[pick])
    padded = index.set_index(CROP).loc[pick, CROP_PADDED].to_numpy(bool)
    levels = np.zeros((data.shape[1], 2), dtype=np.float64)
    for c in range(data.shape[1]):
        x = data[:, c].astype(np.float32)
        # leave out zero padding of edge crops
        values = np.concatenate([x[~padded].ravel(), x[padded][x[padded] > 0].ravel()])
        if values.size == 0:
            values = x.ravel()
        lo, hi = np.percentile(values, [float(percentiles[0]), float(percentiles[1])])
        levels[c] = (lo, hi)
    return levels


def _scale(x, *, scaling: str, levels: np.ndarray | None, percentiles: Sequence[float], full_scale: float):
    """Map a float batch ``(B, C, S, S)`` to [0, 1] in place."""
    import torch

    if scaling == "dtype":
        x.div_(full_scale)
    elif scaling == "negcon":
        lv = torch.as_tensor(np.asarray(levels), dtype=x.dtype, device=x.device)
        lo, hi = lv[:, 0].view(1, -1, 1, 1), lv[:, 1].view(1, -1, 1, 1)
        x.sub_(lo).div_((hi - lo).clamp_min(_EPS))
    elif scaling == "image":
        flat = x.flatten(2)
        q = torch.tensor([percentiles[0] / 100.0, percentiles[1] / 100.0], dtype=x.dtype, device=x.device)
        qs = torch.quantile(flat, q, dim=2)  # (2, B, C)
        lo, hi = qs[0][..., None, None], qs[1][..., None, None]
        x.sub_(lo).div_((hi - lo).clamp_min(_EPS))
    else:
        raise ConfigError(f"segment.crops.scaling: choose one of {', '.join(SCALING_METHODS)}, not {scaling!r}")
    return x.clamp_(0.0, 1.0)


def _site_groups(index: pd.DataFrame) -> list[tuple[int, int]]:
    """(start, stop) crop rows of each site, in array order (crops are written site by site)."""
    keys = index[list(io.SITE_KEYS)].astype(str).agg("\x1f".join, axis=1).to_numpy()
    if len(keys) == 0:
        return []
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(keys)]])
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def crop_feature_names(channels: Sequence[str], spec) -> list[str]:
    """``<Channel>_<backbone>_<i:04d>``: the features stage's names, so tables line up column by column."""
    return [f"{ch}_{spec.token}_{i:04d}" for ch in channels for i in range(spec.embedding_dim)]


def iter_batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, max(batch_size, 1)):
        yield start, min(start + batch_size, n)


def embed_crops(
    array,
    index: pd.DataFrame,
    backbone,
    *,
    channels: Sequence[str],
    scaling: str = "negcon",
    levels: np.ndarray | None = None,
    percentiles: Sequence[float] = (0.1, 99.9),
    batch_size: int = 64,
    device=None,
    source: str = "crops",
) -> pd.DataFrame:
    """Embed every crop and reduce cells to sites by the median; one row per site with cells.

    Parameters
    ----------
    array
        The crop array ``(cells, C, S, S)`` (Zarr or NumPy), rows as in ``index``.
    index
        The crop index table (``Metadata_Crop`` in array order, sites contiguous).
    backbone
        A :class:`cytoscreen.backbones.Backbone` (``forward((N, 3, P, P)) -> (N, D)``).
    channels
        Channel names of the array's second axis (column names ``<Channel>_<backbone>_<i>``).
    levels
        ``(C, 2)`` lo/hi for ``negcon`` scaling (:func:`reference_levels`).

    Returns
    -------
    DataFrame
        The site ``Metadata_*`` columns of ``index`` (constant within a site), ``Metadata_n_cells``
        and float32 features, one row per site in index order.
    """
    import torch
    import torch.nn.functional as F

    if scaling not in SCALING_METHODS:
        raise ConfigError(f"segment.crops.scaling: choose one of {', '.join(SCALING_METHODS)}, not {scaling!r}")
    if len(index) == 0:
        raise InputDataError(f"{source}: no crops to embed (segmentation found no nuclei)")
    if scaling == "negcon" and levels is None:
        raise ValueError("negcon scaling needs levels; compute them with reference_levels")
    if len(channels) != array.shape[1]:
        raise InputDataError(f"{source}: {array.shape[1]} crop channels but {len(channels)} channel names")
    if not index[CROP].is_monotonic_increasing or index[CROP].duplicated().any():
        raise InputDataError(f"{source}: the crop index is not in array order")
    spec = backbone.spec
    names = crop_feature_names(channels, spec)
    device = device if device is not None else torch.device("cpu")
    backbone = backbone.to(device).eval()
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    full_scale = io.image_dtype_max(np.zeros(1, dtype=array.dtype))
    p = int(spec.input_px)
    n_ch = len(channels)
    width = len(names) // n_ch

    groups = _site_groups(index)
    site_meta = [c for c in io.metadata_columns(index) if c not in CELL_COLUMNS]
    rows_meta: list[dict[str, Any]] = []
    site_vectors: list[np.ndarray] = []
    pending: list[np.ndarray] = []  # embeddings of the current site's cells
    g = 0
    autocast = (torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda"
                else contextlib.nullcontext())
    crop_rows = index[CROP].to_numpy(np.int64)
    for start, stop in iter_batches(len(index), batch_size):
        rows = crop_rows[start:stop]
        if rows[-1] - rows[0] == len(rows) - 1:  # contiguous: one slice read
            data = array[int(rows[0]) : int(rows[-1]) + 1]
        else:
            data = array.oindex[rows] if hasattr(array, "oindex") else array[rows]
        x = torch.from_numpy(np.asarray(data).astype(np.float32)).to(device)
        b, c, s, _ = x.shape
        x = _scale(x, scaling=scaling, levels=levels, percentiles=percentiles, full_scale=full_scale)
        x = x.reshape(b * c, 1, s, s)
        if s != p:
            x = F.interpolate(x, size=(p, p), mode="bilinear", align_corners=False, antialias=s > p)
        x = (x.expand(-1, 3, -1, -1) - mean) / std
        with torch.inference_mode(), autocast:
            emb = backbone(x).float()
        emb = emb.reshape(b, c * emb.shape[1]).cpu().numpy()
        if emb.shape[1] != n_ch * width:
            raise InputDataError(f"{source}: backbone returned {emb.shape[1]} values per crop, expected {len(names)}")
        # hand the batch's rows to their sites
        offset = start
        while offset < stop:
            g_start, g_stop = groups[g]
            take = min(g_stop, stop) - offset
            pending.append(emb[offset - start : offset - start + take])
            offset += take
            if offset == g_stop:
                cells = np.concatenate(pending) if len(pending) > 1 else pending[0]
                site_vectors.append(np.median(cells, axis=0).astype(np.float32))
                rec = index.iloc[g_start][site_meta].to_dict()
                rec[N_CELLS] = int(g_stop - g_start)
                rows_meta.append(rec)
                pending = []
                g += 1
    meta = pd.DataFrame(rows_meta, columns=[*site_meta, N_CELLS])
    if N_CELLS in meta:
        meta[N_CELLS] = meta[N_CELLS].astype(np.int64)
    feats = (np.vstack(site_vectors) if site_vectors else np.zeros((0, len(names)), np.float32))
    out = pd.concat([meta, pd.DataFrame(feats, columns=names)], axis=1)
    logger.info("%s: embedded %d crops into %d site profiles (%d features, %s)", source, len(index),
                len(out), len(names), spec.name)
    return out


def join_site_qc(sites: pd.DataFrame, qc: pd.DataFrame | None) -> pd.DataFrame:
    """``sites`` with the ``QC_*`` flags of ``qc`` matched per site (missing flags: passed)."""
    if qc is None:
        return sites
    from cytoscreen.profiles.aggregate import join_qc

    out = join_qc(sites, qc, keys=io.SITE_KEYS, source="qc")
    for col in io.qc_columns(out):
        out[col] = out[col].astype("boolean").fillna(False).astype(bool)
    # keep the profile layout: metadata, QC flags, then features
    feats = io.feature_columns(out)
    return out[[*io.metadata_columns(out), *io.qc_columns(out), *feats]]


def sites_to_wells(sites: pd.DataFrame, *, method: str = "median") -> pd.DataFrame:
    """Well profiles from single-cell site profiles: the profiles stage's aggregation, plus cells.

    QC-failed sites are left out (as for ``wells.parquet``); ``Metadata_n_cells`` is the number
    of cells in the well's QC-passed sites.
    """
    from cytoscreen.profiles.aggregate import aggregate

    if sites.empty:
        raise InputDataError("crops: no site has cells; nothing to aggregate to wells")
    wells = aggregate(sites.drop(columns=[N_CELLS]), method=method, by=io.WELL_KEYS,
                      source="single-cell sites")
    kept = sites.loc[~plate.qc_failed(sites).to_numpy()]
    cells = kept.groupby(list(io.WELL_KEYS), sort=False)[N_CELLS].sum().rename(N_CELLS).reset_index()
    wells = wells.merge(cells, on=list(io.WELL_KEYS), how="left", sort=False)
    wells[N_CELLS] = wells[N_CELLS].fillna(0).astype(np.int64)
    return wells[[*io.metadata_columns(wells), *io.qc_columns(wells), *io.feature_columns(wells)]]
