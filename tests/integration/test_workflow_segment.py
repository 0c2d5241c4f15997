"""The real workflow with segmentation on, on an OME-Zarr plate store (issue 18).

Rows A-D (48 sites) of one plate of the tiny screen, written as an NGFF 0.4 plate store, runs through ingest,
QC, Cellpose (a real Cellpose 3 network with seeded random weights: no trained model can be
downloaded here), the QC join, features and aggregation, with ``segment.ome_zarr_labels: input``
(the masks become ``labels/nuclei`` of each field of the input store) and ``export.anndata``.
The checks are values: counts equal the saved masks, the labels read back through yaozarrs and
zarr equal the masks, the .h5ad files equal their Parquet tables, and a site flagged by the
segmentation QC has no well profile.  Count accuracy against the synthetic truth needs a trained
model: the thresholding stand-in in tests/unit/test_segment_command.py and
benchmarks/segment_finetune.py measure it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from cytoscreen import io
from cytoscreen.ingest.omezarr import write_plate
from cytoscreen.segment.omezarr_labels import read_field_labels
from cytoscreen.segment.segment import mask_path, object_stats
from tests.conftest import CHANNELS, write_config
from tests.fixtures.segment import PLATE, random_cellpose_model
from tests.integration.test_workflow import snakemake

pytestmark = pytest.mark.slow
yaozarrs = pytest.importorskip("yaozarrs")
anndata = pytest.importorskip("anndata")
pytest.importorskip("cellpose")


def _plate_store(screen, dest, rows="ABCD"):
    """Rows A-D of the plate (48 sites, 12 negcon) as an OME-Zarr 0.4 plate (2 levels), channels
    labelled w1..w3, and the platemap of those wells beside it."""
    src = screen / "images" / PLATE
    fields = []
    for f in sorted(src.glob(f"{PLATE}_*_s*_w1.tif")):
        _, well, site, _ = f.stem.split("_")
        if well[0] not in rows:
            continue
        stack = np.stack([tifffile.imread(src / f"{PLATE}_{well}_{site}_{ch}.tif") for ch in CHANNELS])
        fields.append((well, int(site[1:]), stack))
    platemap = pd.read_csv(screen / "platemaps" / f"{PLATE}.tsv", sep="\t")
    platemap[platemap["well"].str[0].isin(list(rows))].to_csv(dest.with_suffix(".tsv"), sep="\t", index=False)
    return write_plate(dest, fields, channels=list(CHANNELS), version="0.4", n_levels=2, name=PLATE)


def _attrs(group):
    return json.loads((group / ".zattrs").read_text())


def test_segment_labels_and_anndata_workflow(tiny_screen, tmp_path, cli_env):
    store = _plate_store(tiny_screen, tmp_path / f"{PLATE}.zarr")
    plates = tmp_path / "plates.tsv"
    pd.DataFrame({"plate": [PLATE], "images": [str(store)], "layout": ["ome-zarr"],
                  "platemap": [str(store.with_suffix(".tsv"))]}).to_csv(plates, sep="\t", index=False)
    model = random_cellpose_model(tmp_path / "random_nuclei.pth")
    # a random network's cell probability stays just below 0 (about -0.07, higher on bright nuclei)
    # and its flows fail Cellpose's flow check: this threshold and no flow check give it 0-4 objects
    # per site (a lower threshold takes 10x longer); low_count_z 0.5 flags the sites without any
    write_config(tmp_path / "config.yaml", plates, results="results", reports="reports",
                 features={"backbone": "test_tiny", "num_workers": 0},
                 segment={"enabled": True, "model": str(model), "nuclei_diameter_px": 14.0,
                          "cellprob_threshold": -0.06, "flow_threshold": 0.0, "low_count_z": 0.5,
                          "threads": 1, "ome_zarr_labels": "input"},
                 export={"anndata": ["sites", "wells"]})
    res = tmp_path / "results" / PLATE
    targets = [f"results/{PLATE}/{name}" for name in ("ome_zarr_labels.tsv", "sites.h5ad", "wells.h5ad")]
    run = snakemake(tmp_path, cli_env, *targets)
    assert run.returncode == 0, run.stderr[-4000:]

    # counts: one row per site, equal to the objects of the saved masks, model named by checksum
    seg = io.read_table(res / "segmentation.parquet")
    assert len(seg) == 48
    assert io.read_provenance(res / "segmentation.parquet")["segment_nuclei_model_sha256"] == io.sha256_file(model)
    masks = {}
    for rec in seg.to_dict("records"):
        well, site = rec[io.WELL], int(rec[io.SITE])
        masks[(well, site)] = tifffile.imread(mask_path(res / "masks", PLATE, well, site, kind="nuclei"))
        n, area, _ = object_stats(masks[(well, site)])
        assert rec[io.COUNT_NUCLEI] == n
        if n:
            assert rec["Metadata_MeanArea_Nuclei"] == pytest.approx(area)
    assert seg[io.COUNT_NUCLEI].sum() > 0

    # labels: in the input store, listed in the summary, valid NGFF 0.4 label images equal to the masks
    summary = pd.read_csv(res / "ome_zarr_labels.tsv", sep="\t")
    assert len(summary) == 48 and set(summary["label"]) == {"nuclei"}
    assert summary.set_index([io.WELL, io.SITE])["n_objects"].sort_index().tolist() == \
        seg.set_index([io.WELL, io.SITE])[io.COUNT_NUCLEI].sort_index().tolist()
    import zarr

    for (well, site), mask in masks.items():
        r, c = io.split_well(well)
        field = store / io.row_index_to_letters(r) / str(c) / str(site - 1)
        np.testing.assert_array_equal(read_field_labels(field)["nuclei"], mask)
        np.testing.assert_array_equal(zarr.open_array(str(field / "labels" / "nuclei" / "1"), mode="r")[...],
                                      mask[::2, ::2])
    label = yaozarrs.validate_ome_object(_attrs(field / "labels" / "nuclei"))
    assert type(label).__name__ == "LabelImage" and [a.name for a in label.multiscales[0].axes] == ["y", "x"]
    assert yaozarrs.validate_ome_object(_attrs(field / "labels")).labels == ["nuclei"]
    # the images beside them are untouched and the store is still a plate
    assert type(yaozarrs.validate_ome_object(_attrs(store))).__name__ == "Plate"
    np.testing.assert_array_equal(zarr.open_array(str(field / "0"), mode="r")[0],
                                  tifffile.imread(tiny_screen / "images" / PLATE / f"{PLATE}_{well}_s{site}_w1.tif"))

    # the QC table downstream reads: qc.parquet plus the counts; profiles leave out every flagged site
    qcseg = io.read_table(res / "qc_segmented.parquet")
    assert "QC_low_count" in qcseg.columns
    assert qcseg.set_index([io.WELL, io.SITE])[io.COUNT_NUCLEI].sort_index().tolist() == \
        seg.set_index([io.WELL, io.SITE])[io.COUNT_NUCLEI].sort_index().tolist()
    low = qcseg["QC_low_count"].fillna(False).astype(bool)
    assert low.any() and (qcseg.loc[low, io.COUNT_NUCLEI] == 0).all()
    flagged = qcseg[io.qc_columns(qcseg)].fillna(False).astype(bool).any(axis=1)
    wells = io.read_table(res / "wells.parquet")
    assert sorted(wells[io.WELL]) == sorted(qcseg.loc[~flagged, io.WELL])
    assert not set(wells[io.WELL]) & set(qcseg.loc[low, io.WELL])

    # AnnData: X, obs and provenance equal the Parquet tables
    for table in ("sites", "wells"):
        df = io.read_table(res / f"{table}.parquet")
        ad = anndata.read_h5ad(res / f"{table}.h5ad")
        feats = io.feature_columns(df)
        assert ad.X.dtype == np.float32 and list(ad.var_names) == feats and len(feats) == 3 * 16
        np.testing.assert_array_equal(ad.X, df[feats].to_numpy(np.float32))
        assert list(ad.obs[io.WELL]) == list(df[io.WELL])
        assert list(ad.obs[io.PERT_TYPE]) == list(df[io.PERT_TYPE])
        assert set(ad.var["channel"]) == {"DNA", "Tubulin", "Actin"}
        prov = io.read_provenance(res / f"{table}.parquet")
        assert ad.uns["provenance"]["source"]["config_hash"] == prov["config_hash"]
        assert ad.uns["provenance"]["source"]["stage"] == prov["stage"]

    # writing labels into the input store does not make the plate look changed
    again = snakemake(tmp_path, cli_env, "-n", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr
