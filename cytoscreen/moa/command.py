"""Cluster, embed and evaluate the treatments of a screen: moa.parquet and evaluation.json.

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

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from cytoscreen.argparse_ import add_command

    parser = add_command(subparsers, "moa", __doc__)
    parser.add_argument("--config", default=None, help="workflow config (YAML); moa: section")
    parser.add_argument(
        "--profiles",
        default=None,
        help="well-level profiles of all plates (needed with moa.representation: profiles)",
    )
    parser.add_argument("--consensus", default=None, help="treatment-level consensus profiles (optional)")
    parser.add_argument(
        "--residuals",
        default=None,
        help="well-level novelty residuals (needed with moa.representation: residuals)",
    )
    parser.add_argument("--out", required=True, help="moa.parquet to write")
    parser.add_argument("--evaluation", required=True, help="evaluation.json to write")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from cytoscreen import io
    from cytoscreen.config import load_config
    from cytoscreen.errors import ConfigError
    from cytoscreen.moa.evaluate import evaluate_profiles, usable_features
    from cytoscreen.moa.similarity import treatment_profiles
    from cytoscreen.moa.stage import cluster_agreement, moa_table

    config = load_config(args.config)
    cfg = config["moa"]
    representation = cfg["representation"]
    by = [io.PERTURBATION, io.CONCENTRATION]
    if representation == "residuals":
        if not args.residuals:
            raise ConfigError(
                f"{args.config}: moa.representation is residuals but no --residuals table was "
                f"given; pass the novelty stage's residuals.parquet or set "
                f"moa.representation: profiles"
            )
        source = args.residuals
        wells = io.read_table(args.residuals)
        treatments = None
    else:
        if not args.profiles:
            raise ConfigError("moa.representation is profiles: pass the well table as --profiles")
        source = args.profiles
        wells = io.read_table(args.profiles)
        treatments = io.read_table(args.consensus) if args.consensus else None
    logger.info("read %s (%d wells, representation %s)", source, len(wells), representation)
    by = [c for c in by if c in wells.columns]
    if io.PERTURBATION not in by:
        raise ConfigError(f"{source}: column {io.PERTURBATION!r} missing; is this a profile table?")
    if treatments is None:
        treatments = treatment_profiles(wells, by=by)
        table_source = f"median of {source}"
    else:
        table_source = str(args.consensus)
    logger.info("%d treatments from %s", len(treatments), table_source)
    # columns with NaN (kept by a lenient drop_na_columns) are left out, with a logged warning
    features, _ = usable_features(treatments, source=table_source)

    result = moa_table(
        treatments,
        features=features,
        cluster_method=cfg["cluster_method"],
        n_clusters=cfg["n_clusters"],
        max_clusters=cfg["max_clusters"],
        graph_neighbors=cfg["graph_neighbors"],
        resolution=cfg["resolution"],
        neighbors=cfg["neighbors"],
        umap_neighbors=cfg["umap_neighbors"],
        umap_min_dist=cfg["umap_min_dist"],
        seed=cfg["seed"],
    )
    has_moa = io.MOA in wells.columns and wells[io.MOA].notna().any()
    batch_col = cfg["batch_column"] if cfg["batch_column"] in wells.columns else None
    if batch_col is None:
        logger.warning("no %s column: NSCB is not computed", cfg["batch_column"])
    evaluation = evaluate_profiles(
        wells,
        compound_col=io.PERTURBATION,
        dose_col=io.CONCENTRATION if io.CONCENTRATION in wells.columns else None,
        moa_col=io.MOA if has_moa else None,
        batch_col=batch_col,
        batch_regex=cfg["batch_regex"],
        pert_type_col=io.PERT_TYPE,
        treatments=treatments if args.consensus and representation == "profiles" else None,
        null_size=cfg["null_size"],
        seed=cfg["seed"],
        fdr=cfg["fdr"],
        cluster=False,
        source=str(source),
    )
    agreement = cluster_agreement(result.table)
    clustering = result.clustering
    summary = dict(evaluation.summary)
    summary["cluster_ari"] = agreement["ari"] if agreement else None
    summary["clustering"] = {
        "method": clustering.method,
        "n_clusters": clustering.n_clusters,
        "silhouette": clustering.silhouette,
        "k_choice": (
            "fixed"
            if clustering.method == "hierarchical" and cfg["n_clusters"]
            else "silhouette"
            if clustering.method == "hierarchical"
            else "louvain modularity"
        ),
        "silhouette_by_k": clustering.silhouette_by_k,
        "n_treatments": len(result.table),
        **({"ari": agreement["ari"], "purity": agreement["purity"]} if agreement else {}),
    }
    summary = {
        "input": str(source),
        "treatment_profiles": table_source,
        "representation": representation,
        **summary,
    }
    prov = io.provenance(
        "moa",
        config_hash=io.config_hash(config),
        inputs=[str(p) for p in (args.profiles, args.consensus, args.residuals) if p],
        representation=representation,
    )
    io.write_parquet(result.table, args.out, provenance=prov)
    io.write_json(summary, args.evaluation)
    logger.info(
        "wrote %s (%d treatments, %d clusters) and %s (nsc %s, nscb %s, map_replicate %s, map_moa %s, cluster ARI %s)",
        args.out,
        len(result.table),
        clustering.n_clusters,
        args.evaluation,
        *(_fmt(summary.get(k)) for k in ("nsc", "nscb", "map_replicate", "map_moa", "cluster_ari")),
    )
    return 0


def _fmt(value) -> str:
    return "NA" if value is None else f"{value:.3f}"
