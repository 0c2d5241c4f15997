"""Scoring: out-of-sample reconstruction errors, p-values, BH q-values, hits and a plate readout.

The score of a row under model ``k`` is its mean squared reconstruction error over the features
(the training loss); at site level a well's score is the median (or mean) over its sites.  Models
are cross-fitted (:mod:`cytoscreen.novelty.data`): a control well of fold ``k`` is scored by model
``k`` only, which never saw it, so **every** control score is out of sample and the null uses all
controls.  Any other well is out of sample for every model; its score is the geometric mean of its
``K`` scores.

p-values of the tested wells (``novelty.pvalue``):

- ``conformal`` (cross-conformal, Vovk 2015): ``(1 + sum_k #{i in fold k: s_k(i) >= s_k(x)}) /
  (n + 1)``, each well compared with the controls of fold ``k`` under the model that held them out.
  Distribution-free, but never below ``1 / (n + 1)``: a plate with 16 controls cannot reach 0.05.
- ``gaussian``: the predictive t-test of the log score against the ``n`` control log scores,
  ``t = (l - mean) / (sd * sqrt(1 + 1/n))`` with ``n - 1`` degrees of freedom (exact when log scores
  are normal), which resolves small p-values with few controls.
- ``auto``: ``conformal`` with at least ``novelty.conformal_min_controls`` control wells, else
  ``gaussian``.

Which wells are tested: every well except the cross-fitted control wells and wells whose
``Metadata_pert_type`` is excluded (``empty`` by default).  BH q-values are computed over the tested
wells only; a tested well is a hit when ``q <= hit_q``.  Control wells keep their out-of-sample score
and a leave-one-out p-value (to check calibration) but have no q-value and are never hits.

The plate readout: ``Metadata_Novelty_RobustZ``, the robust z (median, 1.4826 MAD) of each well's log
score against the out-of-sample log scores of its plate's control wells (the screen's controls when
the plate has fewer than :data:`MIN_PLATE_CONTROLS`), and ``Metadata_Novelty_PlateZPrime``, the
Z'-factor of that z between the plate's poscon and control wells (NaN with fewer than 2 of either);
``Metadata_Novelty_PosconZ`` and ``_PosconZPrime``, the cross-fitted projection on the plate's
poscon - negcon direction (:func:`cytoscreen.novelty.readout.poscon_direction_z`) and its Z'.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cytoscreen import stats
from cytoscreen.errors import InputDataError, ModelError
from cytoscreen.io import (
    N_SITES,
    NOVELTY_HIT,
    NOVELTY_PLATE_ZPRIME,
    NOVELTY_POSCON_Z,
    NOVELTY_POSCON_ZPRIME,
    NOVELTY_PVALUE,
    NOVELTY_QVALUE,
    NOVELTY_ROBUST_Z,
    NOVELTY_SCORE,
    NOVELTY_SPLIT,
    PLATE,
    SITE,
    WELL,
    feature_columns,
)
from cytoscreen.novelty.data import CROSSFIT, NO_SPLIT, check_profiles, reference_rows, well_keys
from cytoscreen.novelty.readout import plate_robust_z, plate_zprime, poscon_direction_z
from cytoscreen.novelty.settings import PVALUE_METHODS, SITE_AGGREGATES
from cytoscreen.plate import pert_type_mask

logger = logging.getLogger(__name__)

NOVELTY_COLUMNS = (
    NOVELTY_SCORE, NOVELTY_PVALUE, NOVELTY_QVALUE, NOVELTY_HIT, NOVELTY_SPLIT, NOVELTY_ROBUST_Z,
    NOVELTY_PLATE_ZPRIME, NOVELTY_POSCON_Z, NOVELTY_POSCON_ZPRIME,
)
#: Floor of a score before its log is taken (a perfect reconstruction would give -inf).
_SCORE_FLOOR = 1e-12


@dataclass(frozen=True)
class NoveltyScores:
    """Result of :func:`score_profiles`."""

    novelty: pd.DataFrame
    """One row per well: metadata, score, p-value, q-value, hit flag, split label, robust z, Z'."""
    residuals: pd.DataFrame
    """One row per input row: its metadata and reconstruction - input per feature (float32)."""
    n_controls: int
    n_tested: int
    n_hits: int
    pvalue_method: str
    zprime: dict[str, float]
    """Z'-factor of the novelty score per plate (NaN without 2 poscon and 2 control wells)."""
    poscon_zprime: dict[str, float]
    """Z'-factor of the poscon-direction readout per plate (NaN where it is not defined)."""


# --- p-values -------------------------------------------------------------------------------------
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


