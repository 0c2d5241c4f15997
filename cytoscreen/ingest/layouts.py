"""File-name layouts: named regular expressions that turn a relative image path into keys.

A layout has named groups ``well`` (or ``row`` and ``col``), ``site``, and ``channel``; optional
``plate``, ``z`` and ``t``.  A ``row`` group holds letters (``A``-``P``, ``AA``-``AF`` for 1536-well
plates) or a one-based number (``r01`` is row A); ``col`` holds a one-based number.  A layout
without a ``channel`` group describes multi-channel TIFFs: each page of a file is one channel,
named through the config's channel mapping (``0: DNA``).  The special layout ``zarr`` reads a
Zarr array of shape (site, channel, y, x) with ``sites.csv`` and ``channels.csv`` beside it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cytoscreen import io
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
OME_ZARR_LAYOUT = "ome-zarr"  # OME-Zarr HCS plate store (cytoscreen/ingest/omezarr.py)
REQUIRED_GROUPS = ("site",)


def resolve_layout(name: str, user_layouts: Mapping[str, str] | None = None) -> re.Pattern[str] | str:
    """The compiled regex of a layout, or the string ``"zarr"`` / ``"ome-zarr"``; ConfigError for unknown names."""
    user_layouts = dict(user_layouts or {})
    if name in (ZARR_LAYOUT, OME_ZARR_LAYOUT):
        return name
    pattern = user_layouts.get(name, BUILTIN_LAYOUTS.get(name))
    if pattern is None:
        known = sorted(set(BUILTIN_LAYOUTS) | {ZARR_LAYOUT, OME_ZARR_LAYOUT} | set(user_layouts))
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


#: Largest plate format (1536 wells): rows A-AF, columns 1-48.
MAX_ROWS, MAX_COLS = io.PLATE_SHAPES[1536]


class GroupParseError(ValueError):
    """A layout group matched but its text is not a valid value; ``group`` names it."""

    def __init__(self, group: str, value: str, why: str):
        super().__init__(f"group `{group}` = {value!r}: {why}")
        self.group, self.value, self.why = group, value, why


def parse_row(token: str) -> int:
    """Zero-based row of a ``row`` group: letters (``A`` -> 0, ``AF`` -> 31) or a one-based number."""
    t = token.strip()
    if t.isdigit():
        r = int(t)
        if not 1 <= r <= MAX_ROWS:
            raise GroupParseError("row", token, f"row numbers run from 1 (row A) to {MAX_ROWS}")
        return r - 1
    if t.isalpha() and t.isascii() and len(t) <= 2:
        r = io.row_letters_to_index(t)
        if r < MAX_ROWS:
            return r
    raise GroupParseError("row", token, f"a row is a letter A-Z or AA-{io.row_index_to_letters(MAX_ROWS - 1)}, "
                          f"or a number from 1 to {MAX_ROWS}")


def parse_col(token: str) -> int:
    """One-based column of a ``col`` group (a number from 1 to 48)."""
    t = token.strip()
    if not t.isdigit() or not 1 <= int(t) <= MAX_COLS:
        raise GroupParseError("col", token, f"a column is a number from 1 to {MAX_COLS}")
    return int(t)


def parse_well(token: str) -> str:
    """A ``well`` group normalized to ``A01``."""
    try:
        well = io.normalize_well(token)
    except ValueError:
        raise GroupParseError("well", token, "a well is row letter(s) and a column number from 1, "
                              "such as A01 or A1") from None
    row, col = io.split_well(well)
    if row >= MAX_ROWS or col > MAX_COLS:
        raise GroupParseError("well", token, f"past the largest plate format (1536 wells: rows A-AF, "
                              f"columns 1-{MAX_COLS})")
    return well


def parse_int(group: str, token: str | None, default: int | None = None) -> int | None:
    """An integer group (``site``, ``z``, ``t``); ``default`` when the group did not take part."""
    if token is None or token == "":
        return default
    if not token.strip().isdigit():
        raise GroupParseError(group, token, "expected a whole number")
    return int(token)
