"""Segmentation masks as OME-Zarr labels: written per field, read back with yaozarrs and zarr."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from cytoscreen import io
from cytoscreen.cli import main
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.ingest.index import index_plate
from cytoscreen.ingest.omezarr import index_ome_zarr, write_plate
from cytoscreen.segment.omezarr_labels import read_field_labels, write_plate_labels
from cytoscreen.segment.segment import mask_path, write_mask
from cytoscreen.synth import SynthSettings, draw_site

yaozarrs = pytest.importorskip("yaozarrs")

WELLS = ("A01", "B03")
CHANNELS = ("DNA", "Tubulin", "Actin")


def _fields(size: int = 48):
    fields, masks = [], {}
    for w, well in enumerate(WELLS):
        for site in (1, 2):
            stack, nuclei = draw_site(np.random.default_rng([5, w, site]), _pheno(), SynthSettings(image_px=size))
            fields.append((well, site, stack))
            masks[(well, site)] = nuclei
    return fields, masks


def _pheno():
    from cytoscreen.synth.screen import Phenotype

    return Phenotype()


def _masks_dir(tmp_path, masks, plate="P", cells=False):
    d = tmp_path / "masks"
    for (well, site), m in masks.items():
        write_mask(m, mask_path(d, plate, well, site, kind="nuclei"))
        if cells:
            write_mask((m > 0).astype(np.uint16) * 7, mask_path(d, plate, well, site, kind="cells"))
    return d


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_copy_of_ome_zarr_plate_has_labels(tmp_path, version):
    fields, masks = _fields()
    src = write_plate(tmp_path / "in.zarr", fields, channels=CHANNELS, version=version, n_levels=2)
    images = index_ome_zarr(src, plate="P")
    out = tmp_path / "results" / "P" / "plate.ome.zarr"
    table = write_plate_labels(images, _masks_dir(tmp_path, masks, cells=True), mode="copy", out=out)
    assert len(table) == 2 * len(masks)
    assert not (src / "A" / "1" / "0" / "labels").exists()  # the input store is untouched
    for (well, site), truth in masks.items():
        r, c = io.split_well(well)
        field = out / io.row_index_to_letters(r) / str(c) / str(site - 1)
        back = read_field_labels(field)
        assert list(back) == ["nuclei", "cells"]
        np.testing.assert_array_equal(back["nuclei"], truth)
        np.testing.assert_array_equal(back["cells"], (truth > 0) * 7)
        row = table[(table[io.WELL] == well) & (table[io.SITE] == site) & (table["label"] == "nuclei")]
        assert int(row["n_objects"].iloc[0]) == len(np.unique(truth)) - 1
        # the reader's view: label metadata validates as NGFF label images, level 1 is half size
        lattrs = _attrs(field / "labels" / "nuclei", version)
        model = yaozarrs.validate_ome_object(lattrs)
        assert type(model).__name__ == "LabelImage"
        assert [a.name for a in model.multiscales[0].axes] == ["y", "x"]
        assert model.image_label.source.image == "../../"
        assert yaozarrs.validate_ome_object(_attrs(field / "labels", version)).labels == ["nuclei", "cells"]
        import zarr

        lvl1 = zarr.open_array(str(field / "labels" / "nuclei" / "1"), mode="r")
        np.testing.assert_array_equal(lvl1[...], truth[::2, ::2])
    # the copy still reads as the same plate
    again = index_ome_zarr(out, plate="P")
    assert len(again) == len(images)
    if version == "0.5":  # yaozarrs checks the structure (labels included) of 0.5 stores
        yaozarrs.validate_zarr_store(str(out))


def _attrs(path, version):
    if version == "0.5":
        return {"version": "0.5", **json.loads((path / "zarr.json").read_text())["attributes"]["ome"]}
    return json.loads((path / ".zattrs").read_text())


def test_input_mode_writes_into_the_store(tmp_path):
    fields, masks = _fields()
    src = write_plate(tmp_path / "in.zarr", fields, channels=CHANNELS, version="0.5")
    images = index_ome_zarr(src, plate="P")
    table = write_plate_labels(images, _masks_dir(tmp_path, masks), mode="input")
    assert set(table["label"]) == {"nuclei"}  # no cells masks: nuclei only
    np.testing.assert_array_equal(read_field_labels(src / "B" / "3" / "1")["nuclei"], masks[("B03", 2)])
    # writing again (e.g. cells added later) keeps one entry per name
    write_plate_labels(images, _masks_dir(tmp_path, masks, cells=True), mode="input")
    assert list(read_field_labels(src / "A" / "1" / "0")) == ["nuclei", "cells"]


def test_tiff_plate_is_converted(tmp_path):
    fields, masks = _fields()
    tif = tmp_path / "tif"
    tif.mkdir()
    for well, site, stack in fields:
        for i, plane in enumerate(stack):
            tifffile.imwrite(tif / f"{well}_s{site}_w{i + 1}.tif", plane)
    images = index_plate(tif, plate="P", layout="imagexpress", channels={"w1": "DNA", "w2": "Tubulin", "w3": "Actin"})
    out = tmp_path / "plate.ome.zarr"
    write_plate_labels(images, _masks_dir(tmp_path, masks), mode="copy", out=out, version="0.4")
    back = index_ome_zarr(out, plate="P")
    assert list(back[io.CHANNEL].unique()) == list(CHANNELS)
    for a, b in zip(back.to_dict("records"), images.to_dict("records"), strict=True):
        np.testing.assert_array_equal(io.read_image(a[io.PATH], a[io.FRAME]), io.read_image(b[io.PATH]))
    np.testing.assert_array_equal(read_field_labels(out / "B" / "3" / "0")["nuclei"], masks[("B03", 1)])
    with pytest.raises(ConfigError, match="needs an ome-zarr plate"):
        write_plate_labels(images, _masks_dir(tmp_path, masks), mode="input")


def test_errors_and_cli(tmp_path, capsys):
    fields, masks = _fields()
    src = write_plate(tmp_path / "in.zarr", fields, channels=CHANNELS, version="0.5")
    images = index_ome_zarr(src, plate="P")
    d = _masks_dir(tmp_path, masks)
    mask_path(d, "P", "B03", 2).unlink()
    with pytest.raises(InputDataError, match=r"no mask for 1 site\(s\), e.g. .*P_B03_s2_nuclei.tif"):
        write_plate_labels(images, d, mode="copy", out=tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
    write_mask(masks[("B03", 2)][:10], mask_path(d, "P", "B03", 2))
    with pytest.raises(InputDataError, match=r"mask 'nuclei' has shape \(10, 48\), the field's level 0 is 48 x 48"):
        write_plate_labels(images, d, mode="copy", out=tmp_path / "o.zarr")
    write_mask(masks[("B03", 2)], mask_path(d, "P", "B03", 2))
    io.write_parquet(images, tmp_path / "images.parquet")
    out = tmp_path / "res" / "plate.ome.zarr"
    summary = tmp_path / "res" / "labels.tsv"
    assert main(["export", "ome-zarr", str(tmp_path / "images.parquet"), str(d), "--out", str(out),
                 "--summary", str(summary)]) == 0
    np.testing.assert_array_equal(read_field_labels(out / "A" / "1" / "1")["nuclei"], masks[("A01", 2)])
    assert len(pd.read_csv(summary, sep="\t")) == len(masks)
    assert main(["export", "ome-zarr", str(tmp_path / "images.parquet"), str(d)]) == 3
    assert "needs --out" in capsys.readouterr().err


def test_cli_config_chooses_the_store(tmp_path, capsys):
    """Without --out/--in-place, `--config`'s segment.ome_zarr_labels decides (as the workflow runs it)."""
    import yaml

    fields, masks = _fields()
    src = write_plate(tmp_path / "in.zarr", fields, channels=CHANNELS, version="0.5")
    images = index_ome_zarr(src, plate="P")
    d = _masks_dir(tmp_path, masks)
    io.write_parquet(images, tmp_path / "images.parquet")
    args = ["export", "ome-zarr", str(tmp_path / "images.parquet"), str(d)]

    def config(mode: str) -> str:
        path = tmp_path / f"config_{mode}.yaml"
        path.write_text(yaml.safe_dump({"results": str(tmp_path / "res"), "plates": "plates.tsv",
                                        "segment": {"enabled": True, "ome_zarr_labels": mode}}))
        return str(path)

    assert main([*args, "--config", config("copy")]) == 0
    store = tmp_path / "res" / "P" / "plate.ome.zarr"
    np.testing.assert_array_equal(read_field_labels(store / "B" / "3" / "1")["nuclei"], masks[("B03", 2)])
    assert not (src / "A" / "1" / "0" / "labels").exists()
    assert main([*args, "--config", config("input")]) == 0
    np.testing.assert_array_equal(read_field_labels(src / "A" / "1" / "0")["nuclei"], masks[("A01", 1)])
    capsys.readouterr()
    assert main([*args, "--config", config("none")]) == 3
    assert "segment.ome_zarr_labels is none" in capsys.readouterr().err
