"""Sites to embed: the site table from ``images.parquet`` + ``qc.parquet`` and the Dataset reading it.

:func:`build_site_table` turns one-row-per-image-file into one-row-per-site (every channel's path
and frame), checks completeness, joins the QC flags and drops ``QC_unreadable`` sites (returned
as ``skipped`` so the caller can log them).  Rows are sorted by plate, row, column and site, and
a site's position in that order is its dataset index, so the output order never depends on how
the work was split across devices.

:class:`SiteDataset` reads all channels of one site (TIFF page or Zarr plane through
``cytoscreen.io.read_image``) and preprocesses them in the DataLoader worker.
:func:`fit_reference` streams the reference sites once to fit the per-plate illumination
functions and the negcon intensity levels (:func:`start_reference`: its workers start at once, so
the caller's next step overlaps the reads).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cytoscreen import io, stats
from cytoscreen.errors import InputDataError
from cytoscreen.features import preprocess as pp
from cytoscreen.plate import (
    frame_column,
    negcon_rule,
    path_column,
    qc_failed,
    scale_column,
    site_sort_keys,
    sites_from_images,
)

logger = logging.getLogger(__name__)

UNREADABLE = io.QC_UNREADABLE


@dataclass(frozen=True, eq=False)
class SiteTable:
    """One row per site to embed.

    Attributes
    ----------
    sites
        ``Metadata_*`` columns that are constant within a site, then the ``QC_*`` flags; sorted
        by site keys with a 0..n-1 index (= dataset index).
    channels
        Channel names in embedding order.
    paths, frames
        ``(n_sites, n_channels)`` arrays: the image file and frame of every site and channel.
    skipped
        Site keys of the sites left out because they are flagged ``QC_unreadable``.
    scales
        ``(n_sites, n_channels)`` float ``intensity_scale`` of every image
        (``ingest.on_mixed_bit_depth: rescale``), or None when all are 1.
    dtype
        The one dtype of every image (``images.parquet``'s ``dtype`` column), or None when the
        table does not say or mixes dtypes.
    """

    sites: pd.DataFrame
    channels: tuple[str, ...]
    paths: np.ndarray
    frames: np.ndarray
    skipped: pd.DataFrame
    scales: np.ndarray | None = None
    dtype: str | None = None

    def __len__(self) -> int:
        return len(self.sites)

    def qc_passed(self) -> np.ndarray:
        """Boolean mask of sites with every ``QC_*`` flag False."""
        return ~qc_failed(self.sites).to_numpy()


def site_label(row: pd.Series | dict) -> str:
    """``P1 A01 s2`` for messages."""
    return f"{row.get(io.PLATE, '?')} {row.get(io.WELL, '?')} s{row.get(io.SITE, '?')}"


def build_site_table(
    images: pd.DataFrame,
    qc: pd.DataFrame | None = None,
    *,
    channels: Sequence[str] = (),
    source: str = "images.parquet",
    qc_source: str = "qc.parquet",
) -> SiteTable:
    """Pivot the image table to sites, join QC flags and drop ``QC_unreadable`` sites.

    Parameters
    ----------
    images
        ``images.parquet`` rows: site keys, ``Metadata_Channel``, ``path``, ``frame`` (optional,
        -1 = whole file) and platemap columns.
    qc
        ``qc.parquet`` rows (one per site) with bool ``QC_*`` flags, or None for no QC.
    channels
        Channels to embed, in this order; empty means every channel in order of first appearance
        (ingest writes images.parquet in the order of the config's ``channels`` mapping).

    Raises
    ------
    InputDataError
        Missing columns, a site without one of the channels (naming the site's files), a channel
        listed twice for a site, sites missing from the QC table, or nothing left to embed.
    """
    sites = sites_from_images(images, channels, source=source, key="features.channels")
    chans = tuple(channels) if channels else tuple(dict.fromkeys(images[io.CHANNEL].astype(str)))
    path_cols = [path_column(c) for c in chans]
    frame_cols = [frame_column(c) for c in chans]
    scale_cols = [scale_column(c) for c in chans if scale_column(c) in sites.columns]
    paths = sites[path_cols].to_numpy(object)
    frames = sites[frame_cols].to_numpy(np.int64)
    # intensity_scale per site and channel (ingest.on_mixed_bit_depth: rescale); None when all are 1
    scales = sites[[scale_column(c) for c in chans]].to_numpy(np.float64) if scale_cols else None
    sites = sites.drop(columns=[*path_cols, *frame_cols, *scale_cols])
    keys = list(io.SITE_KEYS)

    skipped = sites.iloc[0:0][keys]
    if qc is not None:
        sites, keep = _join_qc(sites, qc, keys, source=source, qc_source=qc_source)
        skipped = sites.loc[~keep, keys].reset_index(drop=True)
        sites, paths, frames = sites[keep], paths[keep], frames[keep]
        scales = None if scales is None else scales[keep]

    order = sites.sort_values(site_sort_keys(sites), kind="stable").index.to_numpy()
    pos = sites.index.get_indexer(order)
    sites = sites.loc[order].reset_index(drop=True)
    paths, frames = paths[pos], frames[pos]
    scales = None if scales is None else scales[pos]
    if sites.empty:
        raise InputDataError(
            f"{source}: no site left to embed ({len(skipped)} flagged {UNREADABLE}); check the "
            f"images and {qc_source}"
        )
    return SiteTable(sites=sites, channels=chans, paths=paths, frames=frames, skipped=skipped,
                     scales=scales, dtype=_one_dtype(images, chans))


def _one_dtype(images: pd.DataFrame, channels: Sequence[str]) -> str | None:
    if io.DTYPE not in images.columns:
        return None
    kinds = images.loc[images[io.CHANNEL].astype(str).isin(list(channels)), io.DTYPE].astype(str).unique()
    return str(kinds[0]) if len(kinds) == 1 else None


def _join_qc(sites: pd.DataFrame, qc: pd.DataFrame, keys: list[str], *, source: str,
             qc_source: str) -> tuple[pd.DataFrame, np.ndarray]:
    missing_cols = [k for k in keys if k not in qc.columns]
    if missing_cols:
        raise InputDataError(f"{qc_source}: missing column(s) {', '.join(missing_cols)}; rerun cytoscreen qc")
    flags = io.qc_columns(qc)
    q = qc[keys + flags].copy()
    for k in keys:
        if q[k].dtype != sites[k].dtype:
            try:
                q[k] = q[k].astype(sites[k].dtype)
            except (TypeError, ValueError) as err:
                raise InputDataError(f"{qc_source}: column {k} does not match {source} ({err})") from err
    if q.duplicated(keys).any():
        raise InputDataError(f"{qc_source}: some sites are listed twice; rerun cytoscreen qc")
    merged = sites.merge(q, on=keys, how="left", indicator=True)
    absent = merged["_merge"] == "left_only"
    if absent.any():
        ex = ", ".join(site_label(r) for _, r in merged[absent].head(3).iterrows())
        raise InputDataError(
            f"{qc_source}: {int(absent.sum())} site(s) of {source} have no QC row (e.g. {ex}); "
            f"rerun cytoscreen qc on the current images.parquet"
        )
    merged = merged.drop(columns="_merge")
    for f in flags:
        merged[f] = merged[f].fillna(False).astype(bool)
    merged.index = sites.index
    keep = ~merged[UNREADABLE].to_numpy() if UNREADABLE in flags else np.ones(len(merged), bool)
    return merged, keep


# --- reading ---------------------------------------------------------------------------------------
class SiteDataset(Dataset):
    """Reads and preprocesses all channels of a site.

    Items are ``{"index": int, "image": float32 tensor (C, T, P, P)}`` with T tiles (1 when
    resizing).  ``mode="levels"`` yields ``(C, 2)`` intensity levels of the fitted, unscaled site
    instead and ``mode="raw"`` the float images at native size (both for :func:`fit_reference`);
    ``mode="fitted"`` yields ``{"index", "fitted"}``: the site before intensity scaling (step 4
    is then :func:`cytoscreen.features.preprocess.scale_site` where the batch is consumed).

    ``mode="planes"`` leaves steps 2-4 of the preprocessing to the device (``spatial: resize``
    only): items are ``{"index", "planes": (C, H, W) tensor of the images as read (uint8/uint16
    when every channel has that dtype, or ``transfer_dtype`` when given; else float32),
    "dtype_max": (C,), "scale": (C,)}``, batched by :class:`PlaneCollate` and finished by
    :func:`cytoscreen.features.preprocess.fit_batch` (2-8x less data than float32 planes).
    """

    def __init__(self, paths: np.ndarray, frames: np.ndarray, prep: pp.Preprocessing, *,
                 channels: Sequence[str] = (), indices: Sequence[int] | None = None,
                 mode: str = "embed", scales: np.ndarray | None = None,
                 transfer_dtype: str | None = None) -> None:
        self.paths = [[str(p) for p in row] for row in paths]
        self.frames = [[int(f) for f in row] for row in frames]
        self.scales = None if scales is None else [[float(v) for v in row] for row in scales]
        self.transfer_dtype = transfer_dtype if transfer_dtype in ("uint8", "uint16", "float32") else None
        self.prep = prep
        self.channels = tuple(channels) or tuple(f"channel{c}" for c in range(len(self.paths[0]) if self.paths else 0))
        self.indices = list(range(len(self.paths))) if indices is None else [int(i) for i in indices]
        if mode not in ("embed", "levels", "raw", "planes", "fitted"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode

    def __len__(self) -> int:
        return len(self.indices)

    def read_raw(self, site: int) -> list[np.ndarray]:
        """The channel images of site ``site`` (table position) as read from disk."""
        return [io.read_image(p, f) for p, f in zip(self.paths[site], self.frames[site], strict=True)]

    def site_scales(self, site: int) -> list[float]:
        """``intensity_scale`` of each channel image of site ``site`` (1.0 when not rescaled)."""
        return self.scales[site] if self.scales is not None else [1.0] * len(self.paths[site])

    def _fit(self, site: int, raw: list[np.ndarray]) -> torch.Tensor:
        prep = self.prep
        planes = []
        scales = self.site_scales(site)
        for c, img in enumerate(raw):
            illum = prep.illum[c] if prep.illum is not None else None
            if illum is not None and illum.shape != img.shape:
                raise InputDataError(
                    f"{self.paths[site][c]}: image shape {img.shape} differs from the plate's "
                    f"{self.channels[c]} illumination function {illum.shape}; all images of a "
                    f"channel must have one size"
                )
            planes.append(pp.prepare_channel(img, prep, illum=illum, scale=scales[c]))
        shapes = {tuple(p.shape) for p in planes}
        if len(shapes) > 1:
            sizes = ", ".join(f"{self.channels[c]} {raw[c].shape}" for c in range(len(raw)))
            raise InputDataError(
                f"{self.paths[site][0]}: the channels of site {site} differ in size ({sizes}); "
                f"tiling needs equal sizes, use features.spatial: resize"
            )
        return torch.stack(planes)

    def __getitem__(self, i: int):
        site = self.indices[i]
        raw = self.read_raw(site)
        if self.mode == "raw":
            scales = self.site_scales(site)
            return {"index": site, "image": [torch.from_numpy(pp.as_float(r) * np.float32(sc) if sc != 1.0
                                                              else pp.as_float(r))
                                             for r, sc in zip(raw, scales, strict=True)]}
        if self.mode == "planes":
            return self._planes(site, raw)
        fitted = self._fit(site, raw)
        if self.mode == "levels":
            levels = [pp.channel_levels(fitted[c], self.prep.percentiles) for c in range(fitted.shape[0])]
            return {"index": site, "levels": torch.tensor(levels, dtype=torch.float64)}
        if self.mode == "fitted":  # intensity scaling left to the consumer (levels fitted meanwhile)
            return {"index": site, "fitted": fitted}
        return {"index": site, "image": pp.scale_site(fitted, self.prep)}


    def _planes(self, site: int, raw: list[np.ndarray]) -> dict:
        if self.transfer_dtype is not None:
            want = np.dtype(self.transfer_dtype)
        else:  # as read when every channel is uint8 or every one uint16
            kinds = {r.dtype for r in raw}
            want = kinds.pop() if len(kinds) == 1 and raw[0].dtype in (np.uint8, np.uint16) else np.dtype(np.float32)
        dtype_max = [io.image_dtype_max(r) for r in raw]
        same = len({r.shape for r in raw}) == 1
        planes = [r if r.dtype == want else pp.as_float(r) for r in raw]
        if want != np.float32 and any(p.dtype != want for p in planes):
            planes = [pp.as_float(r) for r in raw]  # a site that breaks the table's dtype
        item = {"index": site, "dtype_max": torch.tensor(dtype_max, dtype=torch.float32),
                "scale": torch.tensor(self.site_scales(site), dtype=torch.float32)}
        if not same or (self.prep.illum is not None and any(
                i.shape != r.shape for i, r in zip(self.prep.illum, raw, strict=True))):
            item["image"] = pp.scale_site(self._fit(site, raw), self.prep)[None]  # sizes differ: finish here
            return item
        item["planes"] = torch.from_numpy(np.ascontiguousarray(np.stack(planes)))
        return item


class PlaneCollate:
    """Batches ``mode="planes"`` items: ``planes`` stacked when every site has the same shape and
    dtype, else each site finished here (:func:`cytoscreen.features.preprocess.fit_batch`, the
    same operations) and the batch carries ``image`` ``(B, C, 1, P, P)`` instead."""

    def __init__(self, prep: pp.Preprocessing) -> None:
        self.prep = prep

    def __call__(self, items: list[dict]) -> dict:
        out = {"index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
               "dtype_max": torch.stack([it["dtype_max"] for it in items]),
               "scale": torch.stack([it["scale"] for it in items])}
        kinds = {(tuple(it["planes"].shape), it["planes"].dtype) if "planes" in it else None for it in items}
        if len(kinds) == 1 and None not in kinds:
            out["planes"] = torch.stack([it["planes"] for it in items])
            return out
        out["image"] = torch.cat([it["image"] if "image" in it else self.finish(it) for it in items])
        return out

    def finish(self, item: dict) -> torch.Tensor:
        """One site's planes -> ``(1, C, 1, P, P)``, as the device would."""
        illum = None if self.prep.illum is None else torch.from_numpy(np.stack(self.prep.illum))
        return pp.fit_batch(item["planes"][None], self.prep, dtype_max=item["dtype_max"][None],
                            scale=item["scale"][None], illum=illum)


def _spread(candidates: np.ndarray, max_sites: int) -> np.ndarray:
    """At most ``max_sites`` (0 = all) of ``candidates``, evenly spread (:func:`cytoscreen.stats.spread`)."""
    return candidates[stats.spread(len(candidates), max_sites)]


def _loader(dataset: SiteDataset, num_workers: int, *, prefetch_all: bool = False) -> DataLoader:
    """Items one by one; ``prefetch_all``: each worker is handed all its items at once (small items)."""
    extra = {}
    if prefetch_all and num_workers > 0:
        extra["prefetch_factor"] = max(2, -(-len(dataset) // num_workers))
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers, **extra)


class ReferenceFit:
    """:func:`fit_reference` under way: :func:`start_reference` starts the DataLoader workers of
    the first pass, which read and fit the reference sites while the caller does other work (the
    backbone set-up); :meth:`result` collects them and returns the completed settings.

    The passes, their sites and their arithmetic are those of :func:`fit_reference`; only the
    start of the first pass moves earlier.  :meth:`close` stops workers that are still running.
    """

    def __init__(self, table: SiteTable, prep: pp.Preprocessing, *, illum_correction: bool,
                 illum_sigma_px: float, max_sites: int, num_workers: int, plate: str) -> None:
        self.table, self.prep = table, prep
        self.illum_sigma_px, self.max_sites, self.num_workers = illum_sigma_px, max_sites, num_workers
        self.where = f"plate {plate}" if plate else "plate"
        self._illum_ds: SiteDataset | None = None
        self._negcon: np.ndarray | None = None
        self._iter = None
        passed = np.flatnonzero(table.qc_passed())
        if illum_correction:
            chosen = _spread(passed if len(passed) else np.arange(len(table)), max_sites)
            self._illum_ds = SiteDataset(table.paths, table.frames, prep, channels=table.channels,
                                         indices=chosen, mode="raw", scales=table.scales)
        if prep.scaling == "negcon":
            is_neg, rule = negcon_rule(table.sites)
            candidates = np.flatnonzero(is_neg & table.qc_passed())
            if len(candidates) == 0:
                raise InputDataError(
                    f"{self.where}: no QC-passed negcon site ({int(is_neg.sum())} negcon sites in "
                    f"all; {rule}) to fix the intensity scale; mark negcon wells in the platemap or "
                    f"set features.scaling: image"
                )
            self._negcon = _spread(candidates, max_sites)
        if num_workers > 0:  # workers start now and read ahead
            if self._illum_ds is not None:
                self._iter = iter(_loader(self._illum_ds, num_workers))
            elif self._negcon is not None:
                self._iter = iter(_loader(self._levels_ds(prep), num_workers, prefetch_all=True))

    def _levels_ds(self, prep: pp.Preprocessing) -> SiteDataset:
        t = self.table
        return SiteDataset(t.paths, t.frames, prep, channels=t.channels, indices=self._negcon,
                           mode="levels", scales=t.scales)

    def _items(self, dataset: SiteDataset, *, prefetch_all: bool = False):
        it, self._iter = self._iter, None
        return it if it is not None else iter(_loader(dataset, self.num_workers, prefetch_all=prefetch_all))

    def result(self) -> pp.Preprocessing:
        """Finish the passes; the settings with ``illum`` and/or ``levels`` filled in."""
        table, prep = self.table, self.prep
        if self._illum_ds is not None:
            acc = pp.IlluminationAccumulator(len(table.channels))
            for item in self._items(self._illum_ds):
                try:
                    acc.add([t.numpy() for t in item["image"]])
                except ValueError as err:
                    raise InputDataError(
                        f"{table.paths[item['index']][0]}: {err}; illumination correction needs "
                        f"one image size per channel"
                    ) from err
            prep = replace(prep, illum=acc.functions(self.illum_sigma_px))
            logger.info("%s: illumination functions from %d sites (sigma %.1f px)", self.where,
                        acc.count, self.illum_sigma_px)
        if self._negcon is not None:
            items = self._items(self._levels_ds(prep), prefetch_all=True)
            per_site = np.stack([item["levels"].numpy() for item in items])
            levels = pp.reference_levels(per_site)
            prep = replace(prep, levels=levels)
            shown = ", ".join(f"{c} {lo:.4g}-{hi:.4g}"
                              for c, (lo, hi) in zip(table.channels, levels, strict=True))
            logger.info("%s: negcon intensity levels from %d sites: %s", self.where,
                        len(self._negcon), shown)
        return prep

    def close(self) -> None:
        """Stop the workers of a pass that was started but not collected."""
        it, self._iter = self._iter, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def start_reference(
    table: SiteTable,
    prep: pp.Preprocessing,
    *,
    illum_correction: bool = False,
    illum_sigma_px: float = 50.0,
    max_sites: int = 128,
    num_workers: int = 0,
    plate: str = "",
) -> ReferenceFit:
    """Start :func:`fit_reference` (same arguments); finish it with ``.result()``, then ``.close()``.

    With ``num_workers > 0`` the first pass's workers start reading at once, so the caller's
    next step (building the backbone) overlaps the reads; a plate without QC-passed negcon sites
    raises here already.
    """
    return ReferenceFit(table, prep, illum_correction=illum_correction, illum_sigma_px=illum_sigma_px,
                        max_sites=max_sites, num_workers=num_workers, plate=plate)


def fit_reference(
    table: SiteTable,
    prep: pp.Preprocessing,
    *,
    illum_correction: bool = False,
    illum_sigma_px: float = 50.0,
    max_sites: int = 128,
    num_workers: int = 0,
    plate: str = "",
) -> pp.Preprocessing:
    """Fit the plate's illumination functions and negcon levels; return the completed settings.

    Illumination functions come from up to ``max_sites`` QC-passed sites spread over the plate;
    negcon levels (``scaling="negcon"``) from up to ``max_sites`` QC-passed negcon sites, after
    illumination correction.  Each pass streams the sites once through a DataLoader.

    Raises
    ------
    InputDataError
        ``scaling="negcon"`` on a plate without QC-passed negcon sites (or without
        ``Metadata_pert_type``).
    """
    fit = start_reference(table, prep, illum_correction=illum_correction, illum_sigma_px=illum_sigma_px,
                          max_sites=max_sites, num_workers=num_workers, plate=plate)
    try:
        return fit.result()
    finally:
        fit.close()
