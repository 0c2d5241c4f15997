"""Segment stage: Cellpose 3 speed on 1080 x 1080 two-channel sites, and count accuracy.

Speed: draws synthetic 1080 x 1080 sites (DNA + Tubulin) with 20x-like objects (nuclei ~28 px,
cells ~60 px across, ~250 cells per site) and times cytoscreen's per-site path (``Segmenter``:
nuclei on DNA, then cells on Tubulin + DNA, at those diameters, plus the readouts) after one
warm-up site.  The network cost does not depend on the weights, so without ``--model`` random-weight
Cellpose 3 models are used, with the built-in models' training diameters (nuclei 17 px, cyto3
30 px); their mask step is cheaper than a trained model's, which finds every cell, so give
``--model`` for exact figures.

Accuracy (only with a trained model): segments the nuclei of a synthetic plate (96 wells x 1 site,
``--accuracy-px`` pixels) and compares the counts with the true counts written by
``cytoscreen synth --masks``: Spearman rho, mean absolute error, median relative error.  The model
is ``--model`` (e.g. Cellpose's nucleitorch_0 or cyto3 file), or one fine-tuned here from random
weights for ``--finetune-epochs`` on the plate's even wells (evaluated on the odd wells).  On a
GPU a 100-epoch fine-tune takes about a minute; on 2 CPU cores it takes hours.

Prints one JSON line per measurement.

    python benchmarks/segment.py [--sites 2] [--threads 2] [--model FILE] [--finetune-epochs 0]
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
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.segment import model as sm
from cytoscreen.segment import segment as sg
from cytoscreen.synth import Phenotype, default_settings, draw_site, synth_screen


def _device(name: str):
    return sm.resolve_device(name)


def random_model(path: Path, *, diam_mean: float = 17.0, seed: int = 0) -> Path:
    import torch
    from cellpose import models

    torch.manual_seed(seed)
    models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=diam_mean).net.save_model(str(path))
    return path


def speed(args, work: Path, device) -> dict:
    if args.model:
        nuc_path = cell_path = Path(args.model)
    else:  # random weights with the built-in models' training diameters (nuclei 17 px, cyto3 30 px)
        nuc_path = random_model(work / "random_nuclei.pth", diam_mean=17.0)
        cell_path = random_model(work / "random_cyto.pth", diam_mean=30.0)
    nuc_model = sm.load_model(sm.resolve_model(str(nuc_path)), device=device)
    cell_model = sm.load_model(sm.resolve_model(str(cell_path)), device=device)
    seg = sg.Segmenter(nuclei_model=nuc_model, cell_model=cell_model, nuclei_diameter_px=args.nuclei_diameter_px,
                       cell_diameter_px=args.cell_diameter_px, batch_size=args.batch_size)
    # a 20x-like field: nuclei ~28 px and cells ~60 px across, ~250 cells per 1080 px site
    scale = args.image_px / 192.0
    settings = default_settings(args.image_px, nucleus_radius_px=args.nuclei_diameter_px / 2,
                                cell_radius_px=args.cell_diameter_px / 2,
                                cells_per_site=args.cells_per_site / scale**2)
    sites = [draw_site(np.random.default_rng([5, i]), Phenotype(), settings)[0] for i in range(args.sites + 1)]
    seg.cells(sites[0][1], sites[0][0])  # warm-up (allocations, numba/mkldnn first calls)
    t_nuc = t_cell = 0.0
    counts = []
    for stack in sites[1:]:
        t = time.perf_counter()
        nuclei = seg.nuclei(stack[0])
        t_nuc += time.perf_counter() - t
        t = time.perf_counter()
        cells = seg.cells(stack[1], stack[0])
        t_cell += time.perf_counter() - t
        counts.append(sg.readouts(nuclei, cells)[io.COUNT_NUCLEI])
    n = len(sites) - 1
    return {
        "benchmark": "segment_speed", "image_px": args.image_px, "channels": 2, "sites": n,
        "sites_per_s": round(n / (t_nuc + t_cell), 4), "s_per_site": round((t_nuc + t_cell) / n, 2),
        "nuclei_s_per_site": round(t_nuc / n, 2), "cells_s_per_site": round(t_cell / n, 2),
        "model": "random weights" if not args.model else str(nuc_path),
        "nuclei_diameter_px": args.nuclei_diameter_px, "cell_diameter_px": args.cell_diameter_px,
        "nuclei_found_per_site": float(np.mean(counts)),
        "device": str(device), "threads": args.threads, "cellpose": version("cellpose"),
        "torch": version("torch"), "cpus": os.cpu_count(), "machine": platform.machine(),
    }


def _plate(work: Path, image_px: int) -> tuple[list[np.ndarray], list[np.ndarray], pd.DataFrame]:
    import tifffile

    screen = work / "accuracy_screen"
    if not (screen / "plates.tsv").exists():
        synth_screen(screen, plates=1, wells=96, sites=1, seed=11, settings=default_settings(image_px),
                     masks=True)
    truth = pd.read_csv(screen / "truth" / "SYN001.tsv", sep="\t")
    images, masks = [], []
    for rec in truth.itertuples():
        stem = f"SYN001_{rec.well}_s{rec.site}"
        images.append(tifffile.imread(screen / "images" / "SYN001" / f"{stem}_w1.tif"))
        masks.append(tifffile.imread(screen / "truth" / "masks" / "SYN001" / f"{stem}_nuclei.tif"))
    return images, masks, truth


def finetune(images, masks, *, epochs: int, device, work: Path) -> tuple[Path, float]:
    import torch
    from cellpose import models, train

    torch.manual_seed(0)
    net = models.CellposeModel(device=device, gpu=device.type == "cuda", pretrained_model=False,
                               diam_mean=17.0, mkldnn=False).net
    t = time.perf_counter()
    path, _, _ = train.train_seg(
        net, train_data=[im.astype(np.float32) for im in images], train_labels=list(masks), channels=[0, 0],
        normalize=True, n_epochs=epochs, learning_rate=0.01, weight_decay=1e-4, batch_size=8,
        bsize=min(224, images[0].shape[0]), save_path=str(work), model_name="finetuned_nuclei",
        min_train_masks=1, rescale=False,
    )
    return Path(path), time.perf_counter() - t


def accuracy(args, work: Path, device) -> dict | None:
    from scipy.stats import spearmanr

    if not args.model and args.finetune_epochs <= 0:
        return None
    images, masks, truth = _plate(work, args.accuracy_px)
    train_s = None
    if args.model:
        model_path, test = Path(args.model), np.arange(len(images))
    else:
        even = np.arange(0, len(images), 2)
        model_path, train_s = finetune([images[i] for i in even], [masks[i] for i in even],
                                       epochs=args.finetune_epochs, device=device, work=work)
        test = np.arange(1, len(images), 2)
    model = sm.load_model(sm.resolve_model(str(model_path)), device=device)
    seg = sg.Segmenter(nuclei_model=model)
    # the plate's diameter as the workflow estimates it (two passes on the first 8 test sites)
    first = [seg.nuclei(images[i], diameter=sm.model_diameter(model)) for i in test[:8]]
    seg = sg.Segmenter(nuclei_model=model,
                       nuclei_diameter_px=sg.estimate_diameter(first, fallback=sm.model_diameter(model)))
    t = time.perf_counter()
    pred = np.array([sg.object_stats(seg.nuclei(images[i]))[0] for i in test], dtype=float)
    seconds = time.perf_counter() - t
    true = truth["n_cells"].to_numpy(float)[test]
    rel = np.abs(pred - true) / np.maximum(true, 1)
    return {
        "benchmark": "segment_accuracy", "image_px": args.accuracy_px, "sites": int(len(test)),
        "model": str(model_path) if args.model else f"fine-tuned from random weights, {args.finetune_epochs} epochs",
        "train_s": round(train_s, 1) if train_s is not None else None,
        "spearman": round(float(spearmanr(pred, true).statistic), 4),
        "mae_nuclei": round(float(np.mean(np.abs(pred - true))), 2),
        "median_rel_error": round(float(np.median(rel)), 4),
        "mean_true_count": round(float(true.mean()), 1), "diameter_px": round(seg.nuclei_diameter_px, 2),
        "segment_s": round(seconds, 1), "device": str(device), "cellpose": version("cellpose"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-px", type=int, default=1080)
    ap.add_argument("--sites", type=int, default=2, help="timed sites (after one warm-up site)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--nuclei-diameter-px", type=float, default=28.0)
    ap.add_argument("--cell-diameter-px", type=float, default=60.0)
    ap.add_argument("--cells-per-site", type=float, default=250.0)
    ap.add_argument("--model", default=None, help="trained Cellpose 3 model file (speed and accuracy)")
    ap.add_argument("--finetune-epochs", type=int, default=0,
                    help="fine-tune a random-weight model on synthetic masks for accuracy (0: off)")
    ap.add_argument("--accuracy-px", type=int, default=256)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    import logging
    import warnings

    import torch

    logging.getLogger("cellpose").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    device = _device(args.device)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cytoscreen-bench-segment-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_speed:
            print(json.dumps(speed(args, work, device)), flush=True)
        acc = accuracy(args, work, device)
        if acc is not None:
            print(json.dumps(acc), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
