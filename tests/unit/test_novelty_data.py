"""Cross-fitting folds and DataModule of the novelty stage (no training here)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.io import PERT_TYPE, PERTURBATION, PLATE, SITE, WELL
from cytoscreen.novelty.data import (
    CROSSFIT,
    NO_SPLIT,
    NoveltyDataModule,
    NoveltyFolds,
    check_profiles,
    crossfit_folds,
    well_keys,
)
from cytoscreen.novelty.settings import NoveltySettings
from tests.fixtures.novelty import novelty_config, synthetic_wells, to_sites

torch.set_num_threads(1)


def _negcon_keys(df: pd.DataFrame) -> set:
    return {k for k, t in zip(well_keys(df), df[PERT_TYPE], strict=True) if t == "negcon"}


def test_folds_partition_the_control_wells_seeded_with_balanced_sizes():
    df = synthetic_wells(n_plates=4, seed=0)  # 4 plates x 32 negcon wells
    folds = crossfit_folds(df, folds=5, val_fraction=0.15, seed=7)
    assert len(folds) == 5
    held = [set(f) for f in folds.held_out]
    assert set.union(*held) == _negcon_keys(df)
    assert sum(len(f) for f in held) == 128  # disjoint
    assert sorted(len(f) for f in held) == [25, 25, 26, 26, 26]
    for k in range(5):
        train, val = set(folds.train(k)), set(folds.val[k])
        assert not (train | val) & held[k]  # model k never sees fold k
        assert train | val == _negcon_keys(df) - held[k] and not train & val
        assert len(val) == round(0.15 * (128 - len(held[k])))
    assert crossfit_folds(df, seed=7) == crossfit_folds(df, seed=7)
    assert crossfit_folds(df, seed=7) != crossfit_folds(df, seed=8)


def test_folds_are_stratified_by_plate():
    df = synthetic_wells(n_plates=4, seed=0)
    folds = crossfit_folds(df, folds=4, seed=1)
    for fold in folds.held_out:
        per_plate = pd.Series([p for p, _ in fold]).value_counts()
        assert set(per_plate.index) == {"P1", "P2", "P3", "P4"}
        assert per_plate.max() - per_plate.min() <= 1


def test_folds_round_trip_through_a_plain_dict_and_label_rows():
    df = synthetic_wells(n_plates=2, seed=0)
    folds = crossfit_folds(df, seed=0)
    assert NoveltyFolds.from_dict(folds.to_dict()) == folds
    keys = well_keys(df)
    labels, fold_of = folds.labels(keys), folds.fold_of(keys)
    is_trt = df[PERT_TYPE].to_numpy() == "trt"
    assert set(labels[is_trt]) == {NO_SPLIT} and (fold_of[is_trt] == -1).all()
    assert set(labels[~is_trt]) == {CROSSFIT}
    assert np.bincount(fold_of[~is_trt]).tolist() == [len(f) for f in folds.held_out]
    with pytest.raises(ValueError, match="not a novelty cross-fitting record"):
        NoveltyFolds.from_dict({"held_out": []})


def test_few_control_wells_warn_and_still_give_folds(caplog):
    df = synthetic_wells(n_plates=1, negcon_cols=(1,), seed=0)  # 8 negcon wells
    with caplog.at_level(logging.WARNING):
        folds = crossfit_folds(df, folds=5, val_fraction=0.15, seed=0)
    assert len(folds) == 5 and sum(len(f) for f in folds.held_out) == 8
    assert [len(v) for v in folds.val] == [1] * 5  # round(0.15 * 6 or 7) = 1
    tiny = df[(df[PERT_TYPE] == "trt") | df[WELL].isin(["A01", "B01", "C01"])]
    with caplog.at_level(logging.WARNING):
        folds = crossfit_folds(tiny, folds=5, seed=0)
    assert len(folds) == 3 and all(len(f) == 1 for f in folds.held_out)
    assert folds.val == ((), (), ())  # 2 training wells each: no validation wells
    assert "3 folds instead of novelty.folds = 5" in caplog.text
    assert "early stopping watches the training loss" in caplog.text


def test_no_or_two_control_wells_give_no_folds_and_a_warning(caplog):
    df = synthetic_wells(n_plates=1, seed=0)
    df[PERT_TYPE] = "trt"
    df[PERTURBATION] = "x"  # no DMSO either (the negcon rule's fallback)
    with caplog.at_level(logging.WARNING):
        folds = crossfit_folds(df)
    assert len(folds) == 0 and folds.controls == ()
    assert "only 0 negcon control well(s)" in caplog.text


def test_controls_follow_the_one_negcon_rule():
    df = synthetic_wells(n_plates=1, seed=0)
    expected = _negcon_keys(df)
    df[PERT_TYPE] = df[PERT_TYPE].map({"negcon": " NegCon", "trt": "trt"})
    assert set(crossfit_folds(df).controls) == expected
    # no negcon pert_type at all: the DMSO wells are the controls
    assert set(crossfit_folds(df.assign(Metadata_pert_type="trt")).controls) == expected


def test_site_level_rows_of_a_well_stay_in_its_fold():
    sites = to_sites(synthetic_wells(n_plates=2, seed=0), n_sites=3)
    folds = crossfit_folds(sites, seed=3)
    fold_of = pd.Series(folds.fold_of(well_keys(sites)))
    per_well = fold_of.groupby([sites[PLATE], sites[WELL]]).nunique()
    assert per_well.max() == 1
    dm = NoveltyDataModule(sites, train_wells=folds.train(0), val_wells=folds.val[0])
    dm.setup("fit")
    assert dm.level == "site" and SITE in sites.columns
    assert len(dm._sets["train"]) == 3 * len(folds.train(0))
    assert len(dm._sets["val"]) == 3 * len(folds.val[0])


def test_datamodule_holds_exactly_its_wells_rows_as_float32():
    df = synthetic_wells(n_plates=2, seed=0)
    folds = crossfit_folds(df, seed=0)
    dm = NoveltyDataModule(df, train_wells=folds.train(1), val_wells=folds.val[1], batch_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))[0]
    assert batch.dtype == torch.float32 and batch.shape == (16, 24)
    keys = well_keys(df)
    feats = df.columns[6:]
    for name, wells in (("train", folds.train(1)), ("val", folds.val[1])):
        expected = df.loc[[k in set(wells) for k in keys], feats].to_numpy(np.float32)
        np.testing.assert_array_equal(dm._sets[name].tensors[0].numpy(), expected)
    # no validation wells: validation runs on the training rows
    same = NoveltyDataModule(df, train_wells=folds.train(1), val_wells=())
    same.setup("fit")
    np.testing.assert_array_equal(same._sets["val"].tensors[0].numpy(), same._sets["train"].tensors[0].numpy())


def test_settings_from_config():
    settings = NoveltySettings.from_config(novelty_config(folds=3, threads=2))
    assert settings.folds == 3 and settings.threads == 2 and settings.hidden_sizes == (32,)
    assert settings.exclude_pert_types == ("empty",) and settings.trainer["accelerator"] == "cpu"
    assert settings.model_kwargs()["latent_size"] == 4
    with pytest.raises(ConfigError, match="unknown key"):
        NoveltySettings.from_config({"calibration_fraction": 0.3})
    with pytest.raises(ConfigError, match="folds must be at least 2"):
        settings.replace(folds=1)
    with pytest.raises(ConfigError, match="novelty.pvalue"):
        settings.replace(pvalue="bootstrap")
    with pytest.raises(AttributeError):
        settings.folds = 4  # frozen


def test_nan_features_are_reported_with_count_and_columns():
    df = synthetic_wells(n_plates=1, seed=0)
    df.loc[[3, 5], "DNA_test_2"] = np.nan
    df.loc[7, "DNA_test_9"] = np.inf
    with pytest.raises(InputDataError) as err:
        check_profiles(df, source="wells.parquet")
    msg = str(err.value)
    assert msg.startswith("wells.parquet: 3 NaN or infinite value(s) in 2 feature column(s)")
    assert "DNA_test_2, DNA_test_9" in msg and "3 row(s)" in msg


def test_missing_key_columns_and_duplicate_wells():
    df = synthetic_wells(n_plates=1, seed=0)
    with pytest.raises(InputDataError, match="missing column.*Metadata_Plate"):
        check_profiles(df.drop(columns=[PLATE]))
    assert len(check_profiles(df.drop(columns=[PERT_TYPE]))) == 24  # controls may come from DMSO
    with pytest.raises(InputDataError, match="listed more than once.*P1 A01"):
        check_profiles(pd.concat([df, df.iloc[:1]], ignore_index=True))


@pytest.mark.parametrize(
    ("env", "zero"),
    [({}, True), ({"LOCAL_RANK": "1"}, False), ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
     ({"LOCAL_RANK": "0"}, True), ({"RANK": "3", "LOCAL_RANK": "0"}, False),
     ({"SLURM_PROCID": "2"}, False), ({"SLURM_PROCID": "0"}, True)],
)
def test_rank_zero_is_known_before_the_trainer_starts(monkeypatch, env, zero):
    from cytoscreen.novelty.train import is_rank_zero_process

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert is_rank_zero_process() is zero
