"""Lightning's cluster environment for where a stage runs (local, or a SLURM job).

Snakemake's SLURM executor submits each job as one task (``srun -n1``) that holds all the GPUs
the rule asked for. Lightning's ``SLURMEnvironment`` expects one task per device and would run a
single process there, silently using one of N devices; so in a one-task job with several devices
on one node, Lightning's own launcher starts the N processes (``LightningEnvironment``). When the
allocation does have one task per device (a job launched with ``srun`` per device, as on a
multi-node run), ``SLURMEnvironment`` takes over, with ``auto_requeue`` as configured.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def _count(devices: Any) -> int | None:
    if isinstance(devices, int):
        return devices
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and devices.strip().isdigit():
        return int(devices)
    return None


def lightning_cluster_plugins(devices: Any, num_nodes: int = 1, *, auto_requeue: bool = True) -> list[Any]:
    """Cluster-environment plugins for ``Trainer(plugins=...)``; empty outside SLURM."""
    if "SLURM_JOB_ID" not in os.environ:
        return []
    n_devices = _count(devices)
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
