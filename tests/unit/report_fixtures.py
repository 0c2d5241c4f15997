"""Fixtures for the report tests: a small screen with every table a report reads.

``images.parquet`` and ``qc.parquet`` come from the real upstream code (``cytoscreen.synth`` via
the ``tiny_screen`` fixture, ``ingest_plate``, ``run_qc``); cell counts come from the synthetic
truth (nuclei drawn per site); well profiles, ``novelty.parquet``, ``moa.parquet`` and
``evaluation.json`` are written by hand in the documented column format (DESIGN.md §3,
``cytoscreen/io.py`` constants), with poscon wells the most novel and clusters following the MoA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytoscreen import io
from cytoscreen.config import load_config, plate_info
from cytoscreen.ingest import IngestSettings, ingest_plate
from cytoscreen.qc import QCSettings, run_qc
from tests.conftest import write_config

PLATES = ("SYN001", "SYN002")


@dataclass(frozen=True)
class ReportScreen:
    """Paths of the fixture screen (``results/<plate>/...``, ``results/screen/...``)."""

    root: Path
    config: Path
    results: Path

    def plate(self, plate: str, name: str) -> Path:
        return self.results / plate / name

    @property
    def novelty(self) -> Path:
        return self.results / "screen" / "novelty" / "novelty.parquet"

    @property
    def moa(self) -> Path:
        return self.results / "screen" / "moa.parquet"

    @property
    def evaluation(self) -> Path:
        return self.results / "screen" / "evaluation.json"

    @property
    def profiles(self) -> Path:
        return self.results / "screen" / "feature_selected.parquet"


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1.0)
    return out


def novelty_table(qc_all: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per well: scores high for poscon and strong MoAs, conformal p vs negcon, BH q."""
    rng = np.random.default_rng(seed)
    keys = [io.PLATE, io.WELL]
    meta = [io.PLATE, io.BATCH, io.WELL, io.PERTURBATION, io.CONCENTRATION, io.PERT_TYPE, io.MOA]
    wells = qc_all.groupby(keys, sort=False)[[c for c in meta if c not in keys]].first()
    wells = wells.reset_index()
    effect = {"poscon": 4.0, "negcon": 0.0}
    moa_effect = {
        "DNA damage": 1.5,
        "Microtubule destabilizer": 2.5,
        "Actin disruptor": 2.0,
        "Cytotoxic": 3.0,
        "Cell spreading": 1.0,
        "Mitotic arrest": 2.2,
    }
    base = []
    for rec in wells.to_dict(orient="records"):
        e = effect.get(
            rec[io.PERT_TYPE], moa_effect.get(rec[io.MOA], 0.5) * float(rec[io.CONCENTRATION]) / 10
        )
        base.append(1.0 + e + rng.gamma(2.0, 0.15))
    wells[io.NOVELTY_SCORE] = np.asarray(base)
    neg = wells[io.PERT_TYPE] == "negcon"
    split = np.where(neg, np.where(rng.random(len(wells)) < 0.5, "calibration", "train"), "none")
    from scipy.stats import norm

    calib = wells.loc[split == "calibration", io.NOVELTY_SCORE].to_numpy()
    score = wells[io.NOVELTY_SCORE].to_numpy()
    p = norm.sf(score, loc=calib.mean(), scale=calib.std(ddof=1))  # a smooth stand-in for conformal
    tested = (split == "none") & (wells[io.PERT_TYPE] != "empty").to_numpy()
    q = np.full(len(wells), np.nan)
    q[tested] = bh(p[tested])
    wells[io.NOVELTY_PVALUE] = p
    wells[io.NOVELTY_QVALUE] = q
    wells[io.NOVELTY_HIT] = np.nan_to_num(q, nan=1.0) <= 0.05
    wells[io.NOVELTY_SPLIT] = split
    return wells


