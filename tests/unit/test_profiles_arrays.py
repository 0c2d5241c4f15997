"""profiles.arrays.block_view: the block-manager view equals the Series-based check."""

import numpy as np
import pandas as pd
import pytest

from cytoscreen.profiles import arrays


def _frames():
    rng = np.random.default_rng(1)
    block = rng.normal(size=(6, 40)).astype(np.float32)  # (features, rows): read_profiles' layout
    df = pd.DataFrame(block.T, columns=[f"f{j}" for j in range(6)], copy=False)
    df.insert(0, "Metadata_Plate", ["P"] * 40)
    df.insert(4, "Metadata_x", np.arange(40))  # between features: the float block stays one
    yield df
    yield pd.DataFrame(rng.normal(size=(40, 5)), columns=list("abcde"))  # row-major float64
    mixed = pd.DataFrame({"a": rng.normal(size=40), "b": rng.normal(size=40).astype(np.float32)})
    yield mixed
    yield df.copy()


@pytest.mark.parametrize("i", range(4))
def test_manager_view_equals_the_series_check(i, monkeypatch):
    df = list(_frames())[i]
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    choices = [feats, feats[::-1], feats[::2], feats[1:2], [feats[0], feats[-1], feats[1]]]
    for cols in choices:
        for dtype in (np.float32, np.float64):
            fast = arrays.block_view(df, cols, dtype)
            with monkeypatch.context() as m:
                m.setattr(arrays, "_manager_view", lambda *a: False)
                slow = arrays.block_view(df, cols, dtype)
            assert (fast is None) == (slow is None), (i, cols, dtype)
            if fast is not None:
                assert not fast.flags.writeable
                np.testing.assert_array_equal(fast, df[cols].to_numpy(dtype))
                np.testing.assert_array_equal(fast, slow)
    assert arrays.block_view(df, feats, df[feats[0]].dtype.type) is not None or i == 2
