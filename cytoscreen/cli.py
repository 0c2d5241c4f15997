"""``cytoscreen <stage> ...``: the command-line interface and the only place that configures logging.

Each stage has a ``command`` module with ``add_parser(subparsers)`` and ``run(args) -> int``; this
module wires them, maps project errors to exit codes and prints one ``error:`` line for them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from cytoscreen import __version__
from cytoscreen.errors import CytoscreenError

logger = logging.getLogger("cytoscreen")

#: (command name, module with add_parser/run), in the order the help lists them.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("synth", "cytoscreen.synth_command"),
    ("ingest", "cytoscreen.ingest.command"),
    ("qc", "cytoscreen.qc_command"),
    ("backbones", "cytoscreen.features.backbones_command"),
    ("features", "cytoscreen.features.command"),
    ("segment", "cytoscreen.segment.command"),
    ("profiles", "cytoscreen.profiles.command"),
    ("novelty", "cytoscreen.novelty.command"),
    ("moa", "cytoscreen.moa.command"),
    ("evaluate", "cytoscreen.moa.evaluate_command"),
    ("report", "cytoscreen.report.command"),
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps docstring line breaks."""


def _available_commands() -> list[tuple[str, str]]:
    out = []
    for name, module in COMMANDS:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out.append((name, module))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cytoscreen",
        description="High-content screening: plate images -> QC -> CNN features -> profiles -> "
        "novelty hits -> MoA clusters -> reports.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cytoscreen {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for _name, module in _available_commands():
        mod = importlib.import_module(module)
        mod.add_parser(sub)
    return parser


def add_command(subparsers, name: str, module_doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """Add a sub-command whose help is the first line of ``module_doc`` and description all of it."""
    doc = (module_doc or "").strip()
    return subparsers.add_parser(
        name,
        help=doc.splitlines()[0] if doc else None,
        description=doc,
        formatter_class=HelpFormatter,
        **kwargs,
    )


OVERRIDES_DEST = "config_overrides"


class ConfigOverride(argparse.Action):
    """A flag that overrides a config key: stores the value and records that the flag was given,
    so only flags on the command line override the config (their shown defaults come from the schema)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        given = dict(getattr(namespace, OVERRIDES_DEST, None) or {})
        given[self.dest] = values
        setattr(namespace, OVERRIDES_DEST, given)


def section_schema(section: str) -> dict:
    """The schema entries of a config section's keys (defaults and enums for CLI flags)."""
    from cytoscreen.config import load_schema

    return load_schema("config")["properties"][section].get("properties", {})


def load_config_with_overrides(args: argparse.Namespace, section: str) -> dict:
    """The validated config of ``args.config`` with the given :class:`ConfigOverride` flags applied."""
    from cytoscreen.config import load_config

    overrides = dict(getattr(args, OVERRIDES_DEST, None) or {})
    return load_config(args.config, overrides={section: overrides} if overrides else None)


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    # third-party chatter stays at warning unless -vv; a filter rather than logger levels, because
    # some libraries (pytorch_lightning) reset their own logger's level when they are imported
    if verbose < 2:
        handler.addFilter(_QuietThirdParty())


NOISY_LOGGERS = ("matplotlib", "numba", "PIL", "fsspec", "asyncio", "urllib3", "pytorch_lightning",
                 "lightning_fabric", "lightning", "cellpose", "umap", "pynndescent")


class _QuietThirdParty(logging.Filter):
    """Drop records below WARNING from chatty third-party libraries."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(record.name == n or record.name.startswith(n + ".") for n in NOISY_LOGGERS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (see STYLE.md for the codes)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        rc = args.func(args)
        return int(rc or 0)
    except CytoscreenError as err:
        if os.environ.get("CYTOSCREEN_DEBUG"):
            traceback.print_exc()
        logger.error("error: %s", err)
        return err.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception:  # a bug: traceback plus a request to report it
        traceback.print_exc()
        logger.error(
            "error: an unexpected error occurred in cytoscreen %s; this is a bug, please report it "
            "with the traceback above",
            __version__,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
