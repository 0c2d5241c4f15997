"""Plate and screen pages: sections, heatmaps, gallery, self-containment, degradation, size."""

import base64
import io as _io
import json
import re

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.dose import fit
from cytoscreen.errors import InputDataError
from cytoscreen.qc import METRICS as QC_METRICS
from cytoscreen.report import controls as rc
from cytoscreen.report import tables as rt
from cytoscreen.report import wells as rw
from cytoscreen.report.pages.plate import plate_report
from cytoscreen.report.pages.screen import screen_report
from tests.fixtures.report import PageParser, external_references

MINUS = "\u2212"


@pytest.fixture(scope="module")
def tables(report_screen):
    r = report_screen
    out = {
        p: {
            name: pd.read_parquet(r.plate(p, f"{name}.parquet"))
            for name in ("qc", "images", "wells", "segmentation")
        }
        for p in ("SYN001", "SYN002")
    }
    out["novelty"] = pd.read_parquet(r.novelty)
    out["moa"] = pd.read_parquet(r.moa)
    out["profiles"] = pd.read_parquet(r.profiles)
    out["evaluation"] = json.loads(r.evaluation.read_text())
    return out


@pytest.fixture(scope="module")
def full_plate(tables):
    t = tables["SYN001"]
    return plate_report(
        t["qc"],
        plate="SYN001",
        images=t["images"],
        wells=t["wells"],
        novelty=tables["novelty"],
        counts=t["segmentation"],
        dose=fit.dose_response(tables["novelty"], io.NOVELTY_SCORE),
        inputs={"qc": "results/SYN001/qc.parquet", "wells": None},
    )


def _texts(page: str, svg_id: str, cls: str) -> list[str]:
    import re

    start = page.index(f'id="{svg_id}"')
    end = page.index("</svg>", start)
    return re.findall(rf'<text class="{cls}"[^>]*>([^<]*)</text>', page[start:end])


def test_plate_report_sections_and_heatmaps(full_plate, tables):
    page = PageParser(full_plate)
    for sid in (
        "summary",
        "glance",
        "summary-table",
        "heatmaps",
        "controls",
        "control-plot",
        "zprime",
        "gallery",
        "gallery-qc",
        "gallery-hits",
        "wells",
        "well-table",
        "provenance",
    ):
        assert sid in page.ids, sid
    nov = tables["novelty"]
    nov = nov[nov[io.PLATE] == "SYN001"]
    n_hits = int(nov[io.NOVELTY_HIT].sum())
    assert n_hits > 0
    for hm in ("hm-qc", "hm-focus", "hm-signal", "hm-novelty", "hm-qvalue", "hm-profiled"):
        assert page.ids[hm]["data-rows"] == "8" and page.ids[hm]["data-cols"] == "12"
        assert len(page.find("rect", cls="well", within=hm)) == 96
        glyphs = _texts(full_plate, hm, "ctl")
        assert glyphs.count(MINUS) == 20 and glyphs.count("+") == 4  # negcon and poscon marked
    assert len(page.find("rect", cls="hit", within="hm-novelty")) == n_hits
    assert len(page.find("rect", cls="hit", within="hm-qc")) == 0
    # with segmentation counts the signal map is the cell count
    assert "Cell count" in full_plate and 'id="fig-hm-signal"' in full_plate
    # hover text: well metadata
    assert "B03 \u00b7 " in full_plate and "failing QC" in full_plate
    rects = page.find("rect", cls="well", within="hm-qc")
    assert {r["data-well"] for r in rects} == {
        io.well_from_row_col(r, c) for r in range(8) for c in range(1, 13)
    }
    # gallery: the three QC failures, then the top hits
    assert len(page.find("figure", cls="qc", within="gallery-qc")) == 3
    assert len(page.find("figure", cls="hit", within="gallery-hits")) == min(12, n_hits)
    assert all(
        a["src"].startswith("data:image/jpeg;base64,") for a in page.find("img", within="gallery")
    )
    # Z' shown is the one computed from the tables, on the novelty score (auto readout)
    s = rw.well_summary(tables["SYN001"]["qc"], novelty=tables["novelty"])
    z = rc.control_quality(s, io.NOVELTY_SCORE).z_prime
    assert f'<strong id="zprime">{z:.4g}</strong>' in full_plate.replace(f"{z:.3g}<", f"{z:.4g}<")
    assert "Stage not run" not in full_plate
    # the well table has every well
    start = full_plate.index('id="well-table"')
    assert full_plate[start : full_plate.index("</table>", start)].count("<tr>") == 97


