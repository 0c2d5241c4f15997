"""Synthetic high-content screen (demo data and test ground truth).

The library is :mod:`cytoscreen.synth.screen`; ``cytoscreen synth`` is :mod:`cytoscreen.synth.command`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CHANNELS",
    "CHANNEL_TOKENS",
    "MOA_CLASSES",
    "NEGCON",
    "POSCON",
    "POSCON_PHENOTYPE",
    "Phenotype",
    "SynthSettings",
    "default_settings",
    "draw_site",
    "plate_layout",
    "synth_screen",
    "treatments",
]


def __getattr__(name: str) -> Any:
    """Lazy re-exports of :mod:`cytoscreen.synth.screen`, so the CLI's parser build stays light."""
    if name in __all__:
        from cytoscreen.synth import screen

        return getattr(screen, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
