"""Rows of the features stage on disk: per-rank Parquet shards merged into ``sites.parquet``.

:class:`ShardWriter` (a Lightning ``BasePredictionWriter``) streams every rank's rows into its own
shard and, once all ranks are done, global rank 0 places them by dataset index and writes the
output with :func:`write_sites` (atomically, with provenance).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from cytoscreen import io
from cytoscreen.errors import ComputeError
from cytoscreen.features.dataset import site_label

logger = logging.getLogger(__name__)


class ShardWriter(BasePredictionWriter):
    """Writes each rank's rows to ``<shard_dir>/rank<k>.parquet``; rank 0 merges them into ``out``.

    The merged table is ``sites`` (metadata + QC flags, in dataset order) plus one float32 column
    per name in ``names``, written with :func:`cytoscreen.io.write_parquet` (atomic, provenance).
    """

    def __init__(self, *, out: str | Path, sites: pd.DataFrame, names: Sequence[str],
                 provenance: Mapping[str, Any], label: str = "", log_every_s: float = 30.0) -> None:
        super().__init__(write_interval="batch")
        self.out = Path(out)
        self.shard_dir = self.out.parent / f".{self.out.name}.shards"
        self.sites = sites
        self.names = list(names)
        self.provenance = dict(provenance)
        self.label = label
        self.log_every_s = log_every_s
        self._writer: Any = None
        self._done = 0
        self._t0 = 0.0
        self._last_log = 0.0
        self._expected = 0

    # -- per rank -----------------------------------------------------------------------------
    def _shard(self, rank: int) -> Path:
        return self.shard_dir / f"rank{rank:05d}.parquet"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            shutil.rmtree(self.shard_dir, ignore_errors=True)
            self.shard_dir.mkdir(parents=True, exist_ok=True)
        trainer.strategy.barrier("cytoscreen_features_shards")
        self._writer = None
        self._done = 0
        self._t0 = self._last_log = time.monotonic()
        self._expected = math.ceil(len(self.sites) / max(trainer.world_size, 1))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        index = prediction["index"].detach().cpu().numpy().astype(np.int64)
        emb = prediction["embedding"].detach().float().cpu().numpy()
        width = emb.shape[1]
        table = pa.table({
            "index": pa.array(index),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), width),
        })
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._shard(trainer.global_rank), table.schema)
        self._writer.write_table(table)
        self._done += len(index)
        now = time.monotonic()
        if trainer.is_global_zero and not trainer.progress_bar_callback and (
            now - self._last_log >= self.log_every_s or self._done >= self._expected
        ):
            self._last_log = now
            rate = self._done / max(now - self._t0, 1e-9)
            logger.info("%sembedded %d/%d sites on rank 0 (%.1f sites/s, %d rank(s))",
                        self.label, self._done, self._expected, rate, trainer.world_size)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        trainer.strategy.barrier("cytoscreen_features_merge")
        if trainer.is_global_zero:
            self.merge(world_size=trainer.world_size)

    # -- rank 0 ---------------------------------------------------------------------------------
    def merge(self, *, world_size: int = 1) -> Path:
        """Read every shard, place rows by dataset index, write ``out``; remove the shards."""
        import pyarrow.parquet as pq

        n, width = len(self.sites), len(self.names)
        matrix = np.zeros((n, width), np.float32)
        seen = np.zeros(n, bool)
        shards = sorted(self.shard_dir.glob("rank*.parquet"))
        for shard in shards:
            table = pq.read_table(shard)
            index = table.column("index").to_numpy()
            emb = table.column("embedding").combine_chunks()
            values = emb.values.to_numpy(zero_copy_only=False).reshape(len(index), -1)
            if values.shape[1] != width:
                raise ComputeError(f"{shard}: {values.shape[1]} features per site, expected {width}")
            matrix[index] = values
            seen[index] = True
        if not seen.all():
            missing = np.flatnonzero(~seen)
            ex = ", ".join(site_label(self.sites.iloc[i]) for i in missing[:3])
            raise ComputeError(
                f"{self.shard_dir}: the {len(shards)} shard(s) of {world_size} rank(s) cover "
                f"{int(seen.sum())} of {n} sites (missing e.g. {ex}); rerun the stage"
            )
        if not np.isfinite(matrix).all():
            bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
            ex = ", ".join(site_label(self.sites.iloc[i]) for i in bad[:3])
            raise ComputeError(
                f"non-finite features for {len(bad)} site(s) (e.g. {ex}); try features.precision: "
                f"32-true"
            )
        write_sites(self.sites, matrix, self.names, self.out, provenance=self.provenance)
        shutil.rmtree(self.shard_dir, ignore_errors=True)
        return self.out


def write_sites(sites: pd.DataFrame, matrix: np.ndarray, names: Sequence[str], out: str | Path, *,
                provenance: Mapping[str, Any]) -> Path:
    """Write ``sites`` + float32 ``matrix`` (one column per name) to Parquet, atomically.

    The table is built from the array, each column a slice of one transposed float32 buffer (not
    a thousands-of-columns DataFrame), then written by :func:`cytoscreen.io.write_parquet`.
    """
    import pyarrow as pa

    meta = pa.Table.from_pandas(sites.reset_index(drop=True), preserve_index=False)
    n = matrix.shape[0]
    flat = pa.array(np.ascontiguousarray(matrix.T, dtype=np.float32).reshape(-1))
    arrays = list(meta.columns) + [flat.slice(i * n, n) for i in range(matrix.shape[1])]
    table = pa.table(arrays, names=[*meta.column_names, *names])
    return io.write_parquet(table, out, provenance=provenance)
