"""The workflow and its config (issue 15 items 1-4), through real `snakemake` on the tiny screen.

- A config change reruns exactly the rules whose command reads the changed section, and what
  follows from their outputs (the dry-run plan after one key per stage changes).
- A user's config plus the schema defaults is the whole config; the demo's config/config.yaml
  applies only when no --configfile is given.
- A dry run or --lint writes nothing (results/.config/config.yaml is written when jobs run).
- Unknown keys in any section, an unknown layout in the plate table and an unknown backbone stop
  the workflow when it is parsed, with one line naming the file and the key or row.

The plan tests share one "completed" run per module: every output is created empty and recorded
with `snakemake --touch --forceall` (params included), which Snakemake treats as a finished run.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cytoscreen import io
from cytoscreen.config import load_schema
from tests.conftest import CHANNELS, REPO

pytestmark = pytest.mark.slow

MOA_BRANCH = {"profiles_moa_normalize", "profiles_moa_select", "profiles_consensus", "moa", "report_index", "all"}
PROFILES_ON = {"profiles_aggregate", "profiles_select", "novelty_train", "novelty_score",
               "dose", "report_plate"} | MOA_BRANCH
FEATURES_ON = {"features"} | PROFILES_ON
QC_ON = {"qc"} | FEATURES_ON
INGEST_ON = {"ingest"} | QC_ON


def snakemake(workdir: Path, *args: str, configfile: Path | None = None,
              timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("CYTOSCREEN_DEBUG", None)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "1", *args]
    if configfile is not None:  # last: --configfile takes every argument up to the next option
        cmd += ["--configfile", str(configfile)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=workdir)


def plan(res: subprocess.CompletedProcess) -> dict[str, int]:
    """{rule: jobs} of a dry run's "Job stats" table ({} for "Nothing to be done")."""
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    if "Nothing to be done" in out:
        return {}
    table = out[out.index("Job stats:"):].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def base_config(plates: Path) -> dict:
    return {"plates": str(plates), "results": "results", "reports": "reports", "channels": dict(CHANNELS),
            "features": {"backbone": "test_tiny", "num_workers": 0, "threads": 1}}


def changed(config: dict, section: str, value) -> dict:
    out = copy.deepcopy(config)
    if isinstance(value, dict) and isinstance(out.get(section), dict):
        out[section].update(value)
    else:
        out[section] = value
    return out


@pytest.fixture(scope="module")
def completed(tiny_screen, tmp_path_factory) -> tuple[Path, dict]:
    """A work folder whose run is complete (outputs touched, params recorded) and its config."""
    workdir = tmp_path_factory.mktemp("completed")
    config = base_config(tiny_screen / "plates.tsv")
    cfg = write_config(workdir / "config.yaml", config)
    summary = snakemake(workdir, "--summary", configfile=cfg)
    assert summary.returncode == 0, summary.stderr[-3000:]
    for line in summary.stdout.splitlines()[1:]:
        path = workdir / line.split("\t")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    touch = snakemake(workdir, "--touch", "--forceall", configfile=cfg)
    assert touch.returncode == 0, touch.stderr[-3000:]
    assert plan(snakemake(workdir, "-n", configfile=cfg)) == {}
    return workdir, config


@pytest.mark.parametrize(("section", "value", "expected"), [
    ("channels", {"w3": "Phalloidin"}, INGEST_ON),
    ("ingest", {"on_unmatched_files": "error"}, INGEST_ON),
    ("qc", {"blur_z": 3.0}, QC_ON),
    ("features", {"scaling": "image"}, FEATURES_ON),
    ("profiles", {"normalize_method": "standardize"}, PROFILES_ON),
    # the MoA sub-chain reruns the MoA branch only: hit calling does not read it
    ("profiles", {"moa": {"asinh": False}}, MOA_BRANCH),
    ("novelty", {"hit_q": 0.2}, {"novelty_train", "novelty_score", "dose", "report_plate", "report_index", "all"}),
    ("moa", {"n_clusters": 3}, {"moa", "report_index", "all"}),
    ("report", {"thumbnail_px": 64}, {"dose", "report_plate", "report_index", "all"}),
])
def test_config_change_reruns_what_it_changes(completed, section, value, expected):
    workdir, config = completed
    cfg = write_config(workdir / f"changed_{section}.yaml", changed(config, section, value))
    jobs = plan(snakemake(workdir, "-n", configfile=cfg))
    assert set(jobs) == expected, f"{section} change plans {sorted(jobs)}"
    per_plate = {"ingest", "qc", "features", "profiles_aggregate", "report_plate"}
    assert all(jobs[rule] == 2 for rule in per_plate & set(jobs))


def test_plate_row_change_reruns_that_plate_only(completed, tiny_screen):
    workdir, config = completed
    plates = pd.read_csv(tiny_screen / "plates.tsv", sep="\t")
    plates.loc[plates["plate"] == "SYN002", "batch"] = "batch2"
    for col in ("images", "platemap"):
        plates[col] = [str((tiny_screen / p).resolve()) for p in plates[col]]
    plates.to_csv(workdir / "plates_batch2.tsv", sep="\t", index=False)
    cfg = write_config(workdir / "changed_plates.yaml", changed(config, "plates", str(workdir / "plates_batch2.tsv")))
    jobs = plan(snakemake(workdir, "-n", configfile=cfg))
    assert jobs["ingest"] == 1 and jobs["qc"] == 1 and jobs["features"] == 1
    assert jobs["profiles_select"] == 1 and "report_index" in jobs


