"""``timm:<arch>``: any architecture of the optional ``timm`` extra, with a user-named weights file.

Imported by :func:`cytoscreen.backbones.create_backbone` only when a ``timm:`` name is used, so
the base install never imports timm or torchvision.  timm's ``num_classes=0`` gives the pooled
feature extractor; its data config gives the input size, mean and std.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cytoscreen.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, BackboneSpec
from cytoscreen.backbones.weights import load_weights, weights_sha256
from cytoscreen.errors import ConfigError, ModelError


class _TimmTrunk(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x), None


def create_timm(name: str, weights: str | os.PathLike | None) -> tuple[nn.Module, BackboneSpec]:
    arch = name[len(TIMM_PREFIX) :]
    if not arch:
        raise ConfigError(f"backbone {name!r}: name a timm architecture, e.g. timm:resnet50")
    if weights is None:
        raise ConfigError(
            f"backbone {name}: timm backbones need a weights file; set `features.weights` (or "
            f"--weights) to a state dict saved for {arch}"
        )
    if not Path(weights).is_file():
        raise ModelError(f"{weights}: weights file for backbone {name} not found")
    try:
        import timm
    except ImportError as err:
        raise ModelError(
            f"backbone {name} needs the optional timm extra, which is not installed; install it "
            f"with `pip install 'cytoscreen[timm]'` (it pulls torchvision, a large download) or "
            f"use an efficientnet_lite backbone"
        ) from err
    try:
        net = timm.create_model(arch, pretrained=False, num_classes=0)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise ConfigError(f"backbone {name}: timm does not know {arch!r} ({err})") from err
    head = getattr(net, "default_cfg", {}).get("classifier", "") or ""
    heads = tuple(h for h in ([head] if isinstance(head, str) else list(head)) if h)
    load_weights(net, weights, name=name, ignore=lambda k: any(k.startswith(h + ".") for h in heads))
    cfg = timm.data.resolve_model_data_config(net)
    size = cfg.get("input_size", (3, 224, 224))
    path = str(Path(weights).resolve())
    spec = BackboneSpec(
        name=name,
        embedding_dim=int(net.num_features),
        input_px=int(size[-1]),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        weights_source="file",
        weights_path=path,
        sha256=weights_sha256(path),
        requires="timm",
    )
    return _TimmTrunk(net), spec
