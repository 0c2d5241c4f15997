"""Aggregate, normalize, select and summarise profiles: cytoscreen profiles ACTION INPUT... OUTPUT.

Each action reads one or more tables (Parquet, CSV or TSV; several inputs are stacked, e.g. the
normalized tables of every plate), runs one operation and writes OUTPUT (.parquet with provenance,
.csv or .tsv).  Every row and Metadata_* column is kept (aggregate and consensus make one row per
group); features are the columns not starting with Metadata_ or QC_, written as float32.

  cytoscreen profiles aggregate  sites.parquet wells.parquet
  cytoscreen profiles normalize  wells.parquet normalized.parquet --method mad_robustize
  cytoscreen profiles select     P1/normalized.parquet P2/normalized.parquet feature_selected.parquet
  cytoscreen profiles consensus  feature_selected.parquet consensus.parquet --method modz
  cytoscreen profiles pca        feature_selected.parquet pcs.parquet --pca-components 0.99
  cytoscreen profiles harmony    pcs.parquet corrected.parquet --harmony-batch Metadata_Plate

asinh, spherize, pca and harmony also run inside select (profiles.asinh, spherize,
pca_components, harmony).

Options default to the `profiles:` section of --config (schema defaults without it); flags given on
the command line override the config.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

from cytoscreen.argparse_ import add_override

logger = logging.getLogger(__name__)

_REFERENCE_HELP = (
    "reference rows: 'negcon' = Metadata_pert_type == 'negcon' (stripped, case-insensitive); a "
    "table without Metadata_pert_type "
    "or without negcon rows (e.g. the BBBC021 well table) uses the rows whose perturbation column "
    "(the first of "
    "Metadata_perturbation, Metadata_Compound, Metadata_compound, Metadata_pert_iname, "
    "Metadata_broad_sample, Metadata_Treatment, Metadata_treatment present) is DMSO, and without "
    "one it is an error asking for --reference-col/--reference-value; 'all' = every row; anything "
    "else is a pandas query, e.g. \"Metadata_Compound == 'DMSO'\""
)

_NORMALIZE_EPILOG = """\
reference rows:
  --reference negcon (default) uses Metadata_pert_type == "negcon" (stripped, case-insensitive;
  cytoscreen.plate.negcon_rule).  When the table has no
  Metadata_pert_type column (or no row with negcon in it, which is logged as a warning), negcon
  means the DMSO rows (case-insensitive) of the first column present
  among Metadata_perturbation, Metadata_Compound, Metadata_compound, Metadata_pert_iname,
  Metadata_broad_sample, Metadata_Treatment, Metadata_treatment (the log names the rule used); if
  there is none the command stops and asks for --reference-col COLUMN --reference-value VALUE.
  --reference all normalizes against every well; any other value is a pandas query.
  Each plate (--by) needs --min-reference-wells reference rows, else the command stops naming it.
