"""The segmentation readouts joined into a plate's QC table, and the ``QC_low_count`` flag.

:func:`segmented_qc` joins the per-site readouts of :mod:`cytoscreen.segment.segment` into the
plate's QC table and adds ``QC_low_count``: a site whose nucleus count is a robust low outlier
against the plate's QC-passed negcon sites, ``(count - median) / scale < -low_count_z`` with
:func:`cytoscreen.stats.robust_center_scale` (1.4826 MAD, its fallback, and for counts at last the
Poisson ``sqrt(median)``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cytoscreen import io, plate, stats
from cytoscreen.errors import InputDataError

logger = logging.getLogger(__name__)


def _robust_scale(ref: np.ndarray) -> tuple[float, float]:
    """(median, scale) of reference counts: 1.4826 MAD, else 1.2533 mean abs dev, else sqrt(median)."""
    med, scale = stats.robust_center_scale(ref)
    if not scale > 0:
        scale = math.sqrt(med)  # Poisson standard deviation of a count
    return med, scale


def low_count_z(
    table: pd.DataFrame,
    *,
    count: str = io.COUNT_NUCLEI,
    reference: str = "negcon",
    min_reference_sites: int = 4,
    by: Sequence[str] = (io.PLATE,),
) -> pd.Series:
    """Robust z-score of each site's ``count`` against the QC-passed reference sites of its plate.

    Reference sites: ``Metadata_pert_type == reference`` (:func:`cytoscreen.plate.pert_type_mask`:
    for ``negcon``, the one negcon rule with its DMSO fallback), no ``QC_*`` flag set
    (``QC_low_count`` itself ignored) and a count present.  Groups with fewer reference sites get
    NaN (and a warning).
    """
    z = pd.Series(np.nan, index=table.index, dtype=np.float64, name="low_count_z")
    if count not in table.columns:
        raise InputDataError(f"table has no {count} column; run `cytoscreen segment run` first")
    if not plate.pert_type_mask(table, reference).any():
        logger.warning("no %s sites (%s): QC_low_count has no reference; no site flagged",
                       reference, plate.negcon_rule(table)[1] if reference == plate.NEGCON else io.PERT_TYPE)
        return z
    values = pd.to_numeric(table[count], errors="coerce").astype(np.float64)
    flags = [c for c in io.qc_columns(table) if c != io.QC_LOW_COUNT]
    failed = plate.qc_failed(table, flags)
    is_ref = pd.Series(plate.pert_type_mask(table, reference), index=table.index) & ~failed & values.notna()
    for key, group in table.groupby(list(by), sort=False, dropna=False):
        idx = group.index
        ref = values.loc[idx][is_ref.loc[idx]].to_numpy()
        label = "/".join(map(str, key)) if isinstance(key, tuple) else str(key)
        if len(ref) < min_reference_sites:
            logger.warning(
                "plate %s: %d QC-passed %s site(s) with counts (< segment.min_reference_sites = %d); "
                "no QC_low_count flags", label, len(ref), reference, min_reference_sites,
            )
            continue
        med, scale = _robust_scale(ref)
        if scale > 0:
            z.loc[idx] = (values.loc[idx] - med) / scale
        else:
            z.loc[idx] = 0.0
    return z


def flag_low_count(table: pd.DataFrame, *, z: float | None = 3.0, reference: str = "negcon",
                   min_reference_sites: int = 4, count: str = io.COUNT_NUCLEI) -> pd.DataFrame:
    """A copy of ``table`` with bool ``QC_low_count`` (robust z of ``count`` below ``-z``).

    ``z=None`` adds the column with every site False.  Sites without a count are never flagged.
    """
    out = table.copy()
    if z is None:
        out[io.QC_LOW_COUNT] = False
        return out
    scores = low_count_z(table, count=count, reference=reference,
                         min_reference_sites=min_reference_sites)
    out[io.QC_LOW_COUNT] = (scores < -float(z)).fillna(False).astype(bool).to_numpy()
    return out


def segmented_qc(qc: pd.DataFrame, segmentation: pd.DataFrame, *, low_count_z: float | None = 3.0,
                 reference: str = "negcon", min_reference_sites: int = 4,
                 source: str = "segmentation") -> pd.DataFrame:
    """The QC table with the segmentation readouts joined per site and ``QC_low_count`` added.

    Rows and their order are those of ``qc``; sites without a segmentation row get missing
    readouts (counted in a warning).

    Raises
    ------
    InputDataError
        Key columns missing, duplicate sites, or no site in common.
    """
    from cytoscreen.segment.segment import OBJECTS, READOUT_COLUMNS, count_column

    keys = list(io.SITE_KEYS)
    for name, df in (("qc", qc), (source, segmentation)):
        missing = [k for k in keys if k not in df.columns]
        if missing:
            raise InputDataError(f"{name}: missing key column(s) {', '.join(missing)}")
        if df.duplicated(keys).any():
            raise InputDataError(f"{name}: duplicate site rows (same {', '.join(keys)})")
    cols = [c for c in READOUT_COLUMNS if c in segmentation.columns]
    if not cols:
        raise InputDataError(f"{source}: no segmentation readouts ({', '.join(READOUT_COLUMNS[:2])}, ...)")
    base = qc.drop(columns=[c for c in [*cols, io.QC_LOW_COUNT] if c in qc.columns])
    right = segmentation[keys + cols]
    merged = base.merge(right, on=keys, how="left", sort=False, validate="one_to_one", indicator=True)
    matched = merged.pop("_merge") == "both"
    if not matched.any():
        raise InputDataError(
            f"{source}: no site matches the QC table (plates {sorted(set(segmentation[io.PLATE]))} vs "
            f"{sorted(set(qc[io.PLATE]))})"
        )
    if not matched.all():
        logger.warning("%s: %d QC site(s) have no segmentation row; their counts are missing",
                       source, int((~matched).sum()))
    extra = len(segmentation) - int(matched.sum())
    if extra:
        logger.warning("%s: %d segmented site(s) are not in the QC table and were left out", source, extra)
    for obj in OBJECTS:
        if count_column(obj) in merged.columns:
            merged[count_column(obj)] = merged[count_column(obj)].astype("Int64")
    merged.index = qc.index
    out = flag_low_count(merged, z=low_count_z, reference=reference,
                         min_reference_sites=min_reference_sites)
    logger.info("%s: %d of %d sites flagged QC_low_count", source, int(out[io.QC_LOW_COUNT].sum()), len(out))
    return out