def test_dry_run_and_lint_write_nothing(completed):
    workdir, config = completed
    resolved = workdir / "results" / ".config" / "config.yaml"
    resolved.write_text("# the config of the results on disk\n")
    before = resolved.stat().st_mtime_ns
    other = write_config(workdir / "other.yaml", changed(config, "qc", {"blur_z": 2.0}))
    dry = snakemake(workdir, "-n", configfile=other)
    lint = snakemake(workdir, "--lint", configfile=other)
    assert resolved.read_text() == "# the config of the results on disk\n"
    assert resolved.stat().st_mtime_ns == before
    assert "qc" in plan(dry)  # the dry run did see the change it did not write
    assert "Lints for" in lint.stdout + lint.stderr or "Congratulations" in lint.stdout + lint.stderr


def _one_plate(tiny_screen: Path, folder: Path) -> Path:
    plates = pd.read_csv(tiny_screen / "plates.tsv", sep="\t").iloc[:1]
    for col in ("images", "platemap"):
        plates[col] = [str((tiny_screen / p).resolve()) for p in plates[col]]
    plates.to_csv(folder / "plates.tsv", sep="\t", index=False)
    return folder / "plates.tsv"


def test_user_config_stands_alone_and_demo_applies_without_one(tiny_screen, tmp_path):
    schema = load_schema("config")["properties"]
    novelty_defaults = {"hit_q": schema["novelty"]["properties"]["hit_q"]["default"]}
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert demo["channels"] and demo["novelty"]["hit_q"] != novelty_defaults["hit_q"]  # what could leak
    target = "results/SYN001/images.parquet"

    # a user's screen run from a folder holding the demo's config/config.yaml
    user = tmp_path / "user"
    (user / "config").mkdir(parents=True)
    shutil.copy2(REPO / "config" / "config.yaml", user / "config" / "config.yaml")
    cfg = write_config(user / "my_screen.yaml", {"plates": str(_one_plate(tiny_screen, user))})
    res = snakemake(user, target, configfile=cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    images = pd.read_parquet(user / target)
    assert set(images[io.CHANNEL]) == {"w1", "w2", "w3"}  # unmapped tokens keep their names
    resolved = yaml.safe_load((user / "results" / ".config" / "config.yaml").read_text())
    assert resolved["channels"] == {}
    assert {k: resolved["novelty"][k] for k in novelty_defaults} == novelty_defaults

    # the demo: no --configfile, config/config.yaml is the config
    demo_dir = tmp_path / "demo"
    (demo_dir / "config").mkdir(parents=True)
    demo["plates"] = str(_one_plate(tiny_screen, demo_dir))
    write_config(demo_dir / "config" / "config.yaml", demo)
    res = snakemake(demo_dir, target)
    assert res.returncode == 0, res.stderr[-3000:]
    assert set(pd.read_parquet(demo_dir / target)[io.CHANNEL]) == set(demo["channels"].values())
    resolved = yaml.safe_load((demo_dir / "results" / ".config" / "config.yaml").read_text())
    assert resolved["novelty"]["hit_q"] == demo["novelty"]["hit_q"]


def _parse_error(workdir: Path, cfg: Path) -> str:
    res = snakemake(workdir, "-n", configfile=cfg)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert "Traceback" not in out and 'File "' not in out, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("cytoscreen: ")]
    assert len(lines) == 1, out[-3000:]
    assert not (workdir / "results").exists()  # stopped before any job
    return lines[0]


@pytest.mark.parametrize(("section", "typo"), [
    ("ingest", {"on_missing_well": "warn"}),
    ("qc", {"blur_zz": 2.0}),
    ("profiles", {"normalise_method": "standardize"}),
    ("report", {"thumbnail": 64}),
])
def test_unknown_key_in_any_section_stops_the_parse(tiny_screen, tmp_path, section, typo):
    config = base_config(tiny_screen / "plates.tsv")
    cfg = write_config(tmp_path / "config.yaml", changed(config, section, typo))
    (key,) = typo
    line = _parse_error(tmp_path, cfg)
    assert line.startswith(f"cytoscreen: {cfg}: unknown key {section}.{key}; known keys of {section}: "), line


def test_unknown_layout_names_the_plate_table_row(tiny_screen, tmp_path):
    plates = pd.read_csv(tiny_screen / "plates.tsv", sep="\t")
    plates.loc[1, "layout"] = "imagexpres"
    for col in ("images", "platemap"):
        plates[col] = [str((tiny_screen / p).resolve()) for p in plates[col]]
    plates.to_csv(tmp_path / "plates.tsv", sep="\t", index=False)
    cfg = write_config(tmp_path / "config.yaml", base_config(tmp_path / "plates.tsv"))
    line = _parse_error(tmp_path, cfg)
    assert line.startswith(f"cytoscreen: {tmp_path / 'plates.tsv'} row 3 (plate SYN002): unknown layout "
                           f"'imagexpres'; known layouts: "), line
    assert "imagexpress" in line


def test_unknown_backbone_names_the_config_key(tiny_screen, tmp_path):
    config = changed(base_config(tiny_screen / "plates.tsv"), "features", {"backbone": "efficientnet_b0"})
    cfg = write_config(tmp_path / "config.yaml", config)
    line = _parse_error(tmp_path, cfg)
    assert line.startswith(f"cytoscreen: {cfg}: features.backbone: unknown backbone 'efficientnet_b0'; "), line
