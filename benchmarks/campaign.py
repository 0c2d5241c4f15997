"""Campaign-scale screen steps: a synthetic screen of N plates streamed through the screen stages.

    nice -n 10 .venv/bin/python benchmarks/campaign.py --workdir /tmp/campaign --plates 200

Draws N plates x 384 wells x 1,280 float32 features, one ``<plate>/normalized.parquet`` at a time
(never the whole screen in memory): 32 negcon (DMSO) wells and 16 poscon wells (4 compounds) on
every plate, 336 compound wells; each block of 4 plates shares one compound layout (4 replicate
wells per compound on 4 plates); compounds belong to 30 MoAs (a shared direction per MoA, 20 %
inactive); a per-plate offset (batch effect) on every feature; features are a rank-48 signal plus
noise, with 64 near-copies (correlation filter), 8 features 10 % missing and 4 with outliers.

Then each step runs in its own child process (wall, CPU and peak RSS from ``os.wait4``):

``select``
    :func:`cytoscreen.profiles.streaming.stream_select` (statistics streamed plate by plate, Gram
    matrix for the correlation filter) then the selection applied plate by plate
    (``<plate>/feature_selected.parquet``).
``consensus``
    :func:`cytoscreen.profiles.streaming.stream_consensus` (treatment buckets, product consensus).
``novelty``
    ``cytoscreen.novelty`` training on the screen's negcon wells (gathered plate by plate), then
    :func:`cytoscreen.novelty.stream.score_plates`: every plate scored in turn, its residuals
    appended to ``residuals.parquet``, p-values / q-values / robust z from the per-well scores at the
    end (``--novelty-in-memory``: ``score_profiles`` of the whole screen in one table).
``moa``
    :mod:`cytoscreen.moa.knn` on the consensus: cosine kNN (exact below 20,000 treatments,
    NN-descent above), Louvain on the sparse kNN graph, UMAP on the same neighbours.
``report``
    the product's screen report page (``screen_report``) from per-plate QC tables, the novelty and
    MoA tables.

Prints one JSON line: per step wall_s, cpu_s, peak_rss_mb, load_1m (the machine's 1-minute load
average when the step ended), and sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WELLS = 384
FEATURES = 1280
NEGCON = 32
POSCON = 16
BLOCK = 4  # plates sharing a compound layout (replicates)
N_MOA = 30
RANK = 48
STEPS = ("select", "consensus", "novelty", "moa", "report")


def plate_name(p: int) -> str:
    return f"P{p:05d}"


def _wells() -> list[str]:
    from cytoscreen import io

    return [io.well_from_row_col(r, c) for r in range(16) for c in range(24)]


def generate(workdir: Path, plates: int, seed: int = 0) -> None:
    """Write every plate's normalized.parquet, one plate at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cytoscreen import io

    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(RANK, FEATURES)).astype(np.float32) / np.sqrt(RANK)
    copies = rng.choice(FEATURES, size=64, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(FEATURES), copies), size=64, replace=False)
    nan_cols = rng.choice(np.setdiff1d(np.arange(FEATURES), copies), size=8, replace=False)
    out_cols = rng.choice(np.setdiff1d(np.arange(FEATURES), np.r_[copies, nan_cols]), 4, replace=False)
    moa_dirs = rng.normal(size=(N_MOA, RANK)).astype(np.float32)
    poscon_dirs = rng.normal(size=(4, RANK)).astype(np.float32) * 2
    names = [f"F{j:04d}" for j in range(FEATURES)]
    wells = _wells()
    n_trt = WELLS - NEGCON - POSCON
    for p in range(plates):
        prng = np.random.default_rng([seed, p])
        block = p // BLOCK
        # layout (same within a block of plates): negcon, poscon, compounds in shuffled wells
        lrng = np.random.default_rng([seed, 10**6 + block])
        order = lrng.permutation(WELLS)
        kind = np.empty(WELLS, dtype=object)
        pert = np.empty(WELLS, dtype=object)
        latent = prng.normal(size=(WELLS, RANK)).astype(np.float32)
        kind[order[:NEGCON]] = "negcon"
        pert[order[:NEGCON]] = "DMSO"
        pc = order[NEGCON:NEGCON + POSCON]
        kind[pc] = "poscon"
        pert[pc] = [f"POS{i % 4}" for i in range(POSCON)]
        latent[pc] += poscon_dirs[np.arange(POSCON) % 4]
        trt = order[NEGCON + POSCON:]
        compound = block * n_trt + np.arange(n_trt)
        kind[trt] = "trt"
        pert[trt] = [f"C{c:07d}" for c in compound]
        crng = np.random.default_rng([seed, 2 * 10**6 + block])
        moa = crng.integers(0, N_MOA, size=n_trt)
        strength = crng.uniform(1.0, 3.0, size=n_trt) * (crng.random(n_trt) > 0.2)
        latent[trt] += (moa_dirs[moa] * strength[:, None]).astype(np.float32)
        x = latent @ loadings + 0.5 * prng.normal(size=(WELLS, FEATURES)).astype(np.float32)
        x += prng.normal(scale=0.3, size=FEATURES).astype(np.float32)  # plate offset
        x[:, copies] = x[:, sources] + 0.05 * prng.normal(size=(WELLS, 64)).astype(np.float32)
        miss = prng.random((WELLS, len(nan_cols))) < 0.1
        sub = x[:, nan_cols]
        sub[miss] = np.nan
        x[:, nan_cols] = sub
        x[prng.integers(0, WELLS, 4), out_cols] = 1e4
        cols = {
            io.PLATE: pa.array([plate_name(p)] * WELLS),
            io.WELL: pa.array(wells),
            io.PERT_TYPE: pa.array(kind.tolist()),
            io.PERTURBATION: pa.array(pert.tolist()),
        }
        table = pa.table({**cols, **{n: pa.array(x[:, j]) for j, n in enumerate(names)}})
        out = workdir / plate_name(p) / "normalized.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)


