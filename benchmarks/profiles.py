"""Profiles benchmark: cytoscreen vs pycytominer on the same synthetic site table.

Both tools run aggregate (site -> well median) + normalize (mad_robustize per plate against negcon
wells) + feature selection (drop_na_columns, variance_threshold [pycytominer >= 1.3:
frequency_threshold], correlation_threshold) on one synthetic Parquet table, written the way the
features stage writes ``sites.parquet`` (:func:`cytoscreen.io.write_parquet`).  cytoscreen runs
twice:

* ``cytoscreen``: in one process (read, the three library calls, write), like pycytominer;
* ``cytoscreen_cli``: as the workflow's rules run it, one ``python -m cytoscreen.cli profiles
  STEP`` process per rule (``aggregate --normalized`` -> wells.parquet and normalized.parquet, the
  per-plate job; ``select`` -> selected.parquet, the screen job), each paying interpreter start,
  imports, read and write, and each with the thread variables Snakemake sets for its rule's
  ``threads:`` (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, ...: 1 for the per-plate job, 4 for select).

Every tool or step runs in its own subprocess, so that peak RSS (``ru_maxrss`` of that child, from
``os.wait4``) is measured fairly.  Wall and CPU (user + system) time are reported for the whole
subprocess (interpreter start, imports, read, compute, write) and, in one process, for the compute
part alone (after the table is read, before the result is written); on a shared machine CPU time
is the steadier figure.  Each tool reads the Parquet file its own way: cytoscreen as its CLI does
(``read_profiles``), pycytominer with ``pandas.read_parquet`` (what its ``load_profiles`` does).
Both cytoscreen outputs are compared with pycytominer's: same kept columns, values within 1e-5
(relative to max(1, |value|)).

    python benchmarks/profiles.py                      # 100,000 rows x 1,000 features, 20 plates
    python benchmarks/profiles.py --rows 20000         # smaller, when pycytominer is too slow

Prints one JSON line on stdout.
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

REPO = Path(__file__).resolve().parents[1]
OPERATIONS = ("drop_na_columns", "variance_threshold", "correlation_threshold")
NEGCON_PER_PLATE = 32


def make_sites(path: Path, *, rows: int, features: int, plates: int, wells: int, seed: int) -> None:
    """A site table: plate offsets, a 40-dim latent structure, near-copies (correlation filter),
    discrete and near-constant features (variance filter), two features with 10% missing values."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    n_wells = plates * wells
    per_well = np.full(n_wells, rows // n_wells)
    per_well[: rows - per_well.sum()] += 1  # uneven well sizes, as after QC
    well_idx = np.repeat(np.arange(n_wells), per_well)
    site = np.concatenate([np.arange(1, k + 1) for k in per_well])
    plate_idx = well_idx // wells
    in_plate = well_idx % wells
    cols_per_row = 24 if wells == 384 else 12
    well_names = np.array([f"{chr(65 + i // cols_per_row)}{i % cols_per_row + 1:02d}"
                           for i in range(wells)])
    negcon = in_plate < NEGCON_PER_PLATE
    pert = np.where(negcon, "DMSO", np.char.add("cmp", ((in_plate - NEGCON_PER_PLATE) // 4)
                                                 .astype(str)))
    columns = {
        "Metadata_Plate": np.char.add("plate", plate_idx.astype(str)),
        "Metadata_Well": well_names[in_plate],
        "Metadata_Site": site,
        "Metadata_pert_type": np.where(negcon, "negcon", "trt"),
        "Metadata_perturbation": pert,
    }
    latent_dim = 40
    treat_effect = rng.normal(0, 1, (wells, latent_dim)) * (~(np.arange(wells) <
                                                             NEGCON_PER_PLATE))[:, None]
    loadings = rng.normal(0, 1, (latent_dim, features)).astype(np.float32)
    block = 20_000
    x = np.empty((rows, features), dtype=np.float32)
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        z = rng.normal(0, 1, (r1 - r0, latent_dim)) + treat_effect[in_plate[r0:r1]]
        x[r0:r1] = (z.astype(np.float32) @ loadings
                    + rng.normal(0, 1, (r1 - r0, features)).astype(np.float32))
    x += rng.normal(0, 3, (plates, features)).astype(np.float32)[plate_idx]
    n_copy = features // 20
    for j in range(n_copy):  # near-copies: correlated > 0.9 with feature j
        x[:, features - 1 - j] = 2 * x[:, j] + rng.normal(0, 0.1, rows).astype(np.float32)
    for j in range(n_copy, n_copy + 5):  # counts: few distinct values
        x[:, j] = rng.poisson(2, rows)
    x[:, n_copy + 5] = 1.0  # near-constant: fails the frequency rule
    x[rng.random(rows) < 0.01, n_copy + 5] = 0.0
    for j in (n_copy + 6, n_copy + 7):  # 10% missing values
        x[rng.random(rows) < 0.1, j] = np.nan
    names = [f"DNA_efficientnet_{j}" for j in range(features)]
    arrays = [pa.array(v) for v in columns.values()] + [pa.array(x[:, j]) for j in range(features)]
    table = pa.table(arrays, names=[*columns, *names])
    from cytoscreen import io

    io.write_parquet(table, path)  # as the features stage writes sites.parquet


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_cytoscreen(src: str, out: str) -> dict:
    from cytoscreen import io
    from cytoscreen.profiles import aggregate, feature_select, normalize
    from cytoscreen.profiles.tables import read_profiles

    sites = read_profiles(src)  # what `cytoscreen profiles ...` reads with
    t0, c0 = time.perf_counter(), _cpu()
    wells = aggregate(sites, method="median")
    del sites
    normalized = normalize(wells, method="mad_robustize")
    del wells
    selected = feature_select(normalized, operations=OPERATIONS).profiles
    result = {"compute_s": time.perf_counter() - t0, "compute_cpu_s": _cpu() - c0}
    io.write_parquet(selected, out)
    return result


def _run_pycytominer(src: str, out: str) -> dict:
    import warnings

    import pandas as pd
    import pycytominer as pc
    from pycytominer import operations

    warnings.simplefilter("ignore")
    variance = ("frequency_threshold" if hasattr(operations, "frequency_threshold")
                else "variance_threshold")
    sites = pd.read_parquet(src)
    t0, c0 = time.perf_counter(), _cpu()
    feats = [c for c in sites.columns if not c.startswith("Metadata_")]
    meta = ["Metadata_Plate", "Metadata_Well", "Metadata_pert_type", "Metadata_perturbation"]
    platemap = sites[meta].drop_duplicates(["Metadata_Plate", "Metadata_Well"])
    wells = pc.aggregate(sites, strata=["Metadata_Plate", "Metadata_Well"], features=feats,
                         operation="median")
    del sites
    wells = platemap.merge(wells, on=["Metadata_Plate", "Metadata_Well"])  # annotate
    normalized = pd.concat(
        [
            pc.normalize(g, features=feats, meta_features=meta, method="mad_robustize",
                         samples="Metadata_pert_type == 'negcon'")
            for _, g in wells.groupby("Metadata_Plate", sort=False)
        ]
    )
    del wells
    ops = [variance if op == "variance_threshold" else op for op in OPERATIONS]
    selected = pc.feature_select(normalized, features=feats, operation=ops)
    result = {"compute_s": time.perf_counter() - t0, "compute_cpu_s": _cpu() - c0}
    selected.to_parquet(out, index=False)
    return result


def _child(tool: str, src: str, out: str) -> None:
    t0 = time.perf_counter()
    result = (_run_cytoscreen if tool == "cytoscreen" else _run_pycytominer)(src, out)
    result["in_process_s"] = time.perf_counter() - t0
    result["cpu_s"] = _cpu()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def compile_package() -> None:
    """Byte-compile the cytoscreen package (``__pycache__``, ignored by git), as installing it
    does: pycytominer's modules load from their ``.pyc`` files, while with
    ``PYTHONDONTWRITEBYTECODE`` set (this machine's environment) an editable checkout recompiles
    its ~30 modules in every cytoscreen process (~0.05 CPU-s).  The files carry the source's
    hash (``checked-hash``), so an edit after this is seen whatever its time stamp."""
    env = _child_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash",
                    str(REPO / "cytoscreen")], env=env, check=True, stdout=subprocess.DEVNULL)


