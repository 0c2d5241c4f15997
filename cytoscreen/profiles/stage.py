"""One profiles step end to end, as ``cytoscreen profiles ACTION`` runs it: read, operate, write.

:func:`run_step` takes the input and output paths and the resolved ``profiles:`` config section;
the tables are read and written by :mod:`cytoscreen.profiles.tables` (:func:`read_profiles`, the
fast Parquet reader every step uses), and select and consensus above ``profiles.streaming``'s
size run streamed (:mod:`cytoscreen.profiles.stream_stage`).  The operations themselves are the
DataFrame functions of :mod:`cytoscreen.profiles` (aggregate, normalize, select, consensus).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cytoscreen import io
from cytoscreen.errors import ConfigError
from cytoscreen.profiles.tables import (
    SCREEN_FITTED,
    consensus_parameters,
    read_inputs,
    read_selection_record,
    selection_parameters,
    selection_paths,
    upstream_provenance,
    write_per_plate,
)

logger = logging.getLogger(__name__)

#: ``asinh``, ``spherize``, ``pca`` and ``harmony`` run one of
#: :data:`cytoscreen.profiles.transforms.TRANSFORMS`.
ACTIONS = ("aggregate", "normalize", "select", "consensus", "asinh", "spherize", "pca", "harmony")
TABLE_SUFFIXES = (".parquet", ".csv", ".tsv")


# --- one step ---------------------------------------------------------------------------------------
def run_step(
    action: str,
    inputs: Sequence[str | Path],
    output: str | Path,
    opts: Mapping[str, Any],
    *,
    qc: str | Path | None = None,
    blocklist_file: str | Path | None = None,
    selection: str | Path | None = None,
    per_plate_dir: str | Path | None = None,
    untransformed: str | Path | None = None,
    normalized: str | Path | None = None,
    config_hash: str | None = None,
) -> Path:
    """Read ``inputs``, run profiles ``action`` with the ``profiles:`` settings ``opts``, write ``output``.

    ``qc`` (aggregate) joins a QC table's flags to the sites; ``normalized`` (aggregate) also
    normalizes the wells just aggregated (the ``normalize`` settings of ``opts``) and writes them
    there, the same table as a separate ``normalize`` step would write from ``output`` but in one
    process (the workflow's per-plate step: each process pays ~0.6 CPU-s of start-up and imports
    before it reads anything); ``blocklist_file``, ``selection`` and
    ``per_plate_dir`` are select's (extra blocklist names, a saved selection to apply instead of
    selecting, and per-plate copies of the output); ``untransformed`` (select) also writes the
    table before spherize, PCA and Harmony, for steps such as novelty whose controls must not be
    the ones the sphering was fitted on.  Returns ``output``.
    """
    if action not in ACTIONS:
        raise ConfigError(f"unknown profiles action {action!r}; choose from {', '.join(ACTIONS)}")
    inputs, output = [str(p) for p in inputs], str(output)
    for path in (output, normalized):
        if path is not None and not str(path).lower().endswith(TABLE_SUFFIXES):
            raise ConfigError(f"{path}: unknown table format; an output must end in .parquet, .csv or .tsv")
    if normalized is not None and action != "aggregate":
        raise ConfigError(f"--normalized is an option of profiles aggregate, not of {action}")
    from cytoscreen.profiles.stream_stage import run_streamed, use_streaming

    if use_streaming(action, inputs, output, opts, selection):  # profiles.streaming
        return run_streamed(action, inputs, output, opts, blocklist_file=blocklist_file,
                            selection=selection, per_plate_dir=per_plate_dir,
                            untransformed=untransformed, config_hash=config_hash)
    table = read_inputs(inputs)
    source = inputs[0] if len(inputs) == 1 else f"{len(inputs)} tables"
    if action == "aggregate":
        out, params = _aggregate(table, opts, qc, inputs[0])
    elif action == "normalize":
        out, params = _normalize(table, opts, inputs[0])
    elif action == "select":
        out, params = _select(table, opts, output, source, blocklist_file, selection,
                              untransformed, config_hash)
    elif action == "consensus":
        out, params = _consensus(table, opts, inputs[0])
    else:
        out, params = _transform(table, opts, action, output, source)
    prov = io.provenance(
        f"profiles.{action}", parameters=params, config_hash=config_hash, inputs=list(inputs),
        upstream=upstream_provenance(inputs[0]),
    )
    io.write_table(out, output, **({"provenance": prov} if output.endswith(".parquet") else {}))
    logger.info("wrote %s (%d rows x %d features)", output, len(out), len(io.feature_columns(out)))
    if action == "select" and per_plate_dir:
        write_per_plate(out, output, per_plate_dir, prov)
    if normalized is not None:
        normalized = str(normalized)
        norm, norm_params = _normalize(out, opts, output)
        norm_prov = io.provenance("profiles.normalize", parameters=norm_params, config_hash=config_hash,
                                  inputs=[output], upstream=prov)
        io.write_table(norm, normalized, **({"provenance": norm_prov} if normalized.endswith(".parquet") else {}))
        logger.info("wrote %s (%d rows x %d features)", normalized, len(norm), len(io.feature_columns(norm)))
    return Path(output)


def _aggregate(table, opts, qc, source):
    from cytoscreen.profiles.aggregate import aggregate, join_qc

    if qc:
        table = join_qc(table, io.read_table(qc), source=str(qc))
    params = {
        "method": opts["aggregate_method"],
        "by": list(opts["aggregate_by"]),
        "exclude_qc_failed": bool(opts["exclude_qc_failed"]),
    }
    return aggregate(table, **params, source=source), params


def _reference_params(opts: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "reference": opts["reference"],
        "reference_column": opts["reference_column"],
        "reference_value": opts["reference_value"],
    }


def _normalize(table, opts, source):
    from cytoscreen.profiles.normalize import normalize

    params = {
        "method": opts["normalize_method"],
        "by": list(opts["normalize_by"]),
        **_reference_params(opts),
        "epsilon": opts["mad_robustize_epsilon"],
        "spherize_method": opts["spherize_method"],
        "spherize_epsilon": opts["spherize_epsilon"],
        "min_reference": opts["min_reference_wells"],
        "scale_over": opts["normalize_scale"],
    }
    return normalize(table, **params, source=source), params


def _select(table, opts, output, source, blocklist_file, selection, untransformed=None,
            config_hash=None):
    from cytoscreen.profiles.select import apply_selection, feature_select
    from cytoscreen.profiles.transforms import (
        TransformResult,
        TransformSettings,
        transform_profiles,
        write_fits,
    )

    json_path, tsv_path = selection_paths(output)
    scaled = None
    if opts["normalize_scale"] == "screen":  # the per-plate step only centred the plates
        from cytoscreen.profiles.screen_scale import screen_scale

        table, scaled = screen_scale(
            table, method=opts["normalize_method"], **_reference_params(opts),
            epsilon=opts["mad_robustize_epsilon"], source=source,
        )
    if selection:
        kept = read_selection_record(selection)
        out = apply_selection(table, kept, source=source)
        params: dict[str, Any] = {"selection": str(selection)}
        record = {"applied_from": str(selection), "kept": kept}
    else:
        params = selection_parameters(opts, blocklist_file)
        chosen = feature_select(table, **params, source=source)
        out = chosen.profiles
        record = chosen.record()
        io.write_table(chosen.table(), tsv_path)
    if scaled is not None:
        params["screen_scale"] = scaled.record()
        record.update(write_fits(TransformResult(out, {"scale": scaled}), output))
    post = TransformSettings.from_config(opts)
    if post.enabled:  # spherize -> pca -> harmony, each fit saved beside the output
        result = transform_profiles(out, post, snapshot_before=SCREEN_FITTED, source=source)
        out = result.profiles
        params["transforms"] = post.record()
        record.update(write_fits(result, output))
    if untransformed:
        before = result.snapshot if post.enabled else out
        prov = io.provenance("profiles.select", parameters={**params, "before": list(SCREEN_FITTED)},
                             config_hash=config_hash)
        io.write_table(before, str(untransformed),
                       **({"provenance": prov} if str(untransformed).endswith(".parquet") else {}))
        logger.info("wrote %s (before %s)", untransformed, ", ".join(SCREEN_FITTED))
    io.write_json(record, json_path)
    logger.info("wrote %s", json_path)
    return out, params


def _transform(table, opts, action, output, source):
    from cytoscreen.profiles.transforms import TransformSettings, transform_profiles, write_fits

    settings = TransformSettings.from_config(opts)
    result = transform_profiles(table, settings, steps=[action], source=source)
    write_fits(result, output)
    return result.profiles, settings.record(steps=[action])


def _consensus(table, opts, source):
    from cytoscreen.profiles.consensus import consensus

    params = consensus_parameters(opts)
    return consensus(table, **params, source=source), params
