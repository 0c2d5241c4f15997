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
    assert "Lints for" not in lint.stdout + lint.stderr
    assert "No validator found" not in lint.stdout + lint.stderr
    dry = snakemake(workdir, cli_env, "-n")
    assert dry.returncode == 0, dry.stderr
    for rule in ("ingest", "qc"):
        assert f"{rule}" in dry.stdout


def test_bad_config_is_one_clear_error(workdir, cli_env):
    (workdir / "config.yaml").write_text((workdir / "config.yaml").read_text() + "qc: {batch_size: 0}\n")
    res = snakemake(workdir, cli_env, "-n")
    assert res.returncode != 0 and "batch_size" in res.stdout + res.stderr


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
    # features: one row per site, float32 embeddings named <Channel>_<backbone>_<i>
    sites = pd.read_parquet(workdir / "results" / "SYN001" / "sites.parquet")
    feats = io.feature_columns(sites)
    assert len(sites) == 96 and feats[0] == "DNA_efficientnet_lite0_0000"
    assert all(sites[c].dtype == "float32" for c in feats[:50]) and sites[feats].notna().all().all()
    assert len(feats) == 3 * 1280  # EfficientNet-Lite0 pooled width, per channel
    # profiles: wells, normalized, screen-level selection and consensus
    # one site per well: a well whose only site failed QC has no profile (logged, not silent)
    wells = pd.read_parquet(workdir / "results" / "SYN001" / "wells.parquet")
    truth = pd.read_csv(tiny_screen / "truth" / "SYN001.tsv", sep="\t")
    n_failed = int((truth["blurred"] | truth["saturated"]).sum())
    assert len(wells) == 96 - n_failed and (wells[io.N_SITES] == 1).all()
    log = (workdir / "results" / "logs" / "profiles" / "aggregate" / "SYN001.log").read_text()
    assert f"{n_failed} group(s) have no site that passed QC and are left out" in log
    selected = pd.read_parquet(workdir / "results" / "screen" / "feature_selected.parquet")
    assert len(selected) == 192 - 2 * n_failed and 0 < len(io.feature_columns(selected)) < len(feats)
    consensus = pd.read_parquet(workdir / "results" / "screen" / "consensus.parquet")
    assert len(consensus) == consensus[[io.PERTURBATION, io.CONCENTRATION]].drop_duplicates().shape[0]
    # novelty: strong phenotypes (the poscon) score above negcon wells. The controls are scored out
    # of sample (cross-fitted), so their scores are a fair null, not near zero: every poscon well
    # scores above 3x the median negcon well, and the score separates the two (AUROC)
    from sklearn.metrics import roc_auc_score

    nov = pd.read_parquet(workdir / "results" / "screen" / "novelty" / "novelty.parquet")
    assert {io.NOVELTY_SCORE, io.NOVELTY_PVALUE, io.NOVELTY_QVALUE, io.NOVELTY_HIT} <= set(nov.columns)
    controls = nov[nov[io.PERT_TYPE].isin(["poscon", "negcon"])]
    negcon_median = controls.loc[controls[io.PERT_TYPE] == "negcon", io.NOVELTY_SCORE].median()
    assert controls.loc[controls[io.PERT_TYPE] == "poscon", io.NOVELTY_SCORE].min() > 3 * negcon_median
    assert roc_auc_score(controls[io.PERT_TYPE] == "poscon", controls[io.NOVELTY_SCORE]) >= 0.9
    # MoA + evaluation, reports
    moa = pd.read_parquet(workdir / "results" / "screen" / "moa.parquet")
    assert len(moa) == len(consensus) and io.feature_columns(moa) == []
    import json

    ev = json.loads((workdir / "results" / "screen" / "evaluation.json").read_text())
    assert ev["nsc"] > 0.5 and ev["map_moa"] > 0.5
    # dose: one row per compound at two or more doses (the synthetic compounds have two: no fit)
    dose = pd.read_parquet(workdir / "results" / "screen" / "novelty" / "dose.parquet")
    series = nov[nov[io.PERT_TYPE].isin(["trt", "poscon"])].groupby(io.PERTURBATION)[io.CONCENTRATION].nunique()
    assert sorted(dose[io.PERTURBATION]) == sorted(series.index[series >= 2])
    assert dose["readout"].nunique() == 1 and dose["fit_status"].eq("too_few_doses").all()
    for page in ("SYN001.html", "SYN002.html", "index.html"):
        html = (workdir / "reports" / page).read_text()
        assert "<html" in html.lower() and "https://" not in html
    assert 'id="dose-table"' in (workdir / "reports" / "SYN001.html").read_text()
    # a second run has nothing to do
    again = snakemake(workdir, cli_env, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
