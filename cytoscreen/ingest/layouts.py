"""File-name layouts: named regular expressions that turn a relative image path into keys.

A layout has named groups ``well`` (or ``row`` and ``col``), ``site``, and ``channel``; optional
``plate``, ``z`` and ``t``.  A layout without a ``channel`` group describes multi-channel TIFFs: each
page of a file is one channel, named through the config's channel mapping (``0: DNA``).  The
special layout ``zarr`` reads a Zarr array of shape (site, channel, y, x) with ``sites.csv`` and
``channels.csv`` beside it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cytoscreen.errors import ConfigError

_EXT = r"\.(?i:tiff?|png)$"

#: Built-in layouts (name -> regex matched with ``re.search`` against the path relative to the
#: plate's image folder, with ``/`` separators).
BUILTIN_LAYOUTS: dict[str, str] = {
    # MetaXpress / ImageXpress: <plate>_<well>_s<site>_w<channel>[<GUID>].tif; site optional
    "imagexpress": (
        r"(?:^|/)(?:(?P<plate>[^/]*?)_)?(?P<well>[A-Z]{1,2}\d{1,3})(?:_s(?P<site>\d+))?"
        r"_(?P<channel>w\d+)[^/]*?" + _EXT
    ),
    # Opera Phenix / Operetta (Harmony export): r02c03f01p01-ch1sk1fk1fl1.tiff
    "phenix": (
        r"(?:^|/)r(?P<row>\d{1,2})c(?P<col>\d{1,2})f(?P<site>\d{1,3})p(?P<z>\d{1,3})"
        r"-(?P<channel>ch\d+)sk(?P<t>\d+)fk\d+fl\d+" + _EXT
    ),
    # CellProfiler examples: <plate>_<well>f<site>d<channel>.tif
    "cellprofiler": (
        r"(?:^|/)(?:(?P<plate>[^/]*?)_)?(?P<well>[A-Za-z]{1,2}\d{1,3})f(?P<site>\d+)"
        r"d(?P<channel>\d+)" + _EXT
    ),
}
BUILTIN_LAYOUTS["operetta"] = BUILTIN_LAYOUTS["phenix"]
ZARR_LAYOUT = "zarr"
REQUIRED_GROUPS = ("site",)


def resolve_layout(name: str, user_layouts: Mapping[str, str] | None = None) -> re.Pattern[str] | str:
    """The compiled regex of a layout, or the string ``"zarr"``; ConfigError for unknown names."""
    user_layouts = dict(user_layouts or {})
    if name == ZARR_LAYOUT:
        return ZARR_LAYOUT
    pattern = user_layouts.get(name, BUILTIN_LAYOUTS.get(name))
    if pattern is None:
        known = sorted(set(BUILTIN_LAYOUTS) | {ZARR_LAYOUT} | set(user_layouts))
        raise ConfigError(f"unknown layout {name!r}; known layouts: {', '.join(known)} (add your own "
                          f"regex under `layouts:` in the config)")
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"layout {name!r}: invalid regex ({err})") from err
    groups = set(regex.groupindex)
    if "well" not in groups and not {"row", "col"} <= groups:
        raise ConfigError(f"layout {name!r}: the regex needs a named group `well` or groups `row` and `col`")
    return regex
