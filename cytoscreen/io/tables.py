"""Tables on disk: Parquet written atomically with provenance in its metadata, Parquet/CSV/TSV read."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.io.atomic import atomic_path
from cytoscreen.io.columns import METADATA_PREFIX, QC_PREFIX

logger = logging.getLogger(__name__)

#: Key of the provenance record in a Parquet file's key-value metadata.
PROVENANCE_KEY = b"cytoscreen"


def write_parquet(
    df: pd.DataFrame | Any, path: str | os.PathLike, *, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write a DataFrame (or a ``pyarrow.Table``) to Parquet atomically, with ``provenance`` in the
    file's key-value metadata.

    Dictionary encoding, column statistics and zstd are kept for the metadata columns only: float
    feature columns barely compress (zstd saves ~10% on CNN and CellProfiler features) and those
    steps cost time (about 10x for wide embedding tables), so they are written with LZ4, which
    decodes about twice as fast as zstd (``benchmarks/profiles.py``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = df if isinstance(df, pa.Table) else arrow_table(df)
    if provenance is not None:
        table = table.replace_schema_metadata(provenance_metadata(table.schema, provenance))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **parquet_write_options(table.schema))
    logger.debug("wrote %s (%d rows x %d columns)", path, table.num_rows, table.num_columns)
    return Path(path)


def arrow_table(df: pd.DataFrame) -> Any:
    """``pyarrow.Table.from_pandas(df, preserve_index=False)``: the same table, schema and pandas
    metadata, with the float32/float64 columns wrapped without a per-column conversion.

    ``from_pandas`` costs ~40 us per column (a Series, type inference and metadata for each):
    ~40 ms for a 1,000-feature well table, written once per profiles step and in size of the
    write itself.  Here each contiguous float column becomes an Arrow array over its own memory (NaN
    as null, as ``from_pandas`` makes them) and only the other columns go through ``from_pandas``,
    whose pandas metadata gets the float columns' entries in their places (~4 ms).  Frames that do
    not fit that pattern (no other column, non-string or repeated column names, a named or
    multi-level column index, attrs) are converted by ``from_pandas`` itself.
    """
    import numpy as np
    import pyarrow as pa

    names = list(df.columns)
    floats = _float_columns(df)
    others = [i for i in range(len(names)) if i not in floats]
    if not floats or not others:
        return pa.Table.from_pandas(df, preserve_index=False)
    rest = pa.Table.from_pandas(df.iloc[:, others], preserve_index=False)
    meta = json.loads(rest.schema.metadata[b"pandas"])
    entries = iter(meta["columns"])
    arrays, fields, columns = [], [], []
    other_arrays = iter(zip(rest.columns, rest.schema, strict=True))
    for i, name in enumerate(names):
        if i in floats:
            values = floats[i]
            kind = "float32" if values.dtype == np.float32 else "float64"
            arrays.append(_float_array(values, pa.float32() if kind == "float32" else pa.float64()))
            fields.append(pa.field(name, arrays[-1].type))
            columns.append({"name": name, "field_name": name, "pandas_type": kind,
                            "numpy_type": kind, "metadata": None})
        else:
            array, field = next(other_arrays)
            arrays.append(array)
            fields.append(field)
            columns.append(next(entries))
    meta["columns"] = columns
    schema = pa.schema(fields, metadata={**rest.schema.metadata, b"pandas": json.dumps(meta).encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def _float_columns(df: pd.DataFrame) -> dict[int, Any]:
    """``{position: values}`` of the contiguous float32/float64 columns :func:`arrow_table` wraps
    (none unless the column names are unique strings under a plain index, without attrs)."""
    import numpy as np

    names = df.columns
    if (names.nlevels != 1 or names.name is not None or not names.is_unique or df.attrs
            or not all(type(n) is str for n in names)):
        return {}
    try:  # pandas' blocks: a 2-D block holds one column per row (a Series per column costs ~20 us)
        blocks = [(b.mgr_locs.as_array, b.values) for b in df._mgr.blocks]
    except AttributeError:  # another pandas layout
        return {}
    floats: dict[int, Any] = {}
    for locs, values in blocks:
        if (isinstance(values, np.ndarray) and values.ndim == 2 and len(locs) == len(values)
                and values.dtype in (np.float32, np.float64) and values.strides[1] == values.itemsize):
            floats.update(zip(locs.tolist(), values, strict=True))
    return floats


def _float_array(values: Any, kind: Any) -> Any:
    """An Arrow array over a contiguous float ndarray; NaN becomes null (a validity bitmap)."""
    import numpy as np
    import pyarrow as pa

    missing = np.isnan(values)
    n_missing = int(np.count_nonzero(missing))
    validity = (pa.py_buffer(np.packbits(~missing, bitorder="little")) if n_missing else None)
    return pa.Array.from_buffers(kind, len(values), [validity, pa.py_buffer(values)],
                                 null_count=n_missing)


def provenance_metadata(schema: Any, provenance: Mapping[str, Any]) -> dict:
    """An Arrow ``schema``'s key-value metadata with ``provenance`` added under :data:`PROVENANCE_KEY`."""
    meta = dict(schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps(dict(provenance), default=str).encode()
    return meta


def parquet_write_options(schema: Any) -> dict[str, Any]:
    """The ``pyarrow.parquet`` writer options of :func:`write_parquet` for an Arrow ``schema``:
    zstd, dictionaries and statistics on the metadata (and other non-float) columns, LZ4 on the
    float features."""
    import pyarrow as pa

    keyed = [f.name for f in schema
             if f.name.startswith((METADATA_PREFIX, QC_PREFIX)) or not pa.types.is_floating(f.type)]
    zstd = set(keyed)
    codec = {f.name: "zstd" if f.name in zstd else "lz4" for f in schema}
    return {"compression": codec, "use_dictionary": keyed, "write_statistics": keyed}


def write_table(df: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write a table by extension: ``.parquet`` (with provenance), ``.csv``, ``.tsv``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return write_parquet(df, path, **kwargs)
    if suffix in (".csv", ".tsv", ".txt"):
        with atomic_path(path) as tmp:
            df.to_csv(tmp, sep="," if suffix == ".csv" else "\t", index=False)
        return Path(path)
    raise ConfigError(f"{path}: unknown table format {suffix!r}; use .parquet, .csv or .tsv")


def read_table(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a Parquet, CSV or TSV table (gzip allowed) with one clear error if it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: file not found")
    name = path.name.lower()
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            return pd.read_parquet(path, columns=list(columns) if columns else None)
        sep = "\t" if (".tsv" in name or ".txt" in name) else ","
        df = pd.read_csv(path, sep=sep, usecols=list(columns) if columns else None)
        return df
    except (OSError, ValueError) as err:
        raise InputDataError(f"{path}: cannot read table ({err})") from err


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance record of a Parquet file written by :func:`write_parquet` (empty if none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}
