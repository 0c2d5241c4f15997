"""``cytoscreen novelty train|score``: outputs, errors and exit codes, and DDP on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.io import (
    NOVELTY_HIT,
    NOVELTY_PLATE_ZPRIME,
    NOVELTY_PVALUE,
    NOVELTY_QVALUE,
    NOVELTY_ROBUST_Z,
    NOVELTY_SCORE,
    NOVELTY_SPLIT,
    PERT_TYPE,
    PLATE,
    WELL,
)
from tests.fixtures.novelty import synthetic_wells

torch.set_num_threads(1)
# this machine may have srun installed without being a SLURM job; Lightning then hints at srun
pytestmark = pytest.mark.filterwarnings("ignore:The .srun. command is available")
REPO = Path(__file__).resolve().parents[2]
FEATURES = [f"DNA_test_{i}" for i in range(24)]


def _write_config(path: Path, **trainer) -> Path:
    """Schema defaults for the model (a linear autoencoder), fewer epochs, one CPU device."""
    trainer = {"accelerator": "cpu", "devices": 1, "max_epochs": 60, **trainer}
    path.write_text(yaml.safe_dump({"novelty": {"trainer": trainer}}))
    return path


def _auroc(novelty: pd.DataFrame) -> float:
    sel = (novelty[NOVELTY_SPLIT] == "crossfit") | (novelty[PERT_TYPE] == "trt")
    return roc_auc_score(novelty.loc[sel, PERT_TYPE] == "trt", novelty.loc[sel, NOVELTY_SCORE])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One screen trained and scored through the CLI on one CPU device."""
    root = tmp_path_factory.mktemp("novelty_cli")
    wells = synthetic_wells(n_plates=4, shift=2.0, seed=21)
    io.write_parquet(wells, root / "feature_selected.parquet")
    cfg = _write_config(root / "config.yaml")
    out = root / "results" / "screen" / "novelty"
    rc = main(["novelty", "train", str(root / "feature_selected.parquet"), "--config", str(cfg),
               "--out", str(out / "model.ckpt"), "--threads", "1"])
    assert rc == 0
    rc = main(["novelty", "score", str(root / "feature_selected.parquet"), "--checkpoint",
               str(out / "model.ckpt"), "--config", str(cfg), "--out", str(out / "novelty.parquet"),
               "--residuals", str(out / "residuals.parquet")])
    assert rc == 0
    return {"root": root, "cfg": cfg, "out": out, "wells": wells}


