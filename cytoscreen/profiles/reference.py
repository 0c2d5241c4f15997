"""Reference rows: the wells an operation is fitted on (negative controls, all wells, a query).

``"negcon"`` is :func:`cytoscreen.plate.negcon_mask`, the project's one rule for negative
controls; ``"all"`` is every row; a pandas query string or a boolean mask selects other rows; a
``column``/``value`` pair overrides them all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cytoscreen import io, plate
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles.columns import shown

logger = logging.getLogger(__name__)

#: ``reference`` values with a fixed meaning; any other string is a pandas query.
NEGCON = "negcon"
ALL = "all"


def reference_mask(
    df: pd.DataFrame,
    reference: str | pd.Series | np.ndarray,
    *,
    column: str | None = None,
    value: str | Sequence[str] | None = None,
    source: str = "table",
) -> tuple[np.ndarray, str]:
    """Boolean mask of the reference rows and a description of the rule used.

    ``reference`` is ``"negcon"``, ``"all"``, a pandas query string or a boolean mask; ``column`` and
    ``value`` (when ``column`` is given) override it with ``df[column] == value``.

    ``"negcon"`` is :func:`cytoscreen.plate.negcon_rule`: ``Metadata_pert_type`` equal to
    ``negcon`` (stripped, case-insensitive), else the vehicle (DMSO) rows of the first perturbation
    column present, e.g. ``Metadata_Compound == "DMSO"`` for the BBBC021 well table.  No negcon
    row at all is an :class:`~cytoscreen.errors.InputDataError`.
    """
    if column is not None:
        if column not in df.columns:
            raise InputDataError(
                f"{source}: reference column {column} not in the table; metadata columns are "
                f"{shown(io.metadata_columns(df), 12)}"
            )
        values = [value] if isinstance(value, str) else list(value or [])
        if not values:
            raise ConfigError(
                f"a reference column ({column}) needs a reference value: pass --reference-value"
            )
        mask = df[column].astype(str).isin([str(v) for v in values]).to_numpy()
        return mask, f"{column} in {values}" if len(values) > 1 else f"{column} == {values[0]!r}"
    if isinstance(reference, pd.Series | np.ndarray):
        mask = np.asarray(reference, dtype=bool)
        if mask.shape != (len(df),):
            raise ConfigError(
                f"{source}: the reference mask has {mask.shape[0]} entries for {len(df)} rows"
            )
        return mask, "the given reference rows"
    if reference == ALL:
        return np.ones(len(df), dtype=bool), "all rows"
    if reference == NEGCON:
        mask, rule = plate.negcon_rule(df)
        if not mask.any():
            raise InputDataError(
                f"{source}: cannot find the negcon reference rows: {rule}; pass --reference-col "
                f"COLUMN --reference-value VALUE (e.g. --reference-col Metadata_Compound "
                f"--reference-value DMSO), or --reference all"
            )
        why, _, found = rule.rpartition("; ")  # "<why no pert_type>; <vehicle rule> (n rows)"
        if why:
            (logger.warning if io.PERT_TYPE in df.columns else logger.info)(
                "%s: %s; negcon reference rows are %s", source, why, found
            )
        return mask, re.sub(r" \(\d+ rows\)$", "", found)
    if not isinstance(reference, str) or not reference.strip():
        raise ConfigError(f"reference must be 'negcon', 'all' or a pandas query, not {reference!r}")
    try:
        selected = df.query(reference)
    except Exception as err:  # pandas raises many types for a bad expression
        raise ConfigError(
            f"reference {reference!r} is neither 'negcon', 'all' nor a valid pandas query "
            f"({type(err).__name__}: {err})"
        ) from err
    mask = df.index.isin(selected.index) if df.index.is_unique else None
    if mask is None:
        tmp = df.reset_index(drop=True)
        mask = tmp.index.isin(tmp.query(reference).index)
    return np.asarray(mask, dtype=bool), reference
