"""Features stage throughput and memory against a bare backbone forward loop, in one run.

Writes five-channel 16-bit sites of 1080 x 1080 pixels (the JUMP Cell Painting size) as
uncompressed TIFF files into a temporary folder, then measures, each in its own subprocess so that
peak memory is per phase:

stage
    ``cytoscreen.features.embed.extract_features`` end to end on those files: site table, backbone
    set-up, negcon reference pass, DataLoader reading + preprocessing, embedding, shard merge and
    the atomic Parquet write.
bare
    the same backbone (channels-last, inference mode, same threads) on random tensors of the same
    batch shapes (batch_size x 5 channels images of the input size), the same number of sites.

One JSON line per site count goes to stdout: sites/s of both, their ratio (goal >= 0.8), the ratio
for the predict loop alone (without the one-off set-up and reference pass), and peak RSS (the main
process, and the sampled sum over the process tree including DataLoader workers).  Each phase runs
``--repeats`` times, alternating with the other, and the fastest run of each is reported (a
shared machine's load then hits both alike); every run's time is listed too.  Several site
counts (``--sites 16,32``) show whether memory grows with the plate or stays bounded by the batch.

    python benchmarks/features.py --sites 16,32 --batch-size 8 --num-workers 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


def make_sites(folder: Path, n_sites: int, px: int, seed: int = 0) -> tuple[Path, Path]:
    """Write n_sites x 5 uint16 TIFFs (smooth blobs + noise) and their images/qc tables."""
    import numpy as np
    import pandas as pd
    import tifffile
    from scipy.ndimage import zoom

    from cytoscreen import io

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, qc_rows = [], []
    for s in range(n_sites):
        well = io.well_from_row_col(s // 12 % 8, s % 12 + 1)
        site = s // 96 + 1
        pert_type = "negcon" if (s % 12) in (0, 11) else "trt"  # two negcon columns, as on a plate
        r, c = io.split_well(well)
        for ch in CHANNELS:
            low = rng.gamma(2.0, 1.0, (px // 24 + 1, px // 24 + 1)).astype(np.float32)
            img = zoom(low, 24, order=1)[:px, :px] * 900 + 200
            img += rng.normal(0, 30, img.shape).astype(np.float32)
            path = folder / f"BENCH_{well}_s{site}_{ch}.tif"
            tifffile.imwrite(path, np.clip(img, 0, 65535).astype(np.uint16))
            rows.append({io.PLATE: "BENCH", io.WELL: well, io.ROW: r, io.COL: c, io.SITE: site,
                         io.CHANNEL: ch, io.PATH: str(path), io.FRAME: -1, io.BATCH: "b1",
                         io.PERTURBATION: "DMSO" if pert_type == "negcon" else f"c{s}",
                         io.PERT_TYPE: pert_type})
        qc_rows.append({io.PLATE: "BENCH", io.WELL: well, io.ROW: r, io.COL: c, io.SITE: site,
                        "QC_unreadable": False, "QC_blurry": False})
    images = io.write_parquet(pd.DataFrame(rows), folder / "images.parquet")
    qc = io.write_parquet(pd.DataFrame(qc_rows), folder / "qc.parquet")
    return images, qc


class TreeRss:
    """Samples the summed RSS of this process and its children (DataLoader workers) every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def phase_stage(args: argparse.Namespace) -> dict:
    import pandas as pd
    import torch

    from cytoscreen.features.embed import FeatureSettings, extract_features

    torch.set_num_threads(args.threads)
    settings = FeatureSettings(backbone=args.backbone, batch_size=args.batch_size,
                               num_workers=args.num_workers, threads=args.threads,
                               accelerator=args.accelerator)
    images = pd.read_parquet(args.images)
    qc = pd.read_parquet(args.qc)
    with TreeRss() as tree:
        t0 = time.perf_counter()
        res = extract_features(images, qc, out=Path(args.images).parent / "sites.parquet",
                               settings=settings, progress=False)
        wall = time.perf_counter() - t0
    return {"stage_s": wall, "predict_s": res.predict_s, "n_sites": res.n_sites,
            "peak_rss_mb": _peak_rss_mb(), "peak_tree_rss_mb": tree.peak / 2**20}


