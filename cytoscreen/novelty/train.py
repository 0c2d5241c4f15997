"""Training the cross-fitted novelty autoencoders: the Trainer built from config, one ``fit`` per fold.

``novelty.trainer`` keys pass straight to ``pytorch_lightning.Trainer`` (``accelerator``,
``devices``, ``strategy``, ``num_nodes``, ``precision``, ``max_epochs``, or any other Trainer
argument), so the same code runs on one CPU, under DDP on N GPUs, and on SLURM (see
:mod:`cytoscreen.compute`: in a one-task job Lightning starts the N processes itself; with one task
per device ``SLURMEnvironment`` with ``auto_requeue`` takes over).  Early stopping
and checkpointing watch the validation loss of each model's validation wells.  The ``K`` models
(one per fold of :func:`cytoscreen.novelty.data.crossfit_folds`) train one after the other in the
same process, so every DDP rank runs the same fits in the same order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from cytoscreen.compute import lightning_cluster_plugins
from cytoscreen.errors import ComputeError, ConfigError
from cytoscreen.io import SITE
from cytoscreen.novelty.data import (
    NoveltyDataModule,
    NoveltyFolds,
    check_profiles,
    crossfit_folds,
)
from cytoscreen.novelty.model import CrossFitModel, NoveltyAutoencoder
from cytoscreen.novelty.settings import NoveltySettings

logger = logging.getLogger(__name__)

MONITOR = "val_loss"
#: Checkpoint key of the provenance record.
PROVENANCE_KEY = "cytoscreen"

# Lightning hints that do not apply to small in-memory tables logged once per epoch.
_QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*is smaller than the logging interval.*",
    # Lightning 2.6 on torch 2.13 internals; nothing a user can act on
    ".*LeafSpec.* is deprecated.*",
)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence the Lightning hints in ``_QUIET_WARNINGS`` (and only those)."""
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train` on this process.

    ``crossfit`` holds, on the global-zero process, each fold's weights of the epoch with the
    lowest ``val_loss`` (eval mode); ``epochs`` the epochs each fit ran.
    """

    crossfit: CrossFitModel
    is_global_zero: bool

    @property
    def folds(self) -> NoveltyFolds:
        return self.crossfit.folds

    @property
    def models(self) -> tuple[NoveltyAutoencoder, ...]:
        return self.crossfit.models


class _EpochLog(Callback):
    """One plain log line per epoch (the progress bar is off when stderr is not a terminal)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        parts = [
            f"{name}={float(metrics[name]):.5g}"
            for name in ("train_loss", MONITOR)
            if name in metrics
        ]
        logger.debug("epoch %d/%s: %s", trainer.current_epoch + 1, trainer.max_epochs, " ".join(parts))


class _Provenance(Callback):
    """Stores a provenance record in every checkpoint under ``"cytoscreen"``."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = dict(record)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[PROVENANCE_KEY] = dict(self.record)


def is_rank_zero_process() -> bool:
    """True unless the environment marks this process as a non-zero rank of a distributed run.

    Usable before the Trainer exists (e.g. to clean a work folder once): Lightning's DDP launcher
    starts the other ranks with ``LOCAL_RANK``/``NODE_RANK`` set, torchrun sets ``RANK``, srun sets
    ``SLURM_PROCID``.
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"]) == 0 and int(env.get("NODE_RANK", env.get("GROUP_RANK", 0))) == 0
    if "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) == 0
    return True


def build_trainer(
    trainer_options: Mapping[str, Any],
    *,
    root_dir: str | os.PathLike,
    log_dir: str | os.PathLike | None = None,
    patience: int = 20,
    min_delta: float = 0.0,
    auto_requeue: bool = True,
    progress_bar: bool | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[pl.Trainer, ModelCheckpoint]:
    """A Trainer from the ``novelty.trainer`` settings, with early stopping and checkpointing.

    Parameters
    ----------
    trainer_options
        Keyword arguments for ``pytorch_lightning.Trainer`` (config ``novelty.trainer``).
    root_dir
        ``default_root_dir`` and checkpoint folder (also where SLURM requeue checkpoints go), so
        nothing is written to the working directory.
    log_dir
        Folder for the CSV metrics log (``metrics.csv``, ``hparams.yaml``); default ``root_dir``.
    patience, min_delta
        Early stopping on ``val_loss``.
    auto_requeue
        ``SLURMEnvironment(auto_requeue=...)`` when a SLURM job has one task per device.
    progress_bar
        Default: on only when stderr is a terminal, so Snakemake logs stay plain.
    provenance
        Record stored in every checkpoint (key ``"cytoscreen"``).

    Raises
    ------
    ConfigError
        An unknown Trainer argument or an invalid value.
    ComputeError
        Device settings that cannot run here (e.g. ``accelerator: gpu`` without a GPU).
    """
    options = dict(trainer_options)
    root_dir = Path(root_dir)
    checkpoint = ModelCheckpoint(
        dirpath=root_dir / "checkpoints",
        filename="best-{epoch}",
        monitor=MONITOR,
        mode="min",
        save_top_k=1,
    )
    callbacks = [
        checkpoint,
        EarlyStopping(monitor=MONITOR, mode="min", patience=int(patience), min_delta=float(min_delta)),
        _EpochLog(),
    ]
    if provenance:
        callbacks.append(_Provenance(provenance))
    plugins = list(options.pop("plugins", None) or [])
    plugins += lightning_cluster_plugins(options.get("devices", 1), int(options.get("num_nodes", 1) or 1),
                                         auto_requeue=bool(auto_requeue))
    options.setdefault("enable_progress_bar", sys.stderr.isatty() if progress_bar is None else progress_bar)
    options.setdefault("default_root_dir", str(root_dir))
    if "logger" not in options:
        options["logger"] = CSVLogger(save_dir=str(log_dir or root_dir), name="", version="")
    options["callbacks"] = [*callbacks, *(options.pop("callbacks", None) or [])]
    if plugins:
        options["plugins"] = plugins
    try:
        with _quiet_lightning():
            trainer = pl.Trainer(**options)
    except TypeError as err:
        raise ConfigError(
            f"novelty.trainer: {err}; keys under novelty.trainer must be arguments of "
            f"pytorch_lightning.Trainer"
        ) from err
    except MisconfigurationException as err:
        raise ComputeError(
            f"novelty.trainer: {err}; check accelerator/devices/strategy against this machine"
        ) from err
    except ValueError as err:
        raise ConfigError(f"novelty.trainer: {err}") from err
    return trainer, checkpoint


def build_model(features: list[str], settings: NoveltySettings) -> NoveltyAutoencoder:
    """The autoencoder from the novelty settings."""
    return NoveltyAutoencoder(features, **settings.model_kwargs())


def train(
    profiles: pd.DataFrame,
    *,
    settings: NoveltySettings,
    root_dir: str | os.PathLike,
    log_dir: str | os.PathLike | None = None,
    source: str = "profiles",
    provenance: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train one autoencoder per cross-fitting fold on the control rows of ``profiles``.

    Parameters
    ----------
    profiles
        Well (or site) profiles of the screen; the control rows are selected and dealt into folds
        inside (:func:`~cytoscreen.novelty.data.crossfit_folds`).
    settings
        The novelty settings (:meth:`NoveltySettings.from_config`).
    root_dir
        Work folder for the per-fold Lightning checkpoints (``fold_<k>/checkpoints``).
    log_dir
        Folder for the per-epoch CSV metrics (``fold_<k>/metrics.csv``); default ``root_dir``.
    provenance
        Record stored in every Lightning checkpoint.

    Returns
    -------
    TrainResult
        On every process; only the global-zero process should write outputs.  With fewer than
        :data:`~cytoscreen.novelty.data.MIN_CONTROL_WELLS` control wells it holds no model (a
        warning was logged) and scoring gives NaN scores.
    """
    features = check_profiles(profiles, source=source)
    folds = crossfit_folds(
        profiles, reference=settings.reference, folds=settings.folds,
        val_fraction=settings.val_fraction, seed=settings.seed, source=source,
    )
    level = "site" if SITE in profiles.columns else "well"
    root_dir = Path(root_dir)
    log_dir = Path(log_dir) if log_dir is not None else root_dir
    models, losses, epochs, is_zero = [], [], [], True
    for k in range(len(folds)):
        dm = NoveltyDataModule(
            profiles, train_wells=folds.train(k), val_wells=folds.val[k], features=features,
            batch_size=settings.batch_size, num_workers=settings.num_workers, source=source,
        )
        dm.setup("fit")
        pl.seed_everything(int(settings.seed) + k, workers=True, verbose=False)
        model = build_model(features, settings)
        trainer, ckpt_cb = build_trainer(
            settings.trainer,
            root_dir=root_dir / f"fold_{k}",
            log_dir=log_dir / f"fold_{k}",
            patience=settings.patience,
            min_delta=settings.min_delta,
            auto_requeue=settings.auto_requeue,
            provenance=provenance,
        )
        with _quiet_lightning():
            trainer.fit(model, datamodule=dm)
            best = ckpt_cb.best_model_path
            if best and trainer.is_global_zero:  # the kept model is the checkpoint's (best) epoch
                state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
                model.load_state_dict(state)
        model.eval()
        score = ckpt_cb.best_model_score
        models.append(model)
        losses.append(float(score) if score is not None else None)
        epochs.append(int(trainer.current_epoch))
        is_zero = bool(trainer.is_global_zero)
        if is_zero:
            logger.info(
                "fold %d/%d: trained on %d control wells (%d val, %d held out) for %d epoch(s) on "
                "%d device(s) x %d node(s); best val_loss %s",
                k + 1, len(folds), len(folds.train(k)), len(folds.val[k]), len(folds.held_out[k]),
                epochs[-1], trainer.num_devices, trainer.num_nodes,
                "n/a" if losses[-1] is None else f"{losses[-1]:.5g}",
            )
    crossfit = CrossFitModel(
        models=tuple(models), folds=folds, features=tuple(features), reference=settings.reference,
        level=level, best_val_loss=tuple(losses), epochs=tuple(epochs),
    )
    return TrainResult(crossfit=crossfit, is_global_zero=is_zero)