def cross_conformal_pvalues(fold_scores: np.ndarray, control_scores: Sequence[np.ndarray]) -> np.ndarray:
    """Cross-conformal p-values: ``(1 + sum_k #{control_k >= s_k}) / (n + 1)``.

    ``fold_scores`` is ``(wells, K)``: each well's score under model ``k``; ``control_scores[k]`` the
    out-of-sample scores of fold ``k``'s control wells (under model ``k``); ``n`` all of them.
    """
    fold_scores = np.asarray(fold_scores, dtype=np.float64)
    n = sum(len(c) for c in control_scores)
    if n == 0:
        raise ValueError("cross-conformal p-values need at least one control score")
    count = np.zeros(fold_scores.shape[0])
    for k, cal in enumerate(control_scores):
        cal = np.sort(np.asarray(cal, dtype=np.float64))
        count += cal.size - np.searchsorted(cal, fold_scores[:, k], side="left")
    return (1.0 + count) / (n + 1.0)


def gaussian_pvalues(log_scores: np.ndarray, control_log_scores: np.ndarray) -> np.ndarray:
    """Predictive t-test p-values (upper tail) of ``log_scores`` against the control log scores.

    For a new value exchangeable with ``n`` normal values of mean ``m`` and sd ``s``,
    ``(x - m) / (s sqrt(1 + 1/n))`` follows Student's t with ``n - 1`` degrees of freedom.
    """
    from scipy.stats import t as student_t

    ref = np.asarray(control_log_scores, dtype=np.float64)
    if ref.size < 3:
        raise ValueError("gaussian p-values need at least three control scores")
    sd = float(ref.std(ddof=1))
    x = np.asarray(log_scores, dtype=np.float64)
    if not sd > 0:
        return np.where(x > ref.mean(), 0.0, 1.0)
    t = (x - ref.mean()) / (sd * np.sqrt(1.0 + 1.0 / ref.size))
    return student_t.sf(t, df=ref.size - 1)


def gaussian_loo_pvalues(control_log_scores: np.ndarray) -> np.ndarray:
    """Each control's :func:`gaussian_pvalues` against the other controls."""
    ref = np.asarray(control_log_scores, dtype=np.float64)
    out = np.full(ref.shape, np.nan)
    if ref.size < 4:
        return out
    for i in range(ref.size):
        out[i] = gaussian_pvalues(ref[i : i + 1], np.delete(ref, i))[0]
    return out


def pvalue_method(method: str, n_controls: int, conformal_min_controls: int) -> str:
    """The method ``auto`` resolves to for ``n_controls`` control wells."""
    if method not in PVALUE_METHODS:
        raise ValueError(f"pvalue method must be one of {PVALUE_METHODS}, not {method!r}")
    if method != "auto":
        return method
    return "conformal" if n_controls >= int(conformal_min_controls) else "gaussian"


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


def _fold_scores(models, x: np.ndarray, row_fold: np.ndarray, *, batch_size: int):
    """Per-row scores under each model ``(rows, K)`` and the residuals: a control row's under its
    fold's model, any other row's against the mean reconstruction of all models."""
    n_models = len(models)
    scores = np.empty((x.shape[0], n_models), dtype=np.float64)
    resid = np.zeros(x.shape, dtype=np.float32)
    other = row_fold < 0
    for k, model in enumerate(models):
        recon = reconstruct(model, x, batch_size=batch_size)
        recon -= x
        scores[:, k] = np.einsum("ij,ij->i", recon, recon, dtype=np.float64) / max(x.shape[1], 1)
        mine = row_fold == k
        resid[mine] = recon[mine]
        resid[other] += recon[other] / n_models
    return scores, resid


def score_profiles(
    profiles: pd.DataFrame,
    crossfit,
    *,
    hit_q: float = 0.05,
    site_aggregate: str = "median",
    exclude_pert_types: Sequence[str] = ("empty",),
    pvalue: str = "auto",
    conformal_min_controls: int = 200,
    batch_size: int = 4096,
    source: str = "profiles",
) -> NoveltyScores:
    """Score every row and well of ``profiles`` with cross-fitted novelty autoencoders.

    Parameters
    ----------
    profiles
        Well profiles (or site profiles with ``Metadata_Site``), the feature columns exactly those
        of the models.
    crossfit
        A :class:`~cytoscreen.novelty.model.CrossFitModel` (from training or its checkpoint).
    hit_q
        A tested well is a hit when its BH q-value is at most ``hit_q``.
    site_aggregate
        ``median`` or ``mean`` of site scores per well (site-level tables only).
    exclude_pert_types
        ``Metadata_pert_type`` values never tested (they keep score and p-value).
    pvalue, conformal_min_controls
        The p-value method (see the module docstring).

    Raises
    ------
    ModelError
        Feature columns differ from the models'.
    InputDataError
        NaN features, or fold wells that are no longer controls.
    """
    if site_aggregate not in SITE_AGGREGATES:
        raise ValueError(f"site_aggregate must be one of {SITE_AGGREGATES}, not {site_aggregate!r}")
    chunk = score_chunk(profiles, crossfit, site_aggregate=site_aggregate, batch_size=batch_size,
                        source=source)
    return finish_scores(
        chunk.wells, chunk.well_scores, chunk.poscon_z, crossfit, residuals=chunk.residuals,
        n_rows=len(profiles), hit_q=hit_q, exclude_pert_types=exclude_pert_types, pvalue=pvalue,
        conformal_min_controls=conformal_min_controls, source=source,
    )