def phase_bare(args: argparse.Namespace) -> dict:
    import torch

    from cytoscreen.backbones import create_backbone

    torch.set_num_threads(args.threads)
    gpu = args.accelerator == "gpu" or (args.accelerator == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if gpu else "cpu")
    model = create_backbone(args.backbone).to(device).to(memory_format=torch.channels_last)
    size = model.spec.input_px
    n, b, c = args.n_sites, args.batch_size, len(CHANNELS)
    gen = torch.Generator().manual_seed(0)
    with TreeRss() as tree:
        t0 = time.perf_counter()
        done = 0
        with torch.inference_mode(), torch.autocast(device.type, enabled=gpu):
            while done < n:
                k = min(b, n - done)
                x = torch.rand(k * c, 3, size, size, generator=gen).to(device)
                x = x.contiguous(memory_format=torch.channels_last)
                model(x).float().cpu()
                done += k
        if gpu:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return {"bare_s": wall, "peak_rss_mb": _peak_rss_mb(), "peak_tree_rss_mb": tree.peak / 2**20}


def _child(phase: str, args: argparse.Namespace, images: Path, qc: Path, n_sites: int) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--images", str(images), "--qc", str(qc),
           "--n-sites", str(n_sites), "--batch-size", str(args.batch_size),
           "--num-workers", str(args.num_workers), "--threads", str(args.threads),
           "--backbone", args.backbone, "--accelerator", args.accelerator]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-4000:])
        raise SystemExit(f"{phase} phase failed with exit code {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="16", help="comma-separated site counts, one JSON line each")
    parser.add_argument("--px", type=int, default=1080, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both phases)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu", "auto"))
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each phase, alternating; the fastest of each is reported")
    parser.add_argument("--workdir", default=None, help="folder for the TIFFs (default: a temp folder)")
    parser.add_argument("--phase", choices=("stage", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--qc", help=argparse.SUPPRESS)
    parser.add_argument("--n-sites", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase:  # inside a child process
        result = phase_stage(args) if args.phase == "stage" else phase_bare(args)
        print(json.dumps(result))
        return 0

    import torch

    counts = [int(v) for v in args.sites.split(",") if v]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in counts:
            t0 = time.perf_counter()
            images, qc = make_sites(Path(tmp) / f"sites{n}", n, args.px)
            gen_s = time.perf_counter() - t0
            stages, bares = [], []
            for _ in range(args.repeats):  # alternate, so load changes hit both phases alike
                bares.append(_child("bare", args, images, qc, n))
                stages.append(_child("stage", args, images, qc, n))
            stage = min(stages, key=lambda r: r["stage_s"])
            bare = min(bares, key=lambda r: r["bare_s"])
            stage_rate = n / stage["stage_s"]
            predict_rate = n / min(r["predict_s"] for r in stages)
            bare_rate = n / bare["bare_s"]
            print(json.dumps({
                "benchmark": "features",
                "sites": n,
                "channels": len(CHANNELS),
                "px": args.px,
                "dtype": "uint16",
                "backbone": args.backbone,
                "batch_size": args.batch_size,
                "num_workers": args.num_workers,
                "threads": args.threads,
                "accelerator": args.accelerator,
                "stage_s": round(stage["stage_s"], 2),
                "stage_sites_per_s": round(stage_rate, 3),
                "predict_sites_per_s": round(predict_rate, 3),
                "bare_sites_per_s": round(bare_rate, 3),
                "ratio": round(stage_rate / bare_rate, 3),
                "ratio_predict": round(predict_rate / bare_rate, 3),
                "repeats": args.repeats,
                "stage_runs_s": [round(r["stage_s"], 2) for r in stages],
                "bare_runs_s": [round(r["bare_s"], 2) for r in bares],
                "stage_peak_rss_mb": round(max(r["peak_rss_mb"] for r in stages), 1),
                "stage_peak_tree_rss_mb": round(max(r["peak_tree_rss_mb"] for r in stages), 1),
                "bare_peak_rss_mb": round(max(r["peak_rss_mb"] for r in bares), 1),
                "bare_peak_tree_rss_mb": round(max(r["peak_tree_rss_mb"] for r in bares), 1),
                "data_gen_s": round(gen_s, 1),
                "torch": torch.__version__,
                "cpu_count": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "machine": platform.machine(),
            }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
