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
import shutil
from pathlib import Path

from cytoscreen import io

logger = logging.getLogger(__name__)

TRAIN_DOC = """Train the cross-fitted novelty autoencoders on the control wells of a profile table.

Control wells (novelty.reference, negcon by default) are dealt by well into novelty.folds folds
(seeded, stratified by plate); model k trains on the controls outside fold k (early stopping on a
few of them) and later scores fold k's controls out of sample, so the null of the p-values uses
every control well. The checkpoint (one file, written atomically) stores every model and the folds.
With fewer than 3 control wells it warns and stores no model (scores are then NaN, no hits).
Trainer settings (accelerator, devices, strategy, num_nodes, precision, max_epochs, ...) come from
novelty.trainer; with devices > 1 Lightning starts the DDP processes itself.
"""

SCORE_DOC = """Score every well: out-of-sample reconstruction error, p-value, BH q-value, hit call, plate z.

Writes one row per well with its metadata and Metadata_Novelty_Score, _PValue, _QValue, _Hit,
_Split (crossfit for the control wells, none otherwise), _RobustZ (robust z of the log score
against the plate's control wells) and _PlateZPrime (Z' of the plate, poscon vs negcon);
optionally the per-feature residuals (reconstruction - input) of every input row.
"""


def _threads_flag(parser: argparse.ArgumentParser) -> None:
    from cytoscreen.argparse_ import add_override, section_schema

    add_override(parser, "--threads", "threads", "torch CPU threads per process (0: torch's default)",
                 schema=section_schema("novelty"), section="novelty", type=int)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cytoscreen.argparse_ import add_command

    p = add_command(subparsers, "novelty", __doc__)
    actions = p.add_subparsers(dest="novelty_action", metavar="<action>", required=True)

    t = add_command(actions, "train", TRAIN_DOC)
    t.add_argument("profiles", help="profile table (parquet/csv/tsv), e.g. results/screen/feature_selected.parquet")
    t.add_argument("--config", help="workflow config YAML (novelty: section; schema defaults without it)")
    t.add_argument("--out", required=True, help="output checkpoint, e.g. results/screen/novelty/model.ckpt")
    _threads_flag(t)
    t.set_defaults(func=run)

    s = add_command(actions, "score", SCORE_DOC)
    s.add_argument("profiles", help="profile table with the checkpoint's feature columns")
    s.add_argument("--checkpoint", required=True, help="checkpoint from `cytoscreen novelty train`")
    s.add_argument("--config", help="workflow config YAML (novelty: section; schema defaults without it)")
    s.add_argument("--out", required=True, help="output novelty.parquet (one row per well)")
    s.add_argument("--residuals", help="also write residuals.parquet (reconstruction - input per row)")
    _threads_flag(s)
    s.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the chosen action (``train`` or ``score``)."""
    return {"train": run_train, "score": run_score}[args.novelty_action](args)


def _settings(args: argparse.Namespace):
    """The validated config (override flags applied) and its novelty settings; sets torch threads."""
    from cytoscreen.argparse_ import load_config_with_overrides
    from cytoscreen.novelty.settings import NoveltySettings

    config = load_config_with_overrides(args, "novelty")
    settings = NoveltySettings.from_config(config["novelty"])
    if settings.threads > 0:
        import torch

        torch.set_num_threads(settings.threads)
    return config, settings


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
    from cytoscreen.novelty.model import save_checkpoint
    from cytoscreen.novelty.train import is_rank_zero_process, train

    config, settings = _settings(args)
    out = Path(args.out)
    work = work_dir(out)
    if is_rank_zero_process():
        # only one process touches the output folder; Lightning starts the other DDP ranks
        # inside fit(), and they rerun this command with their rank in the environment
        _prepare_work_dir(work)
        shutil.rmtree(metrics_dir(out), ignore_errors=True)
    if _stream(args.profiles, settings.streaming):
        profiles = _control_rows(args.profiles, settings.reference)
    else:
        profiles = io.read_table(args.profiles)
        logger.info("read %s (%d rows x %d columns)", args.profiles, len(profiles), profiles.shape[1])
    prov = io.provenance(
        "novelty", config_hash=io.config_hash(config), input=str(args.profiles)
    )
    try:
        result = train(
            profiles,
            settings=settings,
            root_dir=work,
            log_dir=metrics_dir(out),
            source=str(args.profiles),
            provenance=prov,
        )
    except BaseException:
        if is_rank_zero_process() and not any(work.glob("**/hpc_ckpt_*.ckpt")):
            shutil.rmtree(work, ignore_errors=True)  # keep a SLURM requeue checkpoint only
        raise
    if not result.is_global_zero:
        return 0
    save_checkpoint(result.crossfit, out, provenance=prov)  # temp file + rename: atomic
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(work)
    folds = result.folds
    logger.info(
        "wrote %s (%d cross-fitted model(s) over %d control wells; metrics in %s)",
        out, len(folds), len(folds.controls), metrics_dir(out),
    )
    return 0


def run_score(args: argparse.Namespace) -> int:
    from cytoscreen.novelty.model import load_checkpoint
    from cytoscreen.novelty.score import score_profiles

    config, settings = _settings(args)
    crossfit, _ = load_checkpoint(args.checkpoint)
    if crossfit.reference != settings.reference:
        logger.warning(
            "%s: trained with reference %r, config says %r; using the checkpoint's",
            args.checkpoint, crossfit.reference, settings.reference,
        )
    options = {
        "hit_q": settings.hit_q,
        "site_aggregate": settings.site_aggregate,
        "exclude_pert_types": settings.exclude_pert_types,
        "pvalue": settings.pvalue,
        "conformal_min_controls": settings.conformal_min_controls,
        "batch_size": max(settings.batch_size, 1024),
        "source": str(args.profiles),
    }
    if _stream(args.profiles, settings.streaming):
        return _score_streamed(args, crossfit, options, config)
    profiles = io.read_table(args.profiles)
    logger.info("read %s (%d rows x %d columns)", args.profiles, len(profiles), profiles.shape[1])
    result = score_profiles(profiles, crossfit, **options)
    _write_scores(args, result, config, settings.hit_q, residuals=True)
    return 0


def _stream(path, mode: str) -> bool:
    """Whether ``novelty.streaming`` (``mode``) streams the scoring of ``path`` plate by plate."""
    from cytoscreen.errors import ConfigError
    from cytoscreen.io.stream import STREAM_ABOVE_ROWS, parquet_rows, plates_contiguous

    if mode == "never":
        return False
    rows = parquet_rows(path)
    if rows is None:
        if mode == "always":
            raise ConfigError(f"{path}: novelty.streaming always needs a Parquet profile table")
        return False
    if mode == "auto" and rows <= STREAM_ABOVE_ROWS:
        return False
    if mode == "auto" and not plates_contiguous(path):
        logger.info("%s: %d rows, but the plates' rows are not together: scoring in memory", path, rows)
        return False
    logger.info("%s: %d rows: scoring streamed plate by plate (novelty.streaming %s)", path, rows, mode)
    return True


def _control_rows(path, reference: str):
    """The control rows of a profile table, read plate by plate (training uses nothing else: the
    folds, the models and the early stopping are the same as from the whole table)."""
    import pandas as pd

    from cytoscreen.io.stream import plate_tables
    from cytoscreen.novelty.data import reference_rows

    parts, n = [], 0
    for _, df in plate_tables(path):
        n += len(df)
        parts.append(df.loc[reference_rows(df, reference)])
    controls = pd.concat(parts, ignore_index=True)
    logger.info("read %s plate by plate: %d %s rows of %d", path, len(controls), reference, n)
    return controls


def _score_streamed(args, crossfit, options, config) -> int:
    from cytoscreen.io.stream import ParquetStream, plate_tables
    from cytoscreen.novelty.stream import score_plates

    prov = _provenance(args, config)
    if args.residuals:
        with ParquetStream(args.residuals, provenance=prov) as out:
            result = score_plates(plate_tables(args.profiles), crossfit, residuals=out.write, **options)
        logger.info("wrote %s (%d rows, streamed)", args.residuals, out.rows)
    else:
        result = score_plates(plate_tables(args.profiles), crossfit, **options)
    _write_scores(args, result, config, options["hit_q"], residuals=False)
    return 0


def _provenance(args, config, **extra):
    return io.provenance(
        "novelty",
        config_hash=io.config_hash(config),
        input=str(args.profiles),
        checkpoint=str(args.checkpoint),
        checkpoint_sha256=io.sha256_file(args.checkpoint),
        **extra,
    )


def _write_scores(args, result, config, hit_q: float, *, residuals: bool) -> None:
    """Write novelty.parquet (and, unless streamed already, the residuals) with provenance."""
    prov = _provenance(
        args, config,
        hit_q=hit_q,
        pvalue_method=result.pvalue_method,
        n_controls=result.n_controls,
        n_tested=result.n_tested,
        n_hits=result.n_hits,
        zprime_by_plate={p: (None if z != z else round(z, 4)) for p, z in result.zprime.items()},
        poscon_zprime_by_plate={
            p: (None if z != z else round(z, 4)) for p, z in result.poscon_zprime.items()
        },
    )
    io.write_parquet(result.novelty, args.out, provenance=prov)
    logger.info("wrote %s (%d wells, %d hits)", args.out, len(result.novelty), result.n_hits)
    if args.residuals and residuals:
        io.write_parquet(result.residuals, args.residuals, provenance=prov)
        logger.info("wrote %s (%d rows)", args.residuals, len(result.residuals))