def test_train_and_score_write_the_documented_outputs(trained):
    out, wells = trained["out"], trained["wells"]
    assert sorted(p.name for p in out.iterdir()) == [
        "model.ckpt", "model_metrics", "novelty.parquet", "residuals.parquet"
    ]  # no work folder or temp files left behind
    assert sorted(p.name for p in (out / "model_metrics").iterdir()) == [f"fold_{k}" for k in range(5)]
    assert (out / "model_metrics" / "fold_0" / "metrics.csv").exists()
    novelty = pd.read_parquet(out / "novelty.parquet")
    meta = [c for c in wells.columns if c.startswith("Metadata_")]
    assert list(novelty.columns) == [*meta, NOVELTY_SCORE, NOVELTY_PVALUE, NOVELTY_QVALUE,
                                     NOVELTY_HIT, NOVELTY_SPLIT, NOVELTY_ROBUST_Z, NOVELTY_PLATE_ZPRIME,
                                     io.NOVELTY_POSCON_Z, io.NOVELTY_POSCON_ZPRIME]
    assert len(novelty) == len(wells) and not novelty.duplicated([PLATE, WELL]).any()
    assert novelty[NOVELTY_HIT].dtype == bool
    assert set(novelty[NOVELTY_SPLIT]) == {"crossfit", "none"}
    assert _auroc(novelty) >= 0.9
    # the controls are scored out of sample: not memorised (in-sample scores were ~1e-8)
    ctrl = novelty[NOVELTY_SPLIT] == "crossfit"
    assert novelty.loc[ctrl, NOVELTY_SCORE].min() > 1e-3
    assert abs(novelty.loc[ctrl, NOVELTY_ROBUST_Z].median()) < 0.2
    residuals = pd.read_parquet(out / "residuals.parquet")
    assert list(residuals.columns) == list(wells.columns)
    assert (residuals[FEATURES].dtypes == np.float32).all()
    np.testing.assert_allclose(  # a control's residual is that of the one model that scored it
        (residuals.loc[ctrl, FEATURES].to_numpy(np.float64) ** 2).mean(axis=1),
        novelty.loc[ctrl, NOVELTY_SCORE], rtol=1e-5,
    )
    prov = io.read_provenance(out / "novelty.parquet")
    assert prov["stage"] == "novelty" and prov["checkpoint_sha256"] == io.sha256_file(out / "model.ckpt")
    assert prov["n_hits"] == int(novelty[NOVELTY_HIT].sum())
    assert prov["n_controls"] == 128 and prov["pvalue_method"] == "gaussian"
    assert set(prov["zprime_by_plate"]) == {"P1", "P2", "P3", "P4"}
    ckpt = torch.load(out / "model.ckpt", weights_only=True)
    assert ckpt["cytoscreen"]["stage"] == "novelty"
    assert ckpt["hyper_parameters"]["features"] == FEATURES
    assert len(ckpt["state_dicts"]) == 5 and len(ckpt["folds"]["held_out"]) == 5


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_few_control_wells_warn_and_still_score(tmp_path, capsys):
    """16 control wells on one 96-well plate (as BBBC013): warn-free run, NaN-free scores; 2 control
    wells: a warning, no model, NaN scores and no hits, exit 0 so MoA and reports still run."""
    wells = synthetic_wells(n_plates=1, negcon_cols=(1, 12), shift=3.0, seed=0)  # 16 control wells
    io.write_parquet(wells, tmp_path / "wells.parquet")
    cfg = _write_config(tmp_path / "config.yaml")
    args = ["--config", str(cfg)]
    assert main(["novelty", "train", str(tmp_path / "wells.parquet"), *args,
                 "--out", str(tmp_path / "model.ckpt")]) == 0
    assert main(["novelty", "score", str(tmp_path / "wells.parquet"), "--checkpoint",
                 str(tmp_path / "model.ckpt"), *args, "--out", str(tmp_path / "novelty.parquet")]) == 0
    novelty = pd.read_parquet(tmp_path / "novelty.parquet")
    assert (novelty[NOVELTY_SPLIT] == "crossfit").sum() == 16 and novelty[NOVELTY_SCORE].notna().all()
    assert novelty.loc[novelty[NOVELTY_SPLIT] == "none", NOVELTY_QVALUE].notna().all()

    few = wells[(wells[PERT_TYPE] == "trt") | wells[WELL].isin(["A01", "B01"])]
    io.write_parquet(few, tmp_path / "few.parquet")
    assert main(["novelty", "train", str(tmp_path / "few.parquet"), *args,
                 "--out", str(tmp_path / "few.ckpt")]) == 0
    assert "only 2 negcon control well(s)" in capsys.readouterr().err
    assert main(["novelty", "score", str(tmp_path / "few.parquet"), "--checkpoint",
                 str(tmp_path / "few.ckpt"), *args, "--out", str(tmp_path / "few_novelty.parquet")]) == 0
    out = pd.read_parquet(tmp_path / "few_novelty.parquet")
    assert len(out) == len(few) and out[NOVELTY_SCORE].isna().all() and not out[NOVELTY_HIT].any()


def test_threads_flag_overrides_the_config(tmp_path, monkeypatch):
    from cytoscreen.novelty import command

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"novelty": {"threads": 3}}))
    parser = __import__("argparse").ArgumentParser()
    command.add_parser(parser.add_subparsers())
    _, settings = command._settings(parser.parse_args(["novelty", "score", "t.parquet", "--checkpoint",
                                                       "m.ckpt", "--out", "o.parquet", "--config", str(cfg)]))
    assert settings.threads == 3 and seen == [3]
    _, settings = command._settings(parser.parse_args(["novelty", "score", "t.parquet", "--checkpoint",
                                                       "m.ckpt", "--out", "o.parquet", "--config", str(cfg),
                                                       "--threads", "1"]))
    assert settings.threads == 1 and seen == [3, 1]


