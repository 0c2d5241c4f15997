"""Cost of running the workflow through SLURM, and the job shape of a 384-well plate.

1. Wall time of the demo workflow (2 synthetic 96-well plates, 2 sites, seed 0, the demo config)
   run locally with `--cores 2` and through the localhost SLURM of tests/slurm/start.sh with
   `--profile workflow/profiles/slurm` (`--max-threads 2`: the node has 2 CPUs). The difference is
   the overhead of submission, status polling and per-job Snakemake start-up. SLURM job records
   (sacct) give the time jobs spent queued and running.
2. SLURM jobs per 384-well plate, with the profile's grouping and without it (`--groups` emptied):
   counted from Snakemake's dry-run plan of a one-plate and a two-plate 384-well screen.

Prints one JSON line per measurement.

    python benchmarks/slurm_overhead.py [--skip-runs] [--fast] [--status-init-seconds N] [--workdir DIR]

--fast uses the orchestration tests' settings (tiny random backbone, 3 epochs, small null) instead
of the demo config; --status-init-seconds passes --slurm-init-seconds-before-status-checks (the
plugin's default, 40 s, is what users get; the tests use 5). Needs a SLURM that answers `sinfo`
(`bash tests/slurm/start.sh`) unless --skip-runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cytoscreen.synth import default_settings, synth_screen

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
CHANNELS = {"w1": "DNA", "w2": "Tubulin", "w3": "Actin"}
FAST = {"features": {"backbone": "test_tiny", "num_workers": 0, "threads": 1},
        "novelty": {"trainer": {"max_epochs": 3}}, "moa": {"null_size": 100}}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    e.setdefault("PYTHONPATH", str(REPO))
    return e


def snakemake(workdir: Path, *args: str, timeout: int = 3600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=workdir, timeout=timeout)


def screen(root: Path, *, plates: int, wells: int, sites: int, seed: int, image_px: int | None) -> Path:
    if not (root / "plates.tsv").exists():
        synth_screen(root, plates=plates, wells=wells, sites=sites, seed=seed, settings=default_settings(image_px))
    return root


def workdir(path: Path, screen_dir: Path, extra: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"plates": str(screen_dir / "plates.tsv"), "results": "results", "reports": "reports",
           "channels": CHANNELS, **extra}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return path


def submitted_jobs(dry_run_log: str) -> dict[str, int]:
    """Jobs Snakemake would submit, from a dry run: rule counts, group jobs, and the total submitted."""
    counts: dict[str, int] = {}
    table = dry_run_log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    for line in table.splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    local = counts.pop("all", 0)
    groups = re.findall(r"Group job (\w+) \(jobs", dry_run_log)
    # the jobs of a group job are listed indented under its "Group job" line
    grouped_jobs = len(re.findall(r"^ {4}(?:local)?rule \w+:", dry_run_log, re.M))
    return {"rule_jobs": sum(counts.values()), "group_jobs": len(groups),
            "submitted": sum(counts.values()) - grouped_jobs + len(groups), "local_rule_jobs": local,
            "rules": counts}


def job_shape(work: Path) -> list[dict]:
    rows = []
    per_plate = {}
    for plates in (1, 2):
        scr = screen(work / f"w384_p{plates}", plates=plates, wells=384, sites=1, seed=1, image_px=64)
        wd = workdir(work / f"shape_p{plates}", scr, {})
        for grouping in ("profile groups", "no groups"):
            args = ["--profile", str(PROFILE), "--dry-run", "--forceall"]
            if grouping == "no groups":  # replaces the profile's groups with one for no rule
                args += ["--groups", "no_such_rule=none"]
            res = snakemake(wd, *args)
            if res.returncode != 0:
                raise RuntimeError(res.stderr[-3000:])
            per_plate[(plates, grouping)] = submitted_jobs(res.stdout + res.stderr)
    for grouping in ("profile groups", "no groups"):
        one, two = per_plate[(1, grouping)], per_plate[(2, grouping)]
        rows.append({"benchmark": "slurm_jobs_per_384_well_plate", "grouping": grouping,
                     "jobs_per_plate": two["submitted"] - one["submitted"],
                     "screen_level_jobs": 2 * one["submitted"] - two["submitted"],
                     "one_plate_screen_jobs": one["submitted"], "rules_one_plate": one["rules"]})
    return rows


def sacct_summary(run_log: str) -> dict:
    ids = re.findall(r"SLURM jobid (\d+)", run_log)
    if not ids:
        return {"jobs": 0}
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,Submit,Start,End"],
                         capture_output=True, text=True, timeout=60).stdout

    def seconds(stamp: str) -> float:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))

    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    queued = [seconds(start) - seconds(sub) for _, _, sub, start, _ in rows]
    running = [seconds(end) - seconds(start) for _, _, _, start, end in rows]
    return {"jobs": len(rows), "states": sorted({r[1] for r in rows}),
            "queued_s_total": sum(queued), "running_s_total": sum(running),
            "running_s_mean": round(sum(running) / len(rows), 1)}


def wall_times(work: Path, *, fast: bool, status_init: int | None) -> list[dict]:
    scr = screen(work / "demo", plates=2, wells=96, sites=2, seed=0, image_px=None)
    extra = FAST if fast else {}
    rows = []
    local = workdir(work / "local", scr, extra)
    t = time.perf_counter()
    res = snakemake(local, "--workflow-profile", str(REPO / "workflow" / "profiles" / "default"), "--cores", "2")
    local_s = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    cluster = workdir(work / "slurm", scr, extra)
    args = ["--profile", str(PROFILE), "--max-threads", "2"]
    if status_init is not None:
        args += ["--slurm-init-seconds-before-status-checks", str(status_init)]
    t = time.perf_counter()
    res = snakemake(cluster, *args)
    slurm_s = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(res.stdout[-3000:] + res.stderr[-3000:])
    jobs = sacct_summary(res.stdout + res.stderr)
    rows.append({"benchmark": "demo_wall_time", "config": "fast" if fast else "demo",
                 "local_cores2_s": round(local_s, 1), "slurm_s": round(slurm_s, 1),
                 "overhead_s": round(slurm_s - local_s, 1),
                 "overhead_per_job_s": round((slurm_s - local_s) / max(jobs["jobs"], 1), 1),
                 "status_init_s": status_init if status_init is not None else "plugin default (40)",
                 "slurm_jobs": jobs})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-runs", action="store_true", help="only count jobs (no SLURM needed)")
    ap.add_argument("--fast", action="store_true", help="orchestration settings instead of the demo config")
    ap.add_argument("--status-init-seconds", type=int, default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cytoscreen-slurm-bench-"))
    host = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    for row in job_shape(work):
        print(json.dumps({**row, **host}), flush=True)
    if not args.skip_runs:
        for row in wall_times(work, fast=args.fast, status_init=args.status_init_seconds):
            print(json.dumps({**row, **host}), flush=True)


if __name__ == "__main__":
    main()
