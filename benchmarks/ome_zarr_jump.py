"""Convert the JUMP mini Zarr (``zarr`` layout) to OME-Zarr HCS plates and read them back.

The JUMP mini store (``shared/data/jump_mini``: two 5-channel 384 x 384 sites of two JUMP plates,
one Zarr v3 array with sites.csv/channels.csv) is indexed with the ``zarr`` layout, written as one
OME-Zarr plate per source plate in NGFF 0.4 and 0.5, indexed again with ``layout: ome-zarr`` and
every plane compared with the original.  Prints one JSON line per NGFF version: sites, planes,
identical planes, write and index seconds.

    PYTHONPATH=. .venv/bin/python benchmarks/ome_zarr_jump.py [--data ../shared/data/jump_mini] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.ingest.index import index_plate
from cytoscreen.ingest.omezarr import index_ome_zarr, write_plate

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "jump_mini"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--out", type=Path, default=None, help="output folder (a temporary one by default)")
    args = ap.parse_args()
    src = args.data / "jump_rab30_mini"
    sites_csv = pd.read_csv(src / "sites.csv")
    out = args.out or Path(tempfile.mkdtemp(prefix="jump_omezarr_"))
    for version in ("0.4", "0.5"):
        rows = []
        t_write = t_index = 0.0
        n_same = n_planes = 0
        for plate in sorted(sites_csv["Plate"].astype(str).unique()):
            orig = index_plate(src / "images.zarr", plate=plate, layout="zarr")
            channels = list(dict.fromkeys(orig[io.CHANNEL]))
            fields = []
            for (well, site), grp in orig.groupby([io.WELL, io.SITE], sort=True):
                grp = grp.set_index(io.CHANNEL).loc[channels]
                planes = [io.read_image(p, f) for p, f in zip(grp[io.PATH], grp[io.FRAME], strict=True)]
                fields.append((well, int(site), np.stack(planes)))
            store = out / f"v{version}" / f"{plate}.zarr"
            t = time.perf_counter()
            write_plate(store, fields, channels=channels, version=version, name=plate)
            t_write += time.perf_counter() - t
            t = time.perf_counter()
            back = index_ome_zarr(store, plate=plate)
            t_index += time.perf_counter() - t
            # OME-Zarr sites are 1, 2, ... per well in field order (JUMP numbers some sites from 0)
            by_field = {}
            for well, _site, stack in sorted(fields, key=lambda f: (f[0], f[1])):
                by_field[(well, sum(1 for w, _ in by_field if w == well) + 1)] = stack
            for rec in back.to_dict("records"):
                stack = by_field[(rec[io.WELL], rec[io.SITE])]
                plane = io.read_image(rec[io.PATH], rec[io.FRAME])
                n_planes += 1
                n_same += bool(np.array_equal(plane, stack[channels.index(rec[io.CHANNEL])]))
            rows.append({"plate": plate, "wells": back[io.WELL].nunique(), "channels": channels})
        print(json.dumps({"ngff": version, "plates": rows, "planes": n_planes, "identical_planes": n_same,
                          "write_s": round(t_write, 3), "index_s": round(t_index, 3), "out": str(out)}))


if __name__ == "__main__":
    main()
