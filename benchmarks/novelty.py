"""Novelty stage: training time per epoch, peak memory and scoring speed; AUROC on a synthetic screen.

Part 1 (``train``): a control table of 50,000 rows x 1,000 float32 features (Gaussian on a
low-rank manifold, 384-well plates), the default model settings, a fixed number of epochs on CPU
(early stopping off); reports seconds per epoch (training plus validation), training rows/s,
scoring rows/s and the peak RSS of the process.
Part 2 (``auroc``): a synthetic screen of 384-well plates (64 control wells per plate, 16 treatments
of which 8 strong and 8 weak phenotypes shifted along a few features); default settings with early
stopping; AUROC of treatment wells against the (cross-fitted, out-of-sample) control wells, and hits.
Each part runs in its own process, which reads the control table from Parquet as the CLI does, so
its peak memory is that of a training run.  Prints one JSON line.

    python benchmarks/novelty.py [--rows 50000] [--features 1000] [--epochs 3] [--threads 2]
                                 [--plates 8] [--mlp 256,64] [--accelerator cpu] [--devices 1]

Both parts run with the default model (a linear autoencoder) and with an MLP variant (--mlp).
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
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cytoscreen.io import (  # noqa: E402
    CONCENTRATION,
    MOA,
    NOVELTY_HIT,
    NOVELTY_SCORE,
    NOVELTY_SPLIT,
    PERT_TYPE,
    PERTURBATION,
    PLATE,
    WELL,
    well_from_row_col,
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _wells(n: int) -> tuple[list[str], list[str]]:
    """``n`` (plate, well) keys filling 384-well plates."""
    plates, wells = [], []
    for i in range(n):
        p, w = divmod(i, 384)
        r, c = divmod(w, 24)
        plates.append(f"B{p + 1:04d}")
        wells.append(well_from_row_col(r, c + 1))
    return plates, wells


def control_table(n_rows: int, n_features: int, seed: int = 0, n_factors: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    loadings = (rng.normal(size=(n_factors, n_features)) / np.sqrt(n_factors)).astype(np.float32)
    x = rng.standard_normal((n_rows, n_factors), dtype=np.float32) @ loadings
    x += 0.3 * rng.standard_normal((n_rows, n_features), dtype=np.float32)
    plates, wells = _wells(n_rows)
    meta = pd.DataFrame({PLATE: plates, WELL: wells, PERT_TYPE: "negcon"})
    return pd.concat([meta, pd.DataFrame(x, columns=[f"DNA_bench_{i}" for i in range(n_features)])],
                     axis=1)


def synthetic_screen(n_plates: int, n_features: int, seed: int = 1) -> pd.DataFrame:
    """384-well plates: columns 1, 2, 23, 24 negcon; 16 treatments, 0-7 strong, 8-15 weak.

    Profiles are a 10-factor Gaussian plus noise and a plate offset, then centred per plate on
    the negcon median, as the profiles stage's per-plate normalization would.
    """
    rng = np.random.default_rng(seed)
    k = 10
    loadings = rng.normal(size=(k, n_features)) / np.sqrt(k)
    effects = []
    for t in range(16):
        strength = 1.5 if t < 8 else 0.75
        cols = rng.choice(n_features, size=max(n_features // 50, 3), replace=False)
        e = np.zeros(n_features)
        e[cols] = strength * rng.choice([-1, 1], size=cols.size)
        effects.append(e)
    rows, meta = [], []
    for p in range(n_plates):
        offset = rng.normal(scale=0.3, size=n_features)
        for r in range(16):
            for c in range(1, 25):
                x = rng.normal(size=k) @ loadings + 0.3 * rng.normal(size=n_features) + offset
                if c in (1, 2, 23, 24):
                    meta.append((f"S{p + 1}", well_from_row_col(r, c), "negcon", "DMSO", 0.0, "control"))
                else:
                    t = (r * 24 + c + p) % 16
                    x = x + effects[t]
                    kind = "strong" if t < 8 else "weak"
                    meta.append((f"S{p + 1}", well_from_row_col(r, c), "trt", f"cpd{t}", 1.0, kind))
                rows.append(x)
    m = pd.DataFrame(meta, columns=[PLATE, WELL, PERT_TYPE, PERTURBATION, CONCENTRATION, MOA])
    x = np.asarray(rows)
    for plate in m[PLATE].unique():
        on = (m[PLATE] == plate).to_numpy()
        x[on] -= np.median(x[on & (m[PERT_TYPE] == "negcon").to_numpy()], axis=0)
    f = pd.DataFrame(x.astype(np.float32), columns=[f"DNA_bench_{i}" for i in range(n_features)])
    return pd.concat([m, f], axis=1)


def _config(args, hidden_sizes=None, **trainer):
    from cytoscreen.config import load_config

    section = {"trainer": {"accelerator": args.accelerator, "devices": args.devices,
                           "enable_model_summary": False, **trainer}}
    if hidden_sizes is not None:
        section["hidden_sizes"] = list(hidden_sizes)
    return load_config(None, {"novelty": section})["novelty"]


def _label(hidden_sizes) -> str:
    return "linear" if not hidden_sizes else "mlp_" + "_".join(map(str, hidden_sizes))


def part_train(args) -> dict:
    import pytorch_lightning as pl
    import torch

    from cytoscreen.io import read_table
    from cytoscreen.novelty.score import reconstruct
    from cytoscreen.novelty.settings import NoveltySettings
    from cytoscreen.novelty.train import train

    torch.set_num_threads(args.threads)
    rss_start = _peak_rss_mb()  # interpreter, torch and Lightning imported
    table = read_table(args.table)  # as `cytoscreen novelty train` reads it
    rss_table = _peak_rss_mb()

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times, self._t = [], None

        def on_train_epoch_start(self, trainer, module):
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.times.append(time.perf_counter() - self._t)

    timer = EpochTimer()
    hidden = args.hidden_sizes
    cfg = _config(args, hidden_sizes=hidden, max_epochs=args.epochs)
    cfg["trainer"]["callbacks"] = [timer]  # after load_config, which deep-copies its input
    cfg["patience"] = args.epochs + 1
    cfg["folds"] = 2  # the speed of one fit; a run trains novelty.folds of them one after another
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train(table, settings=NoveltySettings.from_config(cfg), root_dir=tmp)
        fit_s = time.perf_counter() - t0
    x = table[list(res.crossfit.features)].to_numpy(np.float32)
    t0 = time.perf_counter()
    reconstruct(res.models[0], x, batch_size=4096)
    score_s = time.perf_counter() - t0
    n_train = len(res.folds.train(0))
    steady = timer.times[1:] or timer.times
    return {
        "model": _label(hidden), "rows": args.rows, "features": args.features,
        "train_rows": n_train, "val_rows": len(res.folds.val[0]), "batch_size": cfg["batch_size"],
        "folds": len(res.folds),
        "epochs": len(timer.times), "epoch_s": [round(t, 2) for t in timer.times],
        "mean_epoch_s": round(float(np.mean(steady)), 2),
        "train_rows_per_s": round(n_train / float(np.mean(steady))),
        "fit_total_s": round(fit_s, 1), "score_rows_per_s": round(len(x) / score_s),
        "peak_rss_mb": round(_peak_rss_mb()), "rss_after_imports_mb": round(rss_start),
        "rss_after_reading_table_mb": round(rss_table),
        "best_val_loss": round(res.crossfit.best_val_loss[0], 4),
    }


def part_auroc(args) -> dict:
    import torch
    from sklearn.metrics import roc_auc_score

    from cytoscreen.novelty.score import score_profiles
    from cytoscreen.novelty.settings import NoveltySettings
    from cytoscreen.novelty.train import train

    torch.set_num_threads(args.threads)
    screen = synthetic_screen(args.plates, args.screen_features)
    settings = NoveltySettings.from_config(_config(args, hidden_sizes=args.hidden_sizes))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train(screen, settings=settings, root_dir=tmp)
        fit_s = time.perf_counter() - t0
    out = score_profiles(screen, res.crossfit, pvalue=settings.pvalue,
                         conformal_min_controls=settings.conformal_min_controls)
    nov = out.novelty
    cal = nov[nov[NOVELTY_SPLIT] == "crossfit"]  # every control, scored out of sample
    result = {"model": _label(args.hidden_sizes), "plates": args.plates,
              "screen_features": args.screen_features, "control_wells": int(
                  (nov[PERT_TYPE] == "negcon").sum()), "null_wells": len(cal),
              "pvalue_method": out.pvalue_method, "epochs_run": list(res.crossfit.epochs),
              "fit_s": round(fit_s, 1)}
    for kind in ("strong", "weak"):
        trt = nov[nov[MOA] == kind]
        y = np.r_[np.ones(len(trt)), np.zeros(len(cal))]
        s = np.r_[trt[NOVELTY_SCORE], cal[NOVELTY_SCORE]]
        result[f"auroc_{kind}"] = round(float(roc_auc_score(y, s)), 4)
        result[f"hits_{kind}"] = f"{int(trt[NOVELTY_HIT].sum())}/{len(trt)}"
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--plates", type=int, default=8, help="plates of the AUROC screen")
    ap.add_argument("--screen-features", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--mlp", default="256,64",
                    help="hidden sizes of the MLP variant run beside the default ('' to skip)")
    ap.add_argument("--part", choices=("train", "auroc"), help=argparse.SUPPRESS)
    ap.add_argument("--hidden-sizes", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--table", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        args.hidden_sizes = (
            None if args.hidden_sizes is None
            else [int(h) for h in args.hidden_sizes.split(",") if h]
        )
        fn = part_train if args.part == "train" else part_auroc
        print(json.dumps(fn(args)))
        return 0
    record = {"benchmark": "novelty", "machine": platform.machine(), "cpus": os.cpu_count(),
              "threads": args.threads, "accelerator": args.accelerator, "devices": args.devices}
    variants = [None] + ([args.mlp] if args.mlp else [])
    with tempfile.TemporaryDirectory() as tmp:
        from cytoscreen.io import write_parquet

        table = Path(tmp) / "controls.parquet"
        write_parquet(control_table(args.rows, args.features), table)
        for part in ("train", "auroc"):
            record[part] = []
            for hidden in variants:
                extra = ["--table", str(table)]
                extra += [] if hidden is None else ["--hidden-sizes", hidden]
                proc = subprocess.run(
                    [sys.executable, __file__, *sys.argv[1:], "--part", part, *extra],
                    capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode != 0 or not lines:
                    sys.stderr.write(proc.stderr[-3000:])
                    return 1
                record[part].append(json.loads(lines[-1]))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
