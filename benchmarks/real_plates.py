"""Real-plate benchmark (issue 16): the real workflow on real plates, one JSON line per data set.

Data sets (``--data`` is the folder holding them, ``../shared/data`` in the project):

``bbbc013_translocation``
    One 96-well plate (FKHR-GFP translocation), 16 negcon and 8 poscon wells and a 9-step dose
    series of wortmannin (rows A-D) and LY294002 (rows E-H).  The whole workflow runs (images,
    QC, CNN features, profiles, novelty, MoA, reports).  Metrics: ``zprime`` of the plate hit
    readout (``Metadata_Novelty_RobustZ``, poscon vs negcon wells), ``poscon_hits`` /
    ``negcon_hits`` at the default ``novelty.hit_q``, and ``dose_spearman`` (Spearman correlation
    of the readout with ``dose_index`` over the treated wells of each compound).
``lincs_cellpainting_mini``
    Five real Cell Painting plates (4 wells each: 2 DMSO, 2 compounds).  The whole workflow runs.
    Metrics on the workflow's MoA table (``results/screen/moa_profiles.parquet``, ``profiles.moa``;
    under ``"hits"`` the same on the hit-calling table ``feature_selected.parquet``):
    ``map_replicate`` (replicate retrieval mAP of each compound against the DMSO wells, mean over
    compounds), ``replicate_q05_fraction`` (fraction of compounds with mAP q < 0.05) and
    ``nsp_1nn`` (leave-one-out 1-NN accuracy of every well's treatment, same-plate wells excluded
    from the neighbours).
``bbbc021_profiles``
    CellProfiler well profiles with MoA labels (no images).  The workflow's profiles rules run on
    them (Snakemake with ``--allowed-rules`` on the profiles rules, per-plate ``wells.parquet``
    written from the three files); NSC and NSCB as ``benchmarks/bbbc021_moa.py`` computes them
    (treatment consensus profiles, week batches).

Every line also has ``"raw"``: the same metrics on the raw well-median embeddings (``wells.parquet``
before any normalization).  For BBBC013 the raw readout is the log squared Euclidean distance of a
well to the mean of the negcon wells (each negcon well left out of its own mean), turned into a
robust z and a Gaussian predictive p-value against the negcon wells, BH over the other wells, hit at
the same ``hit_q``: the novelty stage's hit rule with a distance in place of the autoencoder.

Only what each data set needs is set in its config (plate table, channels, a layout for BBBC013);
everything else is the schema default.  Workflow outputs are kept in ``--workdir/<data set>`` and
Snakemake re-runs only what is missing or out of date, so a second run is fast.

    nice -n 10 .venv/bin/python benchmarks/real_plates.py --data ../shared/data --workdir /tmp/real_plates
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing
    sys.path.insert(0, str(ROOT))
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from cytoscreen import io, stats  # noqa: E402

logger = logging.getLogger("real_plates")

DATASETS = ("bbbc013", "lincs_cellpainting_mini", "bbbc021")
FOLDERS = {
    "bbbc013": "bbbc013_translocation",
    "lincs_cellpainting_mini": "lincs_cellpainting_mini",
    "bbbc021": "bbbc021_profiles",
}
#: The profile tables of the workflow's two branches: MoA (consensus, moa) and hit calling (novelty).
PROFILES = "screen/moa_profiles.parquet"
HIT_PROFILES = "screen/feature_selected.parquet"
CONSENSUS = "screen/consensus.parquet"
NOVELTY = "screen/novelty/novelty.parquet"
#: BBBC013 file names: Channel<C>-<NN>-<row letter>-<column>.tif, one site per well.
BBBC013_LAYOUT = r"Channel(?P<channel>[12])-\d{2}-(?P<row>[A-H])-(?P<col>\d{2})\.tif$"
BBBC013_CHANNELS = {"1": "GFP", "2": "DNA"}
#: LINCS channel order as listed in the data set's deepprofiler_config.json.
LINCS_CHANNELS = {"ch1": "DNA", "ch2": "RNA", "ch3": "ER", "ch4": "AGP", "ch5": "Mito"}
DOSE_INDEX = "Metadata_dose_index"
BBBC013_COMPOUNDS = ("wortmannin", "LY294002")
REPLICATE_Q = 0.05
#: BBBC021 has no images: only the profiles rules after aggregation may run.
PROFILE_RULE_PREFIX = "profiles_"
PROFILE_RULES_SKIPPED = ("profiles_aggregate",)


# --- workflow ----------------------------------------------------------------------------------------
def _write_yaml(path: Path, config: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _plates_tsv(path: Path, rows: list[dict[str, str]]) -> None:
    cols = ["plate", "images", "layout", "platemap", "batch"]
    lines = ["\t".join(cols)] + ["\t".join(str(r.get(c, "")) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def setup_bbbc013(data: Path, work: Path) -> dict[str, Any]:
    src = data / FOLDERS["bbbc013"]
    _plates_tsv(
        work / "plates.tsv",
        [{"plate": "BBBC013", "images": src / "images", "layout": "bbbc013", "platemap": src / "platemap.tsv"}],
    )
    return {"channels": BBBC013_CHANNELS, "layouts": {"bbbc013": BBBC013_LAYOUT}}


def setup_lincs(data: Path, work: Path) -> dict[str, Any]:
    src = data / FOLDERS["lincs_cellpainting_mini"]
    table = pd.read_csv(src / "plates.tsv", sep="\t", dtype=str)
    rows = [
        {**r, "images": (src / r["images"]).resolve(), "platemap": (src / r["platemap"]).resolve()}
        for r in table.to_dict(orient="records")
    ]
    _plates_tsv(work / "plates.tsv", rows)
    return {"channels": LINCS_CHANNELS}


def load_bbbc021_wells(data: Path) -> pd.DataFrame:
    from bbbc021_moa import load_bbbc021

    return load_bbbc021(data / FOLDERS["bbbc021"])


def setup_bbbc021(data: Path, work: Path, wells: pd.DataFrame) -> dict[str, Any]:
    """Per-plate wells.parquet (what profiles_aggregate would write) and a plate table for them."""
    rows = []
    for plate, table in wells.groupby(io.PLATE, sort=True):
        out = work / "results" / str(plate) / "wells.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists():  # keep the mtime, so Snakemake does not re-run the profiles rules
            io.write_parquet(table.reset_index(drop=True), out)
        # images/platemap are never read: only the profiles rules are allowed to run
        rows.append({"plate": plate, "images": "none", "layout": "imagexpress", "platemap": "none.tsv",
                     "batch": table[io.BATCH].iloc[0]})
    _plates_tsv(work / "plates.tsv", rows)
    return {}


def _snakemake_cmd(work: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
            "--configfile", str(work / "config.yaml"), *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the cytoscreen CLI
    return env


def profile_rules(work: Path) -> tuple[str, ...]:
    """The workflow's profiles rules that run on well tables (every ``profiles_*`` rule but aggregate)."""
    proc = subprocess.run(_snakemake_cmd(work, "--list-rules"), cwd=work, env=_env(), capture_output=True,
                          text=True, check=True)
    names = [ln.strip() for ln in proc.stdout.splitlines()]
    return tuple(n for n in names if n.startswith(PROFILE_RULE_PREFIX) and n not in PROFILE_RULES_SKIPPED)


