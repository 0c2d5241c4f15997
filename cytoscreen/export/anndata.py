"""A profiles table as an ``AnnData`` object (scanpy, the scverse tools, pycytominer's AnnData output).

Layout of the object:

- ``X``: the feature columns (:func:`cytoscreen.io.feature_columns`) as float32, rows in table order;
- ``obs``: the ``Metadata_*`` and ``QC_*`` columns, dtypes kept (categoricals stay categorical,
  strings stay strings); its index is ``<plate>_<well>[_<site>]`` when that is unique, else the row
  number;
- ``var``: indexed by feature name, with ``channel``, ``backbone``, ``layer`` (``final`` or ``mid``)
  and ``index`` for CNN features named ``<Channel>_<backbone>_[mid_]<i>``; missing for other
  features (e.g. CellProfiler measurements);
- ``uns["provenance"]``: the Parquet file's provenance record (its ``upstream`` chain included)
  under ``source``, and this export's own record under ``export``.

``anndata`` is an optional dependency (``pip install 'cytoscreen[anndata]'``), imported when used.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

#: ``var`` columns describing CNN features.
VAR_CHANNEL = "channel"
VAR_BACKBONE = "backbone"
VAR_LAYER = "layer"
VAR_INDEX = "index"
#: ``uns`` key of the provenance.
UNS_PROVENANCE = "provenance"

_MID = "mid"
_FINAL = "final"
#: Fallback when the provenance names no channels: a channel token without ``_``.
_CNN_NAME = re.compile(r"^(?P<channel>[^_]+)_(?P<backbone>.+?)_(?:(?P<mid>mid)_)?(?P<index>\d+)$")


def _import_anndata():
    try:
        import anndata
    except ImportError as err:
        raise ConfigError("AnnData export needs the optional `anndata` package: "
                          "pip install 'cytoscreen[anndata]'") from err
    return anndata


def _walk_provenance(record: Any) -> Iterator[Mapping[str, Any]]:
    """Every mapping in a provenance record, the record first, then nested ones (``upstream``)."""
    if isinstance(record, Mapping):
        yield record
        for value in record.values():
            yield from _walk_provenance(value)
    elif isinstance(record, list | tuple):
        for value in record:
            yield from _walk_provenance(value)


def provenance_names(record: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """Channel names and backbone tokens found anywhere in a provenance record (upstream too)."""
    channels: dict[str, None] = {}
    tokens: dict[str, None] = {}
    for rec in _walk_provenance(record or {}):
        chans = rec.get("channels")
        if isinstance(chans, list | tuple):
            channels.update((str(c), None) for c in chans)
        name = rec.get("backbone")
        if isinstance(name, str) and name:
            from cytoscreen.backbones.spec import backbone_token

            tokens[backbone_token(name)] = None
    return list(channels), list(tokens)


def feature_annotation(
    names: Sequence[str], *, channels: Sequence[str] = (), backbones: Sequence[str] = ()
) -> pd.DataFrame:
    """The ``var`` table: one row per feature name, with channel, backbone, layer and index.

    Parameters
    ----------
    names
        Feature column names.
    channels, backbones
        Channel names and backbone tokens known from the provenance.  A name
        ``<channel>_<backbone>_[mid_]<i>`` with a known channel and backbone is parsed with them
        (so channel names and tokens may contain ``_``); otherwise the channel is the part before
        the first ``_``.  Names of no such form get missing values.
    """
    known = [
        re.compile(rf"^(?P<channel>{re.escape(c)})_(?P<backbone>{re.escape(b)})_(?:(?P<mid>mid)_)?(?P<index>\d+)$")
        for c in sorted(channels, key=len, reverse=True) for b in sorted(backbones, key=len, reverse=True)
    ]
    chan, back, layer, index = [], [], [], []
    for name in names:
        m = next((m for rx in known if (m := rx.match(str(name)))), None) or _CNN_NAME.match(str(name))
        if m is None:
            chan.append(None), back.append(None), layer.append(None), index.append(pd.NA)
            continue
        chan.append(m["channel"]), back.append(m["backbone"])
        layer.append(_MID if m["mid"] else _FINAL), index.append(int(m["index"]))
    return pd.DataFrame(
        {
            VAR_CHANNEL: pd.Categorical(chan, categories=list(dict.fromkeys(c for c in chan if c))),
            VAR_BACKBONE: pd.Categorical(back, categories=list(dict.fromkeys(b for b in back if b))),
            VAR_LAYER: pd.Categorical(layer, categories=[_FINAL, _MID]),
            VAR_INDEX: pd.array(index, dtype="Int64"),
        },
        index=pd.Index([str(n) for n in names], name=None),
    )


def _obs_names(obs: pd.DataFrame) -> pd.Index:
    for keys in (io.SITE_KEYS, io.WELL_KEYS, (io.TREATMENT,)):
        if all(k in obs.columns for k in keys):
            names = obs[list(keys)].astype(str).agg("_".join, axis=1)
            if names.is_unique:
                return pd.Index(names.to_numpy(), dtype=object)
    return pd.Index([str(i) for i in range(len(obs))], dtype=object)


def _uns_safe(value: Any) -> Any:
    """A provenance value h5ad can store: mappings kept (None dropped), scalar lists as arrays,
    anything else (mixed or nested lists) as its JSON text."""
    if isinstance(value, Mapping):
        return {str(k): _uns_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, str) for v in value):
            return np.array(value, dtype=object)
        if value and all(isinstance(v, bool | int | float) for v in value):
            return np.asarray(value)
        return json.dumps(value, default=str)
    if isinstance(value, str | bool | int | float | np.generic):
        return value
    return str(value)


def to_anndata(
    profiles: pd.DataFrame,
    *,
    features: Sequence[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    source: str = "table",
):
    """A profiles table as an ``anndata.AnnData`` (layout in the module docstring).

    Parameters
    ----------
    profiles
        A sites, wells, normalized, feature-selected or consensus table.
    features
        Feature columns; every column not starting with ``Metadata_`` or ``QC_`` by default.
    provenance
        The table's provenance record (:func:`cytoscreen.io.read_provenance`); stored in ``uns``
        and used to parse channel and backbone out of feature names.
    source
        Name of the table in messages and in ``uns``.

    Raises
    ------
    InputDataError
        No rows, no feature columns, or non-numeric feature columns.
    """
    ad = _import_anndata()
    features = list(io.feature_columns(profiles) if features is None else features)
    if profiles.empty:
        raise InputDataError(f"{source}: the table has no rows; nothing to export")
    if not features:
        raise InputDataError(f"{source}: no feature columns (every column starts with Metadata_ or QC_)")
    missing = [f for f in features if f not in profiles.columns]
    if missing:
        raise InputDataError(f"{source}: feature columns not in the table: {', '.join(missing[:5])}")
    io.check_numeric_features(profiles, features, source=source)
    x = profiles[features].to_numpy(dtype=np.float32, na_value=np.nan)
    n_nan = int(np.isnan(x).sum())
    if n_nan:
        logger.warning("%s: %d missing feature value(s) exported as NaN", source, n_nan)
    obs = profiles[io.metadata_columns(profiles) + io.qc_columns(profiles)].reset_index(drop=True)
    obs.index = _obs_names(obs)
    obs.index.name = None
    channels, backbones = provenance_names(provenance)
    var = feature_annotation(features, channels=channels, backbones=backbones)
    uns = {UNS_PROVENANCE: {
        "export": _uns_safe(io.provenance("export.anndata", source=source)),
        **({"source": _uns_safe(dict(provenance))} if provenance else {}),
    }}
    return ad.AnnData(X=x, obs=obs, var=var, uns=uns)


def write_h5ad(adata, path: str | os.PathLike) -> Path:
    """Write ``adata`` to ``path`` atomically (strings are not turned into categoricals)."""
    path = Path(path)
    if path.suffix.lower() != ".h5ad":
        raise ConfigError(f"{path}: the AnnData output must end in .h5ad")
    with io.atomic_path(path) as tmp:
        adata.write_h5ad(tmp, convert_strings_to_categoricals=False)
    logger.debug("wrote %s (%d obs x %d var)", path, adata.n_obs, adata.n_vars)
    return path


def export_anndata(profiles_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Read a profiles Parquet (or CSV/TSV) table with its provenance and write it as ``.h5ad``."""
    profiles_path = Path(profiles_path)
    if Path(out).suffix.lower() != ".h5ad":
        raise ConfigError(f"{out}: the AnnData output must end in .h5ad")
    table = io.read_table(profiles_path)
    prov: dict[str, Any] = {}
    if profiles_path.suffix.lower() in (".parquet", ".pq"):
        try:
            prov = io.read_provenance(profiles_path)
        except (OSError, ValueError) as err:
            raise InputDataError(f"{profiles_path}: cannot read the Parquet metadata ({err})") from err
    adata = to_anndata(table, provenance=prov, source=str(profiles_path))
    write_h5ad(adata, out)
    logger.info("wrote %s (%d rows x %d features, %d obs columns) from %s", out, adata.n_obs, adata.n_vars,
                adata.obs.shape[1], profiles_path)
    return Path(out)
