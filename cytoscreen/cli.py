"""``cytoscreen <stage> ...``: the command-line interface and the only place that configures logging.

Each stage package has one ``command`` module with ``add_parser(subparsers)`` and ``run(args) -> int``
(argument helpers in :mod:`cytoscreen.argparse_`; no command imports this module); this module wires
them, maps project errors to exit codes and prints one ``error:`` line for them.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from cytoscreen import __version__
from cytoscreen.argparse_ import HelpFormatter
from cytoscreen.errors import CytoscreenError

logger = logging.getLogger("cytoscreen")

#: (command names, module whose ``add_parser(subparsers)`` registers them), in the help's order.
COMMANDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("synth",), "cytoscreen.synth.command"),
    (("ingest",), "cytoscreen.ingest.command"),
    (("qc",), "cytoscreen.qc.command"),
    (("backbones",), "cytoscreen.backbones.command"),
    (("features",), "cytoscreen.features.command"),
    (("segment",), "cytoscreen.segment.command"),
    (("profiles",), "cytoscreen.profiles.command"),
    (("novelty",), "cytoscreen.novelty.command"),
    (("dose",), "cytoscreen.dose.command"),
    (("moa", "evaluate"), "cytoscreen.moa.command"),
    (("report",), "cytoscreen.report.command"),
    (("export",), "cytoscreen.export.command"),
)


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _available_commands() -> list[tuple[tuple[str, ...], str]]:
    """The :data:`COMMANDS` entries whose module exists (finding one imports its package)."""
    return [(names, module) for names, module in COMMANDS if _found(module)]


def _command_word(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (the top-level options take no values)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``cytoscreen`` parser; with ``command``, only the module registering it is imported
    (so ``cytoscreen profiles ...`` does not import the other stages), else every command's."""
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
    chosen = [(n, m) for n, m in COMMANDS if command in n and _found(m)]
    for _names, module in chosen or _available_commands():
        importlib.import_module(module).add_parser(sub)
    return parser


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


#: Namespace attribute: modules a command imports before it runs (``parser.set_defaults``), with
#: the cyclic garbage collector off, as the command's own parser is (see :func:`_start_up`).
STARTUP_IMPORTS = "startup_imports"


def _start_up(argv: Sequence[str]) -> argparse.Namespace:
    """Build the parser, parse ``argv`` and import the command's :data:`STARTUP_IMPORTS`, with the
    cyclic garbage collector off; then freeze what they created.

    Importing pandas and pyarrow creates ~60,000 container objects (modules, classes, functions)
    that live as long as the process.  With the collector on, its ~250 collections during the
    imports and the full ones after them, which traverse all of those objects again, cost
    0.1-0.2 CPU-s of a `cytoscreen profiles` step's ~0.6 s start-up (``benchmarks/profiles.py``).
    Collection is on again when the command runs, and the objects alive by then are in the
    permanent generation (:func:`gc.freeze`), which collections skip; :func:`main` moves them back
    (:func:`gc.unfreeze`) when it returns to a caller that goes on in the same process.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        args = build_parser(_command_word(argv)).parse_args(argv)
        for module in getattr(args, STARTUP_IMPORTS, None) or ():
            importlib.import_module(module)
    finally:
        if enabled:
            gc.enable()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (see STYLE.md for the codes).

    Called without ``argv`` (the ``cytoscreen`` script, ``python -m cytoscreen.cli``), the objects
    frozen after the start-up stay frozen to the end: the interpreter's shutdown would otherwise
    traverse them all once more in its final collection (~0.14 CPU-s of a profiles step).
    """
    entry_point = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    frozen = gc.get_freeze_count()
    try:
        args = _start_up(argv)
        gc.freeze()
        configure_logging(args.verbose, args.quiet)
        return _run(args)
    finally:
        if not frozen and not entry_point:
            gc.unfreeze()


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; map project errors, interrupts and bugs to exit codes."""
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
