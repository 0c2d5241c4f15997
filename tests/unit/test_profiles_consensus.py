"""Consensus: median and MODZ by hand, treatment columns and their fallbacks, metadata kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.io import N_WELLS
from cytoscreen.profiles import consensus
from cytoscreen.profiles.consensus import modz_weights
from tests.fixtures.profiles import bbbc021_wells, synthetic_wells


def wells() -> pd.DataFrame:
    return pd.DataFrame(
        {
            io.PLATE: ["P1", "P1", "P2", "P2", "P1"],
            io.WELL: ["A01", "A02", "B01", "B02", "A03"],
            io.PERTURBATION: ["x", "y", "x", "y", "x"],
            io.CONCENTRATION: [1.0, 1.0, 1.0, 1.0, 2.0],
            io.MOA: ["m1", "m2", "m1", "m2", "m1"],
            "f": np.array([1, 10, 3, 20, 7], dtype=np.float32),
            "g": np.array([0, 1, 4, 1, 7], dtype=np.float32),
        }
    )


def test_median_by_hand():
    out = consensus(wells())
    assert out[io.PERTURBATION].tolist() == ["x", "y", "x"]
    assert out[io.CONCENTRATION].tolist() == [1.0, 1.0, 2.0]
    assert out["f"].tolist() == [2.0, 15.0, 7.0]
    assert out[N_WELLS].tolist() == [2, 2, 1]
    assert io.MOA in out and io.PLATE not in out and io.WELL not in out
    assert out["f"].dtype == np.float32


def test_modz_weights_by_hand():
    x = np.array([[1, 2, 3, 4.0], [1, 2, 3, 5.0], [4, 3, 2, 1.0]])
    w = modz_weights(x, method="pearson")
    c = np.corrcoef(x)
    raw = np.array([
        np.mean([max(c[0, 1], 0), max(c[0, 2], 0)]),
        np.mean([max(c[1, 0], 0), max(c[1, 2], 0)]),
        np.mean([max(c[2, 0], 0), max(c[2, 1], 0)]),
    ])
    raw = np.maximum(raw, 0.01)
    np.testing.assert_allclose(w, np.round(raw / raw.sum(), 4))
    assert modz_weights(x[:1]).tolist() == [1.0]


def test_modz_single_replicate_is_itself():
    out = consensus(wells(), method="modz")
    assert out["f"].iloc[2] == 7.0
    assert out["g"].iloc[2] == 7.0


def test_fallback_columns_on_bbbc021():
    out = consensus(bbbc021_wells())
    assert len(out) == 21
    assert {"Metadata_Compound", "Metadata_Concentration", "Metadata_moa"} <= set(out.columns)
    assert out.loc[out["Metadata_Compound"] == "DMSO", N_WELLS].item() == 18


def test_no_concentration_groups_by_perturbation():
    out = consensus(wells().drop(columns=[io.CONCENTRATION]))
    assert out[io.PERTURBATION].tolist() == ["x", "y"]
    assert out[N_WELLS].tolist() == [3, 2]


def test_explicit_columns_and_errors():
    out = consensus(synthetic_wells(), by=[io.MOA])
    assert sorted(out[io.MOA]) == ["control", "moa0", "moa1"]
    with pytest.raises(InputDataError, match="column Metadata_x not in the table"):
        consensus(wells(), by=["Metadata_x"])
    with pytest.raises(InputDataError, match="column Metadata_perturbation not in the table"):
        consensus(wells().drop(columns=[io.PERTURBATION]))
    with pytest.raises(ConfigError, match="unknown consensus method"):
        consensus(wells(), method="mean")
    with pytest.raises(InputDataError, match="share their"):
        consensus(pd.concat([wells(), wells().iloc[[0]]]))
