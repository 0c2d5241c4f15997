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
    if channels is not None:
        import yaml

        data = yaml.safe_load(cfg.read_text())
        data["channels"] = channels
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
