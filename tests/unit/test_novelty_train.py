"""Training the novelty autoencoder with Lightning: wiring, determinism, calibration, detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cytoscreen.errors import ComputeError, ConfigError
from cytoscreen.io import (
    N_SITES,
    NOVELTY_HIT,
    NOVELTY_PVALUE,
    NOVELTY_QVALUE,
    NOVELTY_SCORE,
    NOVELTY_SPLIT,
    PERT_TYPE,
    SITE,
)
from cytoscreen.novelty.data import NoveltyFolds
from cytoscreen.novelty.model import load_checkpoint, save_checkpoint
from cytoscreen.novelty.score import score_profiles
from cytoscreen.novelty.settings import NoveltySettings
from cytoscreen.novelty.train import build_trainer, train
from tests.fixtures.novelty import novelty_config, synthetic_wells, to_sites

torch.set_num_threads(1)
# this machine may have srun installed without being a SLURM job; Lightning then hints at srun
pytestmark = pytest.mark.filterwarnings("ignore:The .srun. command is available")


def _settings(**overrides) -> NoveltySettings:
    return NoveltySettings.from_config(novelty_config(**overrides))


def _auroc_vs_controls(novelty) -> float:
    """AUROC of treatment wells against the (out-of-sample) control wells."""
    sel = (novelty[NOVELTY_SPLIT] == "crossfit") | (novelty[PERT_TYPE] == "trt")
    return roc_auc_score(novelty.loc[sel, PERT_TYPE] == "trt", novelty.loc[sel, NOVELTY_SCORE])


def test_fast_dev_run_wires_models_data_and_trainer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    df = synthetic_wells(n_plates=2, seed=0)
    res = train(df, settings=_settings(folds=3, trainer={"fast_dev_run": True}), root_dir=tmp_path / "work")
    assert res.is_global_zero and len(res.models) == 3 and len(res.folds) == 3
    save_checkpoint(res.crossfit, tmp_path / "work" / "model.ckpt")
    crossfit, record = load_checkpoint(tmp_path / "work" / "model.ckpt")
    assert list(crossfit.features) == [f"DNA_test_{i}" for i in range(24)]
    assert crossfit.folds == res.folds and NoveltyFolds.from_dict(record["folds"]) == res.folds
    assert not (tmp_path / "lightning_logs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_seeded_run_checkpoint_reloads_and_scores_identically(tmp_path):
    df = synthetic_wells(n_plates=2, seed=1)
    settings = _settings(folds=3, trainer={"max_epochs": 2})
    res = train(df, settings=settings, root_dir=tmp_path / "a", log_dir=tmp_path / "metrics")
    assert res.crossfit.epochs == (2, 2, 2)
    assert all((tmp_path / "metrics" / f"fold_{k}" / "metrics.csv").exists() for k in range(3))
    again = train(df, settings=settings, root_dir=tmp_path / "b")
    assert again.crossfit.best_val_loss == res.crossfit.best_val_loss  # seeded: same numbers
    assert len(set(res.crossfit.best_val_loss)) == 3  # three different models

    save_checkpoint(res.crossfit, tmp_path / "model.ckpt", provenance={"stage": "novelty"})
    crossfit, record = load_checkpoint(tmp_path / "model.ckpt")
    assert record["cytoscreen"] == {"stage": "novelty"} and crossfit.folds == res.folds
    live = score_profiles(df, res.crossfit).novelty
    reloaded = score_profiles(df, crossfit).novelty
    for cols in ([NOVELTY_SCORE, NOVELTY_PVALUE, NOVELTY_QVALUE], [NOVELTY_HIT, NOVELTY_SPLIT]):
        assert live[cols].equals(reloaded[cols])


@pytest.mark.parametrize("pvalue", ["gaussian", "conformal"])
def test_controls_only_screen_calibration_stays_valid(tmp_path, pvalue):
    """Treatments drawn from the control distribution: BH keeps hits <= 5% at q < 0.05, and the
    p-values are not anti-conservative (at most ~5% below 0.05 over screens).

    The p-values of one screen share its control scores, so they are checked across screens."""
    hits, tested, low = 0, 0, []
    for seed in range(4):
        df = synthetic_wells(n_plates=4, shift=0.0, seed=100 + seed)
        res = train(df, settings=_settings(seed=seed, trainer={"max_epochs": 8}), root_dir=tmp_path / str(seed))
        out = score_profiles(df, res.crossfit, hit_q=0.05, pvalue=pvalue).novelty
        trt = out[out[PERT_TYPE] == "trt"]
        ctrl = out[out[NOVELTY_SPLIT] == "crossfit"]
        assert len(ctrl) == 128 and len(trt) == 256
        # every control is scored out of sample: no memorised ~1e-8 scores
        assert ctrl[NOVELTY_SCORE].min() > 1e-3
        assert 0.5 < ctrl[NOVELTY_SCORE].median() / trt[NOVELTY_SCORE].median() < 2.0
        p = trt[NOVELTY_PVALUE].to_numpy()
        assert abs(p.mean() - 0.5) < 0.1
        low.append((p < 0.05).mean())
        hits += int(trt[NOVELTY_HIT].sum())
        tested += len(trt)
    assert hits / tested <= 0.05
    assert np.mean(low) <= 0.07, low


def test_one_96_well_plate_with_16_controls_null_and_detection(tmp_path):
    """A BBBC013-sized plate (16 negcon, 80 other wells): on a controls-only plate at most 5% of the
    wells are hits at q < 0.05 (over seeds), and strong phenotypes are still called."""
    hits, tested = 0, 0
    for seed in range(4):
        df = synthetic_wells(n_plates=1, negcon_cols=(1, 12), shift=0.0, seed=200 + seed)
        res = train(df, settings=_settings(seed=seed, trainer={"max_epochs": 10}), root_dir=tmp_path / str(seed))
        scores = score_profiles(df, res.crossfit, hit_q=0.05)
        assert scores.pvalue_method == "gaussian" and scores.n_controls == 16
        ctrl = scores.novelty[scores.novelty[NOVELTY_SPLIT] == "crossfit"]
        assert ctrl[NOVELTY_SCORE].min() > 1e-3  # out of sample
        hits += scores.n_hits
        tested += scores.n_tested
    assert tested == 4 * 80 and hits / tested <= 0.05, hits
    strong = synthetic_wells(n_plates=1, negcon_cols=(1, 12), shift=4.0, seed=300)
    res = train(strong, settings=_settings(trainer={"max_epochs": 30}), root_dir=tmp_path / "strong")
    out = score_profiles(strong, res.crossfit, hit_q=0.05).novelty
    trt = out[out[PERT_TYPE] == "trt"]
    assert trt[NOVELTY_HIT].mean() >= 0.8
    assert not out.loc[out[NOVELTY_SPLIT] == "crossfit", NOVELTY_HIT].any()


def test_strong_phenotypes_score_above_controls(tmp_path):
    df = synthetic_wells(n_plates=4, shift=2.0, seed=11)
    res = train(df, settings=_settings(trainer={"max_epochs": 30}), root_dir=tmp_path)
    scores = score_profiles(df, res.crossfit)
    auroc = _auroc_vs_controls(scores.novelty)
    assert auroc >= 0.9, auroc
    assert scores.n_hits > 0
    hits = scores.novelty[scores.novelty[NOVELTY_HIT]]
    assert (hits[PERT_TYPE] == "trt").all()


def test_site_level_training_scores_one_row_per_well(tmp_path):
    wells = synthetic_wells(n_plates=3, shift=2.0, seed=5)
    sites = to_sites(wells, n_sites=2, seed=5)
    res = train(sites, settings=_settings(trainer={"max_epochs": 20}), root_dir=tmp_path)
    assert res.crossfit.level == "site"
    scores = score_profiles(sites, res.crossfit, site_aggregate="median")
    out = scores.novelty
    assert len(out) == len(wells) and SITE not in out.columns
    assert (out[N_SITES] == 2).all()
    assert len(scores.residuals) == len(sites) and SITE in scores.residuals.columns
    assert _auroc_vs_controls(out) >= 0.9


def test_trainer_settings_errors(tmp_path):
    with pytest.raises(ConfigError, match="novelty.trainer.*not_a_trainer_arg"):
        build_trainer({"not_a_trainer_arg": 1}, root_dir=tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ComputeError, match="novelty.trainer"):
            build_trainer({"accelerator": "gpu", "devices": 1}, root_dir=tmp_path)


def test_progress_bar_follows_the_terminal(tmp_path):
    trainer, _ = build_trainer({"accelerator": "cpu"}, root_dir=tmp_path)
    assert trainer.progress_bar_callback is None  # pytest captures stderr: not a TTY
    assert trainer.default_root_dir == str(tmp_path)
    trainer, _ = build_trainer({"accelerator": "cpu"}, root_dir=tmp_path, progress_bar=True)
    assert trainer.progress_bar_callback is not None


@pytest.mark.gpu
def test_training_on_one_gpu(tmp_path):
    df = synthetic_wells(n_plates=4, shift=2.0, seed=11)
    settings = _settings(trainer={"accelerator": "gpu", "devices": 1, "precision": "16-mixed",
                                  "max_epochs": 30})
    res = train(df, settings=settings, root_dir=tmp_path)
    save_checkpoint(res.crossfit, tmp_path / "model.ckpt")
    crossfit, _ = load_checkpoint(tmp_path / "model.ckpt")  # saved from GPU, loaded on CPU
    scores = score_profiles(df, crossfit)
    assert _auroc_vs_controls(scores.novelty) >= 0.9
