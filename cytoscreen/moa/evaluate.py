"""Evaluation of a well-level profile table: NSC, NSCB, replicate and MoA mAP, cluster ARI.

The input is a profile table and the metrics are computed on it as given: evaluation does not
normalize (run ``cytoscreen profiles ...`` first for raw measurements), so a number measures the
profiles and not a normalization chosen by the evaluation.

- **Features** are the columns not starting with ``Metadata_`` or ``QC_`` (the project's one
  definition), except columns named by an option (compound, dose, MoA, batch, pert type), which are
  never features.  Non-numeric columns and columns with NaN/infinite values are left out, with
  their names logged and recorded in the result.
- **Treatments** are compound x dose (missing doses form their own group); a treatment's profile is
  the feature-wise median of its wells unless a treatment table (e.g. a MODZ consensus) is given.
- **Negative controls** follow :func:`cytoscreen.plate.negcon_rule` on the named columns: the
  wells with pert type ``negcon`` (stripped, case-insensitive) when the pert-type column exists and
  has any; otherwise the wells whose compound is in ``negcon`` (default ``DMSO``, stripped,
  case-insensitive).  Control treatments are never queried nor candidates for NSC/NSCB or
  MoA mAP; control wells are the negatives of replicate mAP.
- **Batches** for NSCB come from ``batch_col``, optionally through ``batch_regex``: the first
  capture group of its first match (the whole match without groups), e.g. ``^(Week\\d+)`` turns
  the BBBC021 plate ``Week4_27481`` into ``Week4``.  A treatment in several batches has them all.
- **Metrics**: see :mod:`cytoscreen.moa.metrics`; :mod:`cytoscreen.moa.evaluate_scores` computes
  each and assembles the summary.  ``nsc``/``nscb`` score the non-control
  treatments that have a MoA (a label ``"a|b"`` names several MoAs; two treatments share a MoA when
  their label sets intersect); ``map_replicate`` is the mean over treatments of the replicate mAP
  (wells of a treatment against control wells); ``map_moa`` is the mean over MoAs of the MoA mAP
  on treatment profiles (same MoA and other compound against other MoAs).  ``cluster_ari`` compares
  a clustering of the scored treatments (hierarchical, k by silhouette) with their MoAs.
  ``percent_replicating`` (beside replicate mAP) is the fraction of non-control treatments whose
  median replicate correlation exceeds the 95th percentile of a null of non-replicate groups
  (:mod:`cytoscreen.moa.replicating`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io, plate
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.moa import evaluate_scores as scores
from cytoscreen.moa import metrics
from cytoscreen.moa.evaluate_scores import BATCHES, CPD, DOSE, MOA, NEGCON, EvaluationInputs
from cytoscreen.moa.similarity import treatment_profiles
from cytoscreen.profiles.columns import shown

logger = logging.getLogger(__name__)

DEFAULT_NEGCON: tuple[str, ...] = plate.VEHICLE_VALUES


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate_profiles`: ``summary`` is the JSON-ready record."""

    summary: dict[str, Any]
    treatments: pd.DataFrame = field(repr=False)
    nsc: metrics.NNAccuracy | None = field(repr=False, default=None)
    nscb: metrics.NNAccuracy | None = field(repr=False, default=None)
    map_replicate: metrics.MapResult | None = field(repr=False, default=None)
    map_moa: metrics.MapResult | None = field(repr=False, default=None)


# --- inputs -----------------------------------------------------------------------------------
def _require(table: pd.DataFrame, cols: Sequence[str | None], source: str) -> None:
    for col in cols:
        if col is not None and col not in table.columns:
            meta = io.metadata_columns(table)
            shown = ", ".join(meta[:12]) + (" ..." if len(meta) > 12 else "")
            raise InputDataError(f"{source}: column {col!r} not found; its Metadata_ columns are: {shown or 'none'}")