def test_plate_report_is_self_contained(full_plate):
    assert "http://" not in full_plate and "https://" not in full_plate
    assert external_references(full_plate) == []
    assert "Content-Security-Policy" in full_plate and "default-src 'none'" in full_plate
    assert "<script src" not in full_plate and '<link rel="stylesheet"' not in full_plate
    assert full_plate.startswith("<!DOCTYPE html>")


def test_plate_report_degrades_without_optional_inputs(tables):
    qc = tables["SYN001"]["qc"]
    page_text = plate_report(qc, plate="SYN001")
    page = PageParser(page_text)
    assert {"hm-qc", "hm-focus", "hm-signal"} <= set(page.ids)
    assert "hm-novelty" not in page.ids and "hm-profiled" not in page.ids
    assert "DNA signal" in page_text  # no counts: DNA mean intensity
    not_run = page.find("p", cls="not-run")
    assert len(not_run) == 3  # novelty heatmap, dose curves, thumbnails (no images table)
    assert (
        "Stage not run: novelty" in page_text
        and "Stage not run: ingest (images.parquet)" in page_text
        and "Stage not run: dose" in page_text
    )
    assert "Metadata_DNA_MeanIntensity" in page_text  # auto readout without novelty or counts
    assert external_references(page_text) == []


def test_plate_report_other_plate_rows_and_errors(tables):
    both = pd.concat([tables["SYN001"]["qc"], tables["SYN002"]["qc"]], ignore_index=True)
    page = plate_report(both, plate="SYN002")
    assert (
        "Plate SYN002" in page
        and len(PageParser(page).find("rect", cls="well", within="hm-qc")) == 96
    )
    with pytest.raises(InputDataError, match="no sites"):
        plate_report(both, plate="NOPE")


def test_unreadable_gallery_image_is_a_placeholder(tables, tmp_path):
    t = tables["SYN001"]
    images = t["images"].copy()
    failing = t["qc"].loc[t["qc"][io.qc_columns(t["qc"])].any(axis=1), io.WELL].iloc[0]
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    images.loc[images[io.WELL] == failing, io.PATH] = str(bad)
    page = plate_report(t["qc"], plate="SYN001", images=images)
    assert page.count("image not readable") == 1 and 'class="missing"' in page


def test_screen_report(tables, report_screen):
    qcs = [tables[p]["qc"] for p in ("SYN001", "SYN002")]
    text = screen_report(
        qcs,
        novelty=tables["novelty"],
        moa=tables["moa"],
        evaluation=tables["evaluation"],
        profiles=tables["profiles"],
        plate_links={"SYN001": "SYN001.html", "SYN002": "SYN002.html"},
    )
    page = PageParser(text)
    for sid in (
        "plates",
        "plate-table",
        "hits",
        "hit-table",
        "hits-csv",
        "umap",
        "umap-cluster",
        "umap-moa",
        "pca-plate",
        "pca-pert",
        "clusters",
        "cluster-table",
        "evaluation",
        "evaluation-table",
    ):
        assert sid in page.ids, sid
    links = [a["href"] for a in page.find("a", within="plate-table")]
    assert links == ["SYN001.html", "SYN002.html"]
    moa = tables["moa"]
    assert len(page.find("circle", cls="pt", within="umap-cluster")) == len(moa)
    assert len(page.find("circle", cls="pt", within="pca-plate")) == len(tables["profiles"])
    start = text.index('id="cluster-table"')
    assert (
        text[start : text.index("</table>", start)].count("<tr>") == moa[io.CLUSTER].nunique() + 1
    )
    # the CSV download holds every hit
    href = page.ids["hits-csv"]["href"]
    assert href.startswith("data:text/csv;charset=utf-8;base64,")
    csv = pd.read_csv(_io.StringIO(base64.b64decode(href.split(",", 1)[1]).decode()))
    n_hits = int(tables["novelty"][io.NOVELTY_HIT].sum())
    assert len(csv) == n_hits and {io.PLATE, io.WELL, io.NOVELTY_QVALUE} <= set(csv.columns)
    assert csv[io.NOVELTY_QVALUE].is_monotonic_increasing
    assert "0.61" in text and "nscb" in text  # evaluation metrics
    assert external_references(text) == [] and "http" not in text.replace("http-equiv", "")
    assert "Stage not run" not in text


