"""The novelty autoencoder: an MLP ``LightningModule`` trained to reconstruct control profiles.

The module knows nothing of files, plates or devices: Lightning moves it and its batches, and adds
distributed samplers under DDP.  Its init arguments (plain scalars and the feature column list)
are stored with ``save_hyperparameters`` so a checkpoint rebuilds the model on its own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

logger = logging.getLogger(__name__)


def _mlp(sizes: Sequence[int], *, dropout: float) -> nn.Sequential:
    """Linear layers of the given widths with GELU and dropout between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class NoveltyAutoencoder(pl.LightningModule):
    """MLP autoencoder over one row of features (a well or site profile).

    Encoder and decoder each have a linear path and, when ``hidden_sizes`` is not empty, an MLP
    path added to it: ``z = A x + f(x)``, ``x_hat = B z + g(z)``.  With no hidden layers the model
    is a linear autoencoder (it learns the principal subspace of the controls), which is the
    default because it is the most accurate with a few hundred control wells; the MLP paths model
    nonlinear structure when there are enough control rows to fit them.

    Parameters
    ----------
    features
        Feature column names, in the order the model expects them; scoring refuses a table whose
        feature columns differ.
    hidden_sizes
        Widths of the hidden layers of the encoder's MLP path (the decoder mirrors them); empty
        for a linear autoencoder.
    latent_size
        Width of the bottleneck.
    dropout
        Dropout after each hidden activation (training only).
    noise_std
        Standard deviation of Gaussian noise added to the input during training (denoising
        autoencoder); 0 turns it off.  The target is always the clean input.
    learning_rate, weight_decay
        AdamW settings.
    """

    def __init__(
        self,
        features: Sequence[str],
        hidden_sizes: Sequence[int] = (),
        latent_size: int = 16,
        dropout: float = 0.0,
        noise_std: float = 0.0,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        # plain lists so the hparams stored in the checkpoint are plain YAML/JSON types
        features = [str(f) for f in features]
        hidden_sizes = [int(h) for h in hidden_sizes]
        self.save_hyperparameters(
            {
                "features": features,
                "hidden_sizes": hidden_sizes,
                "latent_size": int(latent_size),
                "dropout": float(dropout),
                "noise_std": float(noise_std),
                "learning_rate": float(learning_rate),
                "weight_decay": float(weight_decay),
            }
        )
        n, k = len(features), int(latent_size)
        # linear paths (a PCA-like autoencoder on their own) plus MLP paths for the nonlinear rest
        self.encoder_linear = nn.Linear(n, k)
        self.decoder_linear = nn.Linear(k, n)
        self.encoder = _mlp([n, *hidden_sizes, k], dropout=dropout) if hidden_sizes else None
        self.decoder = _mlp([k, *reversed(hidden_sizes), n], dropout=dropout) if hidden_sizes else None

    @property
    def features(self) -> list[str]:
        return list(self.hparams["features"])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent code of ``x`` (rows x latent_size)."""
        z = self.encoder_linear(x)
        return z if self.encoder is None else z + self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction from latent codes."""
        x = self.decoder_linear(z)
        return x if self.decoder is None else x + self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` (rows x features)."""
        return self.decode(self.encode(x))

    def _common_step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss (mean squared error) and per-row errors of one batch; shared by every loop."""
        x = batch[0] if isinstance(batch, list | tuple) else batch
        x_in = x
        if stage == "train" and self.hparams["noise_std"] > 0:
            x_in = x + self.hparams["noise_std"] * torch.randn_like(x)
        recon = self(x_in)
        per_row = (recon - x).pow(2).mean(dim=1)
        loss = per_row.mean()
        return loss, per_row

    def _log_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        self.log(
            f"{stage}_loss",
            loss,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            prog_bar=True,
            batch_size=batch_size,
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, per_row = self._common_step(batch, "train")
        self._log_loss("train", loss, per_row.shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, per_row = self._common_step(batch, "val")
        self._log_loss("val", loss, per_row.shape[0])
        return loss

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, per_row = self._common_step(batch, "test")
        self._log_loss("test", loss, per_row.shape[0])
        return loss

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x)

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(),
            lr=self.hparams["learning_rate"],
            weight_decay=self.hparams["weight_decay"],
        )


#: ``format`` entry of a cross-fitted novelty checkpoint.
CHECKPOINT_FORMAT = "cytoscreen.novelty.crossfit/1"


@dataclass(frozen=True)
class CrossFitModel:
    """The cross-fitted autoencoders: ``models[k]`` never saw the control wells of fold ``k``.

    ``folds`` is a :class:`cytoscreen.novelty.data.NoveltyFolds` (held-out and validation wells of
    each model); ``features`` the feature columns every model expects, in order; ``reference`` the
    control ``Metadata_pert_type`` the folds were drawn from.
    """

    models: tuple[NoveltyAutoencoder, ...]
    folds: Any
    features: tuple[str, ...]
    reference: str = "negcon"
    level: str = "well"
    best_val_loss: tuple[float | None, ...] = ()
    epochs: tuple[int, ...] = ()


def save_checkpoint(crossfit: CrossFitModel, path, *, provenance: Mapping[str, Any] | None = None) -> None:
    """Write every model of ``crossfit`` and its folds to one file, atomically (temp + rename)."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hparams = dict(crossfit.models[0].hparams) if crossfit.models else {"features": list(crossfit.features)}
    record = {
        "format": CHECKPOINT_FORMAT,
        "hyper_parameters": hparams,
        "features": list(crossfit.features),
        "folds": crossfit.folds.to_dict(),
        "state_dicts": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in crossfit.models],
        "reference": crossfit.reference,
        "level": crossfit.level,
        "best_val_loss": [None if v is None else float(v) for v in crossfit.best_val_loss],
        "epochs": [int(e) for e in crossfit.epochs],
        "cytoscreen": dict(provenance or {}),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(record, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_checkpoint(path) -> tuple[CrossFitModel, dict]:
    """The cross-fitted models and the checkpoint's record (less the weights).

    Raises
    ------
    ModelError
        The file is missing, unreadable, or not a cross-fitted novelty checkpoint.
    """
    from pathlib import Path

    from cytoscreen.errors import ModelError
    from cytoscreen.novelty.data import NoveltyFolds

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: checkpoint not found; run `cytoscreen novelty train` first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise ModelError(
            f"{path}: cannot read checkpoint ({type(err).__name__}: {err}); retrain it"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(
            f"{path}: not a cross-fitted cytoscreen novelty checkpoint ({CHECKPOINT_FORMAT}); "
            f"train it with `cytoscreen novelty train`"
        )
    try:
        folds = NoveltyFolds.from_dict(ckpt["folds"])
        hparams = dict(ckpt["hyper_parameters"])
        models = []
        for state in ckpt["state_dicts"]:
            model = NoveltyAutoencoder(**hparams)
            model.load_state_dict(state)
            models.append(model.eval())
        if len(models) != len(folds):
            raise ValueError(f"{len(models)} models for {len(folds)} folds")
        crossfit = CrossFitModel(
            models=tuple(models), folds=folds, features=tuple(ckpt["features"]),
            reference=str(ckpt.get("reference", "negcon")), level=str(ckpt.get("level", "well")),
            best_val_loss=tuple(ckpt.get("best_val_loss", ())), epochs=tuple(ckpt.get("epochs", ())),
        )
    except (TypeError, RuntimeError, KeyError, ValueError) as err:
        raise ModelError(f"{path}: checkpoint does not match the novelty model ({err})") from err
    record = {k: v for k, v in ckpt.items() if k != "state_dicts"}
    return crossfit, record
