"""Ingest + QC throughput and peak memory on synthetic plates.

Draws a 96-well and a 384-well plate (4 sites x 3 channels, 512x512 uint16 by default), runs
`cytoscreen ingest` and `cytoscreen qc` on each as separate processes, and a bare tifffile read
loop over the same files. Prints one JSON line per plate size:
images/s of ingest+QC, peak RSS of each stage, and the ratio to the bare read loop.

    python benchmarks/ingest_qc.py [--image-px 512] [--sites 4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import tifffile
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure  # noqa: E402

from cytoscreen.synth import default_settings, synth_screen  # noqa: E402


def bare_read(paths: list[str]) -> float:
    t = time.perf_counter()
    for p in paths:
        tifffile.imread(p)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-px", type=int, default=512)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cytoscreen-bench-"))
    exe = str(Path(sys.executable).parent / "cytoscreen")
    for wells in (96, 384):
        screen = work / f"w{wells}"
        if not (screen / "plates.tsv").exists():
            synth_screen(screen, plates=1, wells=wells, sites=args.sites, seed=1,
                         settings=default_settings(args.image_px))
        cfg = screen / "config.yaml"
        cfg.write_text(yaml.safe_dump({"plates": str(screen / "plates.tsv"),
                                       "channels": {"w1": "DNA", "w2": "Tubulin", "w3": "Actin"},
                                       "qc": {"threads": args.threads}}))
        ing = measure([exe, "-q", "ingest", "--config", str(cfg), "--plate", "SYN001",
                       "--out", str(screen / "images.parquet")])
        qc = measure([exe, "-q", "qc", str(screen / "images.parquet"), str(screen / "qc.parquet"),
                      "--config", str(cfg)])
        paths = pd.read_parquet(screen / "images.parquet")["path"].tolist()
        bare_read(paths[:50])  # warm the page cache like the stages saw it
        bare = bare_read(paths)
        n = len(paths)
        print(json.dumps({
            "benchmark": "ingest_qc", "wells": wells, "sites": args.sites, "channels": 3,
            "image_px": args.image_px, "images": n,
            "ingest_s": round(ing["seconds"], 2), "qc_s": round(qc["seconds"], 2),
            "images_per_s": round(n / (ing["seconds"] + qc["seconds"]), 1),
            "qc_images_per_s": round(n / qc["seconds"], 1),
            "bare_tifffile_images_per_s": round(n / bare, 1),
            "qc_vs_bare_read_ratio": round((n / qc["seconds"]) / (n / bare), 3),
            "ingest_peak_rss_mb": round(ing["peak_rss_mb"]), "qc_peak_rss_mb": round(qc["peak_rss_mb"]),
            "qc_threads": args.threads, "cpus": os.cpu_count(), "machine": platform.machine(),
        }), flush=True)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
