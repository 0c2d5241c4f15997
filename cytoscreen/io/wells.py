"""Well names: ``A01``-style normalization, row letters to indices and back, plate shapes."""

from __future__ import annotations

import re
from typing import Any

_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")


def row_letters_to_index(letters: str) -> int:
    """``A`` -> 0, ``P`` -> 15, ``AF`` -> 31 (1536-well plates)."""
    letters = letters.upper()
    idx = 0
    for ch in letters:
        idx = idx * 26 + (ord(ch) - ord("A") + 1)
    return idx - 1


def row_index_to_letters(index: int) -> str:
    """0 -> ``A``, 25 -> ``Z``, 26 -> ``AA``."""
    out = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(ord("A") + rem) + out
    return out


def normalize_well(name: Any) -> str:
    """Normalize a well name to letter(s) + two-digit column: ``a1`` / ``A1`` / ``A001`` -> ``A01``.

    Raises
    ------
    ValueError
        If ``name`` is not a well name.
    """
    m = _WELL_RE.match(str(name))
    if not m or int(m.group(2)) == 0:
        raise ValueError(f"not a well name: {name!r}")
    return f"{m.group(1).upper()}{int(m.group(2)):02d}"


def well_from_row_col(row: int, col: int) -> str:
    """Zero-based row and one-based column -> well name (``0, 1`` -> ``A01``)."""
    return f"{row_index_to_letters(row)}{col:02d}"


def split_well(well: str) -> tuple[int, int]:
    """``A01`` -> (0, 1): zero-based row, one-based column."""
    m = _WELL_RE.match(well)
    if not m:
        raise ValueError(f"not a well name: {well!r}")
    return row_letters_to_index(m.group(1)), int(m.group(2))


PLATE_SHAPES = {6: (2, 3), 12: (3, 4), 24: (4, 6), 48: (6, 8), 96: (8, 12), 384: (16, 24), 1536: (32, 48)}
