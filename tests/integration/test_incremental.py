"""Adding a plate to the plate table recomputes that plate and the screen-level tables only.

A two-plate screen is run to completion; a third plate is appended to its plates.tsv; Snakemake's
plan (the job list of a dry run) must hold every per-plate job of the new plate and the
screen-level jobs (feature selection, consensus, novelty, MoA, reports), and no ingest, QC, features,
aggregation or normalization job of the plates that were already done.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cytoscreen.synth import default_settings, synth_screen
from tests.conftest import write_config
from tests.integration.test_resume import FAST_CONFIG, job_outputs, run

OLD, NEW = ("SYN001", "SYN002"), "SYN003"
# Per-plate outputs made by per-plate jobs (the plate's own chain).
PLATE_CHAIN = ("images.parquet", "qc.parquet", "sites.parquet", "wells.parquet", "normalized.parquet")
# Outputs of screen-level jobs, and of jobs downstream of them.
SCREEN = ("results/screen/feature_selected.parquet", "results/screen/consensus.parquet",
          "results/screen/novelty/model.ckpt", "results/screen/novelty/novelty.parquet",
          "results/screen/moa.parquet", "results/screen/evaluation.json", "reports/index.html")


@pytest.fixture(scope="module")
def three_plates(tmp_path_factory) -> Path:
    """Three seeded 96-well plates (one site per well, 128 px), drawn like the tiny screen."""
    out = tmp_path_factory.mktemp("three_plates")
    synth_screen(out, plates=3, wells=96, sites=1, seed=3, settings=default_settings(128))
    return out


def plate_table(screen: Path, plates: tuple[str, ...], path: Path) -> Path:
    """A plates.tsv for ``plates`` of ``screen`` with absolute paths, written to ``path``."""
    table = pd.read_csv(screen / "plates.tsv", sep="\t")
    table = table[table["plate"].isin(plates)].copy()
    for column in ("images", "platemap"):
        table[column] = [str(screen / value) for value in table[column]]
    table.to_csv(path, sep="\t", index=False)
    return path


@pytest.mark.slow
def test_new_plate_recomputes_only_that_plate_and_screen_tables(three_plates, tmp_path, cli_env):
    plates_tsv = plate_table(three_plates, OLD, tmp_path / "plates.tsv")
    write_config(tmp_path / "config.yaml", plates_tsv, results="results", reports="reports", **FAST_CONFIG)
    first = run(tmp_path, cli_env)
    assert first.returncode == 0, first.stderr[-4000:]
    for plate in OLD:
        assert (tmp_path / "results" / plate / "normalized.parquet").exists()

    plate_table(three_plates, (*OLD, NEW), plates_tsv)  # the user appends a row
    dry = run(tmp_path, cli_env, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-4000:]
    plan = job_outputs(dry)

    old_chain = {f"results/{plate}/{name}" for plate in OLD for name in PLATE_CHAIN}
    new_plate = {f"results/{NEW}/{name}" for name in (*PLATE_CHAIN, "feature_selected.parquet")}
    new_plate.add(f"reports/{NEW}.html")
    assert not plan & old_chain, f"done plates are recomputed: {sorted(plan & old_chain)}"
    assert new_plate <= plan, f"the new plate is not computed: {sorted(new_plate - plan)}"
    assert set(SCREEN) <= plan, f"screen-level tables are not recomputed: {sorted(set(SCREEN) - plan)}"
    # besides: the selection job rewrites every plate's selected table (one column set for the
    # screen), and the plate reports show the screen-level novelty scores
    downstream = {f"results/{plate}/feature_selected.parquet" for plate in OLD} | {f"reports/{p}.html" for p in OLD}
    other = plan - new_plate - set(SCREEN) - downstream
    assert all(name.startswith("results/screen/") for name in other), f"unexpected jobs: {sorted(other)}"
