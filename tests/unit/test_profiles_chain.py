"""profile_chain: the accuracy hook the MoA benchmark uses on BBBC021."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.profiles import consensus, feature_select, normalize
from cytoscreen.profiles.chain import ProfileChainResult, profile_chain
from tests.fixtures.profiles import bbbc021_wells, synthetic_wells


def test_chain_on_bbbc021_equals_the_steps():
    wells = bbbc021_wells()
    res = profile_chain(wells)
    assert isinstance(res, ProfileChainResult)
    norm = normalize(wells)
    pd.testing.assert_frame_equal(res.normalized, norm)
    sel = feature_select(norm)
    pd.testing.assert_frame_equal(res.feature_selected, sel.profiles)
    pd.testing.assert_frame_equal(res.consensus, consensus(sel.profiles))
    assert len(res.consensus) == 21  # compound x concentration
    assert res.selection["kept"] == io.feature_columns(res.feature_selected)
    assert len(res.feature_selected) == len(wells)


def test_chain_options():
    wells = synthetic_wells(plates=2, wells=60, features=8, negcon=40)
    res = profile_chain(
        wells, normalize_method="standardize", reference="negcon", by=("Metadata_Plate",),
        operations=("variance_threshold",), spherize="ZCA-cor", consensus_method="modz",
        consensus_by=("Metadata_perturbation",),
    )
    feats = io.feature_columns(res.feature_selected)
    ref = res.feature_selected[wells[io.PERT_TYPE] == "negcon"][feats].to_numpy(np.float64)
    assert np.abs(np.cov(ref.T) - np.eye(len(feats))).max() < 1e-3
    assert sorted(res.consensus[io.PERTURBATION]) == ["DMSO", "c0", "c1", "c2", "c3"]
