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


def _objects(node: dict, path: str = ""):
    if "properties" in node:
        yield path or "(top level)", node
    for key, sub in node.get("properties", {}).items():
        yield from _objects(sub, f"{path}.{key}" if path else key)


@pytest.mark.parametrize("name", ["config", "plates"])
def test_every_section_rejects_unknown_keys(name):
    # novelty.trainer passes its keys to Lightning's Trainer, which names an unknown one itself
    open_sections = {"novelty.trainer"} if name == "config" else set()
    strict = {path for path, node in _objects(load_schema(name)) if node.get("additionalProperties") is False}
    assert {path for path, _ in _objects(load_schema(name))} - strict == open_sections


def test_unknown_key_message_names_the_key_and_the_known_ones(tmp_path):
    (tmp_path / "c.yaml").write_text("ingest: {on_missing_well: warn}\nqc: {blur_zz: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    known = ", ".join(sorted(load_schema("config")["properties"]["ingest"]["properties"]))
    assert str(err.value) == f"{tmp_path / 'c.yaml'}: unknown key ingest.on_missing_well; known keys of ingest: {known}"
    (tmp_path / "p.tsv").write_text("plate\timages\tlayout\tplatemap\tbacth\nP1\ti\timagexpress\tpm.tsv\tb\n")
    with pytest.raises(ConfigError, match=r"p.tsv row 2: unknown key bacth; known keys: batch, images, layout"):
        load_plates(tmp_path / "p.tsv")


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


#: schema key (dotted; `[]` for array items) -> the code's tuple constant ("module:NAME") that the
#: function, argparse `choices=` and the schema `enum` share.
ENUM_CONSTANTS = {
    "config:features.scaling": "cytoscreen.features.preprocess:SCALING_METHODS",
    "config:features.spatial": "cytoscreen.features.preprocess:SPATIAL_MODES",
    "config:features.accelerator": "cytoscreen.compute:ACCELERATORS",
    "config:features.precision": "cytoscreen.features.embed:PRECISIONS",
    "config:profiles.aggregate_method": "cytoscreen.profiles.aggregate:AGGREGATE_METHODS",
    "config:profiles.normalize_method": "cytoscreen.profiles.normalize:NORMALIZE_METHODS",
    "config:profiles.spherize_method": "cytoscreen.profiles.normalize:SPHERIZE_METHODS",
    "config:profiles.spherize": "cytoscreen.profiles.normalize:SPHERIZE_METHODS",
    "config:profiles.select_operations.[]": "cytoscreen.profiles.select:SELECT_OPERATIONS",
    "config:profiles.corr_method": "cytoscreen.profiles.select:CORRELATION_METHODS",
    "config:profiles.consensus_method": "cytoscreen.profiles.consensus:CONSENSUS_METHODS",
    "config:profiles.modz_method": "cytoscreen.profiles.consensus:MODZ_CORRELATIONS",
    "config:novelty.site_aggregate": "cytoscreen.novelty.settings:SITE_AGGREGATES",
    "config:moa.cluster_method": "cytoscreen.moa.cluster:CLUSTER_METHODS",
    "config:report.thumbnail_format": "cytoscreen.report.settings:THUMBNAIL_FORMATS",
    "config:report.thumbnail_stretch": "cytoscreen.report.settings:THUMBNAIL_STRETCHES",
    "config:segment.accelerator": "cytoscreen.compute:ACCELERATORS",
    "config:segment.crops.scaling": "cytoscreen.segment.crops:SCALING_METHODS",
    "platemap:pert_type": "cytoscreen.io:PERT_TYPES",
}


def _enums(node: dict, path: str = "") -> dict[str, list]:
    out = {}
    if "enum" in node:
        out[path] = node["enum"]
    for key, sub in node.get("properties", {}).items():
        out.update(_enums(sub, f"{path}.{key}" if path else key))
    if isinstance(node.get("items"), dict):
        out.update(_enums(node["items"], f"{path}.[]"))
    return out


def test_schema_enums_match_code():
    import importlib

    for key, target in ENUM_CONSTANTS.items():
        schema_name, dotted = key.split(":")
        enum = _enums(load_schema(schema_name)).get(dotted)
        assert enum is not None, f"{schema_name} schema has no enum at {dotted}"
        module, name = target.split(":")
        constant = getattr(importlib.import_module(module), name)
        assert isinstance(constant, tuple), target
        # null (an optional step left off) is the schema's own extra choice
        assert [v for v in enum if v is not None] == list(constant), f"{key} enum {enum} != {target} {constant}"


def test_layout_names_match_code():
    from cytoscreen.ingest.layouts import BUILTIN_LAYOUTS, ZARR_LAYOUT

    builtin = sorted({*BUILTIN_LAYOUTS, ZARR_LAYOUT})
    described = load_schema("plates")["properties"]["layout"]["description"]
    named = sorted(set(re.findall(r"\b(" + "|".join(builtin) + r")\b", described)))
    assert named == builtin, f"plates.schema.yaml layout description names {named}, the code has {builtin}"
    layouts = load_schema("config")["properties"]["layouts"]["description"]
    assert sorted(set(re.findall(r"\b(" + "|".join(builtin) + r")\b", layouts))) == builtin


@pytest.mark.parametrize("section", ["qc", "ingest", "moa", "novelty", "report"])
def test_settings_reject_unknown_keys_with_one_message(section):
    """Every stage's Settings.from_config applies config.settings_values: an unknown key names
    the section, the key and the known keys (moa and novelty used to omit the known keys)."""
    from cytoscreen.ingest.settings import IngestSettings
    from cytoscreen.moa.stage import MoaSettings
    from cytoscreen.novelty.settings import NoveltySettings
    from cytoscreen.qc.settings import QCSettings
    from cytoscreen.report.settings import ReportSettings

    config = load_config()
    cls = {"qc": QCSettings, "ingest": IngestSettings, "moa": MoaSettings, "novelty": NoveltySettings,
           "report": ReportSettings}[section]
    good = config if section == "ingest" else config[section]
    assert isinstance(cls.from_config(good), cls)
    bad = {**config, "ingest": {**config["ingest"], "bogus_key": 1}} if section == "ingest" else \
        {**config[section], "bogus_key": 1}
    with pytest.raises(ConfigError) as err:
        cls.from_config(bad)
    message = str(err.value)
    assert message.startswith(f"{section}: unknown key(s) bogus_key; known: ")
    known = message.split("; known: ", 1)[1].split(", ")
    assert known == sorted(known) and set(known) <= set(config[section]) | {"channels", "layouts"}
    assert set(config[section]) <= set(known)


# --- the fast path of validate: same verdict and defaults as jsonschema ------------------------------
_VALUES = (None, True, False, 0, 1, -1, 0.5, 2.0, 7, 1e9, -1e9, float("nan"), "", "x", "negcon",
           [], ["a"], ["a", "a"], [1, 2], {}, {"k": 1})


def _leaves(node: dict, path: tuple = ()):
    """(path of the innermost object section, that section's schema, key, the key's schema)."""
    for key, sub in node.get("properties", {}).items():
        if isinstance(sub, dict) and "properties" in sub:
            yield from _leaves(sub, (*path, key))
        else:
            yield path, node, key, sub


def _jsonschema_verdict(data, schema):
    import copy

    import jsonschema

    from cytoscreen.config import _extend_with_default

    data = copy.deepcopy(data)
    cls = _extend_with_default(jsonschema.Draft202012Validator)
    return not any(True for _ in cls(schema).iter_errors(data)), data


@pytest.mark.parametrize("name", ["config", "plates", "platemap"])
def test_fast_validation_agrees_with_jsonschema(name):
    import copy

    from cytoscreen.config import _conforms, _Unsure

    schema = load_schema(name)
    cases = [(schema, {})]
    for _path, section, key, sub in _leaves(schema):
        for value in (*_VALUES, *[v for v in sub.get("enum", []) if v is not None]):
            cases.append((section, {key: copy.deepcopy(value)}))
    if name == "config":
        import yaml

        cases.append((schema, yaml.safe_load((REPO / "config" / "config.yaml").read_text())))
    decided = 0
    for sch, data in cases:
        valid, filled = _jsonschema_verdict(data, sch)
        mine = copy.deepcopy(data)
        try:
            ok = _conforms(mine, sch)
        except _Unsure:
            continue
        decided += 1
        assert ok == valid, (data, sch)
        if ok:
            assert mine == filled or repr(mine) == repr(filled), data  # NaN != NaN
    assert decided > 0.9 * len(cases)


def test_validate_reports_jsonschemas_message(tmp_path):
    # a config the fast path rejects is reported by jsonschema, as before
    with pytest.raises(ConfigError, match=r"profiles\.corr_threshold: 2 is greater than the maximum"):
        load_config(None, overrides={"profiles": {"corr_threshold": 2}})
    with pytest.raises(ConfigError, match=r"unknown key profiles\.nope"):
        load_config(None, overrides={"profiles": {"nope": 1}})


def test_validate_without_config_does_not_import_jsonschema():
    import subprocess
    import sys

    code = ("from cytoscreen.config import load_config\n"
            "cfg = load_config(None, overrides={'profiles': {'na_cutoff': 0.1}})\n"
            "assert cfg['profiles']['na_cutoff'] == 0.1 and cfg['qc']['batch_size'] == 16\n"
            "import sys; print('jsonschema' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "False"