def _normalized(workdir: Path) -> list[Path]:
    return sorted(workdir.glob("P*/normalized.parquet"))


def _selected(workdir: Path) -> list[Path]:
    return sorted(workdir.glob("P*/feature_selected.parquet"))


# --- the steps (each in its own child process) ---------------------------------------------------
def step_select(workdir: Path) -> dict:
    from cytoscreen import io
    from cytoscreen.profiles.select import apply_selection
    from cytoscreen.profiles.streaming import stream_select

    paths = _normalized(workdir)
    sel = stream_select(paths, samples="all")
    io.write_json(sel.record(), workdir / "feature_selected.selection.json")
    for path in paths:
        df = apply_selection(io.read_table(path), sel.kept, source=str(path))
        df.to_parquet(path.with_name("feature_selected.parquet"), index=False)
    return {"features_in": len(sel.features_in), "features_kept": len(sel.kept),
            "dropped": {r.operation: len(r.dropped) for r in sel.operations}}


def _plate_tables(paths):
    from cytoscreen import io

    for path in paths:
        yield str(path), io.read_table(path)


def step_consensus(workdir: Path) -> dict:
    from cytoscreen import io
    from cytoscreen.profiles.streaming import stream_consensus

    out = stream_consensus(_plate_tables(_selected(workdir)), workdir / "spill",
                           by=[io.PERTURBATION], n_buckets=32)
    out.to_parquet(workdir / "consensus.parquet", index=False)
    return {"treatments": len(out)}


def step_novelty(workdir: Path, *, max_controls: int = 20_000, epochs: int = 5,
                 streamed: bool = True) -> dict:
    import pandas as pd

    from cytoscreen import io
    from cytoscreen.io.stream import ParquetStream
    from cytoscreen.novelty.score import score_profiles
    from cytoscreen.novelty.settings import NoveltySettings
    from cytoscreen.novelty.stream import score_plates
    from cytoscreen.novelty.train import train
    from cytoscreen.plate import negcon_mask

    paths = _selected(workdir)
    # training rows: the negcon wells, gathered plate by plate, capped (evenly over plates)
    per_plate = max(2, max_controls // max(len(paths), 1))
    controls = []
    for path in paths:
        df = io.read_table(path)
        controls.append(df.loc[negcon_mask(df)].head(per_plate))
    controls = pd.concat(controls, ignore_index=True)
    settings = NoveltySettings.from_config({
        "folds": 2, "batch_size": 256, "patience": 2, "threads": 2,
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "devices": 1},
    })
    t0 = time.perf_counter()
    result = train(controls, settings=settings, root_dir=workdir / "novelty_train")
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if streamed:  # one plate at a time; residuals written plate by plate
        with ParquetStream(workdir / "residuals.parquet") as out:
            scores = score_plates(_plate_tables(paths), result.crossfit, residuals=out.write)
        n_wells = out.rows
    else:
        wells = pd.concat([io.read_table(p) for p in paths], ignore_index=True)
        scores = score_profiles(wells, result.crossfit)
        io.write_parquet(scores.residuals, workdir / "residuals.parquet")
        n_wells = len(wells)
        del wells
    io.write_parquet(scores.novelty, workdir / "novelty.parquet")
    return {"train_rows": len(controls), "train_s": round(train_s, 1), "scored_wells": n_wells,
            "score_s": round(time.perf_counter() - t0, 1), "streamed": streamed,
            "hits": scores.n_hits, "pvalue_method": scores.pvalue_method}


