"""Typed ingest settings: the ``ingest:`` section plus ``channels:`` and ``layouts:``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class IngestSettings:
    """Settings of :func:`cytoscreen.ingest.ingest_plate`.

    ``channels`` maps file-name tokens (or page indices) to channel names, ``layouts`` holds the
    user's named regexes; the rest are the ``ingest:`` keys of ``config.schema.yaml``.  Build it
    with :meth:`from_config`, which takes schema defaults for every key the config does not set.
    """

    channels: Mapping[str, str]
    layouts: Mapping[str, str]
    extensions: tuple[str, ...]
    on_unmatched_files: str
    on_missing_wells: str
    on_unmapped_wells: str
    on_missing_channels: str
    on_mixed_bit_depth: str
    z_projection: str
    #: Channel names the config relies on: the values of ``channels:`` and ``features.channels``.
    required_channels: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> IngestSettings:
        """Settings from a whole config (``channels``, ``layouts`` and the ``ingest`` section)."""
        from cytoscreen.argparse_ import section_defaults
        from cytoscreen.config import settings_values

        section = settings_values(cls, "ingest", {**section_defaults("ingest"), **dict(config.get("ingest") or {})},
                                  exclude=("channels", "layouts", "required_channels"))
        section["extensions"] = tuple(section["extensions"])
        channels = {str(k): str(v) for k, v in (config.get("channels") or {}).items()}
        features = [str(c) for c in ((config.get("features") or {}).get("channels") or [])]
        return cls(
            channels=channels,
            required_channels=tuple(dict.fromkeys([*channels.values(), *features])),
            layouts={str(k): str(v) for k, v in (config.get("layouts") or {}).items()},
            **section,
        )
