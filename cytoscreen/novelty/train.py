"""Training the novelty autoencoder: the Trainer built from config, and one ``fit``.

``novelty.trainer`` keys pass straight to ``pytorch_lightning.Trainer`` (``accelerator``,
``devices``, ``strategy``, ``num_nodes``, ``precision``, ``max_epochs``, or any other Trainer
argument), so the same code runs on one CPU, under DDP on N GPUs, and on SLURM (see
:mod:`cytoscreen.compute`: in a one-task job Lightning starts the N processes itself; with one task
per device ``SLURMEnvironment`` with ``auto_requeue`` takes over).  Early stopping
and checkpointing watch the validation loss of the held-out validation wells.
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
from cytoscreen.novelty.data import NoveltyDataModule, NoveltySplit
from cytoscreen.novelty.model import NoveltyAutoencoder

logger = logging.getLogger(__name__)

#: Config keys of the ``novelty`` section that build the model (same names as its init).
MODEL_KEYS = ("hidden_sizes", "latent_size", "dropout", "noise_std", "learning_rate", "weight_decay")
#: Config keys of the ``novelty`` section that build the data module.
DATA_KEYS = (
    "reference",
    "val_fraction",
    "calibration_fraction",
    "min_train_wells",
    "min_val_wells",
    "min_calibration_wells",
    "batch_size",
    "num_workers",
    "seed",
)
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

    ``model`` holds the weights of ``checkpoint`` (the epoch with the lowest ``val_loss``) on the
    global-zero process, in eval mode; ``epochs`` is the number of epochs run.
    """

    model: NoveltyAutoencoder
    split: NoveltySplit
    checkpoint: Path | None
    best_val_loss: float | None
    epochs: int
    is_global_zero: bool


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
        logger.info("epoch %d/%s: %s", trainer.current_epoch + 1, trainer.max_epochs, " ".join(parts))


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


def build_model(features: list[str], novelty: Mapping[str, Any]) -> NoveltyAutoencoder:
    """The autoencoder from the ``novelty`` config section."""
    return NoveltyAutoencoder(features, **{k: novelty[k] for k in MODEL_KEYS if k in novelty})


def train(
    profiles: pd.DataFrame,
    *,
    novelty: Mapping[str, Any],
    root_dir: str | os.PathLike,
    log_dir: str | os.PathLike | None = None,
    source: str = "profiles",
    provenance: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train the autoencoder on the control rows of ``profiles``.

    Parameters
    ----------
    profiles
        Well (or site) profiles of the screen; the control rows are selected and split inside.
    novelty
        The ``novelty`` config section (schema defaults filled in).
    root_dir
        Work folder for checkpoints; the best checkpoint is ``result.checkpoint`` inside it.
    log_dir
        Folder for the per-epoch CSV metrics; default ``root_dir``.
    provenance
        Record stored in the checkpoint.

    Returns
    -------
    TrainResult
        On every process; only the global-zero process should write outputs.
    """
    dm = NoveltyDataModule(
        profiles, source=source, **{k: novelty[k] for k in DATA_KEYS if k in novelty}
    )
    dm.setup("fit")  # fail early, before any process is launched, on too few wells
    pl.seed_everything(int(novelty.get("seed", 0)), workers=True, verbose=False)
    model = build_model(dm.features, novelty)
    trainer, ckpt_cb = build_trainer(
        novelty.get("trainer", {}),
        root_dir=root_dir,
        log_dir=log_dir,
        patience=int(novelty.get("patience", 20)),
        min_delta=float(novelty.get("min_delta", 0.0)),
        auto_requeue=bool(novelty.get("auto_requeue", True)),
        provenance=provenance,
    )
    with _quiet_lightning():
        trainer.fit(model, datamodule=dm)
        best = ckpt_cb.best_model_path
        if not best:  # fast_dev_run or no validation: keep the final weights
            best = str(Path(root_dir) / "checkpoints" / "last.ckpt")
            trainer.save_checkpoint(best)
        elif trainer.is_global_zero:  # the returned model is the checkpoint's (best) epoch
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            model.load_state_dict(state)
    model.eval()
    score = ckpt_cb.best_model_score
    result = TrainResult(
        model=model,
        split=dm.split,
        checkpoint=Path(best),
        best_val_loss=float(score) if score is not None else None,
        epochs=int(trainer.current_epoch),
        is_global_zero=bool(trainer.is_global_zero),
    )
    if trainer.is_global_zero:
        logger.info(
            "trained %d epoch(s) on %d devices x %d node(s); best val_loss %s (%s)",
            result.epochs, trainer.num_devices, trainer.num_nodes,
            "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.5g}", best,
        )
    return result
