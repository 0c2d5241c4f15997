"""What a backbone is: `BackboneSpec` (input size, embedding width, weights) and its column-name token.

It imports nothing else of the package, so the registry, the weight loaders and the family
modules all import it without a cycle.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone expects and produces, and where its weights came from.

    Attributes
    ----------
    name
        Registry name as written in config (``efficientnet_lite0``, ``timm:resnet50``).
    embedding_dim
        Width of the pooled embedding of the last feature map.
    input_px
        Side of the square input image the network was trained on.
    intermediate_dim
        Width of the pooled intermediate block (0 if the backbone offers none).
    mean, std
        Per-RGB-channel normalisation of inputs scaled to [0, 1].
    weights_source
        Human-readable origin: a package name, ``file``, or ``random (seed 0)``.
    weights_path, sha256
        The weights file and its SHA-256 (None for random weights); filled by create_backbone.
    requires
        The module that must be importable for the backbone's weights or code (a weights package,
        ``timm``), or None.
    """

    name: str
    embedding_dim: int
    input_px: int
    intermediate_dim: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights_source: str = ""
    weights_path: str | None = None
    sha256: str | None = None
    requires: str | None = None

    @property
    def token(self) -> str:
        """The backbone as it appears in feature column names (``timm:resnet50`` -> ``timm_resnet50``)."""
        return backbone_token(self.name)

    def provenance(self) -> dict[str, Any]:
        """The record stored in output metadata."""
        return {
            "backbone": self.name,
            "backbone_weights": self.weights_source,
            "backbone_weights_path": self.weights_path,
            "backbone_weights_sha256": self.sha256,
            "backbone_input_px": self.input_px,
            "backbone_embedding_dim": self.embedding_dim,
        }


def backbone_token(name: str) -> str:
    """Column-name form of a backbone name: lower case, runs of other characters become ``_``."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