def write_config(work: Path, config: dict[str, Any]) -> None:
    _write_yaml(work / "config.yaml", {"plates": "plates.tsv", "results": "results", "reports": "reports", **config})


def run_workflow(work: Path, config: dict[str, Any], *, cores: int, targets: tuple[str, ...] = (),
                 allowed_rules: tuple[str, ...] = (), timeout: int = 3600) -> dict[str, Any]:
    """Run the repository's Snakefile in ``work`` (keep going past failed jobs); a JSON-ready record."""
    write_config(work, config)
    cmd = _snakemake_cmd(work, "--cores", str(cores), "--keep-going", "--rerun-incomplete", *targets)
    if allowed_rules:  # last: the option takes every word after it
        cmd += ["--allowed-rules", *allowed_rules]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    (work / "snakemake.log").write_text(log)
    failed = sorted(set(re.findall(r"Error in rule (\w+):", log)))
    ran = len(re.findall(r"Finished job(?:id)?[: ]", log))
    if proc.returncode != 0:
        logger.warning("%s: snakemake exited %d; failed rules: %s (see %s)", work.name, proc.returncode,
                       ", ".join(failed) or "?", work / "snakemake.log")
    return {"returncode": proc.returncode, "failed_rules": failed, "jobs_run": ran, "seconds": round(seconds, 1)}


