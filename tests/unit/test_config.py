"""Config schema defaults, the demo config, and config/README.md agree."""

import re

import pytest

from cytoscreen.config import load_config, load_plates, load_schema, write_resolved_config
from cytoscreen.errors import ConfigError
from tests.conftest import REPO


def _keys(schema: dict, prefix: str = "") -> list[str]:
    out = []
    for key, sub in schema.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        out.append(dotted)
        if isinstance(sub, dict) and sub.get("type") == "object" and "properties" in sub:
            out.extend(_keys(sub, dotted + "."))
    return out


def test_every_schema_key_has_default_and_description():
    schema = load_schema("config")
    for key in _keys(schema):
        node = schema
        for part in key.split("."):
            node = node["properties"][part]
        assert "description" in node or node.get("type") == "object", key
        assert "default" in node, f"{key} has no default"


def test_readme_documents_every_key():
    text = (REPO / "config" / "README.md").read_text()
    missing = [k for k in _keys(load_schema("config")) if f"`{k}`" not in text]
    assert not missing, f"config/README.md does not document: {missing}"


def test_demo_config_validates_and_fills_defaults():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert cfg["channels"]["w1"] == "DNA"
    assert cfg["qc"]["batch_size"] == 16 and cfg["ingest"]["on_missing_wells"] == "error"
    plates = load_plates(REPO / cfg["plates"])
    assert list(plates.index) == ["SYN001", "SYN002"]


def test_bad_config_values_are_config_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("qc: {batch_size: 0}\n")
    with pytest.raises(ConfigError, match=r"qc\.batch_size"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("nonsense_key: 1\n")
    with pytest.raises(ConfigError, match="nonsense_key"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_plate_table_errors(tmp_path):
    (tmp_path / "p.tsv").write_text("plate\timages\tlayout\tplatemap\nP 1\ti\timagexpress\tpm.tsv\n")
    with pytest.raises(ConfigError, match=r"p.tsv row 2: plate"):
        load_plates(tmp_path / "p.tsv")
    (tmp_path / "p.tsv").write_text("plate\timages\tlayout\tplatemap\nP1\ti\tx\tpm.tsv\nP1\ti\tx\tpm.tsv\n")
    with pytest.raises(ConfigError, match="listed twice: P1"):
        load_plates(tmp_path / "p.tsv")


def test_resolved_config_rewritten_only_on_change(tmp_path):
    cfg = load_config(REPO / "config" / "config.yaml")
    path = write_resolved_config(cfg, tmp_path / "c.yaml")
    mtime = (tmp_path / "c.yaml").stat().st_mtime_ns
    write_resolved_config(cfg, tmp_path / "c.yaml")
    assert (tmp_path / "c.yaml").stat().st_mtime_ns == mtime
    assert load_config(path) == cfg


def test_schema_enums_match_code():
    from cytoscreen.ingest.layouts import BUILTIN_LAYOUTS

    schema = load_schema("config")
    assert re.search("imagexpress", schema["properties"]["layouts"]["description"])
    assert set(BUILTIN_LAYOUTS) >= {"imagexpress", "phenix", "operetta", "cellprofiler"}
