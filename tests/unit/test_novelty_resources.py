"""Resources of the novelty training rule, worked out from novelty.trainer (no torch needed)."""

from __future__ import annotations

import pytest

from cytoscreen.config import load_config
from cytoscreen.novelty.resources import device_count, gpu_resources, threads_per_process


@pytest.mark.parametrize(
    ("devices", "count"), [(1, 1), (4, 4), ([0, 1, 2], 3), ("0,1", 2), ("2", 2), ("auto", 1), (-1, 1)]
)
def test_device_count(devices, count):
    assert device_count(devices) == count


def test_gpus_are_requested_only_when_training_on_gpu():
    defaults = load_config(None)["novelty"]["trainer"]
    assert defaults == {"accelerator": "auto", "devices": 1, "strategy": "auto", "num_nodes": 1,
                        "precision": "32-true", "max_epochs": 300}
    assert gpu_resources(defaults) == {}
    assert gpu_resources({"accelerator": "gpu", "devices": 4}) == {"gpu": 4}
    assert gpu_resources({"accelerator": "cuda", "devices": [0, 1]}) == {"gpu": 2}
    assert gpu_resources({"accelerator": "cpu", "devices": 2}) == {}


def test_cpu_ddp_processes_share_the_threads():
    assert threads_per_process({"accelerator": "cpu", "devices": 2}, 4) == 2
    assert threads_per_process({"accelerator": "cpu", "devices": 8}, 4) == 1
    assert threads_per_process({"accelerator": "gpu", "devices": 2}, 4) == 4
