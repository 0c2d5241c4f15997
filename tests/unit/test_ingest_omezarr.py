"""layout ome-zarr: NGFF 0.4 (Zarr v2) and 0.5 (Zarr v3) HCS plates give the same tables as the TIFFs.

Synthetic sites are written twice, as ImageXpress TIFFs and as OME-Zarr plates, and run through
ingest, qc and features (test_tiny backbone); everything but the plate name and image paths must be
equal.  Bad plate stores are clear errors naming the path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.errors import InputDataError
from cytoscreen.ingest.omezarr import index_ome_zarr, ngff_version, write_plate
from cytoscreen.synth import SynthSettings, draw_site
from cytoscreen.synth.screen import MOA_CLASSES, Phenotype

pytest.importorskip("yaozarrs")

WELLS = ("B02", "B03", "C02", "C11")
SITES = 2
LABELS = ("Hoechst", "Tub", "Act")  # omero labels of the OME-Zarr plates
TOKENS = ("w1", "w2", "w3")  # channel tokens of the TIFF plate
CHANNELS = {"w1": "DNA", "w2": "Tubulin", "w3": "Actin", "Hoechst": "DNA", "Tub": "Tubulin", "Act": "Actin"}


def _sites(size: int = 64) -> list[tuple[str, int, np.ndarray]]:
    settings = SynthSettings(image_px=size)
    phenos = [Phenotype(), MOA_CLASSES["DNA damage"], Phenotype(), MOA_CLASSES["Cytotoxic"]]
    out = []
    for w, (well, ph) in enumerate(zip(WELLS, phenos, strict=True)):
        for site in range(1, SITES + 1):
            stack, _ = draw_site(np.random.default_rng([7, w, site]), ph, settings)
            out.append((well, site, stack))
    return out


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> Path:
    """One set of sites as a TIFF plate and as NGFF 0.4 and 0.5 plate stores, with a config."""
    root = tmp_path_factory.mktemp("omezarr_screen")
    fields = _sites()
    tif = root / "tif"
    tif.mkdir()
    for well, site, stack in fields:
        for token, plane in zip(TOKENS, stack, strict=True):
            tifffile.imwrite(tif / f"{well}_s{site}_{token}.tif", plane)
    write_plate(root / "p04.zarr", fields, channels=LABELS, version="0.4", n_levels=2)
    write_plate(root / "p05.zarr", fields, channels=LABELS, version="0.5", n_levels=2)
    pd.DataFrame({"well": WELLS, "perturbation": ["DMSO", "x", "DMSO", "y"], "concentration": 1.0,
                  "pert_type": ["negcon", "trt", "negcon", "trt"]}).to_csv(root / "map.tsv", sep="\t", index=False)
    pd.DataFrame({"plate": ["TIF", "Z04", "Z05"], "images": ["tif", "p04.zarr", "p05.zarr"],
                  "layout": ["imagexpress", "ome-zarr", "ome-zarr"], "platemap": "map.tsv"}).to_csv(
        root / "plates.tsv", sep="\t", index=False)
    (root / "config.yaml").write_text(yaml.safe_dump({
        "plates": str(root / "plates.tsv"), "results": str(root / "results"), "channels": CHANNELS,
        "features": {"backbone": "test_tiny", "num_workers": 0, "accelerator": "cpu", "threads": 1},
    }))
    return root


def _run_plate(root: Path, plate: str) -> dict[str, pd.DataFrame]:
    cfg, res = str(root / "config.yaml"), root / "results" / plate
    assert main(["ingest", "--config", cfg, "--plate", plate, "--out", str(res / "images.parquet")]) == 0
    assert main(["qc", str(res / "images.parquet"), str(res / "qc.parquet"), "--config", cfg]) == 0
    assert main(["features", "--config", cfg, "--plate", plate, "--images", str(res / "images.parquet"),
                 "--qc", str(res / "qc.parquet"), "--out", str(res / "sites.parquet")]) == 0
    return {name: pd.read_parquet(res / f"{name}.parquet") for name in ("images", "qc", "sites")}


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in (io.PLATE, io.BATCH, io.PATH, io.FRAME) if c in df.columns])


def test_metadata_versions(screen):
    assert ngff_version(screen / "p04.zarr") == "0.4"
    assert ngff_version(screen / "p05.zarr") == "0.5"
    zattrs = json.loads((screen / "p04.zarr" / ".zattrs").read_text())
    assert zattrs["plate"]["wells"][0]["path"] == "B/2" and zattrs["plate"]["version"] == "0.4"
    zjson = json.loads((screen / "p05.zarr" / "zarr.json").read_text())
    assert zjson["zarr_format"] == 3 and zjson["attributes"]["ome"]["version"] == "0.5"
    assert [c["name"] for c in zjson["attributes"]["ome"]["plate"]["columns"]] == ["2", "3", "11"]


@pytest.mark.slow
def test_same_tables_as_tiff(screen):
    tif = _run_plate(screen, "TIF")
    for plate in ("Z04", "Z05"):
        zarr_ = _run_plate(screen, plate)
        images = zarr_["images"]
        assert len(images) == len(WELLS) * SITES * 3
        # level 0 is read (level 1 is half the size) and every plane equals its TIFF
        for a, b in zip(images.to_dict("records"), tif["images"].to_dict("records"), strict=True):
            assert (a[io.WELL], a[io.SITE], a[io.CHANNEL]) == (b[io.WELL], b[io.SITE], b[io.CHANNEL])
            np.testing.assert_array_equal(io.read_image(a[io.PATH], a[io.FRAME]), io.read_image(b[io.PATH]))
        assert images[io.PATH].str.endswith("/0").all()
        pd.testing.assert_frame_equal(_comparable(images), _comparable(tif["images"]))
        pd.testing.assert_frame_equal(_comparable(zarr_["qc"]), _comparable(tif["qc"]))
        pd.testing.assert_frame_equal(_comparable(zarr_["sites"]), _comparable(tif["sites"]))
        assert "DNA_test_tiny_0000" in zarr_["sites"].columns


def test_index_direct_and_channel_mapping(screen):
    df = index_ome_zarr(screen / "p05.zarr", plate="P", channels={"Hoechst": "DNA"})
    assert sorted(set(df[io.CHANNEL])) == ["Act", "DNA", "Tub"]  # unmapped labels keep their name
    first = df[(df[io.WELL] == "C11") & (df[io.SITE] == 2)]
    assert list(first[io.FRAME]) == [0, 1, 2]
    assert first[io.PATH].iloc[0].endswith("C/11/1/0")


def _copy(screen: Path, tmp_path: Path, name: str = "p04.zarr") -> Path:
    dst = tmp_path / name
    shutil.copytree(screen / name, dst)
    return dst


def _edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_error_well_not_in_plate_wells(screen, tmp_path):
    store = _copy(screen, tmp_path)
    _edit_json(store / ".zattrs", lambda d: d["plate"]["wells"].pop())  # C/11 left on disk, unlisted
    with pytest.raises(InputDataError, match=r"C/11: well path 'C/11' is not in plate.wells"):
        index_ome_zarr(store, plate="P")
    _edit_json(store / ".zattrs", lambda d: d["plate"]["wells"].append(
        {"path": "D/11", "rowIndex": 0, "columnIndex": 0}))
    with pytest.raises(InputDataError, match=r"well path 'D/11' of plate.wells is not <row>/<column>"):
        index_ome_zarr(store, plate="P")


def test_error_field_without_level0(screen, tmp_path):
    store = _copy(screen, tmp_path, "p05.zarr")
    field = store / "B" / "3" / "1"
    shutil.rmtree(field / "0")
    with pytest.raises(InputDataError, match=rf"{field / '0'}: level 0 of the field is not a Zarr array"):
        index_ome_zarr(store, plate="P")
    _edit_json(field / "zarr.json", lambda d: d["attributes"]["ome"]["multiscales"][0].update(datasets=[]))
    with pytest.raises(InputDataError, match=r"B/3/1: (the field has no multiscales level 0|invalid OME-Zarr)"):
        index_ome_zarr(store, plate="P")


def test_error_3d_field(tmp_path):
    store = tmp_path / "z.zarr"
    write_plate(store, [("A01", 1, np.zeros((1, 8, 8), np.uint16))], channels=["DNA"], version="0.4")
    import zarr

    field = store / "A" / "1" / "0"
    grp = zarr.open_group(str(field), mode="r+", zarr_format=2)
    grp.create_array("0", shape=(1, 3, 8, 8), dtype=np.uint16, overwrite=True)

    def czyx(doc):
        doc["multiscales"][0]["axes"] = [{"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
                                         {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
        doc["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [1.0] * 4

    _edit_json(field / ".zattrs", czyx)
    with pytest.raises(InputDataError, match=rf"{field / '0'}: a 3-D field \(shape \(1, 3, 8, 8\), 3 z-planes\)"):
        index_ome_zarr(store, plate="P")


def test_error_missing_omero_label(screen, tmp_path, capsys):
    store = _copy(screen, tmp_path)
    field = store / "C" / "2" / "0"
    _edit_json(field / ".zattrs", lambda d: d["omero"]["channels"][1].pop("label"))
    with pytest.raises(InputDataError, match=rf"{field}: omero.channels must give a label for each of the 3"):
        index_ome_zarr(store, plate="P")
    _edit_json(field / ".zattrs", lambda d: d.pop("omero"))
    with pytest.raises(InputDataError, match=r"found 0, 0 labelled"):
        index_ome_zarr(store, plate="P")


def test_error_not_a_plate_via_cli(screen, tmp_path, capsys):
    (tmp_path / "empty.zarr").mkdir()
    pd.DataFrame({"plate": ["E"], "images": ["empty.zarr"], "layout": ["ome-zarr"],
                  "platemap": [str(screen / "map.tsv")]}).to_csv(tmp_path / "plates.tsv", sep="\t", index=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"plates": str(tmp_path / "plates.tsv"),
                                                     "results": str(tmp_path / "r")}))
    rc = main(["ingest", "--config", str(tmp_path / "c.yaml"), "--plate", "E", "--out", str(tmp_path / "i.parquet")])
    err = capsys.readouterr().err
    assert rc == 4 and "empty.zarr: not an OME-Zarr plate" in err and "Traceback" not in err