def read_wells(results: Path) -> pd.DataFrame:
    """Every plate's wells.parquet (raw well medians), stacked."""
    files = sorted(results.glob("*/wells.parquet"))
    if not files:
        raise FileNotFoundError(f"{results}: no <plate>/wells.parquet")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


# --- metrics ----------------------------------------------------------------------------------------
def _features(table: pd.DataFrame) -> list[str]:
    return io.feature_columns(table)


def _negcon(table: pd.DataFrame) -> np.ndarray:
    from cytoscreen.plate import negcon_mask

    return np.asarray(negcon_mask(table), dtype=bool)


def replicate_metrics(wells: pd.DataFrame, *, null_size: int, seed: int) -> dict[str, Any]:
    """``map_replicate``, ``replicate_q05_fraction`` and ``nsp_1nn`` of a well table."""
    from cytoscreen.moa import metrics

    neg = _negcon(wells)
    table = wells.reset_index(drop=True)
    rep = metrics.replicate_map(table, treatment_cols=[io.PERTURBATION], negcon=neg, features=_features(table),
                                null_size=null_size, seed=seed, fdr=REPLICATE_Q)
    nsp, nsp_by_class = nsp_1nn(table)
    per = rep.per_group
    return {
        "map_replicate": _round(rep.mean_map),
        "replicate_q05_fraction": _round(rep.fraction_significant),
        "nsp_1nn": _round(nsp),
        "nsp_1nn_by_class": nsp_by_class,
        "replicate_q": {str(k): _round(q) for k, q in zip(per[io.PERTURBATION], per["q_value"], strict=True)},
        "n_wells": len(table),
        "n_features": len(_features(table)),
    }


def nsp_1nn(wells: pd.DataFrame) -> tuple[float | None, dict[str, float]]:
    """Leave-one-out 1-NN accuracy of the treatment label (DMSO is a class), cosine similarity, with
    every well on the query's plate excluded from its candidates ("not same plate"); and the accuracy
    of each class's queries."""
    from cytoscreen.moa import metrics

    table = wells.reset_index(drop=True).copy()
    table["_row"] = np.arange(len(table))  # a "compound" per well: only the query itself is excluded
    res = metrics.nn_accuracy(table, moa_col=io.PERTURBATION, compound_col="_row", batch_col=io.PLATE,
                              features=_features(wells))
    by_class = {str(m): _round(a) for m, a in zip(res.per_moa["moa"], res.per_moa["accuracy"], strict=True)}
    return res.accuracy, by_class


def _round(value: Any, digits: int = 4) -> Any:
    if value is None:
        return None
    value = float(value)
    return None if not np.isfinite(value) else round(value, digits)


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return None
    return _round(spearmanr(x[ok], y[ok]).statistic)


def plate_hit_metrics(wells: pd.DataFrame, readout: np.ndarray, hits: np.ndarray) -> dict[str, Any]:
    """Z' of the readout (poscon vs negcon), hit counts per control type, dose Spearman per compound."""
    from cytoscreen.plate import pert_type_mask

    neg = _negcon(wells)
    pos = np.asarray(pert_type_mask(wells, "poscon"), dtype=bool)
    trt = np.asarray(pert_type_mask(wells, "trt"), dtype=bool)
    dose = pd.to_numeric(wells[DOSE_INDEX], errors="coerce").to_numpy(np.float64) if DOSE_INDEX in wells else None
    spearman = {}
    for cpd in BBBC013_COMPOUNDS:
        on = trt & (wells[io.PERTURBATION].astype(str) == cpd).to_numpy()
        spearman[cpd] = None if dose is None else _spearman(readout[on], dose[on])
    return {
        "zprime": _round(stats.z_prime(readout[pos], readout[neg])),
        "poscon_hits": int(hits[pos].sum()),
        "poscon_wells": int(pos.sum()),
        "negcon_hits": int(hits[neg].sum()),
        "negcon_wells": int(neg.sum()),
        "trt_hits": int(hits[trt].sum()),
        "trt_wells": int(trt.sum()),
        "dose_spearman": spearman,
    }


