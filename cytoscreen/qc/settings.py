"""Typed QC settings: the ``qc:`` section of the config, defaults from the schema."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class QCSettings:
    """Settings of :func:`cytoscreen.qc.run_qc`; the ``qc:`` keys of ``config.schema.yaml``.

    Build it with :meth:`from_config`, which fills every key the section does not set with the
    schema's default (the single source of defaults).
    """

    batch_size: int
    threads: int
    blur_z: float
    saturation_fraction: float
    saturation_z: float
    empty_z: float
    min_sites_for_outliers: int

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None = None) -> QCSettings:
        """Settings from a ``qc:`` section (validated or not); unknown keys are a ConfigError."""
        from cytoscreen.argparse_ import section_defaults
        from cytoscreen.config import settings_values

        return cls(**settings_values(cls, "qc", {**section_defaults("qc"), **dict(section or {})}))
