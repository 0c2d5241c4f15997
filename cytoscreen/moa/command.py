"""The MoA stage's commands: ``cytoscreen moa`` (the screen's MoA stage) and ``cytoscreen evaluate``.

moa: Cluster, embed and evaluate the treatments of a screen: moa.parquet and evaluation.json.
evaluate: Benchmark metrics of a well-level profile table: NSC, NSCB, replicate and MoA mAP.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cytoscreen import io
from cytoscreen.argparse_ import add_command

logger = logging.getLogger(__name__)

MOA_DOC = """Cluster, embed and evaluate the treatments of a screen: moa.parquet and evaluation.json.

Settings come from the config's moa: section.  With moa.representation: profiles (default) the
treatment profiles are --consensus (else the median of the --profiles wells by perturbation and
concentration); with residuals they are the median of the --residuals wells (the novelty stage's
reconstruction residuals).  moa.parquet has one row per treatment with Metadata_Cluster,
Metadata_UMAP_1/2 and the nearest neighbours; evaluation.json has what `cytoscreen evaluate`
reports for the same wells (NSC, NSCB, replicate and MoA mAP) plus the clusters' agreement with
Metadata_moa (ARI, purity) when the platemaps name MoAs.

Example:
  cytoscreen moa --config config/config.yaml --profiles results/screen/feature_selected.parquet \\
      --consensus results/screen/consensus.parquet --out results/screen/moa.parquet \\
      --evaluation results/screen/evaluation.json
"""

EVALUATE_DOC = """Benchmark metrics of a well-level profile table: NSC, NSCB, replicate and MoA mAP.

Reads a CSV, TSV or Parquet table with one row per well, forms treatments (compound x dose, the
median of their wells unless --consensus gives treatment profiles), and writes evaluation.json
with the keys nsc, nscb, map_replicate, percent_replicating, map_moa, cluster_ari and the details
behind them (treatment and batch definitions, dropped MoAs, per-MoA accuracy, mAP p- and q-values,
the percent-replicating null thresholds).  A short table goes to stdout, logs to stderr.  Profiles
are evaluated as given (no normalization).  A MoA label "a|b" names several MoAs: two treatments
share a MoA when their label sets intersect.

Negative controls: wells whose --pert-type-col is "negcon" when that column exists and has any,
else wells whose compound is one of --negcon (case-insensitive).  They are not queried.

NSCB batches: --batch-col, optionally mapped by --batch-regex (first capture group), e.g. for
BBBC021 weeks: --batch-col Metadata_Plate --batch-regex '^(Week\\d+)'.  MoAs that cannot be scored
(no same-MoA treatment of another compound, or another batch for NSCB) are dropped and listed.

Example:
  cytoscreen evaluate wells.parquet --moa-col Metadata_moa --compound-col Metadata_Compound \\
      --dose-col Metadata_Concentration --batch-col Metadata_Plate --out evaluation.json
