"""Summary tables of the plate and screen reports: pure functions, no file I/O.

- :func:`plate_summary`: headline numbers of a plate; :func:`hit_list`: the hit wells;
- :func:`moa_columns`, :func:`treatment_labels`, :func:`cluster_table`: the MoA stage's clusters;
- :func:`map_sample`: the treatments drawn on the UMAP (a capped sample at campaign scale);
- :func:`pca_2d`: a two-component PCA of well profiles (batch effects);
- :func:`evaluation_rows`: the headline metrics of ``evaluation.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import InputDataError
from cytoscreen.plate import negcon_mask, treatment_label
from cytoscreen.report.controls import ControlQuality
from cytoscreen.report.wells import SITES, SITES_FAILED, SITES_PROFILED, require_columns

EVALUATION_METRICS: tuple[tuple[str, str], ...] = (
    ("nsc", "not-same-compound 1-NN MoA accuracy"),
    ("nscb", "not-same-compound-or-batch 1-NN MoA accuracy"),
    ("map_replicate", "mean average precision: replicate wells against negcon wells"),
    ("map_moa", "mean average precision: same-MoA treatments against other MoAs"),
    ("cluster_ari", "adjusted Rand index of clusters against known MoAs"),
    ("n_wells", "wells evaluated"),
    ("n_treatments", "treatments"),
    ("n_moas", "known MoAs scored"),
    ("n_features", "features"),
)


def plate_summary(
    summary: pd.DataFrame, *, quality: ControlQuality | None = None
) -> dict[str, Any]:
    """Headline numbers of one plate from its :func:`well_summary`.

    Keys: plate, batch, sites, wells, wells_negcon, wells_poscon, wells_trt, sites_passed_qc,
    qc_pass_rate, one ``QC_*`` key per flag (sites flagged), wells_profiled (when well profiles
    were given), wells_tested and hits (when novelty was given), novelty_zprime (the novelty stage's
    ``Metadata_Novelty_PlateZPrime``), readout, z_prime, robust_z_prime.
    """
    pert = summary[io.PERT_TYPE].astype(str)
    sites = int(summary[SITES].sum())
    failed = int(summary[SITES_FAILED].sum())
    out: dict[str, Any] = {
        "plate": ", ".join(map(str, summary[io.PLATE].unique()))
        if io.PLATE in summary.columns
        else "",
        "batch": ", ".join(map(str, summary[io.BATCH].dropna().unique()))
        if io.BATCH in summary.columns
        else "",
        "sites": sites,
        "wells": len(summary),
        "wells_negcon": int(negcon_mask(summary).sum()),
        "wells_poscon": int((pert == "poscon").sum()),
        "wells_trt": int((pert == "trt").sum()),
        "sites_passed_qc": sites - failed,
        "qc_pass_rate": (sites - failed) / sites if sites else float("nan"),
    }
    for f in [c for c in summary.columns if str(c).startswith(io.QC_PREFIX)]:
        out[f] = int(summary[f].sum())
    if SITES_PROFILED in summary.columns:
        out["wells_profiled"] = int(summary[SITES_PROFILED].fillna(0).gt(0).sum())
    if io.NOVELTY_SCORE in summary.columns:
        tested = (
            summary[io.NOVELTY_QVALUE].notna()
            if io.NOVELTY_QVALUE in summary.columns
            else summary[io.NOVELTY_SCORE].notna()
        )
        out["wells_tested"] = int(tested.sum())
        out["hits"] = (
            int(summary[io.NOVELTY_HIT].fillna(False).astype(bool).sum())
            if io.NOVELTY_HIT in summary.columns
            else 0
        )
    if io.NOVELTY_PLATE_ZPRIME in summary.columns:
        z = pd.to_numeric(summary[io.NOVELTY_PLATE_ZPRIME], errors="coerce").dropna()
        out["novelty_zprime"] = float(z.iloc[0]) if len(z) else float("nan")
    if quality is not None:
        out["readout"] = quality.readout
        out["z_prime"] = quality.z_prime
        out["robust_z_prime"] = quality.robust_z_prime
    return out


def hit_list(novelty: pd.DataFrame) -> pd.DataFrame:
    """The hit wells of a novelty table (``Metadata_Novelty_Hit``), by q-value then score."""
    require_columns(novelty, [io.WELL, io.NOVELTY_SCORE, io.NOVELTY_HIT], "novelty", "a novelty.parquet")
    hits = novelty[novelty[io.NOVELTY_HIT].fillna(False).astype(bool)]
    sort = [c for c in (io.NOVELTY_QVALUE, io.NOVELTY_SCORE) if c in hits.columns]
    hits = hits.sort_values(sort, ascending=[True, False][: len(sort)], kind="stable")
    cols = [
        c
        for c in (
            io.PLATE,
            io.BATCH,
            io.WELL,
            io.PERTURBATION,
            io.CONCENTRATION,
            io.PERT_TYPE,
            io.MOA,
            io.NOVELTY_SCORE,
            io.NOVELTY_ROBUST_Z,
            io.NOVELTY_PVALUE,
            io.NOVELTY_QVALUE,
        )
        if c in hits.columns
    ]
    return hits[cols].reset_index(drop=True)


@dataclass(frozen=True)
class MoaColumns:
    """Column names found in a moa.parquet (None where absent)."""

    treatment: str | None
    cluster: str | None
    umap_1: str | None
    umap_2: str | None
    moa: str | None
    plate: str | None
    pert_type: str | None


def _find(columns: Sequence[str], exact: str, pattern: str) -> str | None:
    if exact in columns:
        return exact
    rx = re.compile(pattern, re.IGNORECASE)
    found = [c for c in columns if rx.search(str(c))]
    return found[0] if found else None


def moa_columns(moa: pd.DataFrame) -> MoaColumns:
    """Look up the MoA stage's columns by name (``cytoscreen.io`` constants), with a fallback to
    any column whose name matches (``cluster``, ``umap_1`` / ``umap1``, ...)."""
    cols = [str(c) for c in moa.columns]
    return MoaColumns(
        treatment=_find(cols, io.TREATMENT, r"treatment$"),
        cluster=_find(cols, io.CLUSTER, r"cluster(_label)?$"),
        umap_1=_find(cols, io.UMAP_1, r"umap[_ ]?(1|x)$"),
        umap_2=_find(cols, io.UMAP_2, r"umap[_ ]?(2|y)$"),
        moa=io.MOA if io.MOA in cols else None,
        plate=io.PLATE if io.PLATE in cols else None,
        pert_type=io.PERT_TYPE if io.PERT_TYPE in cols else None,
    )


def treatment_labels(table: pd.DataFrame, columns: MoaColumns | None = None) -> pd.Series:
    """``Metadata_Treatment`` (``columns.treatment``) when present, else ``<perturbation> @
    <concentration>`` (:func:`cytoscreen.plate.treatment_label`), else ``row <i>``."""
    if columns is not None and columns.treatment:
        return table[columns.treatment].astype(str)
    if io.PERTURBATION not in table.columns:
        return pd.Series([f"row {i}" for i in range(len(table))], index=table.index)
    return treatment_label(table, use_existing=False)


def cluster_table(moa: pd.DataFrame, columns: MoaColumns | None = None) -> pd.DataFrame:
    """One row per cluster: size, known-MoA composition, purity (share of the most common MoA
    among its labelled non-negcon treatments) and its members."""
    columns = columns or moa_columns(moa)
    if columns.cluster is None:
        raise InputDataError(
            f"moa: no cluster column (looked for {io.CLUSTER} or a name ending in cluster)"
        )
    labels = treatment_labels(moa, columns)
    rows = []
    for cluster, idx in moa.groupby(columns.cluster, sort=True).groups.items():
        sub = moa.loc[idx]
        rec: dict[str, Any] = {"cluster": cluster, "treatments": len(sub)}
        if columns.moa:
            known = sub[columns.moa].dropna().astype(str)
            if columns.pert_type:
                known = known[~negcon_mask(sub.loc[known.index].rename(columns={columns.pert_type: io.PERT_TYPE}))]
            counts = known.value_counts()
            rec["top_moa"] = counts.index[0] if len(counts) else ""
            rec["purity"] = float(counts.iloc[0] / counts.sum()) if len(counts) else float("nan")
            rec["moas"] = ", ".join(f"{m} ({n})" for m, n in counts.items())
        rec["members"] = ", ".join(labels.loc[idx])
        rows.append(rec)
    return pd.DataFrame(rows)


def pca_2d(
    profiles: pd.DataFrame, *, max_points: int = 5000, seed: int = 0
) -> tuple[pd.DataFrame, tuple[float, float]]:
    """First two principal components of a profile table (``cytoscreen.io.feature_columns``).

    Features with NaN or no variance are left out; at most ``max_points`` rows (a seeded random
    sample, in table order).  Returns the metadata columns plus ``PC1``/``PC2`` and the fractions
    of variance they explain.
    """
    features = io.feature_columns(profiles)
    io.check_numeric_features(profiles, features, source="profiles")
    if len(profiles) > max_points:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(profiles), max_points, replace=False))
        profiles = profiles.iloc[keep]
    x = profiles[features].to_numpy(dtype=float)
    good = np.isfinite(x).all(axis=0)
    x = x[:, good]
    if x.shape[1] < 2 or x.shape[0] < 3:
        raise InputDataError("profiles: fewer than two usable features or three rows; no PCA")
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    x = x[:, std > 0]
    if x.shape[1] < 2:
        raise InputDataError("profiles: fewer than two features vary; no PCA")
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    var = s**2 / np.sum(s**2)
    out = profiles[io.metadata_columns(profiles)].reset_index(drop=True).copy()
    out["PC1"] = u[:, 0] * s[0]
    out["PC2"] = u[:, 1] * s[1]
    return out, (float(var[0]), float(var[1]))


def evaluation_rows(evaluation: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """(metric, value, meaning) for the headline metrics of evaluation.json that it has."""
    rows = []
    for key, meaning in EVALUATION_METRICS:
        if key in evaluation and not isinstance(evaluation[key], dict | list):
            rows.append((key, evaluation[key], meaning))
    clustering = evaluation.get("clustering")
    if isinstance(clustering, Mapping):
        for key in ("n_clusters", "silhouette", "purity"):
            if key in clustering and not isinstance(clustering[key], dict | list):
                rows.append(
                    (f"clustering.{key}", clustering[key], f"clustering {key.replace('_', ' ')}")
                )
    return rows


@dataclass(frozen=True)
class MapSample:
    """The treatments drawn on the screen report's UMAP (:func:`map_sample`)."""

    keep: np.ndarray  #: row positions drawn, in table order
    total: int  #: treatments in the table
    poscon: int  #: poscon treatments (all drawn)
    hits: int  #: treatments with a novelty hit well
    hits_shown: int  #: of which drawn

    @property
    def sampled(self) -> bool:
        """Whether some treatments are left out."""
        return len(self.keep) < self.total


