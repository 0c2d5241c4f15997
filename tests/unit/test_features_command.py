"""`cytoscreen features` from the outside: outputs, config overrides, exit codes and messages."""

from __future__ import annotations

import argparse

import pandas as pd
import pytest
import torch
import yaml

from cytoscreen import cli, io
from cytoscreen.config import load_schema
from tests.fixtures.features import make_plate, write_tables


@pytest.fixture()
def plate_files(tmp_path):
    images, qc = make_plate(tmp_path / "img", size=32, sites=1)
    results = tmp_path / "results" / "P1"
    write_tables(results, images, qc)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "results": str(tmp_path / "results"),
        "features": {"backbone": "test_tiny", "num_workers": 0, "accelerator": "cpu", "threads": 1},
    }))
    return tmp_path, config, results


def _run(argv):
    return cli.main(["features", *map(str, argv)])


def _error(capsys) -> str:
    """The one `error:` line the CLI logs to stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_writes_sites_parquet_with_default_paths(plate_files):
    tmp, config, results = plate_files
    assert _run(["--config", config, "--plate", "P1"]) == 0
    df = pd.read_parquet(results / "sites.parquet")
    assert len(df) == 4 and "DNA_test_tiny_0000" in df.columns  # backbone from the config
    prov = io.read_provenance(results / "sites.parquet")
    assert prov["plate"] == "P1" and prov["config_hash"] and prov["qc"].endswith("qc.parquet")


def test_cli_flags_override_config_and_explicit_paths(plate_files):
    tmp, config, results = plate_files
    cfg = yaml.safe_load(config.read_text())
    cfg["features"]["backbone"] = "efficientnet_lite2"  # would fail: its weights are not installed
    config.write_text(yaml.safe_dump(cfg))
    out = tmp / "elsewhere" / "sites.parquet"
    rc = _run(["--config", config, "--plate", "P1", "--images", results / "images.parquet",
               "--no-qc", "--out", out, "--backbone", "test_tiny", "--batch-size", "2",
               "--scaling", "image"])
    assert rc == 0
    df = pd.read_parquet(out)
    assert not io.qc_columns(df) and io.read_provenance(out)["scaling"] == "image"


def test_cli_defaults_equal_schema_defaults():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    features = sub.choices["features"]
    props = load_schema("config")["properties"]["features"]["properties"]
    checked = 0
    for action in features._actions:
        if action.dest in props:
            assert action.default == props[action.dest]["default"], action.dest
            if "enum" in props[action.dest]:
                assert list(action.choices) == props[action.dest]["enum"], action.dest
            checked += 1
    assert checked >= 10


def test_unknown_backbone_exit_3_lists_known(plate_files, capsys):
    tmp, config, _ = plate_files
    assert _run(["--config", config, "--plate", "P1", "--backbone", "vgg99"]) == 3
    line = _error(capsys)
    assert "unknown backbone 'vgg99'" in line and "efficientnet_lite0" in line


def test_missing_channel_exit_4_names_file(plate_files, capsys):
    tmp, config, results = plate_files
    images = pd.read_parquet(results / "images.parquet")
    images = images.drop(images.index[(images[io.WELL] == "A02") & (images[io.CHANNEL] == "DNA")])
    io.write_parquet(images, results / "images.parquet")
    assert _run(["--config", config, "--plate", "P1"]) == 4
    line = _error(capsys)
    assert "A02 s1" in line and "DNA" in line and "P1_A02_s1_RNA.tif" in line


def test_wrong_plate_and_missing_table_exit_4(plate_files, capsys):
    tmp, config, results = plate_files
    assert _run(["--config", config, "--plate", "P9", "--images", results / "images.parquet"]) == 4
    assert "no images of plate 'P9'" in _error(capsys)
    assert _run(["--config", config, "--plate", "P1", "--qc", tmp / "absent.parquet"]) == 4
    assert "absent.parquet: file not found" in _error(capsys)


def test_mismatched_weights_exit_5(plate_files, capsys):
    tmp, config, _ = plate_files
    weights = tmp / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    assert _run(["--config", config, "--plate", "P1", "--weights", weights]) == 5
    assert "do not match the architecture of backbone test_tiny" in _error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_gpu_without_cuda_exit_6(plate_files, capsys):
    tmp, config, _ = plate_files
    assert _run(["--config", config, "--plate", "P1", "--accelerator", "gpu"]) == 6
    assert "no CUDA device" in _error(capsys)


def test_bad_config_value_exit_3(plate_files, capsys):
    tmp, config, _ = plate_files
    assert _run(["--config", config, "--plate", "P1", "--batch-size", "0"]) == 3
    assert "features.batch_size" in _error(capsys)
