"""Reference rows of the profile operations: "negcon" is plate.negcon_mask, the one rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io, plate
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles.reference import reference_mask


def _table(pert_types, compounds=None) -> pd.DataFrame:
    df = pd.DataFrame({io.PERT_TYPE: pert_types, "f": np.arange(len(pert_types), dtype=float)})
    if compounds is not None:
        df["Metadata_Compound"] = compounds
    return df


def test_negcon_is_the_plate_rule_case_and_blank_insensitive():
    # the profiles copy used to be case-sensitive: " NegCon" was not a control there
    df = _table(["negcon", " NegCon", "trt", "NEGCON ", "poscon"])
    mask, rule = reference_mask(df, "negcon")
    assert mask.tolist() == [True, True, False, True, False]
    assert np.array_equal(mask, plate.negcon_mask(df))
    assert rule == "Metadata_pert_type == 'negcon'"


def test_negcon_falls_back_to_dmso_without_pert_type():
    df = pd.DataFrame({"Metadata_Compound": ["DMSO", "taxol", "dmso "], "f": [1.0, 2.0, 3.0]})
    mask, rule = reference_mask(df, "negcon")
    assert mask.tolist() == [True, False, True]
    assert rule == "Metadata_Compound == 'DMSO'"


def test_no_negcon_rows_is_a_clear_error():
    df = _table(["trt", "poscon"], compounds=["taxol", "AZ"])
    with pytest.raises(InputDataError, match="cannot find the negcon reference rows.*--reference-col"):
        reference_mask(df, "negcon", source="wells.parquet")


def test_all_query_mask_and_column_value():
    df = _table(["negcon", "trt", "trt"], compounds=["DMSO", "a", "b"])
    assert reference_mask(df, "all")[0].tolist() == [True, True, True]
    assert reference_mask(df, "f > 0")[0].tolist() == [False, True, True]
    given = np.array([False, True, False])
    assert reference_mask(df, given)[0].tolist() == given.tolist()
    mask, rule = reference_mask(df, "negcon", column="Metadata_Compound", value=["a", "b"])
    assert mask.tolist() == [False, True, True] and "in ['a', 'b']" in rule
    with pytest.raises(ConfigError, match="needs a reference value"):
        reference_mask(df, "negcon", column="Metadata_Compound")
    with pytest.raises(ConfigError, match="entries for 3 rows"):
        reference_mask(df, np.array([True]))
    with pytest.raises(ConfigError, match="neither 'negcon', 'all' nor a valid pandas query"):
        reference_mask(df, "f >>> 2")
