"""Training the novelty autoencoder with Lightning: wiring, determinism, calibration, detection."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
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
from cytoscreen.novelty.data import NoveltySplit
from cytoscreen.novelty.model import NoveltyAutoencoder, load_checkpoint
from cytoscreen.novelty.score import score_profiles
from cytoscreen.novelty.train import build_trainer, train
from tests.fixtures.novelty import novelty_config, synthetic_wells, to_sites

torch.set_num_threads(1)
# this machine may have srun installed without being a SLURM job; Lightning then hints at srun
pytestmark = pytest.mark.filterwarnings("ignore:The .srun. command is available")


def _auroc_vs_heldout_controls(novelty) -> float:
    """AUROC of treatment wells against the held-out calibration control wells."""
    sel = (novelty[NOVELTY_SPLIT] == "calibration") | (novelty[PERT_TYPE] == "trt")
    return roc_auc_score(novelty.loc[sel, PERT_TYPE] == "trt", novelty.loc[sel, NOVELTY_SCORE])


def test_fast_dev_run_wires_model_data_and_trainer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    df = synthetic_wells(n_plates=2, seed=0)
    cfg = novelty_config(trainer={"fast_dev_run": True})
    res = train(df, novelty=cfg, root_dir=tmp_path / "work")
    assert res.checkpoint.exists() and res.is_global_zero
    model, state = load_checkpoint(res.checkpoint)
    assert model.features == [f"DNA_test_{i}" for i in range(24)]
    assert NoveltySplit.from_dict(state["split"]) == res.split
    assert not (tmp_path / "lightning_logs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_seeded_two_epoch_run_checkpoint_reloads_and_scores_identically(tmp_path):
    df = synthetic_wells(n_plates=2, seed=1)
    cfg = novelty_config(trainer={"max_epochs": 2})
    res = train(df, novelty=cfg, root_dir=tmp_path / "a", log_dir=tmp_path / "metrics")
    assert res.epochs == 2 and res.checkpoint.name == "best-epoch=1.ckpt"  # loss still falling
    assert (tmp_path / "metrics" / "metrics.csv").exists()
    again = train(df, novelty=cfg, root_dir=tmp_path / "b")
    assert again.best_val_loss == res.best_val_loss  # seeded: same numbers

    model, state = load_checkpoint(res.checkpoint)
    split = NoveltySplit.from_dict(state["split"])
    assert split == res.split
    live = score_profiles(df, res.model.eval(), res.split).novelty
    reloaded = score_profiles(df, model, split).novelty
    lightning = score_profiles(df, NoveltyAutoencoder.load_from_checkpoint(res.checkpoint), split).novelty
    for cols in ([NOVELTY_SCORE, NOVELTY_PVALUE, NOVELTY_QVALUE], [NOVELTY_HIT, NOVELTY_SPLIT]):
        assert live[cols].equals(reloaded[cols])
        assert live[cols].equals(lightning[cols])


def test_controls_only_screen_gives_uniform_pvalues_and_few_hits(tmp_path):
    """Treatments drawn from the control distribution: p-values ~ U(0, 1), BH keeps hits <= 5%.

    The p-values of one screen share its calibration wells: each is uniform, but together they
    follow that screen's calibration sample, so a one-sample KS test on all of them rejects far too
    often.  Per screen, the two-sample KS test of treatment against calibration scores is the exact
    check; across screens (seeds) the one-sample KS test runs on a few p-values drawn per screen,
    few enough (24 per 96 calibration wells) that the shared calibration barely matters.
    """
    drawn, hits, tested = [], 0, 0
    for seed in range(8):
        df = synthetic_wells(n_plates=6, shift=0.0, seed=100 + seed)
        cfg = novelty_config(seed=seed, calibration_fraction=0.5, trainer={"max_epochs": 8})
        res = train(df, novelty=cfg, root_dir=tmp_path / str(seed))
        out = score_profiles(df, res.model, res.split, hit_q=0.05).novelty
        trt = out[out[PERT_TYPE] == "trt"]
        cal = out[out[NOVELTY_SPLIT] == "calibration"]
        assert len(cal) == 96 and len(trt) == 384
        assert scipy.stats.ks_2samp(trt[NOVELTY_SCORE], cal[NOVELTY_SCORE]).pvalue > 0.01
        p = trt[NOVELTY_PVALUE].to_numpy()
        assert abs(p.mean() - 0.5) < 0.1
        drawn.append(np.random.default_rng(seed).choice(p, size=24, replace=False))
        hits += int(trt[NOVELTY_HIT].sum())
        tested += len(trt)
    ks = scipy.stats.kstest(np.concatenate(drawn), "uniform")
    assert ks.pvalue > 0.01, ks
    assert hits / tested <= 0.05


def test_strong_phenotypes_score_above_controls(tmp_path):
    df = synthetic_wells(n_plates=4, shift=2.0, seed=11)
    res = train(df, novelty=novelty_config(trainer={"max_epochs": 30}), root_dir=tmp_path)
    scores = score_profiles(df, res.model, res.split)
    auroc = _auroc_vs_heldout_controls(scores.novelty)
    assert auroc >= 0.9, auroc
    assert scores.n_hits > 0
    hits = scores.novelty[scores.novelty[NOVELTY_HIT]]
    assert (hits[PERT_TYPE] == "trt").all()


def test_site_level_training_scores_one_row_per_well(tmp_path):
    wells = synthetic_wells(n_plates=3, shift=2.0, seed=5)
    sites = to_sites(wells, n_sites=2, seed=5)
    res = train(sites, novelty=novelty_config(trainer={"max_epochs": 20}), root_dir=tmp_path)
    scores = score_profiles(sites, res.model, res.split, site_aggregate="median")
    out = scores.novelty
    assert len(out) == len(wells) and SITE not in out.columns
    assert (out[N_SITES] == 2).all()
    assert len(scores.residuals) == len(sites) and SITE in scores.residuals.columns
    assert _auroc_vs_heldout_controls(out) >= 0.9


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
    cfg = novelty_config(trainer={"accelerator": "gpu", "devices": 1, "precision": "16-mixed",
                                  "max_epochs": 30})
    res = train(df, novelty=cfg, root_dir=tmp_path)
    model, state = load_checkpoint(res.checkpoint)  # saved from GPU, loaded on CPU
    scores = score_profiles(df, model, NoveltySplit.from_dict(state["split"]))
    assert _auroc_vs_heldout_controls(scores.novelty) >= 0.9
