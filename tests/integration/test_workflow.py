"""The real Snakemake workflow on a tiny synthetic screen in a temp folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cytoscreen import io
from tests.conftest import REPO, write_config


def snakemake(workdir: Path, env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=workdir)


@pytest.fixture()
def workdir(tiny_screen, tmp_path) -> Path:
    write_config(tmp_path / "config.yaml", tiny_screen / "plates.tsv", results="results", reports="reports")
    return tmp_path


def test_lint_and_dry_run(workdir, cli_env):
    lint = snakemake(workdir, cli_env, "--lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "no issues found" in (lint.stdout + lint.stderr).lower() or "Lints for" not in lint.stdout
    dry = snakemake(workdir, cli_env, "-n")
    assert dry.returncode == 0, dry.stderr
    for rule in ("ingest", "qc"):
        assert f"{rule}" in dry.stdout


def test_bad_config_is_one_clear_error(workdir, cli_env):
    (workdir / "config.yaml").write_text((workdir / "config.yaml").read_text() + "qc: {batch_size: 0}\n")
    res = snakemake(workdir, cli_env, "-n")
    assert res.returncode != 0 and "batch_size" in res.stderr


@pytest.mark.slow
def test_workflow_runs_on_tiny_screen(workdir, cli_env, tiny_screen):
    res = snakemake(workdir, cli_env)
    assert res.returncode == 0, res.stderr[-4000:]
    for plate in ("SYN001", "SYN002"):
        images = pd.read_parquet(workdir / "results" / plate / "images.parquet")
        assert len(images) == 96 * 3 and set(images[io.CHANNEL]) == {"DNA", "Tubulin", "Actin"}
        assert images[io.WELL].str.fullmatch(r"[A-H](0[1-9]|1[0-2])").all()
        qc = pd.read_parquet(workdir / "results" / plate / "qc.parquet")
        truth = pd.read_csv(tiny_screen / "truth" / f"{plate}.tsv", sep="\t")
        assert len(qc) == 96 and int(qc["QC_blurry"].sum()) == int(truth["blurred"].sum())
        assert io.read_provenance(workdir / "results" / plate / "qc.parquet")["stage"] == "qc"
        assert (workdir / "results" / "logs" / "qc" / f"{plate}.log").exists()
    # a second run has nothing to do
    again = snakemake(workdir, cli_env, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
