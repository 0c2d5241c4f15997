"""Site table (images + QC -> sites), the site Dataset, and the reference pass."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from cytoscreen import io
from cytoscreen.errors import InputDataError
from cytoscreen.features import preprocess as pp
from cytoscreen.features.dataset import SiteDataset, build_site_table, fit_reference
from tests.fixtures.features import make_plate


@pytest.fixture()
def plate(tmp_path):
    return make_plate(tmp_path / "img", size=32)


def test_site_table_pivots_sorts_and_keeps_site_metadata(plate):
    images, qc = plate
    assert build_site_table(images, qc).channels == ("DNA", "RNA")
    shuffled = images.sample(frac=1.0, random_state=0)
    table = build_site_table(shuffled, qc)
    assert len(table) == 8 and table.channels == tuple(dict.fromkeys(shuffled[io.CHANNEL]))
    keys = list(zip(table.sites[io.WELL], table.sites[io.SITE], strict=True))
    assert keys == sorted(keys)
    assert list(table.sites.index) == list(range(8))
    assert io.CHANNEL not in table.sites.columns and io.PERT_TYPE in table.sites.columns
    assert {"QC_blurry", "QC_unreadable"} <= set(table.sites.columns)
    assert "Metadata_DNA_FocusScore" not in table.sites.columns  # QC metrics stay in qc.parquet
    for i, row in table.sites.iterrows():
        for c, ch in enumerate(table.channels):
            assert table.paths[i, c].endswith(f"P1_{row[io.WELL]}_s{row[io.SITE]}_{ch}.tif")
    assert table.frames.dtype == np.int64


def test_channel_selection_and_order(plate):
    images, qc = plate
    table = build_site_table(images, qc, channels=("RNA",))
    assert table.channels == ("RNA",) and table.paths.shape == (8, 1)
    with pytest.raises(InputDataError, match="Actin"):
        build_site_table(images, qc, channels=("DNA", "Actin"))


def test_unreadable_sites_are_skipped_and_returned(plate):
    images, qc = plate
    qc = qc.copy()
    qc.loc[(qc[io.WELL] == "A02") & (qc[io.SITE] == 1), "QC_unreadable"] = True
    qc.loc[(qc[io.WELL] == "B01") & (qc[io.SITE] == 2), "QC_blurry"] = True
    table = build_site_table(images, qc)
    assert len(table) == 7
    assert table.skipped[[io.WELL, io.SITE]].values.tolist() == [["A02", 1]]
    assert table.sites["QC_blurry"].sum() == 1  # other flags are carried, not dropped
    assert table.qc_passed().sum() == 6


def test_missing_channel_names_the_site_and_its_files(plate):
    images, qc = plate
    gone = images[(images[io.WELL] == "B02") & (images[io.SITE] == 2) & (images[io.CHANNEL] == "RNA")]
    with pytest.raises(InputDataError) as err:
        build_site_table(images.drop(gone.index), qc)
    msg = str(err.value)
    assert "B02 s2" in msg and "RNA" in msg and "P1_B02_s2_DNA.tif" in msg
    assert err.value.exit_code == 4


def test_duplicate_site_channel_and_missing_qc_rows_are_errors(plate):
    images, qc = plate
    import pandas as pd

    with pytest.raises(InputDataError, match="share a site and channel"):
        build_site_table(pd.concat([images, images.iloc[:1]]), qc)
    with pytest.raises(InputDataError, match="no QC row"):
        build_site_table(images, qc.iloc[1:])
    with pytest.raises(InputDataError, match="missing column"):
        build_site_table(images.drop(columns=[io.PATH]), qc)


def test_all_sites_unreadable_is_an_error(plate):
    images, qc = plate
    qc = qc.assign(QC_unreadable=True)
    with pytest.raises(InputDataError, match="no site left"):
        build_site_table(images, qc)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dataset_reads_8_16_bit_and_float(tmp_path, dtype):
    images, qc = make_plate(tmp_path / "img", size=40, dtype=dtype)
    table = build_site_table(images, qc)
    prep = pp.Preprocessing(input_px=32, scaling="image")
    item = SiteDataset(table.paths, table.frames, prep)[3]
    assert item["index"] == 3
    x = item["image"]
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and float(x.min()) >= 0 and float(x.max()) <= 1
    assert float(x.std()) > 0.05


def test_dataset_tiles_and_wrong_dimensions(tmp_path, plate):
    images, qc = plate
    table = build_site_table(images, qc)
    tiles = SiteDataset(table.paths, table.frames, pp.Preprocessing(input_px=16, spatial="tile",
                                                                    scaling="image"))[0]["image"]
    assert tiles.shape == (2, 4, 16, 16)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 8, 8, 2), np.uint16))
    bad = table.paths.copy()
    bad[0, 1] = str(stack)
    with pytest.raises(InputDataError) as err:
        SiteDataset(bad, table.frames, pp.Preprocessing(input_px=16, scaling="image"))[0]
    assert str(stack) in str(err.value) and "2-D" in str(err.value)


def test_fit_reference_negcon_levels_and_illumination(plate):
    images, qc = plate
    table = build_site_table(images, qc)
    prep = fit_reference(table, pp.Preprocessing(input_px=32), illum_correction=True,
                         illum_sigma_px=4.0, max_sites=3)
    assert prep.levels.shape == (2, 2)
    assert (prep.levels[:, 1] > prep.levels[:, 0]).all()
    assert len(prep.illum) == 2 and prep.illum[0].shape == (32, 32)
    # levels come from negcon sites only: brighter poscon sites do not move them
    only_neg = fit_reference(table, pp.Preprocessing(input_px=32), max_sites=0)
    neg_max = []
    for i in np.flatnonzero(table.sites[io.PERT_TYPE] == "negcon"):
        img = tifffile.imread(table.paths[i, 0]).astype(np.float32)
        neg_max.append(np.percentile(pp.fit_to_input(img, input_px=32).numpy(), 99.9))
    np.testing.assert_allclose(only_neg.levels[0, 1], np.median(neg_max), rtol=1e-5)


def test_fit_reference_without_negcon_is_clear(plate):
    images, qc = plate
    # no negcon wells and no DMSO wells (the one negcon rule falls back to DMSO)
    table = build_site_table(images.assign(Metadata_pert_type="trt", Metadata_perturbation="x"), qc)
    with pytest.raises(InputDataError, match="features.scaling: image"):
        fit_reference(table, pp.Preprocessing(input_px=32), plate="P1")
    # typed "trt" but with DMSO wells: those are the negcon reference
    dmso = build_site_table(images.assign(Metadata_pert_type="trt"), qc)
    assert fit_reference(dmso, pp.Preprocessing(input_px=32), plate="P1").levels is not None
    # image scaling needs no reference
    assert fit_reference(table, pp.Preprocessing(input_px=32, scaling="image")).levels is None
