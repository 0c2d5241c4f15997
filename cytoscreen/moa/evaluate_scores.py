"""The metrics of :func:`cytoscreen.moa.evaluate.evaluate_profiles`, one function each, and the
summary record they are assembled into.

:func:`cytoscreen.moa.evaluate.prepare_inputs` checks the table and builds the treatments into an
:class:`EvaluationInputs`; the functions here score it (:func:`moa_scores`: NSC, NSCB and MoA mAP on
the treatment profiles; :func:`replicate_scores`: replicate mAP on the wells; :func:`cluster_scores`:
ARI and purity of a clustering) and :func:`summary_record` writes the JSON-ready summary.  The
definitions of the metrics are in :mod:`cytoscreen.moa.metrics`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen.moa import metrics
from cytoscreen.moa.replicating import PercentReplicating, percent_replicating

logger = logging.getLogger(__name__)

# internal treatment-table columns (Metadata_ so they are never features)
CPD = "Metadata_eval_compound"
DOSE = "Metadata_eval_dose"
MOA = "Metadata_eval_moa"
BATCHES = "Metadata_eval_batches"
NEGCON = "Metadata_eval_negcon"


@dataclass(frozen=True)
class EvaluationInputs:
    """A checked well table and its treatments, as the metric functions receive them.

    Attributes
    ----------
    wells
        The well table (one row per well) as given.
    features
        The usable feature columns; ``left_out`` names the others (non-numeric, non-finite).
    batches
        Batch label of every well (None without a batch column).
    is_negcon, negcon_definition
        Negative-control wells and the sentence saying how they were recognised.
    table
        One row per treatment: :data:`CPD`, :data:`DOSE`, :data:`MOA`, :data:`BATCHES`,
        :data:`NEGCON`, the number of wells and the treatment profile.
    scored
        The rows of ``table`` scored by NSC, NSCB and MoA mAP (not controls, with a MoA).
    """

    wells: pd.DataFrame = field(repr=False)
    features: list[str]
    left_out: dict[str, list[str]]
    batches: pd.Series | None = field(repr=False)
    is_negcon: np.ndarray = field(repr=False)
    negcon_definition: str
    table: pd.DataFrame = field(repr=False)
    scored: pd.DataFrame = field(repr=False)


@dataclass(frozen=True)
class MoaScores:
    """NSC, NSCB and MoA mAP, each None with a reason when it could not be computed."""

    nsc: metrics.NNAccuracy | None = None
    nscb: metrics.NNAccuracy | None = None
    map_moa: metrics.MapResult | None = None
    nsc_reason: str | None = None
    nscb_reason: str | None = None
    moa_reason: str | None = None


@dataclass(frozen=True)
class ClusterScores:
    """Agreement of a hierarchical clustering of the scored treatments with their MoAs."""

    ari: float
    purity: float
    n_clusters: int


def moa_scores(
    inputs: EvaluationInputs, *, has_moa: bool, null_size: int, seed: int, fdr: float
) -> MoaScores:
    """NSC, NSCB (when there are batches) and MoA mAP of the scored treatments."""
    if not has_moa:
        reason = "no MoA column"
        return MoaScores(nsc_reason=reason, nscb_reason=reason, moa_reason=reason)
    scored = inputs.scored
    if scored.empty:
        reason = "no non-control treatment has a MoA"
        return MoaScores(nsc_reason=reason, nscb_reason=reason, moa_reason=reason)
    nsc = metrics.nn_accuracy(scored, moa_col=MOA, compound_col=CPD, features=inputs.features)
    nscb, nscb_reason = None, None
    if inputs.batches is not None:
        nscb = metrics.nn_accuracy(
            scored, moa_col=MOA, compound_col=CPD, batch_col=BATCHES, features=inputs.features
        )
    else:
        nscb_reason = "no batch column"
    map_moa = metrics.moa_map(
        scored, moa_col=MOA, compound_col=CPD, features=inputs.features,
        null_size=null_size, seed=seed, fdr=fdr,
    )
    return MoaScores(nsc=nsc, nscb=nscb, map_moa=_renamed(map_moa, {MOA: "moa"}),
                     nscb_reason=nscb_reason)


def replicate_wells(inputs: EvaluationInputs, *, compound_col: str, dose_col: str | None) -> pd.DataFrame:
    """The wells as replicate mAP reads them: treatment key columns and the features."""
    wells = inputs.wells
    keys = pd.DataFrame(
        {CPD: wells[compound_col].to_numpy(),
         DOSE: wells[dose_col].to_numpy() if dose_col else np.nan}
    )
    return pd.concat([keys, wells[inputs.features].reset_index(drop=True)], axis=1)


def replicate_scores(
    inputs: EvaluationInputs, *, compound_col: str, dose_col: str | None, null_size: int,
    seed: int, fdr: float,
) -> tuple[metrics.MapResult, str | None]:
    """Replicate mAP of the wells of each treatment against the control wells, and the reason
    when it could not be computed."""
    result = metrics.replicate_map(
        replicate_wells(inputs, compound_col=compound_col, dose_col=dose_col),
        treatment_cols=[CPD, DOSE],
        negcon=inputs.is_negcon,
        features=inputs.features,
        null_size=null_size,
        seed=seed,
        fdr=fdr,
    )
    reason = None
    if result.mean_map is None:
        reason = "no negative-control wells" if not inputs.is_negcon.any() else "no treatment with 2+ wells"
    return _renamed(result, {CPD: "compound", DOSE: "dose"}), reason


def replicating_scores(
    inputs: EvaluationInputs, *, compound_col: str, dose_col: str | None, null_size: int, seed: int,
) -> PercentReplicating:
    """Percent replicating of the non-control treatments (:mod:`cytoscreen.moa.replicating`)."""
    res = percent_replicating(
        replicate_wells(inputs, compound_col=compound_col, dose_col=dose_col),
        treatment_cols=[CPD, DOSE], negcon=inputs.is_negcon, features=inputs.features,
        null_size=null_size, seed=seed,
    )
    per_group = res.per_group.rename(columns={CPD: "compound", DOSE: "dose"})
    return PercentReplicating(res.fraction, res.n_treatments, res.thresholds, per_group)


def cluster_scores(inputs: EvaluationInputs) -> ClusterScores | None:
    """ARI and purity of a hierarchical clustering (k by silhouette) of the scored treatments
    against their MoAs; None with fewer than three treatments."""
    scored = inputs.scored
    if len(scored) < 3:
        return None
    from cytoscreen.moa.cluster import hierarchical_clusters

    clusters = hierarchical_clusters(scored[inputs.features].to_numpy(dtype=np.float64))
    return ClusterScores(
        ari=metrics.adjusted_rand_index(scored[MOA], clusters.labels),
        purity=metrics.cluster_purity(scored[MOA], clusters.labels),
        n_clusters=clusters.n_clusters,
    )


def _renamed(res: metrics.MapResult, columns: dict[str, str]) -> metrics.MapResult:
    """The result with its per-group columns renamed from the internal names."""
    return metrics.MapResult(
        res.mean_map, res.fraction_significant, res.n_groups,
        res.per_group.rename(columns=columns), res.per_query,
    )


# --- summary record ---------------------------------------------------------------------------
def nn_record(res: metrics.NNAccuracy | None, reason: str | None, *, batches: bool = False) -> dict[str, Any]:
    """The ``nsc_details`` / ``nscb_details`` record."""
    if res is None:
        return {"accuracy": None, "reason": reason}
    rec = {
        "accuracy": res.accuracy,
        "n_queries": res.n_queries,
        "n_correct": res.n_correct,
        "dropped_moas": list(res.dropped_moas),
        "per_moa": res.per_moa.to_dict(orient="records"),
    }
    if res.accuracy is None:
        rec["reason"] = (
            "no MoA has treatments of two compounds"
            + (" in different batches" if batches else "")
            + "; every MoA was dropped"
        )
    return rec


def map_record(res: metrics.MapResult | None, reason: str | None, **extra: Any) -> dict[str, Any]:
    """The ``map_*_details`` record."""
    if res is None:
        return {"mean_map": None, "reason": reason}
    rec = {
        "mean_map": res.mean_map,
        "n_groups": res.n_groups,
        "fraction_significant": res.fraction_significant,
        **extra,
    }
    if res.mean_map is None:
        rec["reason"] = reason or "no query with positives"
    rec["per_group"] = res.per_group.to_dict(orient="records")
    return rec


def replicating_record(res: PercentReplicating) -> dict[str, Any]:
    """The ``percent_replicating_details`` record."""
    rec: dict[str, Any] = {
        "fraction": res.fraction,
        "n_treatments": res.n_treatments,
        "statistic": "median Pearson correlation of a treatment's well pairs",
        "null": "the same statistic on random groups of wells of distinct treatments, same size",
        "quantile": 0.95,
        "thresholds": {str(k): v for k, v in res.thresholds.items()},
    }
    if res.fraction is None:
        rec["reason"] = "no non-control treatment with 2+ wells"
    rec["per_group"] = res.per_group.to_dict(orient="records")
    return rec


def batch_record(inputs: EvaluationInputs, *, batch_col: str | None, batch_regex: str | None) -> dict[str, Any] | None:
    """How batches were defined, with a few examples (None without a batch column)."""
    if not batch_col or inputs.batches is None:
        return None
    batches = inputs.batches
    examples = dict(zip(inputs.wells[batch_col].astype(str).head(1000), batches.head(1000), strict=True))
    return {
        "column": batch_col,
        "regex": batch_regex,
        "n_batches": int(pd.Series(batches).dropna().nunique()),
        "examples": dict(list(examples.items())[:5]),
        "rule": "a candidate sharing any batch with the query is excluded from NSCB",
    }


def summary_record(
    inputs: EvaluationInputs,
    moa: MoaScores,
    replicate: tuple[metrics.MapResult, str | None],
    clusters: ClusterScores | None,
    replicating: PercentReplicating,
    *,
    definitions: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The JSON-ready summary of an evaluation (the keys of ``evaluation.json``).

    ``definitions`` holds ``treatment_definition``, ``moa_column`` and ``batch_definition``;
    ``settings`` the null size, seed and FDR.
    """
    map_rep, rep_reason = replicate
    table, scored = inputs.table, inputs.scored
    return {
        "nsc": moa.nsc.accuracy if moa.nsc else None,
        "nscb": moa.nscb.accuracy if moa.nscb else None,
        "map_replicate": map_rep.mean_map,
        "percent_replicating": replicating.fraction,
        "map_moa": moa.map_moa.mean_map if moa.map_moa else None,
        "cluster_ari": clusters.ari if clusters else None,
        "n_wells": len(inputs.wells),
        "n_negcon_wells": int(inputs.is_negcon.sum()),
        "n_treatments": len(table),
        "n_negcon_treatments": int(table[NEGCON].sum()),
        "n_scored_treatments": len(scored),
        "n_moas": int(scored[MOA].nunique()) if len(scored) else 0,
        "n_features": len(inputs.features),
        "features_left_out": inputs.left_out,
        "treatment_definition": definitions["treatment_definition"],
        "moa_column": definitions["moa_column"],
        "negcon_definition": inputs.negcon_definition,
        "batch_definition": definitions["batch_definition"],
        "similarity": "cosine",
        "nsc_details": nn_record(moa.nsc, moa.nsc_reason),
        "nscb_details": nn_record(moa.nscb, moa.nscb_reason, batches=True),
        "map_replicate_details": map_record(
            map_rep,
            rep_reason,
            positives="other wells of the same treatment",
            negatives="negative-control wells",
            aggregate="mean over treatments",
        ),
        "percent_replicating_details": replicating_record(replicating),
        "map_moa_details": map_record(
            moa.map_moa,
            moa.moa_reason,
            positives="treatments of the same MoA and another compound",
            negatives="treatments of other MoAs",
            aggregate="mean over MoAs",
        ),
        "clustering": (
            {
                "method": "hierarchical",
                "n_clusters": clusters.n_clusters,
                "k_choice": "silhouette",
                "ari": clusters.ari,
                "purity": clusters.purity,
            }
            if clusters is not None
            else None
        ),
        "settings": settings,
    }

