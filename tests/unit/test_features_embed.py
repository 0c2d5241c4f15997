"""The features stage end to end: sites.parquet content, invariances, DDP, real and synthetic images."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from cytoscreen import io
from cytoscreen.config import load_schema
from cytoscreen.errors import ComputeError
from cytoscreen.features import preprocess as pp
from cytoscreen.features.embed import (
    ACCELERATORS,
    PRECISIONS,
    FeatureSettings,
    SiteEmbedder,
    extract_features,
    feature_names,
)
from tests.fixtures.features import jump_tables, make_plate

TINY = FeatureSettings(backbone="test_tiny", num_workers=0, batch_size=3, accelerator="cpu")


@pytest.fixture()
def plate(tmp_path):
    return make_plate(tmp_path / "img", size=48)


def _features(df: pd.DataFrame) -> np.ndarray:
    return df[io.feature_columns(df)].to_numpy()


def test_sites_parquet_layout_and_provenance(tmp_path, plate):
    images, qc = plate
    out = tmp_path / "sites.parquet"
    res = extract_features(images, qc, out=out, settings=TINY, plate="P1",
                           provenance={"config_hash": "abc"})
    assert res.out == out and res.n_sites == 8 and res.n_features == 32
    df = pd.read_parquet(out)
    feats = io.feature_columns(df)
    assert feats == feature_names(("DNA", "RNA"), res.spec)
    assert feats[0] == "DNA_test_tiny_0000" and feats[-1] == "RNA_test_tiny_0015"
    assert all(df[c].dtype == np.float32 for c in feats)
    assert df[io.qc_columns(df)].dtypes.eq(bool).all()
    for col in (io.PLATE, io.WELL, io.ROW, io.COL, io.SITE, io.BATCH, io.PERT_TYPE, io.PERTURBATION,
                io.MOA, io.CONCENTRATION):
        assert col in df.columns, col
    assert list(df.columns[: len(io.metadata_columns(df))]) == io.metadata_columns(df)
    assert df[[io.WELL, io.SITE]].values.tolist() == sorted(df[[io.WELL, io.SITE]].values.tolist())
    assert np.isfinite(_features(df)).all()
    prov = io.read_provenance(out)
    assert prov["stage"] == "features" and prov["backbone"] == "test_tiny"
    assert prov["config_hash"] == "abc" and prov["scaling"] == "negcon"
    assert set(prov["scaling_levels"]) == {"DNA", "RNA"}
    assert "backbone_weights_sha256" not in prov  # random weights: no checksum to record
    assert not list(tmp_path.glob(".sites.parquet*"))  # shards and temp files cleaned up


def test_deterministic_and_batch_size_invariant_pipeline(tmp_path, plate):
    """The whole stage: same input, same output; batch size 1 vs 5 gives the same rows."""
    images, qc = plate
    a = pd.read_parquet(extract_features(images, qc, out=tmp_path / "a.parquet",
                                         settings=dataclasses.replace(TINY, batch_size=1)).out)
    b = pd.read_parquet(extract_features(images, qc, out=tmp_path / "b.parquet",
                                         settings=dataclasses.replace(TINY, batch_size=5)).out)
    c = pd.read_parquet(extract_features(images, qc, out=tmp_path / "c.parquet",
                                         settings=dataclasses.replace(TINY, batch_size=1)).out)
    np.testing.assert_allclose(_features(a), _features(b), atol=1e-4, rtol=0)
    pd.testing.assert_frame_equal(a, c)
    assert _features(a).std(axis=0).max() > 0  # sites differ


def test_real_backbone_is_deterministic_and_batch_size_invariant():
    """EfficientNet-Lite0 on CPU: identical on repeat; batch of 4 vs single sites within 1e-4."""
    from cytoscreen.backbones import create_backbone

    module = SiteEmbedder(create_backbone("efficientnet_lite0")).eval()
    x = torch.rand(4, 1, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    x[0] = 0.0  # an all-zero site too
    with torch.inference_mode():
        batch = module(x)
        again = module(x)
        single = torch.cat([module(x[i : i + 1]) for i in range(4)])
    assert batch.shape == (4, 1280) and torch.isfinite(batch).all()
    torch.testing.assert_close(batch, again, atol=0, rtol=0)
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=0)


def test_workers_give_the_same_rows(tmp_path, plate):
    images, qc = plate
    a = pd.read_parquet(extract_features(images, qc, out=tmp_path / "a.parquet", settings=TINY).out)
    b = pd.read_parquet(extract_features(images, qc, out=tmp_path / "b.parquet",
                                         settings=dataclasses.replace(TINY, num_workers=2)).out)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("scaling", ["negcon", "image", "dtype"])
def test_workers_started_before_the_backbone_give_the_same_table(tmp_path, plate, scaling):
    # num_workers > 0 on one CPU: the workers start while the backbone is built and the negcon
    # levels are fitted (negcon sites are scaled in the main process); num_workers=0: after both
    images, qc = plate
    serial = dataclasses.replace(TINY, scaling=scaling)
    a = pd.read_parquet(extract_features(images, qc, out=tmp_path / "a.parquet", settings=serial).out)
    b = pd.read_parquet(extract_features(images, qc, out=tmp_path / "b.parquet",
                                         settings=dataclasses.replace(serial, num_workers=1)).out)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert io.read_provenance(tmp_path / "a.parquet").get("scaling_levels") == \
        io.read_provenance(tmp_path / "b.parquet").get("scaling_levels")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_constant_and_zero_images_give_finite_features(tmp_path, dtype):
    def draw(rng, well, pert_type):
        if well == "A01":
            return np.zeros((2, 32, 32))
        if well == "B01":
            return np.full((2, 32, 32), 3000.0)
        return np.stack([rng.uniform(0, 5000, (32, 32)) for _ in range(2)])

    images, qc = make_plate(tmp_path / "img", size=32, sites=1, dtype=dtype, draw=draw)
    for scaling in ("negcon", "image", "dtype"):
        settings = dataclasses.replace(TINY, scaling=scaling)
        df = pd.read_parquet(extract_features(images, qc, out=tmp_path / f"{scaling}.parquet",
                                              settings=settings).out)
        assert np.isfinite(_features(df)).all(), scaling


def test_unreadable_sites_are_skipped_and_logged(tmp_path, plate, caplog):
    images, qc = plate
    qc = qc.copy()
    bad = (qc[io.WELL] == "A02") & (qc[io.SITE] == 2)
    qc.loc[bad, "QC_unreadable"] = True
    qc.loc[(qc[io.WELL] == "B02") & (qc[io.SITE] == 1), "QC_saturated"] = True
    with caplog.at_level(logging.WARNING, logger="cytoscreen"):
        res = extract_features(images, qc, out=tmp_path / "s.parquet", settings=TINY, plate="P1")
    assert res.n_sites == 7 and res.n_skipped == 1
    assert "skipped 1 site(s) flagged QC_unreadable" in caplog.text and "P1 A02 s2" in caplog.text
    df = pd.read_parquet(res.out)
    assert not ((df[io.WELL] == "A02") & (df[io.SITE] == 2)).any()
    assert df["QC_saturated"].sum() == 1 and not df["QC_unreadable"].any()


def test_tiles_intermediate_and_illumination(tmp_path, plate):
    images, qc = plate
    settings = dataclasses.replace(TINY, spatial="tile", tile_px=24, intermediate=True,
                                   illum_correction=True, illum_sigma_px=8.0, scaling="image")
    res = extract_features(images, qc, out=tmp_path / "t.parquet", settings=settings)
    df = pd.read_parquet(res.out)
    feats = io.feature_columns(df)
    assert len(feats) == 2 * (16 + 16)
    assert "DNA_test_tiny_mid_0000" in feats and "RNA_test_tiny_mid_0015" in feats
    assert np.isfinite(_features(df)).all()
    prov = io.read_provenance(res.out)
    assert prov["illum_correction"] is True and prov["spatial"] == "tile" and prov["tile_px"] == 24


def test_site_embedder_averages_tiles_and_concatenates_channels():
    from cytoscreen.backbones import create_backbone

    module = SiteEmbedder(create_backbone("test_tiny")).eval()
    x = torch.rand(2, 3, 4, 32, 32)
    with torch.inference_mode():
        y = module(x)
        single = module(x[:, 1:2, 2:3])
    assert y.shape == (2, 3 * 16)
    per_tile = torch.stack([module(x[:, :, t : t + 1]) for t in range(4)]).mean(0)
    torch.testing.assert_close(y, per_tile, atol=1e-6, rtol=1e-5)
    assert single.shape == (2, 16)


def test_gpu_requested_without_cuda_is_compute_error(tmp_path, plate):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    images, qc = plate
    with pytest.raises(ComputeError, match="no CUDA device"):
        extract_features(images, qc, out=tmp_path / "x.parquet",
                         settings=dataclasses.replace(TINY, accelerator="gpu"))


@pytest.mark.slow
def test_two_cpu_devices_ddp_equal_one_device(tmp_path):
    """Trainer.predict with accelerator=cpu, devices=2 (DDP over gloo) writes the same rows."""
    images, qc = make_plate(tmp_path / "img", size=32, sites=3)  # 12 sites: uneven batches per rank
    one = extract_features(images, qc, out=tmp_path / "one.parquet", settings=TINY)
    two = extract_features(images, qc, out=tmp_path / "two.parquet",
                           settings=dataclasses.replace(TINY, devices=2, strategy="ddp_fork"))
    assert two.out is not None
    pd.testing.assert_frame_equal(pd.read_parquet(one.out), pd.read_parquet(two.out))
    assert not list(tmp_path.glob(".two.parquet.shards*"))


@pytest.mark.gpu
def test_gpu_matches_cpu(tmp_path):
    images, qc = make_plate(tmp_path / "img", size=64, sites=1)
    lite = dataclasses.replace(TINY, backbone="efficientnet_lite0")
    cpu = pd.read_parquet(extract_features(images, qc, out=tmp_path / "cpu.parquet", settings=lite).out)
    gpu = pd.read_parquet(extract_features(images, qc, out=tmp_path / "gpu.parquet",
                                           settings=dataclasses.replace(lite, accelerator="gpu")).out)
    a, b = _features(cpu), _features(gpu)
    assert np.isfinite(b).all()
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.999  # autocast (fp16) on GPU


def test_jump_zarr_sites_give_finite_non_constant_features(tmp_path):
    """Real Cell Painting pixels (tests/data/jump_rab30_mini, CC0): 2 sites x 5 channels from zarr."""
    images, qc = jump_tables()
    settings = dataclasses.replace(TINY, backbone="efficientnet_lite0", scaling="image")
    res = extract_features(images, qc, out=tmp_path / "jump.parquet", settings=settings)
    df = pd.read_parquet(res.out)
    assert df.shape[0] == 2 and res.n_features == 5 * 1280
    prov = io.read_provenance(res.out)
    assert prov["backbone_weights_sha256"] == io.sha256_file(res.spec.weights_path)
    assert [c for c in io.feature_columns(df)][::1280] == [
        f"{ch}_efficientnet_lite0_0000" for ch in ("AGP", "DNA", "ER", "Mito", "RNA")]
    x = _features(df)
    assert np.isfinite(x).all()
    for ch in range(5):
        block = x[:, ch * 1280 : (ch + 1) * 1280]
        assert block.std(axis=1).min() > 1e-3  # non-constant within each channel's embedding
    assert np.abs(x[0] - x[1]).max() > 1e-2  # the two sites differ


@pytest.mark.slow
def test_embeddings_separate_synthetic_treatments(tmp_path):
    """cytoscreen.synth phenotypes: 1-NN finds the MoA far above chance; negcon cluster apart from poscon."""
    from cytoscreen import synth

    settings = synth.default_settings(96)
    phenotypes = {
        "negcon": synth.Phenotype(),
        "poscon": synth.POSCON_PHENOTYPE,
        "DNA damage": synth.MOA_CLASSES["DNA damage"],
        "Actin disruptor": synth.MOA_CLASSES["Actin disruptor"],
        "Microtubule destabilizer": synth.MOA_CLASSES["Microtubule destabilizer"],
    }
    n_wells = 4
    wells, moa_of = [], {}
    for k, (moa, _) in enumerate(phenotypes.items()):
        for i in range(n_wells):
            well = io.well_from_row_col(i, k + 1)
            pert_type = moa if moa in ("negcon", "poscon") else "trt"
            wells.append((well, pert_type, moa))
            moa_of[well] = moa

    def draw(rng, well, pert_type):
        stack, _ = synth.draw_site(rng, phenotypes[moa_of[well]], settings)
        return stack.astype(np.float32)

    images, qc = make_plate(tmp_path / "img", wells=wells, sites=1, channels=synth.CHANNELS, draw=draw)
    lite = dataclasses.replace(TINY, backbone="efficientnet_lite0", batch_size=8)
    df = pd.read_parquet(extract_features(images, qc, out=tmp_path / "syn.parquet", settings=lite).out)
    x = _features(df).astype(np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    labels = df[io.PERTURBATION].to_numpy()
    acc = float((labels[sim.argmax(1)] == labels).mean())
    assert acc >= 0.8, acc  # leave-one-out 1-NN over 5 classes: chance is 0.2
    neg = (df[io.PERT_TYPE] == "negcon").to_numpy()
    pos = (df[io.PERT_TYPE] == "poscon").to_numpy()
    dist = 1.0 - unit @ unit.T
    within = dist[np.ix_(neg, neg)][~np.eye(neg.sum(), dtype=bool)].mean()
    between = dist[np.ix_(neg, pos)].mean()
    assert within < 0.5 * between, (within, between)


def test_settings_defaults_and_choices_match_schema():
    props = load_schema("config")["properties"]["features"]["properties"]
    defaults = FeatureSettings()
    assert set(props) == {f.name for f in dataclasses.fields(FeatureSettings)}
    for name, prop in props.items():
        value = getattr(defaults, name)
        expected = prop["default"]
        assert (list(value) if isinstance(value, tuple) else value) == expected, name
    assert tuple(props["scaling"]["enum"]) == pp.SCALING_METHODS
    assert tuple(props["spatial"]["enum"]) == pp.SPATIAL_MODES
    assert tuple(props["accelerator"]["enum"]) == ACCELERATORS
    assert tuple(props["precision"]["enum"]) == PRECISIONS
    assert FeatureSettings.from_config({"channels": ["DNA"], "batch_size": 2}).channels == ("DNA",)


def test_one_task_slurm_job_with_several_devices_launches_its_own_ranks(monkeypatch):
    """A Snakemake SLURM job is one task holding `gpus` GPUs: Lightning must not expect srun tasks."""
    from cytoscreen.features.embed import make_trainer

    for key, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "snakejob",
                       "SLURM_NODELIST": "node1", "SLURM_JOB_ID": "1", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    two = make_trainer(dataclasses.replace(TINY, devices=2, strategy="ddp_fork"), progress=False)
    assert type(two.strategy.cluster_environment).__name__ == "LightningEnvironment"
    one = make_trainer(TINY, progress=False)
    assert one.world_size == 1
