"""Loading and validating the workflow config and the plate table, in Snakemake and in the CLI.

The schemas in ``cytoscreen/schemas/`` (package data; ``workflow/schemas`` links to them) are the
single source of defaults.  The workflow (``workflow/rules/common.smk``) calls
:func:`prepare_workflow` and :func:`load_config` does the same for direct CLI use, so a stage run by
hand sees exactly the settings the workflow would give it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import numbers
import os
import re
from collections.abc import Collection, Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cytoscreen.errors import ConfigError

logger = logging.getLogger(__name__)

SCHEMA_NAMES = ("config", "plates", "platemap")
#: libyaml's loader when PyYAML was built with it (the schema parses ~10x faster: ~7 vs ~60 ms).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` with :data:`_SAFE_LOADER` (same results, same ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed ``cytoscreen/schemas/<name>.schema.yaml``."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}")
    ref = resources.files("cytoscreen").joinpath("schemas", f"{name}.schema.yaml")
    return _safe_load(ref.read_text(encoding="utf-8"))


def _extend_with_default(validator_class):
    """A jsonschema validator that fills in ``default`` values (as snakemake.utils.validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    import jsonschema

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate(data: dict[str, Any], schema: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Validate ``data`` in place against ``schema``, filling defaults; raise ConfigError.

    A config the schema accepts is checked by :func:`_conforms` (a few ms); only one it rejects,
    or a schema using a keyword :func:`_conforms` does not know, goes through jsonschema, whose
    import and validator cost ~0.1 CPU-s of every CLI step's start-up.
    """
    try:
        if _conforms(data, schema):
            return data
    except _Unsure:
        pass
    import jsonschema

    cls = _extend_with_default(jsonschema.Draft202012Validator)
    errors = sorted(cls(schema).iter_errors(data), key=lambda e: [str(p) for p in e.path])
    if errors:
        raise ConfigError(f"{source}: {_error_message(errors[0])}")
    return data


class _Unsure(Exception):
    """:func:`_conforms` met a keyword or value it does not decide as jsonschema would."""


#: Keywords :func:`_conforms` ignores, as jsonschema does (annotations).
_ANNOTATIONS = frozenset({"$schema", "$comment", "title", "description", "default", "examples"})


def _is_type(value: Any, name: str) -> bool:
    """jsonschema's Draft 2020-12 type check (an integral float is an integer)."""
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "number":
        return isinstance(value, numbers.Number)
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    raise _Unsure(name)


def _in_enum(value: Any, enum: Sequence[Any]) -> bool:
    """jsonschema's ``enum`` for a scalar (strings, None, booleans apart from 0 and 1, numbers)."""
    if isinstance(value, str):
        return any(isinstance(e, str) and e == value for e in enum)
    if value is None or isinstance(value, bool):
        return any(e is value for e in enum)
    if isinstance(value, int | float):
        return any(isinstance(e, int | float) and not isinstance(e, bool) and e == value
                   for e in enum)
    raise _Unsure("enum")


def _conforms(instance: Any, schema: Mapping[str, Any] | bool) -> bool:
    """Whether ``instance`` is valid under ``schema``, filling each missing property's default
    (a copy) as the validator of :func:`validate` does; stops at the first error (False).

    Knows the keywords the schemas in ``cytoscreen/schemas/`` use (type, enum, properties,
    additionalProperties, required, items, min/maxItems, uniqueItems of strings, (exclusive)
    minimum/maximum, pattern), each decided as jsonschema's Draft 2020-12 validator does
    (``tests/unit/test_config.py`` compares them); any other raises :class:`_Unsure`.
    """
    if schema is True:
        return True
    if not isinstance(schema, dict):
        raise _Unsure("schema")
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key == "type":
            if not any(_is_type(instance, t) for t in ([value] if isinstance(value, str) else value)):
                return False
        elif key == "enum":
            if not _in_enum(instance, value):
                return False
        elif key == "properties":
            if isinstance(instance, dict):
                for prop, sub in value.items():
                    if isinstance(sub, dict) and "default" in sub and prop not in instance:
                        instance[prop] = copy.deepcopy(sub["default"])
                    if prop in instance and not _conforms(instance[prop], sub):
                        return False
        elif key == "additionalProperties":
            if isinstance(instance, dict):
                known = schema.get("properties", {})
                extras = [k for k in instance if k not in known]
                if value is False and extras:
                    return False
                if value is not False and not all(_conforms(instance[k], value) for k in extras):
                    return False
        elif key == "required":
            if isinstance(instance, dict) and any(k not in instance for k in value):
                return False
        elif key == "items":
            if isinstance(instance, list) and not all(_conforms(v, value) for v in instance):
                return False
        elif key in ("minItems", "maxItems", "uniqueItems"):
            if isinstance(instance, list) and not _array_ok(key, value, instance):
                return False
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if _is_type(instance, "number") and not _number_ok(key, value, instance):
                return False
        elif key == "pattern":
            if isinstance(instance, str) and not re.search(value, instance):
                return False
        else:
            raise _Unsure(key)
    return True


def _array_ok(key: str, bound: Any, items: list) -> bool:
    if key == "minItems":
        return len(items) >= bound
    if key == "maxItems":
        return len(items) <= bound
    if not bound:
        return True
    if not all(isinstance(v, str) for v in items):
        raise _Unsure("uniqueItems")
    return len(set(items)) == len(items)


def _number_ok(key: str, bound: Any, value: Any) -> bool:
    """jsonschema's comparisons, negated as it writes them (a NaN passes every bound)."""
    if key == "minimum":
        return not value < bound
    if key == "maximum":
        return not value > bound
    if key == "exclusiveMinimum":
        return not value <= bound
    return not value >= bound


def _error_message(err) -> str:
    """``<dotted key>: <what is wrong>``; an unknown key is named with the keys its section knows."""
    where = ".".join(str(p) for p in err.path)
    if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
        known = sorted(err.schema.get("properties", {}))
        unknown = sorted(str(k) for k in err.instance if k not in known)
        keys = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        return f"unknown key {keys}; known keys{' of ' + where if where else ''}: {', '.join(known)}"
    return f"{where or '(top level)'}: {err.message}"


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config (or start empty), apply ``overrides`` and the schema defaults."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = _safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({err})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the config must be a mapping of keys to values")
    if overrides:
        data = _deep_merge(data, overrides)
    return validate(data, load_schema("config"), source=str(path or "config"))


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_plates(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``plates.tsv``; relative ``images`` and ``platemap`` paths resolve against its folder.

    Returns a frame indexed by plate with absolute ``images`` and ``platemap`` paths.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: plate table not found; set `plates:` in the config")
    try:
        table = pd.read_csv(p, sep="\t", dtype=str, comment="#").fillna("")
    except (OSError, ValueError) as err:
        raise ConfigError(f"{p}: cannot read plate table ({err})") from err
    schema = load_schema("plates")
    for i, record in enumerate(table.to_dict(orient="records")):
        record = {k: v for k, v in record.items() if v != ""}
        validate(record, schema, source=f"{p} row {i + 2}")
    if table.empty:
        raise ConfigError(f"{p}: the plate table lists no plates")
    dup = table["plate"][table["plate"].duplicated()].tolist()
    if dup:
        raise ConfigError(f"{p}: plate(s) listed twice: {', '.join(dup)}")
    base = p.resolve().parent
    for col in ("images", "platemap"):
        table[col] = [str((base / v).resolve()) if v else "" for v in table[col]]
    if "batch" not in table.columns:
        table["batch"] = ""
    table["batch"] = [b or plate for b, plate in zip(table["batch"], table["plate"], strict=True)]
    return table.set_index("plate", drop=False)


def plate_info(config: Mapping[str, Any], plate: str) -> dict[str, str]:
    """The plate table row of ``plate`` as a dict, or a ConfigError listing the known plates."""
    table = load_plates(config["plates"])
    if plate not in table.index:
        raise ConfigError(
            f"{config['plates']}: unknown plate {plate!r}; known plates: {', '.join(table.index)}"
        )
    return table.loc[plate].to_dict()


def section_digest(config: Mapping[str, Any], *keys: str, extra: Any = None) -> str:
    """A short hash of the config sections ``keys`` (and ``extra``), for a rule's params.

    Snakemake reruns a job when one of its params changed, so a rule that passes the digest of the
    sections its command reads reruns exactly when one of their values changes.
    """
    payload = {key: _plain(config.get(key)) for key in keys}
    if extra is not None:
        payload["_extra"] = _plain(extra)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_layouts(config: Mapping[str, Any], plates: pd.DataFrame) -> None:
    """Every plate's ``layout`` is built in or named under ``layouts:``; else a ConfigError naming the row."""
    from cytoscreen.ingest.layouts import resolve_layout

    for row, (plate, layout) in enumerate(zip(plates["plate"], plates["layout"], strict=True), start=2):
        try:
            resolve_layout(layout, config.get("layouts"))
        except ConfigError as err:
            raise ConfigError(f"{config['plates']} row {row} (plate {plate}): {err}") from None


def check_backbones(config: Mapping[str, Any], *, source: str = "config") -> None:
    """``features.backbone`` (and ``segment.crops.backbone`` when crops are embedded) are known backbones."""
    keys = [("features.backbone", config["features"]["backbone"])]
    crops = config["segment"]["crops"]
    if config["segment"]["enabled"] and crops["enabled"] and crops["embed"] and crops["backbone"]:
        keys.append(("segment.crops.backbone", crops["backbone"]))
    from cytoscreen.backbones import backbone_spec

    for key, name in keys:
        try:
            backbone_spec(name)
        except ConfigError as err:
            raise ConfigError(f"{source}: {key}: {err}") from None


def prepare_workflow(config: dict[str, Any], *, source: str) -> pd.DataFrame:
    """What the workflow checks when it is parsed: returns the plate table.

    ``config`` (Snakemake's) is validated in place against the schema, which fills in every
    default; the plate table is read and each plate's layout and the configured backbones are
    checked, so a name that does not exist is reported before any job runs.
    """
    validate(config, load_schema("config"), source=source)
    plates = load_plates(config["plates"])
    check_layouts(config, plates)
    check_backbones(config, source=source)
    return plates


def write_resolved_config(config: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Write the validated config (defaults filled in) to ``path`` if its content changed.

    The workflow writes this file from its ``onstart`` handler, when jobs are about to run (never
    when the workflow is parsed, so a dry run or ``--lint`` writes nothing), and passes it to every
    ``cytoscreen`` call, so a stage run by Snakemake sees exactly the settings Snakemake validated,
    including ``--config key=value`` overrides.  The file is rewritten only when its content differs.
    """
    from cytoscreen.io import write_text

    text = yaml.safe_dump(_plain(config), sort_keys=True)
    p = Path(path)
    if not p.exists() or p.read_text(encoding="utf-8") != text:
        write_text(text, p)
    return str(p)


def _plain(obj: Any) -> Any:
    """Snakemake's config is a dict subclass with wrapped values; make it plain for YAML."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def settings_values(
    cls: type, name: str, section: Mapping[str, Any] | None, *, exclude: Collection[str] = ()
) -> dict[str, Any]:
    """The config's ``name:`` section as a dict whose keys are all fields of the settings dataclass
    ``cls`` (less ``exclude``, the fields a stage fills from elsewhere).

    The one rule of the stages' ``Settings.from_config``: an unknown key is a :class:`ConfigError`
    naming the known ones (the schema rejects it in a validated config; this catches a section
    built by hand or a misspelt override).
    """
    names = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    values = dict(section or {})
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return values