"""

NONE = "none"
AUTO = "auto"


def add_parser(subparsers) -> None:
    """Register ``moa`` and ``evaluate``."""
    add_moa_parser(subparsers)
    add_evaluate_parser(subparsers)


def add_moa_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, "moa", MOA_DOC)
    parser.add_argument("--config", default=None, help="workflow config (YAML); moa: section")
    parser.add_argument(
        "--profiles",
        default=None,
        help="well-level profiles of all plates (needed with moa.representation: profiles)",
    )
    parser.add_argument("--consensus", default=None, help="treatment-level consensus profiles (optional)")
    parser.add_argument(
        "--residuals",
        nargs="?",
        default=None,
        help="well-level novelty residuals (needed with moa.representation: residuals; the workflow "
        "passes the option without a value otherwise)",
    )
    parser.add_argument("--out", required=True, help="moa.parquet to write")
    parser.add_argument("--evaluation", required=True, help="evaluation.json to write")
    parser.set_defaults(func=run_moa)
    return parser


def run_moa(args: argparse.Namespace) -> int:
    """``cytoscreen moa``: one :func:`cytoscreen.moa.stage.run_moa` call."""
    from cytoscreen.config import load_config
    from cytoscreen.moa import stage

    config = load_config(args.config)
    stage.run_moa(
        stage.MoaSettings.from_config(config["moa"]),
        out=args.out, evaluation=args.evaluation, profiles=args.profiles,
        consensus=args.consensus, residuals=args.residuals,
        config_hash=io.config_hash(config), config_source=args.config,
    )
    return 0


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, "evaluate", EVALUATE_DOC)
    parser.add_argument("table", help="well-level profile table (.parquet, .csv, .tsv; gzip ok)")
    parser.add_argument("--out", required=True, help="evaluation JSON to write")
    parser.add_argument(
        "--consensus",
        default=None,
        help="optional treatment-level profiles (one row per compound x dose, same features) "
        "used instead of the median of the wells for NSC, NSCB and MoA mAP",
    )
    parser.add_argument("--compound-col", default=io.PERTURBATION, help="compound column")
    parser.add_argument(
        "--dose-col",
        default=AUTO,
        help=f"dose column; '{AUTO}': {io.CONCENTRATION} if the table has it; '{NONE}': a treatment is a compound",
    )
    parser.add_argument(
        "--moa-col",
        default=AUTO,
        help=f"MoA column; '{AUTO}': {io.MOA} if the table has it; '{NONE}': replicate mAP only",
    )
    parser.add_argument(
        "--batch-col",
        default=AUTO,
        help=f"batch column for NSCB; '{AUTO}': {io.BATCH} if the table has it; '{NONE}': no NSCB",
    )
    parser.add_argument(
        "--batch-regex",
        default=None,
        help="regex applied to the batch column; the batch is its first capture group "
        "(e.g. '^(Week\\d+)' maps Week4_27481 to Week4)",
    )
    parser.add_argument(
        "--pert-type-col",
        default=io.PERT_TYPE,
        help="pert-type column; its 'negcon' wells are the negative controls when present",
    )
    parser.add_argument(
        "--negcon",
        nargs="+",
        default=["DMSO"],
        metavar="NAME",
        help="compound name(s) of negative controls, used when the pert-type column is absent or has no negcon rows",
    )
    parser.add_argument("--null-size", type=int, default=10000, help="random rankings in each mAP null")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mAP null")
    parser.add_argument("--fdr", type=float, default=0.05, help="q-value threshold")
    parser.add_argument("--no-cluster", action="store_true", help="skip the clustering ARI (faster on big tables)")
    parser.set_defaults(func=run_evaluate)
    return parser


def _opt(value: str, default: str, columns) -> str | None:
    """An explicit column name, None for 'none', or for 'auto' the default column if present."""
    if value.lower() == AUTO:
        if default in columns:
            return default
        logger.info("no %s column: the metrics that need it are skipped", default)
        return None
    return None if value.lower() == NONE else value


def run_evaluate(args: argparse.Namespace) -> int:
    """``cytoscreen evaluate``: metrics of one well table, evaluation.json and a table on stdout."""
    from cytoscreen.errors import ConfigError
    from cytoscreen.moa.evaluate import evaluate_profiles, format_summary

    if args.null_size < 1:
        raise ConfigError(f"--null-size must be at least 1, got {args.null_size}")
    if not 0 < args.fdr < 1:
        raise ConfigError(f"--fdr must lie between 0 and 1, got {args.fdr}")
    wells = io.read_table(args.table)
    logger.info("read %s (%d rows x %d columns)", args.table, len(wells), wells.shape[1])
    consensus = io.read_table(args.consensus) if args.consensus else None
    result = evaluate_profiles(
        wells,
        compound_col=args.compound_col,
        dose_col=_opt(args.dose_col, io.CONCENTRATION, wells.columns),
        moa_col=_opt(args.moa_col, io.MOA, wells.columns),
        batch_col=_opt(args.batch_col, io.BATCH, wells.columns),
        batch_regex=args.batch_regex,
        pert_type_col=None if args.pert_type_col.lower() == NONE else args.pert_type_col,
        negcon=tuple(args.negcon),
        treatments=consensus,
        null_size=args.null_size,
        seed=args.seed,
        fdr=args.fdr,
        cluster=not args.no_cluster,
        source=str(args.table),
    )
    summary = {"input": str(args.table), **result.summary}
    if args.consensus:
        summary["consensus_input"] = str(args.consensus)
    io.write_json(summary, args.out)
    logger.info("wrote %s", args.out)
    sys.stdout.write(format_summary(result.summary) + "\n")
    return 0
