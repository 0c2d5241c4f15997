"""Preprocessing: float conversion, resize/tile, intensity scaling, illumination functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cytoscreen.errors import ConfigError
from cytoscreen.features import preprocess as pp


def test_as_float_handles_dtypes_and_non_finite():
    u16 = np.array([[0, 65535]], np.uint16)
    assert pp.as_float(u16).dtype == np.float32
    np.testing.assert_allclose(pp.as_float(u16, dtype_scale=True), [[0.0, 1.0]])
    np.testing.assert_allclose(pp.as_float(np.array([[0, 255]], np.uint8), dtype_scale=True), [[0, 1]])
    f = np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32)
    np.testing.assert_array_equal(pp.as_float(f), [[0, 0, 0, 0.5]])
    assert np.isnan(f[0, 0])  # input not mutated


def test_tile_origins_centre_a_grid_of_whole_tiles():
    assert pp.tile_origins(100, 100, 50) == [(0, 0), (0, 50), (50, 0), (50, 50)]
    assert pp.tile_origins(110, 60, 50) == [(5, 5), (55, 5)]
    assert pp.tile_origins(30, 30, 50) == [(0, 0)]


def test_fit_to_input_resize_and_tile_shapes():
    img = np.random.default_rng(0).random((96, 128), dtype=np.float32)
    assert pp.fit_to_input(img, input_px=32).shape == (1, 32, 32)
    tiles = pp.fit_to_input(img, input_px=32, spatial="tile", tile_px=32)
    assert tiles.shape == (12, 32, 32)
    # native-resolution tiles are the image's own pixels
    torch.testing.assert_close(tiles[0], torch.from_numpy(img[0:32, 0:32]))
    assert pp.fit_to_input(img, input_px=16, spatial="tile", tile_px=48).shape == (4, 16, 16)
    # a constant image stays constant through antialiased resizing
    const = np.full((97, 61), 7.0, np.float32)
    torch.testing.assert_close(pp.fit_to_input(const, input_px=32), torch.full((1, 32, 32), 7.0))


def test_scale_site_methods():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(100, 1100, (2, 1, 16, 16)).astype(np.float32))
    neg = pp.Preprocessing(input_px=16, scaling="negcon", levels=np.array([[100.0, 1100.0], [0.0, 550.0]]))
    y = pp.scale_site(x.clone(), neg)
    torch.testing.assert_close(y[0], (x[0] - 100) / 1000)
    assert float(y[1].max()) == 1.0 and float(y[1].min()) > 0.1  # clipped above 550
    img = pp.scale_site(x.clone(), pp.Preprocessing(input_px=16, scaling="image", percentiles=(0, 100)))
    assert float(img[0].min()) == 0.0 and float(img[0].max()) == 1.0
    dt = pp.scale_site(torch.tensor([[[[-1.0, 0.5, 2.0]]]]), pp.Preprocessing(input_px=3, scaling="dtype"))
    torch.testing.assert_close(dt, torch.tensor([[[[0.0, 0.5, 1.0]]]]))


@pytest.mark.parametrize("scaling", ["negcon", "image", "dtype"])
def test_constant_and_zero_images_scale_to_finite_values(scaling):
    x = torch.zeros(2, 1, 8, 8)
    x[1] = 123.0
    levels = np.array([[0.0, 0.0], [123.0, 123.0]])  # degenerate levels from constant negcon
    out = pp.scale_site(x, pp.Preprocessing(input_px=8, scaling=scaling, levels=levels))
    assert torch.isfinite(out).all()
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_reference_levels_is_median_over_sites():
    per_site = np.array([[[0, 10]], [[2, 30]], [[1, 20]]], float)
    np.testing.assert_array_equal(pp.reference_levels(per_site), [[1, 20]])


def test_invalid_settings_are_config_errors():
    with pytest.raises(ConfigError, match="spatial"):
        pp.Preprocessing(input_px=8, spatial="crop")
    with pytest.raises(ConfigError, match="scaling"):
        pp.Preprocessing(input_px=8, scaling="zscore")
    with pytest.raises(ConfigError, match="percentiles"):
        pp.Preprocessing(input_px=8, percentiles=(99.0, 1.0))


def test_illumination_function_corrects_vignetting():
    yy, xx = np.mgrid[0:64, 0:64]
    field = 1.0 - 0.5 * (((yy - 32) ** 2 + (xx - 32) ** 2) / 32.0**2)  # bright centre, dark corners
    rng = np.random.default_rng(2)
    acc = pp.IlluminationAccumulator(1)
    for _ in range(20):
        acc.add([(field * rng.uniform(800, 1200, (64, 64))).astype(np.float32)])
    (illum,) = acc.functions(sigma_px=4.0)
    assert illum.shape == (64, 64) and illum.dtype == np.float32
    assert abs(float(illum.mean()) - 1.0) < 1e-3
    test = (field * 1000.0).astype(np.float32)
    corrected = test / illum
    assert corrected.std() / corrected.mean() < 0.25 * (test.std() / test.mean())


def test_illumination_function_of_flat_or_empty_plate_is_ones():
    np.testing.assert_array_equal(pp.illumination_function(np.zeros((8, 8)), 2.0), np.ones((8, 8)))
    np.testing.assert_allclose(pp.illumination_function(np.full((8, 8), 5.0), 2.0), np.ones((8, 8)))
    acc = pp.IlluminationAccumulator(1)
    acc.add([np.zeros((8, 8), np.float32)])
    with pytest.raises(ValueError, match="differs"):
        acc.add([np.zeros((9, 8), np.float32)])
