"""Typed settings of the novelty stage, read once from the config's ``novelty:`` section.

Plain Python (no torch), so commands and workflow rules can build them cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from cytoscreen.errors import ConfigError

SITE_AGGREGATES = ("median", "mean")
#: How p-values are computed from the cross-fitted control scores (see cytoscreen.novelty.score).
PVALUE_METHODS = ("auto", "conformal", "gaussian")
#: Keys of the section that build the autoencoder (the names of its init arguments).
MODEL_KEYS = ("hidden_sizes", "latent_size", "dropout", "noise_std", "learning_rate", "weight_decay")


@dataclass(frozen=True)
class NoveltySettings:
    """The ``novelty:`` section (schema defaults filled in); see the config schema for each key."""

    reference: str = "negcon"
    folds: int = 5
    val_fraction: float = 0.15
    seed: int = 0
    hidden_sizes: tuple[int, ...] = ()
    latent_size: int = 16
    dropout: float = 0.0
    noise_std: float = 0.0
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    num_workers: int = 0
    patience: int = 20
    min_delta: float = 0.0
    auto_requeue: bool = True
    hit_q: float = 0.05
    pvalue: str = "auto"
    conformal_min_controls: int = 200
    streaming: str = "auto"
    site_aggregate: str = "median"
    exclude_pert_types: tuple[str, ...] = ("empty",)
    threads: int = 0
    trainer: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> NoveltySettings:
        """Settings from a (validated) ``novelty`` section; unknown keys are a ConfigError."""
        from cytoscreen.config import settings_values

        section = settings_values(cls, "novelty", section)
        for key in ("hidden_sizes", "exclude_pert_types"):
            if key in section:
                section[key] = tuple(section[key])
        if "trainer" in section:
            section["trainer"] = dict(section["trainer"] or {})
        settings = cls(**section)
        if settings.site_aggregate not in SITE_AGGREGATES:
            raise ConfigError(
                f"novelty.site_aggregate: {settings.site_aggregate!r} is not one of {', '.join(SITE_AGGREGATES)}"
            )
        if settings.pvalue not in PVALUE_METHODS:
            raise ConfigError(f"novelty.pvalue: {settings.pvalue!r} is not one of {', '.join(PVALUE_METHODS)}")
        if settings.streaming not in ("auto", "always", "never"):
            raise ConfigError(f"novelty.streaming: {settings.streaming!r} is not one of auto, always, never")
        if int(settings.folds) < 2:
            raise ConfigError(f"novelty.folds must be at least 2, not {settings.folds}")
        if not 0 <= float(settings.val_fraction) < 1:
            raise ConfigError(f"novelty.val_fraction must be in [0, 1), not {settings.val_fraction}")
        return settings

    def model_kwargs(self) -> dict[str, Any]:
        """Init arguments of :class:`~cytoscreen.novelty.model.NoveltyAutoencoder` (less features)."""
        return {k: getattr(self, k) for k in MODEL_KEYS}

    def replace(self, **changes: Any) -> NoveltySettings:
        """A copy with ``changes`` (validated as :meth:`from_config`)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return NoveltySettings.from_config(data)
