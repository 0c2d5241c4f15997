"""The features stage: sites -> backbone embeddings -> ``sites.parquet``, on CPU, 1 GPU or N GPUs.

Execution is Lightning's ``Trainer.predict``: :class:`SiteEmbedder` (a LightningModule) turns a
batch of preprocessed sites ``(B, C, T, P, P)`` into site vectors ``(B, C * width)`` (each channel
replicated to RGB, ImageNet-normalised, channels-last, pooled, tiles averaged, channels
concatenated); :class:`ShardWriter` (a ``BasePredictionWriter``) streams every rank's rows into its
own Parquet shard and, once all ranks are done, global rank 0 merges the shards in dataset order
(= sorted site keys) into the output, written atomically with provenance.  Because rows are placed
by dataset index, 1 and N devices give the same table.  Under DDP every rank runs the same code
(the reference pass included, which is deterministic); only rank 0 writes the output.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from cytoscreen import compute, io
from cytoscreen.backbones import DEFAULT_BACKBONE, Backbone, BackboneSpec, create_backbone
from cytoscreen.errors import ComputeError, ConfigError, CytoscreenError
from cytoscreen.features import preprocess as pp
from cytoscreen.features.dataset import (
    PlaneCollate,
    SiteDataset,
    SiteTable,
    build_site_table,
    fit_reference,
    site_label,
)

logger = logging.getLogger(__name__)

ACCELERATORS = compute.ACCELERATORS
PRECISIONS: tuple[str, ...] = ("auto", "32-true", "16-mixed", "bf16-mixed")
STAGE = "features"


@dataclass(frozen=True)
class FeatureSettings:
    """The ``features:`` config section (defaults equal the schema's; a test checks it)."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    channels: tuple[str, ...] = ()
    scaling: str = "negcon"
    scaling_percentiles: tuple[float, float] = pp.DEFAULT_PERCENTILES
    illum_correction: bool = False
    illum_sigma_px: float = 50.0
    reference_max_sites: int = 128
    spatial: str = "resize"
    tile_px: int | None = None
    intermediate: bool = False
    batch_size: int = 16
    num_workers: int = 2
    threads: int = 4
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    gpus: int = 0

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> FeatureSettings:
        """Settings from a (validated) ``features`` config mapping; unknown keys are ignored."""
        section = dict(section or {})
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in section:
                continue
            value = section[f.name]
            if f.name in ("channels", "scaling_percentiles") and value is not None:
                value = tuple(value)
            kwargs[f.name] = value
        settings = cls(**kwargs)
        if len(settings.scaling_percentiles) != 2:
            raise ConfigError("features.scaling_percentiles: give two numbers, low and high")
        if settings.accelerator not in ACCELERATORS:
            raise ConfigError(f"features.accelerator: choose one of {', '.join(ACCELERATORS)}")
        if settings.precision not in PRECISIONS:
            raise ConfigError(f"features.precision: choose one of {', '.join(PRECISIONS)}")
        return settings


def feature_names(channels: Sequence[str], spec: BackboneSpec, *, intermediate: bool = False) -> list[str]:
    """``<Channel>_<backbone>_<i:04d>`` per channel, then ``<Channel>_<backbone>_mid_<i:04d>``."""
    names = []
    for ch in channels:
        names += [f"{ch}_{spec.token}_{i:04d}" for i in range(spec.embedding_dim)]
        if intermediate:
            names += [f"{ch}_{spec.token}_mid_{i:04d}" for i in range(spec.intermediate_dim)]
    return names


class SiteEmbedder(pl.LightningModule):
    """Batch of sites ``(B, C, T, P, P)`` in [0, 1] -> site vectors ``(B, C * width)`` float32.

    With ``prep`` (``spatial: resize``), batches may instead carry the sites' raw ``planes``
    (:class:`~cytoscreen.features.dataset.PlaneCollate`); they are converted, rescaled,
    illumination-corrected, resized and intensity-scaled here, on the module's device and in
    float32 (outside autocast), by :func:`~cytoscreen.features.preprocess.fit_batch`.
    """

    def __init__(self, backbone: Backbone, *, channels_last: bool = True,
                 prep: pp.Preprocessing | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels_last = channels_last
        self.prep = prep
        spec = backbone.spec
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))
        illum = None if prep is None or prep.illum is None else torch.from_numpy(np.stack(prep.illum))
        self.register_buffer("illum", illum, persistent=False)
        levels = None if prep is None or prep.levels is None else torch.as_tensor(
            np.asarray(prep.levels, dtype=np.float64))
        self.register_buffer("levels", levels, persistent=False)
        self._buffer: torch.Tensor | None = None  # full-size float32 planes, reused per batch
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    def preprocess(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The batch's ``(B, C, T, P, P)`` images: ``image`` as given, or ``planes`` finished here."""
        if "planes" not in batch:
            return batch["image"]
        if self.prep is None:
            raise ValueError("a batch of raw planes needs SiteEmbedder(prep=...)")
        planes = batch["planes"]
        buf = self._buffer
        if buf is None or buf.shape != planes.shape or buf.device != planes.device:
            buf = self._buffer = torch.empty(planes.shape, dtype=torch.float32, device=planes.device)
        with torch.autocast(planes.device.type, enabled=False):
            return pp.fit_batch(planes, self.prep, dtype_max=batch["dtype_max"], scale=batch["scale"],
                                illum=self.illum, levels=self.levels, out=buf)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = images.shape
        x = images.reshape(b * c * t, 1, h, w).expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        emb = self.backbone(x).float()
        return emb.view(b, c, t, -1).mean(dim=2).reshape(b, -1)

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"index": batch["index"], "embedding": self(self.preprocess(batch))}


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

    The table is built column by column from the array instead of through a thousands-of-columns
    DataFrame, then written by :func:`cytoscreen.io.write_parquet`.
    """
    import pyarrow as pa

    meta = pa.Table.from_pandas(sites.reset_index(drop=True), preserve_index=False)
    arrays = list(meta.columns) + [pa.array(np.ascontiguousarray(matrix[:, i], dtype=np.float32))
                                   for i in range(matrix.shape[1])]
    table = pa.table(arrays, names=[*meta.column_names, *names])
    return io.write_parquet(table, out, provenance=provenance)


@dataclass(frozen=True)
class FeatureResult:
    """What :func:`extract_features` did (``out`` is None on ranks other than global rank 0).

    ``predict_s`` is the wall time of ``Trainer.predict`` (reading, preprocessing, embedding and
    merging), without the backbone set-up and the reference pass.
    """

    out: Path | None
    n_sites: int
    n_skipped: int
    n_features: int
    spec: BackboneSpec
    predict_s: float = 0.0


def _resolve_accelerator(accelerator: str) -> str:
    return compute.resolve_accelerator(accelerator, key="features.accelerator")


def _cluster_plugins(settings: FeatureSettings) -> list[Any]:
    """Lightning's cluster environment for this job (see :mod:`cytoscreen.compute`)."""
    return compute.lightning_cluster_plugins(settings.devices, settings.num_nodes)


