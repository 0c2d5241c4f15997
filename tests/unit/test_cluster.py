"""Lightning's cluster environment inside SLURM jobs of the shapes Snakemake submits."""

import pytest
from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

from cytoscreen.cluster import lightning_cluster_plugins


@pytest.fixture()
def slurm_env(monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_outside_slurm_lightning_decides(slurm_env):
    assert lightning_cluster_plugins(4) == []


def test_one_task_job_with_several_devices_launches_its_own_processes(slurm_env):
    slurm_env.setenv("SLURM_JOB_ID", "7")
    slurm_env.setenv("SLURM_NTASKS", "1")
    (plugin,) = lightning_cluster_plugins(4, 1)
    assert isinstance(plugin, LightningEnvironment)
    (single,) = lightning_cluster_plugins(1, 1)  # one device, one task: SLURM's own environment
    assert isinstance(single, SLURMEnvironment)


def test_one_task_per_device_uses_slurm_environment(slurm_env):
    slurm_env.setenv("SLURM_JOB_ID", "7")
    slurm_env.setenv("SLURM_NTASKS", "8")
    slurm_env.setenv("SLURM_NTASKS_PER_NODE", "4")
    (plugin,) = lightning_cluster_plugins(4, 2, auto_requeue=False)
    assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue is False
