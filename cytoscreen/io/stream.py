"""Parquet tables read and written one plate at a time (campaign-scale steps).

:func:`plate_tables` reads one Parquet profile table plate by plate (the rows of a plate must be
together, as ``cytoscreen profiles select`` writes them); :class:`ParquetStream` writes a table
plate by plate, atomically (temporary file renamed at the end), with the codecs of
:func:`cytoscreen.io.write_parquet`.  ``profiles.streaming`` and ``novelty.streaming`` choose
between these and the in-memory path (:func:`check_mode`, :data:`STREAM_ABOVE_ROWS`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.io.atomic import atomic_path
from cytoscreen.io.columns import PLATE
from cytoscreen.io.tables import parquet_write_options, provenance_metadata

#: ``novelty.streaming`` (and ``profiles.streaming``) values.
STREAMING_MODES = ("auto", "always", "never")
#: Input rows above which ``auto`` streams: 100,000 wells of 1,280 features is ~3.7 GB scored in
#: memory (``benchmarks/campaign.py``), about half of an 8 GB job.
STREAM_ABOVE_ROWS = 100_000
#: Rows per Arrow batch when a table is read plate by plate.
_BATCH_ROWS = 8192
#: Rows gathered per Parquet row group by :class:`ParquetStream` (~80 MB at 1,280 float32
#: features).  One row group per plate would keep every column chunk's metadata in memory until
#: the footer is written: ~2.4 MB per 384-well plate of 1,280 features (measured at 1,000 plates).
ROW_GROUP_ROWS = 16_384


def check_mode(mode: str, key: str) -> str:
    if mode not in STREAMING_MODES:
        raise ConfigError(f"{key} must be one of {', '.join(STREAMING_MODES)}, not {mode!r}")
    return mode


# --- reading and writing plate by plate -----------------------------------------------------------
def parquet_rows(path: str | Path) -> int | None:
    """Rows of a Parquet file from its footer (None for other files)."""
    if not str(path).lower().endswith(".parquet"):
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def plates_contiguous(path: str | Path) -> bool:
    """Whether each plate's rows of a Parquet table are together (one run per plate)."""
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=[PLATE]).column(0).to_pandas().astype(str)
    runs = col.ne(col.shift()).sum()
    return int(runs) == col.nunique()


def plate_tables(path: str | Path, *, batch_rows: int = _BATCH_ROWS) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(plate, table)`` for each plate of a Parquet table, reading a few thousand rows at a time.

    Raises
    ------
    InputDataError
        No ``Metadata_Plate`` column, or a plate whose rows are not together.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if PLATE not in pf.schema_arrow.names:
        raise InputDataError(f"{path}: no {PLATE} column to stream plate by plate")
    done: set[str] = set()
    current: str | None = None
    parts: list[pa.RecordBatch] = []

    def emit() -> tuple[str, pd.DataFrame]:
        table = pa.Table.from_batches(parts).to_pandas()
        done.add(str(current))
        return str(current), table

    for batch in pf.iter_batches(batch_size=batch_rows, use_pandas_metadata=True):
        plates = batch.column(batch.schema.get_field_index(PLATE)).to_pandas().astype(str)
        change = np.flatnonzero(plates.ne(plates.shift()).to_numpy())
        bounds = [*change.tolist(), len(plates)]
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            plate = plates.iloc[start]
            if plate != current:
                if parts:
                    yield emit()
                    parts = []
                if plate in done:
                    raise InputDataError(
                        f"{path}: the rows of plate {plate} are not together; streamed scoring "
                        f"reads one plate at a time (sort the table by {PLATE}, or set "
                        f"streaming: never)"
                    )
                current = plate
            parts.append(batch.slice(start, stop - start))
    if parts:
        yield emit()


class ParquetStream:
    """Write a Parquet table one piece (plate) at a time, atomically, with provenance.

    Every piece must have the first piece's columns; pieces are gathered into row groups of about
    ``row_group_rows`` rows (memory: one row group); the file appears at ``path`` only when the
    ``with`` block ends without an error (:func:`cytoscreen.atomic_path`).
    """

    def __init__(self, path: str | Path, *, provenance: Mapping[str, Any] | None = None,
                 row_group_rows: int | None = None):
        self.path = Path(path)
        self.provenance = provenance
        self.row_group_rows = int(row_group_rows or ROW_GROUP_ROWS)
        self.rows = 0
        self._pending: list = []
        self._pending_rows = 0
        self._writer = None
        self._schema = None
        self._atomic = None
        self._tmp: Path | None = None

    def __enter__(self) -> ParquetStream:
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, df: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            schema = pa.Table.from_pandas(df, preserve_index=False).schema
            if self.provenance is not None:
                schema = schema.with_metadata(provenance_metadata(schema, self.provenance))
            self._schema = schema
            self._writer = pq.ParquetWriter(self._tmp, schema, **parquet_write_options(schema))
        self._pending.append(pa.Table.from_pandas(df, schema=self._schema, preserve_index=False))
        self._pending_rows += len(df)
        self.rows += len(df)
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            table = pa.concat_tables(self._pending)
            self._pending, self._pending_rows = [], 0
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self._writer is not None:
                if exc_type is None:
                    self._flush()
                self._writer.close()
            elif exc_type is None:
                raise InputDataError(f"{self.path}: nothing to write")
        except BaseException as err:
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        self._atomic.__exit__(exc_type, exc, tb)
        return False
