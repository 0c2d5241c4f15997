"""Column names of profile tables: feature columns, grouping and treatment columns, key checks.

The profile operations resolve each column they are given once, here: a name missing from the
table is a clear :class:`~cytoscreen.errors.InputDataError`, a case-insensitive match or a known
alias (BBBC021's ``Metadata_Compound`` for ``Metadata_perturbation``) is used with a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from cytoscreen import io, plate
from cytoscreen.errors import InputDataError

logger = logging.getLogger(__name__)

#: Sites of a well left out of its aggregate because a ``QC_*`` flag was set.
N_SITES_QC_FAILED = "Metadata_n_sites_qc_failed"

#: Perturbation columns used as the treatment column of consensus when ``Metadata_perturbation``
#: is absent (the same list :func:`cytoscreen.plate.negcon_rule` searches for a vehicle control).
PERTURBATION_ALIASES = plate.PERTURBATION_ALIASES
#: Concentration columns tried when ``Metadata_concentration`` is absent.
CONCENTRATION_ALIASES = (
    io.CONCENTRATION,
    "Metadata_Concentration",
    "Metadata_dose",
    "Metadata_mmoles_per_liter",
)


def shown(names: Sequence[Any], limit: int = 5) -> str:
    """First few names joined by commas, with ``...`` when there are more."""
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def resolve_features(
    df: pd.DataFrame, features: Sequence[str] | None, *, source: str
) -> list[str]:
    """The feature columns to use (``io.feature_columns`` when None), checked to exist and be numeric."""
    cols = io.feature_columns(df) if features is None else list(features)
    if not cols:
        raise InputDataError(
            f"{source}: no feature columns (features are the columns not starting with Metadata_ "
            f"or QC_)"
        )
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputDataError(f"{source}: feature column(s) not in the table: {shown(missing)}")
    dtypes = dict(zip(df.columns, df.dtypes, strict=True))
    if not all(pd.api.types.is_numeric_dtype(dtypes[col]) for col in cols):
        io.check_numeric_features(df, cols, source=source)  # raises with the standard message
    return cols


def resolve_column(
    df: pd.DataFrame, name: str, *, source: str, aliases: Sequence[str] = (), option: str = ""
) -> str:
    """``name`` if present, else a case-insensitive match, else the first alias present."""
    if name in df.columns:
        return name
    lower = {str(c).lower(): c for c in df.columns}
    for candidate in (name, *aliases):
        if candidate in df.columns:
            found = candidate
            break
        if candidate.lower() in lower:
            found = lower[candidate.lower()]
            break
    else:
        hint = f"; name the column with {option}" if option else ""
        raise InputDataError(f"{source}: column {name} not in the table{hint}")
    logger.info("%s: no column %s; using %s", source, name, found)
    return str(found)


def resolve_by(
    df: pd.DataFrame, by: Sequence[str] | str, *, source: str, option: str
) -> list[str]:
    """Grouping columns, each resolved by :func:`resolve_column`."""
    if isinstance(by, str):
        by = (by,)
    return [resolve_column(df, b, source=source, option=option) for b in by]


def check_unique(df: pd.DataFrame, keys: Sequence[str], *, source: str, what: str) -> None:
    """Raise when two rows share ``keys`` (only checked when every key column is present)."""
    if not keys or not all(k in df.columns for k in keys):
        return
    # on the key columns alone: DataFrame.duplicated(subset) makes a Series of every column first
    # (1,000 feature columns: ~10 ms per call)
    dup = df[list(keys)].duplicated(keep=False)
    if dup.any():
        examples = df.loc[dup, list(keys)].drop_duplicates().head(5)
        names = ["/".join(str(v) for v in row) for row in examples.itertuples(index=False)]
        raise InputDataError(
            f"{source}: {int(dup.sum())} rows share their {'/'.join(keys)} with another row "
            f"(e.g. {', '.join(names)}); each {what} must appear once: drop the duplicates, or "
            f"aggregate them first with `cytoscreen profiles aggregate`"
        )
