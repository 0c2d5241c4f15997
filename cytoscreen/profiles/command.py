"""Aggregate, normalize, select and summarise profiles: cytoscreen profiles ACTION INPUT... OUTPUT.

Each action reads one or more tables (Parquet, CSV or TSV; several inputs are stacked, e.g. the
normalized tables of every plate), runs one operation and writes OUTPUT (.parquet with provenance,
.csv or .tsv).  Every row and Metadata_* column is kept (aggregate and consensus make one row per
group); features are the columns not starting with Metadata_ or QC_, written as float32.

  cytoscreen profiles aggregate  sites.parquet wells.parquet
  cytoscreen profiles normalize  wells.parquet normalized.parquet --method mad_robustize
  cytoscreen profiles select     P1/normalized.parquet P2/normalized.parquet feature_selected.parquet
  cytoscreen profiles consensus  feature_selected.parquet consensus.parquet --method modz

Options default to the `profiles:` section of --config (schema defaults without it); flags given on
the command line override the config.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cytoscreen.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

ACTIONS = ("aggregate", "normalize", "select", "consensus")
_EXPLICIT = "_profiles_explicit"

_REFERENCE_HELP = (
    "reference rows: 'negcon' = Metadata_pert_type == 'negcon'; a table without Metadata_pert_type "
    "or without negcon rows (e.g. the BBBC021 well table) uses the rows whose perturbation column "
    "(the first of "
    "Metadata_perturbation, Metadata_Compound, Metadata_compound, Metadata_pert_iname, "
    "Metadata_broad_sample, Metadata_Treatment, Metadata_treatment present) is DMSO, and without "
    "one it is an error asking for --reference-col/--reference-value; 'all' = every row; anything "
    "else is a pandas query, e.g. \"Metadata_Compound == 'DMSO'\""
)

_NORMALIZE_EPILOG = """\
reference rows:
  --reference negcon (default) uses Metadata_pert_type == "negcon".  When the table has no
  Metadata_pert_type column (or no row with negcon in it, which is logged as a warning), negcon
  means the DMSO rows (case-insensitive) of the first column present
  among Metadata_perturbation, Metadata_Compound, Metadata_compound, Metadata_pert_iname,
  Metadata_broad_sample, Metadata_Treatment, Metadata_treatment (the log names the rule used); if
  there is none the command stops and asks for --reference-col COLUMN --reference-value VALUE.
  --reference all normalizes against every well; any other value is a pandas query.
  Each plate (--by) needs --min-reference-wells reference rows, else the command stops naming it.
"""


def _schema_defaults() -> dict[str, Any]:
    from cytoscreen.config import load_schema

    props = load_schema("config")["properties"]["profiles"].get("properties", {})
    return {k: v.get("default") for k, v in props.items()}


class _Store(argparse.Action):
    """Store the value and remember that the option was given explicitly."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _mark(namespace, self.dest)


