"""OME-Zarr high-content-screening plates (NGFF 0.4 and 0.5): index a plate store, and write one.

A plate store is ``plate.zarr/<row>/<column>/<field>/<level>``: the plate group lists ``rows``,
``columns`` and ``wells`` (path ``A/1``), each well group lists its fields (``images``, with an
``acquisition``), each field is a multiscale image whose level 0 is read, and the field's
``omero.channels[].label`` names the channels (mapped through the config's ``channels:`` like any
other token).  NGFF 0.4 stores are Zarr v2 with the metadata in ``.zattrs``; 0.5 stores are Zarr v3
with it under ``ome`` in ``zarr.json``'s attributes.

Reading uses zarr for the groups and arrays and validates each metadata document with the
``yaozarrs`` models (the ``ome-zarr`` extra): small, pydantic-only, and covering both versions.
An ``images.parquet`` row of such a plate is like one of the ``zarr`` layout: ``path`` is the
field's level-0 array folder and ``frame`` the flat index of the channel plane over the leading axes,
so :func:`cytoscreen.io.read_image` (and with it QC, features and segmentation) reads it unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.ingest.layouts import OME_ZARR_LAYOUT

logger = logging.getLogger(__name__)

NGFF_VERSIONS = ("0.4", "0.5")


# --- metadata -------------------------------------------------------------------------------------
def _yaozarrs():
    try:
        import yaozarrs
    except ImportError as err:
        raise ConfigError("layout ome-zarr needs the optional `yaozarrs` package: "
                          "pip install 'cytoscreen[ome-zarr]'") from err
    return yaozarrs


def _read_attrs(path: Path) -> tuple[dict[str, Any], str | None]:
    """The OME attributes of a group folder and its NGFF version (None when the folder has none).

    Zarr v3 (``zarr.json``): the ``ome`` member of the attributes (0.5).  Zarr v2 (``.zattrs``): the
    attributes themselves (0.4, version inside the plate/well/multiscales documents).
    """
    v3 = path / "zarr.json"
    v2 = path / ".zattrs"
    try:
        if v3.exists():
            meta = json.loads(v3.read_text())
            ome = (meta.get("attributes") or {}).get("ome")
            if ome is None:
                return {}, None
            return dict(ome), str(ome.get("version", "0.5"))
        if v2.exists():
            attrs = json.loads(v2.read_text())
            version = None
            for key in ("plate", "well"):
                if isinstance(attrs.get(key), Mapping):
                    version = attrs[key].get("version")
            if isinstance(attrs.get("multiscales"), list) and attrs["multiscales"]:
                version = attrs["multiscales"][0].get("version", version)
            return attrs, str(version or "0.4")
    except (OSError, ValueError) as err:
        raise InputDataError(f"{path}: cannot read the Zarr group metadata ({err})") from err
    return {}, None


def _validate(attrs: Mapping[str, Any], version: str, path: Path, what: str):
    """The yaozarrs model of one OME metadata document, or InputDataError naming ``path``."""
    yz = _yaozarrs()
    if version not in NGFF_VERSIONS:
        raise InputDataError(f"{path}: OME-Zarr version {version!r} is not supported (use NGFF "
                             f"{' or '.join(NGFF_VERSIONS)})")
    doc = dict(attrs)
    if version == "0.5":
        doc.setdefault("version", "0.5")
    try:
        return yz.validate_ome_object(doc)
    except Exception as err:  # pydantic ValidationError and friends
        first = str(err).strip().splitlines()
        raise InputDataError(f"{path}: invalid OME-Zarr {what} metadata ({' '.join(first[:3])})") from err


def _well_name(row: str, col: str, path: str) -> str:
    try:
        if row.isdigit():
            return io.well_from_row_col(int(row) - 1, int(col))
        return io.normalize_well(f"{row}{int(col)}")
    except ValueError as err:
        raise InputDataError(f"{path}: well path {row}/{col} is not a plate well (row letters or "
                             f"number, column number)") from err


def _level0(field: Path, attrs: Mapping[str, Any]) -> tuple[Path, list[dict[str, Any]]]:
    """The level-0 array folder of a field and its axes."""
    ms = attrs.get("multiscales")
    if not ms or not ms[0].get("datasets"):
        raise InputDataError(f"{field}: the field has no multiscales level 0 (multiscales[0].datasets "
                             f"is empty or missing)")
    level = field / str(ms[0]["datasets"][0]["path"])
    if not io.is_zarr_array(level):
        raise InputDataError(f"{level}: level 0 of the field is not a Zarr array (missing or not an array)")
    return level, list(ms[0].get("axes") or [])


def _axis_types(axes: Sequence[Any], ndim: int, level: Path) -> list[str]:
    """Axis types (``time``, ``channel``, ``space`` or a name) of a level-0 array."""
    if not axes:  # NGFF 0.1-0.3 had no axes; assume the 5-D t, c, z, y, x order
        names = ["t", "c", "z", "y", "x"][-ndim:]
        return [{"t": "time", "c": "channel"}.get(n, "space") for n in names]
    if len(axes) != ndim:
        raise InputDataError(f"{level}: the array has {ndim} dimensions but the multiscales list "
                             f"{len(axes)} axes")
    return [str(a.get("type") or {"t": "time", "c": "channel"}.get(a.get("name"), "space")
                if isinstance(a, Mapping) else a) for a in axes]


def _field_planes(level: Path, axes: Sequence[Any], labels: Sequence[str | None]) -> list[tuple[str, int]]:
    """(channel label, flat frame index) of every 2-D plane of a field's level-0 array."""
    import zarr

    try:
        shape = zarr.open_array(str(level), mode="r").shape
    except Exception as err:  # noqa: BLE001 - zarr raises many types for broken stores
        raise InputDataError(f"{level}: cannot open the level-0 array ({err})") from err
    types = _axis_types(axes, len(shape), level)
    space = [i for i, t in enumerate(types) if t == "space"]
    if len(space) > 2 and any(shape[i] > 1 for i in space[:-2]):
        raise InputDataError(f"{level}: a 3-D field (shape {tuple(shape)}, {shape[space[0]]} z-planes); "
                             f"cytoscreen reads 2-D fields: make a max projection first")
    times = [i for i, t in enumerate(types) if t == "time"]
    if any(shape[i] > 1 for i in times):
        raise InputDataError(f"{level}: the field has {shape[times[0]]} time points; cytoscreen reads one")
    chan_axes = [i for i, t in enumerate(types) if t == "channel"]
    n_ch = shape[chan_axes[0]] if chan_axes else 1
    if len(labels) != n_ch or any(not lab for lab in labels):
        raise InputDataError(f"{level.parent}: omero.channels must give a label for each of the {n_ch} "
                             f"channel(s) (found {len(labels)}, {sum(1 for x in labels if x)} labelled); "
                             f"cytoscreen names channels by these labels")
    lead = tuple(shape[:-2])
    planes = []
    for c in range(n_ch):
        idx = [0] * len(lead)
        if chan_axes and chan_axes[0] < len(lead):
            idx[chan_axes[0]] = c
        frame = int(np.ravel_multi_index(tuple(idx), lead)) if lead else -1
        planes.append((str(labels[c]), frame))
    return planes


