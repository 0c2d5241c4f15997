"""What a killed or failed run leaves behind, through the CLI (issue 15 item 5).

- ``io.atomic_path`` writes ``.<name>.<pid>.<random>.tmp`` beside the output; a process killed
  mid-write leaves it, and the next write of that output removes it (a running writer's is kept).
- ``cytoscreen features`` leaves no ``.sites.parquet.shards/`` when it fails, and a rerun removes
  the shards of an earlier run.
- An error raised inside a DataLoader worker is one clean ``error:`` line with the worker's own
  message, not the worker's traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.fixtures.features import make_plate, write_tables


def cytoscreen(*args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("CYTOSCREEN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "cytoscreen.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture()
def plate(tmp_path) -> tuple[Path, Path, pd.DataFrame]:
    """(config, the plate's results folder, images) of a 4-site plate with the tiny test backbone."""
    images, qc = make_plate(tmp_path / "img", size=32, sites=1)
    results = tmp_path / "results" / "P1"
    write_tables(results, images, qc)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "results": str(tmp_path / "results"),
        "features": {"backbone": "test_tiny", "num_workers": 0, "accelerator": "cpu", "threads": 1},
    }))
    return config, results, images


def _killed_mid_write(out: Path) -> Path:
    """Run a writer that SIGKILLs itself inside io.atomic_path(out); return the temporary it left."""
    code = ("import os, signal, sys\nfrom cytoscreen import io\n"
            "with io.atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half a table')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, timeout=60)
    assert res.returncode == -signal.SIGKILL
    (left,) = out.parent.glob(f".{out.name}.*.tmp")
    return left


def test_rerun_removes_what_a_killed_run_left(plate):
    config, results, _ = plate
    out = results / "sites.parquet"
    killed = _killed_mid_write(out)
    assert not out.exists()
    older = results / ".sites.parquet.k2jd81.tmp"  # written before temporaries carried a pid
    older.write_bytes(b"x")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        running = results / f".sites.parquet.{sleeper.pid}.abc123.tmp"  # a writer still at work
        running.write_bytes(b"x")
        shards = results / ".sites.parquet.shards"
        shards.mkdir()
        (shards / "rank00000.parquet").write_bytes(b"not parquet")

        res = cytoscreen("features", "--config", config, "--plate", "P1")
        assert res.returncode == 0, res.stderr[-3000:]
        assert len(pd.read_parquet(out)) == 4
        assert not killed.exists() and not older.exists() and not shards.exists()
        assert running.exists()
        assert sorted(p.name for p in results.iterdir()) == sorted(
            ["images.parquet", "qc.parquet", "sites.parquet", running.name])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_dataloader_worker_error_is_one_clean_line(plate):
    config, results, images = plate
    cfg = yaml.safe_load(config.read_text())
    cfg["features"].update(num_workers=1, scaling="image")  # the broken image is first read in a worker
    config.write_text(yaml.safe_dump(cfg))
    broken = Path(images["path"].iloc[-1])
    broken.write_bytes(b"II*\x00garbage")

    res = cytoscreen("features", "--config", config, "--plate", "P1")
    assert res.returncode == 4  # InputDataError
    assert "Traceback" not in res.stderr and "DataLoader worker" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, res.stderr[-3000:]
    assert errors[0].endswith(f"error: {broken}: cannot read image (no pixel data; the file is truncated or corrupt)")
    # nothing half-done is kept: no table, no shards, no temporaries
    assert sorted(p.name for p in results.iterdir()) == ["images.parquet", "qc.parquet"]
