"""Novelty detection: an autoencoder trained on control wells scores every well.

  cytoscreen novelty train PROFILES --config CONFIG --out model.ckpt
  cytoscreen novelty score PROFILES --checkpoint model.ckpt --config CONFIG --out novelty.parquet
                           [--residuals residuals.parquet]

PROFILES is a well-level profile table (by default the screen's feature_selected.parquet) or a
site-level one (with Metadata_Site); settings come from the config's novelty: section.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
from pathlib import Path

from cytoscreen import io

logger = logging.getLogger(__name__)

TRAIN_DOC = """Train the novelty autoencoder on the control wells of a profile table.

Control wells (novelty.reference, negcon by default) are split by well into train, val and
calibration sets (seeded, stratified by plate); the model trains on the train wells with early
stopping on the val wells, and the checkpoint (written atomically) stores the split so scoring
uses the held-out calibration wells only. Trainer settings (accelerator, devices, strategy,
num_nodes, precision, max_epochs, ...) come from novelty.trainer; with devices > 1 Lightning
starts the DDP processes itself.
"""

SCORE_DOC = """Score every well: reconstruction error, conformal p-value, BH q-value, hit call.

Writes one row per well with its metadata and Metadata_Novelty_Score, _PValue, _QValue, _Hit and
_Split; optionally the per-feature residuals (reconstruction - input) of every input row.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cytoscreen.argparse_ import add_command

    p = add_command(subparsers, "novelty", __doc__)
    actions = p.add_subparsers(dest="novelty_action", metavar="<action>", required=True)

    t = add_command(actions, "train", TRAIN_DOC)
    t.add_argument("profiles", help="profile table (parquet/csv/tsv), e.g. results/screen/feature_selected.parquet")
    t.add_argument("--config", help="workflow config YAML (novelty: section; schema defaults without it)")
    t.add_argument("--out", required=True, help="output checkpoint, e.g. results/screen/novelty/model.ckpt")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    t.set_defaults(func=run)

    s = add_command(actions, "score", SCORE_DOC)
    s.add_argument("profiles", help="profile table with the checkpoint's feature columns")
    s.add_argument("--checkpoint", required=True, help="checkpoint from `cytoscreen novelty train`")
    s.add_argument("--config", help="workflow config YAML (novelty: section; schema defaults without it)")
    s.add_argument("--out", required=True, help="output novelty.parquet (one row per well)")
    s.add_argument("--residuals", help="also write residuals.parquet (reconstruction - input per row)")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    s.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the chosen action (``train`` or ``score``)."""
    return {"train": run_train, "score": run_score}[args.novelty_action](args)


def _set_threads(threads: int) -> None:
    if threads and threads > 0:
        import torch

        torch.set_num_threads(threads)


def work_dir(out: Path) -> Path:
    """Folder beside the checkpoint where training writes before the final rename."""
    return out.parent / f".{out.name}.work"


def metrics_dir(out: Path) -> Path:
    """Folder beside the checkpoint that keeps the per-epoch CSV metrics (metrics.csv)."""
    return out.parent / f"{out.stem}_metrics"


def _prepare_work_dir(work: Path) -> None:
    """Remove a stale work folder, unless it holds a SLURM requeue checkpoint to resume from."""
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    if work.exists():
        if SLURMEnvironment.detect() and any(work.glob("hpc_ckpt_*.ckpt")):
            logger.info("%s: resuming from the SLURM requeue checkpoint", work)
            return
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)


def run_train(args: argparse.Namespace) -> int:
    from cytoscreen.config import load_config
    from cytoscreen.novelty.train import is_rank_zero_process, train

    _set_threads(args.threads)
    config = load_config(args.config)
    novelty = config["novelty"]
    out = Path(args.out)
    work = work_dir(out)
    if is_rank_zero_process():
        # only one process touches the output folder; Lightning starts the other DDP ranks
        # inside fit(), and they rerun this command with their rank in the environment
        _prepare_work_dir(work)
        shutil.rmtree(metrics_dir(out), ignore_errors=True)
    profiles = io.read_table(args.profiles)
    logger.info("read %s (%d rows x %d columns)", args.profiles, len(profiles), profiles.shape[1])
    prov = io.provenance(
        "novelty", config_hash=io.config_hash(config), input=str(args.profiles)
    )
    try:
        result = train(
            profiles,
            novelty=novelty,
            root_dir=work,
            log_dir=metrics_dir(out),
            source=str(args.profiles),
            provenance=prov,
        )
    except BaseException:
        if is_rank_zero_process() and not any(work.glob("hpc_ckpt_*.ckpt")):
            shutil.rmtree(work, ignore_errors=True)  # keep a SLURM requeue checkpoint only
        raise
    if not result.is_global_zero:
        return 0
    os.replace(result.checkpoint, out)  # same file system: atomic
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(work)
    logger.info(
        "wrote %s (trained on %d control wells, %d val, %d calibration held out; metrics in %s)",
        out, len(result.split.train), len(result.split.val), len(result.split.calibration),
        metrics_dir(out),
    )
    return 0


def run_score(args: argparse.Namespace) -> int:
    from cytoscreen.config import load_config
    from cytoscreen.novelty.data import NoveltySplit
    from cytoscreen.novelty.model import load_checkpoint
    from cytoscreen.novelty.score import score_profiles

    _set_threads(args.threads)
    config = load_config(args.config)
    novelty = config["novelty"]
    model, state = load_checkpoint(args.checkpoint)
    try:
        split = NoveltySplit.from_dict(state["split"])
    except ValueError as err:
        from cytoscreen.errors import ModelError

        raise ModelError(f"{args.checkpoint}: {err}; retrain the model") from err
    reference = state.get("reference", novelty["reference"])
    if reference != novelty["reference"]:
        logger.warning(
            "%s: trained with reference %r, config says %r; using the checkpoint's",
            args.checkpoint, reference, novelty["reference"],
        )
    profiles = io.read_table(args.profiles)
    logger.info("read %s (%d rows x %d columns)", args.profiles, len(profiles), profiles.shape[1])
    result = score_profiles(
        profiles,
        model,
        split,
        reference=reference,
        hit_q=float(novelty["hit_q"]),
        site_aggregate=novelty["site_aggregate"],
        exclude_pert_types=tuple(novelty["exclude_pert_types"]),
        min_calibration_wells=int(novelty["min_calibration_wells"]),
        batch_size=max(int(novelty["batch_size"]), 1024),
        source=str(args.profiles),
    )
    prov = io.provenance(
        "novelty",
        config_hash=io.config_hash(config),
        input=str(args.profiles),
        checkpoint=str(args.checkpoint),
        checkpoint_sha256=io.sha256_file(args.checkpoint),
        hit_q=float(novelty["hit_q"]),
        n_calibration=result.n_calibration,
        n_tested=result.n_tested,
        n_hits=result.n_hits,
    )
    io.write_parquet(result.novelty, args.out, provenance=prov)
    logger.info("wrote %s (%d wells, %d hits)", args.out, len(result.novelty), result.n_hits)
    if args.residuals:
        io.write_parquet(result.residuals, args.residuals, provenance=prov)
        logger.info("wrote %s (%d rows)", args.residuals, len(result.residuals))
    return 0
