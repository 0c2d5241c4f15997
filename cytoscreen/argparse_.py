"""Argument helpers shared by every ``command`` module, below :mod:`cytoscreen.cli`.

As augur's ``argparse_.py``: commands import from here, never from ``cytoscreen.cli``, so the CLI
imports the commands and nothing imports the CLI.

One mechanism lets a flag override a config value: :func:`add_override` adds a flag whose shown
default is the schema default of ``<section>.<key>`` and whose action (:class:`ConfigOverride`,
:class:`ConfigOverrideBool`) records that the flag was given; :func:`load_config_with_overrides`
then applies exactly the given flags on top of ``--config`` (flag > config > schema default).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

#: Namespace attribute holding ``{config key: value}`` of the override flags given.
OVERRIDES_DEST = "config_overrides"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (and choices, via argparse) and keeps docstring line breaks."""


def add_command(subparsers, name: str, module_doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """Add a sub-command whose help is the first line of ``module_doc`` and description all of it."""
    doc = (module_doc or "").strip()
    kwargs.setdefault("formatter_class", HelpFormatter)
    return subparsers.add_parser(
        name, help=doc.splitlines()[0] if doc else None, description=doc, **kwargs
    )


def _record(namespace: argparse.Namespace, dest: str, value: Any) -> None:
    given = dict(getattr(namespace, OVERRIDES_DEST, None) or {})
    given[dest] = value
    setattr(namespace, OVERRIDES_DEST, given)


class ConfigOverride(argparse.Action):
    """A flag that overrides a config key: stores the value and records that the flag was given,
    so only flags on the command line override the config (their shown defaults come from the schema).

    ``null="none"`` makes that word mean the config's null (e.g. ``--spherize none``).
    """

    def __init__(self, option_strings, dest, null: str | None = None, **kwargs):
        self.null = null
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if self.null is not None and values == self.null:
            values = None
        setattr(namespace, self.dest, values)
        _record(namespace, self.dest, values)


class ConfigOverrideBool(argparse.BooleanOptionalAction):
    """``--flag/--no-flag`` overriding a boolean config key (see :class:`ConfigOverride`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _record(namespace, self.dest, getattr(namespace, self.dest))


def section_schema(section: str) -> dict[str, Any]:
    """The schema entries of a config section's keys (defaults and enums for CLI flags)."""
    from cytoscreen.config import load_schema

    return load_schema("config")["properties"][section].get("properties", {})


def section_defaults(section: str) -> dict[str, Any]:
    """``{key: schema default}`` of a config section."""
    return {k: v.get("default") for k, v in section_schema(section).items()}


def add_override(
    parser: argparse.ArgumentParser,
    flag: str,
    key: str,
    help: str,
    *,
    schema: Mapping[str, Any],
    section: str | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """Add ``flag`` overriding config key ``key`` (dest = key, default = the schema default).

    ``schema`` is :func:`section_schema` of the section; the schema ``enum`` gives ``choices``
    unless ``choices`` is passed; ``type=bool`` makes a ``--flag/--no-flag`` pair.  With
    ``section``, the help ends with ``(config: <section>.<key>)``.
    """
    prop = schema.get(key, {})
    kwargs.setdefault("default", prop.get("default"))
    if "choices" not in kwargs and prop.get("enum") and kwargs.get("nargs") is None:
        enum = [v for v in prop["enum"] if v is not None]
        if enum:
            kwargs["choices"] = enum
    if section:
        help = f"{help} (config: {section}.{key})"
    parser.set_defaults(**{OVERRIDES_DEST: None})
    if kwargs.get("type") is bool:
        kwargs.pop("type")
        return parser.add_argument(flag, dest=key, action=ConfigOverrideBool, help=help, **kwargs)
    return parser.add_argument(flag, dest=key, action=ConfigOverride, help=help, **kwargs)


def given_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{config key: value}`` of the override flags given on the command line."""
    return dict(getattr(args, OVERRIDES_DEST, None) or {})


def load_config_with_overrides(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The validated config of ``args.config`` with the given override flags applied to ``section``."""
    from cytoscreen.config import load_config

    overrides = given_overrides(args)
    return load_config(
        getattr(args, "config", None), overrides={section: overrides} if overrides else None
    )
