"""Project exceptions.

Every error a user can cause derives from :class:`CytoscreenError` and carries the process exit
code that ``cytoscreen.cli`` returns for it.  Only the CLI catches them.
"""

from __future__ import annotations


class CytoscreenError(Exception):
    """Base of all cytoscreen errors; never raised itself."""

    exit_code: int = 1


class ConfigError(CytoscreenError):
    """Bad config, plates.tsv or platemap; unknown backbone, layout or method."""

    exit_code = 3


class InputDataError(CytoscreenError):
    """Bad input data: missing channel, duplicate site, empty plate, NaN features, too few controls."""

    exit_code = 4


class ModelError(CytoscreenError):
    """Weights missing or with a wrong checksum, checkpoint columns differ, no cellpose model."""

    exit_code = 5


class ComputeError(CytoscreenError):
    """Device settings that cannot run here, e.g. a GPU requested but absent."""

    exit_code = 6
