"""``cytoscreen profiles select`` and ``consensus`` streamed plate by plate (``profiles.streaming``).

:func:`cytoscreen.profiles.stage.run_step` stacks every input into one table.  At campaign scale
(thousands of plates) that table does not fit in memory, so with ``profiles.streaming`` ``always``,
or ``auto`` above :data:`~cytoscreen.novelty.stream.STREAM_ABOVE_ROWS` input rows, the two
screen-wide steps run here instead, on the same inputs and settings, with the same outputs:

select
    statistics streamed input by input (:func:`cytoscreen.profiles.streaming.stream_select`), then
    each input read again, the selection applied and appended to OUTPUT (plates in input order,
    so ``novelty score`` can read it plate by plate), ``--per-plate-dir`` and ``--untransformed``
    written as it goes; ``<name>.selection.json`` / ``.tsv`` as in memory.  Exact as the in-memory
    selection except the frequency rule above 50,000 rows (a uniform sample) and the correlation of
    features with missing values (streaming.py's docstring).  Not streamed (``auto`` falls back to
    memory, ``always`` is an error): ``normalize_scale: screen``, the fitted transforms (asinh,
    spherize, pca, harmony) and ``corr_method: spearman``.
consensus
    the input read a batch of rows at a time into treatment buckets
    (:func:`cytoscreen.profiles.streaming.stream_consensus`): exact, memory about one bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.profiles.tables import (
    SCREEN_FITTED,
    consensus_parameters,
    read_profiles,
    read_selection_record,
    selection_parameters,
    selection_paths,
    upstream_provenance,
    write_per_plate,
)

logger = logging.getLogger(__name__)

#: Rows per bucket of the streamed consensus (64 MB of float32 at 1,280 features).
BUCKET_ROWS = 12_500
#: Rows per batch when a Parquet input is read in pieces.
_BATCH_ROWS = 20_000


def blocked(action: str, output: str, opts: Mapping[str, Any], selection=None) -> str | None:
    """Why ``action`` cannot be streamed with these settings (None when it can)."""
    if not output.lower().endswith(".parquet"):
        return "OUTPUT is not .parquet"
    if action == "consensus":
        return None
    from cytoscreen.profiles.transforms import TransformSettings

    if opts["normalize_scale"] == "screen":
        return "normalize_scale screen (the screen-wide scale needs every plate)"
    enabled = TransformSettings.from_config(opts).enabled
    if enabled:
        return f"the screen-fitted transform(s) {', '.join(enabled)}"
    if (not selection and "correlation_threshold" in opts["select_operations"]
            and opts["corr_method"] != "pearson"):
        return f"corr_method {opts['corr_method']} (rank correlations need the whole screen)"
    return None


def input_rows(inputs: Sequence[str]) -> int | None:
    """Rows of all inputs from their Parquet footers (None when one is not Parquet)."""
    from cytoscreen.io.stream import parquet_rows

    total = 0
    for path in inputs:
        rows = parquet_rows(path) if Path(path).exists() else None
        if rows is None:
            return None
        total += rows
    return total


def use_streaming(action: str, inputs: Sequence[str], output: str, opts: Mapping[str, Any],
                  selection=None) -> bool:
    """Whether ``profiles.streaming`` streams this select or consensus step (module docstring)."""
    from cytoscreen.io.stream import STREAM_ABOVE_ROWS, check_mode

    if action not in ("select", "consensus"):
        return False
    mode = check_mode(opts.get("streaming", "auto"), "profiles.streaming")
    if mode == "never":
        return False
    reason = blocked(action, output, opts, selection)
    rows = input_rows(inputs)
    if mode == "always":
        if reason or rows is None:
            raise ConfigError(
                f"profiles.streaming always: {action} cannot be streamed with "
                f"{reason or 'inputs that are not Parquet'}; set profiles.streaming: auto or never"
            )
        return True
    if rows is None or rows <= STREAM_ABOVE_ROWS:
        return False
    if reason:
        logger.info("%d input rows, but %s is not streamed with %s: in memory", rows, action, reason)
        return False
    logger.info("%d input rows: %s streamed (profiles.streaming auto)", rows, action)
    return True


def _batches(paths: Sequence[str], batch_rows: int = _BATCH_ROWS) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for path in paths:
        pf = pq.ParquetFile(path)
        for i, batch in enumerate(pf.iter_batches(batch_size=batch_rows, use_pandas_metadata=True)):
            yield f"{path} (batch {i})", batch.to_pandas()


def run_streamed(
    action: str,
    inputs: Sequence[str],
    output: str,
    opts: Mapping[str, Any],
    *,
    blocklist_file=None,
    selection=None,
    per_plate_dir=None,
    untransformed=None,
    config_hash: str | None = None,
) -> Path:
    """Run select or consensus streamed; the same outputs as :func:`~cytoscreen.profiles.stage.run_step`."""
    if action == "consensus":
        return _consensus(inputs, output, opts, config_hash, upstream_provenance(inputs[0]))
    return _select(inputs, output, opts, blocklist_file, selection, per_plate_dir, untransformed,
                   config_hash, upstream_provenance(inputs[0]))


def _consensus(inputs, output, opts, config_hash, upstream) -> Path:
    import pyarrow.parquet as pq

    from cytoscreen.profiles.consensus import resolve_treatment_columns
    from cytoscreen.profiles.streaming import stream_consensus

    first = pq.ParquetFile(inputs[0]).schema_arrow.empty_table().to_pandas()
    by = resolve_treatment_columns(first, list(opts["consensus_by"]), source=inputs[0])
    params = consensus_parameters(opts)
    rows = input_rows(inputs) or 0
    n_buckets = max(1, min(1024, -(-rows // BUCKET_ROWS)))
    spill = Path(output).with_name(f".{Path(output).name}.spill")
    try:  # treatments in order of first appearance, as in memory
        out = stream_consensus(
            _batches(inputs), spill, by=by, n_buckets=n_buckets, order="first",
            method=params["method"], modz_method=params["modz_method"],
            modz_min_weight=params["modz_min_weight"], modz_precision=params["modz_precision"],
        )
    finally:
        for stale in spill.glob("bucket*.*"):
            stale.unlink()
        if spill.exists():
            spill.rmdir()
    prov = io.provenance("profiles.consensus", parameters={**params, "streamed": n_buckets},
                         config_hash=config_hash, inputs=list(inputs), upstream=upstream)
    io.write_table(out, output, provenance=prov)
    logger.info("wrote %s (%d treatments, streamed over %d buckets)", output, len(out), n_buckets)
    return Path(output)


def _select(inputs, output, opts, blocklist_file, selection, per_plate_dir, untransformed,
            config_hash, upstream) -> Path:
    from contextlib import ExitStack

    from cytoscreen.io.stream import ParquetStream
    from cytoscreen.profiles.select import apply_selection
    from cytoscreen.profiles.streaming import stream_select

    json_path, tsv_path = selection_paths(output)
    if selection:
        kept = read_selection_record(selection)
        params: dict[str, Any] = {"selection": str(selection)}
        record: dict[str, Any] = {"applied_from": str(selection), "kept": kept}
    else:
        params = selection_parameters(opts, blocklist_file)
        chosen = stream_select(inputs, read=read_profiles, **params)
        kept = list(chosen.kept)
        record = chosen.record()
        io.write_table(chosen.table(), tsv_path)
    params["streamed"] = True
    prov = io.provenance("profiles.select", parameters=params, config_hash=config_hash,
                         inputs=list(inputs), upstream=upstream)
    with ExitStack() as stack:
        out = stack.enter_context(ParquetStream(output, provenance=prov))
        before = None
        if untransformed:
            if not str(untransformed).endswith(".parquet"):
                raise ConfigError(f"{untransformed}: streamed select writes --untransformed as .parquet")
            before = stack.enter_context(ParquetStream(untransformed, provenance={
                **prov, "parameters": {**params, "before": list(SCREEN_FITTED)}}))
        written: set[str] = set()
        for path in inputs:
            table = apply_selection(read_profiles(path), kept, source=str(path))
            out.write(table)
            if before is not None:
                before.write(table)
            if per_plate_dir:
                plates = set(table[io.PLATE].astype(str)) if io.PLATE in table.columns else set()
                if plates & written:
                    raise InputDataError(
                        f"{path}: plate {sorted(plates & written)[0]} is in an earlier input too; "
                        f"streamed --per-plate-dir needs each plate in one input (or "
                        f"profiles.streaming: never)"
                    )
                written |= plates
                write_per_plate(table, output, per_plate_dir, prov)
            del table
    io.write_json(record, json_path)
    logger.info("wrote %s (%d rows x %d features, streamed from %d inputs) and %s", output,
                out.rows, len(kept), len(inputs), json_path)
    return Path(output)