def _run(cmd: list[str], env: dict | None = None) -> tuple[str, dict]:
    """Run ``cmd`` (``env``: variables to set); its stdout and wall, CPU (user + system) and peak
    RSS from ``os.wait4``."""
    with tempfile.TemporaryFile(mode="w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**_child_env(), **(env or {})})
        out = proc.stdout.read()  # to EOF; the child is left for wait4 to reap
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-3000:]}")
    return out, {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                 "peak_rss_mb": usage.ru_maxrss / 1024}


def run_tool(tool: str, src: Path, out: Path) -> dict:
    stdout, usage = _run([sys.executable, __file__, "--child", tool, str(src), str(out)])
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(usage)  # the parent's view of the whole child process
    return {k: round(v, 3) for k, v in result.items()}


#: The chain as the workflow's rules run it: (step, its rule in workflow/rules/profiles.smk, output
#: name, extra arguments, the output the next step reads).  The per-plate rule aggregates and
#: normalizes (schema defaults: mad_robustize per plate against the negcon wells) in one process.
CLI_STEPS = (
    ("aggregate", "profiles_aggregate", "wells.parquet",
     ["--method", "median", "--normalized", "{work}/cli_normalized.parquet"], "cli_normalized.parquet"),
    ("select", "profiles_select", "selected.parquet", ["--operations", *OPERATIONS],
     "cli_selected.parquet"),
)
#: What Snakemake's ``shell`` sets to a job's ``threads:`` (snakemake/shell.py), which bounds
#: OpenBLAS's and Arrow's thread pools (Arrow reads OMP_NUM_THREADS) in the job.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def rule_threads(rule: str) -> int:
    """The ``threads:`` of a rule in ``workflow/rules/profiles.smk``."""
    import re

    text = (REPO / "workflow" / "rules" / "profiles.smk").read_text()
    block = re.search(rf"^rule {rule}:\n(.*?)(?=^\S|\Z)", text, flags=re.M | re.S)
    found = re.search(r"^\s+threads:\s*(\d+)\s*$", block.group(1), flags=re.M) if block else None
    if found is None:
        raise RuntimeError(f"workflow/rules/profiles.smk: no threads: of rule {rule}")
    return int(found.group(1))