@dataclass(frozen=True)
class ChunkScores:
    """The row-level part of :func:`score_profiles` for a table of whole plates."""

    wells: pd.DataFrame
    """One row per well: its metadata (no novelty columns yet)."""
    well_scores: np.ndarray
    """``(wells, K)``: each well's score under each cross-fitted model."""
    poscon_z: np.ndarray
    """The poscon-direction readout per well (computed plate by plate)."""
    residuals: pd.DataFrame


def score_chunk(
    profiles: pd.DataFrame,
    crossfit,
    *,
    site_aggregate: str = "median",
    batch_size: int = 4096,
    source: str = "profiles",
) -> ChunkScores:
    """Reconstruction scores, well table, poscon readout and residuals of a table of whole plates.

    Everything here is per row or per plate, so a screen scored one plate at a time
    (:func:`cytoscreen.novelty.stream.score_plates`) gives the same values as the whole table;
    the screen-wide parts (p-values over all controls, BH q-values, robust z) are
    :func:`finish_scores`, which needs only these small per-well arrays.
    """
    features = check_features(crossfit.features, profiles, source=source)
    check_profiles(profiles, features=features, source=source)
    folds, reference = crossfit.folds, crossfit.reference

    keys = well_keys(profiles)
    row_fold = folds.fold_of(keys)
    wrong = (row_fold >= 0) & ~reference_rows(profiles, reference)
    if wrong.any():
        first = keys[int(np.flatnonzero(wrong)[0])]
        raise InputDataError(
            f"{source}: {int(wrong.sum())} row(s) of the checkpoint's control wells are not "
            f"{reference!r} wells here (first: {first[0]} {first[1]}); the platemap changed "
            f"since training, so retrain the model"
        )
    meta_cols = [c for c in profiles.columns if c not in set(features)]
    x = profiles[features].to_numpy(dtype=np.float32)
    if len(crossfit.models):
        row_scores, resid = _fold_scores(crossfit.models, x, row_fold, batch_size=batch_size)
    else:
        row_scores = np.empty((len(profiles), 0))
        resid = np.full(x.shape, np.nan, dtype=np.float32)
    del x
    residuals = pd.concat(
        [profiles[meta_cols].reset_index(drop=True), pd.DataFrame(resid, columns=features, copy=False)],
        axis=1,
    )[list(profiles.columns)]

    wells, well_scores = _well_table(profiles, meta_cols, row_scores, site_aggregate)
    plates = wells[PLATE].astype(str).to_numpy()
    is_neg = reference_rows(wells, reference)
    is_pos = pert_type_mask(wells, "poscon")
    poscon_z = poscon_direction_z(_well_features(profiles, features), plates, is_neg, is_pos)
    return ChunkScores(wells=wells, well_scores=well_scores, poscon_z=poscon_z, residuals=residuals)


