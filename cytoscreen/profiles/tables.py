"""Reading and writing the profile tables of a step: the fast Parquet reader, stacked inputs,
blocklist and selection-record files, per-plate copies, and the parameters that select and
consensus take from the ``profiles:`` keys.

:func:`read_profiles` is the reader every ``cytoscreen profiles`` step uses (in memory and
streamed, :mod:`cytoscreen.profiles.stage` and :mod:`cytoscreen.profiles.stream_stage`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

#: The transforms ``select --untransformed`` leaves out (they are fitted on the screen's wells).
SCREEN_FITTED = ("spherize", "pca", "harmony")

#: Feature columns decoded per multi-threaded Parquet read: bounds Arrow's buffers (~13 MB at
#: 100,000 rows); 32 read as fast as 128 on the benchmark and peak ~90 MB lower.
_READ_COLUMNS = 32


def read_profiles(path: str | Path):
    """Read a profile table; Parquet features go straight into one float block.

    A Parquet file whose features are all float columns is decoded ``_READ_COLUMNS`` columns at a
    time (Arrow's multi-threaded reader) into one preallocated float32 (float64 when any feature
    is float64) array laid out as pandas' own block, which the table then wraps without copying;
    the ``Metadata_*``/``QC_*`` columns are inserted beside it.  Peak memory is about the block
    itself instead of Arrow's buffers plus pandas' copies; the result equals
    ``pandas.read_parquet``.  Other files go through :func:`cytoscreen.io.read_table`.
    """
    import numpy as np
    import pandas as pd

    p = Path(path)
    if not p.name.lower().endswith((".parquet", ".pq")) or not p.exists():
        return io.read_table(p)
    import pyarrow as pa
    import pyarrow.parquet as pq

    _prefer_jemalloc(pa)
    try:
        pf = pq.ParquetFile(p)
        schema = pf.schema_arrow
        names = list(schema.names)
        feats = [n for n in names if not n.startswith((io.METADATA_PREFIX, io.QC_PREFIX))]
        types = [schema.field(n).type for n in feats]
        floats = bool(feats) and all(pa.types.is_floating(t) for t in types)
        if not floats or len(set(names)) < len(names) or _has_pandas_index(schema):
            return io.read_table(p)
        small = (pa.float32(), pa.float16())
        dtype = np.float32 if all(t in small for t in types) else np.float64
        n_rows = pf.metadata.num_rows
        block = _empty_block((len(feats), n_rows), dtype)  # pandas' layout: one row per column
        for j0 in range(0, len(feats), _READ_COLUMNS):
            part = pf.read(columns=feats[j0 : j0 + _READ_COLUMNS], use_threads=True)
            for k, column in enumerate(part.columns):
                row = 0
                for chunk in column.chunks:
                    block[j0 + k, row : row + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
                    row += len(chunk)
            del part
        feat_set = set(feats)
        others = [n for n in names if n not in feat_set]
        meta = pf.read(columns=others, use_threads=True).to_pandas() if others else None
    except (OSError, ValueError, pa.ArrowException) as err:
        raise InputDataError(f"{p}: cannot read table ({err})") from err
    table = pd.DataFrame(block.T, columns=pd.Index(feats, dtype=object), copy=False)
    if meta is not None:
        # pandas may restore a stored RangeIndex (a file written from a slice starts at its offset):
        # take it over so the inserted metadata lines up by position, with or without copy-on-write
        table.index = meta.index
        position = {name: i for i, name in enumerate(names)}
        for name in others:  # in file order, each at its final position: features stay one block
            table.insert(position[name], name, meta[name])
    return table


def _empty_block(shape: tuple[int, int], dtype):
    """``np.empty(shape, dtype)``; a large one in its own anonymous mapping, in normal pages.

    numpy advises huge pages for large arrays; where the kernel then compacts memory to find them
    (a busy machine), first touching a 400 MB block cost 1.0-1.2 s of kernel time against
    0.15-0.5 s in 4 KB pages faulted one by one, and ~0.1 s mapped with ``MAP_POPULATE`` (Linux:
    the pages are allocated in one call; the block is written in full right after).  The mapping
    is freed with the array.
    """
    import mmap

    import numpy as np

    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < (1 << 24):
        return np.empty(shape, dtype=dtype)
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if populate:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    else:
        buf = mmap.mmap(-1, nbytes)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _prefer_jemalloc(pa) -> None:
    """Make jemalloc Arrow's default pool (once, unless ``ARROW_DEFAULT_MEMORY_POOL`` is set).

    The column-block reads allocate and free ~13 MB of Arrow buffers per block; with mimalloc (the
    wheels' default) the kernel time of one 400 MB read varied 0.3-1.9 CPU-s from run to run on the
    shared VM, with jemalloc 0.1-0.6 s (same user time).
    """
    import os

    global _POOL_SET
    if _POOL_SET or os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    _POOL_SET = True
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
        pass


_POOL_SET = False


def _has_pandas_index(schema) -> bool:
    """True if pandas stored an index in the file (``pandas.read_parquet`` would restore it)."""
    import json

    try:
        index = json.loads((schema.metadata or {})[b"pandas"]).get("index_columns", [])
    except (ValueError, KeyError, TypeError):
        return False
    return any(isinstance(c, str) for c in index)


def read_inputs(paths: Sequence[str | Path]):
    """Read and stack profile tables that must share their feature columns (same order)."""
    import pandas as pd

    paths = [str(p) for p in paths]
    frames = []
    for path in paths:
        df = read_profiles(path)
        logger.info("read %s (%d rows x %d columns)", path, len(df), df.shape[1])
        frames.append(df)
    if len(frames) == 1:
        return frames[0]
    first = io.feature_columns(frames[0])
    for path, df in zip(paths[1:], frames[1:], strict=True):
        feats = io.feature_columns(df)
        if feats != first:
            extra = sorted(set(feats) ^ set(first))
            raise InputDataError(
                f"{path}: its feature columns differ from those of {paths[0]}"
                + (f" ({', '.join(map(str, extra[:5]))} ...)" if extra else " (order)")
                + "; stacked inputs must come from the same features stage"
            )
    return pd.concat(frames, ignore_index=True)


def upstream_provenance(path: str) -> dict[str, Any] | None:
    """The provenance record of an input Parquet table (None for other files or foreign ones)."""
    if not path.lower().endswith(".parquet"):
        return None
    try:
        return io.read_provenance(path) or None
    except Exception:  # a foreign Parquet file without our metadata
        return None


def read_blocklist(path: str | Path) -> list[str]:
    """Feature names (or shell patterns), one per line, or pycytominer's CSV with a ``blocklist`` column."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: blocklist file not found")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if lines and lines[0] == "blocklist":  # pycytominer's CSV with a 'blocklist' column
        lines = lines[1:]
    return [ln for ln in lines if not ln.startswith("#")]


def selection_paths(output: str | Path) -> tuple[Path, Path]:
    """``<name>.selection.json`` and ``.tsv`` beside a select step's output."""
    base = Path(output)
    stem = base.name[: -len(base.suffix)] if base.suffix else base.name
    return base.with_name(f"{stem}.selection.json"), base.with_name(f"{stem}.selection.tsv")


def read_selection_record(path: str | Path) -> list[str]:
    """The kept feature names of a saved ``<name>.selection.json`` (``select --selection``)."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        return list(saved["kept"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a selection record ({err})") from err


def write_per_plate(out, output: str | Path, folder: str | Path, prov: Mapping[str, Any]) -> None:
    """Write ``folder/<plate>/<output file name>`` for each ``Metadata_Plate`` of ``out``."""
    if io.PLATE not in out.columns:
        raise InputDataError(f"--per-plate-dir needs a {io.PLATE} column")
    name = Path(output).name
    for plate, rows in out.groupby(io.PLATE, sort=False):
        plate = str(plate)
        if not plate or "/" in plate or plate in (".", ".."):
            raise InputDataError(f"plate name {plate!r} cannot be a folder name")
        path = Path(folder) / plate / name
        io.write_table(
            rows.reset_index(drop=True), path,
            **({"provenance": {**prov, "plate": plate}} if name.endswith(".parquet") else {}),
        )
        logger.info("wrote %s (%d rows)", path, len(rows))


def selection_parameters(opts: Mapping[str, Any], blocklist_file: str | Path | None = None) -> dict[str, Any]:
    """The :func:`~cytoscreen.profiles.select.feature_select` arguments of the ``profiles:`` keys.

    ``blocklist_file`` adds its names to ``profiles.blocklist``.
    """
    blocklist = list(opts["blocklist"] or [])
    if blocklist_file:
        blocklist += read_blocklist(blocklist_file)
    return {
        "operations": list(opts["select_operations"]),
        "samples": opts["select_samples"],
        "freq_cut": opts["freq_cut"],
        "unique_cut": opts["unique_cut"],
        "corr_threshold": opts["corr_threshold"],
        "corr_method": opts["corr_method"],
        "na_cutoff": opts["na_cutoff"],
        "outlier_cutoff": opts["outlier_cutoff"],
        "blocklist": blocklist,
    }


def consensus_parameters(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`~cytoscreen.profiles.consensus.consensus` arguments of the ``profiles:`` keys."""
    return {
        "method": opts["consensus_method"],
        "by": list(opts["consensus_by"]),
        "modz_method": opts["modz_method"],
        "modz_min_weight": opts["modz_min_weight"],
        "modz_precision": opts["modz_precision"],
    }
