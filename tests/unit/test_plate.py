"""cytoscreen.plate: THE negcon rule, THE failed-site rule, treatment labels and the images-to-sites
pivot.  The negcon cases are those where the former copies (profiles, moa.evaluate, novelty,
report thumbnails) disagreed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io, plate
from cytoscreen.errors import InputDataError


# --- negcon ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["negcon", "trt", "poscon"], [True, False, False]),
        (["NegCon", "trt", "NEGCON"], [True, False, True]),  # case-insensitive
        ([" negcon", "negcon\t", "trt"], [True, True, False]),  # surrounding blanks stripped
        (["neg con", "negcontrol", "trt"], [False, False, False]),  # no substring or fuzzy match
    ],
)
def test_negcon_from_pert_type(values, expected):
    df = pd.DataFrame({io.PERT_TYPE: values, "Metadata_Compound": ["DMSO", "DMSO", "x"]})
    if any(expected):
        np.testing.assert_array_equal(plate.negcon_mask(df), expected)
    else:  # no negcon value at all: the vehicle fallback applies
        np.testing.assert_array_equal(plate.negcon_mask(df), [True, True, False])


def test_negcon_without_pert_type_column_falls_back_to_dmso():
    df = pd.DataFrame({"Metadata_Compound": ["DMSO", "dmso ", "taxol", None]})
    mask, rule = plate.negcon_rule(df)
    np.testing.assert_array_equal(mask, [True, True, False, False])
    assert rule == "no Metadata_pert_type column; Metadata_Compound == 'DMSO' (2 rows)"


def test_negcon_pert_type_wins_over_dmso():
    # DMSO rows typed "trt" are not controls when the plate names its controls
    df = pd.DataFrame({io.PERT_TYPE: ["negcon", "trt"], io.PERTURBATION: ["water", "DMSO"]})
    mask, rule = plate.negcon_rule(df)
    np.testing.assert_array_equal(mask, [True, False])
    assert rule == "Metadata_pert_type == 'negcon' (1 rows)"


def test_negcon_first_perturbation_column_with_a_vehicle_is_used():
    df = pd.DataFrame({
        io.PERT_TYPE: ["trt", "trt", "poscon"],
        io.PERTURBATION: ["a", "b", "c"],  # first alias present, but no vehicle in it
        "Metadata_Compound": ["DMSO", "b", "c"],
    })
    mask, rule = plate.negcon_rule(df)
    np.testing.assert_array_equal(mask, [True, False, False])
    assert rule.startswith("no row has Metadata_pert_type == 'negcon' (values: poscon, trt); "
                           "Metadata_Compound == 'DMSO'")


def test_negcon_none_found_and_custom_vehicle():
    df = pd.DataFrame({io.PERT_TYPE: ["trt"], io.PERTURBATION: ["PBS"]})
    mask, rule = plate.negcon_rule(df)
    assert not mask.any() and rule.endswith("no negative-control rows")
    np.testing.assert_array_equal(plate.negcon_mask(df, vehicle=("pbs",)), [True])
    assert plate.negcon_mask(pd.DataFrame({"x": []})).shape == (0,)


def test_pert_type_mask():
    df = pd.DataFrame({io.PERT_TYPE: ["PosCon", "negcon ", "trt"], io.PERTURBATION: ["a", "DMSO", "b"]})
    np.testing.assert_array_equal(plate.pert_type_mask(df, "poscon"), [True, False, False])
    np.testing.assert_array_equal(plate.pert_type_mask(df, "negcon"), [False, True, False])
    np.testing.assert_array_equal(plate.pert_type_mask(df), [False, True, False])
    no_type = df.drop(columns=io.PERT_TYPE)
    np.testing.assert_array_equal(plate.pert_type_mask(no_type, "poscon"), [False] * 3)
    np.testing.assert_array_equal(plate.pert_type_mask(no_type, "negcon"), [False, True, False])


# --- qc_failed ------------------------------------------------------------------------------------
def test_qc_failed_any_flag_missing_counts_as_passed():
    qc = pd.DataFrame(
        {io.WELL: ["A01", "A02", "A03", "A04"], io.QC_BLURRY: [False, True, None, False],
         io.QC_UNREADABLE: [False, False, None, True], "QC_low_count": [False, False, False, True]},
        index=[10, 11, 12, 13],
    )
    failed = plate.qc_failed(qc)
    assert failed.tolist() == [False, True, False, True]
    assert failed.index.tolist() == [10, 11, 12, 13] and failed.dtype == bool
    assert plate.qc_failed(qc, flags=[io.QC_UNREADABLE, io.QC_EMPTY]).tolist() == [False, False, False, True]
    assert plate.qc_failed(qc[[io.WELL]]).tolist() == [False] * 4
    assert plate.qc_failed(qc, flags=[]).tolist() == [False] * 4


# --- treatment labels -----------------------------------------------------------------------------
def test_format_treatment():
    assert plate.format_treatment("taxol", 0.30) == "taxol @ 0.3"
    assert plate.format_treatment("taxol", 3) == "taxol @ 3"
    assert plate.format_treatment("taxol", np.float32(1e-6)) == "taxol @ 1e-06"
    assert plate.format_treatment("taxol", None) == "taxol"
    assert plate.format_treatment("taxol", float("nan")) == "taxol"
    assert plate.format_treatment("taxol", "1 uM") == "taxol @ 1 uM"
    assert plate.format_treatment(None, 1.0) == ""
    assert plate.format_treatment(float("nan"), 1.0) == ""


def test_treatment_label_series():
    df = pd.DataFrame({io.PERTURBATION: ["taxol", "DMSO"], io.CONCENTRATION: [0.3, np.nan]}, index=[5, 6])
    labels = plate.treatment_label(df)
    assert labels.tolist() == ["taxol @ 0.3", "DMSO"] and labels.index.tolist() == [5, 6]
    df[io.TREATMENT] = ["given", "names"]
    assert plate.treatment_label(df).tolist() == ["given", "names"]
    assert plate.treatment_label(df, use_existing=False).tolist() == ["taxol @ 0.3", "DMSO"]
    assert plate.treatment_label(df, concentration=None, use_existing=False).tolist() == ["taxol", "DMSO"]
    with pytest.raises(InputDataError, match="no Metadata_perturbation column"):
        plate.treatment_label(pd.DataFrame({io.WELL: ["A01"]}))


# --- images -> sites ------------------------------------------------------------------------------
def _images() -> pd.DataFrame:
    rows = []
    for well, row, col in (("B01", 2, 1), ("A02", 1, 2)):
        for site in (1, 2):
            for ch in ("DNA", "ER"):
                rows.append({io.PLATE: "P1", io.WELL: well, io.ROW: row, io.COL: col, io.SITE: site,
                             io.CHANNEL: ch, io.PATH: f"{well}_s{site}_{ch}.tif", io.FRAME: 0,
                             io.PERT_TYPE: "trt", "Metadata_Exposure": f"{ch}-ms"})
    return pd.DataFrame(rows)


def test_sites_from_images():
    sites = plate.sites_from_images(_images(), ["ER", "DNA"])
    assert list(sites[io.WELL]) == ["A02", "A02", "B01", "B01"]  # sorted by row, column, site
    assert list(sites[io.SITE]) == [1, 2, 1, 2]
    assert sites.loc[0, "path_ER"] == "A02_s1_ER.tif" and sites.loc[3, "path_DNA"] == "B01_s2_DNA.tif"
    assert sites["frame_DNA"].dtype == np.int64
    assert io.PERT_TYPE in sites.columns
    assert "Metadata_Exposure" not in sites.columns  # varies within a site: a channel property
    assert io.CHANNEL not in sites.columns
    # all channels in order of first appearance; no frame column means whole files (-1)
    sites = plate.sites_from_images(_images().drop(columns=io.FRAME))
    assert [c for c in sites.columns if c.startswith("path_")] == ["path_DNA", "path_ER"]
    assert (sites["frame_ER"] == -1).all()


def test_sites_from_images_errors():
    images = _images()
    with pytest.raises(InputDataError, match=r"x.parquet: 1 site\(s\) miss a channel: site P1 A02 s2 lacks ER"):
        plate.sites_from_images(images.drop(index=images.index[-1]), source="x.parquet")
    with pytest.raises(InputDataError, match="images share a site and channel"):
        plate.sites_from_images(pd.concat([images, images.iloc[[0]]]))
    with pytest.raises(InputDataError, match="channel\\(s\\) Actin named in features.channels have no images"):
        plate.sites_from_images(images, ["Actin"], key="features.channels")
    with pytest.raises(InputDataError, match="missing column\\(s\\) path"):
        plate.sites_from_images(images.drop(columns=io.PATH))
    with pytest.raises(InputDataError, match="no images listed"):
        plate.sites_from_images(images.iloc[:0])