def make_trainer(settings: FeatureSettings, *, callbacks: Sequence[pl.Callback] = (),
                 progress: bool | None = None) -> pl.Trainer:
    """A predict-only Trainer for ``settings`` (no logger, checkpoints or model summary)."""
    accelerator = _resolve_accelerator(settings.accelerator)
    precision = settings.precision
    if precision == "auto":
        precision = "16-mixed" if accelerator == "gpu" else "32-true"
    if progress is None:
        progress = sys.stderr.isatty()
    if accelerator == "gpu" and settings.devices > torch.cuda.device_count():
        raise ComputeError(
            f"features.devices is {settings.devices} but only {torch.cuda.device_count()} GPU(s) "
            f"are visible; lower features.devices or request more GPUs"
        )
    try:
        return pl.Trainer(
            accelerator=accelerator,
            devices=settings.devices,
            num_nodes=settings.num_nodes,
            strategy=settings.strategy,
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=bool(progress),
            callbacks=list(callbacks),
            inference_mode=True,
            plugins=_cluster_plugins(settings),
        )
    except Exception as err:  # Lightning's MisconfigurationException and ValueError
        raise ComputeError(
            f"features: cannot set up accelerator={settings.accelerator} devices={settings.devices} "
            f"num_nodes={settings.num_nodes} strategy={settings.strategy} precision={precision} "
            f"({err})"
        ) from err


