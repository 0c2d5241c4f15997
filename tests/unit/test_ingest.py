"""Layout parsing, platemap validation and the ingest CLI's errors."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.ingest import index_plate, read_platemap, resolve_layout
from cytoscreen.ingest.platemap import join_platemap
from tests.conftest import DATA, write_config


def _parse(layout: str, name: str) -> dict:
    m = resolve_layout(layout).search(name)
    return m.groupdict() if m else {}


@pytest.mark.parametrize("name,well,site,channel,plate", [
    ("P1_A01_s1_w1.tif", "A01", "1", "w1", "P1"),
    ("PLATE-7_P24_s4_w3.TIF", "P24", "4", "w3", "PLATE-7"),
    ("G10_s2_w1A7B3C8E1-2F0D-4D11-9F35-0D8B6C4E1A22.tif", "G10", "2", "w1", None),
    ("Week1_22123_B2_w2.tif", "B2", None, "w2", "Week1_22123"),
])
def test_imagexpress_names(name, well, site, channel, plate):
    g = _parse("imagexpress", name)
    assert (g["well"], g["site"], g["channel"], g["plate"]) == (well, site, channel, plate)


def test_phenix_and_cellprofiler_names():
    g = _parse("phenix", "r16c24f09p01-ch5sk1fk1fl1.tiff")
    assert (g["row"], g["col"], g["site"], g["channel"]) == ("16", "24", "09", "ch5")
    g = _parse("cellprofiler", "AS_09125_050116030001_D03f00d2.tif")
    assert (g["plate"], g["well"], g["site"], g["channel"]) == ("AS_09125_050116030001", "D03", "00", "2")


def test_unknown_layout_lists_known():
    with pytest.raises(ConfigError, match="unknown layout 'nope'.*imagexpress.*phenix"):
        resolve_layout("nope")
    with pytest.raises(ConfigError, match="needs a named group `well`"):
        resolve_layout("mine", {"mine": r"(?P<site>\d+)"})


def _touch_images(folder: Path, names, shape=(16, 16), dtype=np.uint16):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        tifffile.imwrite(folder / n, np.full(shape, 100, dtype))


def test_phenix_384_plate_index(tmp_path):
    names = [f"r{r:02d}c{c:02d}f01p01-ch{ch}sk1fk1fl1.tiff" for r, c in ((1, 1), (16, 24)) for ch in (1, 2)]
    _touch_images(tmp_path / "img", names)
    df = index_plate(tmp_path / "img", plate="P", layout="phenix", channels={"ch1": "DNA", "ch2": "RNA"})
    assert list(df[io.WELL].unique()) == ["A01", "P24"]
    assert list(df[io.CHANNEL]) == ["DNA", "RNA", "DNA", "RNA"]
    assert df.loc[df[io.WELL] == "P24", io.ROW].iloc[0] == 15 and df[io.COL].max() == 24


def test_user_regex_and_a1_wells(tmp_path):
    _touch_images(tmp_path / "img", ["well-A1_field2_DAPI.tif", "well-A1_field2_GFP.tif"])
    df = index_plate(tmp_path / "img", plate="P", layout="mine",
                     user_layouts={"mine": r"well-(?P<well>\w\d+)_field(?P<site>\d+)_(?P<channel>\w+)\.tif$"})
    assert set(df[io.WELL]) == {"A01"} and set(df[io.CHANNEL]) == {"DAPI", "GFP"} and set(df[io.SITE]) == {2}


def test_cellprofiler_example_human_real_files():
    df = index_plate(DATA / "example_human", plate="AS_09125_050116030001", layout="cellprofiler",
                     channels={"0": "DNA", "1": "PH3", "2": "Cells"})
    assert len(df) == 3 and list(df[io.CHANNEL]) == ["DNA", "PH3", "Cells"]
    img = io.read_image(df[io.PATH].iloc[0])
    assert img.dtype == np.uint8 and img.shape == (512, 512)


def test_multichannel_tiff_pages(tmp_path):
    (tmp_path / "img").mkdir()
    for well in ("B02", "B03"):
        tifffile.imwrite(tmp_path / "img" / f"{well}_s1.tif", np.zeros((4, 8, 8), np.uint16),
                         photometric="minisblack")
    df = index_plate(tmp_path / "img", plate="P", layout="stack",
                     user_layouts={"stack": r"(?P<well>[A-P]\d+)_s(?P<site>\d+)\.tif$"},
                     channels={"0": "DNA", "1": "ER", "2": "RNA", "3": "Mito"})
    assert len(df) == 8 and list(df[io.FRAME][:4]) == [0, 1, 2, 3]
    assert list(df[io.CHANNEL][:4]) == ["DNA", "ER", "RNA", "Mito"]


def test_jump_zarr_ingests(tmp_path):
    df = index_plate(DATA / "jump_rab30_mini", plate="JUMP", layout="zarr")
    assert len(df) == 10 and set(df[io.WELL]) == {"G01", "L07"}
    # channel order is the channels.csv order, and frame = site * 5 + channel index
    g01 = df[df[io.WELL] == "G01"]
    assert list(g01[io.CHANNEL]) == ["AGP", "DNA", "ER", "Mito", "RNA"] and list(g01[io.FRAME]) == [0, 1, 2, 3, 4]
    dna = io.read_image(g01[io.PATH].iloc[1], int(g01[io.FRAME].iloc[1]))
    assert abs(dna.mean() - 2140) < 5


# --- bad input: one clear error, right exit code, no traceback -------------------------------------
def _run(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _plate_setup(tmp_path, tiny_screen, *, wells=("A01", "A02", "B01"), channels=("w1", "w2", "w3"),
                 platemap_wells=None):
    img = tmp_path / "images" / "P1"
    names = [f"P1_{w}_s1_{c}.tif" for w in wells for c in channels]
    _touch_images(img, names)
    rows = [dict(well=w, perturbation="DMSO", pert_type="negcon") for w in (platemap_wells or wells)]
    pd.DataFrame(rows).to_csv(tmp_path / "pm.tsv", sep="\t", index=False)
    pd.DataFrame([dict(plate="P1", images="images/P1", layout="imagexpress", platemap="pm.tsv")]).to_csv(
        tmp_path / "plates.tsv", sep="\t", index=False)
    return write_config(tmp_path / "config.yaml", tmp_path / "plates.tsv")


def test_ingest_cli_writes_joined_table(tmp_path, tiny_screen, capsys):
    cfg = _plate_setup(tmp_path, tiny_screen)
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 0, err
    df = pd.read_parquet(tmp_path / "i.parquet")
    assert len(df) == 9 and set(df[io.CHANNEL]) == {"DNA", "Tubulin", "Actin"}
    assert set(df[io.PERT_TYPE]) == {"negcon"} and set(df[io.BATCH]) == {"P1"}
    assert io.read_provenance(tmp_path / "i.parquet")["stage"] == "ingest"


def test_error_missing_channel(tmp_path, tiny_screen, capsys):
    cfg = _plate_setup(tmp_path, tiny_screen)
    (tmp_path / "images" / "P1" / "P1_A02_s1_w3.tif").unlink()
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == InputDataError.exit_code
    assert "well A02 site 1 has no Actin image" in err
    assert not (tmp_path / "i.parquet").exists()


def test_error_unmatched_files_counted(tmp_path, tiny_screen, capsys):
    cfg = _plate_setup(tmp_path, tiny_screen)
    _touch_images(tmp_path / "images" / "P1", ["notes_scan.tif", "thumb.tif"])
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 0 and "2 of 11 image files match no part of layout 'imagexpress'" in err
    cfg.write_text(cfg.read_text() + "ingest: {on_unmatched_files: error}\n")
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 4 and "notes_scan.tif" in err


def test_error_duplicate_site_channel(tmp_path, tiny_screen, capsys):
    cfg = _plate_setup(tmp_path, tiny_screen)
    _touch_images(tmp_path / "images" / "P1" / "rescan", ["P1_A01_s1_w1.tif"])
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 4 and "more than one image" in err and "well A01 site 1 channel DNA" in err


def test_error_platemap_wells_without_images(tmp_path, tiny_screen, capsys):
    cfg = _plate_setup(tmp_path, tiny_screen, platemap_wells=("A01", "A02", "B01", "C05"))
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 4 and "1 platemap well(s) have no images (C05)" in err and "on_missing_wells: warn" in err
    cfg.write_text(cfg.read_text() + "ingest: {on_missing_wells: warn}\n")
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 0


def test_error_image_wells_without_platemap(tmp_path, tiny_screen, capsys):
    cfg = _plate_setup(tmp_path, tiny_screen, platemap_wells=("A01", "A02"))
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 4 and "have images but no platemap row (B01)" in err and "pm.tsv" in err
    cfg.write_text(cfg.read_text() + "ingest: {on_unmapped_wells: warn}\n")
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 0
    df = pd.read_parquet(tmp_path / "i.parquet")
    assert set(df.loc[df[io.WELL] == "B01", io.PERT_TYPE]) == {"unknown"}  # kept, not dropped


def test_error_unreadable_platemap(tmp_path, tiny_screen, capsys):
    cfg = _plate_setup(tmp_path, tiny_screen)
    (tmp_path / "pm.tsv").write_text("well,perturbation,pert_type\nA01,DMSO,negcon\n")
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == ConfigError.exit_code and "pm.tsv: platemap lacks column(s)" in err and "tab-separated" in err
    (tmp_path / "pm.tsv").write_text("well\tperturbation\tpert_type\nA01\tDMSO\tcontrol\n")
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 3 and "pm.tsv line 2" in err and "pert_type" in err


def test_error_empty_plate_and_unknown_plate(tmp_path, tiny_screen, capsys):
    cfg = _plate_setup(tmp_path, tiny_screen)
    shutil.rmtree(tmp_path / "images" / "P1")
    (tmp_path / "images" / "P1").mkdir()
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 4 and "no image files" in err and "plate is empty" in err
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P9", "--out", str(tmp_path / "i.parquet"))
    assert rc == 3 and "unknown plate 'P9'; known plates: P1" in err


def test_error_unknown_layout_via_cli(tmp_path, tiny_screen, capsys):
    cfg = _plate_setup(tmp_path, tiny_screen)
    plates = pd.read_csv(tmp_path / "plates.tsv", sep="\t")
    plates["layout"] = "metaxpress2"
    plates.to_csv(tmp_path / "plates.tsv", sep="\t", index=False)
    rc, err = _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))
    assert rc == 3 and "unknown layout 'metaxpress2'" in err


def test_read_platemap_normalizes_and_rejects_duplicates(tmp_path):
    (tmp_path / "pm.tsv").write_text("well\tperturbation\tpert_type\tconcentration\tmoa\n"
                                     "A1\tDMSO\tnegcon\t\t\nB12\tx\ttrt\t0.5\tfoo\n")
    pm = read_platemap(tmp_path / "pm.tsv")
    assert list(pm["well"]) == ["A01", "B12"] and np.isnan(pm["concentration"].iloc[0])
    (tmp_path / "dup.tsv").write_text("well\tperturbation\tpert_type\nA1\tDMSO\tnegcon\nA01\tx\ttrt\n")
    with pytest.raises(ConfigError, match="listed twice: A01"):
        read_platemap(tmp_path / "dup.tsv")


def test_join_keeps_extra_columns_and_empty_wells_need_no_images():
    images = pd.DataFrame({io.WELL: ["A01", "A02"], io.SITE: [1, 1]})
    pm = pd.DataFrame({"well": ["A01", "A02", "A03"], "perturbation": ["DMSO", "x", ""],
                       "pert_type": ["negcon", "trt", "empty"], "source": ["s1", "s2", "s3"]})
    out = join_platemap(images, pm, source="pm.tsv")
    assert list(out["Metadata_source"]) == ["s1", "s2"] and list(out[io.PERT_TYPE]) == ["negcon", "trt"]


# --- issue 15 item 6: letter rows, and matches whose groups cannot be parsed ------------------------
def _layout_setup(tmp_path, names, *, layout, regex=None, channels=None, wells=None, pages=1):
    """A plate folder of ``names`` (tiny TIFFs), its platemap, plate table and config."""
    img = tmp_path / "images"
    img.mkdir(parents=True, exist_ok=True)
    for n in names:
        shape = (pages, 8, 8) if pages > 1 else (8, 8)
        tifffile.imwrite(img / n, np.full(shape, 100, np.uint16), photometric="minisblack")
    rows = [dict(well=w, perturbation="DMSO", pert_type="negcon") for w in (wells or [])]
    pd.DataFrame(rows, columns=["well", "perturbation", "pert_type"]).to_csv(tmp_path / "pm.tsv", sep="\t",
                                                                             index=False)
    pd.DataFrame([dict(plate="P1", images="images", layout=layout, platemap="pm.tsv")]).to_csv(
        tmp_path / "plates.tsv", sep="\t", index=False)
    extra = {"layouts": {layout: regex}} if regex else {}
    cfg = write_config(tmp_path / "config.yaml", tmp_path / "plates.tsv", **extra)
    import yaml

    data = yaml.safe_load(cfg.read_text())
    data["channels"] = channels if channels is not None else {"w1": "DNA"}
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _ingest(capsys, cfg, tmp_path):
    return _run(capsys, "ingest", "--config", str(cfg), "--plate", "P1", "--out", str(tmp_path / "i.parquet"))


def test_letter_rows_bbbc013_names(tmp_path, capsys):
    names = [f"Channel{c}-{i + 1:02d}-{r}-{col:02d}.tif" for i, (r, col) in enumerate([("A", 1), ("H", 12)])
             for c in (1, 2)]
    cfg = _layout_setup(tmp_path, names, layout="bbbc013", wells=["A01", "H12"], channels={"1": "GFP", "2": "DNA"},
                        regex=r"Channel(?P<channel>\d)-\d{2}-(?P<row>[A-H])-(?P<col>\d{2})\.tif$")
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == 0, err
    df = pd.read_parquet(tmp_path / "i.parquet")
    assert list(df[io.WELL]) == ["A01", "A01", "H12", "H12"] and list(df[io.CHANNEL]) == ["GFP", "DNA"] * 2
    assert list(df[io.ROW]) == [0, 0, 7, 7] and list(df[io.COL]) == [1, 1, 12, 12] and set(df[io.SITE]) == {1}


def test_letter_rows_column_first_multichannel(tmp_path, capsys):
    # Opera-style 01A.tif: column, then the row letter; channels as pages; 1536-well rows AA-AF too
    cfg = _layout_setup(tmp_path, ["01A.tif", "12P.tif", "48AF.tif"], layout="opera", pages=2,
                        wells=["A01", "P12", "AF48"], channels={"0": "DNA", "1": "RNA"},
                        regex=r"(?P<col>\d+)(?P<row>[A-Z]{1,2})\.tif$")
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == 0, err
    df = pd.read_parquet(tmp_path / "i.parquet")
    assert list(df[io.WELL].unique()) == ["A01", "P12", "AF48"] and list(df[io.ROW].unique()) == [0, 15, 31]
    assert list(df[io.FRAME]) == [0, 1] * 3 and list(df[io.CHANNEL]) == ["DNA", "RNA"] * 3


def test_numeric_rows_still_parse(tmp_path):
    _touch_images(tmp_path / "img", ["r03c07f02p01-ch1sk1fk1fl1.tiff"])
    df = index_plate(tmp_path / "img", plate="P", layout="phenix")
    assert (df[io.WELL].iloc[0], df[io.ROW].iloc[0], df[io.COL].iloc[0], df[io.SITE].iloc[0]) == ("C07", 2, 7, 2)


@pytest.mark.parametrize("names,layout,regex,expect", [
    # Phenix row 0: there is no row 0 (r01 is row A); this crashed with a traceback
    (["r00c01f01p01-ch1sk1fk1fl1.tiff", "r01c01f01p01-ch1sk1fk1fl1.tiff"], "phenix", None,
     "1 of 2 image files match layout 'phenix' but their names cannot be parsed, e.g. "
     "r00c01f01p01-ch1sk1fk1fl1.tiff: group `row` = '00': row numbers run from 1 (row A) to 32"),
    (["B00_s1_w1.tif"], "imagexpress", None,
     "B00_s1_w1.tif: group `well` = 'B00': a well is row letter(s) and a column number from 1"),
    (["xx-ZZ-03_w1.tif"], "mine", r"(?P<row>[A-Z]+)-(?P<col>\d+)_(?P<channel>w\d)\.tif$",
     "xx-ZZ-03_w1.tif: group `row` = 'ZZ': a row is a letter A-Z or AA-AF"),
    (["A-X_w1.tif"], "mine", r"(?P<row>[A-Z])-(?P<col>\w+)_(?P<channel>w\d)\.tif$",
     "A-X_w1.tif: group `col` = 'X': a column is a number from 1 to 48"),
    (["A-01_sQ_w1.tif"], "mine", r"(?P<row>[A-Z])-(?P<col>\d+)_s(?P<site>\w)_(?P<channel>w\d)\.tif$",
     "A-01_sQ_w1.tif: group `site` = 'Q': expected a whole number"),
])
def test_unparsable_groups_are_named(tmp_path, capsys, names, layout, regex, expect):
    cfg = _layout_setup(tmp_path, names, layout=layout, regex=regex, wells=["A01"])
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == InputDataError.exit_code and expect in err
    assert "match no part of layout" not in err and not (tmp_path / "i.parquet").exists()


# --- issue 15 item 7: bad well names in a platemap -------------------------------------------------
@pytest.mark.parametrize("bad,why", [
    ("A00", "a well is row letter(s) and a column number from 1"),
    ("A0", "a well is row letter(s) and a column number from 1"),
    ("AG01", "past the largest plate format (1536 wells: rows A-AF, columns 1-48)"),
    ("B49", "past the largest plate format"),
])
def test_platemap_bad_well_names_name_the_line(tmp_path, capsys, bad, why):
    cfg = _layout_setup(tmp_path, ["P1_A01_s1_w1.tif"], layout="imagexpress", wells=["A01"])
    with open(tmp_path / "pm.tsv", "a") as fh:
        fh.write(f"{bad}\tDMSO\tnegcon\n")
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == ConfigError.exit_code and f"pm.tsv line 3: well '{bad}' is not a well name: {why}" in err
    assert "this is a bug" not in err and not (tmp_path / "i.parquet").exists()


def test_platemap_schema_well_pattern():
    import re

    from cytoscreen.config import load_schema

    pattern = re.compile(load_schema("platemap")["properties"]["well"]["pattern"])
    assert all(pattern.match(w) for w in ("A01", "a1", "P24", "AF48", "A001"))
    assert not any(pattern.match(w) for w in ("A00", "A0", "AG01", "A49", "1A", "A100"))


# --- issue 15 item 8: dtype and bit depth from the header; a channel mixing them -------------------
def _mixed_plate(tmp_path, n_wells=12):
    """12 wells x 1 channel; wells 1-3 are 8-bit, the rest 16-bit (the same scene at 1/257)."""
    rng = np.random.default_rng(0)
    wells = [f"A{c:02d}" for c in range(1, n_wells + 1)]
    img = tmp_path / "images"
    img.mkdir()
    for i, w in enumerate(wells):
        scene = rng.normal(2000, 200, (64, 64))
        for _ in range(6):
            y, x = rng.integers(8, 56, 2)
            scene[y - 4 : y + 4, x - 4 : x + 4] += rng.uniform(8000, 30000)
        scene = scene.clip(0, 65535).astype(np.uint16)
        tifffile.imwrite(img / f"P1_{w}_s1_w1.tif", (scene // 257).astype(np.uint8) if i < 3 else scene)
    return _layout_setup(tmp_path, [], layout="imagexpress", wells=wells)


def test_mixed_bit_depth_is_an_error_by_default(tmp_path, capsys):
    cfg = _mixed_plate(tmp_path)
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == InputDataError.exit_code and not (tmp_path / "i.parquet").exists()
    assert "channel DNA mixes image types: 9 uint16 16-bit (e.g. P1_A04_s1_w1.tif); 3 uint8 8-bit" in err
    assert "ingest.on_mixed_bit_depth: rescale" in err


def test_mixed_bit_depth_rescaled_then_qc_compares(tmp_path, capsys):
    cfg = _mixed_plate(tmp_path)
    cfg.write_text(cfg.read_text() + "ingest: {on_mixed_bit_depth: rescale}\n")
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == 0, err
    df = pd.read_parquet(tmp_path / "i.parquet")
    assert list(df[io.DTYPE]) == ["uint8"] * 3 + ["uint16"] * 9 and list(df[io.BIT_DEPTH]) == [8] * 3 + [16] * 9
    assert np.allclose(df[io.INTENSITY_SCALE], [257.0] * 3 + [1.0] * 9)
    rc, err = _run(capsys, "qc", str(tmp_path / "i.parquet"), str(tmp_path / "qc.parquet"), "--config", str(cfg))
    assert rc == 0, err
    qc = pd.read_parquet(tmp_path / "qc.parquet")
    assert not qc["QC_empty"].any() and not qc["QC_saturated"].any()  # the 8-bit wells are not "empty"
    means = qc["Metadata_DNA_MeanIntensity"].to_numpy()
    assert abs(means[:3].mean() / means[3:].mean() - 1) < 0.1  # on one scale
    # without the scale the 8-bit wells look empty: what this setting prevents
    io.write_parquet(df.drop(columns=[io.INTENSITY_SCALE]), tmp_path / "raw.parquet")
    rc, err = _run(capsys, "qc", str(tmp_path / "raw.parquet"), str(tmp_path / "qc_raw.parquet"))
    assert rc == 0 and list(pd.read_parquet(tmp_path / "qc_raw.parquet")["QC_empty"]) == [True] * 3 + [False] * 9


def test_one_bit_depth_is_recorded(tmp_path, capsys):
    cfg = _layout_setup(tmp_path, ["P1_A01_s1_w1.tif"], layout="imagexpress", wells=["A01"])
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == 0, err
    df = pd.read_parquet(tmp_path / "i.parquet")
    assert (df[io.DTYPE].iloc[0], df[io.BIT_DEPTH].iloc[0], df[io.INTENSITY_SCALE].iloc[0]) == ("uint16", 16, 1.0)


# --- issue 15 item 10: a channel named in the config but absent from the plate ---------------------
def test_channel_missing_from_whole_plate(tmp_path, capsys):
    names = [f"P1_{w}_s1_{c}.tif" for w in ("A01", "A02") for c in ("w1", "w2")]
    cfg = _layout_setup(tmp_path, names, layout="imagexpress", wells=["A01", "A02"],
                        channels={"w1": "DNA", "w2": "Tubulin", "w3": "Actin"})
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == InputDataError.exit_code and not (tmp_path / "i.parquet").exists()
    assert "1 channel(s) named in the config have no images (w3: Actin); channels found: DNA, Tubulin" in err
    assert "ingest.on_missing_channels: warn" in err
    cfg.write_text(cfg.read_text() + "ingest: {on_missing_channels: warn}\n")
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == 0 and "WARNING" in err and "(w3: Actin)" in err
    assert set(pd.read_parquet(tmp_path / "i.parquet")[io.CHANNEL]) == {"DNA", "Tubulin"}


def test_features_channel_missing_from_plate(tmp_path, capsys):
    cfg = _layout_setup(tmp_path, ["P1_A01_s1_w1.tif"], layout="imagexpress", wells=["A01"])
    cfg.write_text(cfg.read_text() + "features: {channels: [DNA, Mito]}\n")
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == InputDataError.exit_code and "(Mito (features.channels)); channels found: DNA" in err


# --- issue 15 item 11: z-stacks -------------------------------------------------------------------
def _zstack_plate(tmp_path, extra=""):
    img = tmp_path / "images"
    img.mkdir()
    stack = np.zeros((4, 16, 16), np.uint16)
    for z in range(4):
        stack[z, z, z] = 1000 + z  # a different bright pixel per plane
    tifffile.imwrite(img / "P1_A01_s1_w1.tif", stack, photometric="minisblack")
    cfg = _layout_setup(tmp_path, [], layout="imagexpress", wells=["A01"])
    cfg.write_text(cfg.read_text() + extra)
    return cfg, stack


def test_zstack_is_a_clear_error_naming_the_setting(tmp_path, capsys):
    cfg, _ = _zstack_plate(tmp_path)
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == InputDataError.exit_code and not (tmp_path / "i.parquet").exists()
    assert "P1_A01_s1_w1.tif: a 3-D TIFF (shape (4, 16, 16)" in err and "a z-stack of 4 planes" in err
    assert "set `ingest.z_projection: max`" in err


def test_zstack_max_projection_through_ingest_and_qc(tmp_path, capsys):
    cfg, stack = _zstack_plate(tmp_path, "ingest: {z_projection: max}\n")
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == 0, err
    df = pd.read_parquet(tmp_path / "i.parquet")
    assert list(df[io.FRAME]) == [io.z_max_frame(0)]
    assert np.array_equal(io.read_image(df[io.PATH].iloc[0], int(df[io.FRAME].iloc[0])), stack.max(axis=0))
    rc, err = _run(capsys, "qc", str(tmp_path / "i.parquet"), str(tmp_path / "qc.parquet"))
    qc = pd.read_parquet(tmp_path / "qc.parquet")
    assert rc == 0 and not qc["QC_unreadable"].any()
    assert qc["Metadata_DNA_MeanIntensity"].iloc[0] == pytest.approx(stack.max(axis=0).mean())


def test_hyperstack_channels_projected(tmp_path, capsys):
    img = tmp_path / "images"
    img.mkdir()
    hyper = np.random.default_rng(1).integers(0, 4000, (3, 2, 16, 16)).astype(np.uint16)  # Z, C, Y, X
    tifffile.imwrite(img / "B02_s1.tif", hyper, imagej=True, metadata={"axes": "ZCYX"})
    cfg = _layout_setup(tmp_path, [], layout="stack", wells=["B02"], channels={"0": "DNA", "1": "ER"},
                        regex=r"(?P<well>[A-P]\d+)_s(?P<site>\d+)\.tif$")
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == InputDataError.exit_code and "z-stack of 3 planes per channel" in err
    cfg.write_text(cfg.read_text() + "ingest: {z_projection: max}\n")
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == 0, err
    df = pd.read_parquet(tmp_path / "i.parquet")
    assert list(df[io.CHANNEL]) == ["DNA", "ER"] and list(df[io.FRAME]) == [-2, -3]
    for c in range(2):
        assert np.array_equal(io.read_image(df[io.PATH].iloc[c], int(df[io.FRAME].iloc[c])), hyper[:, c].max(axis=0))


def test_float_images_measured_on_their_range(tmp_path, capsys):
    """Item 8: float raw counts are not "saturated"; a float 0-1 plate saturates at 1.0."""
    rng = np.random.default_rng(2)
    wells = [f"B{c:02d}" for c in range(1, 13)]
    img = tmp_path / "images"
    img.mkdir()
    for i, w in enumerate(wells):
        scene = rng.normal(300, 30, (64, 64))
        for _ in range(6):
            y, x = rng.integers(8, 56, 2)
            scene[y - 4 : y + 4, x - 4 : x + 4] += rng.uniform(600, 1200)
        if i == 5:
            scene[:16] = 4095.0  # a 12-bit camera's clipped rows, stored as float
        tifffile.imwrite(img / f"P1_{w}_s1_w1.tif", scene.astype(np.float32))
    cfg = _layout_setup(tmp_path, [], layout="imagexpress", wells=wells)
    rc, err = _ingest(capsys, cfg, tmp_path)
    assert rc == 0, err
    assert set(pd.read_parquet(tmp_path / "i.parquet")[io.DTYPE]) == {"float32"}
    rc, err = _run(capsys, "qc", str(tmp_path / "i.parquet"), str(tmp_path / "qc.parquet"))
    qc = pd.read_parquet(tmp_path / "qc.parquet").set_index(io.WELL)
    assert rc == 0 and list(qc.index[qc["QC_saturated"]]) == ["B06"]
    sat = qc["Metadata_DNA_SaturationFraction"]
    assert sat["B06"] == pytest.approx(0.25) and (sat.drop("B06") == 0).all()
    # the same plate scaled to 0-1: full scale 1.0
    for w in wells:
        path = img / f"P1_{w}_s1_w1.tif"
        tifffile.imwrite(path, (tifffile.imread(path) / 4095.0).clip(0, 1).astype(np.float32))
    rc, err = _run(capsys, "qc", str(tmp_path / "i.parquet"), str(tmp_path / "qc.parquet"))
    qc = pd.read_parquet(tmp_path / "qc.parquet").set_index(io.WELL)
    assert rc == 0 and list(qc.index[qc["QC_saturated"]]) == ["B06"]
    assert qc.loc["B06", "Metadata_DNA_SaturationFraction"] == pytest.approx(0.25)
