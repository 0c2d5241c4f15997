"""Resume after a crash: kill -9 a local Snakemake run in the middle of the features stage, rerun.

The documented local command (``--workflow-profile workflow/profiles/default``, which sets
``rerun-incomplete``) is killed with SIGKILL together with the job it was running, as when a node
dies. The rerun (after ``--unlock``, which a killed Snakemake always needs) must finish, redo only
the outputs that were missing or incomplete, and leave Parquet tables equal to an uninterrupted run.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, write_config

# The stage the run is killed in: one plate's output exists, another plate's job is running.
KILL_OUTPUT = "sites.parquet"
# Per-plate outputs of the stages up to the kill point (planned again only where missing).
PLATE_OUTPUTS = ("images.parquet", "qc.parquet", "sites.parquet")
UPSTREAM_OUTPUTS = PLATE_OUTPUTS[: PLATE_OUTPUTS.index(KILL_OUTPUT) + 1]
# What every run builds: () is the workflow's default target (rule all).
TARGETS: tuple[str, ...] = ()
TIMEOUT_S = 900
# Orchestration tests: the tiny random backbone, a few epochs, a small permutation null.
FAST_CONFIG = {"features": {"backbone": "test_tiny", "num_workers": 0, "threads": 1},
               "novelty": {"trainer": {"max_epochs": 3}}, "moa": {"null_size": 100}}
_REFERENCE = pytest.StashKey[Path]()


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """The documented local command (two cores: the thread counts of the SLURM test's jobs)."""
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
            "--workflow-profile", str(REPO / "workflow" / "profiles" / "default"),
            "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args, *TARGETS]


def run(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, env=env,
                         timeout=TIMEOUT_S, cwd=workdir)
    return res


def incomplete_outputs(workdir: Path) -> set[str]:
    """Outputs of the jobs Snakemake has started and not finished (its .snakemake/incomplete markers)."""
    folder = workdir / ".snakemake" / "incomplete"
    if not folder.is_dir():
        return set()
    names = set()
    for marker in folder.iterdir():
        try:
            names.add(base64.urlsafe_b64decode(marker.name.encode()).decode())
        except ValueError:  # e.g. "migration_underway"
            continue
    return names


def job_outputs(res: subprocess.CompletedProcess) -> set[str]:
    """Outputs of the jobs a Snakemake run (or dry run, its plan) lists: its "output:" lines."""
    return {name.strip() for line in (res.stdout + res.stderr).splitlines()
            if line.strip().startswith("output:") for name in line.split(":", 1)[1].split(",")}


def parquet_outputs(workdir: Path) -> dict[str, Path]:
    results = workdir / "results"
    # declared outputs only: not work files (.sites.parquet.shards/, .<name>.<random>.tmp, .config/)
    return {str(p.relative_to(results)): p for p in results.rglob("*.parquet")
            if not any(part.startswith(".") or part in ("logs", "benchmarks") for part in p.relative_to(results).parts)}


def assert_same_tables(left: Path, right: Path) -> None:
    a, b = parquet_outputs(left), parquet_outputs(right)
    assert sorted(a) == sorted(b)
    for name in sorted(a):
        pd.testing.assert_frame_equal(pd.read_parquet(a[name]), pd.read_parquet(b[name]), obj=name)


def make_workdir(path: Path, screen: Path) -> Path:
    """A working directory with the tiny screen's config (FAST_CONFIG settings)."""
    path.mkdir(parents=True)
    write_config(path / "config.yaml", screen / "plates.tsv", results="results", reports="reports", **FAST_CONFIG)
    return path


def reference_run(request: pytest.FixtureRequest, screen: Path, env: dict) -> Path:
    """An uninterrupted local run of the tiny screen, made once per session (also used by test_slurm)."""
    stash = request.config.stash
    if _REFERENCE not in stash:
        workdir = make_workdir(request.getfixturevalue("tmp_path_factory").mktemp("reference") / "run", screen)
        res = run(workdir, env)
        assert res.returncode == 0, res.stderr[-4000:]
        stash[_REFERENCE] = workdir
    return stash[_REFERENCE]


@pytest.mark.slow
def test_kill_in_features_stage_then_rerun_redoes_only_missing(request, tiny_screen, tmp_path, cli_env):
    reference = reference_run(request, tiny_screen, cli_env)

    crashed = make_workdir(tmp_path / "crashed", tiny_screen)
    proc = subprocess.Popen(snakemake_cmd(crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=cli_env, cwd=crashed, start_new_session=True)
    running: set[str] = set()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            done = list((crashed / "results").glob(f"*/{KILL_OUTPUT}"))
            running = {name for name in incomplete_outputs(crashed) if name.endswith(KILL_OUTPUT)}
            if done and running:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed in the features stage"
        assert done and running, "timed out waiting for the features stage"
    finally:
        # SIGKILL to Snakemake and the job it runs, as when the node dies
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    # killed mid-way: the table being written is not there, or is marked incomplete; no half-written file
    for name in running:
        path = crashed / name
        if path.exists():
            pq.read_metadata(path)  # a complete Parquet file (atomic rename), redone as incomplete
    for path in parquet_outputs(crashed).values():
        pq.read_metadata(path)

    # the plan: only missing or incomplete outputs are redone
    unlock = run(crashed, cli_env, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    dry = run(crashed, cli_env, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    plan = job_outputs(dry)
    existed = {f"results/{name}" for name in parquet_outputs(crashed)} - running
    upstream = {f"results/{plate}/{name}" for plate in ("SYN001", "SYN002") for name in UPSTREAM_OUTPUTS}
    assert existed & upstream, "nothing was kept from the killed run"
    assert not plan & existed, f"complete outputs are planned again: {sorted(plan & existed)}"
    assert upstream - existed <= plan, f"missing outputs not planned: {sorted(upstream - existed - plan)}"
    assert running <= plan, "the outputs of the killed job are not redone"

    again = run(crashed, cli_env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert job_outputs(again) == plan, "the rerun did other jobs than its dry run planned"
    assert_same_tables(reference, crashed)
    nothing = run(crashed, cli_env, "-n")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