def usable_features(
    wells: pd.DataFrame, *, exclude: Sequence[str] = (), source: str = "table"
) -> tuple[list[str], dict[str, list[str]]]:
    """Feature columns fit for evaluation and the names left out (non-numeric, non-finite).

    Raises
    ------
    InputDataError
        When no usable feature column is left.
    """
    excluded = set(exclude)
    cols = [c for c in io.feature_columns(wells) if c not in excluded]
    non_numeric = [
        c for c in cols if not (pd.api.types.is_numeric_dtype(wells[c]) or pd.api.types.is_bool_dtype(wells[c]))
    ]
    numeric = [c for c in cols if c not in set(non_numeric)]
    values = wells[numeric].to_numpy(dtype=np.float64, na_value=np.nan) if numeric else None
    non_finite = (
        [c for c, ok in zip(numeric, np.isfinite(values).all(axis=0), strict=True) if not ok]
        if values is not None and len(wells)
        else []
    )
    for names, what in (
        (non_numeric, "non-numeric column(s) that are not Metadata_ columns"),
        (non_finite, "feature column(s) with NaN or infinite values"),
    ):
        if names:
            logger.warning("%s: left out %d %s: %s", source, len(names), what, shown(names, 10))
    bad = set(non_finite)
    features = [c for c in numeric if c not in bad]
    if not features:
        raise InputDataError(
            f"{source}: no usable feature columns (features are the numeric columns not starting "
            f"with Metadata_ or QC_, without NaN values)"
        )
    return features, {"non_numeric": non_numeric, "non_finite": non_finite}


def derive_batches(values: pd.Series, regex: str | None, *, source: str = "table") -> pd.Series:
    """Batch labels from a column, optionally through a regex (first group, else whole match)."""
    text = values.astype(str)
    if regex is None:
        return text.where(values.notna(), None)
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise ConfigError(f"batch regex {regex!r} is not a valid regular expression ({err})") from err

    def one(v: str) -> str | None:
        m = pattern.search(v)
        if m is None:
            return None
        return m.group(1) if pattern.groups else m.group(0)

    out = text.map(one)
    unmatched = text[out.isna()].unique()
    if len(unmatched):
        raise InputDataError(
            f"{source}: batch regex {regex!r} matches no part of {len(unmatched)} value(s) of "
            f"{values.name!r} (e.g. {unmatched[0]!r}); adjust --batch-regex"
        )
    return out


def negcon_wells(
    wells: pd.DataFrame,
    *,
    compound_col: str,
    pert_type_col: str | None = io.PERT_TYPE,
    negcon: Sequence[str] = DEFAULT_NEGCON,
) -> tuple[np.ndarray, str]:
    """Negative-control wells by :func:`cytoscreen.plate.negcon_rule` applied to the named
    columns (pert type ``pert_type_col``, vehicle names ``negcon`` in ``compound_col``), and a
    sentence saying how they were recognised."""
    view = pd.DataFrame({io.PERTURBATION: wells[compound_col].to_numpy()})
    if pert_type_col and pert_type_col in wells.columns:
        view[io.PERT_TYPE] = wells[pert_type_col].to_numpy()
    mask, rule = plate.negcon_rule(view, vehicle=negcon)
    if pert_type_col and rule.startswith(io.PERT_TYPE):
        return mask, f"{pert_type_col} == {plate.NEGCON}"
    if pert_type_col and pert_type_col in wells.columns:
        logger.info("%s has no %s wells; using compound names", pert_type_col, plate.NEGCON)
    return mask, f"{compound_col} in {list(negcon)} (case-insensitive)"


def _single_moa(values: pd.Series) -> object:
    vals = values.dropna().unique()
    return vals[0] if len(vals) else None


