"""Benchmark metrics of profiles: NSC/NSCB 1-NN accuracy, mean average precision, ARI.

**NSC / NSCB** (Ljosa et al., J Biomol Screen 2013).  Each query treatment (compound x dose
profile) takes the MoA of its most cosine-similar other treatment.  NSC ("not same compound")
excludes every treatment of the query's compound from the candidates; NSCB ("not same compound or
batch") also excludes every treatment that shares a batch with the query (a treatment spread over
several batches has the set of them).  A MoA none of whose treatments has any same-MoA candidate
left under these rules cannot be scored and is dropped from queries and candidates, with its name
reported: for BBBC021 with week batches this drops exactly "Cholesterol-lowering" and "Kinase
inhibitors" from NSCB, the standard protocol, and nothing from NSC.  Accuracy is the fraction of
the remaining queries whose nearest candidate has the query's MoA.

**Multi-label MoAs.**  A label ``"a|b"`` (as in LINCS and JUMP annotations) names several MoAs; two
treatments have the same MoA when their label sets intersect (:func:`shared_moa_matrix`), for NSC,
NSCB and MoA mAP alike.  Per-MoA results are grouped by the label as written.

**mAP** (Kalinin et al., copairs).  For a query profile the candidates are its positives and its
negatives, ranked by decreasing cosine similarity (a positive ranks before a negative of equal
similarity, as in copairs); average precision is the mean over positives of the precision at the
positive's rank.  A group's mAP is the mean AP of its queries.  Its p-value comes from a null of
random rankings: for every distinct (positives, candidates) configuration ``null_size`` random
placements of the positives are drawn (seeded from ``seed`` and the configuration, so results do not
depend on call order), a group's null is the mean of its members' null draws (members with the same
configuration share one draw, as in copairs), and ``p = (#{null > mAP} + 1) / (null_size + 1)``.
q-values are Benjamini-Hochberg across groups.  These are the definitions of copairs 0.5
(``copairs.map.average_precision`` / ``mean_average_precision``); the tests compare the two.
copairs itself is not a runtime dependency (it caches null draws in ``~/.copairs``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cytoscreen.errors import InputDataError
from cytoscreen.moa.similarity import cosine_similarity, feature_matrix, unit_rows
from cytoscreen.stats import benjamini_hochberg

logger = logging.getLogger(__name__)

#: Largest number of similarity values held at once when ranking (queries x candidates).
_BLOCK_ELEMENTS = 4_000_000


# --- 1-NN accuracy ------------------------------------------------------------------------------
@dataclass(frozen=True)
class NNAccuracy:
    """Result of :func:`nn_accuracy`."""

    accuracy: float | None
    n_queries: int
    n_correct: int
    dropped_moas: tuple[str, ...]
    per_moa: pd.DataFrame = field(repr=False)
    predictions: pd.DataFrame = field(repr=False)


def _batch_sets(values: Iterable[object]) -> list[frozenset]:
    out = []
    for v in values:
        if isinstance(v, set | frozenset | list | tuple | np.ndarray):
            out.append(frozenset(v))
        elif v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(frozenset())
        else:
            out.append(frozenset([v]))
    return out


def shared_batch_matrix(batches: Sequence[object]) -> np.ndarray:
    """Boolean n x n matrix: True where two rows share at least one batch.

    Each entry of ``batches`` is a batch label or a collection of labels (a treatment whose wells
    lie in several batches); missing values share nothing.
    """
    sets = _batch_sets(batches)
    labels = sorted({b for s in sets for b in s}, key=str)
    pos = {b: i for i, b in enumerate(labels)}
    inc = np.zeros((len(sets), len(labels)), dtype=np.float64)
    for i, s in enumerate(sets):
        for b in s:
            inc[i, pos[b]] = 1.0
    return (inc @ inc.T) > 0


#: Separator of several MoAs in one label (``"a|b"``, as in LINCS and JUMP annotations).
MOA_SEPARATOR = "|"


def moa_label_sets(labels: Sequence[object], sep: str = MOA_SEPARATOR) -> list[frozenset]:
    """The MoAs of each label: ``"a|b"`` -> {a, b} (blanks stripped, empty parts dropped)."""
    return [frozenset(p.strip() for p in str(v).split(sep) if p.strip()) for v in labels]


def shared_moa_matrix(labels: Sequence[object], sep: str = MOA_SEPARATOR) -> np.ndarray:
    """Boolean n x n matrix: True where two labels share at least one MoA (multi-label rule)."""
    return shared_batch_matrix(moa_label_sets(labels, sep))


def nn_accuracy(
    treatments: pd.DataFrame,
    *,
    moa_col: str,
    compound_col: str,
    batch_col: str | None = None,
    features: Sequence[str] | None = None,
) -> NNAccuracy:
    """NSC (``batch_col=None``) or NSCB 1-nearest-neighbour MoA accuracy.

    Parameters
    ----------
    treatments
        One row per treatment to score (negative controls and rows without a MoA already removed).
    moa_col, compound_col
        MoA label and compound columns.
    batch_col
        For NSCB: a column holding each treatment's batch or collection of batches.

    Returns
    -------
    NNAccuracy
        ``accuracy`` is None when no MoA can be scored.  ``per_moa`` has columns moa, n_queries,
        n_correct, accuracy; ``predictions`` has one row per scored query with its neighbour.
    """
    for col in (moa_col, compound_col) + ((batch_col,) if batch_col else ()):
        if col not in treatments.columns:
            raise InputDataError(f"treatments: column {col!r} missing")
    x, _ = feature_matrix(treatments, features, source="treatments")
    moa = treatments[moa_col].astype(str).to_numpy()
    compound = treatments[compound_col].astype(str).to_numpy()
    allowed = compound[:, None] != compound[None, :]
    if batch_col:
        allowed &= ~shared_batch_matrix(treatments[batch_col].tolist())
    np.fill_diagonal(allowed, False)
    same_moa = shared_moa_matrix(moa)  # multi-label: labels that share a MoA match
    has_positive = (allowed & same_moa).any(axis=1)
    moas = list(dict.fromkeys(moa))
    dropped = tuple(m for m in moas if not has_positive[moa == m].any())
    keep = ~np.isin(moa, dropped)
    if dropped:
        logger.info(
            "%s: dropped MoA(s) %s: no treatment has a same-MoA candidate of another compound%s",
            "NSCB" if batch_col else "NSC",
            ", ".join(dropped),
            " and batch" if batch_col else "",
        )
    empty_per_moa = pd.DataFrame(columns=["moa", "n_queries", "n_correct", "accuracy"])
    if not keep.any():
        return NNAccuracy(None, 0, 0, dropped, empty_per_moa, pd.DataFrame())
    idx = np.flatnonzero(keep)
    sim = cosine_similarity(x[idx])
    cand = allowed[np.ix_(idx, idx)]
    sim = np.where(cand, sim, -np.inf)
    nn = np.argmax(sim, axis=1)
    has_cand = cand.any(axis=1)
    if not has_cand.all():
        logger.warning(
            "%d quer(ies) have no candidate treatment left after the exclusions; counted as wrong",
            int((~has_cand).sum()),
        )
    pred = np.where(has_cand, moa[idx][nn], None)
    correct = has_cand & same_moa[idx, idx[nn]]
    predictions = pd.DataFrame(
        {
            "row": treatments.index[idx],
            "moa": moa[idx],
            "compound": compound[idx],
            "neighbor_row": np.where(has_cand, treatments.index[idx][nn], None),
            "neighbor_compound": np.where(has_cand, compound[idx][nn], None),
            "predicted_moa": pred,
            "similarity": np.where(has_cand, sim[np.arange(len(idx)), nn], np.nan),
            "correct": correct,
        }
    )
    per_moa = (
        predictions.groupby("moa", sort=True)
        .agg(n_queries=("correct", "size"), n_correct=("correct", "sum"))
        .reset_index()
    )
    per_moa["accuracy"] = per_moa["n_correct"] / per_moa["n_queries"]
    n_correct = int(correct.sum())
    return NNAccuracy(
        accuracy=n_correct / len(idx),
        n_queries=len(idx),
        n_correct=n_correct,
        dropped_moas=dropped,
        per_moa=per_moa,
        predictions=predictions,
    )


# --- average precision --------------------------------------------------------------------------
def average_precision_ranked(sim: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision of each row's ranking.

    Parameters
    ----------
    sim
        Similarities, queries x candidates.
    pos, neg
        Boolean masks of the same shape: positive and negative candidates of each query (a
        candidate in neither mask is not ranked).

    Returns
    -------
    ndarray
        AP per query; NaN for a query without positives.
    """
    sim = np.asarray(sim, dtype=np.float64)
    ranked = pos | neg
    key = np.where(ranked, -sim, np.inf)
    # primary key: -similarity (unranked candidates last); ties: positives first (copairs order)
    order = np.lexsort((~pos, key), axis=1)
    rel = np.take_along_axis(pos & ranked, order, axis=1)
    valid = np.take_along_axis(ranked, order, axis=1)
    rank = np.cumsum(valid, axis=1)
    tp = np.cumsum(rel, axis=1)
    n_pos = rel.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(rel, tp / np.maximum(rank, 1), 0.0)
        return np.where(n_pos > 0, prec.sum(axis=1) / n_pos, np.nan)


