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

    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    if provenance is not None:
        table = table.replace_schema_metadata(provenance_metadata(table.schema, provenance))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **parquet_write_options(table.schema))
    logger.debug("wrote %s (%d rows x %d columns)", path, table.num_rows, table.num_columns)
    return Path(path)


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