def build_treatments(
    wells: pd.DataFrame,
    *,
    features: Sequence[str],
    compound_col: str,
    dose_col: str | None,
    moa_col: str | None,
    batches: pd.Series | None,
    negcon: np.ndarray,
    treatments: pd.DataFrame | None = None,
    source: str = "table",
) -> pd.DataFrame:
    """One row per treatment: internal key/label columns plus the treatment profile."""
    keys = [compound_col] + ([dose_col] if dose_col else [])
    meta = pd.DataFrame(
        {
            CPD: wells[compound_col].to_numpy(),
            DOSE: wells[dose_col].to_numpy() if dose_col else np.nan,
            NEGCON: negcon,
        }
    )
    meta[MOA] = wells[moa_col].to_numpy() if moa_col else None
    meta[BATCHES] = batches.to_numpy() if batches is not None else None
    grouped = meta.groupby([CPD, DOSE], dropna=False, sort=False)
    if moa_col:
        n_moa = grouped[MOA].nunique()
        conflict = n_moa[n_moa > 1]
        if len(conflict):
            cpd, dose = conflict.index[0]
            raise InputDataError(
                f"{source}: treatment {cpd} at dose {dose} has {int(conflict.iloc[0])} different "
                f"values in {moa_col!r}; a treatment (compound x dose) must have one MoA"
            )
    info = grouped.agg(
        **{
            NEGCON: (NEGCON, "max"),
            MOA: (MOA, _single_moa),
            BATCHES: (BATCHES, lambda s: frozenset(v for v in s if v is not None)),
            io.N_WELLS: (NEGCON, "size"),
        }
    ).reset_index()
    if treatments is None:
        table = wells[[compound_col] + ([dose_col] if dose_col else []) + list(features)].copy()
        table.columns = [CPD] + ([DOSE] if dose_col else []) + list(features)
        if not dose_col:
            table[DOSE] = np.nan
        prof = treatment_profiles(table, by=[CPD, DOSE], features=features)
        prof = prof[[CPD, DOSE, *features]]
    else:
        _require(treatments, keys, "treatments table")
        missing = [c for c in features if c not in treatments.columns]
        if missing:
            raise InputDataError(
                f"treatments table: {len(missing)} feature column(s) of the well table are missing "
                f"(e.g. {missing[0]!r}); both tables must come from the same profiles"
            )
        prof = treatments[keys + list(features)].copy()
        prof.columns = [CPD] + ([DOSE] if dose_col else []) + list(features)
        if not dose_col:
            prof[DOSE] = np.nan
        dup = prof.duplicated([CPD, DOSE])
        if dup.any():
            raise InputDataError(
                f"treatments table: {int(dup.sum())} duplicate treatment row(s) "
                f"(e.g. {prof.loc[dup, CPD].iloc[0]}); it must have one row per compound x dose"
            )
    out = info.merge(prof, on=[CPD, DOSE], how="left", validate="one_to_one")
    absent = out[features[0]].isna() if len(out) else pd.Series([], dtype=bool)
    if absent.any():
        raise InputDataError(
            f"treatments table: {int(absent.sum())} treatment(s) of the well table have no row "
            f"(e.g. {out.loc[absent, CPD].iloc[0]})"
        )
    return out


def prepare_inputs(
    wells: pd.DataFrame,
    *,
    compound_col: str,
    dose_col: str | None,
    moa_col: str | None,
    batch_col: str | None,
    batch_regex: str | None,
    pert_type_col: str | None,
    negcon: Sequence[str],
    treatments: pd.DataFrame | None,
    source: str,
) -> EvaluationInputs:
    """Check the well table and build its treatments (arguments as :func:`evaluate_profiles`)."""
    _require(wells, [compound_col, dose_col, moa_col, batch_col], source)
    if len(wells) == 0:
        raise InputDataError(f"{source}: the table has no rows")
    named = [c for c in (compound_col, dose_col, moa_col, batch_col, pert_type_col) if c]
    features, left_out = usable_features(wells, exclude=named, source=source)
    batches = derive_batches(wells[batch_col], batch_regex, source=source) if batch_col else None
    is_negcon, negcon_definition = negcon_wells(
        wells, compound_col=compound_col, pert_type_col=pert_type_col, negcon=negcon
    )
    if not is_negcon.any():
        logger.warning("%s: no negative-control wells (%s)", source, negcon_definition)
    table = build_treatments(
        wells, features=features, compound_col=compound_col, dose_col=dose_col, moa_col=moa_col,
        batches=batches, negcon=is_negcon, treatments=treatments, source=source,
    )
    table.insert(
        0,
        io.TREATMENT,
        [plate.format_treatment(c, d) for c, d in zip(table[CPD], table[DOSE], strict=True)],
    )
    scored = table[~table[NEGCON] & table[MOA].notna()].reset_index(drop=True)
    logger.info(
        "%s: %d wells (%d negative controls), %d treatments, %d with a MoA scored, %d features",
        source, len(wells), int(is_negcon.sum()), len(table), len(scored), len(features),
    )
    return EvaluationInputs(
        wells=wells, features=features, left_out=left_out, batches=batches, is_negcon=is_negcon,
        negcon_definition=negcon_definition, table=table, scored=scored,
    )


