"""Control-well split and DataModule of the novelty stage (no training here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.io import PERT_TYPE, PLATE, SITE, WELL
from cytoscreen.novelty.data import (
    NO_SPLIT,
    NoveltyDataModule,
    NoveltySplit,
    check_profiles,
    split_wells,
    well_keys,
)
from tests.fixtures.novelty import synthetic_wells, to_sites

torch.set_num_threads(1)


def _negcon_keys(df: pd.DataFrame) -> set:
    return {k for k, t in zip(well_keys(df), df[PERT_TYPE], strict=True) if t == "negcon"}


def test_split_is_a_seeded_partition_of_the_control_wells_with_exact_sizes():
    df = synthetic_wells(n_plates=4, seed=0)  # 4 plates x 32 negcon wells
    split = split_wells(df, val_fraction=0.15, calibration_fraction=0.3, seed=7)
    sets = [set(split.train), set(split.val), set(split.calibration)]
    assert set.union(*sets) == _negcon_keys(df)
    assert sum(len(s) for s in sets) == 128  # disjoint
    assert (len(split.calibration), len(split.val), len(split.train)) == (38, 19, 71)
    assert split_wells(df, seed=7) == split_wells(df, seed=7)
    assert split_wells(df, seed=7) != split_wells(df, seed=8)


def test_split_is_stratified_by_plate():
    df = synthetic_wells(n_plates=4, seed=0)
    split = split_wells(df, calibration_fraction=0.25, val_fraction=0.25, seed=1)
    for name in ("train", "val", "calibration"):
        per_plate = pd.Series([p for p, _ in getattr(split, name)]).value_counts()
        assert set(per_plate.index) == {"P1", "P2", "P3", "P4"}
        assert per_plate.max() - per_plate.min() <= 1, name


def test_split_round_trips_through_a_plain_dict_and_labels_rows():
    df = synthetic_wells(n_plates=2, seed=0)
    split = split_wells(df, seed=0)
    assert NoveltySplit.from_dict(split.to_dict()) == split
    labels = split.labels(well_keys(df))
    assert set(labels[df[PERT_TYPE].to_numpy() == "trt"]) == {NO_SPLIT}
    assert (labels == "calibration").sum() == len(split.calibration)


def test_site_level_rows_of_a_well_never_cross_sets():
    sites = to_sites(synthetic_wells(n_plates=2, seed=0), n_sites=3)
    dm = NoveltyDataModule(sites, seed=3)
    dm.setup("fit")
    assert dm.level == "site"
    labels = pd.Series(dm.split.labels(well_keys(sites)))
    per_well = labels.groupby([sites[PLATE], sites[WELL]]).nunique()
    assert per_well.max() == 1
    n_rows = {name: len(dm._sets[name]) for name in ("train", "val", "calibration")}
    assert n_rows == {name: 3 * len(getattr(dm.split, name)) for name in n_rows}
    assert SITE in sites.columns


def test_datamodule_builds_float32_sets_and_saves_the_split_in_its_state():
    df = synthetic_wells(n_plates=2, seed=0)
    dm = NoveltyDataModule(df, batch_size=16, seed=0)
    assert dm.state_dict() == {}
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))[0]
    assert batch.dtype == torch.float32 and batch.shape == (16, 24)
    labels = dm.split.labels(well_keys(df))
    feats = df.columns[6:]
    for name in ("train", "val", "calibration"):  # each set holds exactly its wells' rows
        expected = df.loc[labels == name, feats].to_numpy(np.float32)
        np.testing.assert_array_equal(dm._sets[name].tensors[0].numpy(), expected)
    assert len(dm.test_dataloader().dataset) == len(dm.split.calibration)
    state = dm.state_dict()
    assert NoveltySplit.from_dict(state["split"]) == dm.split
    assert state["reference"] == "negcon" and state["level"] == "well"
    other = NoveltyDataModule(df, seed=0)
    other.load_state_dict(state)  # same table and seed: accepted
    changed = NoveltyDataModule(df, seed=1)
    with pytest.raises(InputDataError, match="split stored in the checkpoint differs"):
        changed.load_state_dict(state)


def test_too_few_control_wells_names_the_count_and_the_minimum():
    df = synthetic_wells(n_plates=1, negcon_cols=(1, 12), seed=0)  # 16 negcon wells
    with pytest.raises(InputDataError) as err:
        split_wells(df, min_calibration_wells=10)
    msg = str(err.value)
    assert "16 well(s)" in msg and "calibration 5 < 10" in msg and "min_calibration_wells" in msg


def test_no_control_wells_at_all():
    df = synthetic_wells(n_plates=1, seed=0)
    df[PERT_TYPE] = "trt"
    with pytest.raises(InputDataError, match=r"0 well\(s\) with Metadata_pert_type == 'negcon'"):
        split_wells(df)


def test_fractions_that_leave_nothing_to_train_on_are_a_config_error():
    df = synthetic_wells(n_plates=1, seed=0)
    with pytest.raises(ConfigError, match="sum to less than 1"):
        split_wells(df, val_fraction=0.5, calibration_fraction=0.5)


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
    with pytest.raises(InputDataError, match="missing column.*Metadata_pert_type"):
        check_profiles(df.drop(columns=[PERT_TYPE]))
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