def raw_distance_readout(wells: pd.DataFrame, *, hit_q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust z, q-values and hits of the raw-embedding distance detector (module docstring)."""
    from scipy.stats import t as student_t

    x = wells[_features(wells)].to_numpy(np.float64)
    neg = _negcon(wells)
    n = int(neg.sum())
    total = x[neg].sum(axis=0)
    score = np.empty(len(x))
    for i in range(len(x)):
        mean = (total - x[i]) / (n - 1) if neg[i] else total / n  # negcon wells: leave-one-out mean
        score[i] = np.log(np.sum((x[i] - mean) ** 2) + 1e-12)
    ref = score[neg]
    z = stats.robust_z(score, ref)
    tstat = (score - ref.mean()) / (ref.std(ddof=1) * np.sqrt(1 + 1 / n))
    p = student_t.sf(tstat, df=n - 1)
    tested = ~neg
    q = np.full(len(x), np.nan)
    q[tested] = stats.benjamini_hochberg(p[tested])
    hits = tested & (q <= hit_q)
    return z, q, hits


def schema_default(section: str, key: str) -> Any:
    """A default of the workflow's config schema (the value a run without that key gets)."""
    import yaml

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return schema["properties"][section]["properties"][key]["default"]


def bbbc013_record(results: Path) -> dict[str, Any]:
    novelty_path = results / NOVELTY
    wells = read_wells(results)
    hit_q = float(schema_default("novelty", "hit_q"))
    raw_z, _, raw_hits = raw_distance_readout(wells, hit_q=hit_q)
    record: dict[str, Any] = {"dataset": "bbbc013"}
    if novelty_path.exists():
        nov = pd.read_parquet(novelty_path)
        readout = nov[io.NOVELTY_ROBUST_Z].to_numpy(np.float64) if io.NOVELTY_ROBUST_Z in nov else np.log(
            nov[io.NOVELTY_SCORE].to_numpy(np.float64))
        hits = nov[io.NOVELTY_HIT].fillna(False).to_numpy(bool)
        record.update(plate_hit_metrics(nov, readout, hits))
        q = nov[io.NOVELTY_QVALUE].to_numpy(np.float64)
        pos = nov[io.PERT_TYPE].astype(str).str.lower().eq("poscon").to_numpy()
        record["poscon_max_q"] = _round(np.nanmax(q[pos])) if pos.any() else None
        record["readout"] = io.NOVELTY_ROBUST_Z if io.NOVELTY_ROBUST_Z in nov else f"log {io.NOVELTY_SCORE}"
        poscon_z = getattr(io, "NOVELTY_POSCON_Z", None)
        if poscon_z and poscon_z in nov:  # the cross-fitted poscon-direction readout
            direction = plate_hit_metrics(nov, nov[poscon_z].to_numpy(np.float64), hits)
            record["poscon_direction"] = {k: direction[k] for k in ("zprime", "dose_spearman")}
    else:
        record["error"] = f"{novelty_path} was not made"
    record["hit_q"] = hit_q
    record["raw"] = {**plate_hit_metrics(wells, raw_z, raw_hits), "readout": "log distance to negcon mean"}
    try:
        from cytoscreen.novelty.readout import poscon_direction_z
    except ImportError:  # older package without the poscon-direction readout
        return record
    from cytoscreen.plate import pert_type_mask

    x = wells[_features(wells)].to_numpy(np.float64)
    pz = poscon_direction_z(x, wells[io.PLATE].astype(str).to_numpy(), _negcon(wells),
                            np.asarray(pert_type_mask(wells, "poscon"), dtype=bool))
    direction = plate_hit_metrics(wells, pz, raw_hits)
    record["raw"]["poscon_direction"] = {k: direction[k] for k in ("zprime", "dose_spearman")}
    return record


def lincs_record(results: Path, *, null_size: int, seed: int) -> dict[str, Any]:
    record: dict[str, Any] = {"dataset": "lincs_cellpainting_mini"}
    profiles = results / PROFILES
    if profiles.exists():
        record.update(replicate_metrics(pd.read_parquet(profiles), null_size=null_size, seed=seed))
    else:
        record["error"] = f"{profiles} was not made"
    if (results / HIT_PROFILES).exists():
        record["hits"] = replicate_metrics(pd.read_parquet(results / HIT_PROFILES), null_size=null_size,
                                           seed=seed)
    record["raw"] = replicate_metrics(read_wells(results), null_size=null_size, seed=seed)
    return record


def _bbbc021_eval(wells: pd.DataFrame, consensus: pd.DataFrame | None, *, null_size: int, seed: int) -> dict:
    from bbbc021_moa import BATCH_REGEX

    from cytoscreen.moa.evaluate import evaluate_profiles

    if consensus is None:
        from cytoscreen.moa.similarity import treatment_profiles

        consensus = treatment_profiles(wells, by=[io.PERTURBATION, io.CONCENTRATION])
    s = evaluate_profiles(
        wells, compound_col=io.PERTURBATION, dose_col=io.CONCENTRATION, moa_col=io.MOA, batch_col=io.PLATE,
        batch_regex=BATCH_REGEX, pert_type_col=io.PERT_TYPE, treatments=consensus, null_size=null_size,
        seed=seed, cluster=False, source="bbbc021",
    ).summary
    return {"nsc": _round(s["nsc"]), "nscb": _round(s["nscb"]), "map_replicate": _round(s["map_replicate"]),
            "map_moa": _round(s["map_moa"]), "n_features": s["n_features"]}


def bbbc021_record(results: Path, wells: pd.DataFrame, *, null_size: int, seed: int) -> dict[str, Any]:
    record: dict[str, Any] = {"dataset": "bbbc021"}
    profiles, consensus = results / PROFILES, results / CONSENSUS
    if profiles.exists() and consensus.exists():
        record.update(_bbbc021_eval(pd.read_parquet(profiles), pd.read_parquet(consensus),
                                    null_size=null_size, seed=seed))
    else:
        record["error"] = f"{profiles} or {consensus} was not made"
    record["raw"] = _bbbc021_eval(wells, None, null_size=null_size, seed=seed)
    return record


# --- main --------------------------------------------------------------------------------------------
def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_dataset(name: str, data: Path, workdir: Path, *, cores: int, null_size: int, seed: int,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    work = workdir / name
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if name == "bbbc021":
        wells = load_bbbc021_wells(data)
        config = _merge(setup_bbbc021(data, work, wells), extra or {})
        write_config(work, config)
        wf = run_workflow(work, config, cores=cores, targets=("results/" + CONSENSUS, "results/" + PROFILES),
                          allowed_rules=profile_rules(work))
        record = bbbc021_record(work / "results", wells, null_size=null_size, seed=seed)
    else:
        config = setup_bbbc013(data, work) if name == "bbbc013" else setup_lincs(data, work)
        config = _merge(config, extra or {})
        wf = run_workflow(work, config, cores=cores)
        if name == "bbbc013":
            record = bbbc013_record(work / "results")
        else:
            record = lincs_record(work / "results", null_size=null_size, seed=seed)
    record["workflow"] = wf
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding the three data sets")
    parser.add_argument("--workdir", type=Path, required=True, help="per-data-set workflow folders (kept)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--cores", type=int, default=2, help="Snakemake --cores")
    parser.add_argument("--null-size", type=int, default=10000, help="mAP permutations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    parser.add_argument("--extra-config", type=Path, default=None,
                        help="YAML merged into every data set's config (to compare settings; the reported "
                             "figures use none, i.e. the schema defaults)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    data, workdir = args.data.resolve(), args.workdir.resolve()
    for name in args.datasets:
        if not (data / FOLDERS[name]).is_dir():
            parser.error(f"{data / FOLDERS[name]}: data set folder not found")
    extra = None
    if args.extra_config:
        import yaml

        extra = yaml.safe_load(args.extra_config.read_text()) or {}
    lines = []
    start = time.perf_counter()
    for name in args.datasets:
        record = run_dataset(name, data, workdir, cores=args.cores, null_size=args.null_size, seed=args.seed,
                             extra=extra)
        if extra:
            record["extra_config"] = extra
        line = json.dumps(record)
        print(line, flush=True)
        lines.append(line)
    logger.warning("real_plates: %d data set(s) in %.0f s", len(lines), time.perf_counter() - start)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
