"""The real Cellpose 3 code path, offline: a random-weight ``CellposeModel`` saved to a file,
loaded through the config and run on synthetic sites (CPU).

Random weights find few or no objects, so these tests check the plumbing (shapes, dtypes, table
contents, provenance, the QC join, the offline guard); count accuracy against the synthetic truth
needs a trained model and is measured by benchmarks/segment.py.  Importing Cellpose and running its
network on CPU takes tens of seconds, hence ``slow``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.errors import ModelError
from cytoscreen.segment import model as sm
from cytoscreen.segment import segment as sg
from tests.fixtures.segment import PLATE, ingest_plate, random_cellpose_model, write_segment_config

pytestmark = pytest.mark.slow

WELLS = ("A01", "A03")


@pytest.fixture(scope="module")
def real_run(tiny_screen, tmp_path_factory):
    root = tmp_path_factory.mktemp("segment_cellpose")
    results = root / "results"
    images, qc = ingest_plate(tiny_screen, results)
    table = io.read_table(images)
    small = root / "images_small.parquet"
    io.write_parquet(table[table[io.WELL].isin(WELLS)], small)
    model_file = random_cellpose_model(root / "random_cp3.pth", seed=0, diam_mean=17.0)
    cfg = write_segment_config(root / "config.yaml", tiny_screen / "plates.tsv", results,
                               model=str(model_file), cell_channel="Tubulin", nuclei_diameter_px=14.0,
                               cell_diameter_px=30.0, accelerator="cpu", threads=2)
    seg = root / "segmentation.parquet"
    masks = root / "masks"
    assert main(["-q", "segment", "run", "--config", str(cfg), "--plate", PLATE, "--images", str(small),
                 "--qc", str(qc), "--out", str(seg), "--masks", str(masks)]) == 0
    qcseg = root / "qc_segmented.parquet"
    assert main(["-q", "segment", "qc", str(qc), str(seg), str(qcseg), "--config", str(cfg)]) == 0
    return {"root": root, "seg": seg, "masks": masks, "qc": qc, "qcseg": qcseg, "model_file": model_file}


def test_real_cellpose_run(real_run):
    import tifffile

    seg = io.read_table(real_run["seg"])
    assert seg[io.WELL].tolist() == list(WELLS) and len(seg) == 2
    assert seg[io.COUNT_NUCLEI].dtype == "Int64" and seg[io.COUNT_CELLS].dtype == "Int64"
    assert seg[io.COUNT_NUCLEI].notna().all() and (seg[io.COUNT_NUCLEI] >= 0).all()
    assert seg[io.COUNT_CELLS].notna().all() and (seg[io.COUNT_CELLS] >= 0).all()
    assert list(seg.columns[-6:]) == list(sg.READOUT_COLUMNS) and io.feature_columns(seg) == []
    for well in WELLS:
        for kind, col in (("nuclei", io.COUNT_NUCLEI), ("cells", io.COUNT_CELLS)):
            labels = tifffile.imread(real_run["masks"] / f"{PLATE}_{well}_s1_{kind}.tif")
            assert labels.shape == (128, 128) and labels.dtype == np.uint16
            assert len(np.unique(labels[labels > 0])) == seg.set_index(io.WELL).loc[well, col]
    prov = io.read_provenance(real_run["seg"])
    assert prov["cellpose_version"].startswith("3.1")
    assert prov["segment_nuclei_model_sha256"] == io.sha256_file(real_run["model_file"])
    assert prov["segment_cell_model_path"] == str(real_run["model_file"].resolve())
    assert prov["nuclei_diameter_px"] == 14.0 and prov["cell_diameter_px"] == 30.0
    assert prov["device"] == "cpu"


def test_real_run_joined_into_qc(real_run):
    qc = io.read_table(real_run["qc"])
    out = io.read_table(real_run["qcseg"])
    assert len(out) == len(qc) == 96 and out[io.WELL].tolist() == qc[io.WELL].tolist()
    assert out[io.COUNT_NUCLEI].notna().sum() == 2
    assert out[io.QC_LOW_COUNT].dtype == bool


def test_model_name_from_the_cellpose_folder_loads_offline(real_run, tmp_path, monkeypatch):
    folder = tmp_path / "cellpose_models"
    folder.mkdir()
    shutil.copy(real_run["model_file"], folder / "nucleitorch_0")
    monkeypatch.setenv(sm.MODEL_DIR_ENV, str(folder))
    spec = sm.resolve_model("nuclei")
    model = sm.load_model(spec)
    assert model.diam_mean == sm.NUCLEI_DIAM_MEAN  # cellpose treats it as its built-in nuclei model
    assert sm.model_diameter(model) > 0


def test_cellpose_cannot_download(tmp_path, monkeypatch):
    from cellpose import models as cp_models
    from cellpose import utils as cp_utils

    original = cp_utils.download_url_to_file
    monkeypatch.setattr(cp_models, "MODEL_DIR", tmp_path)
    with sm.offline_cellpose():
        with pytest.raises(ModelError, match="tried to download .*cyto3"):
            cp_models.cache_model_path("cyto3")
        with pytest.raises(ModelError, match="runs offline"):
            cp_models.CellposeModel(gpu=False, model_type="nuclei")
    assert cp_utils.download_url_to_file is original
    assert not (tmp_path / "cyto3").exists()


def test_bad_model_files(tmp_path):
    import torch

    cp4 = tmp_path / "cpsam"
    torch.save({"W2": torch.zeros(2)}, cp4)
    with pytest.raises(ModelError, match="not a Cellpose 3 model"):
        sm.load_model(sm.resolve_model(str(cp4)))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="cannot load as a Cellpose 3 model"):
        sm.load_model(sm.resolve_model(str(junk)))


@pytest.mark.gpu
def test_runs_on_the_gpu(real_run, tiny_screen):
    import tifffile

    device = sm.resolve_device("auto")
    assert device.type == "cuda"
    model = sm.load_model(sm.resolve_model(str(real_run["model_file"])), device=device)
    assert next(model.net.parameters()).is_cuda
    dna = tifffile.imread(tiny_screen / "images" / PLATE / f"{PLATE}_A01_s1_w1.tif")
    labels = sg.Segmenter(nuclei_model=model, nuclei_diameter_px=14.0).nuclei(dna)
    assert labels.shape == dna.shape and labels.dtype == np.uint16
