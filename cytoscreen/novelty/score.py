"""Scoring: reconstruction error per well, conformal p-values, Benjamini-Hochberg q-values, hits.

The score of a row is its mean squared reconstruction error over the features (the training
loss); at site level a well's score is the median (or mean) over its sites.  The null
distribution is the scores of the held-out calibration control wells, which took no part in
training or model selection, so a well exchangeable with them gets a valid conformal p-value
``(1 + #{calibration scores >= s}) / (n_calibration + 1)``.

Which wells are tested: every well except the control wells of the split (train and val wells
were fit by the model, so their scores are biased low; calibration wells define the null) and
wells whose ``Metadata_pert_type`` is excluded (``empty`` by default).  Benjamini-Hochberg q-values
are computed over the tested wells only; a tested well is a hit when ``q <= hit_q``.  Untested
wells keep their score and p-value (calibration wells get the leave-one-out p-value
``#{calibration scores >= s} / n_calibration``, useful to check calibration) but have no q-value and
are never hits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cytoscreen.errors import InputDataError, ModelError
from cytoscreen.io import (
    N_SITES,
    NOVELTY_HIT,
    NOVELTY_PVALUE,
    NOVELTY_QVALUE,
    NOVELTY_SCORE,
    NOVELTY_SPLIT,
    PERT_TYPE,
    PLATE,
    SITE,
    WELL,
    feature_columns,
)
from cytoscreen.novelty.data import NO_SPLIT, NoveltySplit, check_profiles, well_keys

logger = logging.getLogger(__name__)

SITE_AGGREGATES = ("median", "mean")
NOVELTY_COLUMNS = (NOVELTY_SCORE, NOVELTY_PVALUE, NOVELTY_QVALUE, NOVELTY_HIT, NOVELTY_SPLIT)


@dataclass(frozen=True)
class NoveltyScores:
    """Result of :func:`score_profiles`."""

    novelty: pd.DataFrame
    """One row per well: its metadata, score, p-value, q-value, hit flag and split label."""
    residuals: pd.DataFrame
    """One row per input row: its metadata and reconstruction - input per feature (float32)."""
    n_calibration: int
    n_tested: int
    n_hits: int


def conformal_pvalues(scores: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """``(1 + #{calibration >= s}) / (n + 1)`` for each score ``s`` (larger score = more novel)."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    if cal.size == 0:
        raise ValueError("conformal p-values need at least one calibration score")
    scores = np.asarray(scores, dtype=np.float64)
    n_ge = cal.size - np.searchsorted(cal, scores, side="left")
    return (1.0 + n_ge) / (cal.size + 1.0)


def leave_one_out_pvalues(calibration: np.ndarray) -> np.ndarray:
    """Conformal p-value of each calibration score against the other calibration scores."""
    cal = np.asarray(calibration, dtype=np.float64)
    srt = np.sort(cal)
    n_ge = cal.size - np.searchsorted(srt, cal, side="left")  # counts the score itself
    return n_ge / float(cal.size)


def bh_qvalues(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def check_features(model_features: Sequence[str], profiles: pd.DataFrame, *, source: str) -> list[str]:
    """The table's feature columns, which must equal the model's, in the same order.

    Raises
    ------
    ModelError
        Columns missing, extra, or in another order (never silently reordered).
    """
    table = [str(c) for c in feature_columns(profiles)]
    model_features = list(model_features)
    if table == model_features:
        return table
    missing = [c for c in model_features if c not in set(table)]
    extra = [c for c in table if c not in set(model_features)]

    def _show(cols: list[str]) -> str:
        return ", ".join(cols[:5]) + (" ..." if len(cols) > 5 else "")

    if not missing and not extra:
        detail = "the same feature columns in a different order"
    else:
        parts = []
        if missing:
            parts.append(f"{len(missing)} checkpoint feature(s) missing from the table ({_show(missing)})")
        if extra:
            parts.append(f"{len(extra)} table feature(s) unknown to the checkpoint ({_show(extra)})")
        detail = "; ".join(parts)
    raise ModelError(
        f"{source}: feature columns differ from the checkpoint's ({len(model_features)} in the "
        f"checkpoint, {len(table)} in the table): {detail}; score the table the model was trained "
        f"on, or retrain the model on this table"
    )


def reconstruct(model, x: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """Reconstructions of the rows of ``x`` (float32), batch by batch, in eval mode on CPU."""
    import torch

    model = model.eval()
    out = np.empty(x.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            out[start : start + batch_size] = model(batch).float().numpy()
    return out


def score_profiles(
    profiles: pd.DataFrame,
    model,
    split: NoveltySplit,
    *,
    reference: str = "negcon",
    hit_q: float = 0.05,
    site_aggregate: str = "median",
    exclude_pert_types: Sequence[str] = ("empty",),
    min_calibration_wells: int = 8,
    batch_size: int = 4096,
    source: str = "profiles",
) -> NoveltyScores:
    """Score every row and well of ``profiles`` with a trained novelty autoencoder.

    Parameters
    ----------
    profiles
        Well profiles (or site profiles with ``Metadata_Site``), the feature columns exactly those
        of the model.
    model
        A :class:`~cytoscreen.novelty.model.NoveltyAutoencoder`.
    split
        The control-well split the model was trained with (stored in its checkpoint).
    reference
        ``Metadata_pert_type`` of the control wells.
    hit_q
        A tested well is a hit when its BH q-value is at most ``hit_q``.
    site_aggregate
        ``median`` or ``mean`` of site scores per well (site-level tables only).
    exclude_pert_types
        ``Metadata_pert_type`` values never tested (they keep score and p-value).
    min_calibration_wells
        Fewest calibration wells that must be present in the table.

    Raises
    ------
    ModelError
        Feature columns differ from the model's.
    InputDataError
        NaN features, too few calibration wells present, or split wells that are not controls.
    """
    if site_aggregate not in SITE_AGGREGATES:
        raise ValueError(f"site_aggregate must be one of {SITE_AGGREGATES}, not {site_aggregate!r}")
    features = check_features(model.hparams["features"], profiles, source=source)
    check_profiles(profiles, features=features, source=source)

    keys = well_keys(profiles)
    labels = split.labels(keys)
    is_ref = (profiles[PERT_TYPE].astype(str) == reference).to_numpy()
    wrong = (labels != NO_SPLIT) & ~is_ref
    if wrong.any():
        first = keys[int(np.flatnonzero(wrong)[0])]
        raise InputDataError(
            f"{source}: {int(wrong.sum())} row(s) of control wells in the checkpoint's split are "
            f"not {PERT_TYPE} == {reference!r} here (first: {first[0]} {first[1]}); the platemap "
            f"changed since training, so retrain the model"
        )

    x = profiles[features].to_numpy(dtype=np.float32)
    resid = reconstruct(model, x, batch_size=batch_size)
    resid -= x  # reconstruction - input, in place
    del x
    row_score = np.einsum("ij,ij->i", resid, resid, dtype=np.float64) / resid.shape[1]

    meta_cols = [c for c in profiles.columns if c not in set(features)]
    residuals = pd.concat(
        [
            profiles[meta_cols].reset_index(drop=True),
            pd.DataFrame(resid, columns=features, copy=False),
        ],
        axis=1,
    )[list(profiles.columns)]

    wells = _well_table(profiles, meta_cols, row_score, site_aggregate)
    wkeys = well_keys(wells)
    wlabels = split.labels(wkeys)
    score = wells[NOVELTY_SCORE].to_numpy()
    is_cal = wlabels == "calibration"
    n_cal = int(is_cal.sum())
    n_expected = len(split.calibration)
    if n_cal < max(int(min_calibration_wells), 1):
        raise InputDataError(
            f"{source}: {n_cal} of the checkpoint's {n_expected} calibration wells are in the "
            f"table, fewer than the minimum {max(int(min_calibration_wells), 1)}; score the table "
            f"the model was trained on"
        )
    if n_cal < n_expected:
        logger.warning(
            "%s: %d of the checkpoint's %d calibration wells are missing from the table",
            source, n_expected - n_cal, n_expected,
        )
    if 1.0 / (n_cal + 1) > hit_q:
        logger.warning(
            "%s: with %d calibration wells the smallest p-value is 1/%d = %.3g > hit_q %g, so no "
            "well can be a hit; add control wells or raise novelty.calibration_fraction",
            source, n_cal, n_cal + 1, 1.0 / (n_cal + 1), hit_q,
        )
    cal_scores = score[is_cal]
    pvals = conformal_pvalues(score, cal_scores)
    pvals[is_cal] = leave_one_out_pvalues(cal_scores)
    excluded = wells[PERT_TYPE].astype(str).isin([str(t) for t in exclude_pert_types]).to_numpy()
    tested = (wlabels == NO_SPLIT) & ~excluded
    qvals = bh_qvalues(np.where(tested, pvals, np.nan))
    hits = tested & (qvals <= hit_q)

    wells[NOVELTY_PVALUE] = pvals
    wells[NOVELTY_QVALUE] = qvals
    wells[NOVELTY_HIT] = hits.astype(bool)
    wells[NOVELTY_SPLIT] = wlabels.astype(str)
    counts = {name: int((wlabels == name).sum()) for name in ("train", "val", "calibration")}
    logger.info(
        "%s: scored %d rows in %d wells; null from %d calibration wells (smallest p %.3g); "
        "tested %d wells (not tested: %d train, %d val control wells, %d excluded by pert_type); "
        "%d hit(s) at q <= %g",
        source, len(profiles), len(wells), n_cal, 1 / (n_cal + 1), int(tested.sum()),
        counts["train"], counts["val"], int(((wlabels == NO_SPLIT) & excluded).sum()),
        int(hits.sum()), hit_q,
    )
    return NoveltyScores(
        novelty=wells,
        residuals=residuals,
        n_calibration=n_cal,
        n_tested=int(tested.sum()),
        n_hits=int(hits.sum()),
    )


def _well_table(
    profiles: pd.DataFrame, meta_cols: list[str], row_score: np.ndarray, site_aggregate: str
) -> pd.DataFrame:
    """One row per well with its metadata and ``Metadata_Novelty_Score``."""
    keep = [c for c in meta_cols if c not in NOVELTY_COLUMNS]
    if SITE not in profiles.columns:
        wells = profiles[keep].reset_index(drop=True).copy()
        wells[NOVELTY_SCORE] = row_score
        return wells
    frame = profiles[keep].reset_index(drop=True).copy()
    frame["_score"] = row_score
    group = frame.groupby([PLATE, WELL], sort=False, dropna=False)
    cols = [c for c in keep if c not in (PLATE, WELL, SITE)]
    varying = [c for c in cols if (group[c].nunique(dropna=False) > 1).any()]
    if varying:
        logger.info(
            "site-level table: %d metadata column(s) vary within wells and are left out of the "
            "well table (%s)", len(varying), ", ".join(varying[:5]),
        )
    constant = [c for c in cols if c not in set(varying)]
    wells = group[constant].first() if constant else group.size().to_frame().iloc[:, :0]
    wells = wells.reset_index()
    wells = wells[[c for c in keep if c in set(wells.columns)]]
    if N_SITES not in wells.columns:
        wells[N_SITES] = group.size().to_numpy()
    wells[NOVELTY_SCORE] = group["_score"].agg(site_aggregate).to_numpy()
    return wells