def moa_table(novelty: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per treatment: Metadata_Treatment, Metadata_Cluster, UMAP coordinates by MoA."""
    rng = np.random.default_rng(seed)
    by = [io.PERTURBATION, io.CONCENTRATION]
    treat = novelty.groupby(by, sort=False)[[io.PERT_TYPE, io.MOA]].first().reset_index()
    moas = sorted(treat[io.MOA].unique())
    centre = {m: rng.normal(0, 6, 2) for m in moas}
    cluster_of = {m: i + 1 for i, m in enumerate(moas)}
    xy = np.array([centre[m] + rng.normal(0, 0.8, 2) for m in treat[io.MOA]])
    treat[io.TREATMENT] = [
        f"{p} @ {c:g}" for p, c in zip(treat[io.PERTURBATION], treat[io.CONCENTRATION], strict=True)
    ]
    clusters = np.array([cluster_of[m] for m in treat[io.MOA]])
    clusters[::7] = clusters[::7] % len(moas) + 1  # a few treatments in the "wrong" cluster
    treat[io.CLUSTER] = clusters
    treat[io.UMAP_1] = xy[:, 0]
    treat[io.UMAP_2] = xy[:, 1]
    return treat


def well_profiles(qc: pd.DataFrame, plate_index: int = 0) -> pd.DataFrame:
    """Per-well profiles: metadata, Metadata_n_sites (QC-passed) and four random features with a
    plate offset (a batch effect)."""
    rng = np.random.default_rng(plate_index)
    ok = ~qc[io.qc_columns(qc)].any(axis=1)
    meta = [
        c
        for c in (
            io.PLATE,
            io.BATCH,
            io.WELL,
            io.PERTURBATION,
            io.CONCENTRATION,
            io.PERT_TYPE,
            io.MOA,
        )
        if c in qc.columns
    ]
    wells = qc.groupby([io.PLATE, io.WELL], sort=False)[
        [c for c in meta if c not in (io.PLATE, io.WELL)]
    ].first()
    wells[io.N_SITES] = ok.groupby([qc[io.PLATE], qc[io.WELL]], sort=False).sum().astype(int)
    wells = wells.reset_index()
    wells = wells[wells[io.N_SITES] > 0].reset_index(drop=True)
    for i in range(4):
        wells[f"DNA_test_{i}"] = (rng.normal(0, 1, len(wells)) + 1.5 * plate_index).astype(
            np.float32
        )
    return wells


def build_report_screen(tiny_screen: Path, out: Path) -> ReportScreen:
    out.mkdir(parents=True, exist_ok=True)
    config = write_config(
        out / "config.yaml",
        tiny_screen / "plates.tsv",
        results=str(out / "results"),
        reports=str(out / "reports"),
    )
    cfg = load_config(config)
    results = out / "results"
    qcs, profiles = [], []
    for k, plate in enumerate(PLATES):
        images = ingest_plate(plate, plate_info(cfg, plate), IngestSettings.from_config(cfg))
        qc = run_qc(images, QCSettings.from_config(cfg["qc"]))
        io.write_parquet(
            images, results / plate / "images.parquet", provenance=io.provenance("ingest")
        )
        io.write_parquet(qc, results / plate / "qc.parquet", provenance=io.provenance("qc"))
        truth = pd.read_csv(tiny_screen / "truth" / f"{plate}.tsv", sep="\t")
        counts = pd.DataFrame(
            {
                io.PLATE: plate,
                io.WELL: truth["well"].map(io.normalize_well),
                io.SITE: truth["site"],
                "Count_Nuclei": truth["n_cells"],
            }
        )
        io.write_parquet(counts, results / plate / "segmentation.parquet")
        wells = well_profiles(qc, k)
        io.write_parquet(wells, results / plate / "wells.parquet")
        qcs.append(qc)
        profiles.append(wells)
    qc_all = pd.concat(qcs, ignore_index=True)
    novelty = novelty_table(qc_all)
    io.write_parquet(novelty, results / "screen" / "novelty" / "novelty.parquet")
    io.write_parquet(moa_table(novelty), results / "screen" / "moa.parquet")
    io.write_parquet(
        pd.concat(profiles, ignore_index=True), results / "screen" / "feature_selected.parquet"
    )
    evaluation = {
        "representation": "profiles",
        "nsc": 0.61,
        "nscb": 0.48,
        "map_replicate": 0.72,
        "map_moa": 0.35,
        "cluster_ari": 0.41,
        "n_wells": 192,
        "n_treatments": 74,
        "n_moas": 6,
        "clustering": {"method": "hierarchical", "n_clusters": 8, "silhouette": 0.22},
    }
    io.write_json(evaluation, results / "screen" / "evaluation.json")
    return ReportScreen(root=out, config=config, results=results)


_BUILT: dict[str, ReportScreen] = {}


@pytest.fixture(scope="session")
def report_screen(tiny_screen, tmp_path_factory) -> ReportScreen:
    """The two tiny synthetic plates with every table the reports read (read-only).

    Each test module imports this fixture, which makes pytest set it up once per module; the
    tables are built once per session and shared.
    """
    key = str(tiny_screen)
    if key not in _BUILT:
        _BUILT[key] = build_report_screen(tiny_screen, tmp_path_factory.mktemp("report_screen"))
    return _BUILT[key]


def chromium() -> str | None:
    """Path of a Chromium executable, or None."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    env = os.environ.get("CYTOSCREEN_CHROMIUM")
    return env if env and Path(env).exists() else None


class PageParser:
    """Collects what the tests check in a report page: ids, tags with classes, URL attributes."""

    def __init__(self, text: str):
        from html.parser import HTMLParser

        self.ids: dict[str, dict[str, str]] = {}
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.elements: list[
            tuple[str, dict[str, str], tuple[str, ...]]
        ] = []  # tag, attrs, open-id path
        stack: list[tuple[str, str | None]] = []
        outer = self
        void = {"meta", "link", "img", "br", "input", "hr", "source", "wbr"}

        class _P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                a = {k: (v or "") for k, v in attrs}
                path = tuple(i for _, i in stack if i)
                outer.elements.append((tag, a, path))
                if "id" in a:
                    outer.ids[a["id"]] = a
                for key in ("src", "href", "action", "data", "poster", "xlink:href"):
                    if key in a:
                        outer.urls.append((tag, key, a[key]))
                if tag not in void:
                    stack.append((tag, a.get("id")))

            def handle_startendtag(self, tag, attrs):
                self.handle_starttag(tag, attrs)
                if tag not in void and stack:
                    stack.pop()

            def handle_endtag(self, tag):
                for i in range(len(stack) - 1, -1, -1):
                    if stack[i][0] == tag:
                        del stack[i:]
                        break

        _P(convert_charrefs=True).feed(text)

    def find(
        self, tag: str, *, cls: str | None = None, within: str | None = None
    ) -> list[dict[str, str]]:
        """Elements ``tag`` (with class ``cls``) inside the element with id ``within``."""
        out = []
        for t, a, path in self.elements:
            if t != tag or (cls and cls not in a.get("class", "").split()):
                continue
            if within and within not in path:
                continue
            out.append(a)
        return out


def external_references(text: str) -> list[str]:
    """Every http(s):// or protocol-relative reference and every URL attribute that is neither
    ``data:``, an in-page anchor nor a relative link to another report page."""
    import re

    found = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", text)
    found = [f for f in found if f.startswith("http")] + re.findall(
        r"url\(\s*['\"]?(?!data:|#)[^)]*\)", text
    )
    for _tag, _attr, value in PageParser(text).urls:
        v = value.strip()
        if v.startswith(("data:", "#")) or re.fullmatch(r"[\w./-]+\.html", v):
            continue
        found.append(v)
    return found
