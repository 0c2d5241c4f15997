"""Which sites of a plate get a thumbnail: :func:`select_gallery` (QC failures, top hits)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.plate import negcon_mask, qc_failed
from cytoscreen.report.wells import FLAG_ORDER, ID_COLUMNS, positions, require_columns, well_keys


@dataclass(frozen=True)
class Gallery:
    """Sites chosen for thumbnails: ``items`` has ``kind`` (qc, hit or top), the site's identity and
    platemap columns and ``reason``; the counts say how many candidates there were."""

    items: pd.DataFrame = field(repr=False)
    n_qc_failed: int = 0
    n_hits: int = 0
    n_tested: int = 0
    top_instead_of_hits: bool = False


def select_gallery(
    qc: pd.DataFrame, *, novelty: pd.DataFrame | None = None, max_qc: int = 12, max_hits: int = 12
) -> Gallery:
    """Pick the sites of the thumbnail gallery.

    QC failures: up to ``max_qc`` failing sites, taken in turn from each flag (unreadable,
    saturated, blurry, empty) so every kind of failure shows, in plate order within a flag.
    Hits: up to ``max_hits`` wells with ``Metadata_Novelty_Hit``, by q-value then score; with no
    hit, the highest-scoring tested non-negcon wells (``kind`` top).  A well is shown by its first
    site that passed QC (its first site if none did).
    """
    require_columns(qc, [io.WELL, io.SITE], "qc", "a per-site qc.parquet")
    failed = qc_failed(qc)
    pos = positions(qc, source="qc")
    base = qc.assign(
        _r=pos[io.ROW].to_numpy(), _c=pos[io.COL].to_numpy(), _failed=failed.to_numpy()
    )
    meta = [c for c in ID_COLUMNS if c in qc.columns] + [io.SITE]
    meta = list(dict.fromkeys(meta))
    rows: list[dict[str, Any]] = []

    fail = base[base["_failed"]].sort_values(["_r", "_c", io.SITE], kind="stable")
    flags = [f for f in FLAG_ORDER if f in fail.columns] + [
        f for f in io.qc_columns(fail) if f not in FLAG_ORDER
    ]
    if len(fail) and flags:
        flagged = fail[flags].fillna(False).astype(bool)
        primary = flagged.idxmax(axis=1)
        queues = {f: list(fail.index[primary == f]) for f in flags}
        picked: list[Any] = []
        while len(picked) < max_qc and any(queues.values()):
            for f in flags:
                if queues[f] and len(picked) < max_qc:
                    picked.append(queues[f].pop(0))
        for idx in sorted(
            picked, key=lambda i: (fail.at[i, "_r"], fail.at[i, "_c"], fail.at[i, io.SITE])
        ):
            rec = fail.loc[idx]
            reasons = [f.removeprefix(io.QC_PREFIX) for f in flags if bool(flagged.at[idx, f])]
            rows.append(
                {"kind": "qc", **rec[meta].to_dict(), "reason": "QC: " + ", ".join(reasons)}
            )

    n_hits = n_tested = 0
    top_instead = False
    if novelty is not None and len(novelty):
        nov = novelty
        if io.PLATE in nov.columns and io.PLATE in qc.columns:
            nov = nov[nov[io.PLATE].isin(qc[io.PLATE].unique())]
        nov = (
            nov[nov[io.NOVELTY_SCORE].notna()] if io.NOVELTY_SCORE in nov.columns else nov.iloc[:0]
        )
        q = (
            nov[io.NOVELTY_QVALUE]
            if io.NOVELTY_QVALUE in nov.columns
            else pd.Series(np.nan, index=nov.index)
        )
        tested = nov[q.notna()] if q.notna().any() else nov
        n_tested = len(tested)
        hit = (
            tested[io.NOVELTY_HIT].fillna(False).astype(bool)
            if io.NOVELTY_HIT in tested.columns
            else pd.Series(False, index=tested.index)
        )
        n_hits = int(hit.sum())
        if n_hits:
            chosen = tested[hit]
        else:
            top_instead = True
            chosen = tested[~negcon_mask(tested)]
        sort_cols = [c for c in (io.NOVELTY_QVALUE, io.NOVELTY_SCORE) if c in chosen.columns]
        chosen = chosen.sort_values(
            sort_cols, ascending=[True, False][: len(sort_cols)], kind="stable"
        )
        chosen = chosen.head(max_hits)
        # the site to show: first QC-passed site of the well
        sites = base.sort_values(["_failed", io.SITE], kind="stable").drop_duplicates(
            well_keys(base)
        )
        wkeys = [k for k in well_keys(base) if k in chosen.columns]
        nov_cols = [c for c in (io.NOVELTY_SCORE, io.NOVELTY_QVALUE) if c in chosen.columns]
        joined = chosen[wkeys + nov_cols].merge(sites, on=wkeys, how="inner", suffixes=("", "_qc"))
        for _, rec in joined.iterrows():
            parts = []
            if io.NOVELTY_SCORE in rec.index and pd.notna(rec[io.NOVELTY_SCORE]):
                parts.append(f"score {rec[io.NOVELTY_SCORE]:.3g}")
            if io.NOVELTY_QVALUE in rec.index and pd.notna(rec[io.NOVELTY_QVALUE]):
                parts.append(f"q {rec[io.NOVELTY_QVALUE]:.2g}")
            kind = "top" if top_instead else "hit"
            label = "top score" if top_instead else "hit"
            rows.append(
                {"kind": kind, **rec[meta].to_dict(), "reason": f"{label}: " + ", ".join(parts)}
            )
    items = pd.DataFrame(rows, columns=["kind", *meta, "reason"])
    return Gallery(
        items=items,
        n_qc_failed=int(failed.sum()),
        n_hits=n_hits,
        n_tested=n_tested,
        top_instead_of_hits=top_instead and n_tested > 0,
    )

