"""The ``report:`` section of the config as typed settings (:class:`ReportSettings`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cytoscreen.errors import ConfigError

THUMBNAIL_FORMATS = ("jpeg", "png")
THUMBNAIL_STRETCHES = ("plate", "image")


@dataclass(frozen=True)
class ReportSettings:
    """The ``report:`` section of the config (see the schema for each key)."""

    readout: str = "auto"
    dna_channel: str = "DNA"
    count_column: str = "Count_Nuclei"
    plate_wells: int | None = None
    gallery_max_qc: int = 12
    gallery_max_hits: int = 12
    thumbnail_px: int = 128
    thumbnail_format: str = "jpeg"
    thumbnail_stretch: str = "plate"
    thumbnail_percentiles: tuple[float, float] = (0.5, 99.5)
    channel_colors: tuple[tuple[str, str], ...] = ()
    max_scatter_points: int = 5000
    max_map_points: int = 20000

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> ReportSettings:
        """Settings from a validated config's ``report`` section (missing keys keep defaults)."""
        from cytoscreen.config import settings_values

        section = settings_values(cls, "report", section)
        if "thumbnail_percentiles" in section:
            section["thumbnail_percentiles"] = tuple(
                float(v) for v in section["thumbnail_percentiles"]
            )
        if "channel_colors" in section:
            section["channel_colors"] = tuple(
                (str(k), str(v)) for k, v in dict(section["channel_colors"]).items()
            )
        settings = cls(**section)
        if settings.thumbnail_format not in THUMBNAIL_FORMATS:
            raise ConfigError(
                f"report.thumbnail_format: {settings.thumbnail_format!r} is not one of "
                f"{', '.join(THUMBNAIL_FORMATS)}"
            )
        if settings.thumbnail_stretch not in THUMBNAIL_STRETCHES:
            raise ConfigError(
                f"report.thumbnail_stretch: {settings.thumbnail_stretch!r} is not one of "
                f"{', '.join(THUMBNAIL_STRETCHES)}"
            )
        return settings

