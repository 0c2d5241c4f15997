"""The package installs without the repository: a built wheel carries its schemas and report assets.

The wheel is built from a copy of the sources (nothing is written into the checkout), installed
with ``pip install --no-deps --target`` and run from a folder outside the repository with that
folder first on PYTHONPATH, so the installed copy shadows the editable one while the dependencies
come from this environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import CHANNELS, REPO

pytestmark = pytest.mark.slow


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> tuple[Path, Path]:
    """(the built wheel, the folder it is installed into)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "cytoscreen", src / "cytoscreen", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
          "-w", str(tmp / "dist")], cwd=tmp, env=env)
    (wheel,) = (tmp / "dist").glob("cytoscreen-*.whl")
    site = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site),
          str(wheel)], cwd=tmp, env=env)
    return wheel, site


def test_wheel_ships_schemas_and_report_assets(wheel_site):
    wheel, _ = wheel_site
    names = set(zipfile.ZipFile(wheel).namelist())
    for schema in ("config", "plates", "platemap"):
        assert f"cytoscreen/schemas/{schema}.schema.yaml" in names
    assets = {n for n in names if n.startswith("cytoscreen/report/assets/")}
    assert {f"cytoscreen/report/assets/{n}" for n in ("report.css", "report.js", "page.html")} <= assets
    # the packaged schema is the one the workflow validates against
    packaged = zipfile.ZipFile(wheel).read("cytoscreen/schemas/config.schema.yaml").decode()
    assert packaged == (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()


def test_installed_wheel_runs_outside_the_repository(wheel_site, tiny_screen, tmp_path):
    _, site = wheel_site
    run = tmp_path / "run"
    run.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("CYTOSCREEN_DEBUG", None)
    where = _run([sys.executable, "-c", "import cytoscreen; print(cytoscreen.__file__)"], cwd=run, env=env)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout
    cli = [str(site / "bin" / "cytoscreen")]

    # a one-plate screen, config outside the repository
    plates = pd.read_csv(tiny_screen / "plates.tsv", sep="\t").iloc[:1]
    for col in ("images", "platemap"):
        plates[col] = [str((tiny_screen / p).resolve()) for p in plates[col]]
    plates.to_csv(run / "plates.tsv", sep="\t", index=False)
    (run / "config.yaml").write_text(yaml.safe_dump({"plates": "plates.tsv", "channels": dict(CHANNELS)}))
    _run([*cli, "ingest", "--config", "config.yaml", "--plate", "SYN001", "--out", "images.parquet"], cwd=run, env=env)
    _run([*cli, "qc", "images.parquet", "qc.parquet", "--config", "config.yaml"], cwd=run, env=env)
    assert len(pd.read_parquet(run / "qc.parquet")) == 96

    # profiles normalize: schema defaults (mad_robustize against negcon) from the packaged schema
    rng = np.random.default_rng(0)
    wells = pd.DataFrame({
        "Metadata_Plate": "SYN001",
        "Metadata_Well": [f"A{i:02d}" for i in range(1, 9)],
        "Metadata_pert_type": ["negcon"] * 4 + ["trt"] * 4,
        "f1": rng.normal(5, 2, 8),
        "f2": rng.normal(-1, 0.5, 8),
    })
    wells.to_parquet(run / "wells.parquet")
    _run([*cli, "profiles", "normalize", "wells.parquet", "normalized.parquet"], cwd=run, env=env)
    normalized = pd.read_parquet(run / "normalized.parquet")
    negcon = normalized[normalized["Metadata_pert_type"] == "negcon"]
    for feature in ("f1", "f2"):
        raw = wells.loc[wells["Metadata_pert_type"] == "negcon", feature]
        mad = np.median(np.abs(raw - raw.median()))
        expected = (wells[feature] - raw.median()) / (1.4826 * mad + 1e-18)
        np.testing.assert_allclose(normalized[feature], expected, rtol=1e-6)
        assert negcon[feature].median() == pytest.approx(0, abs=1e-9)

    # report plate: the page inlines the packaged CSS and JS
    _run([*cli, "report", "plate", "--config", "config.yaml", "--plate", "SYN001", "--qc", "qc.parquet",
          "--images", "images.parquet", "--out", "SYN001.html"], cwd=run, env=env)
    html = (run / "SYN001.html").read_text()
    assert "<html" in html.lower() and "https://" not in html
    css = (site / "cytoscreen" / "report" / "assets" / "report.css").read_text().strip().splitlines()
    assert css and css[0].strip() in html