def _query_blocks(n_queries: int, n_candidates: int) -> Iterable[slice]:
    step = max(1, _BLOCK_ELEMENTS // max(1, n_candidates))
    for start in range(0, n_queries, step):
        yield slice(start, min(n_queries, start + step))


def average_precision(
    x: np.ndarray,
    *,
    queries: np.ndarray,
    positive: Callable[[np.ndarray], np.ndarray],
    negative: Callable[[np.ndarray], np.ndarray],
) -> pd.DataFrame:
    """AP of every query row of ``x`` against all rows, in blocks of queries.

    ``positive(q)`` and ``negative(q)`` take an array of query row numbers and return boolean
    masks (len(q) x n_rows); a query is never its own candidate.

    Returns
    -------
    DataFrame
        One row per query: ``row`` (row number in ``x``), ``average_precision``, ``n_pos_pairs``,
        ``n_total_pairs`` (the copairs column names).
    """
    unit = unit_rows(x)
    out = []
    for sl in _query_blocks(len(queries), len(x)):
        q = queries[sl]
        pos = positive(q)
        neg = negative(q)
        pos[np.arange(len(q)), q] = False
        neg[np.arange(len(q)), q] = False
        neg &= ~pos
        sim = np.clip(unit[q] @ unit.T, -1.0, 1.0)
        ap = average_precision_ranked(sim, pos, neg)
        out.append(
            pd.DataFrame(
                {
                    "row": q,
                    "average_precision": ap,
                    "n_pos_pairs": pos.sum(axis=1),
                    "n_total_pairs": (pos | neg).sum(axis=1),
                }
            )
        )
    if not out:
        return pd.DataFrame(columns=["row", "average_precision", "n_pos_pairs", "n_total_pairs"])
    return pd.concat(out, ignore_index=True)


def null_average_precision(n_pos: int, n_total: int, *, null_size: int, seed: int) -> np.ndarray:
    """AP of ``null_size`` random rankings of ``n_pos`` positives among ``n_total`` candidates.

    The generator is seeded with ``(seed, n_pos, n_total)``, so a configuration always gets the
    same draws whatever else is computed.
    """
    if n_pos < 1 or n_total < n_pos:
        raise ValueError(f"invalid null configuration: {n_pos} positives of {n_total}")
    rng = np.random.default_rng([int(seed), int(n_pos), int(n_total)])
    out = np.empty(null_size, dtype=np.float64)
    ranks = np.arange(1, n_pos + 1, dtype=np.float64)
    chunk = max(1, 2_000_000 // n_total)
    for start in range(0, null_size, chunk):
        m = min(chunk, null_size - start)
        if n_pos == n_total:
            out[start : start + m] = 1.0
            continue
        keys = rng.random((m, n_total))
        positions = np.sort(np.argpartition(keys, n_pos - 1, axis=1)[:, :n_pos], axis=1) + 1.0
        out[start : start + m] = (ranks / positions).mean(axis=1)
    return out


@dataclass(frozen=True)
class MapResult:
    """Result of :func:`mean_average_precision` and the mAP wrappers."""

    mean_map: float | None
    fraction_significant: float | None
    n_groups: int
    per_group: pd.DataFrame = field(repr=False)
    per_query: pd.DataFrame = field(repr=False)


def mean_average_precision(
    ap: pd.DataFrame,
    *,
    group_by: Sequence[str],
    null_size: int = 10000,
    seed: int = 0,
    fdr: float = 0.05,
) -> MapResult:
    """Group mAP with permutation p-values and BH q-values (copairs ``mean_average_precision``).

    Parameters
    ----------
    ap
        Per-query table with ``average_precision``, ``n_pos_pairs``, ``n_total_pairs`` and the
        ``group_by`` columns; queries without positives are ignored.
    group_by
        Columns defining a group (a treatment for replicate retrieval, a MoA for MoA retrieval).
    fdr
        q-value threshold for ``significant`` and ``fraction_significant``.

    Returns
    -------
    MapResult
        ``per_group`` has the ``group_by`` columns, ``n_queries``, ``mean_average_precision``,
        ``p_value``, ``q_value`` and ``significant``; ``mean_map`` is the mean over groups.
    """
    group_by = list(group_by)
    valid = ap[ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)].reset_index(drop=True)
    if valid.empty:
        return _empty_map(group_by)
    confs = valid[["n_pos_pairs", "n_total_pairs"]].to_numpy(dtype=np.int64)
    uniq, inverse = np.unique(confs, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    nulls = np.stack([null_average_precision(int(m), int(t), null_size=null_size, seed=seed) for m, t in uniq])
    groups = valid.groupby(group_by, sort=True, dropna=False).indices
    rows = []
    for key, members in groups.items():
        key = key if isinstance(key, tuple) else (key,)
        score = float(valid["average_precision"].to_numpy()[members].mean())
        null = nulls[inverse[members]].mean(axis=0)
        p = (float((null > score).sum()) + 1.0) / (null_size + 1.0)
        rows.append((*key, len(members), score, p))
    per_group = pd.DataFrame(rows, columns=group_by + ["n_queries", "mean_average_precision", "p_value"])
    per_group["q_value"] = benjamini_hochberg(per_group["p_value"])
    per_group["significant"] = per_group["q_value"] < fdr
    return MapResult(
        mean_map=float(per_group["mean_average_precision"].mean()),
        fraction_significant=float(per_group["significant"].mean()),
        n_groups=len(per_group),
        per_group=per_group,
        per_query=ap,
    )


def _empty_map(group_by: Sequence[str]) -> MapResult:
    cols = list(group_by) + ["n_queries", "mean_average_precision", "p_value", "q_value"]
    return MapResult(None, None, 0, pd.DataFrame(columns=cols + ["significant"]), pd.DataFrame())


def _codes(values: pd.Series | pd.DataFrame) -> np.ndarray:
    if isinstance(values, pd.DataFrame):
        return values.groupby(list(values.columns), dropna=False, sort=False).ngroup().to_numpy()
    return pd.factorize(values, use_na_sentinel=False)[0]


def replicate_map(
    wells: pd.DataFrame,
    *,
    treatment_cols: Sequence[str],
    negcon: Sequence[bool] | np.ndarray,
    features: Sequence[str] | None = None,
    null_size: int = 10000,
    seed: int = 0,
    fdr: float = 0.05,
) -> MapResult:
    """Replicate retrieval mAP (copairs "phenotypic activity").

    Queries are the wells of non-control treatments with at least two wells; a query's positives
    are the other wells of its treatment and its negatives are all negative-control wells.  One
    mAP per treatment, with p-value and q-value; ``mean_map`` is the mean over treatments and
    ``fraction_significant`` the fraction with q < ``fdr``.
    """
    negcon = np.asarray(negcon, dtype=bool)
    if len(negcon) != len(wells):
        raise ValueError("negcon must have one entry per well")
    x, _ = feature_matrix(wells, features, source="wells")
    treatment_cols = list(treatment_cols)
    code = _codes(wells[treatment_cols].reset_index(drop=True))
    counts = np.bincount(code)
    queries = np.flatnonzero(~negcon & (counts[code] >= 2))
    if not negcon.any() or len(queries) == 0:
        logger.warning(
            "replicate mAP not computed: %s",
            "no negative-control wells" if not negcon.any() else "no treatment has 2 or more wells",
        )
        return _empty_map(treatment_cols)

    def positive(q: np.ndarray) -> np.ndarray:
        return code[q][:, None] == code[None, :]

    def negative(q: np.ndarray) -> np.ndarray:
        return np.broadcast_to(negcon, (len(q), len(negcon))).copy()

    ap = average_precision(x, queries=queries, positive=positive, negative=negative)
    meta = wells[treatment_cols].iloc[ap["row"].to_numpy()].reset_index(drop=True)
    ap = pd.concat([meta, ap], axis=1)
    return mean_average_precision(ap, group_by=treatment_cols, null_size=null_size, seed=seed, fdr=fdr)


def moa_map(
    treatments: pd.DataFrame,
    *,
    moa_col: str,
    compound_col: str,
    features: Sequence[str] | None = None,
    null_size: int = 10000,
    seed: int = 0,
    fdr: float = 0.05,
) -> MapResult:
    """MoA retrieval mAP (copairs "phenotypic consistency") on treatment profiles.

    ``treatments`` holds the treatments to score (controls and rows without a MoA removed).  A
    query's positives are the treatments of the same MoA and another compound, its negatives the
    treatments of other MoAs (labels sharing no MoA); treatments of the same compound are not ranked
    (as in NSC).  One mAP per MoA label with p-value and q-value; ``mean_map`` is the mean over them.
    """
    x, _ = feature_matrix(treatments, features, source="treatments")
    same_moa = shared_moa_matrix(treatments[moa_col].astype(str).tolist())
    cpd = _codes(treatments[compound_col].astype(str).reset_index(drop=True))
    queries = np.arange(len(treatments))

    def positive(q: np.ndarray) -> np.ndarray:
        return same_moa[q] & (cpd[q][:, None] != cpd[None, :])

    def negative(q: np.ndarray) -> np.ndarray:
        return ~same_moa[q]

    ap = average_precision(x, queries=queries, positive=positive, negative=negative)
    meta = treatments[[moa_col, compound_col]].iloc[ap["row"].to_numpy()].reset_index(drop=True)
    ap = pd.concat([meta, ap], axis=1)
    return mean_average_precision(ap, group_by=[moa_col], null_size=null_size, seed=seed, fdr=fdr)


# --- clusters vs truth ----------------------------------------------------------------------------
def adjusted_rand_index(truth: Sequence[object], clusters: Sequence[object]) -> float:
    """Adjusted Rand index of a clustering against known classes (1 = identical partitions)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(truth, dtype=str), np.asarray(clusters, dtype=str)))


def cluster_purity(truth: Sequence[object], clusters: Sequence[object]) -> float:
    """Fraction of items whose cluster's most common class is their own class."""
    table = pd.crosstab(np.asarray(clusters, dtype=str), np.asarray(truth, dtype=str))
    return float(table.max(axis=1).sum() / table.to_numpy().sum()) if table.size else float("nan")
