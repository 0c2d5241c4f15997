"""Feature matrices: one float array taken once from a table, checked, reduced, put back.

Each operation converts its features to one float matrix (:func:`feature_matrix`, no copy when
the table already holds one float block), works column-vectorised on it and builds the output
table once (:func:`with_features`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cytoscreen.errors import InputDataError
from cytoscreen.profiles.columns import shown

logger = logging.getLogger(__name__)


def matrix_dtype(df: pd.DataFrame, cols: Sequence[str]) -> type:
    """float32 when every feature column is float32 or a smaller type, else float64."""
    small = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int8), np.dtype(np.int16),
             np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.bool_))
    dtypes = set(df.dtypes[list(cols)].tolist()) if len(cols) else set()
    try:
        return np.float32 if all(np.dtype(d) in small for d in dtypes) else np.float64
    except TypeError:  # pandas extension dtypes
        return np.float64


def feature_matrix(
    df: pd.DataFrame, cols: Sequence[str], *, dtype: type | None = None
) -> np.ndarray:
    """The features as one float matrix (missing values as NaN), read-only.

    No copy is made when the features already form one block of ``dtype`` in the table (as
    :func:`cytoscreen.profiles.tables.read_profiles` builds it), so callers must not write to it;
    a block of another float type is converted in one pass (not through ``df[cols]``, which copies).
    """
    native = matrix_dtype(df, cols)
    dtype = dtype or native
    view = block_view(df, cols, native)
    if view is not None:
        return view if np.dtype(native) == np.dtype(dtype) else view.astype(dtype)
    sub = df[list(cols)]
    if all(pd.api.types.is_float_dtype(t) and not isinstance(t, pd.api.extensions.ExtensionDtype)
           for t in sub.dtypes):
        return sub.to_numpy(dtype=dtype, copy=False)
    return sub.to_numpy(dtype=dtype, na_value=np.nan)


def _manager_view(df: pd.DataFrame, cols: Sequence[str], dtype: type) -> np.ndarray | None | bool:
    """:func:`block_view` from pandas' block manager (where each column is: block number and row),
    without a Series per column (~15 us each: 15 ms per 1,000-feature view); False where the frame
    has no such manager (another pandas layout), for the Series-based check."""
    try:
        mgr = df._mgr
        blknos, blklocs = mgr.blknos, mgr.blklocs
    except AttributeError:
        return False
    at = df.columns.get_indexer(cols)
    if (at < 0).any():
        return False  # an unknown column: the Series-based check raises as pandas does
    numbers = blknos[at]
    if (numbers != numbers[0]).any():
        return None
    values = mgr.blocks[int(numbers[0])].values
    if not isinstance(values, np.ndarray) or values.ndim != 2 or values.dtype != np.dtype(dtype):
        return None
    rows = blklocs[at].astype(np.int64)
    step = int(rows[1] - rows[0]) if len(rows) > 1 else 1
    if step == 0 or (len(rows) > 2 and not np.all(np.diff(rows) == step)):
        return None
    first = values[rows[0]]
    return np.lib.stride_tricks.as_strided(
        first, shape=(len(first), len(cols)), strides=(first.strides[0], step * values.strides[0]),
        writeable=False,
    )


def block_view(df: pd.DataFrame, cols: Sequence[str], dtype: type) -> np.ndarray | None:
    """A read-only (rows, features) view of ``cols`` when pandas holds them in one ``dtype`` block
    at a constant column stride (as :func:`cytoscreen.profiles.tables.read_profiles` builds it);
    None otherwise.  Selecting a list of columns would copy them in pandas 2."""
    if len(cols) == 0 or not df.columns.is_unique:
        return None
    view = _manager_view(df, cols, dtype)
    if view is not False:
        return view
    arrays = [df[c].to_numpy(copy=False) for c in cols]
    first = arrays[0]
    base = first.base
    if base is None or first.ndim != 1 or first.dtype != np.dtype(dtype):
        return None
    if any(a.base is not base or a.dtype != first.dtype or a.strides != first.strides
           or a.shape != first.shape for a in arrays):
        return None
    addresses = np.array([a.__array_interface__["data"][0] for a in arrays], dtype=np.int64)
    step = int(addresses[1] - addresses[0]) if len(arrays) > 1 else first.itemsize * max(len(first), 1)
    if step == 0 or not np.all(np.diff(addresses) == step):
        return None
    return np.lib.stride_tricks.as_strided(
        first, shape=(len(first), len(cols)), strides=(first.strides[0], step), writeable=False
    )


def nonfinite_columns(x: np.ndarray) -> np.ndarray:
    """Mask of columns that may hold NaN or inf (a superset: a column sum may also overflow)."""
    if x.size == 0:
        return np.zeros(x.shape[1], dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        return ~np.isfinite(x.sum(axis=0))


def check_finite(
    x: np.ndarray, cols: Sequence[str], *, source: str, allow_nan: bool = True,
    suspect: np.ndarray | None = None,
) -> int:
    """Count missing values (logged); raise on infinite ones (and on NaN unless ``allow_nan``).

    ``suspect`` is :func:`nonfinite_columns` of ``x`` when the caller has it.  Returns the number
    of NaN values.
    """
    suspect = nonfinite_columns(x) if suspect is None else suspect
    if not suspect.any():
        return 0
    idx = np.flatnonzero(suspect)
    sub = x[:, idx]
    isinf = np.isinf(sub)
    if isinf.any():
        bad = idx[isinf.any(axis=0)]
        raise InputDataError(
            f"{source}: {int(isinf.sum())} infinite feature value(s) in {len(bad)} column(s) "
            f"({shown([cols[i] for i in bad])}); replace them with NaN (missing) upstream so "
            f"`profiles select --operations drop_na_columns` can drop those features"
        )
    isnan = np.isnan(sub)
    n_nan = int(isnan.sum())
    if n_nan:
        bad = idx[isnan.any(axis=0)]
        if not allow_nan:
            raise InputDataError(
                f"{source}: {n_nan} missing (NaN) feature value(s) in {len(bad)} column(s) "
                f"({shown([cols[i] for i in bad])}); drop those features first, e.g. with "
                f"`cytoscreen profiles select --operations drop_na_columns --na-cutoff 0`"
            )
        logger.warning(
            "%s: %d missing (NaN) feature value(s) in %d column(s) (%s); they are skipped by the "
            "statistics and stay missing",
            source, n_nan, len(bad), shown([cols[i] for i in bad]),
        )
    return n_nan


def with_features(
    df: pd.DataFrame, meta_cols: Sequence[str], x: np.ndarray, cols: Sequence[str]
) -> pd.DataFrame:
    """A table of ``df[meta_cols]`` (index reset) followed by float32 features ``x``."""
    meta = df.loc[:, list(meta_cols)].reset_index(drop=True)
    values = np.asarray(x, dtype=np.float32)
    if not values.flags.writeable:  # a view of the input table: the output gets its own copy
        values = values.copy()
    feats = pd.DataFrame(values, columns=pd.Index(list(cols)), copy=False)
    if len(meta.columns) > _MAX_INSERTS or len(meta) != len(feats) or set(meta.columns) & set(cols):
        return pd.concat([meta, feats], axis=1)
    # metadata inserted in front: the features stay the one block given (pd.concat copies it)
    for i, col in enumerate(meta.columns):
        feats.insert(i, col, meta[col])
    return feats


#: More metadata columns than this are joined with ``pd.concat`` (each insert adds a pandas block).
_MAX_INSERTS = 64


def replace_features(
    df: pd.DataFrame, cols: Sequence[str], x: np.ndarray, out_cols: Sequence[str] | None = None
) -> pd.DataFrame:
    """``df`` with its features ``cols`` replaced by ``x`` (named ``out_cols``, default ``cols``).

    Every other column is kept, in table order, before the new float32 features.
    """
    feat_set = set(cols)
    meta = [c for c in df.columns if c not in feat_set]
    return with_features(df, meta, x, cols if out_cols is None else out_cols)


def nanmedian0(x: np.ndarray) -> np.ndarray:
    """Column medians skipping NaN (plain median when there is none)."""
    if not np.isnan(x).any():
        return np.median(x, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(x, axis=0)
