"""The screen-level MoA stage: clusters, UMAP coordinates and nearest neighbours of treatments.

``moa.parquet`` has one row per treatment and only ``Metadata_*`` columns: the treatment's
metadata from the consensus table, ``Metadata_Treatment`` (``<perturbation> @ <concentration>``),
``Metadata_Cluster`` (1 = largest cluster), ``Metadata_UMAP_1``/``Metadata_UMAP_2`` (display
only) and ``Metadata_Neighbor_<i>`` / ``Metadata_Neighbor_<i>_Similarity`` (cosine, most similar
first).  Features stay out of it, so no tool can mistake coordinates or similarities for features;
join on the treatment columns to get them back.

``moa.knn`` chooses how neighbours are found: ``exact`` (all pairs, block-wise; hierarchical or
Louvain clustering and UMAP's own neighbour search as configured), ``approximate`` (NN-descent,
:func:`cytoscreen.moa.knn.cosine_knn`: the listed neighbours, Louvain on the Jaccard kNN graph of
``graph_neighbors`` and UMAP on ``umap_neighbors`` precomputed neighbours, never an n x n matrix;
hierarchical clustering needs one, so Louvain replaces it, logged), or ``auto`` (exact up to
:data:`cytoscreen.moa.knn.EXACT_BELOW` treatments, approximate above).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.moa import metrics
from cytoscreen.moa.cluster import Clustering, cluster_profiles
from cytoscreen.moa.embed import umap_embedding
from cytoscreen.moa.similarity import checked_features, feature_matrix, nearest_neighbors
from cytoscreen.plate import NEGCON, format_treatment

logger = logging.getLogger(__name__)

#: ``moa.knn`` values (module docstring).
KNN_MODES = ("auto", "exact", "approximate")


@dataclass(frozen=True)
class MoaResult:
    """Result of :func:`moa_table`."""

    table: pd.DataFrame = field(repr=False)
    clustering: Clustering = field(repr=False)


def moa_table(
    treatments: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    perturbation_col: str = io.PERTURBATION,
    concentration_col: str | None = io.CONCENTRATION,
    cluster_method: str = "hierarchical",
    n_clusters: int | None = None,
    max_clusters: int = 30,
    graph_neighbors: int = 15,
    resolution: float = 1.0,
    neighbors: int = 5,
    umap_neighbors: int = 15,
    umap_min_dist: float = 0.1,
    seed: int = 0,
    knn: str = "auto",
) -> MoaResult:
    """Cluster, embed and list the nearest neighbours of treatment profiles.

    Parameters
    ----------
    treatments
        One row per treatment (consensus profiles); row order is kept.
    perturbation_col, concentration_col
        Columns naming a treatment in ``Metadata_Treatment`` and the neighbour columns.
    cluster_method, n_clusters, max_clusters, graph_neighbors, resolution
        See :func:`cytoscreen.moa.cluster.cluster_profiles`.
    neighbors
        Nearest neighbours listed per treatment.
    umap_neighbors, umap_min_dist, seed
        UMAP settings and the seed of UMAP and Louvain.
    knn
        ``exact``, ``approximate`` or ``auto`` (module docstring).
    """
    if perturbation_col not in treatments.columns:
        raise InputDataError(f"treatments: column {perturbation_col!r} missing")
    if len(treatments) == 0:
        raise InputDataError("treatments: the table has no rows")
    cols = checked_features(treatments, features, source="treatments")
    if concentration_col and concentration_col in treatments.columns:
        conc = treatments[concentration_col].tolist()
    else:
        conc = [None] * len(treatments)
    labels = [format_treatment(p, c) for p, c in zip(treatments[perturbation_col], conc, strict=True)]
    if len(set(labels)) != len(labels):
        dup = pd.Series(labels)[pd.Series(labels).duplicated()].iloc[0]
        raise InputDataError(
            f"treatments: treatment {dup!r} appears more than once; the table must have one row "
            f"per perturbation x concentration"
        )
    if _approximate(knn, len(treatments)):
        clustering, coords, nn = _approximate_moa(
            treatments, cols, labels, cluster_method=cluster_method, graph_neighbors=graph_neighbors,
            resolution=resolution, neighbors=neighbors, umap_neighbors=umap_neighbors,
            umap_min_dist=umap_min_dist, seed=seed,
        )
    else:
        clustering = cluster_profiles(
            treatments,
            features=cols,
            method=cluster_method,
            n_clusters=n_clusters,
            max_clusters=max_clusters,
            n_neighbors=graph_neighbors,
            resolution=resolution,
            seed=seed,
        )
        coords = umap_embedding(treatments, features=cols, n_neighbors=umap_neighbors,
                                min_dist=umap_min_dist, seed=seed)
        nn = nearest_neighbors(treatments, labels=labels, features=cols, k=neighbors)
    meta = treatments[io.metadata_columns(treatments)].drop(
        columns=[io.TREATMENT, io.CLUSTER, io.UMAP_1, io.UMAP_2], errors="ignore"
    )
    meta = meta.drop(columns=[c for c in nn.columns if c in meta.columns])
    extra = pd.DataFrame(
        {
            io.TREATMENT: labels,
            io.CLUSTER: clustering.labels,
            io.UMAP_1: coords[:, 0],
            io.UMAP_2: coords[:, 1],
        },
        index=treatments.index,
    )
    table = pd.concat([meta, extra, nn], axis=1).reset_index(drop=True)
    return MoaResult(table=table, clustering=clustering)


def _approximate(knn: str, n: int) -> bool:
    from cytoscreen.moa.knn import EXACT_BELOW

    if knn not in KNN_MODES:
        raise ConfigError(f"moa.knn must be one of {', '.join(KNN_MODES)}, not {knn!r}")
    return knn == "approximate" or (knn == "auto" and n > EXACT_BELOW)


def _approximate_moa(treatments, cols, labels, *, cluster_method, graph_neighbors, resolution,
                     neighbors, umap_neighbors, umap_min_dist, seed):
    """Clusters, UMAP and neighbour columns from one NN-descent neighbour search."""
    import numpy as np

    from cytoscreen.moa.embed import _MIN_UMAP_ROWS, _pca_2d
    from cytoscreen.moa.knn import cosine_knn, knn_clusters, knn_umap
    from cytoscreen.moa.similarity import unit_rows
    from cytoscreen.profiles.arrays import feature_matrix as float_matrix

    # float32 (a view of the table's float32 feature block when it has one): cosine_knn and
    # knn_umap work in float32, so a float64 copy (8 bytes a value) would only be converted again
    if all(pd.api.types.is_float_dtype(t) for t in treatments.dtypes[list(cols)]):
        x = float_matrix(treatments, cols, dtype=np.float32)
    else:  # integer features: through float64, as before
        x = feature_matrix(treatments, cols)[0].astype(np.float32)
    n = len(x)
    want = max(neighbors, graph_neighbors, umap_neighbors - 1, 1)
    idx, sim, _ = cosine_knn(x, want, exact_below=0, seed=seed)
    k_eff = idx.shape[1]
    if cluster_method == "hierarchical":
        logger.info("moa.knn approximate: hierarchical clustering needs all pairs; Louvain on the "
                    "kNN graph (graph_neighbors %d) instead", graph_neighbors)
    g = max(1, min(graph_neighbors, k_eff))
    labels_ = knn_clusters(idx[:, :g], resolution=resolution, seed=seed) + 1 if k_eff else np.ones(n, int)
    clustering = Clustering(labels=labels_.astype(np.int64), n_clusters=int(labels_.max()) if n else 0,
                            method="louvain", silhouette=None, silhouette_by_k={})
    if n < _MIN_UMAP_ROWS or not k_eff:
        coords = _pca_2d(unit_rows(feature_matrix(treatments, cols)[0]))
    else:
        u = max(1, min(umap_neighbors - 1, k_eff))
        coords = knn_umap(x, idx[:, :u], sim[:, :u], min_dist=umap_min_dist, seed=seed)
    names = np.asarray(list(labels), dtype=object)
    out: dict[str, object] = {}
    for rank in range(1, neighbors + 1):
        if rank <= k_eff:
            out[io.neighbor_column(rank)] = names[idx[:, rank - 1]]
            out[io.neighbor_similarity_column(rank)] = sim[:, rank - 1]
        else:
            out[io.neighbor_column(rank)] = np.full(n, None, dtype=object)
            out[io.neighbor_similarity_column(rank)] = np.full(n, np.nan)
    logger.info("approximate MoA (NN-descent): %d treatments, %d clusters", n, clustering.n_clusters)
    return clustering, coords, pd.DataFrame(out, index=treatments.index)


def cluster_agreement(
    table: pd.DataFrame,
    *,
    moa_col: str = io.MOA,
    pert_type_col: str = io.PERT_TYPE,
) -> dict[str, Any] | None:
    """ARI and purity of ``Metadata_Cluster`` against the MoA of non-control treatments.

    None when the table has no MoA labels.  Negative-control treatments (pert type ``negcon``)
    and treatments without a MoA are left out.
    """
    if moa_col not in table.columns:
        return None
    keep = table[moa_col].notna()
    if pert_type_col in table.columns:
        keep &= table[pert_type_col].astype(str).str.strip().str.lower() != NEGCON  # as plate.negcon_mask
    if keep.sum() < 2:
        return None
    truth = table.loc[keep, moa_col]
    clusters = table.loc[keep, io.CLUSTER]
    return {
        "ari": metrics.adjusted_rand_index(truth, clusters),
        "purity": metrics.cluster_purity(truth, clusters),
        "n_treatments": int(keep.sum()),
        "n_moas": int(truth.nunique()),
    }


# --- the stage as the workflow runs it ----------------------------------------------------------------
@dataclass(frozen=True)
class MoaSettings:
    """The ``moa:`` config section (defaults are the schema's)."""

    representation: str = "profiles"
    cluster_method: str = "hierarchical"
    n_clusters: int | None = None
    max_clusters: int = 30
    graph_neighbors: int = 15
    resolution: float = 1.0
    neighbors: int = 5
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    seed: int = 0
    knn: str = "auto"
    batch_column: str = io.BATCH
    batch_regex: str | None = None
    null_size: int = 10000
    fdr: float = 0.05

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> MoaSettings:
        """Settings from a validated ``moa:`` section; unknown keys are a ConfigError."""
        from cytoscreen.config import settings_values

        return cls(**settings_values(cls, "moa", section))


@dataclass(frozen=True)
class MoaStageResult:
    """Result of :func:`screen_moa`: the moa.parquet table and the evaluation.json summary."""

    table: pd.DataFrame = field(repr=False)
    summary: dict[str, Any]
    clustering: Clustering = field(repr=False)


def screen_moa(
    wells: pd.DataFrame,
    settings: MoaSettings,
    *,
    treatments: pd.DataFrame | None = None,
    source: str = "wells",
    treatments_source: str | None = None,
) -> MoaStageResult:
    """The MoA stage on one screen's well table: treatments, clusters, UMAP, neighbours, metrics.

    Parameters
    ----------
    wells
        Well-level profiles (or novelty residuals) of every plate.
    settings
        The ``moa:`` settings.
    treatments
        Consensus profiles (one row per treatment); without them, the median of ``wells`` by
        perturbation and concentration.  Given ones are also what NSC, NSCB and MoA mAP use when
        ``settings.representation`` is ``profiles``.
    source, treatments_source
        Names for messages and the summary.
    """
    from cytoscreen.moa.evaluate import evaluate_profiles, usable_features
    from cytoscreen.moa.similarity import treatment_profiles

    by = [c for c in (io.PERTURBATION, io.CONCENTRATION) if c in wells.columns]
    if io.PERTURBATION not in by:
        raise ConfigError(f"{source}: column {io.PERTURBATION!r} missing; is this a profile table?")
    given = treatments is not None
    if treatments is None:
        treatments = treatment_profiles(wells, by=by)
        table_source = f"median of {source}"
    else:
        table_source = str(treatments_source or "treatments")
    logger.info("%d treatments from %s", len(treatments), table_source)
    # columns with NaN (kept by a lenient drop_na_columns) are left out, with a logged warning
    features, _ = usable_features(treatments, source=table_source)
    s = settings
    result = moa_table(
        treatments, features=features, cluster_method=s.cluster_method, n_clusters=s.n_clusters,
        max_clusters=s.max_clusters, graph_neighbors=s.graph_neighbors, resolution=s.resolution,
        neighbors=s.neighbors, umap_neighbors=s.umap_neighbors, umap_min_dist=s.umap_min_dist,
        seed=s.seed, knn=s.knn,
    )
    has_moa = io.MOA in wells.columns and wells[io.MOA].notna().any()
    batch_col = s.batch_column if s.batch_column in wells.columns else None
    if batch_col is None:
        logger.warning("no %s column: NSCB is not computed", s.batch_column)
    evaluation = evaluate_profiles(
        wells,
        compound_col=io.PERTURBATION,
        dose_col=io.CONCENTRATION if io.CONCENTRATION in wells.columns else None,
        moa_col=io.MOA if has_moa else None,
        batch_col=batch_col,
        batch_regex=s.batch_regex,
        pert_type_col=io.PERT_TYPE,
        treatments=treatments if given and s.representation == "profiles" else None,
        null_size=s.null_size,
        seed=s.seed,
        fdr=s.fdr,
        cluster=False,
        source=str(source),
    )
    agreement = cluster_agreement(result.table)
    clustering = result.clustering
    summary = dict(evaluation.summary)
    summary["cluster_ari"] = agreement["ari"] if agreement else None
    if clustering.method == "hierarchical":
        k_choice = "fixed" if s.n_clusters else "silhouette"
    else:
        k_choice = "louvain modularity"
    summary["clustering"] = {
        "method": clustering.method,
        "n_clusters": clustering.n_clusters,
        "silhouette": clustering.silhouette,
        "k_choice": k_choice,
        "silhouette_by_k": clustering.silhouette_by_k,
        "n_treatments": len(result.table),
        **({"ari": agreement["ari"], "purity": agreement["purity"]} if agreement else {}),
    }
    summary = {
        "input": str(source),
        "treatment_profiles": table_source,
        "representation": s.representation,
        **summary,
    }
    return MoaStageResult(table=result.table, summary=summary, clustering=clustering)


def run_moa(
    settings: MoaSettings,
    *,
    out: str | Path,
    evaluation: str | Path,
    profiles: str | Path | None = None,
    consensus: str | Path | None = None,
    residuals: str | Path | None = None,
    config_hash: str | None = None,
    config_source: str | None = None,
) -> MoaStageResult:
    """Read the stage's tables, run :func:`screen_moa`, write ``out`` (moa.parquet) and ``evaluation``.

    With ``settings.representation == "residuals"`` the wells are ``residuals`` (consensus is not
    used); else ``profiles``, with ``consensus`` as the treatment profiles when given.
    """
    if settings.representation == "residuals":
        if not residuals:
            raise ConfigError(
                f"{config_source or 'config'}: moa.representation is residuals but no --residuals "
                f"table was given; pass the novelty stage's residuals.parquet or set "
                f"moa.representation: profiles"
            )
        source, wells, treatments = str(residuals), io.read_table(residuals), None
    else:
        if not profiles:
            raise ConfigError("moa.representation is profiles: pass the well table as --profiles")
        source, wells = str(profiles), io.read_table(profiles)
        treatments = io.read_table(consensus) if consensus else None
    logger.info("read %s (%d wells, representation %s)", source, len(wells), settings.representation)
    result = screen_moa(
        wells, settings, treatments=treatments, source=source,
        treatments_source=str(consensus) if treatments is not None else None,
    )
    prov = io.provenance(
        "moa",
        config_hash=config_hash,
        inputs=[str(p) for p in (profiles, consensus, residuals) if p],
        representation=settings.representation,
    )
    io.write_parquet(result.table, out, provenance=prov)
    io.write_json(result.summary, evaluation)
    summary = result.summary
    logger.info(
        "wrote %s (%d treatments, %d clusters) and %s (nsc %s, nscb %s, map_replicate %s, "
        "map_moa %s, cluster ARI %s)",
        out, len(result.table), result.clustering.n_clusters, evaluation,
        *(_fmt(summary.get(k)) for k in ("nsc", "nscb", "map_replicate", "map_moa", "cluster_ari")),
    )
    return result


def _fmt(value) -> str:
    return "NA" if value is None else f"{value:.3f}"