# --- evaluation -------------------------------------------------------------------------------
def evaluate_profiles(
    wells: pd.DataFrame,
    *,
    compound_col: str = io.PERTURBATION,
    dose_col: str | None = io.CONCENTRATION,
    moa_col: str | None = io.MOA,
    batch_col: str | None = io.BATCH,
    batch_regex: str | None = None,
    pert_type_col: str | None = io.PERT_TYPE,
    negcon: Sequence[str] = DEFAULT_NEGCON,
    treatments: pd.DataFrame | None = None,
    null_size: int = 10000,
    seed: int = 0,
    fdr: float = 0.05,
    cluster: bool = True,
    source: str = "table",
) -> Evaluation:
    """Evaluate a well-level profile table (see the module docstring for the definitions).

    Parameters
    ----------
    wells
        One row per well: metadata columns and features.
    compound_col, dose_col
        Treatment definition; ``dose_col=None`` makes a treatment one compound.
    moa_col
        MoA labels; None skips NSC, NSCB, MoA mAP and ARI.
    batch_col, batch_regex
        Batch definition for NSCB; ``batch_col=None`` skips NSCB.
    pert_type_col, negcon
        How negative controls are recognised.
    treatments
        Optional treatment-level profiles (one row per compound x dose, same features) used instead
        of the median of the wells for NSC, NSCB, MoA mAP and ARI.
    null_size, seed, fdr
        Permutations of the mAP null, its seed, and the q-value threshold.
    cluster
        Also cluster the scored treatments and report ``cluster_ari``.

    Raises
    ------
    InputDataError
        A named column is missing, no usable features, a treatment with two MoAs, bad batches.
    """
    inputs = prepare_inputs(
        wells, compound_col=compound_col, dose_col=dose_col, moa_col=moa_col,
        batch_col=batch_col, batch_regex=batch_regex, pert_type_col=pert_type_col, negcon=negcon,
        treatments=treatments, source=source,
    )
    null = {"null_size": null_size, "seed": seed, "fdr": fdr}
    moa = scores.moa_scores(inputs, has_moa=moa_col is not None, **null)
    replicate = scores.replicate_scores(inputs, compound_col=compound_col, dose_col=dose_col, **null)
    clusters = scores.cluster_scores(inputs) if cluster and moa.nsc is not None else None
    replicating = scores.replicating_scores(
        inputs, compound_col=compound_col, dose_col=dose_col, null_size=null_size, seed=seed
    )
    definitions = {
        "treatment_definition": {
            "compound": compound_col,
            "dose": dose_col,
            "profile": "median of wells" if treatments is None else "given treatment table",
        },
        "moa_column": moa_col,
        "batch_definition": scores.batch_record(inputs, batch_col=batch_col, batch_regex=batch_regex),
    }
    summary = scores.summary_record(
        inputs, moa, replicate, clusters, replicating, definitions=definitions, settings=null
    )
    return Evaluation(
        summary=summary,
        treatments=inputs.table,
        nsc=moa.nsc,
        nscb=moa.nscb,
        map_replicate=replicate[0],
        map_moa=moa.map_moa,
    )


def format_summary(summary: dict[str, Any]) -> str:
    """A small fixed-width table of the headline metrics, for stdout."""

    def num(v: Any) -> str:
        return "NA" if v is None else f"{v:.3f}"

    rows = [("metric", "value", "n", "note")]
    nsc = summary.get("nsc_details") or {}
    nscb = summary.get("nscb_details") or {}
    rep = summary.get("map_replicate_details") or {}
    moa = summary.get("map_moa_details") or {}
    for name, rec in (("nsc", nsc), ("nscb", nscb)):
        note = rec.get("reason") or ("dropped: " + ", ".join(rec["dropped_moas"]) if rec.get("dropped_moas") else "")
        rows.append((name, num(summary.get(name)), str(rec.get("n_queries", "")), note))
    for name, rec, unit in (("map_replicate", rep, "treatments"), ("map_moa", moa, "MoAs")):
        frac = rec.get("fraction_significant")
        note = rec.get("reason") or (
            f"{unit}; {100 * frac:.0f}% q < {summary['settings']['fdr']}" if frac is not None else ""
        )
        rows.append((name, num(summary.get(name)), str(rec.get("n_groups", "")), note))
    pr = summary.get("percent_replicating_details") or {}
    if pr:
        rows.append(("percent_replicating", num(summary.get("percent_replicating")),
                     str(pr.get("n_treatments", "")),
                     pr.get("reason") or "treatments above the 95th percentile of the null"))
    if summary.get("cluster_ari") is not None:
        rows.append(
            (
                "cluster_ari",
                num(summary["cluster_ari"]),
                str(summary["n_scored_treatments"]),
                f"hierarchical, k = {summary['clustering']['n_clusters']}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip() for r in rows]
    return "\n".join(lines)
