"""Ingest + QC throughput and peak memory on synthetic plates.

Draws a 96-well and a 384-well plate (4 sites x 3 channels, 512x512 uint16 by default), runs
`cytoscreen ingest` and `cytoscreen qc` on each as separate processes, then, in this process,
QC's measuring loop (`cytoscreen.qc.run_qc`) and a bare multi-threaded `tifffile.imread` loop over
the same files with the same number of threads (every core unless --threads), best of --repeat
alternating runs. Prints one JSON line per plate size: images/s of ingest+QC, peak RSS of each
stage, and `qc_vs_bare_read_ratio` (run_qc images/s over bare-read images/s; the process figures
`qc_s` and `qc_process_vs_bare_read_ratio` include interpreter start, imports and writing).
It also checks that QC flags exactly the synthetic truth's blurred and saturated sites.

    python benchmarks/ingest_qc.py [--image-px 512] [--sites 4] [--threads N] [--workdir DIR]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import tifffile
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure  # noqa: E402

from cytoscreen.synth import default_settings, synth_screen  # noqa: E402


def bare_read(paths: list[str], threads: int) -> float:
    """Seconds to decode every file with ``threads`` threads (nothing else done with the pixels)."""
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(tifffile.imread, paths, chunksize=16):
            pass
    return time.perf_counter() - t


def in_process_qc(images: pd.DataFrame, threads: int) -> tuple[pd.DataFrame, float]:
    from cytoscreen.qc import QCSettings, run_qc

    settings = QCSettings.from_config({"threads": threads})
    t = time.perf_counter()
    qc = run_qc(images, settings)
    return qc, time.perf_counter() - t


def truth_check(qc: pd.DataFrame, screen: Path) -> bool:
    """QC_blurry / QC_saturated equal the synthetic truth's blurred / saturated sites, nothing else flagged."""
    from cytoscreen import io

    truth = pd.read_csv(screen / "truth" / "SYN001.tsv", sep="\t")
    truth["well"] = truth["well"].map(io.normalize_well)
    m = qc.merge(truth, left_on=[io.WELL, io.SITE], right_on=["well", "site"], validate="1:1")
    return bool((m[io.QC_BLURRY] == m["blurred"]).all() and (m[io.QC_SATURATED] == m["saturated"]).all()
                and not m[[io.QC_EMPTY, io.QC_CONSTANT, io.QC_UNREADABLE]].any().any())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-px", type=int, default=512)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="reader threads; 0: every core")
    ap.add_argument("--repeat", type=int, default=3, help="alternating in-process runs, best kept")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    from cytoscreen.qc.measure import worker_count

    threads = worker_count(args.threads)
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
                                       "qc": {"threads": threads}}))
        ing = measure([exe, "-q", "ingest", "--config", str(cfg), "--plate", "SYN001",
                       "--out", str(screen / "images.parquet")])
        images = pd.read_parquet(screen / "images.parquet")
        paths = images["path"].tolist()
        bare_read(paths, threads)  # warm the page cache, so every run below reads from memory
        qc = measure([exe, "-q", "qc", str(screen / "images.parquet"), str(screen / "qc.parquet"),
                      "--config", str(cfg)])
        bare, inproc = [], []
        for _ in range(max(args.repeat, 1)):  # alternate, so load changes hit both alike
            bare.append(bare_read(paths, threads))
            qc_table, seconds = in_process_qc(images, threads)
            inproc.append(seconds)
        bare_s, qc_in_s = min(bare), min(inproc)
        n = len(paths)
        print(json.dumps({
            "benchmark": "ingest_qc", "wells": wells, "sites": args.sites, "channels": 3,
            "image_px": args.image_px, "images": n,
            "ingest_s": round(ing["seconds"], 2), "qc_s": round(qc["seconds"], 2),
            "images_per_s": round(n / (ing["seconds"] + qc["seconds"]), 1),
            "qc_images_per_s": round(n / qc["seconds"], 1),
            "qc_run_qc_s": round(qc_in_s, 2), "qc_run_qc_images_per_s": round(n / qc_in_s, 1),
            "bare_tifffile_images_per_s": round(n / bare_s, 1),
            "qc_vs_bare_read_ratio": round(bare_s / qc_in_s, 3),
            "qc_process_vs_bare_read_ratio": round(bare_s / qc["seconds"], 3),
            "flags_equal_truth": truth_check(qc_table, screen),
            "ingest_peak_rss_mb": round(ing["peak_rss_mb"]), "qc_peak_rss_mb": round(qc["peak_rss_mb"]),
            "qc_threads": threads, "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 1),
            "machine": platform.machine(),
        }), flush=True)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