def test_nan_features_exit_4(tmp_path, capsys):
    wells = synthetic_wells(n_plates=2, seed=0)
    wells.loc[[0, 9], "DNA_test_4"] = np.nan
    io.write_parquet(wells, tmp_path / "wells.parquet")
    rc = main(["novelty", "train", str(tmp_path / "wells.parquet"), "--config",
               str(_write_config(tmp_path / "config.yaml")), "--out", str(tmp_path / "m.ckpt")])
    assert rc == 4
    assert "2 NaN or infinite value(s) in 1 feature column(s) (DNA_test_4)" in _error_line(capsys)


def test_scoring_a_table_with_other_features_exit_5(trained, tmp_path, capsys):
    wells = trained["wells"].drop(columns=["DNA_test_3"])
    io.write_parquet(wells, tmp_path / "wells.parquet")
    rc = main(["novelty", "score", str(tmp_path / "wells.parquet"), "--checkpoint",
               str(trained["out"] / "model.ckpt"), "--config", str(trained["cfg"]),
               "--out", str(tmp_path / "novelty.parquet")])
    assert rc == 5
    line = _error_line(capsys)
    assert "feature columns differ from the checkpoint's (24 in the checkpoint, 23 in the table)" in line
    assert "DNA_test_3" in line
    assert not (tmp_path / "novelty.parquet").exists()


def test_missing_or_foreign_checkpoint_exit_5(trained, tmp_path, capsys):
    table = str(trained["root"] / "feature_selected.parquet")
    rc = main(["novelty", "score", table, "--checkpoint", str(tmp_path / "none.ckpt"),
               "--out", str(tmp_path / "n.parquet")])
    assert rc == 5 and "checkpoint not found" in _error_line(capsys)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    rc = main(["novelty", "score", table, "--checkpoint", str(tmp_path / "foreign.ckpt"),
               "--out", str(tmp_path / "n.parquet")])
    assert rc == 5 and "not a cross-fitted cytoscreen novelty checkpoint" in _error_line(capsys)


def test_bad_trainer_settings_exit_3(trained, tmp_path, capsys):
    cfg = _write_config(tmp_path / "config.yaml", not_a_trainer_arg=1)
    rc = main(["novelty", "train", str(trained["root"] / "feature_selected.parquet"), "--config",
               str(cfg), "--out", str(tmp_path / "m.ckpt")])
    assert rc == 3 and "not_a_trainer_arg" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # work folder removed


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_device(trained, tmp_path):
    """Lightning DDP (gloo) with devices=2 through the CLI, as on N GPUs, versus the 1-device run."""
    cfg = _write_config(tmp_path / "config.yaml", devices=2, strategy="ddp")
    table = str(trained["root"] / "feature_selected.parquet")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("CYTOSCREEN_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cytoscreen.cli", "-vv", "novelty", "train", table, "--config", str(cfg),
         "--out", str(tmp_path / "model.ckpt"), "--threads", "1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stderr or "MEMBER: 2/2" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "model.ckpt", "model_metrics"]
    rc = main(["novelty", "score", table, "--checkpoint", str(tmp_path / "model.ckpt"),
               "--config", str(cfg), "--out", str(tmp_path / "novelty.parquet")])
    assert rc == 0
    ddp = pd.read_parquet(tmp_path / "novelty.parquet")
    one = pd.read_parquet(trained["out"] / "novelty.parquet")
    assert ddp[NOVELTY_SPLIT].equals(one[NOVELTY_SPLIT])  # same seeded folds on every rank
    assert _auroc(ddp) >= 0.9 and _auroc(one) >= 0.9
    cal_ddp = ddp.loc[ddp[NOVELTY_SPLIT] == "crossfit", NOVELTY_SCORE].median()
    cal_one = one.loc[one[NOVELTY_SPLIT] == "crossfit", NOVELTY_SCORE].median()
    assert 0.5 < cal_ddp / cal_one < 2.0, (cal_ddp, cal_one)