def finish_scores(
    wells: pd.DataFrame,
    well_scores: np.ndarray,
    poscon_z: np.ndarray,
    crossfit,
    *,
    residuals: pd.DataFrame,
    n_rows: int,
    hit_q: float = 0.05,
    exclude_pert_types: Sequence[str] = ("empty",),
    pvalue: str = "auto",
    conformal_min_controls: int = 200,
    source: str = "profiles",
) -> NoveltyScores:
    """The screen-wide part of :func:`score_profiles`: p-values, q-values, hits, robust z and Z'
    from the per-well scores of every plate (``wells`` gets the novelty columns)."""
    folds, reference = crossfit.folds, crossfit.reference
    wfold = folds.fold_of(well_keys(wells))
    is_ctrl = wfold >= 0
    log_fold = np.log(np.maximum(well_scores, _SCORE_FLOOR))
    log_score = np.full(len(wells), np.nan)
    if well_scores.shape[1]:
        log_score = log_fold.mean(axis=1)
        log_score[is_ctrl] = log_fold[np.flatnonzero(is_ctrl), wfold[is_ctrl]]
    excluded = np.zeros(len(wells), dtype=bool)
    for pert_type in exclude_pert_types:
        excluded |= pert_type_mask(wells, str(pert_type))
    tested = ~is_ctrl & ~excluded & np.isfinite(log_score)
    n_ctrl = int(is_ctrl.sum())
    method = pvalue_method(pvalue, n_ctrl, conformal_min_controls)
    pvals = np.full(len(wells), np.nan)
    if n_ctrl >= 3:
        ctrl_log = log_score[is_ctrl]
        scored = ~is_ctrl & np.isfinite(log_score)  # tested and excluded wells
        if method == "conformal":
            per_fold = [well_scores[(wfold == k), k] for k in range(len(folds))]
            pvals[scored] = cross_conformal_pvalues(well_scores[scored], per_fold)
            pvals[is_ctrl] = leave_one_out_pvalues(ctrl_log)
        else:
            pvals[scored] = gaussian_pvalues(log_score[scored], ctrl_log)
            pvals[is_ctrl] = gaussian_loo_pvalues(ctrl_log)
    elif len(crossfit.models) or n_ctrl:
        logger.warning("%s: %d out-of-sample control well(s): no p-values or hits", source, n_ctrl)
    if method == "conformal" and n_ctrl and 1.0 / (n_ctrl + 1) > hit_q:
        logger.warning(
            "%s: with %d control wells the smallest conformal p-value is 1/%d = %.3g > hit_q %g, "
            "so no well can be a hit; use novelty.pvalue: gaussian (or auto) or add control wells",
            source, n_ctrl, n_ctrl + 1, 1.0 / (n_ctrl + 1), hit_q,
        )
    qvals = stats.benjamini_hochberg(np.where(tested, pvals, np.nan))
    hits = tested & (qvals <= hit_q)

    wells[NOVELTY_SCORE] = np.exp(log_score)
    wells[NOVELTY_PVALUE] = pvals
    wells[NOVELTY_QVALUE] = qvals
    wells[NOVELTY_HIT] = hits.astype(bool)
    wells[NOVELTY_SPLIT] = np.where(is_ctrl, CROSSFIT, NO_SPLIT).astype(str)
    plates = wells[PLATE].astype(str).to_numpy()
    is_pos = pert_type_mask(wells, "poscon")
    wells[NOVELTY_ROBUST_Z] = plate_robust_z(plates, log_score, is_ctrl, source=source)
    zprime = plate_zprime(wells[NOVELTY_ROBUST_Z].to_numpy(), plates, is_ctrl, is_pos)
    wells[NOVELTY_PLATE_ZPRIME] = wells[PLATE].astype(str).map(zprime).astype(np.float64)
    is_neg = reference_rows(wells, reference)
    wells[NOVELTY_POSCON_Z] = np.asarray(poscon_z, dtype=np.float64)
    poscon_zprime = plate_zprime(wells[NOVELTY_POSCON_Z].to_numpy(), plates, is_neg, is_pos)
    wells[NOVELTY_POSCON_ZPRIME] = wells[PLATE].astype(str).map(poscon_zprime).astype(np.float64)
    logger.info(
        "%s: scored %d rows in %d wells with %d cross-fitted model(s); null from %d out-of-sample "
        "control wells (%s p-values); tested %d wells (%d excluded by pert_type); %d hit(s) at "
        "q <= %g; Z' per plate: %s",
        source, n_rows, len(wells), len(crossfit.models), n_ctrl, method, int(tested.sum()),
        int((~is_ctrl & excluded).sum()), int(hits.sum()), hit_q,
        ", ".join(f"{p} {z:.2f}" for p, z in zprime.items()) or "n/a",
    )
    if any(np.isfinite(v) for v in poscon_zprime.values()):
        logger.info("%s: Z' of the poscon-direction readout per plate: %s", source,
                    ", ".join(f"{p} {z:.2f}" for p, z in poscon_zprime.items()))
    return NoveltyScores(
        novelty=wells, residuals=residuals, n_controls=n_ctrl, n_tested=int(tested.sum()),
        n_hits=int(hits.sum()), pvalue_method=method, zprime=zprime, poscon_zprime=poscon_zprime,
    )


def _well_features(profiles: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """The well profiles (site medians at site level), in the order of :func:`_well_table`."""
    if SITE not in profiles.columns:
        return profiles[list(features)].to_numpy(np.float64)
    group = profiles.groupby([PLATE, WELL], sort=False, dropna=False)
    return group[list(features)].median().to_numpy(np.float64)


def _well_table(
    profiles: pd.DataFrame, meta_cols: list[str], row_scores: np.ndarray, site_aggregate: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per well with its metadata, and its ``(wells, K)`` scores under each model."""
    keep = [c for c in meta_cols if c not in NOVELTY_COLUMNS]
    if SITE not in profiles.columns:
        return profiles[keep].reset_index(drop=True).copy(), row_scores
    frame = profiles[keep].reset_index(drop=True).copy()
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
    scores = pd.DataFrame(row_scores).groupby(group.ngroup().to_numpy(), sort=True).agg(site_aggregate)
    return wells, scores.to_numpy(dtype=np.float64).reshape(len(wells), row_scores.shape[1])
