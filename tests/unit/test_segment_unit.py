"""Segment stage building blocks: readouts, QC_low_count, model resolution, crops, aggregation.

Everything here is fast and needs no Cellpose network; the real Cellpose path is in
test_segment_cellpose.py and the CLI chain in test_segment_command.py.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.config import load_schema
from cytoscreen.errors import ComputeError, ConfigError, InputDataError, ModelError
from cytoscreen.segment import crops as cr
from cytoscreen.segment import lowcount
from cytoscreen.segment import model as sm
from cytoscreen.segment import segment as sg
from tests.fixtures.segment import ThresholdModel


# --- readouts ---------------------------------------------------------------------------------------
def test_object_stats_exact():
    labels = np.zeros((10, 12), np.uint16)
    labels[0:2, 0:3] = 1  # 6 px, touches the border
    labels[4:7, 4:7] = 5  # 9 px, inside (labels need not be consecutive)
    labels[4:6, 9:11] = 7  # 4 px, inside
    n, area, border = sg.object_stats(labels)
    assert n == 3 and area == pytest.approx((6 + 9 + 4) / 3) and border == pytest.approx(1 / 3)
    assert sg.object_stats(np.zeros((5, 5), np.uint16))[0] == 0
    assert math.isnan(sg.object_stats(np.zeros((5, 5), np.uint16))[1])
    row = sg.readouts(labels, None)
    assert row[io.COUNT_NUCLEI] == 3 and row[io.COUNT_CELLS] is pd.NA
    assert set(row) == set(sg.READOUT_COLUMNS)
    assert all(c.startswith(io.METADATA_PREFIX) for c in sg.READOUT_COLUMNS)


def test_equivalent_diameter_of_a_disk():
    yy, xx = np.mgrid[:64, :64]
    disk = ((yy - 32) ** 2 + (xx - 30) ** 2 <= 10**2).astype(np.uint16)
    assert sg.equivalent_diameters(disk)[0] == pytest.approx(20.0, rel=0.03)
    assert sg.estimate_diameter([disk, 3 * disk], fallback=5.0) == pytest.approx(20.0, rel=0.03)
    assert sg.estimate_diameter([np.zeros((4, 4), np.uint16)], fallback=5.0) == 5.0


def _images(wells=("A01", "A02"), channels=("DNA", "Tubulin")) -> pd.DataFrame:
    rows = []
    for w in wells:
        r, c = io.split_well(w)
        for ch in channels:
            rows.append({io.PLATE: "P", io.WELL: w, io.ROW: r, io.COL: c, io.SITE: 1, io.CHANNEL: ch,
                         io.PATH: f"/x/{w}_{ch}.tif", io.FRAME: -1, io.PERT_TYPE: "negcon"})
    return pd.DataFrame(rows)


def test_site_table_pivots_channels_and_checks():
    sites = sg.site_table(_images(("B01", "A02", "A01")), ["DNA", "Tubulin"])
    assert sites[io.WELL].tolist() == ["A01", "A02", "B01"]
    assert sites["path_Tubulin"].tolist() == ["/x/A01_Tubulin.tif", "/x/A02_Tubulin.tif", "/x/B01_Tubulin.tif"]
    assert sites["frame_DNA"].dtype == np.int64 and io.CHANNEL not in sites.columns
    with pytest.raises(ConfigError, match="Actin"):
        sg.site_table(_images(), ["Actin"])
    broken = _images()
    broken = broken.drop(index=broken.index[(broken[io.WELL] == "A02") & (broken[io.CHANNEL] == "DNA")])
    with pytest.raises(InputDataError, match="A02 s1 lacks DNA"):
        sg.site_table(broken, ["DNA", "Tubulin"])


# --- QC_low_count -------------------------------------------------------------------------------------
def _count_table(counts, pert, flags=None) -> pd.DataFrame:
    df = pd.DataFrame({io.PLATE: "P", io.WELL: [f"A{i + 1:02d}" for i in range(len(counts))], io.SITE: 1,
                       io.PERT_TYPE: pert, io.COUNT_NUCLEI: pd.array(counts, dtype="Int64")})
    df["QC_blurry"] = flags if flags is not None else False
    return df


def test_low_count_robust_z_against_negcon():
    counts = [100, 102, 98, 101, 99, 100, 40, 100, 70, None]
    pert = ["negcon"] * 6 + ["trt", "trt", "poscon", "trt"]
    table = _count_table(counts, pert)
    z = lowcount.low_count_z(table)
    # median 100, MAD 1 -> scale 1.4826
    assert z.iloc[6] == pytest.approx((40 - 100) / 1.4826)
    assert z.iloc[7] == 0 and np.isnan(z.iloc[9])
    out = lowcount.flag_low_count(table, z=3.0)
    assert out[io.QC_LOW_COUNT].tolist() == [False] * 6 + [True, False, True, False]
    assert out[io.QC_LOW_COUNT].dtype == bool
    assert not lowcount.flag_low_count(table, z=None)[io.QC_LOW_COUNT].any()
    pd.testing.assert_frame_equal(table, _count_table(counts, pert))  # input not mutated


def test_low_count_reference_leaves_out_qc_failed_sites(caplog):
    counts = [100, 101, 99, 100, 5, 5, 5, 60]
    pert = ["negcon"] * 7 + ["trt"]
    flags = [False] * 4 + [True] * 3 + [False]  # three empty-looking negcon sites failed QC
    out = lowcount.flag_low_count(_count_table(counts, pert, flags), z=3.0)
    assert out[io.QC_LOW_COUNT].tolist() == [False] * 4 + [True] * 3 + [True]
    # with only 4 QC-passed negcon sites and min_reference_sites 5: no flags, a warning
    with caplog.at_level(logging.WARNING):
        out = lowcount.flag_low_count(_count_table(counts, pert, flags), z=3.0, min_reference_sites=5)
    assert not out[io.QC_LOW_COUNT].any() and "no QC_low_count flags" in caplog.text


def test_low_count_scale_falls_back_when_mad_is_zero():
    # MAD 0 -> 1.2533 * mean absolute deviation; all equal -> sqrt(median) (Poisson)
    table = _count_table([10, 10, 10, 10, 22, 4], ["negcon"] * 5 + ["trt"])
    med, scale = lowcount._robust_scale(np.array([10, 10, 10, 10, 22.0]))
    assert med == 10 and scale == pytest.approx(1.2533 * 12 / 5)
    assert lowcount._robust_scale(np.array([9.0] * 4)) == (9.0, 3.0)
    assert lowcount.low_count_z(table).iloc[5] == pytest.approx((4 - 10) / scale)


def test_segmented_qc_joins_counts_keeps_qc_rows(caplog):
    qc = pd.DataFrame({io.PLATE: "P", io.WELL: ["A03", "A01", "A02", "A04", "A05", "A06"], io.SITE: 1,
                       io.PERT_TYPE: ["negcon"] * 4 + ["trt", "trt"], "Metadata_DNA_FocusScore": 0.5,
                       "QC_blurry": False, "QC_unreadable": False})
    seg = pd.DataFrame({io.PLATE: "P", io.WELL: ["A01", "A02", "A03", "A04", "A05"], io.SITE: 1,
                        io.PERT_TYPE: "x", io.COUNT_NUCLEI: pd.array([50, 52, 48, 50, 3], dtype="Int64"),
                        io.COUNT_CELLS: pd.array([None] * 5, dtype="Int64"),
                        "Metadata_MeanArea_Nuclei": 10.0})
    with caplog.at_level(logging.WARNING):
        out = lowcount.segmented_qc(qc, seg, low_count_z=3.0)
    assert out[io.WELL].tolist() == qc[io.WELL].tolist()
    assert out[io.COUNT_NUCLEI].tolist()[:5] == [48, 50, 52, 50, 3] and out[io.COUNT_NUCLEI].isna().iloc[5]
    assert out[io.COUNT_NUCLEI].dtype == "Int64" and out[io.PERT_TYPE].tolist() == qc[io.PERT_TYPE].tolist()
    assert out[io.QC_LOW_COUNT].tolist() == [False] * 4 + [True, False]
    assert io.feature_columns(out) == [] and "no segmentation row" in caplog.text
    # an existing join is replaced, not duplicated
    again = lowcount.segmented_qc(out, seg)
    assert list(again.columns) == list(out.columns)
    with pytest.raises(InputDataError, match="no site matches"):
        lowcount.segmented_qc(qc, seg.assign(**{io.PLATE: "Q"}))
    with pytest.raises(InputDataError, match="duplicate"):
        lowcount.segmented_qc(qc, pd.concat([seg, seg]))


# --- settings and CLI defaults equal the schema --------------------------------------------------------
def test_settings_and_cli_defaults_equal_schema():
    from cytoscreen.cli import build_parser

    props = load_schema("config")["properties"]["segment"]["properties"]
    settings = sg.SegmentSettings()
    for key, prop in props.items():
        if key == "crops":
            continue
        assert getattr(settings, key) == prop["default"], key
    for key, prop in props["crops"]["properties"].items():
        value = getattr(settings.crops, key)
        assert (list(value) if isinstance(value, tuple) else value) == prop["default"], key
    args = build_parser().parse_args(["segment", "run", "--plate", "P"])
    for key in ("model", "nuclei_model", "nuclei_channel", "cell_channel", "nuclei_diameter_px",
                "cell_diameter_px", "batch_size", "accelerator", "threads"):
        assert getattr(args, key) == props[key]["default"], key
    args = build_parser().parse_args(["segment", "qc", "a", "b", "c"])
    assert args.low_count_z == props["low_count_z"]["default"]
    cfg = sg.SegmentSettings.from_config({"model": "m", "crops": {"channels": ["DNA"], "size_px": 32}})
    assert cfg.model == "m" and cfg.crops.channels == ("DNA",) and cfg.crops.size_px == 32


# --- model resolution (offline) --------------------------------------------------------------------------
def test_resolve_model_file_and_model_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(sm.MODEL_DIR_ENV, str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "nucleitorch_0").write_bytes(b"weights")
    (tmp_path / "models" / "my_gui_model").write_bytes(b"more weights")
    spec = sm.resolve_model("nuclei")
    assert spec.path == str((tmp_path / "models" / "nucleitorch_0").resolve())
    assert spec.sha256 == io.sha256_file(spec.path) and spec.source.startswith("model folder")
    assert sm.resolve_model("my_gui_model").name == "my_gui_model"
    direct = tmp_path / "cyto3_copy"
    direct.write_bytes(b"w")
    assert sm.resolve_model(str(direct)).source == "file"
    with pytest.raises(ModelError, match="is neither a file nor a model") as err:
        sm.resolve_model("cyto3")
    assert str(tmp_path / "models") in str(err.value) and "never downloads" in str(err.value)
    with pytest.raises(ModelError, match="not a file"):
        sm.resolve_model(str(tmp_path))


def test_missing_model_cli_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(sm.MODEL_DIR_ENV, str(tmp_path / "empty_models"))
    monkeypatch.delenv("CYTOSCREEN_DEBUG", raising=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("plates: plates.tsv\nsegment:\n  enabled: true\n")
    rc = main(["segment", "run", "--config", str(cfg), "--plate", "P1",
               "--images", str(tmp_path / "images.parquet"), "--out", str(tmp_path / "seg.parquet")])
    err = capsys.readouterr().err
    assert rc == ModelError.exit_code == 5
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1
    msg = lines[0]
    assert "`segment.model` is not set" in msg and "https://www.cellpose.org/models" in msg
    assert sm.MODEL_DIR_ENV in msg and "never downloads" in msg
    assert not (tmp_path / "seg.parquet").exists()
    # a name that is not in the model folder: same class of error, naming the folder
    rc = main(["segment", "run", "--config", str(cfg), "--plate", "P1", "--model", "cyto3",
               "--images", str(tmp_path / "images.parquet")])
    err = capsys.readouterr().err
    assert rc == 5 and "`segment.model: cyto3` is neither a file" in err and "Traceback" not in err


def test_gpu_requested_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ComputeError, match="no CUDA device"):
        sm.resolve_device("gpu")
    assert sm.resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError):
        sm.resolve_device("tpu")


# --- diameters with a stand-in model ---------------------------------------------------------------------
def test_fit_diameters_two_pass(tmp_path):
    import tifffile

    yy, xx = np.mgrid[:96, :96]
    dna = np.full((96, 96), 300, np.uint16)
    for cy, cx in ((20, 20), (20, 70), (70, 40)):
        dna[(yy - cy) ** 2 + (xx - cx) ** 2 <= 8**2] = 9000  # diameter ~16
    tifffile.imwrite(tmp_path / "dna.tif", dna)
    sites = pd.DataFrame({io.PLATE: "P", io.WELL: ["A01"], io.SITE: [1], io.PERT_TYPE: ["negcon"],
                          "path_DNA": [str(tmp_path / "dna.tif")], "frame_DNA": [-1]})
    model = ThresholdModel(diam_mean=30.0)
    seg = sg.Segmenter(nuclei_model=model)
    fitted = sg.fit_diameters(seg, sites, nuclei_channel="DNA", cell_channel=None, model_diameters=(30.0, None))
    assert fitted.nuclei_diameter_px == pytest.approx(16.0, rel=0.1)
    assert model.calls == [("nuclei", 30.0)]  # first pass at the model's training diameter
    table = sg.segment_sites(sites, fitted, nuclei_channel="DNA")
    assert model.calls[-1] == ("nuclei", fitted.nuclei_diameter_px)
    assert table[io.COUNT_NUCLEI].tolist() == [3] and table[io.COUNT_NUCLEI].dtype == "Int64"
    # a fixed diameter is never re-estimated
    fixed = sg.Segmenter(nuclei_model=model, nuclei_diameter_px=12.0)
    assert sg.fit_diameters(fixed, sites, nuclei_channel="DNA", cell_channel=None,
                            model_diameters=(30.0, None)) is fixed
    # unreadable sites are recorded with missing counts, not raised
    broken = sites.assign(path_DNA=str(tmp_path / "missing.tif"))
    table = sg.segment_sites(broken, fixed, nuclei_channel="DNA")
    assert table[io.COUNT_NUCLEI].isna().all()


# --- crops ------------------------------------------------------------------------------------------------
def test_nucleus_centres_and_crops_exact():
    labels = np.zeros((20, 20), np.uint16)
    labels[2:5, 3:6] = 4  # centre (3, 4), area 9
    labels[10:12, 15:20] = 9  # centre (10.5, 17), touches the right edge
    cen = cr.nucleus_centres(labels)
    assert cen["label"].tolist() == [4, 9] and cen["area"].tolist() == [9, 10]
    assert cen[["y", "x"]].to_numpy().tolist() == [[3.0, 4.0], [10.5, 17.0]]
    stack = np.arange(2 * 20 * 20, dtype=np.uint16).reshape(2, 20, 20)
    crops, padded = cr.extract_crops(stack, np.array([[10.0, 10.0], [3.0, 4.0]]), 6)
    assert crops.shape == (2, 2, 6, 6) and crops.dtype == np.uint16
    np.testing.assert_array_equal(crops[0], stack[:, 7:13, 7:13])
    assert padded.tolist() == [False, False]  # (3, 4): top-left corner (0, 1), just inside
    np.testing.assert_array_equal(crops[1], stack[:, 0:6, 1:7])
    crops, padded = cr.extract_crops(stack, np.array([[1.0, 19.0]]), 6)
    assert padded.tolist() == [True]
    np.testing.assert_array_equal(crops[0, :, 2:, :4], stack[:, 0:4, 16:20])
    assert (crops[0, :, :2] == 0).all() and (crops[0, :, :, 4:] == 0).all()


def test_crop_writer_chunks_and_atomicity(tmp_path):
    import zarr

    parts = [np.full((n, 2, 4, 4), i, np.uint16) for i, n in enumerate((3, 0, 5, 9, 1))]
    with cr.CropWriter(tmp_path / "c.zarr", channels=["A", "B"], size_px=4, dtype=np.uint16,
                       chunk_cells=4, attrs={"plate": "P"}) as w:
        spans = [w.add(p) for p in parts]
    assert spans == [(0, 3), (3, 3), (3, 8), (8, 17), (17, 18)]
    arr = zarr.open_array(str(tmp_path / "c.zarr"), mode="r")
    np.testing.assert_array_equal(arr[:], np.concatenate(parts))
    assert arr.attrs["channels"] == ["A", "B"] and arr.attrs["plate"] == "P"
    with pytest.raises(RuntimeError), cr.CropWriter(tmp_path / "d.zarr", channels=["A"], size_px=4,
                                                    dtype=np.uint16) as w:
        w.add(np.zeros((2, 1, 4, 4), np.uint16))
        raise RuntimeError("boom")
    assert not (tmp_path / "d.zarr").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["c.zarr"]


class _MeanBackbone:
    """Backbone stand-in: the embedding of an image is its mean (after the ImageNet-style norm)."""

    def __init__(self, size: int) -> None:
        from cytoscreen.backbones import BackboneSpec

        self.spec = BackboneSpec(name="mean_test", embedding_dim=1, input_px=size, mean=(0.0, 0.0, 0.0),
                                 std=(1.0, 1.0, 1.0), weights_source="none")

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, x):
        return x.mean(dim=(1, 2, 3))[:, None]


def test_embed_crops_median_per_site_and_wells():
    rng = np.random.default_rng(0)
    n_per_site = [3, 1, 4, 2]
    arr = rng.integers(0, 65535, (sum(n_per_site), 2, 8, 8)).astype(np.uint16)
    site_keys = [("A01", 1), ("A01", 2), ("A02", 1), ("A02", 2)]
    rows = []
    for (well, site), n in zip(site_keys, n_per_site, strict=True):
        rows += [{io.PLATE: "P", io.WELL: well, io.SITE: site, io.PERT_TYPE: "trt"}] * n
    index = pd.DataFrame(rows)
    index[cr.CROP] = np.arange(len(index))
    index[cr.CELL] = 1
    index[cr.CROP_PADDED] = False
    out = cr.embed_crops(arr, index, _MeanBackbone(8), channels=["DNA", "Actin"], scaling="dtype",
                         batch_size=3)  # batches cross site boundaries
    assert list(out.columns[-2:]) == ["DNA_mean_test_0000", "Actin_mean_test_0000"]
    assert out[cr.N_CELLS].tolist() == n_per_site and len(out) == 4
    assert cr.CELL not in out.columns and cr.CROP not in out.columns
    means = arr.astype(np.float64).mean(axis=(2, 3)) / 65535
    bounds = np.cumsum([0, *n_per_site])
    for i in range(4):
        expect = np.median(means[bounds[i] : bounds[i + 1]], axis=0)
        np.testing.assert_allclose(out.iloc[i, -2:].to_numpy(float), expect, rtol=1e-5)
    assert out["DNA_mean_test_0000"].dtype == np.float32
    # sites -> wells: median of QC-passed sites, cells summed over them
    qc = pd.DataFrame({io.PLATE: "P", io.WELL: ["A01", "A01", "A02", "A02"], io.SITE: [1, 2, 1, 2],
                       "QC_blurry": [False, False, False, True]})
    sites = cr.join_site_qc(out, qc)
    assert io.qc_columns(sites) == ["QC_blurry"]
    wells = cr.sites_to_wells(sites)
    assert wells[io.WELL].tolist() == ["A01", "A02"] and wells[cr.N_CELLS].tolist() == [4, 4]
    np.testing.assert_allclose(wells.iloc[0][["DNA_mean_test_0000", "Actin_mean_test_0000"]].to_numpy(float),
                               out.iloc[0:2, -2:].to_numpy(float).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(wells.iloc[1][["DNA_mean_test_0000"]].to_numpy(float),
                               out.iloc[2:3, -2].to_numpy(float), rtol=1e-5)
    assert wells[io.N_SITES].tolist() == [2, 1]


def test_crop_scaling_methods():
    import torch

    x = torch.tensor([[[[0.0, 50.0], [100.0, 200.0]]]])
    lv = np.array([[0.0, 100.0]])
    assert cr._scale(x.clone(), scaling="negcon", levels=lv, percentiles=(0, 100), full_scale=1.0
                     ).flatten().tolist() == [0.0, 0.5, 1.0, 1.0]
    out = cr._scale(x.clone(), scaling="image", levels=None, percentiles=(0, 100), full_scale=1.0)
    assert out.flatten().tolist() == [0.0, 0.25, 0.5, 1.0]
    assert cr._scale(x.clone(), scaling="dtype", levels=None, percentiles=(0, 100), full_scale=200.0
                     ).flatten().tolist() == [0.0, 0.25, 0.5, 1.0]
    with pytest.raises(ConfigError):
        cr._scale(x.clone(), scaling="zscore", levels=None, percentiles=(0, 100), full_scale=1.0)
