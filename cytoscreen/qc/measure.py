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
from cytoscreen.qc.metrics import image_metrics, metric_column, nan_metrics, warm_up

logger = logging.getLogger(__name__)

#: Per-image bookkeeping columns of images.parquet that are not site metadata.
_IMAGE_ONLY = (io.CHANNEL, io.PATH, io.FRAME, io.DTYPE, io.BIT_DEPTH, io.INTENSITY_SCALE)


def _site_groups(images: pd.DataFrame) -> list[pd.DataFrame]:
    return [g for _, g in images.groupby([io.WELL, io.SITE], sort=False)]


def _records(site: pd.DataFrame) -> list[tuple[str, str, int, float | None, float]]:
    n = len(site)
    bits = site[io.BIT_DEPTH].to_numpy() if io.BIT_DEPTH in site.columns else [None] * n
    scale = site[io.INTENSITY_SCALE].to_numpy(float) if io.INTENSITY_SCALE in site.columns else np.ones(n)
    return [(str(c), str(p), int(f), None if b is None or pd.isna(b) else int(b), float(s))
            for c, p, f, b, s in zip(site[io.CHANNEL], site[io.PATH], site[io.FRAME], bits, scale, strict=True)]


def _measure_site(records: list[tuple[str, str, int, float | None, float]]) -> dict[str, float | bool]:
    out: dict[str, float | bool] = {}
    unreadable = False
    for channel, path, frame, bits, scale in records:
        try:
            img = io.read_image(path, frame)
            metrics = image_metrics(img, io.image_full_scale(img, bits), scale=scale)
        except InputDataError as err:
            logger.warning("QC_unreadable: %s", err)
            unreadable = True
            metrics = nan_metrics()
        for m, v in metrics.items():
            out[metric_column(channel, m)] = v
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
    sites = _site_groups(images)
    meta_cols = [c for c in images.columns if c.startswith(io.METADATA_PREFIX) and c not in _IMAGE_ONLY]
    rows = []
    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(total=len(sites), desc="QC", unit="site", file=sys.stderr)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        done = 0
        for batch in _batches(sites, batch_size * threads):
            results = pool.map(_measure_site, [_records(s) for s in batch])
            for site, result in zip(batch, results, strict=True):
                rows.append({**site.iloc[0][meta_cols].to_dict(), **result})
            done += len(batch)
            if progress is not None:
                progress.update(len(batch))
            elif done % max(batch_size * threads * 16, 1) < batch_size * threads or done == len(sites):
                logger.info("QC: measured %d/%d sites", done, len(sites))
    if progress is not None:
        progress.close()
    return pd.DataFrame(rows)
