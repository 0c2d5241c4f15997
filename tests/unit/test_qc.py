"""QC metrics and flags: exactly the synthetic blurred/saturated sites are flagged."""

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.config import load_config, plate_info
from cytoscreen.errors import ConfigError
from cytoscreen.ingest import IngestSettings, ingest_plate
from cytoscreen.qc import FLAGS, METRICS, QCSettings, failed, image_metrics, run_qc
from cytoscreen.stats import robust_z


@pytest.fixture()
def plate_images(tiny_plate):
    config = load_config(tiny_plate / "config.yaml")
    images = ingest_plate("SYN001", plate_info(config, "SYN001"), IngestSettings.from_config(config))
    return QCSettings.from_config(config["qc"]), images


def test_flags_match_synthetic_truth(plate_images, tiny_plate):
    config, images = plate_images
    qc = run_qc(images, config)
    truth = pd.read_csv(tiny_plate / "truth" / "SYN001.tsv", sep="\t")
    truth["well"] = truth["well"].map(io.normalize_well)
    merged = qc.merge(truth, left_on=[io.WELL, io.SITE], right_on=["well", "site"], validate="1:1")
    assert len(merged) == 96 and truth["blurred"].sum() == 2 and truth["saturated"].sum() == 1
    assert merged["QC_blurry"].tolist() == merged["blurred"].tolist()
    assert merged["QC_saturated"].tolist() == merged["saturated"].tolist()
    assert not merged["QC_empty"].any() and not merged["QC_unreadable"].any()
    assert failed(qc).sum() == 3
    # metrics are per channel, under Metadata_ so they never count as features
    assert io.feature_columns(qc) == []
    assert {"Metadata_DNA_FocusScore", "Metadata_Actin_SaturationFraction"} <= set(qc.columns)
    assert {f"Metadata_{ch}_{m}" for ch in ("DNA", "Tubulin", "Actin") for m in METRICS} <= set(qc.columns)
    assert set(FLAGS) <= set(qc.columns) and not qc["QC_constant"].any()


def test_settings_from_schema_defaults_and_unknown_keys():
    s = QCSettings.from_config({})
    assert (s.batch_size, s.blur_z, s.empty_z, s.min_sites_for_outliers) == (16, 3.5, 6.0, 8)
    assert QCSettings.from_config({"blur_z": 2.0}).blur_z == 2.0
    with pytest.raises(ConfigError, match="qc: unknown key.*blur_zz"):
        QCSettings.from_config({"blur_zz": 2.0})
    ing = IngestSettings.from_config({"channels": {"w1": "DNA"}, "ingest": {"extensions": [".tif"]}})
    assert ing.channels == {"w1": "DNA"} and ing.extensions == (".tif",) and ing.on_missing_wells == "error"


def test_empty_and_corrupt_sites_are_flagged_not_raised(plate_images, tmp_path):
    config, images = plate_images
    images = images.copy()
    # well A05 site 1: all channels a flat field without cells; well A06: a truncated TIFF
    flat = np.random.default_rng(0).normal(300, 40, (128, 128)).clip(0).astype(np.uint16)
    import tifffile

    for ch in images.loc[images[io.WELL] == "A05", io.CHANNEL]:
        new = tmp_path / f"flat_{ch}.tif"
        tifffile.imwrite(new, flat)
        images.loc[(images[io.WELL] == "A05") & (images[io.CHANNEL] == ch), io.PATH] = str(new)
    bad = tmp_path / "truncated.tif"
    src = images.loc[(images[io.WELL] == "A06") & (images[io.CHANNEL] == "DNA"), io.PATH].iloc[0]
    bad.write_bytes(open(src, "rb").read()[:300])
    images.loc[(images[io.WELL] == "A06") & (images[io.CHANNEL] == "DNA"), io.PATH] = str(bad)
    qc = run_qc(images, config).set_index(io.WELL)
    assert qc.loc["A05", "QC_empty"] and not qc.drop(index="A05")["QC_empty"].any()
    assert qc.loc["A06", "QC_unreadable"] and qc["QC_unreadable"].sum() == 1
    assert np.isnan(qc.loc["A06", "Metadata_DNA_FocusScore"])
    assert np.isfinite(qc.loc["A06", "Metadata_Actin_FocusScore"])  # other channels still measured


def test_image_metrics_values():
    img = np.zeros((10, 10), np.uint16)
    img[:2] = 65535
    m = image_metrics(img)
    assert m["SaturationFraction"] == pytest.approx(0.2)
    assert m["MeanIntensity"] == pytest.approx(0.2 * 65535)
    flat = image_metrics(np.full((10, 10), 7, np.uint8))
    assert np.isnan(flat["FocusScore"]) and flat["Contrast"] == pytest.approx(1.0)
    f = image_metrics(np.random.default_rng(0).random((32, 32)).astype(np.float32))
    assert f["SaturationFraction"] == 0.0 and f["FocusScore"] > 1