def _plate_store(root: Path) -> Path:
    """The plate group: ``root`` itself or the one ``*.zarr`` plate group inside it."""
    attrs, _ = _read_attrs(root)
    if "plate" in attrs:
        return root
    inside = [p for p in sorted(root.glob("*.zarr")) if p.is_dir() and "plate" in _read_attrs(p)[0]]
    if len(inside) == 1:
        return inside[0]
    raise InputDataError(f"{root}: not an OME-Zarr plate (no `plate` metadata in .zattrs or zarr.json"
                         + (f", and {len(inside)} plate stores inside" if inside else "") + ")")


def index_ome_zarr(images: str | Path, *, plate: str, channels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Index an OME-Zarr HCS plate: one row per (well, field, channel) plane with ``io.IMAGE_COLUMNS``.

    Sites are numbered 1, 2, ... in the order of each well's ``images`` list.  Channel names are the
    fields' ``omero.channels[].label`` values mapped through ``channels``.

    Raises
    ------
    InputDataError
        Not a plate store; invalid metadata; a well path not of the form ``<row>/<column>`` of
        ``plate.rows``/``plate.columns``, or a well folder on disk not listed in ``plate.wells``; a
        listed well or field that is missing; a field without level 0, with z-planes or time points;
        a missing ``omero`` channel label.
    """
    channels = {str(k): str(v) for k, v in (channels or {}).items()}
    root = _plate_store(Path(images))
    attrs, version = _read_attrs(root)
    model = _validate(attrs, version, root, "plate").plate
    rows = [r.name for r in model.rows]
    cols = [c.name for c in model.columns]
    listed: dict[str, tuple[str, str]] = {}
    for w in model.wells:
        parts = w.path.split("/")
        if len(parts) != 2 or parts[0] not in rows or parts[1] not in cols:
            raise InputDataError(f"{root}: well path {w.path!r} of plate.wells is not <row>/<column> of "
                                 f"plate.rows ({', '.join(rows)}) and plate.columns ({', '.join(cols)})")
        listed[w.path] = (parts[0], parts[1])
    on_disk = {f"{r.name}/{c.name}" for r in root.iterdir() if r.is_dir() and not r.name.startswith(".")
               for c in r.iterdir() if c.is_dir() and "well" in _read_attrs(c)[0]}
    unlisted = sorted(on_disk - set(listed))
    if unlisted:
        raise InputDataError(f"{root / unlisted[0]}: well path {unlisted[0]!r} is not in plate.wells "
                             f"({len(unlisted)} well folder(s) unlisted); add it to the plate metadata "
                             f"or remove it")
    acquisitions: set[Any] = set()
    records = []
    for wpath, (row, col) in listed.items():
        wdir = root / wpath
        wattrs, wversion = _read_attrs(wdir)
        if "well" not in wattrs:
            raise InputDataError(f"{wdir}: well {wpath!r} of plate.wells has no well metadata (missing folder "
                                 f"or .zattrs/zarr.json)")
        well_model = _validate(wattrs, wversion or version, wdir, "well").well
        well = _well_name(row, col, str(wdir))
        r, c = io.split_well(well)
        for site, fov in enumerate(well_model.images, start=1):
            acquisitions.add(fov.acquisition)
            fdir = wdir / fov.path
            fattrs, fversion = _read_attrs(fdir)
            if not fattrs:
                raise InputDataError(f"{fdir}: field {fov.path!r} of well {wpath} has no image metadata")
            image = _validate(fattrs, fversion or version, fdir, "image")
            level, axes = _level0(fdir, fattrs)
            omero = getattr(image, "omero", None)
            labels = [ch.label for ch in omero.channels] if omero is not None else []
            for label, frame in _field_planes(level, axes, labels):
                records.append({io.PLATE: plate, io.WELL: well, io.ROW: r, io.COL: c, io.SITE: site,
                                io.CHANNEL: channels.get(label, label), io.PATH: str(level), io.FRAME: frame})
    if not records:
        raise InputDataError(f"{root}: the plate lists no wells with fields")
    if len(acquisitions) > 1:
        logger.warning("%s: %d acquisitions; each field is its own site (numbered per well in "
                       "well.images order)", root, len(acquisitions))
    logger.info("%s: OME-Zarr %s plate, %d wells", root, version, len(listed))
    return pd.DataFrame.from_records(records, columns=list(io.IMAGE_COLUMNS))


# --- writing --------------------------------------------------------------------------------------
def _open_group(path: Path, version: str, mode: str = "w"):
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=3 if version == "0.5" else 2)


def _set_ome(group, version: str, doc: Mapping[str, Any]) -> None:
    """Write an OME metadata document into a group's attributes, as each NGFF version wants it."""
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", **doc}
    else:
        group.attrs.update(dict(doc))


def _write_array(group, name: str, data: np.ndarray, axes: Sequence[str], version: str) -> None:
    kwargs: dict[str, Any] = {"dimension_names": list(axes)} if version == "0.5" else {}
    chunks = tuple(1 for _ in data.shape[:-2]) + tuple(data.shape[-2:])
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, overwrite=True, **kwargs)
    arr[...] = data