def extract_features(
    images: pd.DataFrame,
    qc: pd.DataFrame | None,
    *,
    out: str | Path,
    settings: FeatureSettings = FeatureSettings(),
    plate: str = "",
    provenance: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    source: str = "images.parquet",
    qc_source: str = "qc.parquet",
    device_preprocess: bool | None = None,
) -> FeatureResult:
    """Embed every site of ``images`` (minus ``QC_unreadable`` ones) and write ``out``.

    Parameters
    ----------
    images, qc
        The plate's ``images.parquet`` and ``qc.parquet`` tables (``qc`` may be None).
    out
        The ``sites.parquet`` to write (atomically, by global rank 0 only).
    settings
        The ``features`` config section.
    provenance
        Extra provenance entries (e.g. ``config_hash``).
    progress
        Show a tqdm progress bar; default: only when stderr is a terminal (else log lines).
    device_preprocess
        True: the preprocessing after the read (float, rescale, illumination, resize, intensity
        scaling) runs once per batch where the backbone runs
        (:func:`~cytoscreen.features.preprocess.fit_batch`); the workers only read and stack the
        raw planes (``spatial: resize`` only).  False: per site in the DataLoader workers, where
        it overlaps the forward.  Default: True on a GPU with ``spatial: resize``, else False
        (on CPU with free cores the workers' overlap measured faster: 3.4 vs 4.0 s for 32 sites).
        Both give the same features (to float32 rounding; tests check 1e-4).
    """
    label = f"plate {plate}: " if plate else ""
    table = build_site_table(images, qc, channels=settings.channels, source=source, qc_source=qc_source)
    _log_skipped(table, label, qc_source)
    backbone = create_backbone(settings.backbone, settings.weights, intermediate=settings.intermediate)
    spec = backbone.spec
    prep = pp.Preprocessing(
        input_px=spec.input_px,
        spatial=settings.spatial,
        tile_px=settings.tile_px,
        scaling=settings.scaling,
        percentiles=tuple(settings.scaling_percentiles),
    )
    prep = fit_reference(
        table, prep, illum_correction=settings.illum_correction,
        illum_sigma_px=settings.illum_sigma_px, max_sites=settings.reference_max_sites,
        num_workers=settings.num_workers, plate=plate,
    )
    names = feature_names(table.channels, spec, intermediate=settings.intermediate)
    record = io.provenance(
        STAGE,
        plate=plate or None,
        **spec.provenance(),
        channels=list(table.channels),
        scaling=settings.scaling,
        scaling_percentiles=list(settings.scaling_percentiles),
        scaling_levels=(
            {c: [float(v) for v in lv] for c, lv in zip(table.channels, prep.levels, strict=True)}
            if prep.levels is not None else None
        ),
        illum_correction=settings.illum_correction,
        illum_sigma_px=settings.illum_sigma_px if settings.illum_correction else None,
        spatial=settings.spatial,
        tile_px=prep.tile_size if settings.spatial == "tile" else None,
        intermediate=settings.intermediate,
        n_sites=len(table),
        n_skipped_unreadable=len(table.skipped),
        **dict(provenance or {}),
    )
    logger.info(
        "%sembedding %d sites x %d channels (%s) with %s (%s weights, input %d px, %s), %d features",
        label, len(table), len(table.channels), ", ".join(table.channels), spec.name,
        spec.weights_source, spec.input_px, settings.spatial, len(names),
    )
    accelerator = _resolve_accelerator(settings.accelerator)
    on_device = (accelerator == "gpu" and settings.spatial == "resize" if device_preprocess is None
                 else bool(device_preprocess))
    if on_device and settings.spatial != "resize":
        raise ConfigError("features: device preprocessing needs spatial: resize (tiles are cut per site)")
    dataset = SiteDataset(table.paths, table.frames, prep, channels=table.channels, scales=table.scales,
                          mode="planes" if on_device else "embed", transfer_dtype=table.dtype)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=settings.num_workers,
        pin_memory=accelerator == "gpu",
        collate_fn=PlaneCollate(prep) if on_device else None,
        persistent_workers=False,
    )
    writer = ShardWriter(out=out, sites=table.sites, names=names, provenance=record, label=label)
    module = SiteEmbedder(backbone, prep=prep if on_device else None)
    trainer = make_trainer(settings, callbacks=[writer], progress=progress)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*predict_dataloader.*num_workers.*")
        try:
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        except BaseException as err:
            shutil.rmtree(writer.shard_dir, ignore_errors=True)  # a failed run leaves no shards behind
            if isinstance(err, CytoscreenError):
                raise worker_error(err) from None
            raise
    elapsed = time.perf_counter() - t0
    written = Path(out) if trainer.is_global_zero else None
    if written is not None:
        logger.info("%swrote %s (%d sites x %d features) in %.1f s (%.2f sites/s)",
                    label, written, len(table), len(names), elapsed, len(table) / max(elapsed, 1e-9))
    return FeatureResult(out=written, n_sites=len(table), n_skipped=len(table.skipped),
                         n_features=len(names), spec=spec, predict_s=elapsed)


def worker_error(err: CytoscreenError) -> CytoscreenError:
    """The error a DataLoader worker raised, without the worker's traceback.

    torch re-raises a worker's exception as the same type, its message prefixed with "Caught ... in
    DataLoader worker process k" and the worker's whole traceback; the CLI prints messages, so keep
    the worker's own message (the text after the last ``<module>.<Class>: ``).
    """
    text = str(err)
    if "Original Traceback" not in text:
        return err
    cls = type(err)
    marker = f"\n{cls.__module__}.{cls.__qualname__}: "
    at = text.rfind(marker)
    return cls(text[at + len(marker):].strip() if at >= 0 else text.rstrip().splitlines()[-1])


def _log_skipped(table: SiteTable, label: str, qc_source: str) -> None:
    if len(table.skipped) == 0:
        return
    ex = ", ".join(site_label(r) for _, r in table.skipped.head(5).iterrows())
    more = " ..." if len(table.skipped) > 5 else ""
    logger.warning("%sskipped %d site(s) flagged QC_unreadable in %s: %s%s",
                   label, len(table.skipped), qc_source, ex, more)
