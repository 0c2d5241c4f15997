"""Platemap reading, validation and the join of image rows to platemap rows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.config import load_schema, validate
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.ingest.layouts import GroupParseError, parse_well

logger = logging.getLogger(__name__)

UNMAPPED_PERT_TYPE = "unknown"


def read_platemap(path: str | Path) -> pd.DataFrame:
    """Read and validate a platemap TSV; wells normalized to ``A01``, one row per well."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: platemap not found")
    try:
        pm = pd.read_csv(path, sep="\t", dtype=str, comment="#", keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read platemap ({err})") from err
    pm.columns = [str(c).strip() for c in pm.columns]
    missing = [c for c in ("well", "perturbation", "pert_type") if c not in pm.columns]
    if missing:
        raise ConfigError(f"{path}: platemap lacks column(s) {', '.join(missing)} (has: "
                          f"{', '.join(pm.columns)}); it must be tab-separated with a header row")
    if pm.empty:
        raise ConfigError(f"{path}: platemap has no rows")
    schema = load_schema("platemap")
    wells = []
    for i, rec in enumerate(pm.to_dict(orient="records")):
        rec = {k: v for k, v in rec.items() if v != ""}
        if "well" in rec:
            try:
                wells.append(parse_well(rec["well"]))
            except GroupParseError as err:
                raise ConfigError(f"{path} line {i + 2}: well {rec['well']!r} is not a well name: "
                                  f"{err.why}") from None
        if "concentration" in rec:
            try:
                rec["concentration"] = float(rec["concentration"])
            except ValueError as err:
                raise ConfigError(
                    f"{path} line {i + 2}: concentration {rec['concentration']!r} is not a number"
                ) from err
        validate(rec, schema, source=f"{path} line {i + 2}")
    pm["well"] = wells
    dup = pm["well"][pm["well"].duplicated()].unique().tolist()
    if dup:
        raise ConfigError(f"{path}: well(s) listed twice: {', '.join(dup[:10])}")
    if "concentration" in pm.columns:
        pm["concentration"] = pd.to_numeric(pm["concentration"].replace("", np.nan))
    return pm


def join_platemap(images: pd.DataFrame, platemap: pd.DataFrame, *, source: str,
                  on_missing_wells: str = "error", on_unmapped_wells: str = "error") -> pd.DataFrame:
    """Add ``Metadata_<column>`` of the platemap to each image row, checking both directions.

    Parameters
    ----------
    images
        Image index with ``Metadata_Well``.
    platemap
        Output of :func:`read_platemap`.
    source
        Platemap path, for messages.
    on_missing_wells, on_unmapped_wells
        ``error`` or ``warn`` for platemap wells without images (pert_type ``empty`` excepted) and
        for image wells without a platemap row (kept with pert_type ``unknown`` under ``warn``).
    """
    image_wells = set(images[io.WELL])
    mapped = platemap.set_index("well")
    missing = sorted(set(mapped.index[mapped["pert_type"] != "empty"]) - image_wells)
    unmapped = sorted(image_wells - set(mapped.index))
    if missing:
        msg = (f"{source}: {len(missing)} platemap well(s) have no images ({_show(missing)}); check "
               f"the image folder or set `ingest.on_missing_wells: warn`")
        if on_missing_wells == "error":
            raise InputDataError(msg)
        logger.warning(msg)
    if unmapped:
        msg = (f"{source}: {len(unmapped)} well(s) have images but no platemap row ({_show(unmapped)}); "
               f"add them or set `ingest.on_unmapped_wells: warn`")
        if on_unmapped_wells == "error":
            raise InputDataError(msg)
        logger.warning(msg + f"; their images are kept with pert_type {UNMAPPED_PERT_TYPE!r}")
    meta = mapped.rename(columns=lambda c: f"{io.METADATA_PREFIX}{c}")
    out = images.join(meta, on=io.WELL, how="left")
    out[io.PERT_TYPE] = out[io.PERT_TYPE].fillna(UNMAPPED_PERT_TYPE)
    return out


def _show(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")
