"""``intensity_scale`` (``ingest.on_mixed_bit_depth: rescale``) is applied by every pixel reader: a
rescaled 8-bit site gives the segment input, the single-cell crops and the report thumbnail of its
16-bit twin (the features stage's twin test is in test_features_device_preprocess.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from cytoscreen import io, plate
from cytoscreen.report.thumbnails import channel_colors, site_thumbnail
from cytoscreen.segment import segment as seg
from cytoscreen.segment.crops import as_crop_dtype
from cytoscreen.segment.segment import CropSettings, SegmentSettings, mask_path, write_mask
from cytoscreen.segment.stage import crop_plate
from tests.fixtures.features import twin_plates

CHANNELS = ["DNA", "RNA"]


def test_apply_intensity_scale():
    img = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    assert io.apply_intensity_scale(img, 1.0) is img
    out = io.apply_intensity_scale(img, 257.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, img.astype(np.float32) * 257)


def test_segment_reader_applies_intensity_scale(tmp_path):
    images, mixed, _ = twin_plates(tmp_path / "img")
    a = seg.site_table(images, ["DNA"])
    b = seg.site_table(mixed, ["DNA"])
    assert "scale_DNA" not in a.columns
    assert b[plate.scale_column("DNA")].tolist() == [1.0, 257.0, 1.0, 1.0]
    for i in range(len(a)):
        np.testing.assert_array_equal(plate.read_site_image(b.iloc[i], "DNA"),
                                      plate.read_site_image(a.iloc[i], "DNA").astype(np.float32))


def _crops(tmp_path, images: pd.DataFrame, name: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Crop every site of ``images`` around the same two nuclei; the crop array and its index."""
    masks = tmp_path / "masks"
    labels = np.zeros((48, 48), dtype=np.uint16)
    labels[8:14, 10:16] = 1
    labels[30:38, 28:36] = 2
    for well, site in images[[io.WELL, io.SITE]].drop_duplicates().itertuples(index=False):
        write_mask(labels, mask_path(masks, "P1", well, int(site), kind="nuclei"))
    io.write_parquet(images, tmp_path / f"{name}.parquet")
    settings = SegmentSettings(crops=CropSettings(enabled=True, size_px=12, channels=tuple(CHANNELS)))
    index = crop_plate(settings, plate="P1", images_path=tmp_path / f"{name}.parquet", masks_dir=masks,
                       out=tmp_path / f"{name}.zarr", index_path=tmp_path / f"{name}_crops.parquet")
    return np.asarray(zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="r")[:]), index


def test_rescaled_8bit_site_gives_the_crops_of_its_16bit_twin(tmp_path):
    images, mixed, _ = twin_plates(tmp_path / "img")
    twin, twin_index = _crops(tmp_path, images, "twin")
    rescaled, index = _crops(tmp_path, mixed, "rescaled")
    assert twin.dtype == rescaled.dtype == np.uint16 and twin.shape == (8, 2, 12, 12)
    a02 = (index[io.WELL] == "A02").to_numpy()
    assert a02.sum() == 2 and twin[a02].max() > 255  # the 8-bit well's crops are in 16-bit units
    np.testing.assert_array_equal(rescaled, twin)
    pd.testing.assert_frame_equal(index, twin_index)
    ignored, _ = _crops(tmp_path, mixed.drop(columns=[io.INTENSITY_SCALE]), "ignored")
    assert ignored[a02].max() <= 255 and not np.array_equal(ignored, twin)  # without it: dark


def test_crop_dtype_rounds_rescaled_values():
    stack = np.array([[0.4, 16.5, 70000.0, -3.0]], dtype=np.float32)
    np.testing.assert_array_equal(as_crop_dtype(stack, np.uint16), [[0, 16, 65535, 0]])
    assert as_crop_dtype(stack, np.float32) is stack


@pytest.mark.parametrize("limits", [{"DNA": (0.0, 30000.0), "RNA": (500.0, 40000.0)}, None])
def test_rescaled_8bit_site_gives_the_thumbnail_of_its_16bit_twin(tmp_path, limits):
    images, mixed, _ = twin_plates(tmp_path / "img")
    colors = channel_colors(CHANNELS)

    def thumb(table: pd.DataFrame) -> str | None:
        rows = table[table[io.WELL] == "A02"]
        return site_thumbnail(rows, channels=CHANNELS, colors=colors, limits=limits, size_px=24, fmt="png").uri

    twin = thumb(images)
    assert twin is not None and thumb(mixed) == twin
    if limits is not None:  # with the plate's limits an unscaled 8-bit site would look black
        assert thumb(mixed.drop(columns=[io.INTENSITY_SCALE])) != twin
