"""Thumbnails: colours, contrast stretch, composite, encoding; real synthetic images."""

import base64
import io as _io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cytoscreen import io
from cytoscreen.errors import ConfigError
from cytoscreen.report import thumbnails as th


def _decode(uri: str) -> Image.Image:
    head, b64 = uri.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(_io.BytesIO(base64.b64decode(b64)))


def test_channel_colors():
    cols = th.channel_colors(["DNA", "Tubulin", "Actin", "Mito"])
    assert cols["DNA"] == th.NAMED_COLORS["blue"]
    assert [cols[c] for c in ("Tubulin", "Actin", "Mito")] == [
        th.NAMED_COLORS[n] for n in ("green", "red", "magenta")
    ]
    cols = th.channel_colors(["DNA", "ER"], {"DNA": "#ff0000", "ER": "white"})
    assert cols == {"DNA": (1.0, 0.0, 0.0), "ER": (1.0, 1.0, 1.0)}
    many = th.channel_colors([f"c{i}" for i in range(10)])
    assert len(many) == 10
    with pytest.raises(ConfigError, match="not a colour"):
        th.parse_color("#12")


def test_composite_is_an_additive_linear_stretch():
    a = np.array([[0.0, 50.0], [100.0, 200.0]])
    b = np.array([[100.0, 100.0], [100.0, 100.0]])
    rgb = th.composite([a, b], [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)], [(0.0, 100.0), (0.0, 200.0)])
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[..., 0].tolist() == [[0, 128], [255, 255]]  # clipped above hi
    assert (rgb[..., 2] == 128).all() and (rgb[..., 1] == 0).all()


def test_reduce_keeps_aspect_and_mean():
    img = np.random.default_rng(0).uniform(0, 1000, (1000, 800)).astype(np.uint16)
    small = th.reduce(img, 128)
    assert small.shape == (128, 102) and small.dtype == np.float32
    assert small.mean() == pytest.approx(img.mean(), rel=0.01)
    assert th.reduce(img[:50, :60], 128).shape == (50, 60)  # never enlarged


def test_encode_jpeg_and_png():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :15, 0] = 255
    assert _decode(th.encode(rgb, "jpeg")).format == "JPEG"
    png = _decode(th.encode(rgb, "png"))
    assert png.size == (30, 20) and np.asarray(png)[0, 0].tolist() == [255, 0, 0]
    with pytest.raises(ConfigError):
        th.encode(rgb, "gif")


def test_site_thumbnail_from_real_images(report_screen, tmp_path):
    images = pd.read_parquet(report_screen.plate("SYN001", "images.parquet"))
    qc = pd.read_parquet(report_screen.plate("SYN001", "qc.parquet"))
    channels = list(dict.fromkeys(images[io.CHANNEL]))
    limits = th.plate_limits(qc, channels)
    assert set(limits) == {"DNA", "Tubulin", "Actin"}
    neg = qc[(qc[io.PERT_TYPE] == "negcon") & ~qc[io.qc_columns(qc)].any(axis=1)]
    assert limits["DNA"] == pytest.approx(
        (neg["Metadata_DNA_MedianIntensity"].median(), neg["Metadata_DNA_P999Intensity"].median())
    )
    site = images[images[io.WELL] == "B03"]
    colors = th.channel_colors(channels)
    t = th.site_thumbnail(site, channels=channels, colors=colors, limits=limits, size_px=64)
    img = _decode(t.uri)
    assert t.error == "" and img.size == (64, 64) and img.mode == "RGB"
    # per-image stretch without limits; PNG
    t2 = th.site_thumbnail(site, channels=["DNA"], colors=colors, size_px=32, fmt="png")
    arr = np.asarray(_decode(t2.uri))
    assert (
        arr.shape == (32, 32, 3) and arr[..., 2].max() > 200
    )  # DNA is blue: blue dominates everywhere
    assert (arr[..., 2] >= arr[..., 1]).all() and (arr[..., 1] >= arr[..., 0]).all()
    # an unreadable file is reported, not raised
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    broken = site.copy()
    broken.loc[broken[io.CHANNEL] == "Actin", io.PATH] = str(bad)
    t3 = th.site_thumbnail(broken, channels=channels, colors=colors, limits=limits)
    assert t3.uri is None and "broken.tif" in t3.error
    assert th.site_thumbnail(site.iloc[:0], channels=channels, colors=colors).uri is None


def test_plate_limits_follow_the_negcon_rule():
    """The stretch reference is plate.negcon_mask: case/blank-insensitive pert type, else DMSO; the
    report used an exact ``== "negcon"`` before, so "NegCon" plates fell back to every site."""

    def qc(pert_type, perturbation):
        return pd.DataFrame(
            {
                io.PERT_TYPE: pert_type,
                io.PERTURBATION: perturbation,
                "Metadata_DNA_MedianIntensity": [10.0, 12.0, 100.0, 14.0],
                "Metadata_DNA_P999Intensity": [50.0, 60.0, 900.0, 70.0],
                io.QC_BLURRY: [False, False, False, True],
            }
        )

    mixed_case = th.plate_limits(qc([" NegCon", "negcon", "trt", "negcon"], ["d"] * 4), ["DNA"])
    assert mixed_case == {"DNA": (11.0, 55.0)}  # two QC-passed negcon sites; blurry one left out
    vehicle = th.plate_limits(qc(["trt"] * 4, ["DMSO", "dmso", "taxol", "DMSO"]), ["DNA"])
    assert vehicle == {"DNA": (11.0, 55.0)}  # no negcon pert type: DMSO wells
    none = th.plate_limits(qc(["trt"] * 4, ["a", "b", "c", "d"]), ["DNA"])
    assert none == {"DNA": (12.0, 60.0)}  # no control at all: every QC-passed site
