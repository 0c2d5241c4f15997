"""Index the image files of one plate into rows of (well, site, channel, path, frame)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.ingest.headers import annotate, read_headers, resolve_planes
from cytoscreen.ingest.layouts import (
    OME_ZARR_LAYOUT,
    ZARR_LAYOUT,
    GroupParseError,
    parse_col,
    parse_int,
    parse_row,
    parse_well,
    resolve_layout,
)
from cytoscreen.ingest.platemap import _show
from cytoscreen.ingest.settings import IngestSettings

logger = logging.getLogger(__name__)



def _walk(root: Path, extensions: Sequence[str]) -> list[str]:
    exts = tuple(e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(exts):
                found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(found)


def _channel_name(token: str, channels: Mapping[str, str]) -> str:
    return str(channels.get(str(token), token))


def index_plate(
    images: str | Path,
    *,
    plate: str,
    layout: str,
    channels: Mapping[str, str] | None = None,
    user_layouts: Mapping[str, str] | None = None,
    extensions: Sequence[str] = (".tif", ".tiff", ".png"),
    on_unmatched_files: str = "warn",
    z_projection: str = "none",
    on_mixed_bit_depth: str = "error",
) -> pd.DataFrame:
    """Index one plate's images.

    Returns one row per image plane with :data:`cytoscreen.io.IMAGE_COLUMNS` and
    :data:`cytoscreen.io.HEADER_COLUMNS`, sorted by well, site and channel (channels in the order
    of the config's mapping, then by token).  Each image's dtype and bit depth come from its
    header (:mod:`cytoscreen.ingest.headers`, which also explains ``z_projection`` and
    ``on_mixed_bit_depth``).

    Raises
    ------
    ConfigError
        Unknown layout.
    InputDataError
        Missing folder, no images, files matching no pattern (``on_unmatched_files: error``),
        duplicate (well, site, channel), sites lacking a channel that other sites have, a z-stack
        without ``z_projection: max``, a channel mixing bit depths without
        ``on_mixed_bit_depth: rescale``.
    """
    channels = {str(k): str(v) for k, v in (channels or {}).items()}
    headers: dict[str, io.ImageHeader] = {}
    root = Path(images)
    regex = resolve_layout(layout, user_layouts)
    if not root.exists():
        raise InputDataError(f"{root}: image folder of plate {plate} not found")
    if regex == ZARR_LAYOUT:
        df = _index_zarr(root, plate, channels)
    elif regex == OME_ZARR_LAYOUT:
        from cytoscreen.ingest.omezarr import index_ome_zarr

        df = index_ome_zarr(root, plate=plate, channels=channels)
    else:
        df = _index_files(root, plate, regex, layout, channels, extensions, on_unmatched_files,
                          headers=headers, z_projection=z_projection)
    missing = [p for p in dict.fromkeys(df[io.PATH]) if p not in headers]
    headers.update(read_headers(missing))
    df = resolve_planes(df, headers, z_projection=z_projection)
    _check_complete(df, root)
    df = annotate(df, headers, on_mixed_bit_depth=on_mixed_bit_depth, source=f"{root}: plate {plate}")
    order = {name: i for i, name in enumerate(dict.fromkeys(channels.values()))}
    df["_corder"] = [order.get(c, len(order)) for c in df[io.CHANNEL]]
    df = df.sort_values([io.ROW, io.COL, io.SITE, "_corder", io.CHANNEL], kind="stable")
    df = df.drop(columns="_corder").reset_index(drop=True)
    logger.info("plate %s: indexed %d images (%d wells, %d sites, channels %s) under %s", plate,
                len(df), df[io.WELL].nunique(), len(df.drop_duplicates([io.WELL, io.SITE])),
                ", ".join(dict.fromkeys(df[io.CHANNEL])), root)
    return df


def _index_files(root: Path, plate: str, regex: re.Pattern[str], layout: str,
                 channels: Mapping[str, str], extensions: Sequence[str],
                 on_unmatched_files: str, *, headers: dict[str, io.ImageHeader],
                 z_projection: str) -> pd.DataFrame:
    files = _walk(root, extensions)
    if not files:
        raise InputDataError(f"{root}: no image files ({', '.join(extensions)}) for plate {plate}; "
                             f"the plate is empty or `images` in the plate table points elsewhere")
    rows, unmatched, unparsed = [], [], []
    groups = set(regex.groupindex)
    for rel in files:
        m = regex.search(rel)
        if not m:
            unmatched.append(rel)
            continue
        g = m.groupdict()
        try:
            if g.get("well"):
                well = parse_well(g["well"])
            else:
                well = io.well_from_row_col(parse_row(g["row"] or ""), parse_col(g["col"] or ""))
            site = parse_int("site", g.get("site"), 1)
            z = parse_int("z", g.get("z"))
        except GroupParseError as err:
            unparsed.append((rel, err))
            continue
        rows.append(dict(file_plate=g.get("plate"), well=well, site=site, token=g.get("channel"),
                         z=z, path=str(root / rel)))
    if unparsed:
        rel, err = unparsed[0]
        raise InputDataError(
            f"{root}: {len(unparsed)} of {len(files)} image files match layout {layout!r} but their "
            f"names cannot be parsed, e.g. {rel}: {err}")
    if unmatched:
        msg = (f"{root}: {len(unmatched)} of {len(files)} image files match no part of layout "
               f"{layout!r} (e.g. {_show(unmatched, 3)}); fix the layout or move them away")
        if on_unmatched_files == "error" or not rows:
            raise InputDataError(msg)
        logger.warning(msg + "; they are skipped")
    df = pd.DataFrame(rows)
    df = _select_plate(df, plate, root)
    if "z" in groups and df["z"].nunique() > 1:
        raise InputDataError(f"{root}: plate {plate} has {df['z'].nunique()} z-planes per site as separate "
                             f"files; cytoscreen reads one file per site and channel: store each z-stack "
                             f"as one multi-page TIFF and set `ingest.z_projection: max`, or project first")
    if "channel" in groups:
        df[io.CHANNEL] = [_channel_name(t, channels) for t in df["token"]]
        df[io.FRAME] = -1
    else:
        headers.update(read_headers(df["path"].tolist()))
        df = _expand_pages(df, channels, headers, z_projection)
    rc = [io.split_well(w) for w in df["well"]]
    out = pd.DataFrame({
        io.PLATE: plate,
        io.WELL: df["well"].to_numpy(),
        io.ROW: np.array([r for r, _ in rc], dtype=np.int64),
        io.COL: np.array([c for _, c in rc], dtype=np.int64),
        io.SITE: df["site"].astype(np.int64).to_numpy(),
        io.CHANNEL: df[io.CHANNEL].to_numpy(),
        io.PATH: df["path"].to_numpy(),
        io.FRAME: df[io.FRAME].astype(np.int64).to_numpy(),
    })
    return out


def _select_plate(df: pd.DataFrame, plate: str, root: Path) -> pd.DataFrame:
    tokens = set(df["file_plate"].dropna())
    if len(tokens) <= 1 or plate not in tokens:
        if len(tokens) > 1:
            raise InputDataError(f"{root}: files of {len(tokens)} plates ({_show(sorted(tokens), 4)}) "
                                 f"and none named {plate!r}; give each plate its own folder or name "
                                 f"the plate as in the file names")
        return df
    keep = df["file_plate"] == plate
    logger.info("%s: kept %d files of plate %s, skipped %d of other plates", root, int(keep.sum()),
                plate, int((~keep).sum()))
    return df[keep]


def _expand_pages(df: pd.DataFrame, channels: Mapping[str, str], headers: Mapping[str, io.ImageHeader],
                  z_projection: str) -> pd.DataFrame:
    """Multi-channel TIFFs: one row per channel plane, named by the plane index mapping.

    Planes are the pages (or the samples of one page); a file whose header declares both Z and C
    axes (an ImageJ hyperstack) has C channels, each read as its maximum over z under
    ``z_projection: max``.
    """
    rows = []
    for rec in df.to_dict(orient="records"):
        h = headers[rec["path"]]
        if h.z > 1:
            if z_projection != "max":
                raise InputDataError(
                    f"{rec['path']}: a z-stack of {h.z} planes per channel (shape {h.shape}, axes {h.axes}); "
                    f"set `ingest.z_projection: max` to read each channel's maximum projection over z")
            planes = [(c, io.z_max_frame(c)) for c in range(h.channels)]
        else:
            planes = [(c, c) for c in range(h.planes)]
        for c, frame in planes:
            rows.append({**rec, io.CHANNEL: _channel_name(str(c), channels), io.FRAME: frame})
    return pd.DataFrame(rows)


def _index_zarr(root: Path, plate: str, channels: Mapping[str, str]) -> pd.DataFrame:
    """A Zarr array (site, channel, y, x) with sites.csv (Well, Site[, Plate]) and channels.csv."""
    store = root
    if not io.is_zarr_array(store):
        candidates = [root] if root.suffix == ".zarr" else [p for p in sorted(root.glob("*.zarr")) if p.is_dir()]
        arrays = [a for c in candidates for a in [c, *sorted(c.iterdir())] if a.is_dir() and io.is_zarr_array(a)]
        if len(arrays) != 1:
            raise InputDataError(f"{root}: expected one Zarr array of shape (site, channel, y, x), "
                                 f"found {len(arrays)}")
        store = arrays[0]
    meta_dir = next((d for d in (store.parent, store.parent.parent, root) if (d / "sites.csv").exists()), None)
    if meta_dir is None or not (meta_dir / "channels.csv").exists():
        raise InputDataError(f"{store}: sites.csv and channels.csv must lie beside the Zarr store")
    import zarr

    try:
        shape = zarr.open_array(str(store), mode="r").shape
    except Exception as err:  # noqa: BLE001
        raise InputDataError(f"{store}: cannot open Zarr array ({err}); cytoscreen needs zarr>=3 "
                             f"for Zarr v3 stores") from err
    if len(shape) != 4:
        raise InputDataError(f"{store}: Zarr array has shape {shape}, expected (site, channel, y, x)")
    sites = pd.read_csv(meta_dir / "sites.csv")
    chans = pd.read_csv(meta_dir / "channels.csv")
    checks = ((sites, {"idx", "Well", "Site"}, "sites.csv"), (chans, {"idx", "channel"}, "channels.csv"))
    for table, need, name in checks:
        if not need <= set(table.columns):
            raise InputDataError(f"{meta_dir / name}: needs columns {', '.join(sorted(need))}")
    if len(chans) != shape[1] or sites["idx"].max() >= shape[0]:
        raise InputDataError(f"{store}: shape {shape} does not match {len(sites)} sites / {len(chans)} "
                             f"channels in sites.csv/channels.csv")
    if "Plate" in sites.columns and plate in set(sites["Plate"].astype(str)):
        sites = sites[sites["Plate"].astype(str) == plate]
    n_ch = shape[1]
    rows = []
    for s in sites.to_dict(orient="records"):
        well = io.normalize_well(s["Well"])
        r, c = io.split_well(well)
        for ch in chans.to_dict(orient="records"):
            rows.append({io.PLATE: plate, io.WELL: well, io.ROW: r, io.COL: c, io.SITE: int(s["Site"]),
                         io.CHANNEL: _channel_name(str(ch["channel"]), channels), io.PATH: str(store),
                         io.FRAME: int(s["idx"]) * n_ch + int(ch["idx"])})
    return pd.DataFrame(rows, columns=list(io.IMAGE_COLUMNS))


def _check_complete(df: pd.DataFrame, root: Path) -> None:
    key = [io.WELL, io.SITE, io.CHANNEL]
    dup = df[df.duplicated(key, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        paths = dup[(dup[io.WELL] == first[io.WELL]) & (dup[io.SITE] == first[io.SITE])
                    & (dup[io.CHANNEL] == first[io.CHANNEL])][io.PATH].tolist()
        raise InputDataError(
            f"{root}: {len(dup.drop_duplicates(key))} (well, site, channel) combinations have more than "
            f"one image, e.g. well {first[io.WELL]} site {first[io.SITE]} channel {first[io.CHANNEL]}: "
            f"{_show(paths, 3)}; a layout with a z or t group, or a channel mapping that maps two "
            f"tokens to one name, can cause this")
    expected = list(dict.fromkeys(df[io.CHANNEL]))
    per_site = df.groupby([io.WELL, io.SITE], sort=False)[io.CHANNEL].agg(set)
    incomplete = per_site[per_site.map(len) < len(expected)]
    if not incomplete.empty:
        (well, site), have = next(iter(incomplete.items()))
        lacking = [c for c in expected if c not in have]
        example = df[(df[io.WELL] == well) & (df[io.SITE] == site)][io.PATH].iloc[0]
        raise InputDataError(
            f"{root}: {len(incomplete)} site(s) lack a channel, e.g. well {well} site {site} has no "
            f"{', '.join(lacking)} image (it has {Path(example).name}); every site needs all of "
            f"{', '.join(expected)}")


def ingest_plate(plate: str, info: Mapping[str, str], settings: IngestSettings) -> pd.DataFrame:
    """Index and annotate one plate as the workflow does: the ``images.parquet`` table.

    ``info`` is the plate's row of the plate table (:func:`cytoscreen.config.plate_info`):
    ``images``, ``layout``, ``platemap`` and ``batch``.
    """
    from cytoscreen.ingest.platemap import join_platemap, read_platemap

    images = index_plate(info["images"], plate=plate, layout=info["layout"], channels=settings.channels,
                         user_layouts=settings.layouts, extensions=settings.extensions,
                         on_unmatched_files=settings.on_unmatched_files, z_projection=settings.z_projection,
                         on_mixed_bit_depth=settings.on_mixed_bit_depth)
    check_channels(images, settings, source=f"{info['images']}: plate {plate}")
    platemap = read_platemap(info["platemap"])
    out = join_platemap(images, platemap, source=info["platemap"], on_missing_wells=settings.on_missing_wells,
                        on_unmapped_wells=settings.on_unmapped_wells)
    out.insert(1, io.BATCH, info["batch"])
    if out.empty:
        raise InputDataError(f"plate {plate}: no images left after joining the platemap")
    return out


def check_channels(images: pd.DataFrame, settings: IngestSettings, *, source: str) -> None:
    """Channels the config names (``channels:`` values, ``features.channels``) must have images on
    the plate: an InputDataError naming them, or a warning under ``on_missing_channels: warn``."""
    present = list(dict.fromkeys(images[io.CHANNEL]))
    missing = [c for c in settings.required_channels if c not in present]
    if not missing:
        return
    tokens = {v: k for k, v in settings.channels.items()}
    named = ", ".join(f"{tokens[c]}: {c}" if c in tokens else f"{c} (features.channels)" for c in missing)
    msg = (f"{source}: {len(missing)} channel(s) named in the config have no images ({named}); channels "
           f"found: {', '.join(present)}. Check the channel tokens in the file names, or set "
           f"`ingest.on_missing_channels: warn` to ingest the plate without them")
    if settings.on_missing_channels == "error":
        raise InputDataError(msg)
    logger.warning(msg)


def check_layout_name(name: str, config: Mapping) -> None:
    """Raise ConfigError now for an unknown layout (used by config checks)."""
    resolve_layout(name, config.get("layouts"))


__all__ = ["check_channels", "index_plate", "ingest_plate", "check_layout_name",
           "ConfigError"]
