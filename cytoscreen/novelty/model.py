"""The novelty autoencoder: an MLP ``LightningModule`` trained to reconstruct control profiles.

The module knows nothing of files, plates or devices: Lightning moves it and its batches, and adds
distributed samplers under DDP.  Its init arguments (plain scalars and the feature column list)
are stored with ``save_hyperparameters`` so a checkpoint rebuilds the model on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import nn

logger = logging.getLogger(__name__)


def _mlp(sizes: Sequence[int], *, dropout: float, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.GELU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class NoveltyAutoencoder(pl.LightningModule):
    """MLP autoencoder over one row of features (a well or site profile).

    Parameters
    ----------
    features
        Feature column names, in the order the model expects them; scoring refuses a table whose
        feature columns differ.
    hidden_sizes
        Widths of the encoder's hidden layers (the decoder mirrors them).
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
        hidden_sizes: Sequence[int] = (256, 64),
        latent_size: int = 16,
        dropout: float = 0.1,
        noise_std: float = 0.0,
        learning_rate: float = 1e-3,
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
        n = len(features)
        self.encoder = _mlp([n, *hidden_sizes, int(latent_size)], dropout=dropout,
                            last_activation=False)
        self.decoder = _mlp([int(latent_size), *reversed(hidden_sizes), n], dropout=dropout,
                            last_activation=False)

    @property
    def features(self) -> list[str]:
        return list(self.hparams["features"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` (rows x features)."""
        return self.decoder(self.encoder(x))

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
