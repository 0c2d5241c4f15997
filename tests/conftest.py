"""Shared fixtures: tiny synthetic plates and config files in tmp folders.

Hand-built tables for one stage live in ``tests/fixtures/<stage>.py`` (imported by its tests); the
report screen fixture there is registered for every test module below.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cytoscreen.synth import default_settings, synth_screen

pytest_plugins = ["tests.fixtures.report"]

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
CHANNELS = {"w1": "DNA", "w2": "Tubulin", "w3": "Actin"}


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def _has_slurm() -> bool:
    import subprocess

    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    need_slurm = any("slurm" in item.keywords for item in items)
    skip_slurm = pytest.mark.skip(reason="needs a running SLURM (sinfo does not answer); run "
                                  "`bash tests/slurm/start.sh` or set CYTOSCREEN_START_SLURM=1")
    has_cuda = _has_cuda() if any("gpu" in item.keywords for item in items) else False
    has_slurm = (_has_slurm() or os.environ.get("CYTOSCREEN_START_SLURM") == "1") if need_slurm else False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "slurm" in item.keywords and not has_slurm:
            item.add_marker(skip_slurm)


def write_config(path: Path, plates_tsv: Path, **sections) -> Path:
    """Write a workflow config for a test screen; ``sections`` are merged top-level keys."""
    cfg = {"plates": str(plates_tsv), "results": str(path.parent / "results"),
           "reports": str(path.parent / "reports"), "channels": dict(CHANNELS)}
    cfg.update(sections)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def tiny_screen(tmp_path_factory) -> Path:
    """Two seeded 96-well synthetic plates, one site per well, 128 px images (read-only: copy to change)."""
    out = tmp_path_factory.mktemp("tiny_screen")
    synth_screen(out, plates=2, wells=96, sites=1, seed=3, settings=default_settings(128), masks=True)
    return out


@pytest.fixture()
def tiny_plate(tiny_screen, tmp_path) -> Path:
    """A writable copy of the first plate of ``tiny_screen`` with its own plates.tsv and config."""
    out = tmp_path / "screen"
    shutil.copytree(tiny_screen, out)
    plates = pd.read_csv(out / "plates.tsv", sep="\t")
    plates.iloc[:1].to_csv(out / "plates.tsv", sep="\t", index=False)
    write_config(out / "config.yaml", out / "plates.tsv")
    return out


@pytest.fixture()
def cli_env() -> dict[str, str]:
    """Environment whose PATH finds this interpreter's `cytoscreen` and `snakemake`."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("CYTOSCREEN_DEBUG", None)
    return env
