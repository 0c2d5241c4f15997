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
- **Negative controls** are the wells with pert type ``negcon`` (case-insensitive) when the
  pert-type column exists and has any; otherwise the wells whose compound is in ``negcon`` (default
  ``DMSO``, case-insensitive).  Control treatments are never queried nor candidates for NSC/NSCB or
  MoA mAP; control wells are the negatives of replicate mAP.
- **Batches** for NSCB come from ``batch_col``, optionally through ``batch_regex``: the first
  capture group of its first match (the whole match without groups), e.g. ``^(Week\\d+)`` turns
  the BBBC021 plate ``Week4_27481`` into ``Week4``.  A treatment in several batches has them all.
- **Metrics**: see :mod:`cytoscreen.moa.metrics`.  ``nsc``/``nscb`` score the non-control
  treatments that have a MoA; ``map_replicate`` is the mean over treatments of the replicate mAP
  (wells of a treatment against control wells); ``map_moa`` is the mean over MoAs of the MoA mAP
  on treatment profiles (same MoA and other compound against other MoAs).  ``cluster_ari`` compares
  a clustering of the scored treatments (hierarchical, k by silhouette) with their MoAs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.moa import metrics
from cytoscreen.moa.similarity import treatment_label, treatment_profiles

logger = logging.getLogger(__name__)

DEFAULT_NEGCON: tuple[str, ...] = ("DMSO",)
NEGCON_PERT_TYPE = "negcon"