def test_histogram_percentiles_equal_numpy():
    from cytoscreen.qc.metrics import _percentiles

    rng = np.random.default_rng(1)
    for img in (rng.integers(0, 65535, (37, 41), dtype=np.uint16), rng.integers(0, 255, (64, 3), dtype=np.uint8),
                np.full((5, 5), 9, np.uint16)):
        assert np.allclose(_percentiles(img, (50, 99.9, 0, 100)), np.percentile(img, (50, 99.9, 0, 100)))


def test_robust_z():
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert z[2] == 0 and z[-1] > 30
    assert np.allclose(robust_z(np.array([5.0, 5.0, 5.0])), 0)


def test_qc_cli(plate_images, tmp_path, capsys):
    config, images = plate_images
    io.write_parquet(images, tmp_path / "images.parquet")
    rc = main(["qc", str(tmp_path / "images.parquet"), str(tmp_path / "qc.parquet")])
    assert rc == 0
    qc = pd.read_parquet(tmp_path / "qc.parquet")
    assert len(qc) == 96 and qc["QC_blurry"].dtype == bool
    assert "flagged 2 QC_blurry, 1 QC_saturated" in capsys.readouterr().err


def test_dead_and_constant_channels_flagged_via_cli(plate_images, tmp_path, capsys):
    """Issue 15 item 9: a constant image, or one all-zero (dead) or signal-free channel, fails the site."""
    import tifffile

    _, images = plate_images
    images = images.copy()

    def replace(well, channel, img):
        new = tmp_path / f"{well}_{channel}.tif"
        tifffile.imwrite(new, img)
        images.loc[(images[io.WELL] == well) & (images[io.CHANNEL] == channel), io.PATH] = str(new)

    replace("A05", "Actin", np.zeros((128, 128), np.uint16))  # one dead channel, the others fine
    for ch in ("DNA", "Tubulin", "Actin"):
        replace("A06", ch, np.full((128, 128), 700, np.uint16))  # a constant site
    noise = np.random.default_rng(0).normal(300, 40, (128, 128)).clip(0).astype(np.uint16)
    replace("A07", "DNA", noise)  # camera offset only: no stain in one channel
    io.write_parquet(images, tmp_path / "images.parquet")
    rc = main(["qc", str(tmp_path / "images.parquet"), str(tmp_path / "qc.parquet")])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    qc = pd.read_parquet(tmp_path / "qc.parquet").set_index(io.WELL)
    assert qc.loc["A05", "QC_constant"] and qc.loc["A06", "QC_constant"] and qc["QC_constant"].sum() == 2
    assert qc.loc["A07", "QC_empty"] and not qc.loc["A07", "QC_constant"]
    assert qc.loc["A05", "Metadata_Actin_StdIntensity"] == 0 and np.isnan(qc.loc["A05", "Metadata_Actin_FocusScore"])
    assert np.isfinite(qc.loc["A05", "Metadata_DNA_FocusScore"])  # the live channels are still measured
    # the other sites keep exactly the flags they had (2 blurry + 1 saturated in the synthetic truth)
    assert failed(qc).sum() == 3 + 3 and not qc.drop(index=["A05", "A06", "A07"])["QC_empty"].any()
    assert "flagged 2 QC_blurry, 1 QC_saturated, 1 QC_empty, 2 QC_constant" in err


def test_integer_kernels_equal_numpy_reference():
    from cytoscreen.qc.metrics import _integer_metrics, _numpy_metrics

    rng = np.random.default_rng(4)
    images = [rng.integers(0, 65535, (37, 41), dtype=np.uint16), rng.integers(0, 255, (64, 3), dtype=np.uint8),
              np.full((5, 5), 9, np.uint16), rng.normal(2000, 300, (256, 200)).clip(0).astype(np.uint16),
              np.zeros((8, 8), np.uint8), np.full((3, 3), 65535, np.uint16)]
    for img in images:
        full = float(np.iinfo(img.dtype).max)
        fast, ref = _integer_metrics(img, full), _numpy_metrics(img, full)
        for k in METRICS:
            assert np.isclose(fast[k], ref[k], rtol=1e-5, equal_nan=True), (img.dtype, img.shape, k)
    assert _integer_metrics(np.full((4, 4), 7, np.uint16), 65535.0)["StdIntensity"] == 0.0  # exactly
    # a 12-bit full scale inside uint16, and the rescale factor of a mixed plate
    img = np.array([[4095, 10], [20, 30]], np.uint16)
    assert image_metrics(img, 4095.0)["SaturationFraction"] == 0.25
    scaled = image_metrics(img, 4095.0, scale=2.0)
    assert scaled["MeanIntensity"] == pytest.approx(2 * img.mean()) and scaled["SaturationFraction"] == 0.25


def test_qc_and_ingest_sections_reject_unknown_keys(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("qc: {blur_zz: 2.0}\n")
    rc = main(["qc", str(tmp_path / "images.parquet"), str(tmp_path / "qc.parquet"), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == ConfigError.exit_code and "blur_zz" in err and "Traceback" not in err
    cfg.write_text("ingest: {on_missing_well: warn}\n")
    rc = main(["ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet")])
    err = capsys.readouterr().err
    assert rc == ConfigError.exit_code and "on_missing_well" in err and "Traceback" not in err
