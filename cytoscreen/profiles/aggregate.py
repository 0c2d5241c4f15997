"""Site (or cell) rows to well profiles: median (default) or mean per group, QC-failed sites left out.

The output has one row per group (``Metadata_Plate`` x ``Metadata_Well`` by default) in order of
first appearance, the ``Metadata_*`` columns that are constant within every group (columns that
vary between the sites of a well, such as ``Metadata_Site`` or per-site QC metrics, are dropped and
named in the log), ``Metadata_n_sites`` (sites aggregated) and, when the input has ``QC_*`` flags,
``Metadata_n_sites_qc_failed`` (sites of the well that failed QC).  The boolean ``QC_*`` columns
themselves are summarised by that count and dropped.  Features are float32.

The statistics are pycytominer's ``aggregate`` (pandas ``groupby().median()`` / ``mean()``, NaN
skipped), computed on one float matrix with groups of equal size reduced together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.plate import qc_failed
from cytoscreen.profiles.arrays import check_finite, feature_matrix, nonfinite_columns, with_features
from cytoscreen.profiles.columns import N_SITES_QC_FAILED, check_unique, resolve_by, resolve_features, shown
from cytoscreen.profiles.groups import first_rows, group_codes, group_label, group_metadata, group_reduce

logger = logging.getLogger(__name__)

AGGREGATE_METHODS = ("median", "mean")


def join_qc(
    sites: pd.DataFrame,
    qc: pd.DataFrame,
    *,
    keys: Sequence[str] = io.SITE_KEYS,
    source: str = "qc",
) -> pd.DataFrame:
    """Add the ``QC_*`` flags of ``qc`` that ``sites`` lacks, matched on ``keys``; rows kept in order.

    Sites without a QC row get missing flags (treated as passed) and are counted in the log.
    """
    new = [col for col in io.qc_columns(qc) if col not in sites.columns]
    if not new:
        logger.debug("%s: the site table already has every QC flag", source)
        return sites
    missing = [k for k in keys if k not in sites.columns or k not in qc.columns]
    if missing:
        raise InputDataError(
            f"{source}: cannot match QC flags to sites: key column(s) {', '.join(missing)} missing"
        )
    check_unique(qc, keys, source=source, what="site")
    flags = sites.loc[:, list(keys)].merge(
        qc.loc[:, [*keys, *new]], on=list(keys), how="left", sort=False, validate="many_to_one"
    )
    unmatched = int(flags[new].isna().all(axis=1).sum())
    if unmatched:
        logger.warning("%s: %d site(s) have no QC row; treated as passed", source, unmatched)
    # only the flag columns are new; the feature columns are not copied
    return sites.assign(**{col: flags[col].to_numpy() for col in new})


def aggregate(
    sites: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    method: str = "median",
    by: Sequence[str] = io.WELL_KEYS,
    exclude_qc_failed: bool = True,
    source: str = "sites",
) -> pd.DataFrame:
    """Aggregate site rows to one row per ``by`` group.

    Parameters
    ----------
    sites
        Site (or cell) rows with ``Metadata_*`` columns and numeric features.
    features
        Feature columns; default :func:`cytoscreen.io.feature_columns`.
    method
        ``median`` (default) or ``mean``; NaN values are skipped.
    by
        Group columns, ``("Metadata_Plate", "Metadata_Well")`` by default.
    exclude_qc_failed
        Leave out rows with any ``QC_*`` flag set (counted in the log); a well whose every site
        failed is dropped and named in the log.

    Raises
    ------
    InputDataError
        Missing group columns, non-numeric or infinite features, duplicate site rows, no rows left.
    """
    if method not in AGGREGATE_METHODS:
        raise ConfigError(
            f"unknown aggregation method {method!r}; choose one of {', '.join(AGGREGATE_METHODS)}"
        )
    by = resolve_by(sites, by, source=source, option="--by")
    cols = resolve_features(sites, features, source=source)
    if io.SITE in sites.columns and io.SITE not in by:
        check_unique(sites, [*by, io.SITE], source=source, what="site")
    if len(sites) == 0:
        raise InputDataError(f"{source}: the table has no rows")

    failed = qc_failed(sites).to_numpy()
    has_qc = bool(io.qc_columns(sites))
    codes_all, n_all = group_codes(sites, by)
    failed_per_group = np.bincount(codes_all, weights=failed, minlength=n_all).astype(np.int64)
    if has_qc:
        per_flag = {
            col: int(qc_failed(sites, [col]).sum()) for col in io.qc_columns(sites)
        }
        flag_text = ", ".join(f"{k}: {v}" for k, v in per_flag.items() if v) or "none"
        if exclude_qc_failed:
            logger.info(
                "%s: excluded %d of %d site rows that failed QC (%s)",
                source, int(failed.sum()), len(sites), flag_text,
            )
        else:
            logger.info(
                "%s: kept all %d site rows, %d of them failed QC (%s)",
                source, len(sites), int(failed.sum()), flag_text,
            )
    keep = ~failed if exclude_qc_failed else np.ones(len(sites), dtype=bool)
    if not keep.any():
        raise InputDataError(
            f"{source}: every one of {len(sites)} site rows failed QC; nothing to aggregate (pass "
            f"--include-qc-failed to aggregate them anyway)"
        )
    lost = np.flatnonzero(np.bincount(codes_all, weights=keep, minlength=n_all) == 0)
    if len(lost):
        firsts = first_rows(codes_all, n_all)[lost]
        names = [group_label(sites, by, int(r)) for r in firsts]
        logger.warning(
            "%s: %d group(s) have no site that passed QC and are left out: %s",
            source, len(lost), shown(names, 10),
        )
    kept_rows = sites.loc[keep] if not keep.all() else sites
    x = feature_matrix(kept_rows, cols)
    nan_cols = nonfinite_columns(x)
    check_finite(x, cols, source=source, suspect=nan_cols)
    codes, n_groups = (codes_all, n_all) if keep.all() else group_codes(kept_rows, by)
    reduced = group_reduce(x, codes, n_groups, method, nan_cols=nan_cols)
    n_sites = np.bincount(codes, minlength=n_groups)

    out_meta, first = group_metadata(kept_rows, codes, n_groups, by=by,
                                       derived={io.N_SITES, N_SITES_QC_FAILED}, source=source,
                                       group_noun="group")
    out_meta[io.N_SITES] = n_sites.astype(np.int64)
    if has_qc:
        group_of_first = codes_all[np.flatnonzero(keep)[first]]
        out_meta[N_SITES_QC_FAILED] = failed_per_group[group_of_first]
    out = with_features(out_meta, list(out_meta.columns), reduced, cols)
    logger.info(
        "%s: aggregated %d rows to %d groups by %s (%s)",
        source, len(kept_rows), n_groups, "/".join(by), method,
    )
    return out
