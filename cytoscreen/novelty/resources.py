"""Job resources of the novelty training rule, worked out from ``novelty.trainer``.

Plain Python (no torch) so ``workflow/rules/novelty.smk`` can import it for a fast dry run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GPU_ACCELERATORS = ("gpu", "cuda")


def device_count(devices: Any) -> int:
    """Devices per node in ``novelty.trainer.devices``: an int, a list of ids, ``"0,1"`` or ``auto``.

    ``auto`` and ``-1`` (all visible devices) count as 1: the workflow cannot know how many a node
    has, so set an explicit number to request several GPUs.
    """
    if isinstance(devices, list | tuple):
        return max(len(devices), 1)
    text = str(devices).strip()
    if "," in text:
        return max(len([d for d in text.split(",") if d.strip()]), 1)
    if text.isdigit():
        return max(int(text), 1)
    return 1


def on_gpu(trainer: Mapping[str, Any]) -> bool:
    """True when ``novelty.trainer.accelerator`` asks for GPUs."""
    return str(trainer.get("accelerator", "auto")).lower() in GPU_ACCELERATORS


def gpu_resources(trainer: Mapping[str, Any]) -> dict[str, int]:
    """``{"gpu": devices}`` for the training rule when it trains on GPUs, else ``{}``."""
    return {"gpu": device_count(trainer.get("devices", 1))} if on_gpu(trainer) else {}


def threads_per_process(trainer: Mapping[str, Any], threads: int) -> int:
    """Torch threads of each training process: CPU DDP processes share the job's threads."""
    if on_gpu(trainer):
        return max(int(threads), 1)
    return max(int(threads) // device_count(trainer.get("devices", 1)), 1)
