"""Resolving and loading the Cellpose model named in config, strictly offline.

``segment.model`` (and ``segment.nuclei_model``) is either

- a **file** (absolute, or relative to the working directory): a Cellpose 3 model as written by
  ``cellpose --train`` or ``CPnet.save_model``, e.g. a downloaded ``cyto3`` / ``nucleitorch_0``, or
- a **model name** whose file is already in Cellpose's local model folder: the folder named by
  ``CELLPOSE_LOCAL_MODELS_PATH``, else ``~/.cellpose/models`` (Cellpose's own default).  Built-in
  names map to Cellpose's file names (``nuclei`` -> ``nucleitorch_0``, ``cyto2`` ->
  ``cyto2torch_0``, ``cyto3`` -> ``cyto3``); a user model trained in the Cellpose GUI is found by
  its own name.

cytoscreen never downloads a model: without a file the stage stops with one
:class:`~cytoscreen.errors.ModelError` that says what to set and where to get a model.  The model
is always handed to Cellpose as an existing absolute path (so Cellpose's own name lookup, which
downloads missing built-in models, is never reached), and while cytoscreen works with Cellpose its
download function is replaced by one that raises (:func:`offline_cellpose`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cytoscreen import compute, io
from cytoscreen.errors import ModelError

logger = logging.getLogger(__name__)

#: Environment variable Cellpose reads for its local model folder.
MODEL_DIR_ENV = "CELLPOSE_LOCAL_MODELS_PATH"
#: Cellpose's file names for built-in models whose file name is not the model name.
BUILTIN_FILES: dict[str, str] = {
    "nuclei": "nucleitorch_0",
    "cyto": "cytotorch_0",
    "cyto2": "cyto2torch_0",
}
#: Diameter (px) Cellpose rescales objects to in its built-in nuclei model (stored in code, not file).
NUCLEI_DIAM_MEAN = 17.0
MODELS_URL = "https://www.cellpose.org/models"
ACCELERATORS = compute.ACCELERATORS


def cellpose_model_dir() -> Path:
    """Cellpose's local model folder: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``."""
    env = os.environ.get(MODEL_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cellpose" / "models"


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model file: what the user wrote, where the file is, and its checksum."""

    name: str
    path: str
    sha256: str
    source: str  # "file" or "model folder <dir>"

    def provenance(self, prefix: str = "segment_model") -> dict[str, Any]:
        return {prefix: self.name, f"{prefix}_path": self.path, f"{prefix}_sha256": self.sha256}


def _missing_message(key: str, value: str | None, model_dir: Path) -> str:
    where = (
        f"`{key}` is not set" if not value
        else f"`{key}: {value}` is neither a file nor a model in the Cellpose model folder {model_dir}"
    )
    return (
        f"{where}; set `{key}` to a Cellpose 3 model file (e.g. cyto3 or nucleitorch_0 downloaded "
        f"from {MODELS_URL}/ on a machine with internet access, or a model you trained) or put that "
        f"file in {model_dir} (set {MODEL_DIR_ENV} to choose the folder) and give its name; "
        f"cytoscreen never downloads models"
    )


def resolve_model(value: str | os.PathLike | None, *, key: str = "segment.model") -> ModelSpec:
    """Find the model file named by a config value, without any network access.

    Raises
    ------
    ModelError
        No value, or neither a file nor a file in Cellpose's model folder.
    """
    model_dir = cellpose_model_dir()
    text = str(value).strip() if value is not None else ""
    if not text:
        raise ModelError(_missing_message(key, None, model_dir))
    candidates = [Path(text).expanduser()]
    if os.sep not in text and "/" not in text:
        candidates.append(model_dir / BUILTIN_FILES.get(text, text))
    for cand in candidates:
        if cand.is_file():
            path = cand.resolve()
            source = "file" if cand == candidates[0] else f"model folder {model_dir}"
            spec = ModelSpec(name=text, path=str(path), sha256=io.sha256_file(path), source=source)
            logger.info("%s: %s (%s, sha256 %s)", key, spec.path, source, spec.sha256[:12])
            return spec
        if cand.exists():
            raise ModelError(f"{key}: {cand} is not a file; name a Cellpose model file")
    raise ModelError(_missing_message(key, text, model_dir))


def _refuse_download(url: str, dst: Any = None, progress: bool = True) -> None:
    raise ModelError(
        f"Cellpose tried to download {url}; cytoscreen runs offline, so set `segment.model` to a "
        f"model file or put the model in {cellpose_model_dir()} ({MODEL_DIR_ENV})"
    )


@contextlib.contextmanager
def offline_cellpose() -> Iterator[None]:
    """Within the block, any Cellpose model download raises :class:`ModelError` instead."""
    from cellpose import models as cp_models
    from cellpose import utils as cp_utils

    saved = cp_utils.download_url_to_file
    cp_utils.download_url_to_file = _refuse_download
    # cellpose.models calls utils.download_url_to_file through the module, so the line above
    # suffices; keep a guard on the module attribute too, in case a version imports it by name
    saved_models = getattr(cp_models, "download_url_to_file", None)
    if saved_models is not None:
        cp_models.download_url_to_file = _refuse_download
    try:
        yield
    finally:
        cp_utils.download_url_to_file = saved
        if saved_models is not None:
            cp_models.download_url_to_file = saved_models


def resolve_device(accelerator: str = "auto"):
    """The torch device for ``segment.accelerator``: a GPU when present (auto), or as asked
    (:func:`cytoscreen.compute.torch_device`).

    Raises
    ------
    ConfigError
        ``accelerator`` is not auto, cpu or gpu.
    ComputeError
        ``gpu`` asked for but no CUDA device is visible.
    """
    return compute.torch_device(accelerator, key="segment.accelerator")


def load_model(spec: ModelSpec, *, device=None):
    """A ``cellpose.models.CellposeModel`` with the weights of ``spec`` on ``device``.

    Raises
    ------
    ModelError
        The file is not a Cellpose 3 model (e.g. a Cellpose 4 / Cellpose-SAM file) or is corrupt.
    """
    import torch
    from cellpose import models as cp_models

    device = device if device is not None else torch.device("cpu")
    with offline_cellpose():
        try:
            model = cp_models.CellposeModel(pretrained_model=spec.path, device=device,
                                            gpu=device.type == "cuda")
        except ModelError:
            raise
        except AssertionError as err:  # cellpose asserts on Cellpose 4 files
            raise ModelError(
                f"{spec.path}: not a Cellpose 3 model ({' '.join(str(err).split())}); use a "
                f"Cellpose 3.x model file such as cyto3 or nucleitorch_0"
            ) from err
        except Exception as err:  # torch.load and state-dict loading raise many types
            raise ModelError(
                f"{spec.path}: cannot load as a Cellpose 3 model ({type(err).__name__}: {err}); "
                f"check that the file is complete and was written by Cellpose 3.x"
            ) from err
    return model


def model_diameter(model) -> float:
    """Mean object diameter (px) the model was trained on: ``diam_labels`` (Cellpose's default)."""
    value = float(getattr(model, "diam_labels", 0.0) or 0.0)
    if value <= 0:
        value = float(model.diam_mean)
    return value
