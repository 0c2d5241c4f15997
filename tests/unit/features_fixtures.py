"""Small hand-built plates for the features tests: TIFF files plus images/qc tables.

``make_plate`` writes one TIFF per site and channel into a folder and returns the
``images.parquet``-shaped and ``qc.parquet``-shaped frames (nothing is read from a generator, so
every value is known).  ``write_tables`` saves them as Parquet for CLI tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from cytoscreen import io

DATA = Path(__file__).resolve().parents[1] / "data"
JUMP_ZARR = DATA / "jump_rab30_mini" / "images.zarr" / "images"
CHELSEA = DATA / "chelsea" / "chelsea.png"

#: (well, pert_type, perturbation) of the default four-well plate.
DEFAULT_WELLS: tuple[tuple[str, str, str], ...] = (
    ("A01", "negcon", "DMSO"),
    ("A02", "trt", "cmpd-1"),
    ("B01", "negcon", "DMSO"),
    ("B02", "poscon", "stauro"),
)


def blobs(rng: np.random.Generator, size: int, *, n: int = 6, radius: float = 5.0,
          amplitude: float = 1000.0, background: float = 100.0) -> np.ndarray:
    """A float image of Gaussian blobs on a flat background with Poisson-like noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.full((size, size), background, np.float32)
    for _ in range(n):
        cy, cx = rng.uniform(0, size, 2)
        img += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    return img + rng.normal(0, np.sqrt(background), img.shape).astype(np.float32)


def make_plate(
    folder: Path,
    *,
    plate: str = "P1",
    wells: Sequence[tuple[str, str, str]] = DEFAULT_WELLS,
    sites: int = 2,
    channels: Sequence[str] = ("DNA", "RNA"),
    size: int = 64,
    dtype: type = np.uint16,
    seed: int = 0,
    draw: Callable[[np.random.Generator, str, str], np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``<plate>_<well>_s<site>_<channel>.tif`` files; return (images, qc) frames.

    ``draw(rng, well, pert_type)`` returns a float ``(channel, y, x)`` stack in 16-bit units; by
    default blobs whose brightness depends on the pert_type.  QC flags are all False.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows, qc_rows = [], []
    for w_i, (well, pert_type, pert) in enumerate(wells):
        r, c = io.split_well(well)
        for site in range(1, sites + 1):
            rng = np.random.default_rng([seed, w_i, site])
            if draw is not None:
                stack = draw(rng, well, pert_type)
            else:
                amp = {"negcon": 1000.0, "trt": 1600.0, "poscon": 3000.0}.get(pert_type, 1000.0)
                stack = [blobs(rng, size, amplitude=amp * (1 + i)) for i in range(len(channels))]
            for ch_i, ch in enumerate(channels):
                img = _cast(np.asarray(stack[ch_i], np.float32), dtype)
                path = folder / f"{plate}_{well}_s{site}_{ch}.tif"
                tifffile.imwrite(path, img)
                rows.append({
                    io.PLATE: plate, io.WELL: well, io.ROW: r, io.COL: c, io.SITE: site,
                    io.CHANNEL: ch, io.PATH: str(path), io.FRAME: -1, io.BATCH: "b1",
                    io.PERTURBATION: pert, io.CONCENTRATION: 1.0, io.PERT_TYPE: pert_type,
                    io.MOA: "control" if pert_type == "negcon" else pert,
                })
            qc_rows.append({
                io.PLATE: plate, io.WELL: well, io.ROW: r, io.COL: c, io.SITE: site,
                "Metadata_DNA_FocusScore": 1.0,
                "QC_blurry": False, "QC_saturated": False, "QC_empty": False, "QC_unreadable": False,
            })
    images = pd.DataFrame(rows)
    images[io.FRAME] = images[io.FRAME].astype(np.int64)
    return images, pd.DataFrame(qc_rows)


def _cast(img: np.ndarray, dtype: type) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        scale = 1.0 if info.max > 255 else 255.0 / 6000.0
        return np.clip(np.round(img * scale), info.min, info.max).astype(dtype)
    return (img / 6000.0).astype(dtype)


def write_tables(folder: Path, images: pd.DataFrame, qc: pd.DataFrame | None) -> tuple[Path, Path | None]:
    """Save ``images.parquet`` (and ``qc.parquet``) into ``folder``."""
    images_path = io.write_parquet(images, folder / "images.parquet")
    qc_path = io.write_parquet(qc, folder / "qc.parquet") if qc is not None else None
    return images_path, qc_path


def jump_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """images/qc frames for the two JUMP sites of tests/data/jump_rab30_mini (zarr, 5 channels)."""
    channels = pd.read_csv(DATA / "jump_rab30_mini" / "channels.csv")
    sites = pd.read_csv(DATA / "jump_rab30_mini" / "sites.csv")
    n_ch = len(channels)
    rows, qc_rows = [], []
    for _, s in sites.iterrows():
        well = io.normalize_well(s["Well"])
        r, c = io.split_well(well)
        key = {io.PLATE: "JUMP", io.WELL: well, io.ROW: r, io.COL: c, io.SITE: int(s["Site"])}
        for _, ch in channels.iterrows():
            rows.append({**key, io.CHANNEL: ch["channel"], io.PATH: str(JUMP_ZARR),
                         io.FRAME: int(s["idx"]) * n_ch + int(ch["idx"]), io.BATCH: s["Batch"],
                         io.PERTURBATION: "RAB30", io.PERT_TYPE: "trt"})
        qc_rows.append({**key, "QC_unreadable": False, "QC_blurry": False})
    images = pd.DataFrame(rows)
    images[io.FRAME] = images[io.FRAME].astype(np.int64)
    return images, pd.DataFrame(qc_rows)
