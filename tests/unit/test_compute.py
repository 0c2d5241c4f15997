"""cytoscreen.compute: device counts as Lightning reads them, job resources, the accelerator and
Lightning's cluster environment inside SLURM jobs of the shapes Snakemake submits."""

from __future__ import annotations

import pytest
from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

from cytoscreen import compute
from cytoscreen.compute import device_count, gpu_resources, lightning_cluster_plugins, threads_per_process
from cytoscreen.config import load_config
from cytoscreen.errors import ComputeError, ConfigError


# --- device counts and job resources (was test_novelty_resources.py) -------------------------------
@pytest.mark.parametrize(
    ("devices", "count"),
    [(1, 1), (4, 4), ([0, 1, 2], 3), ("0,1", 2), ("2", 2), ("auto", 1), (-1, 1), ("3,", 1), ("-1", 1)],
)
def test_device_count(devices, count):
    assert device_count(devices) == count


def test_comma_string_means_device_ids_as_lightning_reads_it():
    # "0,1" is two devices (ids 0 and 1), not device 0 and 1 of something else, nor unknown
    assert device_count("0,1", unknown=None) == 2
    assert device_count(" 0, 1 ", unknown=None) == 2
    assert device_count("auto", unknown=None) is None
    assert device_count(-1, unknown=None) is None


def test_gpus_are_requested_only_when_training_on_gpu():
    defaults = load_config(None)["novelty"]["trainer"]
    assert defaults == {"accelerator": "auto", "devices": 1, "strategy": "auto", "num_nodes": 1,
                        "precision": "32-true", "max_epochs": 300}
    assert gpu_resources(defaults) == {}
    assert gpu_resources({"accelerator": "gpu", "devices": 4}) == {"gpu": 4}
    assert gpu_resources({"accelerator": "cuda", "devices": [0, 1]}) == {"gpu": 2}
    assert gpu_resources({"accelerator": "gpu", "devices": "0,1"}) == {"gpu": 2}
    assert gpu_resources({"accelerator": "cpu", "devices": 2}) == {}


def test_cpu_ddp_processes_share_the_threads():
    assert threads_per_process({"accelerator": "cpu", "devices": 2}, 4) == 2
    assert threads_per_process({"accelerator": "cpu", "devices": 8}, 4) == 1
    assert threads_per_process({"accelerator": "gpu", "devices": 2}, 4) == 4
    assert threads_per_process({"accelerator": "cpu", "devices": "0,1"}, 4) == 2


# --- accelerator ----------------------------------------------------------------------------------
def test_resolve_accelerator(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute.resolve_accelerator("auto") == "cpu"
    assert compute.resolve_accelerator("cpu") == "cpu"
    assert compute.torch_device("auto").type == "cpu"
    with pytest.raises(ComputeError, match="features.accelerator is gpu but no CUDA"):
        compute.resolve_accelerator("gpu", key="features.accelerator")
    with pytest.raises(ConfigError, match="segment.accelerator: choose one of auto, cpu, gpu"):
        compute.resolve_accelerator("tpu", key="segment.accelerator")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute.resolve_accelerator("auto") == "gpu"
    assert compute.resolve_accelerator("gpu") == "gpu"
    assert compute.resolve_accelerator("cpu") == "cpu"


# --- Lightning cluster environment (was test_cluster.py) -------------------------------------------
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
    (ids,) = lightning_cluster_plugins("0,1", 1)  # two device ids: two processes, as for devices=2
    assert isinstance(ids, LightningEnvironment)
    assert lightning_cluster_plugins("auto", 1) == []  # unknown count: leave it to Lightning


def test_one_task_per_device_uses_slurm_environment(slurm_env):
    slurm_env.setenv("SLURM_JOB_ID", "7")
    slurm_env.setenv("SLURM_NTASKS", "8")
    slurm_env.setenv("SLURM_NTASKS_PER_NODE", "4")
    (plugin,) = lightning_cluster_plugins(4, 2, auto_requeue=False)
    assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue is False
