"""The features stage: sites -> backbone embeddings -> ``sites.parquet``, on CPU, 1 GPU or N GPUs.

Execution is Lightning's ``Trainer.predict``: :class:`SiteEmbedder` (a LightningModule) turns a
batch of preprocessed sites ``(B, C, T, P, P)`` into site vectors ``(B, C * width)`` (each channel
replicated to RGB, ImageNet-normalised, channels-last, pooled, tiles averaged, channels
concatenated); :class:`~cytoscreen.features.shards.ShardWriter` (a ``BasePredictionWriter``)
streams every rank's rows into its own Parquet shard and, once all ranks are done, global rank 0
merges the shards in dataset order (= sorted site keys) into the output, written atomically with
provenance.  Because rows are placed by dataset index, 1 and N devices give the same table.  Under
DDP every rank runs the same code (the reference pass included, which is deterministic); only
rank 0 writes the output.  On one CPU process the DataLoader workers start before the backbone
is built and the negcon levels are fitted (both overlap their reads).
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from cytoscreen import compute, io
from cytoscreen.backbones import DEFAULT_BACKBONE, Backbone, BackboneSpec, backbone_spec, create_backbone
from cytoscreen.errors import ComputeError, ConfigError, CytoscreenError
from cytoscreen.features import preprocess as pp
from cytoscreen.features.dataset import (
    PlaneCollate,
    SiteDataset,
    SiteTable,
    build_site_table,
    site_label,
    start_reference,
)
from cytoscreen.features.shards import ShardWriter, write_sites  # noqa: F401 (write_sites: API)

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
        """The batch's ``(B, C, T, P, P)`` images: ``image`` as given, ``fitted`` sites scaled here
        (:func:`~cytoscreen.features.preprocess.scale_sites`), or ``planes`` finished here."""
        if "fitted" in batch:  # sites the workers fitted before the negcon levels were known
            if self.prep is None:
                raise ValueError("a batch of fitted sites needs SiteEmbedder(prep=...)")
            return pp.scale_sites(batch["fitted"], self.prep)
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
    accelerator = _resolve_accelerator(settings.accelerator)
    on_device = (accelerator == "gpu" and settings.spatial == "resize" if device_preprocess is None
                 else bool(device_preprocess))
    if on_device and settings.spatial != "resize":
        raise ConfigError("features: device preprocessing needs spatial: resize (tiles are cut per site)")
    # one CPU process with workers: they start on the sites while the backbone is built and the
    # negcon levels are fitted (applied here then, to the fitted sites); else after both
    early = (accelerator == "cpu" and not on_device and settings.num_workers > 0 and settings.devices == 1
             and settings.num_nodes == 1 and not settings.illum_correction)

    def make_loader(prep: pp.Preprocessing) -> DataLoader:
        mode = "planes" if on_device else "fitted" if early and prep.scaling == "negcon" else "embed"
        dataset = SiteDataset(table.paths, table.frames, prep, channels=table.channels, scales=table.scales,
                              mode=mode, transfer_dtype=table.dtype)
        # started early, the workers read ahead further while the set-up holds the other core
        ahead = {"prefetch_factor": 4} if early and settings.spatial == "resize" else {}
        return DataLoader(dataset, batch_size=settings.batch_size, shuffle=False,
                          num_workers=settings.num_workers, pin_memory=accelerator == "gpu",
                          collate_fn=PlaneCollate(prep) if on_device else None, persistent_workers=False,
                          **ahead)

    backbone, prep, loader = _backbone_and_reference(table, settings, plate,
                                                     early_loader=make_loader if early else None)
    if loader is None:
        loader = make_loader(prep)
    spec = backbone.spec
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
    writer = ShardWriter(out=out, sites=table.sites, names=names, provenance=record, label=label)
    module = SiteEmbedder(backbone, prep=prep if on_device or early else None)
    try:
        trainer = make_trainer(settings, callbacks=[writer], progress=progress)
    except BaseException:
        _close(loader)
        raise
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*predict_dataloader.*num_workers.*")
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")  # _Started: rows carry index
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


def _backbone_and_reference(
    table: SiteTable, settings: FeatureSettings, plate: str, *,
    early_loader: Callable[[pp.Preprocessing], DataLoader] | None = None,
) -> tuple[Backbone, pp.Preprocessing, Iterable[Any]]:
    """The backbone, the fitted preprocessing and the batches to embed.

    The reference pass's DataLoader workers read while the backbone is built (its input size is
    known beforehand, except for timm names).  With ``early_loader`` the main pass's workers
    start before both (on settings without the fitted levels) and the batches are those started
    ones (:class:`_Started`); else ``early_loader`` is None and the caller builds the loader.
    """
    def build() -> Backbone:  # channels-last here, while the reference workers read (SiteEmbedder's is a no-op then)
        net = create_backbone(settings.backbone, settings.weights, intermediate=settings.intermediate)
        return net.to(memory_format=torch.channels_last)

    input_px = backbone_spec(settings.backbone).input_px
    backbone = None if input_px else build()  # timm: the input size comes with the network
    prep = pp.Preprocessing(input_px=input_px or backbone.spec.input_px, spatial=settings.spatial,
                            tile_px=settings.tile_px, scaling=settings.scaling,
                            percentiles=tuple(settings.scaling_percentiles))
    reference = start_reference(table, prep, illum_correction=settings.illum_correction,
                                illum_sigma_px=settings.illum_sigma_px,
                                max_sites=settings.reference_max_sites,
                                num_workers=settings.num_workers, plate=plate)
    batches = None
    try:
        batches = _Started(early_loader(prep)) if early_loader is not None else None
        backbone = backbone if backbone is not None else build()
        prep = reference.result()
    except BaseException:
        _close(batches)
        raise
    finally:
        reference.close()
    return backbone, prep, batches


class _Started:
    """The batches of a DataLoader whose workers start reading now, for ``Trainer.predict``.

    Lightning re-creates every DataLoader it is given to predict (to track batch indices), which
    would start new workers; it iterates other iterables as they are.  One device only: no
    sampler is injected (the rows are placed by their ``index``).
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self._iter: Any = iter(loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        it, self._iter = self._iter, None
        return it if it is not None else iter(self.loader)

    def close(self) -> None:
        """Stop workers that were started and not iterated."""
        it, self._iter = self._iter, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _close(batches: Any) -> None:
    if isinstance(batches, _Started):
        batches.close()


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