# internal treatment-table columns (Metadata_ so they are never features)
_CPD = "Metadata_eval_compound"
_DOSE = "Metadata_eval_dose"
_MOA = "Metadata_eval_moa"
_BATCHES = "Metadata_eval_batches"
_NEGCON = "Metadata_eval_negcon"
_N_WELLS = "Metadata_n_wells"


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate_profiles`: ``summary`` is the JSON-ready record."""

    summary: dict[str, Any]
    treatments: pd.DataFrame = field(repr=False)
    nsc: metrics.NNAccuracy | None = field(repr=False, default=None)
    nscb: metrics.NNAccuracy | None = field(repr=False, default=None)
    map_replicate: metrics.MapResult | None = field(repr=False, default=None)
    map_moa: metrics.MapResult | None = field(repr=False, default=None)


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
    if non_numeric:
        logger.warning(
            "%s: left out %d non-numeric column(s) that are not Metadata_ columns: %s",
            source,
            len(non_numeric),
            ", ".join(non_numeric[:10]) + (" ..." if len(non_numeric) > 10 else ""),
        )
    if non_finite:
        logger.warning(
            "%s: left out %d feature column(s) with NaN or infinite values: %s",
            source,
            len(non_finite),
            ", ".join(non_finite[:10]) + (" ..." if len(non_finite) > 10 else ""),
        )
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


def negcon_mask(
    wells: pd.DataFrame,
    *,
    compound_col: str,
    pert_type_col: str | None = io.PERT_TYPE,
    negcon: Sequence[str] = DEFAULT_NEGCON,
) -> tuple[np.ndarray, str]:
    """Negative-control wells and a sentence saying how they were recognised."""
    if pert_type_col and pert_type_col in wells.columns:
        mask = wells[pert_type_col].astype(str).str.strip().str.lower() == NEGCON_PERT_TYPE
        if mask.any():
            return mask.to_numpy(), f"{pert_type_col} == {NEGCON_PERT_TYPE}"
        logger.info("%s has no %s wells; using compound names", pert_type_col, NEGCON_PERT_TYPE)
    names = sorted({str(n).strip().lower() for n in negcon})
    mask = wells[compound_col].astype(str).str.strip().str.lower().isin(names)
    return mask.to_numpy(), f"{compound_col} in {list(negcon)} (case-insensitive)"


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
            _CPD: wells[compound_col].to_numpy(),
            _DOSE: wells[dose_col].to_numpy() if dose_col else np.nan,
            _NEGCON: negcon,
        }
    )
    meta[_MOA] = wells[moa_col].to_numpy() if moa_col else None
    meta[_BATCHES] = batches.to_numpy() if batches is not None else None
    grouped = meta.groupby([_CPD, _DOSE], dropna=False, sort=False)
    if moa_col:
        n_moa = grouped[_MOA].nunique()
        conflict = n_moa[n_moa > 1]
        if len(conflict):
            cpd, dose = conflict.index[0]
            raise InputDataError(
                f"{source}: treatment {cpd} at dose {dose} has {int(conflict.iloc[0])} different "
                f"values in {moa_col!r}; a treatment (compound x dose) must have one MoA"
            )
    info = grouped.agg(
        **{
            _NEGCON: (_NEGCON, "max"),
            _MOA: (_MOA, _single_moa),
            _BATCHES: (_BATCHES, lambda s: frozenset(v for v in s if v is not None)),
            _N_WELLS: (_NEGCON, "size"),
        }
    ).reset_index()
    if treatments is None:
        table = wells[[compound_col] + ([dose_col] if dose_col else []) + list(features)].copy()
        table.columns = [_CPD] + ([_DOSE] if dose_col else []) + list(features)
        if not dose_col:
            table[_DOSE] = np.nan
        prof = treatment_profiles(table, by=[_CPD, _DOSE], features=features)
        prof = prof[[_CPD, _DOSE, *features]]
    else:
        _require(treatments, keys, "treatments table")
        missing = [c for c in features if c not in treatments.columns]
        if missing:
            raise InputDataError(
                f"treatments table: {len(missing)} feature column(s) of the well table are missing "
                f"(e.g. {missing[0]!r}); both tables must come from the same profiles"
            )
        prof = treatments[keys + list(features)].copy()
        prof.columns = [_CPD] + ([_DOSE] if dose_col else []) + list(features)
        if not dose_col:
            prof[_DOSE] = np.nan
        dup = prof.duplicated([_CPD, _DOSE])
        if dup.any():
            raise InputDataError(
                f"treatments table: {int(dup.sum())} duplicate treatment row(s) "
                f"(e.g. {prof.loc[dup, _CPD].iloc[0]}); it must have one row per compound x dose"
            )
    out = info.merge(prof, on=[_CPD, _DOSE], how="left", validate="one_to_one")
    absent = out[features[0]].isna() if len(out) else pd.Series([], dtype=bool)
    if absent.any():
        raise InputDataError(
            f"treatments table: {int(absent.sum())} treatment(s) of the well table have no row "
            f"(e.g. {out.loc[absent, _CPD].iloc[0]})"
        )
    return out


def _nn_record(res: metrics.NNAccuracy | None, reason: str | None, *, batches: bool = False) -> dict[str, Any]:
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


def _map_record(res: metrics.MapResult | None, reason: str | None, **extra: Any) -> dict[str, Any]:
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
    _require(wells, [compound_col, dose_col, moa_col, batch_col], source)
    if len(wells) == 0:
        raise InputDataError(f"{source}: the table has no rows")
    named = [c for c in (compound_col, dose_col, moa_col, batch_col, pert_type_col) if c]
    features, left_out = usable_features(wells, exclude=named, source=source)
    batches = derive_batches(wells[batch_col], batch_regex, source=source) if batch_col else None
    is_negcon, negcon_definition = negcon_mask(
        wells, compound_col=compound_col, pert_type_col=pert_type_col, negcon=negcon
    )
    if not is_negcon.any():
        logger.warning("%s: no negative-control wells (%s)", source, negcon_definition)
    table = build_treatments(
        wells,
        features=features,
        compound_col=compound_col,
        dose_col=dose_col,
        moa_col=moa_col,
        batches=batches,
        negcon=is_negcon,
        treatments=treatments,
        source=source,
    )
    table.insert(
        0,
        io.TREATMENT,
        [treatment_label(c, d) for c, d in zip(table[_CPD], table[_DOSE], strict=True)],
    )
    scored = table[~table[_NEGCON] & table[_MOA].notna()].reset_index(drop=True)
    logger.info(
        "%s: %d wells (%d negative controls), %d treatments, %d with a MoA scored, %d features",
        source,
        len(wells),
        int(is_negcon.sum()),
        len(table),
        len(scored),
        len(features),
    )

    nsc = nscb = map_moa = None
    nsc_reason = nscb_reason = moa_reason = None
    if moa_col is None:
        nsc_reason = nscb_reason = moa_reason = "no MoA column"
    elif scored.empty:
        nsc_reason = nscb_reason = moa_reason = "no non-control treatment has a MoA"
    else:
        nsc = metrics.nn_accuracy(scored, moa_col=_MOA, compound_col=_CPD, features=features)
        if batches is not None:
            nscb = metrics.nn_accuracy(
                scored,
                moa_col=_MOA,
                compound_col=_CPD,
                batch_col=_BATCHES,
                features=features,
            )
        else:
            nscb_reason = "no batch column"
        map_moa = metrics.moa_map(
            scored,
            moa_col=_MOA,
            compound_col=_CPD,
            features=features,
            null_size=null_size,
            seed=seed,
            fdr=fdr,
        )
    rep_wells = pd.concat(
        [
            pd.DataFrame(
                {_CPD: wells[compound_col].to_numpy(), _DOSE: wells[dose_col].to_numpy()}
                if dose_col
                else {_CPD: wells[compound_col].to_numpy(), _DOSE: np.nan}
            ),
            wells[features].reset_index(drop=True),
        ],
        axis=1,
    )
    map_rep = metrics.replicate_map(
        rep_wells,
        treatment_cols=[_CPD, _DOSE],
        negcon=is_negcon,
        features=features,
        null_size=null_size,
        seed=seed,
        fdr=fdr,
    )
    rep_reason = None
    if map_rep.mean_map is None:
        rep_reason = "no negative-control wells" if not is_negcon.any() else "no treatment with 2+ wells"

    ari = purity = None
    n_clusters = None
    if cluster and nsc is not None and len(scored) >= 3:
        from cytoscreen.moa.cluster import hierarchical_clusters

        x = scored[features].to_numpy(dtype=np.float64)
        clusters = hierarchical_clusters(x)
        ari = metrics.adjusted_rand_index(scored[_MOA], clusters.labels)
        purity = metrics.cluster_purity(scored[_MOA], clusters.labels)
        n_clusters = clusters.n_clusters

    rep_per_group = map_rep.per_group.rename(columns={_CPD: "compound", _DOSE: "dose"})
    map_rep = metrics.MapResult(
        map_rep.mean_map,
        map_rep.fraction_significant,
        map_rep.n_groups,
        rep_per_group,
        map_rep.per_query,
    )
    if map_moa is not None:
        map_moa = metrics.MapResult(
            map_moa.mean_map,
            map_moa.fraction_significant,
            map_moa.n_groups,
            map_moa.per_group.rename(columns={_MOA: "moa"}),
            map_moa.per_query,
        )
    n_batches = int(pd.Series(batches).dropna().nunique()) if batches is not None else None
    batch_def: dict[str, Any] | None = None
    if batch_col:
        examples = dict(zip(wells[batch_col].astype(str).head(1000), batches.head(1000), strict=True))
        batch_def = {
            "column": batch_col,
            "regex": batch_regex,
            "n_batches": n_batches,
            "examples": dict(list(examples.items())[:5]),
            "rule": "a candidate sharing any batch with the query is excluded from NSCB",
        }
    summary: dict[str, Any] = {
        "nsc": nsc.accuracy if nsc else None,
        "nscb": nscb.accuracy if nscb else None,
        "map_replicate": map_rep.mean_map,
        "map_moa": map_moa.mean_map if map_moa else None,
        "cluster_ari": ari,
        "n_wells": len(wells),
        "n_negcon_wells": int(is_negcon.sum()),
        "n_treatments": len(table),
        "n_negcon_treatments": int(table[_NEGCON].sum()),
        "n_scored_treatments": len(scored),
        "n_moas": int(scored[_MOA].nunique()) if len(scored) else 0,
        "n_features": len(features),
        "features_left_out": left_out,
        "treatment_definition": {
            "compound": compound_col,
            "dose": dose_col,
            "profile": "median of wells" if treatments is None else "given treatment table",
        },
        "moa_column": moa_col,
        "negcon_definition": negcon_definition,
        "batch_definition": batch_def,
        "similarity": "cosine",
        "nsc_details": _nn_record(nsc, nsc_reason),
        "nscb_details": _nn_record(nscb, nscb_reason, batches=True),
        "map_replicate_details": _map_record(
            map_rep,
            rep_reason,
            positives="other wells of the same treatment",
            negatives="negative-control wells",
            aggregate="mean over treatments",
        ),
        "map_moa_details": _map_record(
            map_moa,
            moa_reason,
            positives="treatments of the same MoA and another compound",
            negatives="treatments of other MoAs",
            aggregate="mean over MoAs",
        ),
        "clustering": (
            {
                "method": "hierarchical",
                "n_clusters": n_clusters,
                "k_choice": "silhouette",
                "ari": ari,
                "purity": purity,
            }
            if ari is not None
            else None
        ),
        "settings": {"null_size": null_size, "seed": seed, "fdr": fdr},
    }
    return Evaluation(
        summary=summary,
        treatments=table,
        nsc=nsc,
        nscb=nscb,
        map_replicate=map_rep,
        map_moa=map_moa,
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
