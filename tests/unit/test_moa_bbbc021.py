"""The BBBC021 benchmark data join and the standard NSC/NSCB protocol on it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from cytoscreen import io

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bbbc021_moa.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bbbc021_moa", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bbbc021_moa"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bbbc021_moa", None)


@pytest.fixture(scope="module")
def wells(bench):
    return bench.load_bbbc021()


def test_join_gives_every_well_a_moa(wells):
    assert len(wells) == 632 and len(io.feature_columns(wells)) == 516
    assert wells[io.MOA].notna().all()
    assert (wells[io.PERT_TYPE] == "negcon").sum() == 330
    assert wells[io.PERTURBATION].nunique() == 39
    assert len(wells.drop_duplicates([io.PERTURBATION, io.CONCENTRATION])) == 104
    assert wells[io.MOA].value_counts()["Kinase inhibitors"] == 10
    assert wells.loc[wells[io.PLATE] == "Week4_27481", io.BATCH].unique().tolist() == ["Week4"]


def test_standard_protocol_on_default_variant(bench, wells):
    pytest.importorskip("cytoscreen.profiles.chain")
    rec = bench.run_variant("default", wells, null_size=200)
    # Ljosa et al. 2013: 103 treatments for NSC; NSCB drops the two single-week MoAs (92 left)
    assert rec["n_treatments_nsc"] == 103 and rec["n_treatments_nscb"] == 92
    assert sorted(rec["nscb_dropped_moas"]) == ["Cholesterol-lowering", "Kinase inhibitors"]
    # regression bounds around the figures in benchmarks/README.md (0.777 / 0.783)
    assert rec["nsc"] >= 0.75 and rec["nscb"] >= 0.75
    assert rec["map_moa"] >= 0.65