def _treatment_keys(table: pd.DataFrame, by: Sequence[str]) -> pd.Series:
    keys = table[by[0]].astype(str)
    for col in by[1:]:
        keys = keys + "\x1f" + table[col].astype(str)
    return keys


def map_sample(
    moa: pd.DataFrame,
    columns: MoaColumns | None = None,
    *,
    novelty: pd.DataFrame | None = None,
    max_points: int = 20_000,
    seed: int = 0,
) -> MapSample:
    """The treatments of ``moa`` to draw on the UMAP, at most ``max_points`` (when there are more).

    Every poscon treatment (``Metadata_pert_type`` of the MoA table, else of the novelty wells) is
    drawn, then the treatments with a novelty hit well (matched on perturbation and concentration,
    when both tables have them), then a seeded random sample of the rest fills the cap.  When the
    poscon and hit treatments alone exceed the cap, a seeded random sample of the hits fills it.
    """
    n = len(moa)
    pos = np.zeros(n, dtype=bool)
    hit = np.zeros(n, dtype=bool)
    by = [c for c in (io.PERTURBATION, io.CONCENTRATION) if c in moa.columns]
    if novelty is not None and by:
        by = [c for c in by if c in novelty.columns]
    keys = _treatment_keys(moa, by) if by and io.PERTURBATION in by else None
    pert_type = columns.pert_type if columns is not None else None
    if pert_type is None and io.PERT_TYPE in moa.columns:
        pert_type = io.PERT_TYPE
    if pert_type is not None:
        pos = (moa[pert_type].astype(str).str.strip().str.lower() == "poscon").to_numpy()
    elif keys is not None and novelty is not None and io.PERT_TYPE in novelty.columns:
        wells = novelty[novelty[io.PERT_TYPE].astype(str).str.strip().str.lower() == "poscon"]
        pos = keys.isin(set(_treatment_keys(wells, by))).to_numpy()
    if keys is not None and novelty is not None and io.NOVELTY_HIT in novelty.columns:
        wells = novelty[novelty[io.NOVELTY_HIT].fillna(False).astype(bool)]
        hit = keys.isin(set(_treatment_keys(wells, by))).to_numpy() & ~pos
    n_pos, n_hit = int(pos.sum()), int(hit.sum())
    if n <= max_points:
        return MapSample(np.arange(n), n, n_pos, n_hit, n_hit)
    rng = np.random.default_rng(seed)
    chosen = [np.flatnonzero(pos)]
    room = max(0, max_points - n_pos)
    for tier in (hit, ~pos & ~hit):
        rows = np.flatnonzero(tier)
        take = min(room, len(rows))
        chosen.append(rows if take == len(rows) else rng.choice(rows, take, replace=False))
        room -= take
    keep = np.sort(np.concatenate(chosen))
    return MapSample(keep, n, n_pos, n_hit, int(hit[keep].sum()))
