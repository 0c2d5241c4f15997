"""Cellpose masks as OME-Zarr ``labels/`` of each field of an OME-Zarr HCS plate (NGFF 0.4 / 0.5).

After ``cytoscreen segment run --masks DIR`` has written each site's label masks
(``<plate>_<well>_s<site>_{nuclei,cells}.tif``), :func:`write_plate_labels` puts them into an
OME-Zarr plate as ``<row>/<col>/<field>/labels/nuclei`` (and ``cells``), one multiscale label image
per mask with the field's number of levels, so napari (napari-ome-zarr), vizarr or ngio show
images and masks together:

- ``mode="copy"`` writes a new plate store: a copy of the input plate store for an ``ome-zarr``
  plate, or, for a plate of TIFFs or of the ``zarr`` layout, a new OME-Zarr plate of its images;
- ``mode="input"`` writes the labels into the input ``ome-zarr`` plate store itself.

Label images have the field's axes without the channel axis, the field's scale transforms, integer
pixels (uint32) and ``image-label.source.image = "../../"``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import io
from cytoscreen.errors import ConfigError, InputDataError
from cytoscreen.ingest.omezarr import _open_group, _read_attrs, _set_ome, write_plate

logger = logging.getLogger(__name__)

LABEL_MODES = ("copy", "input")
#: Mask kinds written by the segment stage, in the order they are listed under ``labels``.
LABEL_KINDS = ("nuclei", "cells")


def _field_meta(field: Path) -> tuple[dict[str, Any], str]:
    attrs, version = _read_attrs(field)
    if not attrs.get("multiscales"):
        raise InputDataError(f"{field}: not an OME-Zarr image (no multiscales metadata)")
    return attrs, str(version)


def write_field_labels(field: str | Path, labels: Mapping[str, np.ndarray]) -> list[str]:
    """Write 2-D label masks ``{name: (y, x) array}`` under ``<field>/labels/<name>``.

    Each label image gets as many levels as the field (nearest-neighbour subsampling to each
    level's size) and the field's axes minus the channel axis.  Existing labels of other names
    are kept in the ``labels`` list.  Returns the field's label names.
    """
    import zarr

    field = Path(field)
    attrs, version = _field_meta(field)
    ms = attrs["multiscales"][0]
    axes = ms.get("axes") or [{"name": n} for n in "tczyx"]
    names = [a["name"] if isinstance(a, Mapping) else str(a) for a in axes]
    types = [a.get("type") if isinstance(a, Mapping) else None for a in axes]
    keep = [i for i, (n, t) in enumerate(zip(names, types, strict=True)) if t != "channel" and n != "c"]
    fmt = 3 if version == "0.5" else 2
    shapes = [zarr.open_array(str(field / ds["path"]), mode="r", zarr_format=fmt).shape for ds in ms["datasets"]]
    h0, w0 = shapes[0][-2:]
    group = _open_group(field, version, mode="r+")
    lgroup = group.require_group("labels")
    existing, _ = _read_attrs(field / "labels")
    listed = list(existing.get("labels", []))
    for name, mask in labels.items():
        mask = np.asarray(mask)
        if mask.shape != (h0, w0):
            raise InputDataError(f"{field}: mask {name!r} has shape {mask.shape}, the field's level 0 is "
                                 f"{h0} x {w0}")
        img = lgroup.require_group(name)
        datasets = []
        for lv, (ds, shape) in enumerate(zip(ms["datasets"], shapes, strict=True)):
            sy, sx = max(round(h0 / shape[-2]), 1), max(round(w0 / shape[-1]), 1)
            plane = mask[::sy, ::sx][: shape[-2], : shape[-1]].astype(np.uint32)
            data = plane.reshape((1,) * (len(keep) - 2) + plane.shape)
            kwargs: dict[str, Any] = {"dimension_names": [names[i] for i in keep]} if version == "0.5" else {}
            arr = img.create_array(str(lv), shape=data.shape, dtype=data.dtype, chunks=data.shape,
                                   overwrite=True, **kwargs)
            arr[...] = data
            tf = []
            for t in ds.get("coordinateTransformations", []):
                t = dict(t)
                if "scale" in t:
                    t["scale"] = [t["scale"][i] for i in keep]
                if "translation" in t:
                    t["translation"] = [t["translation"][i] for i in keep]
                tf.append(t)
            datasets.append({"path": str(lv), "coordinateTransformations": tf})
        lms: dict[str, Any] = {"name": name, "axes": [axes[i] for i in keep], "datasets": datasets}
        if version == "0.4":
            lms["version"] = "0.4"
        image_label: dict[str, Any] = {"source": {"image": "../../"}}
        if version == "0.4":
            image_label["version"] = "0.4"
        _set_ome(img, version, {"multiscales": [lms], "image-label": image_label})
        if name not in listed:
            listed.append(name)
    _set_ome(lgroup, version, {"labels": listed})
    return listed


def read_field_labels(field: str | Path) -> dict[str, np.ndarray]:
    """The level-0 label images of a field, ``{name: (y, x) array}``, read back through zarr."""
    import zarr

    field = Path(field)
    attrs, version = _read_attrs(field / "labels")
    out = {}
    for name in attrs.get("labels", []):
        lattrs, _ = _read_attrs(field / "labels" / name)
        path = field / "labels" / name / lattrs["multiscales"][0]["datasets"][0]["path"]
        arr = zarr.open_array(str(path), mode="r", zarr_format=3 if version == "0.5" else 2)
        out[name] = np.asarray(arr[...]).reshape(arr.shape[-2:])
    return out


def _plate_root(field: Path) -> Path:
    root = field.parent.parent.parent
    if "plate" not in _read_attrs(root)[0]:
        raise InputDataError(f"{field}: not a field of an OME-Zarr plate (no plate metadata in {root})")
    return root


def _sites(images: pd.DataFrame) -> pd.DataFrame:
    need = [io.PLATE, io.WELL, io.SITE, io.CHANNEL, io.PATH, io.FRAME]
    missing = [c for c in need if c not in images.columns]
    if missing:
        raise InputDataError(f"images table: missing columns {', '.join(missing)}")
    return images.drop_duplicates([io.WELL, io.SITE])[[io.PLATE, io.WELL, io.SITE, io.PATH]]


def _fields_of_ome_zarr(images: pd.DataFrame) -> tuple[Path, dict[tuple[str, int], str]]:
    """The plate store of an ome-zarr plate's images and ``(well, site) -> field path`` in it."""
    fields = {}
    roots = set()
    for rec in _sites(images).to_dict("records"):
        field = Path(rec[io.PATH]).parent
        root = _plate_root(field)
        roots.add(root)
        fields[(rec[io.WELL], int(rec[io.SITE]))] = field.relative_to(root).as_posix()
    if len(roots) != 1:
        raise InputDataError(f"images table: the fields lie in {len(roots)} plate stores; expected one")
    return roots.pop(), fields


def _is_ome_zarr(images: pd.DataFrame) -> bool:
    path = Path(str(images[io.PATH].iloc[0]))
    if not io.is_zarr_array(path):
        return False
    return bool(_read_attrs(path.parent)[0].get("multiscales")) and "plate" in _read_attrs(
        path.parent.parent.parent.parent)[0]


def _convert(images: pd.DataFrame, dest: Path, version: str) -> dict[tuple[str, int], str]:
    """Write a TIFF / zarr-layout plate's images as an OME-Zarr plate; ``(well, site) -> field``."""
    channels = list(dict.fromkeys(images[io.CHANNEL]))
    fields, paths = [], {}
    for (well, site), grp in images.groupby([io.WELL, io.SITE], sort=True):
        grp = grp.set_index(io.CHANNEL).reindex(channels)
        planes = [io.read_image(p, int(f)) for p, f in zip(grp[io.PATH], grp[io.FRAME], strict=True)]
        fields.append((well, int(site), np.stack(planes)))
    write_plate(dest, fields, channels=channels, version=version, name=str(images[io.PLATE].iloc[0]))
    for well in dict.fromkeys(w for w, _, _ in fields):
        r, c = io.split_well(well)
        for i, site in enumerate(sorted(s for w, s, _ in fields if w == well)):
            paths[(well, site)] = f"{io.row_index_to_letters(r)}/{c}/{i}"
    return paths


def write_plate_labels(
    images: pd.DataFrame,
    masks_dir: str | Path,
    *,
    mode: str = "copy",
    out: str | Path | None = None,
    version: str = "0.5",
    kinds: Sequence[str] = LABEL_KINDS,
) -> pd.DataFrame:
    """Write the saved masks of a plate as OME-Zarr labels; return one row per (site, label).

    Parameters
    ----------
    images
        The plate's ``images.parquet`` table.
    masks_dir
        Folder of ``segment run --masks``; a site without any mask file is an error, a missing
        ``cells`` mask is skipped for every site (nuclei-only segmentation).
    mode
        ``copy``: write the plate store ``out`` (the input store copied, or the images converted);
        ``input``: add the labels to the input ``ome-zarr`` plate store.
    out
        The new plate store for ``mode="copy"``; written beside as a temporary folder, then renamed.
    version
        NGFF version of a converted plate (a copied store keeps its own).

    Raises
    ------
    ConfigError
        Unknown mode, no ``out`` for ``copy``, or ``input`` for a plate that is not OME-Zarr.
    InputDataError
        Missing masks, a mask whose shape differs from its field.
    """
    from cytoscreen.segment.segment import mask_path

    if mode not in LABEL_MODES:
        raise ConfigError(f"OME-Zarr labels mode {mode!r}: choose one of {', '.join(LABEL_MODES)}")
    if images.empty:
        raise InputDataError("images table: no images")
    masks_dir = Path(masks_dir)
    sites = _sites(images)
    plate = str(sites[io.PLATE].iloc[0])
    present = {k: any(mask_path(masks_dir, plate, w, s, kind=k).exists()
                      for w, s in zip(sites[io.WELL], sites[io.SITE], strict=True)) for k in kinds}
    kinds = [k for k in kinds if present[k]]
    missing = [(w, s) for w, s in zip(sites[io.WELL], sites[io.SITE], strict=True)
               if kinds and not mask_path(masks_dir, plate, w, s, kind=kinds[0]).exists()]
    if not kinds or missing:
        example = mask_path(masks_dir, plate, *(missing[0] if missing else (sites[io.WELL].iloc[0],
                                                                           sites[io.SITE].iloc[0])))
        raise InputDataError(f"{masks_dir}: no mask for {len(missing) or len(sites)} site(s), e.g. {example}; "
                             f"run `cytoscreen segment run --masks {masks_dir}` first")
    ome = _is_ome_zarr(images)
    if mode == "input":
        if not ome:
            raise ConfigError(f"plate {plate}: OME-Zarr labels mode `input` needs an ome-zarr plate; this "
                              f"plate's images are files ({images[io.PATH].iloc[0]}): use mode `copy`")
        target, fields = _fields_of_ome_zarr(images)
        rows = _write_all(target, fields, masks_dir, plate, kinds)
    else:
        if out is None:
            raise ConfigError("OME-Zarr labels mode `copy` needs an output plate store")
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            if ome:
                src, fields = _fields_of_ome_zarr(images)
                shutil.rmtree(tmp)
                shutil.copytree(src, tmp)
            else:
                shutil.rmtree(tmp)
                fields = _convert(images, tmp, version)
            rows = _write_all(tmp, fields, masks_dir, plate, kinds)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    for row in rows:
        row["field"] = str(target / row["field"])
    logger.info("plate %s: wrote %s labels of %d fields into %s (%s)", plate, "/".join(kinds), len(fields),
                target, "copy" if mode == "copy" else "input store")
    return pd.DataFrame(rows)


def _write_all(store: Path, fields: Mapping[tuple[str, int], str], masks_dir: Path, plate: str,
               kinds: Sequence[str]) -> list[dict[str, Any]]:
    """Write every field's masks; one record per (site, label) with the object count."""
    import tifffile

    from cytoscreen.segment.segment import mask_path

    rows = []
    for (well, site), fpath in fields.items():
        masks = {}
        for kind in kinds:
            p = mask_path(masks_dir, plate, well, site, kind=kind)
            if not p.exists():
                raise InputDataError(f"{p}: mask missing (other sites have {kind} masks)")
            masks[kind] = tifffile.imread(p)
            ids = np.unique(masks[kind])
            rows.append({io.PLATE: plate, io.WELL: well, io.SITE: site, "label": kind, "field": fpath,
                         "n_objects": int((ids != 0).sum())})
        write_field_labels(store / fpath, masks)
    return rows
