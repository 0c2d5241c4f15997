"""A nucleus model that can be checked here: fine-tune Cellpose 3 on synthetic sites, measure counts.

No trained Cellpose model is available offline, so this script trains one: a Cellpose 3 network
(the standard ``CellposeModel`` architecture, so the file loads wherever a model file is named in
``segment.model``/``segment.nuclei_model``) from random weights on the DNA channel of synthetic
sites with their true nucleus masks (``cytoscreen synth --masks``), training on the even wells of a
96-well plate and testing on the odd ones.  It reports

- count accuracy on the held-out synthetic sites against the truth: Spearman rho, median relative
  error, mean absolute error (cytoscreen's own segment path: ``Segmenter`` with the plate's diameter
  estimated as the workflow does);
- counts on the DNA channel (DRAQ5) of the real BBBC013 plate (``shared/data/bbbc013_translocation``,
  U2OS, one nucleus per cell): per negcon well, their mean and coefficient of variation (stable
  counts across negcon wells are what a usable count readout needs), and the poscon wells.

The trained file is an artefact written to ``--out`` (not part of the repository); use it with
``segment.nuclei_model: <out>/models/<name>``.  One JSON line per result.  A short CPU run is the
default (``--steps 150 --bsize 64``); on a GPU use ``--device gpu --steps 2000 --bsize 128``.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/segment_finetune.py [--out DIR] [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.segment import model as sm
from cytoscreen.segment import segment as sg
from cytoscreen.synth import default_settings, synth_screen

BBBC013 = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc013_translocation"


def synthetic_sites(work: Path, image_px: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], pd.DataFrame]:
    """DNA images, true nucleus masks and the truth table of one synthetic 96-well plate (1 site)."""
    import tifffile

    screen = work / f"synth_{image_px}px_seed{seed}"
    if not (screen / "plates.tsv").exists():
        synth_screen(screen, plates=1, wells=96, sites=1, seed=seed, settings=default_settings(image_px), masks=True)
    truth = pd.read_csv(screen / "truth" / "SYN001.tsv", sep="\t")
    images, masks = [], []
    for rec in truth.itertuples():
        stem = f"SYN001_{rec.well}_s{rec.site}"
        images.append(tifffile.imread(screen / "images" / "SYN001" / f"{stem}_w1.tif"))
        masks.append(tifffile.imread(screen / "truth" / "masks" / "SYN001" / f"{stem}_nuclei.tif"))
    return images, masks, truth


def train(images, masks, *, steps: int, bsize: int, batch_size: int, lr: float, device, out: Path,
          name: str, seed: int) -> tuple[Path, float, list[float]]:
    """Train a Cellpose 3 network from random weights for ``steps`` batches (one batch per Cellpose
    "epoch", so its 10-epoch learning-rate warm-up is 10 steps); return its file, seconds and the
    loss per step."""
    import torch
    from cellpose import models
    from cellpose import train as cp_train

    torch.manual_seed(seed)
    np.random.seed(seed)
    net = models.CellposeModel(device=device, gpu=device.type == "cuda", pretrained_model=False,
                               diam_mean=17.0).net
    t = time.perf_counter()
    path, losses, _ = cp_train.train_seg(
        net, train_data=[im.astype(np.float32) for im in images], train_labels=list(masks), channels=[0, 0],
        normalize=True, n_epochs=steps, learning_rate=lr, weight_decay=1e-4, batch_size=batch_size,
        nimg_per_epoch=batch_size, bsize=bsize, save_path=str(out), save_every=max(steps, 1), model_name=name,
        min_train_masks=1, rescale=False,
    )
    return Path(path), time.perf_counter() - t, [float(x) for x in np.asarray(losses).ravel()]


def fitted_segmenter(model, images) -> sg.Segmenter:
    """The workflow's diameter estimate: segment a few sites at the model's diameter, take the median."""
    seg = sg.Segmenter(nuclei_model=model)
    first = [seg.nuclei(im, diameter=sm.model_diameter(model)) for im in images[:8]]
    return sg.Segmenter(nuclei_model=model,
                        nuclei_diameter_px=sg.estimate_diameter(first, fallback=sm.model_diameter(model)))


def count(seg: sg.Segmenter, img: np.ndarray) -> int:
    return int(sg.object_stats(seg.nuclei(img))[0])


def synthetic_accuracy(model, images, truth: pd.DataFrame, test: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    seg = fitted_segmenter(model, [images[i] for i in test])
    t = time.perf_counter()
    pred = np.array([count(seg, images[i]) for i in test], dtype=float)
    seconds = time.perf_counter() - t
    true = truth["n_cells"].to_numpy(float)[test]
    rel = np.abs(pred - true) / np.maximum(true, 1)
    return {
        "benchmark": "segment_finetune_synthetic", "sites": int(len(test)),
        "spearman": round(float(spearmanr(pred, true).statistic), 4),
        "median_rel_error": round(float(np.median(rel)), 4),
        "mae_nuclei": round(float(np.mean(np.abs(pred - true))), 2),
        "mean_true": round(float(true.mean()), 2), "mean_pred": round(float(pred.mean()), 2),
        "diameter_px": round(float(seg.nuclei_diameter_px), 2), "segment_s_per_site": round(seconds / len(test), 2),
    }


def bbbc013_counts(model, data: Path, *, max_wells: int | None) -> dict:
    """Nucleus counts on the DNA channel (Channel2) of the BBBC013 negcon and poscon wells."""
    import tifffile

    platemap = pd.read_csv(data / "platemap.tsv", sep="\t")
    platemap["well"] = [io.normalize_well(w) for w in platemap["well"]]
    files = {}
    for f in sorted((data / "images").glob("Channel2-*.tif")):
        _, _, row, col = f.stem.split("-")
        files[io.normalize_well(f"{row}{int(col)}")] = f
    neg = [w for w in platemap.loc[platemap["pert_type"] == "negcon", "well"] if w in files]
    pos = [w for w in platemap.loc[platemap["pert_type"] == "poscon", "well"] if w in files]
    if max_wells:
        neg, pos = neg[:max_wells], pos[: max(2, max_wells // 2)]
    images = {w: tifffile.imread(files[w]) for w in neg + pos}
    seg = fitted_segmenter(model, [images[w] for w in neg])
    t = time.perf_counter()
    counts = {w: count(seg, images[w]) for w in neg + pos}
    seconds = time.perf_counter() - t
    n = np.array([counts[w] for w in neg], dtype=float)
    p = np.array([counts[w] for w in pos], dtype=float)
    return {
        "benchmark": "segment_finetune_bbbc013_dna", "negcon_wells": len(neg), "poscon_wells": len(pos),
        "negcon_counts": {w: counts[w] for w in neg}, "poscon_counts": {w: counts[w] for w in pos},
        "negcon_mean": round(float(n.mean()), 2), "negcon_cv": round(float(n.std(ddof=1) / n.mean()), 4)
        if n.mean() > 0 else None,
        "poscon_mean": round(float(p.mean()), 2) if len(p) else None,
        "diameter_px": round(float(seg.nuclei_diameter_px), 2), "segment_s_per_site": round(seconds / len(counts), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/segment_finetune"),
                    help="work folder: synthetic plate, trained model (models/<name>)")
    ap.add_argument("--image-px", type=int, default=128, help="synthetic site size")
    ap.add_argument("--steps", type=int, default=150, help="training batches")
    ap.add_argument("--bsize", type=int, default=64, help="training crop size (px)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.02, help="AdamW learning rate (after a 10-step warm-up)")
    ap.add_argument("--test-sites", type=int, default=None, help="at most this many held-out synthetic sites (48)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None, help="skip training and evaluate this model file")
    ap.add_argument("--bbbc013", type=Path, default=BBBC013)
    ap.add_argument("--bbbc013-wells", type=int, default=None, help="at most this many negcon wells (all 16)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    device = sm.resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    images, masks, truth = synthetic_sites(args.out, args.image_px, args.seed)
    even, odd = np.arange(0, len(images), 2), np.arange(1, len(images), 2)
    env = {"device": str(device), "threads": args.threads, "cellpose": version("cellpose"), "torch": torch.__version__,
           "machine": platform.machine(), "load_avg": [round(x, 1) for x in os.getloadavg()]}
    if args.model is None:
        name = f"cp3_nuclei_synth_s{args.steps}_b{args.bsize}"
        path, seconds, losses = train([images[i] for i in even], [masks[i] for i in even], steps=args.steps,
                                      bsize=args.bsize, batch_size=args.batch_size, lr=args.lr, device=device,
                                      out=args.out, name=name, seed=args.seed)
        print(json.dumps({"benchmark": "segment_finetune_train", "model": str(path), "steps": args.steps,
                          "batch_size": args.batch_size, "lr": args.lr,
                          "train_sites": int(len(even)), "image_px": args.image_px, "bsize": args.bsize,
                          "train_s": round(seconds, 1), "loss_first": round(losses[0], 4) if losses else None,
                          "loss_last10": round(float(np.mean(losses[-10:])), 4) if losses else None,
                          "sha256": io.sha256_file(path), **env}), flush=True)
    else:
        path = args.model
    model = sm.load_model(sm.resolve_model(str(path)), device=device)
    test = odd[: args.test_sites] if args.test_sites else odd
    print(json.dumps({**synthetic_accuracy(model, images, truth, test), "model": str(path)}), flush=True)
    if args.bbbc013.exists():
        print(json.dumps({**bbbc013_counts(model, args.bbbc013, max_wells=args.bbbc013_wells),
                          "model": str(path)}), flush=True)


if __name__ == "__main__":
    main()