def test_screen_report_caps_the_treatment_map(tables):
    """Above report.max_map_points the UMAP draws a sample, says so, and keeps poscon and hits;
    the rest of the page is unchanged."""
    from cytoscreen.report.settings import ReportSettings

    qcs = [tables[p]["qc"] for p in ("SYN001", "SYN002")]
    moa, novelty = tables["moa"], tables["novelty"]
    kwargs = {"novelty": novelty, "moa": moa, "evaluation": tables["evaluation"]}
    full = screen_report(qcs, **kwargs)
    assert "umap-sampled" not in PageParser(full).ids  # under the cap: all drawn, no note
    cap = len(moa) - 2
    capped = screen_report(qcs, **kwargs, settings=ReportSettings(max_map_points=cap))
    page = PageParser(capped)
    shown = page.find("circle", cls="pt", within="umap-cluster")
    assert len(shown) == cap
    assert f"{cap:,} of {len(moa):,} treatments shown" in capped
    drawn = rt.map_sample(moa, rt.moa_columns(moa), novelty=novelty, max_points=cap)
    titles = [t for t in re.findall(r"<title>([^<]*)</title>", capped) if " \u00b7 " in t]
    labels = rt.treatment_labels(moa, rt.moa_columns(moa))
    assert {t.split(" \u00b7 ")[0] for t in titles} == set(labels.iloc[drawn.keep])
    # the sections other than the map are the same as without the cap
    assert capped.split('id="clusters"')[1] == full.split('id="clusters"')[1]
    assert capped.split('id="umap"')[0] == full.split('id="umap"')[0]


def test_screen_report_degrades(tables):
    text = screen_report([tables["SYN001"]["qc"]])
    page = PageParser(text)
    assert "plate-table" in page.ids and "SYN001" in text
    assert text.count("Stage not run") == 4  # hits, map, clusters, evaluation
    assert not page.find("a", within="plate-table")  # no links without plate reports
    with pytest.raises(InputDataError, match="no QC tables"):
        screen_report([])


