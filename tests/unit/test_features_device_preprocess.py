"""Preprocessing per batch where the backbone runs (``preprocess.fit_batch``) against the per-site
worker path, a hand-written bare forward, and ``intensity_scale`` (rescaled 8-bit sites; the other
readers' twin tests are in test_intensity_scale.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import torch.nn.functional as F

from cytoscreen import io
from cytoscreen.backbones import create_backbone
from cytoscreen.features import preprocess as pp
from cytoscreen.features.dataset import PlaneCollate, SiteDataset, build_site_table
from cytoscreen.features.embed import FeatureSettings, extract_features
from tests.fixtures.features import make_plate, twin_plates

TINY = FeatureSettings(backbone="test_tiny", num_workers=0, batch_size=3, accelerator="cpu")


def _features(df: pd.DataFrame) -> np.ndarray:
    return df[io.feature_columns(df)].to_numpy()


def _run(images, qc, out, settings, **kw) -> np.ndarray:
    return _features(pd.read_parquet(extract_features(images, qc, out=out, settings=settings, **kw).out))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("scaling", ["negcon", "image", "dtype"])
def test_device_preprocessing_equals_worker_preprocessing(tmp_path, dtype, scaling):
    images, qc = make_plate(tmp_path / "img", size=40, sites=1, dtype=dtype)
    if dtype != np.float32:  # ingest's dtype column: the workers send the planes as read
        images[io.DTYPE] = np.dtype(dtype).name
    settings = dataclasses.replace(TINY, scaling=scaling, illum_correction=scaling == "negcon",
                                   illum_sigma_px=6.0)
    worker = _run(images, qc, tmp_path / "w.parquet", settings, device_preprocess=False)
    device = _run(images, qc, tmp_path / "d.parquet", settings, device_preprocess=True)
    assert worker.std(axis=0).max() > 0
    np.testing.assert_allclose(device, worker, atol=1e-4, rtol=0)


def test_plane_batches_carry_raw_uint16_and_mixed_sizes_fall_back(tmp_path):
    images, qc = make_plate(tmp_path / "img", size=40, sites=1)
    images[io.DTYPE] = "uint16"
    table = build_site_table(images, qc)
    prep = pp.Preprocessing(input_px=32, scaling="dtype")
    ds = SiteDataset(table.paths, table.frames, prep, mode="planes", transfer_dtype=table.dtype)
    collate = PlaneCollate(prep)
    batch = collate([ds[0], ds[1]])
    assert batch["planes"].dtype == torch.uint16 and batch["planes"].shape == (2, 2, 40, 40)
    np.testing.assert_array_equal(batch["dtype_max"].numpy(), 65535.0)
    # a site of another size: the batch is finished in the worker, with the same result
    tifffile.imwrite(table.paths[1][0], np.full((50, 50), 700, np.uint16))
    tifffile.imwrite(table.paths[1][1], np.full((50, 50), 900, np.uint16))
    mixed = collate([ds[0], ds[1]])
    assert "planes" not in mixed and mixed["image"].shape == (2, 2, 1, 32, 32)
    ref = pp.fit_batch(batch["planes"][:1], prep, dtype_max=batch["dtype_max"][:1])
    torch.testing.assert_close(mixed["image"][:1], ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(mixed["image"][1, 0].numpy(), 700 / 65535, atol=1e-6)


def test_stage_embeddings_equal_a_bare_forward(tmp_path):
    """EfficientNet-Lite0 features of the stage = a hand-written read, resize, scale and forward (1e-4)."""
    images, qc = make_plate(tmp_path / "img", size=300, sites=1)
    images[io.DTYPE] = "uint16"
    res = extract_features(images, qc, out=tmp_path / "s.parquet",
                           settings=dataclasses.replace(TINY, backbone="efficientnet_lite0", batch_size=4))
    df = pd.read_parquet(res.out)
    levels = io.read_provenance(res.out)["scaling_levels"]
    model = create_backbone("efficientnet_lite0").eval()
    mean, std = torch.tensor(res.spec.mean).view(1, 3, 1, 1), torch.tensor(res.spec.std).view(1, 3, 1, 1)
    for _, row in df.iterrows():
        sel = images[(images[io.WELL] == row[io.WELL]) & (images[io.SITE] == row[io.SITE])]
        ref = []
        for ch in ("DNA", "RNA"):
            img = tifffile.imread(sel.loc[sel[io.CHANNEL] == ch, io.PATH].iloc[0]).astype(np.float32)
            x = F.interpolate(torch.from_numpy(img)[None, None], size=(224, 224), mode="bilinear",
                              align_corners=False, antialias=True)
            lo, hi = levels[ch]
            x = ((x - lo) / (hi - lo)).clamp(0, 1).expand(-1, 3, -1, -1)
            with torch.inference_mode():
                ref.append(model((x - mean) / std)[0])
        expect = torch.cat(ref).numpy()
        got = row[io.feature_columns(df)].to_numpy(np.float32)
        np.testing.assert_allclose(got, expect, atol=1e-4, rtol=0)


@pytest.mark.parametrize("device_preprocess", [False, True])
def test_rescaled_8bit_site_gives_the_features_of_its_16bit_twin(tmp_path, device_preprocess):
    images, mixed, qc = twin_plates(tmp_path / "img")
    settings = dataclasses.replace(TINY, illum_correction=True, illum_sigma_px=6.0)
    twin = _run(images, qc, tmp_path / "a.parquet", settings, device_preprocess=device_preprocess)
    rescaled = _run(mixed, qc, tmp_path / "b.parquet", settings, device_preprocess=device_preprocess)
    np.testing.assert_allclose(rescaled, twin, atol=1e-4, rtol=0)
    ignored = _run(mixed.drop(columns=[io.INTENSITY_SCALE]), qc, tmp_path / "c.parquet", settings,
                   device_preprocess=device_preprocess)
    assert np.abs(ignored - twin).max() > 1e-2  # without the scale the 8-bit well looks dark


@pytest.mark.gpu
def test_gpu_device_preprocessing_matches_cpu(tmp_path):
    """On CUDA: raw uint16 planes go to the GPU, fit_batch runs there (float32, outside autocast)
    and the backbone under 16-mixed autocast, channels-last; features match the CPU worker path."""
    images, qc = make_plate(tmp_path / "img", size=300, sites=1)
    images[io.DTYPE] = "uint16"
    lite = dataclasses.replace(TINY, backbone="efficientnet_lite0", num_workers=2)
    cpu = _run(images, qc, tmp_path / "cpu.parquet", lite, device_preprocess=False)
    gpu = _run(images, qc, tmp_path / "gpu.parquet", dataclasses.replace(lite, accelerator="gpu"),
               device_preprocess=True)
    cos = (cpu * gpu).sum(1) / (np.linalg.norm(cpu, axis=1) * np.linalg.norm(gpu, axis=1))
    assert np.isfinite(gpu).all() and cos.min() > 0.999
    table = build_site_table(images, qc)
    prep = pp.Preprocessing(input_px=224, scaling="image")
    ds = SiteDataset(table.paths, table.frames, prep, mode="planes", transfer_dtype=table.dtype)
    batch = PlaneCollate(prep)([ds[i] for i in range(len(ds))])
    on_cpu = pp.fit_batch(batch["planes"], prep, dtype_max=batch["dtype_max"], scale=batch["scale"])
    on_gpu = pp.fit_batch(batch["planes"].cuda(), prep, dtype_max=batch["dtype_max"].cuda(),
                          scale=batch["scale"].cuda())
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-5, rtol=0)