def run_cli_chain(src: Path, work: Path) -> tuple[dict, Path]:
    """One ``cytoscreen profiles STEP`` process per rule, with the thread variables Snakemake sets
    for the rule's ``threads:``; per-step and total wall, CPU, peak RSS."""
    steps, current = {}, src
    for step, rule, name, extra, following in CLI_STEPS:
        out = work / f"cli_{name}"
        threads = rule_threads(rule)
        _, usage = _run([sys.executable, "-m", "cytoscreen.cli", "-q", "profiles", step,
                         str(current), str(out), *(a.format(work=work) for a in extra)],
                        env=dict.fromkeys(THREAD_VARIABLES, str(threads)))
        steps[step] = {**{k: round(v, 3) for k, v in usage.items()}, "threads": threads}
        current = work / following
    total = {
        "wall_s": round(sum(s["wall_s"] for s in steps.values()), 3),
        "cpu_s": round(sum(s["cpu_s"] for s in steps.values()), 3),
        "peak_rss_mb": round(max(s["peak_rss_mb"] for s in steps.values()), 3),
        "steps": steps,
    }
    return total, current


def compare(ours: Path, theirs: Path) -> dict:
    import pandas as pd

    a = pd.read_parquet(ours)
    b = pd.read_parquet(theirs)
    keys = ["Metadata_Plate", "Metadata_Well"]
    fa = [c for c in a.columns if not c.startswith("Metadata_")]
    fb = [c for c in b.columns if not c.startswith("Metadata_")]
    a = a.sort_values(keys).reset_index(drop=True)
    b = b.sort_values(keys).reset_index(drop=True)
    same_rows = a[keys].equals(b[keys])
    common = [c for c in fa if c in set(fb)]
    va = a[common].to_numpy(np.float64)
    vb = b[common].to_numpy(np.float64)
    ok = ~np.isnan(vb)
    rel = np.abs(va[ok] - vb[ok]) / np.maximum(1.0, np.abs(vb[ok]))
    return {
        "same_rows": bool(same_rows),
        "same_columns": set(fa) == set(fb),
        "n_kept": len(fa),
        "n_kept_pycytominer": len(fb),
        "nan_agree": bool(np.array_equal(np.isnan(va), np.isnan(vb))),
        "max_rel_diff": float(rel.max(initial=0.0)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="site rows")
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--plates", type=int, default=20)
    parser.add_argument("--wells", type=int, default=384, help="wells per plate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep the table and outputs here")
    parser.add_argument("--skip-pycytominer", action="store_true")
    parser.add_argument("--no-compile", action="store_true",
                        help="do not byte-compile cytoscreen first (see compile_package)")
    parser.add_argument("--child", nargs=3, metavar=("TOOL", "INPUT", "OUTPUT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--generate", metavar="OUTPUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    if args.generate:
        make_sites(Path(args.generate), rows=args.rows, features=args.features,
                   plates=args.plates, wells=args.wells, seed=args.seed)
        return 0
    tmp = tempfile.TemporaryDirectory(prefix="cytoscreen-bench-") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"sites_{args.rows}x{args.features}_{args.seed}.cytoscreen.parquet"
    t0 = time.perf_counter()
    if not src.exists():  # in a child: the children's peak RSS must not start from this one's
        _run([sys.executable, __file__, "--generate", str(src), "--rows", str(args.rows),
              "--features", str(args.features), "--plates", str(args.plates),
              "--wells", str(args.wells), "--seed", str(args.seed)])
    gen = time.perf_counter() - t0
    if not args.no_compile:
        compile_package()
    import pandas
    import pyarrow

    record: dict = {
        "benchmark": "profiles",
        "steps": "aggregate(median)+normalize(mad_robustize, per plate vs negcon)+"
                 "feature_select(" + ",".join(OPERATIONS) + ")",
        "rows": args.rows, "features": args.features, "plates": args.plates,
        "wells_per_plate": args.wells, "seed": args.seed, "generate_s": round(gen, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "pandas": pandas.__version__,
                    "pyarrow": pyarrow.__version__, "bytecode_compiled": not args.no_compile},
    }
    record["cytoscreen"] = run_tool("cytoscreen", src, work / "cytoscreen.parquet")
    record["cytoscreen_cli"], cli_out = run_cli_chain(src, work)
    if not args.skip_pycytominer:
        from importlib.metadata import version

        record["machine"]["pycytominer"] = version("pycytominer")
        record["pycytominer"] = run_tool("pycytominer", src, work / "pycytominer.parquet")
        ours, theirs = record["cytoscreen"], record["pycytominer"]
        record["speedup_wall"] = round(theirs["wall_s"] / ours["wall_s"], 2)
        record["speedup_compute"] = round(theirs["compute_s"] / ours["compute_s"], 2)
        record["speedup_cpu"] = round(theirs["cpu_s"] / ours["cpu_s"], 2)
        record["speedup_compute_cpu"] = round(theirs["compute_cpu_s"] / ours["compute_cpu_s"], 2)
        record["memory_ratio"] = round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3)
        chain = record["cytoscreen_cli"]
        record["speedup_wall_cli"] = round(theirs["wall_s"] / chain["wall_s"], 2)
        record["speedup_cpu_cli"] = round(theirs["cpu_s"] / chain["cpu_s"], 2)
        record["memory_ratio_cli"] = round(chain["peak_rss_mb"] / theirs["peak_rss_mb"], 3)
        record["output"] = compare(work / "cytoscreen.parquet", work / "pycytominer.parquet")
        record["output_cli"] = compare(cli_out, work / "pycytominer.parquet")
    print(json.dumps(record))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
