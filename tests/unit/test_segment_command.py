"""``cytoscreen segment run|qc|crops|embed`` on a synthetic plate, end to end through the CLI.

Cellpose's network is replaced by a thresholding stand-in with the same ``eval`` interface (the
real network path is tested in test_segment_cellpose.py), so the whole plate runs in seconds and
the counts can be checked against the synthetic truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.segment import crops as cr
from cytoscreen.segment import lowcount
from cytoscreen.segment import model as sm
from tests.fixtures.segment import PLATE, ThresholdModel, ingest_plate, truth_counts, write_segment_config


@pytest.fixture(scope="module")
def chain(tiny_screen, tmp_path_factory):
    """Run segment run -> qc -> crops -> embed once for the module; return the paths."""
    root = tmp_path_factory.mktemp("segment_chain")
    results = root / "results"
    images, qc = ingest_plate(tiny_screen, results)
    model_file = root / "fake_model.pth"
    model_file.write_bytes(b"stand-in weights")
    cfg = write_segment_config(root / "config.yaml", tiny_screen / "plates.tsv", results,
                               model=str(model_file), cell_channel="Tubulin", diameter_sites=4,
                               low_count_z=2.0, crops={"enabled": True, "size_px": 32, "embed": True,
                                                       "backbone": "test_tiny", "batch_size": 256})
    plate_dir = results / PLATE
    paths = {"config": cfg, "images": images, "qc": qc, "seg": plate_dir / "segmentation.parquet",
             "masks": plate_dir / "masks", "qcseg": plate_dir / "qc_segmented.parquet",
             "crops": plate_dir / "crops.zarr", "index": plate_dir / "crops.parquet",
             "sites": plate_dir / "single_cell_sites.parquet", "wells": plate_dir / "single_cell_wells.parquet",
             "root": root, "screen": tiny_screen, "model_file": model_file}
    fake = ThresholdModel(diam_mean=17.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sm, "load_model", lambda spec, device=None: fake)
        rc = main(["-q", "segment", "run", "--config", str(cfg), "--plate", PLATE, "--images", str(images),
                   "--qc", str(qc), "--out", str(paths["seg"]), "--masks", str(paths["masks"])])
    assert rc == 0
    paths["calls"] = list(fake.calls)
    assert main(["-q", "segment", "qc", str(qc), str(paths["seg"]), str(paths["qcseg"]),
                 "--config", str(cfg)]) == 0
    assert main(["-q", "segment", "crops", "--config", str(cfg), "--plate", PLATE, "--images", str(images),
                 "--masks", str(paths["masks"]), "--qc", str(qc)]) == 0
    assert main(["-q", "segment", "embed", "--config", str(cfg), "--plate", PLATE,
                 "--qc", str(paths["qcseg"]), "--wells", str(paths["wells"])]) == 0
    return paths


def test_segmentation_table(chain):
    seg = io.read_table(chain["seg"])
    qc = io.read_table(chain["qc"])
    assert len(seg) == 96 and not seg.duplicated(list(io.SITE_KEYS)).any()
    assert io.feature_columns(seg) == []  # counts are Metadata_ readouts, never features
    assert io.qc_columns(seg) == []
    for col in ("Metadata_Count_Nuclei", "Metadata_Count_Cells", "Metadata_MeanArea_Nuclei",
                "Metadata_MeanArea_Cells", "Metadata_BorderFraction_Nuclei", "Metadata_BorderFraction_Cells"):
        assert col in seg.columns
    assert seg[io.COUNT_NUCLEI].dtype == "Int64" and seg[io.COUNT_CELLS].dtype == "Int64"
    assert seg["Metadata_MeanArea_Nuclei"].dtype == np.float64
    assert seg["Metadata_BorderFraction_Nuclei"].dropna().between(0, 1).all()
    # platemap metadata kept, sorted like the features stage (plate, row, column, site)
    assert {io.PERT_TYPE, io.PERTURBATION, io.MOA, io.ROW, io.COL} <= set(seg.columns)
    assert seg[io.WELL].tolist() == qc.sort_values([io.ROW, io.COL])[io.WELL].tolist()
    prov = io.read_provenance(chain["seg"])
    assert prov["stage"] == "segment" and prov["plate"] == PLATE
    assert prov["segment_nuclei_model_sha256"] == io.sha256_file(chain["model_file"])
    assert prov["cellpose_version"].startswith("3.")
    # diameters estimated on 4 sample sites at the model's diameter, then used for every site
    calls = chain["calls"]
    assert calls[:8] == [("nuclei", 17.0), ("cells", 17.0)] * 4
    nuc_d = {d for k, d in calls[8:] if k == "nuclei"}
    assert len(nuc_d) == 1 and prov["nuclei_diameter_px"] == pytest.approx(nuc_d.pop())
    assert 8 < prov["nuclei_diameter_px"] < 20  # synthetic nuclei: radius 7 px x cell-to-cell spread


def test_counts_correlate_with_truth(chain):
    seg = io.read_table(chain["seg"])
    merged = seg.merge(truth_counts(chain["screen"]), on=[io.WELL, io.SITE], validate="1:1")
    rho = spearmanr(merged[io.COUNT_NUCLEI].astype(float), merged["n_cells"]).statistic
    assert rho >= 0.8, rho


def test_masks_written(chain):
    import tifffile

    files = sorted(Path(chain["masks"]).iterdir())
    assert len(files) == 2 * 96
    nuc = tifffile.imread(chain["masks"] / f"{PLATE}_A01_s1_nuclei.tif")
    assert nuc.shape == (128, 128) and nuc.dtype == np.uint16
    seg = io.read_table(chain["seg"]).set_index(io.WELL)
    assert len(np.unique(nuc)) - 1 == seg.loc["A01", io.COUNT_NUCLEI]
    with tifffile.TiffFile(chain["masks"] / f"{PLATE}_A01_s1_cells.tif") as tif:
        assert tif.pages[0].compression == 8  # zlib (ADOBE_DEFLATE)


def test_qc_join_and_low_count(chain):
    qc = io.read_table(chain["qc"])
    out = io.read_table(chain["qcseg"])
    assert out[io.WELL].tolist() == qc[io.WELL].tolist()
    pd.testing.assert_frame_equal(out[list(qc.columns)], qc)  # QC columns untouched
    assert out[io.QC_LOW_COUNT].dtype == bool
    assert io.QC_LOW_COUNT in io.qc_columns(out) and io.feature_columns(out) == []
    # the flag is the robust z against the plate's QC-passed negcon sites, at the config's 2.0
    z = lowcount.low_count_z(out)
    assert out[io.QC_LOW_COUNT].tolist() == (z < -2.0).tolist()
    # poscon (staurosporine: 0.3x cells) and full-dose cytotoxic wells have far fewer nuclei;
    # with ~12 cells per 128 px site, Poisson noise keeps some of them above the threshold
    counts = out[io.COUNT_NUCLEI].astype(float)
    median = counts.groupby(out[io.PERT_TYPE]).median()
    assert median["poscon"] < 0.6 * median["negcon"]
    cytotoxic = (out[io.MOA] == "Cytotoxic") & (out[io.CONCENTRATION] == out[io.CONCENTRATION].max())
    assert counts[cytotoxic].median() < 0.6 * median["negcon"]
    flagged = out.groupby(io.PERT_TYPE)[io.QC_LOW_COUNT].mean()
    assert flagged["poscon"] > 0 and flagged["negcon"] <= 0.1


def test_crops_one_per_nucleus(chain):
    import zarr

    seg = io.read_table(chain["seg"])
    arr = zarr.open_array(str(chain["crops"]), mode="r")
    index = io.read_table(chain["index"])
    assert arr.shape == (int(seg[io.COUNT_NUCLEI].sum()), 3, 32, 32) and arr.dtype == np.uint16
    assert arr.attrs["channels"] == ["DNA", "Tubulin", "Actin"]
    assert index[cr.CROP].tolist() == list(range(len(index)))
    per_site = index.groupby([io.WELL, io.SITE]).size()
    expected = seg.set_index([io.WELL, io.SITE])[io.COUNT_NUCLEI]
    assert per_site.reindex(expected.index, fill_value=0).tolist() == expected.astype(int).tolist()
    assert io.feature_columns(index) == []
    # a crop is centred on its nucleus: the centre pixel of the DNA crop is bright
    row = index.iloc[len(index) // 2]
    crop = arr[int(row[cr.CROP])]
    assert crop[0, 16, 16] > np.median(crop[0])


def test_crops_from_truth_masks_match_true_counts(chain, tmp_path):
    out, index_path = tmp_path / "crops.zarr", tmp_path / "crops.parquet"
    masks = chain["screen"] / "truth" / "masks" / PLATE
    assert main(["-q", "segment", "crops", "--config", str(chain["config"]), "--plate", PLATE,
                 "--images", str(chain["images"]), "--masks", str(masks), "--out", str(out),
                 "--index", str(index_path)]) == 0
    index = io.read_table(index_path)
    truth = truth_counts(chain["screen"]).set_index([io.WELL, io.SITE])["n_cells"]
    per_site = index.groupby([io.WELL, io.SITE]).size().reindex(truth.index, fill_value=0)
    assert per_site.tolist() == truth.tolist()


def test_crop_embeddings_aggregate_to_sites_and_wells(chain):
    from cytoscreen.backbones import backbone_spec
    from cytoscreen.features.embed import feature_names

    index = io.read_table(chain["index"])
    sites = io.read_table(chain["sites"])
    wells = io.read_table(chain["wells"])
    names = feature_names(["DNA", "Tubulin", "Actin"], backbone_spec("test_tiny"))
    assert io.feature_columns(sites) == names and io.feature_columns(wells) == names
    assert all(sites[n].dtype == np.float32 for n in names[:3])
    assert sites[cr.N_CELLS].sum() == len(index)
    n_sites_with_cells = index.drop_duplicates([io.WELL, io.SITE]).shape[0]
    assert len(sites) == n_sites_with_cells
    assert io.QC_LOW_COUNT in sites.columns and "QC_blurry" in sites.columns
    # one site per well: a well is its QC-passed site
    passed = sites[~sites[io.qc_columns(sites)].any(axis=1)]
    assert len(wells) == len(passed)
    merged = wells.merge(passed, on=[io.PLATE, io.WELL], suffixes=("", "_site"))
    np.testing.assert_allclose(merged[names[0]], merged[names[0] + "_site"], rtol=1e-6)
    assert (merged[cr.N_CELLS] == merged[cr.N_CELLS + "_site"]).all()
    prov = io.read_provenance(chain["sites"])
    assert prov["backbone"] == "test_tiny" and set(prov["scaling_levels"]) == {"DNA", "Tubulin", "Actin"}