def multiscales_doc(axes: Sequence[str], n_levels: int, version: str, *, name: str | None = None) -> dict[str, Any]:
    """A ``multiscales`` entry: levels ``0``..``n_levels-1``, each halving y and x."""
    kinds = {"t": "time", "c": "channel"}
    ax = [{"name": a, "type": kinds.get(a, "space"), **({"unit": "micrometer"} if a in "zyx" else {})}
          for a in axes]
    datasets = []
    for lv in range(n_levels):
        scale = [float(2**lv) if a in "yx" else 1.0 for a in axes]
        datasets.append({"path": str(lv), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    ms: dict[str, Any] = {"axes": ax, "datasets": datasets}
    if name:
        ms["name"] = name
    if version == "0.4":
        ms["version"] = "0.4"
    return ms


def write_field(group, stack: np.ndarray, *, labels: Sequence[str], version: str,
                n_levels: int = 1) -> None:
    """Write one field ``(c, y, x)`` into ``group`` as a multiscale image with omero channel labels."""
    axes = ("c", "y", "x")
    hi = int(np.iinfo(stack.dtype).max) if np.issubdtype(stack.dtype, np.integer) else 1
    omero = {"channels": [{"label": str(lab), "color": "FFFFFF", "active": True,
                           "window": {"start": 0, "end": float(np.max(stack[i])) if stack.size else 1.0,
                                      "min": 0, "max": hi}}
                          for i, lab in enumerate(labels)]}
    if version == "0.4":
        omero["version"] = "0.4"
    _set_ome(group, version, {"multiscales": [multiscales_doc(axes, n_levels, version)], "omero": omero})
    for lv in range(n_levels):
        step = 2**lv
        _write_array(group, str(lv), np.ascontiguousarray(stack[:, ::step, ::step]), axes, version)


def write_plate(
    store: str | Path,
    fields: Iterable[tuple[str, int, np.ndarray]],
    *,
    channels: Sequence[str],
    version: str = "0.5",
    n_levels: int = 1,
    name: str | None = None,
) -> Path:
    """Write an OME-Zarr HCS plate from ``(well, site, (c, y, x) stack)`` triples.

    Wells are written as ``<row letters>/<column number>`` (``B03`` -> ``B/3``); fields of a well
    are ``0``, ``1``, ... in site order; ``channels`` become the omero labels.  Used by tests and
    to convert plates of other layouts (benchmarks/ome_zarr_jump.py); not atomic, so write into
    a new folder.
    """
    if version not in NGFF_VERSIONS:
        raise ConfigError(f"OME-Zarr version {version!r}: choose one of {', '.join(NGFF_VERSIONS)}")
    store = Path(store)
    by_well: dict[str, list[tuple[int, np.ndarray]]] = {}
    for well, site, stack in fields:
        if stack.ndim != 3 or stack.shape[0] != len(channels):
            raise InputDataError(f"well {well} site {site}: expected a ({len(channels)}, y, x) stack, "
                                 f"got shape {stack.shape}")
        by_well.setdefault(io.normalize_well(well), []).append((int(site), stack))
    if not by_well:
        raise InputDataError(f"{store}: no fields to write")
    keys = {w: io.split_well(w) for w in by_well}
    row_idx = sorted({r for r, _ in keys.values()})
    col_idx = sorted({c for _, c in keys.values()})
    rows = [io.row_index_to_letters(r) for r in row_idx]
    cols = [str(c) for c in col_idx]
    wells = [{"path": f"{io.row_index_to_letters(r)}/{c}", "rowIndex": row_idx.index(r),
              "columnIndex": col_idx.index(c)} for w, (r, c) in sorted(keys.items(), key=lambda kv: kv[1])]
    n_fields = max(len(v) for v in by_well.values())
    plate_doc: dict[str, Any] = {"rows": [{"name": r} for r in rows], "columns": [{"name": c} for c in cols],
                                 "wells": wells, "acquisitions": [{"id": 0, "maximumfieldcount": n_fields}],
                                 "field_count": n_fields}
    if name:
        plate_doc["name"] = name
    if version == "0.4":
        plate_doc["version"] = "0.4"
    root = _open_group(store, version, "w")
    _set_ome(root, version, {"plate": plate_doc})
    for well, sites in by_well.items():
        r, c = keys[well]
        wgroup = root.require_group(io.row_index_to_letters(r)).require_group(str(c))
        sites = sorted(sites, key=lambda s: s[0])
        well_doc: dict[str, Any] = {"images": [{"path": str(i), "acquisition": 0} for i in range(len(sites))]}
        if version == "0.4":
            well_doc["version"] = "0.4"
        _set_ome(wgroup, version, {"well": well_doc})
        for i, (_site, stack) in enumerate(sites):
            write_field(wgroup.require_group(str(i)), stack, labels=channels, version=version, n_levels=n_levels)
    logger.info("wrote OME-Zarr %s plate %s (%d wells, up to %d fields)", version, store, len(by_well), n_fields)
    return store


def field_path(level0: str | Path) -> Path:
    """The field (image) group of a level-0 array path from ``images.parquet``."""
    return Path(level0).parent


def ngff_version(store: str | Path) -> str:
    """The NGFF version of a plate store (``0.4`` or ``0.5``)."""
    root = _plate_store(Path(store))
    _, version = _read_attrs(root)
    return str(version)


__all__ = ["OME_ZARR_LAYOUT", "index_ome_zarr", "write_plate", "write_field", "multiscales_doc",
           "field_path", "ngff_version"]