def step_moa(workdir: Path, *, k: int = 15, neighbors: int = 5,
             exact_below: int | None = None) -> dict:
    import pandas as pd

    from cytoscreen import io
    from cytoscreen.moa.knn import cosine_knn, knn_clusters, knn_umap
    from cytoscreen.moa.stage import format_treatment
    from cytoscreen.profiles.arrays import feature_matrix

    cons = io.read_table(workdir / "consensus.parquet")
    # one C-contiguous float32 copy of the feature block, then only the names are kept
    x = np.ascontiguousarray(feature_matrix(cons, io.feature_columns(cons), dtype=np.float32))
    perturbations = cons[io.PERTURBATION].reset_index(drop=True)
    del cons
    timings = {}
    t0 = time.perf_counter()
    idx, sim, exact = cosine_knn(x, k, **({} if exact_below is None else {"exact_below": exact_below}))
    timings["knn_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = knn_clusters(idx)
    timings["cluster_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    coords = knn_umap(x, idx, sim)
    timings["umap_s"] = time.perf_counter() - t0
    names = np.asarray([format_treatment(p, None) for p in perturbations], dtype=object)
    table = pd.DataFrame({io.PERTURBATION: perturbations, io.TREATMENT: names,
                          io.CLUSTER: labels, io.UMAP_1: coords[:, 0], io.UMAP_2: coords[:, 1]})
    for r in range(neighbors):
        table[io.neighbor_column(r + 1)] = names[idx[:, r]]
        table[io.neighbor_similarity_column(r + 1)] = sim[:, r]
    table.to_parquet(workdir / "moa.parquet", index=False)
    return {"treatments": len(x), "knn_exact": exact, "clusters": int(labels.max() + 1),
            **{key: round(v, 1) for key, v in timings.items()}}


def step_report(workdir: Path) -> dict:
    import pandas as pd

    from cytoscreen import io
    from cytoscreen.report.pages.screen import screen_report

    qc_tables = []
    for path in _normalized(workdir):
        wells = pd.read_parquet(path, columns=[io.PLATE, io.WELL])
        qc = wells.assign(**{io.SITE: 1}, **{flag: False for flag in io.QC_IMAGE_FLAGS})
        qc_tables.append(qc)
    novelty = io.read_table(workdir / "novelty.parquet") if (workdir / "novelty.parquet").exists() else None
    moa = io.read_table(workdir / "moa.parquet")
    page = screen_report(qc_tables, novelty=novelty, moa=moa)
    io.write_text(page, workdir / "index.html")
    return {"html_kb": round(len(page.encode()) / 1024)}


# --- driver --------------------------------------------------------------------------------------
def _child(step: str, workdir: Path, knn_exact_below: int | None = None,
           novelty_streamed: bool = True) -> None:
    import functools
    import logging

    logging.basicConfig(level=logging.WARNING)
    fn = {"generate": None, "select": step_select, "consensus": step_consensus,
          "novelty": functools.partial(step_novelty, streamed=novelty_streamed),
          "report": step_report,
          "moa": functools.partial(step_moa, exact_below=knn_exact_below)}[step]
    info = fn(workdir) if fn else {}
    print(json.dumps(info))


def _run(cmd: list[str]) -> tuple[dict, dict]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryFile(mode="w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read()[-3000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    info = json.loads(lines[-1]) if lines else {}
    return info, {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                  "peak_rss_mb": round(usage.ru_maxrss / 1024),
                  "load_1m": round(os.getloadavg()[0], 1)}  # machine load when the step ended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--plates", type=int, default=2000)
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--skip-generate", action="store_true",
                        help="reuse the plates already in --workdir")
    parser.add_argument("--knn-exact-below", type=int, default=None,
                        help="treatments up to which the MoA kNN is exact (default: "
                        "cytoscreen.moa.knn.EXACT_BELOW, 20,000); 0 forces NN-descent")
    parser.add_argument("--novelty-in-memory", action="store_true",
                        help="score novelty on the whole screen in one table (default: streamed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child == "generate":
            generate(args.workdir, args.plates)
            print("{}")
        else:
            _child(args.child, args.workdir, args.knn_exact_below, not args.novelty_in_memory)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve()), "--workdir", str(args.workdir),
          "--plates", str(args.plates)]
    if args.knn_exact_below is not None:
        me += ["--knn-exact-below", str(args.knn_exact_below)]
    if args.novelty_in_memory:
        me += ["--novelty-in-memory"]
    record: dict = {"benchmark": "campaign", "plates": args.plates, "wells": args.plates * WELLS,
                    "features": FEATURES, "screen_gb_float32": round(args.plates * WELLS * FEATURES
                                                                      * 4 / 1e9, 2)}
    steps = list(args.steps)
    if not args.skip_generate:
        steps = ["generate", *steps]
    for step in steps:
        info, usage = _run([*me, "--child", step])
        record[step] = {**usage, **info}
        print(json.dumps({"step": step, **record[step]}), file=sys.stderr, flush=True)
    record["peak_rss_mb_max"] = max(record[s]["peak_rss_mb"] for s in steps)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
