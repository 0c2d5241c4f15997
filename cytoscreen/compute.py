"""Where a stage computes: device counts, the accelerator, Lightning's cluster environment and the
job resources the workflow requests.

Device settings are read as Lightning reads them: an int is a number of devices, a list or tuple
holds device ids, and a string is either a number (``"2"``), comma-separated ids (``"0,1"`` is two
devices, ids 0 and 1; ``"3,"`` is one, id 3), ``"-1"`` (all visible) or ``"auto"``.

Snakemake's SLURM executor submits each job as one task (``srun -n1``) that holds all the GPUs the
rule asked for.  Lightning's ``SLURMEnvironment`` expects one task per device and would run a single
process there, silently using one of N devices; so in a one-task job with several devices on one
node, Lightning's own launcher starts the N processes (``LightningEnvironment``).  When the
allocation does have one task per device (``srun`` per device, as on a multi-node run),
``SLURMEnvironment`` takes over, with ``auto_requeue`` as configured.

The module imports no torch at import time, so ``workflow/rules/*.smk`` can use it for a fast dry run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from cytoscreen.errors import ComputeError, ConfigError

logger = logging.getLogger(__name__)

#: Accelerator settings of the features and segment stages.
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "gpu")
#: ``accelerator`` values that mean GPUs (Lightning accepts both).
GPU_ACCELERATORS: tuple[str, ...] = ("gpu", "cuda")


def device_count(devices: Any, *, unknown: int | None = 1) -> int | None:
    """Devices per node in a Lightning ``devices`` setting (see the module docstring).

    ``"auto"``, ``-1`` and anything unreadable give ``unknown``: the workflow cannot know how many
    devices a node has (1 by default, so set an explicit number to request several GPUs).
    """
    if isinstance(devices, bool):
        return unknown
    if isinstance(devices, int):
        return devices if devices >= 0 else unknown
    if isinstance(devices, list | tuple):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        ids = [d for d in text.split(",") if d.strip()]
        return len(ids) if all(d.strip().isdigit() for d in ids) else unknown
    if text.isdigit():
        return int(text)
    return unknown


def on_gpu(trainer: Mapping[str, Any]) -> bool:
    """True when a trainer section's ``accelerator`` asks for GPUs."""
    return str(trainer.get("accelerator", "auto")).strip().lower() in GPU_ACCELERATORS


def gpu_resources(trainer: Mapping[str, Any]) -> dict[str, int]:
    """``{"gpu": devices}`` for a rule that trains on GPUs (at least 1), else ``{}``."""
    if not on_gpu(trainer):
        return {}
    return {"gpu": max(device_count(trainer.get("devices", 1)) or 1, 1)}


def threads_per_process(trainer: Mapping[str, Any], threads: int) -> int:
    """Torch threads of each training process: CPU DDP processes share the job's threads."""
    if on_gpu(trainer):
        return max(int(threads), 1)
    return max(int(threads) // max(device_count(trainer.get("devices", 1)) or 1, 1), 1)


def resolve_accelerator(accelerator: str = "auto", *, key: str = "accelerator") -> str:
    """``"gpu"`` or ``"cpu"`` for an ``auto``/``cpu``/``gpu`` setting: ``auto`` is a GPU when one
    is visible.

    Raises
    ------
    ConfigError
        ``accelerator`` is not one of :data:`ACCELERATORS`.
    ComputeError
        ``gpu`` asked for but no CUDA device is visible.
    """
    value = str(accelerator).strip().lower()
    if value not in ACCELERATORS:
        raise ConfigError(f"{key}: choose one of {', '.join(ACCELERATORS)}, not {accelerator!r}")
    if value == "cpu":
        return "cpu"
    import torch

    cuda = torch.cuda.is_available()
    if value == "gpu" and not cuda:
        raise ComputeError(
            f"{key} is gpu but no CUDA device is visible here; run on a GPU node or set "
            f"`{key}: auto` (or cpu)"
        )
    return "gpu" if cuda else "cpu"


def torch_device(accelerator: str = "auto", *, key: str = "accelerator"):
    """The ``torch.device`` for an ``auto``/``cpu``/``gpu`` setting (:func:`resolve_accelerator`)."""
    import torch

    return torch.device("cuda" if resolve_accelerator(accelerator, key=key) == "gpu" else "cpu")


def lightning_cluster_plugins(devices: Any, num_nodes: int = 1, *, auto_requeue: bool = True) -> list[Any]:
    """Cluster-environment plugins for ``Trainer(plugins=...)``; empty outside SLURM."""
    if "SLURM_JOB_ID" not in os.environ:
        return []
    n_devices = device_count(devices, unknown=None)
    ntasks = os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS"))
    if n_devices is not None and n_devices > 1 and num_nodes == 1 and ntasks == "1":
        from lightning_fabric.plugins.environments import LightningEnvironment

        logger.info("SLURM job with one task and %d devices: Lightning starts the processes", n_devices)
        return [LightningEnvironment()]
    if n_devices is not None and ntasks == str(n_devices * num_nodes):
        from lightning_fabric.plugins.environments import SLURMEnvironment

        logger.info("SLURM job with one task per device (auto_requeue=%s)", auto_requeue)
        return [SLURMEnvironment(auto_requeue=auto_requeue)]
    return []