# --- a 384-well plate, 9 sites, 5 channels: the report stays small ------------------------------
@pytest.fixture(scope="module")
def plate_384(tmp_path_factory):
    import tifffile

    rng = np.random.default_rng(5)
    folder = tmp_path_factory.mktemp("p384")
    channels = ("DNA", "ER", "RNA", "AGP", "Mito")
    from scipy.ndimage import gaussian_filter

    files = {}
    for k, ch in enumerate(channels):  # 1080 px fields of blurred dots ("cells") on noise
        dots = np.zeros((1080, 1080))
        dots[rng.integers(0, 1080, 60), rng.integers(0, 1080, 60)] = 1.0
        img = rng.normal(300, 30, dots.shape) + (
            3000 + 500 * k
        ) * 2 * np.pi * 225 * gaussian_filter(dots, 15)
        files[ch] = folder / f"{ch}.tif"
        tifffile.imwrite(files[ch], img.clip(0, 65535).astype(np.uint16))
    sites = []
    for r in range(16):
        for c in range(1, 25):
            pert = "negcon" if c in (1, 24) else "poscon" if c == 2 else "trt"
            for s in range(1, 10):
                sites.append(
                    {
                        io.PLATE: "P384",
                        io.BATCH: "b1",
                        io.WELL: io.well_from_row_col(r, c),
                        io.ROW: r,
                        io.COL: c,
                        io.SITE: s,
                        io.PERTURBATION: f"compound-{(r * 24 + c) % 97}",
                        io.CONCENTRATION: 1.0,
                        io.PERT_TYPE: pert,
                        io.MOA: f"moa-{c % 7}",
                    }
                )
    qc = pd.DataFrame(sites)
    for ch in channels:
        for m in QC_METRICS:
            qc[f"Metadata_{ch}_{m}"] = rng.gamma(2.0, 100.0, len(qc))
        qc[f"Metadata_{ch}_P999Intensity"] = qc[f"Metadata_{ch}_MedianIntensity"] + 3000
    for f in ("QC_blurry", "QC_saturated", "QC_empty", "QC_unreadable"):
        qc[f] = rng.random(len(qc)) < 0.01
    qc["Count_Nuclei"] = rng.poisson(60, len(qc))
    images = qc[[io.PLATE, io.WELL, io.ROW, io.COL, io.SITE]].merge(
        pd.DataFrame({io.CHANNEL: channels}), how="cross"
    )
    images[io.PATH] = images[io.CHANNEL].map({k: str(v) for k, v in files.items()})
    images[io.FRAME] = -1
    wells = qc.drop_duplicates(io.WELL)[
        [io.PLATE, io.WELL, io.PERTURBATION, io.CONCENTRATION, io.PERT_TYPE, io.MOA]
    ].reset_index(drop=True)
    wells[io.NOVELTY_SCORE] = rng.gamma(2.0, 1.0, len(wells)) + 5 * (
        wells[io.PERT_TYPE] == "poscon"
    )
    wells[io.NOVELTY_PVALUE] = np.exp(-wells[io.NOVELTY_SCORE])
    wells[io.NOVELTY_QVALUE] = np.minimum(1, wells[io.NOVELTY_PVALUE] * 10)
    wells[io.NOVELTY_HIT] = wells[io.NOVELTY_QVALUE] <= 0.05
    profiles = wells[[io.PLATE, io.WELL]].assign(**{io.N_SITES: 8})
    return qc, images, wells, profiles


def test_384_well_report_under_5_mb(plate_384):
    qc, images, novelty, profiles = plate_384
    assert novelty[io.NOVELTY_HIT].sum() > 12 and qc[io.qc_columns(qc)].any(axis=1).sum() > 12
    text = plate_report(qc, plate="P384", images=images, wells=profiles, novelty=novelty)
    size = len(text.encode("utf-8"))
    assert size < 5 * 1024 * 1024, f"384-well report is {size / 1e6:.1f} MB"
    page = PageParser(text)
    assert len(page.find("rect", cls="well", within="hm-qc")) == 384
    assert (
        page.ids["hm-novelty"]["data-rows"] == "16" and page.ids["hm-novelty"]["data-cols"] == "24"
    )
    assert (
        len(page.find("img", within="gallery-qc")) == 12
        and len(page.find("img", within="gallery-hits")) == 12
    )
    assert "Count_Nuclei" in text and external_references(text) == []


def test_assets_are_package_data():
    from importlib import resources

    from cytoscreen.report import components

    folder = resources.files("cytoscreen.report").joinpath("assets")
    assert {p.name for p in folder.iterdir()} >= {"page.html", "report.css", "report.js"}
    assert ":root" in components.asset("report.css") and "data-report-ready" in components.asset("report.js")
    page = components.page(kind="x", title="t", heading="h", subtitle="s", nav=[], body="<p>b</p>", footer="")
    assert "$" not in page.replace("$(", "") and components.asset("report.css") in page
