"""The workflow through a real SLURM (`--profile workflow/profiles/slurm`), against a local run.

Needs a SLURM whose `sinfo` answers: the one-node cluster of tests/slurm/start.sh (CI starts it;
set CYTOSCREEN_START_SLURM=1 to let the fixture start it) or a real one. Every Snakemake call has
a hard timeout; on timeout its process group is killed and the run's SLURM jobs are cancelled, so a
hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, write_config
from tests.integration.test_resume import FAST_CONFIG, make_workdir, reference_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

START = REPO / "tests" / "slurm" / "start.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
# What the runs build: () is the workflow's default target (rule all).
TARGETS: tuple[str, ...] = ()
TIMEOUT_S = 900
# Status checks every few seconds (the profile keeps the plugin's 40 s for real clusters).
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "5")
TEST_ACCOUNT = "cytoscreen"  # created by tests/slurm/start.sh


def _sinfo_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """A SLURM that answers, started by tests/slurm/start.sh when CYTOSCREEN_START_SLURM=1.

    With CYTOSCREEN_START_SLURM=1 (CI) it skips, with the reason, only when SLURM cannot run here
    (start.sh exits 3: not root, or the Debian packages cannot be installed); any other start
    failure, or a missing executor plugin, fails the tests. Without it, no answering SLURM skips.
    """
    wanted = os.environ.get("CYTOSCREEN_START_SLURM") == "1"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        message = "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]' or '.[cluster]')"
        if wanted:
            pytest.fail(message)
        pytest.skip(message)
    if wanted:  # idempotent: when the cluster is up, start.sh only checks it
        try:
            res = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=1200)
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"tests/slurm/start.sh did not finish in 1200 s: {err.stdout}{err.stderr}")
        if res.returncode == 3:
            pytest.skip(res.stderr.strip() or "tests/slurm/start.sh: SLURM cannot run here")
        assert res.returncode == 0, f"tests/slurm/start.sh failed:\n{res.stdout}\n{res.stderr}"
    if not _sinfo_answers():
        pytest.skip("no SLURM answers (sinfo); run `bash tests/slurm/start.sh` or set CYTOSCREEN_START_SLURM=1")
    accounts = subprocess.run(["sacctmgr", "-n", "-P", "show", "account", "format=account"],
                              capture_output=True, text=True, timeout=30).stdout.split()
    env = {}
    if TEST_ACCOUNT in accounts:  # our test cluster: exercise the account variable of the profile
        env["CYTOSCREEN_SLURM_ACCOUNT"] = TEST_ACCOUNT
    return env


def snakemake(workdir: Path, env: dict, *args: str, targets: tuple[str, ...] = TARGETS,
              timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run Snakemake in its own process group; on timeout kill it and cancel its SLURM jobs."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args, *targets]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=workdir,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        cancel_jobs_of(workdir)
        pytest.fail(f"snakemake did not finish in {timeout} s (killed; its SLURM jobs cancelled):\n{out[-3000:]}"
                    f"\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def cancel_jobs_of(workdir: Path) -> None:
    """scancel the jobs the plugin submitted from this working directory (their -D)."""
    listing = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True, timeout=30).stdout
    ids = [line.split()[0] for line in listing.splitlines() if line.split()[1:] == [str(workdir)]]
    if ids:
        subprocess.run(["scancel", *ids], timeout=30, check=False)


def slurm_jobs(run_log: str) -> pd.DataFrame:
    """sacct rows (job, state, allocated TRES, job name) of the SLURM jobs a Snakemake run submitted."""
    ids = [line.split("SLURM jobid ")[1].split()[0] for line in run_log.splitlines() if "SLURM jobid " in line]
    assert ids, "the run submitted no SLURM job"
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,AllocTRES,Account"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["job", "state", "tres", "account"])


def parquet_outputs(workdir: Path) -> dict[str, Path]:
    results = workdir / "results"
    # declared outputs only: not work files (.sites.parquet.shards/, .<name>.<random>.tmp, .config/)
    return {str(p.relative_to(results)): p for p in results.rglob("*.parquet")
            if not any(part.startswith(".") or part in ("logs", "benchmarks") for part in p.relative_to(results).parts)}


def cli_environment(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("CYTOSCREEN_DEBUG", None)
    env.update(extra)
    return env


def test_workflow_on_slurm_equals_local_run(slurm, request, tiny_screen, tmp_path):
    env = cli_environment(slurm)
    local = reference_run(request, tiny_screen, env)  # --workflow-profile workflow/profiles/default --cores 2
    cluster = make_workdir(tmp_path / "slurm", tiny_screen)

    # --max-threads: the test node has 2 CPUs, fewer than some rules ask for
    ran = snakemake(cluster, env, "--profile", str(PROFILE), *FAST_STATUS, "--max-threads", "2")
    log = ran.stdout + ran.stderr
    assert ran.returncode == 0, log[-6000:]
    jobs = slurm_jobs(log)
    assert (jobs["state"] == "COMPLETED").all(), jobs.to_string()
    if "CYTOSCREEN_SLURM_ACCOUNT" in env:
        assert (jobs["account"] == env["CYTOSCREEN_SLURM_ACCOUNT"]).all(), jobs.to_string()
    # per-plate rules were grouped: one SLURM job per plate for ingest + qc
    assert "group_plate_qc" in log and "group_plate_features" in log, log[-3000:]

    expected, got = parquet_outputs(local), parquet_outputs(cluster)
    assert sorted(got) == sorted(expected)
    for name in sorted(expected):
        pd.testing.assert_frame_equal(pd.read_parquet(got[name]), pd.read_parquet(expected[name]), obj=name)
    again = snakemake(cluster, env, "--profile", str(PROFILE), "--dry-run")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_failing_rule_on_slurm_names_its_log(slurm, tmp_path, tiny_screen):
    screen = tmp_path / "screen"
    shutil.copytree(tiny_screen, screen)
    platemap = screen / "platemaps" / "SYN001.tsv"
    rows = platemap.read_text().splitlines()
    platemap.write_text("\n".join(rows[:-8]) + "\n")  # wells with images but no platemap row: ingest fails
    write_config(tmp_path / "config.yaml", screen / "plates.tsv", results="results", reports="reports",
                 **FAST_CONFIG)
    env = cli_environment(slurm)
    ran = snakemake(tmp_path, env, "--profile", str(PROFILE), *FAST_STATUS, "--max-threads", "2", "--retries", "0",
                    targets=("results/SYN001/images.parquet",))
    log = ran.stdout + ran.stderr
    assert ran.returncode != 0
    assert "results/logs/ingest/SYN001.log" in log, log[-4000:]
    assert "no platemap row" in log  # show-failed-logs prints the rule's log
    assert not (tmp_path / "results" / "SYN001" / "images.parquet").exists()


def test_gpu_rules_ask_for_gpus_on_the_gpu_partition(slurm, tmp_path, tiny_screen):
    partitions = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30).stdout.split()
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=30).stdout
    if "gpu" not in partitions or "gpu:" not in gres:
        pytest.skip("this SLURM has no partition named gpu with gres/gpu (tests/slurm/start.sh makes one)")
    fast = {**FAST_CONFIG, "features": {**FAST_CONFIG["features"], "gpus": 1}}
    write_config(tmp_path / "config.yaml", tiny_screen / "plates.tsv", results="results", reports="reports", **fast)
    env = cli_environment({**slurm, "CYTOSCREEN_SLURM_GPU_PARTITION": "gpu"})
    ran = snakemake(tmp_path, env, "--profile", str(PROFILE), *FAST_STATUS, "--max-threads", "2",
                    targets=("results/SYN001/normalized.parquet",))
    log = ran.stdout + ran.stderr
    assert ran.returncode == 0, log[-6000:]
    submitted = dict(
        (line.split("SLURM jobid ")[1].split()[0], line.split("/slurm_logs/")[1].split("/")[0])
        for line in log.splitlines() if "SLURM jobid " in line and "/slurm_logs/" in line
    )
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(submitted), "-o", "JobID,Partition,AllocTRES"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    jobs = {job: (partition, tres) for job, partition, tres in (line.split("|") for line in out.splitlines())}
    for job, name in submitted.items():
        partition, tres = jobs[job]
        if name.startswith("group_plate_features"):  # features (+ well profiles): one GPU, GPU partition
            assert partition == "gpu" and "gres/gpu=1" in tres, (name, partition, tres)
        else:
            assert partition != "gpu" and "gres/gpu" not in tres, (name, partition, tres)
    assert any(name.startswith("group_plate_features") for name in submitted.values()), submitted
