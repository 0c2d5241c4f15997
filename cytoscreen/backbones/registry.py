"""The backbone registry: :func:`register_backbone`, :func:`backbone_spec`, :func:`create_backbone`.

A backbone is an ImageNet-style CNN trunk that maps a batch of RGB images ``(N, 3, H, W)`` to
global-average-pooled embeddings ``(N, width)``.  Families register small factories named as in
config with :func:`register_backbone` (the timm pattern); :func:`create_backbone` is the only way
a stage gets a network.  ``timm:<arch>`` names are resolved by :mod:`cytoscreen.backbones.timm_`,
imported only when such a name is used.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cytoscreen.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, BackboneSpec
from cytoscreen.backbones.weights import package_weights, weights_sha256
from cytoscreen.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"


class Backbone(nn.Module):
    """A trunk plus its spec; ``forward((N, 3, H, W)) -> (N, width)`` pooled embeddings.

    The trunk returns ``(final, intermediate)`` pooled tensors (intermediate may be None);
    with ``intermediate=True`` both are concatenated, final first.
    """

    def __init__(self, trunk: nn.Module, spec: BackboneSpec, *, intermediate: bool = False) -> None:
        super().__init__()
        if intermediate and not spec.intermediate_dim:
            raise ConfigError(
                f"backbone {spec.name} offers no intermediate block embedding; set "
                f"`features.intermediate: false`"
            )
        self.trunk = trunk
        self.spec = spec
        self.intermediate = intermediate

    @property
    def width(self) -> int:
        """Embedding width per image."""
        return self.spec.embedding_dim + (self.spec.intermediate_dim if self.intermediate else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        final, mid = self.trunk(x)
        if self.intermediate:
            return torch.cat([final, mid], dim=1)
        return final

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits, for backbones that keep their classifier (used to check weights)."""
        fn = getattr(self.trunk, "classify", None)
        if fn is None:
            raise ModelError(f"backbone {self.spec.name} has no classifier head")
        return fn(x)


# --- registry ------------------------------------------------------------------------------------
Factory = Callable[[BackboneSpec, "str | None"], nn.Module]


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    spec: BackboneSpec


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(
    *,
    embedding_dim: int,
    input_px: int,
    weights_source: str,
    intermediate_dim: int = 0,
    requires: str | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    name: str | None = None,
) -> Callable[[Factory], Factory]:
    """Register ``factory(spec, weights_path) -> trunk`` under its own name (or ``name``).

    The trunk's forward returns ``(final, intermediate)`` pooled embeddings; ``weights_path`` is the
    resolved weights file (None for random weights).  Registering a name twice replaces the entry
    with a warning, as timm does.
    """

    def deco(factory: Factory) -> Factory:
        key = name or factory.__name__
        if key in _REGISTRY:
            logger.warning("backbone %s registered again; the new factory replaces the old one", key)
        spec = BackboneSpec(
            name=key,
            embedding_dim=embedding_dim,
            input_px=input_px,
            intermediate_dim=intermediate_dim,
            mean=mean,
            std=std,
            weights_source=weights_source,
            requires=requires,
        )
        _REGISTRY[key] = _Entry(factory, spec)
        return factory

    return deco


def list_backbones() -> list[str]:
    """Registered backbone names, sorted (``timm:<arch>`` is accepted besides these)."""
    return sorted(_REGISTRY)


def backbone_spec(name: str) -> BackboneSpec:
    """The registered spec of ``name`` without building the network or resolving weights."""
    if name.startswith(TIMM_PREFIX):
        return BackboneSpec(
            name=name, embedding_dim=0, input_px=0, weights_source="file (features.weights)",
            requires="timm",
        )
    try:
        return _REGISTRY[name].spec
    except KeyError:
        raise ConfigError(
            f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}, or "
            f"timm:<arch> with the timm extra (see `cytoscreen backbones`)"
        ) from None


def backbone_table() -> list[dict[str, Any]]:
    """One record per backbone for ``cytoscreen backbones``: name, width, input size, weights."""
    rows = []
    for name in list_backbones():
        spec = _REGISTRY[name].spec
        rows.append(
            {
                "name": name,
                "embedding_dim": spec.embedding_dim,
                "intermediate_dim": spec.intermediate_dim,
                "input_px": spec.input_px,
                "weights": spec.weights_source,
                "installed": _is_installed(spec.requires),
            }
        )
    rows.append(
        {
            "name": "timm:<arch>",
            "embedding_dim": None,
            "intermediate_dim": 0,
            "input_px": None,
            "weights": "file named in features.weights",
            "installed": importlib.util.find_spec("timm") is not None,
        }
    )
    return rows


def _is_installed(module: str | None) -> bool:
    if module is None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def create_backbone(name: str, weights: str | os.PathLike | None = None, *,
                    intermediate: bool = False) -> Backbone:
    """Build backbone ``name`` in eval mode with gradients off.

    Parameters
    ----------
    name
        A name from :func:`list_backbones` or ``timm:<arch>``.
    weights
        A weights file (state dict) to load instead of the packaged weights; required for timm.
    intermediate
        Also return the pooled intermediate block (the last block at stride 16 for EfficientNet).

    Raises
    ------
    ConfigError
        Unknown name (the message lists the known ones), or a timm backbone without weights.
    ModelError
        Weights package or file missing, unreadable, or not matching the architecture.
    """
    if name.startswith(TIMM_PREFIX):
        from cytoscreen.backbones.timm_ import create_timm  # the optional extra, only when named

        trunk, spec = create_timm(name, weights)
    else:
        spec = backbone_spec(name)
        path = str(weights) if weights is not None else None
        entry = _REGISTRY[name]
        if path is not None:
            if not Path(path).is_file():
                raise ModelError(f"{path}: weights file for backbone {name} not found")
            spec = replace(spec, weights_source="file", weights_path=str(Path(path).resolve()))
        elif spec.requires is not None:
            spec = replace(spec, weights_path=package_weights(spec))
        if spec.weights_path is not None:
            spec = replace(spec, sha256=weights_sha256(spec.weights_path))
        trunk = entry.factory(spec, spec.weights_path)
    model = Backbone(trunk, spec, intermediate=intermediate)
    model.eval()
    model.requires_grad_(False)
    logger.debug("backbone %s: %s weights, sha256 %s", spec.name, spec.weights_source, spec.sha256)
    return model