class _Bool(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark(namespace, self.dest)


def _mark(namespace: argparse.Namespace, dest: str) -> None:
    explicit = set(getattr(namespace, _EXPLICIT, set()))
    explicit.add(dest)
    setattr(namespace, _EXPLICIT, explicit)


def _float01(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


_METAVARS = {
    "reference": "REF", "reference_column": "COL", "reference_value": "VALUE",
    "select_samples": "ROWS", "min_reference_wells": "N", "modz_precision": "N",
}


def _option(parser, flag: str, key: str, defaults: Mapping[str, Any], help: str, **kw) -> None:
    """An option whose default is the schema default of ``profiles.<key>`` (dest = key)."""
    if "choices" not in kw and "metavar" not in kw:
        kw["metavar"] = _METAVARS.get(key, "X" if kw.get("type") in (float, _float01) else None)
    parser.add_argument(flag, dest=key, action=_Store, default=defaults.get(key), help=help, **kw)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cytoscreen.argparse_ import HelpFormatter, add_command
    from cytoscreen.profiles.aggregate import AGGREGATE_METHODS
    from cytoscreen.profiles.consensus import CONSENSUS_METHODS, MODZ_CORRELATIONS
    from cytoscreen.profiles.normalize import NORMALIZE_METHODS, SPHERIZE_METHODS
    from cytoscreen.profiles.select import CORRELATION_METHODS, SELECT_OPERATIONS

    d = _schema_defaults()
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
        p.set_defaults(func=run, action=name)
        return p

    def reference_options(p: argparse.ArgumentParser) -> None:
        _option(p, "--reference", "reference", d, _REFERENCE_HELP)
        _option(p, "--reference-col", "reference_column", d,
                "column naming the reference rows (with --reference-value; overrides --reference)")
        _option(p, "--reference-value", "reference_value", d,
                "value of --reference-col marking reference rows, e.g. DMSO")

    p = action("aggregate", "site (or cell) rows to wells: median or mean, QC-failed sites left out")
    _option(p, "--method", "aggregate_method", d, "statistic", choices=AGGREGATE_METHODS)
    _option(p, "--by", "aggregate_by", d, "group columns", nargs="*", metavar="COL")
    p.add_argument(
        "--exclude-qc-failed", dest="exclude_qc_failed", action=_Bool,
        default=d.get("exclude_qc_failed"),
        help="leave out sites with any QC_* flag set (counted in the log)",
    )
    p.add_argument(
        "--qc", default=None, metavar="QC_TABLE",
        help="qc.parquet whose QC_* flags are joined to the sites on plate/well/site when the "
        "input lacks them",
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
            "of the whole table ('none' = off)", choices=(*SPHERIZE_METHODS, "none"))
    _option(p, "--spherize-epsilon", "spherize_epsilon", d, "spherize regularizer", type=float)
    reference_options(p)
    p.add_argument("--selection", default=None, metavar="JSON",
                   help="apply the kept features of a saved <name>.selection.json instead of "
                   "selecting anew")
    p.add_argument("--per-plate-dir", default=None, metavar="DIR",
                   help="also write DIR/<plate>/<OUTPUT file name> for each Metadata_Plate")

    p = action("consensus", "one profile per treatment (perturbation x concentration)")
    _option(p, "--method", "consensus_method", d, "median or modz", choices=CONSENSUS_METHODS)
    _option(p, "--by", "consensus_by", d, "treatment columns", nargs="+", metavar="COL")
    _option(p, "--modz-method", "modz_method", d, "MODZ replicate correlation",
            choices=MODZ_CORRELATIONS)
    _option(p, "--modz-min-weight", "modz_min_weight", d, "smallest MODZ weight", type=float)
    _option(p, "--modz-precision", "modz_precision", d, "MODZ weight decimals", type=int)
    return parser


# --- run ------------------------------------------------------------------------------------------
def resolve_options(args: argparse.Namespace, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every ``profiles.*`` key: the flag when given, else the config value, else the default."""
    explicit = getattr(args, _EXPLICIT, set())
    section = dict((config or {}).get("profiles", {}) or {})
    out = {}
    for key, default in _schema_defaults().items():
        if key in explicit:
            out[key] = getattr(args, key)
        elif key in section:
            out[key] = section[key]
        else:
            out[key] = getattr(args, key, default)
    if out.get("spherize") == "none":
        out["spherize"] = None
    return out


def _suffix_ok(path: str) -> None:
    name = path.lower()
    if not name.endswith((".parquet", ".csv", ".tsv")):
        raise ConfigError(f"{path}: unknown table format; OUTPUT must end in .parquet, .csv or .tsv")


#: Feature columns decoded per read of a Parquet column chunk (bounds the read buffer).
_READ_COLUMNS = 64


def read_profiles(path: str | Path):
    """Read a profile table; Parquet features go straight into one float matrix.

    A Parquet file whose features are all float columns is read a few columns at a time into one
    preallocated float32 (float64 when any feature is float64) matrix, which the table then wraps
    without copying: peak memory is about the matrix itself instead of Arrow's buffers plus the
    pandas copy.  Other files go through :func:`cytoscreen.io.read_table`.
    """
    import numpy as np
    import pandas as pd

    from cytoscreen import io

    p = Path(path)
    if not p.name.lower().endswith((".parquet", ".pq")) or not p.exists():
        return io.read_table(p)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
        schema = pf.schema_arrow
        names = list(schema.names)
        feats = [n for n in names if not n.startswith((io.METADATA_PREFIX, io.QC_PREFIX))]
        types = [schema.field(n).type for n in feats]
        if not feats or not all(pa.types.is_floating(t) for t in types) or len(set(names)) < len(
            names
        ):
            return io.read_table(p)
        dtype = np.float32 if all(t == pa.float32() for t in types) else np.float64
        n_rows = pf.metadata.num_rows
        x = np.empty((n_rows, len(feats)), dtype=dtype)
        row = 0
        for g in range(pf.metadata.num_row_groups):
            k = pf.metadata.row_group(g).num_rows
            for j0 in range(0, len(feats), _READ_COLUMNS):
                chunk = pf.read_row_group(g, columns=feats[j0 : j0 + _READ_COLUMNS])
                x[row : row + k, j0 : j0 + chunk.num_columns] = np.column_stack(
                    [col.to_numpy().astype(dtype, copy=False) for col in chunk.columns]
                )
            row += k
        feat_set = set(feats)
        others = [n for n in names if n not in feat_set]
        meta = pf.read(columns=others).to_pandas() if others else pd.DataFrame(index=range(n_rows))
    except (OSError, ValueError, pa.ArrowException) as err:
        raise InputDataError(f"{p}: cannot read table ({err})") from err
    table = pd.concat(
        [meta.reset_index(drop=True), pd.DataFrame(x, columns=feats, copy=False)], axis=1
    )
    return table.loc[:, names]


def _read_inputs(paths: Sequence[str]):
    import pandas as pd

    from cytoscreen import io

    frames = []
    for path in paths:
        df = read_profiles(path)
        logger.info("read %s (%d rows x %d columns)", path, len(df), df.shape[1])
        frames.append(df)
    if len(frames) == 1:
        return frames[0]
    first = io.feature_columns(frames[0])
    for path, df in zip(paths[1:], frames[1:], strict=True):
        feats = io.feature_columns(df)
        if feats != first:
            extra = sorted(set(feats) ^ set(first))
            raise InputDataError(
                f"{path}: its feature columns differ from those of {paths[0]}"
                + (f" ({', '.join(map(str, extra[:5]))} ...)" if extra else " (order)")
                + "; stacked inputs must come from the same features stage"
            )
    return pd.concat(frames, ignore_index=True)


def _upstream(path: str) -> dict[str, Any] | None:
    from cytoscreen import io

    if not path.lower().endswith(".parquet"):
        return None
    try:
        return io.read_provenance(path) or None
    except Exception:  # a foreign Parquet file without our metadata
        return None


def _read_blocklist(path: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: blocklist file not found")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if lines and lines[0] == "blocklist":  # pycytominer's CSV with a 'blocklist' column
        lines = lines[1:]
    return [ln for ln in lines if not ln.startswith("#")]


def run(args: argparse.Namespace) -> int:
    from cytoscreen import io
    from cytoscreen.config import load_config

    inputs, output = list(args.inputs), args.output
    _suffix_ok(output)
    config = load_config(args.config) if args.config else None
    opts = resolve_options(args, config)
    table = _read_inputs(inputs)
    prov_extra = {
        "config_hash": io.config_hash(config),
        "inputs": list(inputs),
        "upstream": _upstream(inputs[0]),
    }
    handler = {
        "aggregate": _run_aggregate,
        "normalize": _run_normalize,
        "select": _run_select,
        "consensus": _run_consensus,
    }[args.action]
    out, params = handler(args, table, opts, output)
    prov = io.provenance(f"profiles.{args.action}", parameters=params, **prov_extra)
    io.write_table(out, output, **({"provenance": prov} if output.endswith(".parquet") else {}))
    logger.info(
        "wrote %s (%d rows x %d features)", output, len(out), len(io.feature_columns(out))
    )
    if args.action == "select" and args.per_plate_dir:
        _write_per_plate(out, output, args.per_plate_dir, prov)
    return 0


def _run_aggregate(args, table, opts, output):
    from cytoscreen import io
    from cytoscreen.profiles.aggregate import aggregate, join_qc

    if args.qc:
        table = join_qc(table, io.read_table(args.qc), source=args.qc)
    params = {
        "method": opts["aggregate_method"],
        "by": list(opts["aggregate_by"]),
        "exclude_qc_failed": bool(opts["exclude_qc_failed"]),
    }
    out = aggregate(table, **params, source=args.inputs[0])
    return out, params


def _reference_params(opts: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "reference": opts["reference"],
        "reference_column": opts["reference_column"],
        "reference_value": opts["reference_value"],
    }


def _run_normalize(args, table, opts, output):
    from cytoscreen.profiles.normalize import normalize

    params = {
        "method": opts["normalize_method"],
        "by": list(opts["normalize_by"]),
        **_reference_params(opts),
        "epsilon": opts["mad_robustize_epsilon"],
        "spherize_method": opts["spherize_method"],
        "spherize_epsilon": opts["spherize_epsilon"],
        "min_reference": opts["min_reference_wells"],
    }
    out = normalize(table, **params, source=args.inputs[0])
    return out, params


def _selection_paths(output: str) -> tuple[Path, Path]:
    base = Path(output)
    stem = base.name[: -len(base.suffix)] if base.suffix else base.name
    return base.with_name(f"{stem}.selection.json"), base.with_name(f"{stem}.selection.tsv")


def _run_select(args, table, opts, output):
    import json

    from cytoscreen import io
    from cytoscreen.profiles.normalize import spherize
    from cytoscreen.profiles.select import apply_selection, feature_select

    source = args.inputs[0] if len(args.inputs) == 1 else f"{len(args.inputs)} tables"
    json_path, tsv_path = _selection_paths(output)
    if args.selection:
        try:
            saved = json.loads(Path(args.selection).read_text(encoding="utf-8"))
            kept = list(saved["kept"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{args.selection}: not a selection record ({err})") from err
        out = apply_selection(table, kept, source=source)
        params: dict[str, Any] = {"selection": args.selection}
        record = {"applied_from": args.selection, "kept": kept}
    else:
        blocklist = list(opts["blocklist"] or [])
        if args.blocklist_file:
            blocklist += _read_blocklist(args.blocklist_file)
        params = {
            "operations": list(opts["select_operations"]),
            "samples": opts["select_samples"],
            "freq_cut": opts["freq_cut"],
            "unique_cut": opts["unique_cut"],
            "corr_threshold": opts["corr_threshold"],
            "corr_method": opts["corr_method"],
            "na_cutoff": opts["na_cutoff"],
            "outlier_cutoff": opts["outlier_cutoff"],
            "blocklist": blocklist,
        }
        selection = feature_select(table, **params, source=source)
        out = selection.profiles
        record = selection.record()
        io.write_table(selection.table(), tsv_path)
    if opts["spherize"]:
        sph = {
            "method": opts["spherize"],
            **_reference_params(opts),
            "epsilon": opts["spherize_epsilon"],
        }
        out = spherize(out, **sph, source=source)
        params["spherize"] = sph
        record["spherize"] = sph
    io.write_json(record, json_path)
    logger.info("wrote %s", json_path)
    return out, params


def _write_per_plate(out, output: str, folder: str, prov: Mapping[str, Any]) -> None:
    from cytoscreen import io

    if io.PLATE not in out.columns:
        raise InputDataError(f"--per-plate-dir needs a {io.PLATE} column")
    name = Path(output).name
    for plate, rows in out.groupby(io.PLATE, sort=False):
        plate = str(plate)
        if not plate or "/" in plate or plate in (".", ".."):
            raise InputDataError(f"plate name {plate!r} cannot be a folder name")
        path = Path(folder) / plate / name
        io.write_table(
            rows.reset_index(drop=True), path,
            **({"provenance": {**prov, "plate": plate}} if name.endswith(".parquet") else {}),
        )
        logger.info("wrote %s (%d rows)", path, len(rows))


def _run_consensus(args, table, opts, output):
    from cytoscreen.profiles.consensus import consensus

    params = {
        "method": opts["consensus_method"],
        "by": list(opts["consensus_by"]),
        "modz_method": opts["modz_method"],
        "modz_min_weight": opts["modz_min_weight"],
        "modz_precision": opts["modz_precision"],
    }
    out = consensus(table, **params, source=args.inputs[0])
    return out, params