"""


def _float01(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


_METAVARS = {
    "reference": "REF", "reference_column": "COL", "reference_value": "VALUE",
    "select_samples": "ROWS", "min_reference_wells": "N", "modz_precision": "N",
}


def _option(parser, flag: str, key: str, schema: Mapping[str, Any], help: str, **kw) -> None:
    """An option overriding ``profiles.<key>`` (dest = key, default = its schema default)."""
    if "choices" not in kw and "metavar" not in kw:
        kw["metavar"] = _METAVARS.get(key, "X" if kw.get("type") in (float, _float01) else None)
    add_override(parser, flag, key, help, schema=schema, **kw)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cytoscreen.argparse_ import HelpFormatter, add_command, section_schema
    from cytoscreen.profiles.aggregate import AGGREGATE_METHODS
    from cytoscreen.profiles.consensus import CONSENSUS_METHODS, MODZ_CORRELATIONS
    from cytoscreen.profiles.normalize import NORMALIZE_METHODS, NORMALIZE_SCALES, SPHERIZE_METHODS
    from cytoscreen.profiles.select import CORRELATION_METHODS, SELECT_OPERATIONS
    from cytoscreen.profiles.sphering import CENTERS, REGULARIZATIONS

    d = section_schema("profiles")
    parser = add_command(subparsers, "profiles", __doc__)
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)

    def action(name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
        p = actions.add_parser(
            name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter
        )
        p.add_argument(
            "inputs", nargs="+", metavar="INPUT",
            help="input table(s): .parquet, .csv or .tsv; several are stacked (same features)",
        )
        p.add_argument("output", metavar="OUTPUT", help="output table: .parquet, .csv or .tsv")
        p.add_argument(
            "--config", default=None,
            help="workflow config; its profiles section gives the defaults of every option",
        )
        p.add_argument(
            "--chain", choices=CHAINS, default="hits",
            help="hits: the profiles keys (the hit-calling table novelty reads); moa: the same with "
            "the keys of profiles.moa in their place (the MoA table consensus and moa read)",
        )
        p.set_defaults(func=run, action=name, startup_imports=STARTUP_IMPORTS)
        return p

    def reference_options(p: argparse.ArgumentParser) -> None:
        _option(p, "--reference", "reference", d, _REFERENCE_HELP)
        _option(p, "--reference-col", "reference_column", d,
                "column naming the reference rows (with --reference-value; overrides --reference)")
        _option(p, "--reference-value", "reference_value", d,
                "value of --reference-col marking reference rows, e.g. DMSO")

    def transform_options(p: argparse.ArgumentParser) -> None:  # profiles/transforms.py
        _option(p, "--asinh", "asinh", d, "arcsinh of every feature after selection, before "
                "spherize", type=bool, metavar=None)
        _option(p, "--spherize-regularization", "spherize_regularization", d,
                "spherize regularization (singular: pycytominer; shrinkage: relative ridge)",
                choices=REGULARIZATIONS)
        _option(p, "--spherize-center", "spherize_center", d, "apply the whitening about the "
                "reference mean (pycytominer) or about the normalization's centre", choices=CENTERS)
        _option(p, "--spherize-reference", "spherize_reference", d, "rows spherize is fitted on "
                "(negcon, all or a query; 'none' = --reference)", null="none")
        _option(p, "--pca-components", "pca_components", d, "PCA after selection (and spherize): "
                "a count, or a variance fraction below 1 ('none' = off)", type=float, null="none")
        _option(p, "--pca-reference", "pca_reference", d, "rows PCA is fitted on: all or negcon")
        _option(p, "--harmony", "harmony", d, "Harmony batch correction after spherize and PCA "
                "(needs harmonypy)", type=bool, metavar=None)
        harmony_options(p)

    def harmony_options(p: argparse.ArgumentParser) -> None:
        _option(p, "--harmony-batch", "harmony_batch", d, "batch column(s) Harmony mixes",
                nargs="+", metavar="COL")
        _option(p, "--harmony-theta", "harmony_theta", d, "Harmony diversity penalty", type=float)
        _option(p, "--harmony-sigma", "harmony_sigma", d, "Harmony clustering bandwidth",
                type=float)
        _option(p, "--harmony-clusters", "harmony_clusters", d, "Harmony clusters ('none' = "
                "min(rows / 30, 100))", type=int, null="none")
        _option(p, "--harmony-max-iter", "harmony_max_iter", d, "most Harmony iterations", type=int)

    p = action("aggregate", "site (or cell) rows to wells: median or mean, QC-failed sites left out")
    _option(p, "--method", "aggregate_method", d, "statistic", choices=AGGREGATE_METHODS)
    _option(p, "--by", "aggregate_by", d, "group columns", nargs="*", metavar="COL")
    _option(p, "--exclude-qc-failed", "exclude_qc_failed", d,
            "leave out sites with any QC_* flag set (counted in the log)", type=bool, metavar=None)
    p.add_argument(
        "--qc", default=None, metavar="QC_TABLE",
        help="qc.parquet whose QC_* flags are joined to the sites on plate/well/site when the "
        "input lacks them",
    )
    p.add_argument(
        "--normalized", default=None, metavar="NORMALIZED",
        help="also normalize the wells with the normalize settings of --config (profiles.normalize_*, "
        "reference*) and write them here: the same table as `profiles normalize OUTPUT NORMALIZED`, "
        "in one process (the workflow's per-plate step)",
    )

    p = action(
        "normalize", "normalize per plate against reference wells (pycytominer's methods)",
        _NORMALIZE_EPILOG,
    )
    _option(p, "--method", "normalize_method", d, "normalization", choices=NORMALIZE_METHODS)
    _option(p, "--by", "normalize_by", d, "group columns, each normalized on its own; no COL = "
            "whole table", nargs="*", metavar="COL")
    reference_options(p)
    _option(p, "--min-reference-wells", "min_reference_wells", d,
            "fewest reference rows per group", type=int)
    _option(p, "--scale", "normalize_scale", d, "plate: each plate's own scale; screen: centre "
            "only, select then divides by the reference spread of the whole screen",
            choices=NORMALIZE_SCALES)
    _option(p, "--epsilon", "mad_robustize_epsilon", d,
            "added to 1.4826*MAD by mad_robustize", type=float)
    _option(p, "--spherize-method", "spherize_method", d, "for --method spherize",
            choices=SPHERIZE_METHODS)
    _option(p, "--spherize-epsilon", "spherize_epsilon", d, "spherize regularizer", type=float)

    p = action(
        "select",
        "feature selection over the whole table (give every plate's table for one column set); "
        "writes OUTPUT's kept/dropped record beside it as <name>.selection.json and .tsv",
    )
    _option(p, "--operations", "select_operations", d,
            f"operations, applied in order; from {', '.join(SELECT_OPERATIONS)}",
            nargs="+", choices=SELECT_OPERATIONS, metavar="OP")
    _option(p, "--samples", "select_samples", d,
            "rows the statistics use: all, negcon or a pandas query")
    _option(p, "--freq-cut", "freq_cut", d, "variance_threshold frequency ratio cut", type=_float01)
    _option(p, "--unique-cut", "unique_cut", d, "variance_threshold unique ratio cut",
            type=_float01)
    _option(p, "--corr-threshold", "corr_threshold", d, "correlation_threshold cut",
            type=_float01)
    _option(p, "--corr-method", "corr_method", d, "correlation", choices=CORRELATION_METHODS)
    _option(p, "--na-cutoff", "na_cutoff", d, "drop_na_columns missing fraction cut",
            type=_float01)
    _option(p, "--outlier-cutoff", "outlier_cutoff", d, "drop_outliers absolute value cut",
            type=float)
    _option(p, "--blocklist", "blocklist", d, "features (or shell patterns) the blocklist "
            "operation drops", nargs="*", metavar="NAME")
    p.add_argument("--blocklist-file", default=None, metavar="FILE",
                   help="more blocklist names, one per line (or a CSV with a 'blocklist' column)")
    _option(p, "--spherize", "spherize", d, "whiten the selected features on the reference rows "
            "of the whole table ('none' = off)", choices=(*SPHERIZE_METHODS, "none"), null="none")
    _option(p, "--spherize-epsilon", "spherize_epsilon", d, "spherize regularizer", type=float)
    transform_options(p)
    reference_options(p)
    p.add_argument("--selection", default=None, metavar="JSON",
                   help="apply the kept features of a saved <name>.selection.json instead of "
                   "selecting anew")
    p.add_argument("--untransformed", default=None, metavar="TABLE",
                   help="also write the table before spherize, PCA and Harmony (after asinh), e.g. "
                   "for novelty scoring, whose controls must not be those the sphering was fitted on")
    p.add_argument("--per-plate-dir", default=None, metavar="DIR",
                   help="also write DIR/<plate>/<OUTPUT file name> for each Metadata_Plate")
    _option(p, "--streaming", "streaming", d, "read the inputs plate by plate instead of stacking "
            "them: always, never, or auto (above 100,000 rows; see profiles/stream_stage.py)",
            choices=("auto", "always", "never"))

    p = action("consensus", "one profile per treatment (perturbation x concentration)")
    _option(p, "--method", "consensus_method", d, "median or modz", choices=CONSENSUS_METHODS)
    _option(p, "--by", "consensus_by", d, "treatment columns", nargs="+", metavar="COL")
    _option(p, "--modz-method", "modz_method", d, "MODZ replicate correlation",
            choices=MODZ_CORRELATIONS)
    _option(p, "--modz-min-weight", "modz_min_weight", d, "smallest MODZ weight", type=float)
    _option(p, "--modz-precision", "modz_precision", d, "MODZ weight decimals", type=int)
    _option(p, "--streaming", "streaming", d, "read the input a batch of rows at a time into "
            "treatment buckets: always, never, or auto (above 100,000 rows)",
            choices=("auto", "always", "never"))

    # the transforms that select runs after selection, one at a time (fits saved beside OUTPUT)
    p = action("spherize", "whiten every row with a transform fitted on the reference rows of "
               "the whole table (TVN); writes <name>.spherize.json and .parquet beside OUTPUT")
    _option(p, "--method", "spherize_method", d, "whitening variant", choices=SPHERIZE_METHODS)
    _option(p, "--spherize-epsilon", "spherize_epsilon", d, "spherize regularizer", type=float)
    _option(p, "--spherize-regularization", "spherize_regularization", d,
            "singular (pycytominer) or shrinkage (relative ridge)", choices=REGULARIZATIONS)
    _option(p, "--spherize-center", "spherize_center", d, "apply the whitening about the "
            "reference mean (pycytominer) or about the normalization's centre", choices=CENTERS)
    reference_options(p)
    action("asinh", "arcsinh of every feature (no fit); writes <name>.asinh.json beside OUTPUT")
    p = action("pca", "principal components of every row, fitted on --pca-reference rows; "
               "writes <name>.pca.json and .parquet beside OUTPUT")
    _option(p, "--pca-components", "pca_components", d, "a count, or a variance fraction below 1 "
            "('none' = every component)", type=float, null="none")
    _option(p, "--pca-reference", "pca_reference", d, "rows PCA is fitted on: all or negcon")
    reference_options(p)
    p = action("harmony", "Harmony batch correction across --harmony-batch (needs harmonypy); "
               "writes <name>.harmony.json and .parquet beside OUTPUT")
    harmony_options(p)
    return parser


# --- run ------------------------------------------------------------------------------------------
#: What every step imports before it reads its input (pandas, pyarrow.parquet, the config
#: loader): imported by :mod:`cytoscreen.cli` with its start-up, before :func:`run`.
STARTUP_IMPORTS = ("cytoscreen.profiles.stage", "cytoscreen.config", "pyarrow.parquet")
#: ``--chain``: the hit-calling table's keys, or those with ``profiles.moa`` in their place.
CHAINS = ("hits", "moa")


def chain_settings(
    section: Mapping[str, Any], chain: str, flags: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``profiles:`` settings of one branch: ``hits`` is the section itself; ``moa`` puts the
    keys of ``section["moa"]`` in place of the section's (keys it lacks keep the section's).  Flags
    given on the command line (``flags``) win over both."""
    if chain not in CHAINS:
        raise ValueError(f"unknown profiles chain {chain!r}; choose from {', '.join(CHAINS)}")
    out = {k: v for k, v in section.items() if k != "moa"}
    if chain == "moa":
        out.update(section.get("moa") or {})
    out.update(flags or {})
    return out


def run(args: argparse.Namespace) -> int:
    """Resolve the ``profiles:`` settings (flag > --config > schema default) and run the step."""
    from cytoscreen import io
    from cytoscreen.argparse_ import given_overrides, load_config_with_overrides
    from cytoscreen.profiles.stage import run_step

    config = load_config_with_overrides(args, "profiles")
    run_step(
        args.action, args.inputs, args.output,
        chain_settings(config["profiles"], getattr(args, "chain", "hits"), given_overrides(args)),
        qc=getattr(args, "qc", None), blocklist_file=getattr(args, "blocklist_file", None),
        selection=getattr(args, "selection", None), per_plate_dir=getattr(args, "per_plate_dir", None),
        untransformed=getattr(args, "untransformed", None), normalized=getattr(args, "normalized", None),
        config_hash=io.config_hash(config if args.config else None),
    )
    return 0
