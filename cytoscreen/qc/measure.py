"""Read a plate's images site by site and measure :mod:`cytoscreen.qc.metrics` per channel.

Images are read in batches of sites by a thread pool (decoding releases the GIL), so memory is
bounded by a batch, never a plate.  An image that cannot be decoded is recorded
(``QC_unreadable``, NaN metrics), not raised.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError
from cytoscreen.qc.metrics import METRICS, image_metrics, metric_column, nan_metrics, warm_up

logger = logging.getLogger(__name__)

#: Per-image bookkeeping columns of images.parquet that are not site metadata.
_IMAGE_ONLY = (io.CHANNEL, io.PATH, io.FRAME, io.DTYPE, io.BIT_DEPTH, io.INTENSITY_SCALE)


Record = tuple[tuple[str, ...], str, int, int | None, float]


def _site_records(images: pd.DataFrame) -> tuple[pd.DataFrame, list[list[Record]]]:
    """The first row of each site (its metadata) and, per site, one record per channel image:
    (metric column names, path, frame, bit depth, intensity scale).  Built from whole columns,
    so the per-site cost is a few list appends, not a DataFrame."""
    codes = images.groupby([io.WELL, io.SITE], sort=False).ngroup().to_numpy()
    n = len(images)
    bits = images[io.BIT_DEPTH].to_numpy() if io.BIT_DEPTH in images.columns else np.full(n, None)
    scale = images[io.INTENSITY_SCALE].to_numpy(float) if io.INTENSITY_SCALE in images.columns else np.ones(n)
    columns: dict[str, tuple[str, ...]] = {}
    sites: list[list[Record]] = [[] for _ in range(int(codes.max()) + 1)]
    for code, ch, path, frame, b, sc in zip(codes, images[io.CHANNEL].astype(str), images[io.PATH].astype(str),
                                            images[io.FRAME].to_numpy(np.int64), bits, scale, strict=True):
        cols = columns.get(ch)
        if cols is None:
            cols = columns[ch] = tuple(metric_column(ch, m) for m in METRICS)
        sites[code].append((cols, path, int(frame), None if b is None or pd.isna(b) else int(b), float(sc)))
    first = images.loc[~pd.Series(codes).duplicated().to_numpy()]
    return first, sites


def _measure_site(records: list[Record]) -> dict[str, float | bool]:
    out: dict[str, float | bool] = {}
    unreadable = False
    for cols, path, frame, bits, scale in records:
        try:
            img = io.read_image(path, frame)
            metrics = image_metrics(img, io.image_full_scale(img, bits), scale=scale)
        except InputDataError as err:
            logger.warning("QC_unreadable: %s", err)
            unreadable = True
            metrics = nan_metrics()
        for col, m in zip(cols, METRICS, strict=True):
            out[col] = metrics[m]
    out[io.QC_UNREADABLE] = unreadable
    return out


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def worker_count(threads: int | None) -> int:
    """``threads``, or every core this process may use when it is 0 or None."""
    if threads:
        return int(threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def measure(images: pd.DataFrame, *, batch_size: int = 16, threads: int = 0) -> pd.DataFrame:
    """Per-site metrics of an ``images.parquet`` table; one row per site with its metadata.

    ``threads`` reader threads (0: every core); ``batch_size`` sites are in flight per thread.
    """
    if images.empty:
        raise InputDataError("QC: the image table is empty")
    warm_up()
    threads = worker_count(threads)
    first, sites = _site_records(images)
    meta_cols = [c for c in images.columns if c.startswith(io.METADATA_PREFIX) and c not in _IMAGE_ONLY]
    rows: list[dict[str, float | bool]] = []
    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=len(sites), desc="QC", unit="site", file=sys.stderr)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        done = 0
        for batch in _batches(sites, batch_size * threads):
            rows.extend(pool.map(_measure_site, batch))
            done += len(batch)
            if progress is not None:
                progress.update(len(batch))
            elif done % max(batch_size * threads * 16, 1) < batch_size * threads or done == len(sites):
                logger.info("QC: measured %d/%d sites", done, len(sites))
    if progress is not None:
        progress.close()
    meta = first[meta_cols].reset_index(drop=True)
    return pd.concat([meta, pd.DataFrame(rows)], axis=1)
