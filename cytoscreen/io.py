"""Thin I/O layer: column-name constants, atomic writes with provenance, table and image readers.

Library functions elsewhere take and return DataFrames or arrays; this module is where files are
read and written.  Every output is written to a temporary file in the destination folder and then
renamed, so an interrupted run never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import glob
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cytoscreen import __version__
from cytoscreen.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

# --- column names -----------------------------------------------------------------------------
METADATA_PREFIX = "Metadata_"
QC_PREFIX = "QC_"

PLATE = "Metadata_Plate"
WELL = "Metadata_Well"
ROW = "Metadata_Row"
COL = "Metadata_Col"
SITE = "Metadata_Site"
CHANNEL = "Metadata_Channel"
BATCH = "Metadata_Batch"
PERTURBATION = "Metadata_perturbation"
CONCENTRATION = "Metadata_concentration"
PERT_TYPE = "Metadata_pert_type"
MOA = "Metadata_moa"
N_SITES = "Metadata_n_sites"
#: Count of wells behind each consensus (treatment) row.
N_WELLS = "Metadata_n_wells"
PATH = "path"
FRAME = "frame"
#: Per-image columns of images.parquet read from the file header at ingest: numpy dtype name
#: (``uint8``, ``uint16``, ``float32``) and bits per sample (8, 12, 16, 32).
DTYPE = "dtype"
BIT_DEPTH = "bit_depth"
#: Factor every reader applies to an image's values so that a plate mixing bit depths shares one
#: full scale (1.0 unless ``ingest.on_mixed_bit_depth: rescale``).
INTENSITY_SCALE = "intensity_scale"

NOVELTY_SCORE = "Metadata_Novelty_Score"
NOVELTY_PVALUE = "Metadata_Novelty_PValue"
NOVELTY_QVALUE = "Metadata_Novelty_QValue"
NOVELTY_HIT = "Metadata_Novelty_Hit"
#: Per-well robust z of the log novelty score against the plate's negcon wells (out-of-sample scores).
NOVELTY_ROBUST_Z = "Metadata_Novelty_RobustZ"
#: Z'-factor of the plate's novelty score, poscon vs negcon wells (same value on every well of a plate).
NOVELTY_PLATE_ZPRIME = "Metadata_Novelty_PlateZPrime"
#: Per-well robust z of the projection on the plate's poscon - negcon direction (controls left out of the
#: direction and centre they are scored against), against the plate's negcon wells.
NOVELTY_POSCON_Z = "Metadata_Novelty_PosconZ"
#: Z'-factor of ``Metadata_Novelty_PosconZ``, poscon vs negcon, per plate (repeated on each well).
NOVELTY_POSCON_ZPRIME = "Metadata_Novelty_PosconZPrime"

PERT_TYPES = ("trt", "negcon", "poscon", "empty")

# image-QC flags of qc.parquet (bool, one row per site); see cytoscreen.qc
QC_BLURRY = "QC_blurry"
QC_SATURATED = "QC_saturated"
QC_EMPTY = "QC_empty"
QC_UNREADABLE = "QC_unreadable"
QC_CONSTANT = "QC_constant"
#: The image-QC flags, in the order reports list them.
QC_IMAGE_FLAGS = (QC_UNREADABLE, QC_CONSTANT, QC_SATURATED, QC_BLURRY, QC_EMPTY)
SITE_KEYS = (PLATE, WELL, SITE)
WELL_KEYS = (PLATE, WELL)

PROVENANCE_KEY = b"cytoscreen"


def metadata_columns(df: pd.DataFrame) -> list[str]:
    """Columns starting with ``Metadata_``, in table order."""
    return [c for c in df.columns if str(c).startswith(METADATA_PREFIX)]


def qc_columns(df: pd.DataFrame) -> list[str]:
    """Columns starting with ``QC_``, in table order."""
    return [c for c in df.columns if str(c).startswith(QC_PREFIX)]


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Feature columns: every column not starting with ``Metadata_`` or ``QC_``.

    This is the only definition of features in cytoscreen (DESIGN.md §3); the bookkeeping columns
    ``path`` and ``frame`` of ``images.parquet`` are not features but that table has none anyway.
    """
    return [
        c
        for c in df.columns
        if not str(c).startswith(METADATA_PREFIX) and not str(c).startswith(QC_PREFIX)
    ]


def check_numeric_features(df: pd.DataFrame, features: Sequence[str], *, source: str = "table") -> None:
    """Raise :class:`InputDataError` if any feature column is not numeric."""
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise InputDataError(
            f"{source}: {len(bad)} feature column(s) are not numeric ({shown}); feature columns are "
            f"every column not starting with Metadata_ or QC_, so rename metadata columns with the "
            f"Metadata_ prefix"
        )


# --- well names ---------------------------------------------------------------------------------
_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")


def row_letters_to_index(letters: str) -> int:
    """``A`` -> 0, ``P`` -> 15, ``AF`` -> 31 (1536-well plates)."""
    letters = letters.upper()
    idx = 0
    for ch in letters:
        idx = idx * 26 + (ord(ch) - ord("A") + 1)
    return idx - 1


def row_index_to_letters(index: int) -> str:
    """0 -> ``A``, 25 -> ``Z``, 26 -> ``AA``."""
    out = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(ord("A") + rem) + out
    return out


def normalize_well(name: Any) -> str:
    """Normalize a well name to letter(s) + two-digit column: ``a1`` / ``A1`` / ``A001`` -> ``A01``.

    Raises
    ------
    ValueError
        If ``name`` is not a well name.
    """
    m = _WELL_RE.match(str(name))
    if not m or int(m.group(2)) == 0:
        raise ValueError(f"not a well name: {name!r}")
    return f"{m.group(1).upper()}{int(m.group(2)):02d}"


def well_from_row_col(row: int, col: int) -> str:
    """Zero-based row and one-based column -> well name (``0, 1`` -> ``A01``)."""
    return f"{row_index_to_letters(row)}{col:02d}"


def split_well(well: str) -> tuple[int, int]:
    """``A01`` -> (0, 1): zero-based row, one-based column."""
    m = _WELL_RE.match(well)
    if not m:
        raise ValueError(f"not a well name: {well!r}")
    return row_letters_to_index(m.group(1)), int(m.group(2))


PLATE_SHAPES = {6: (2, 3), 12: (3, 4), 24: (4, 6), 48: (6, 8), 96: (8, 12), 384: (16, 24), 1536: (32, 48)}


# --- provenance ---------------------------------------------------------------------------------
def config_hash(config: Mapping[str, Any] | None) -> str | None:
    """Short SHA-256 of a config mapping (sorted JSON), or None."""
    if config is None:
        return None
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def provenance(stage: str, **extra: Any) -> dict[str, Any]:
    """Provenance record stored in every output's metadata."""
    record: dict[str, Any] = {
        "cytoscreen_version": __version__,
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update({k: v for k, v in extra.items() if v is not None})
    return record


# --- atomic writes ------------------------------------------------------------------------------
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is ``.<name>.<pid>.<random>.tmp``. A process killed mid-write (SIGKILL, a
    node lost) cannot remove its own, so every call first removes the leftovers of earlier writers
    of the same ``path`` whose process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates files 0600; give the output the permissions a plain open() would
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.*.tmp`` beside ``path`` unless the pid in its name is a running process."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        token = tmp.name[len(prefix):].split(".", 1)[0]
        if token.isdigit() and _pid_alive(int(token)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            logger.info("removed %s, left by an interrupted write of %s", tmp, path.name)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def write_parquet(
    df: pd.DataFrame | Any, path: str | os.PathLike, *, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write a DataFrame (or a ``pyarrow.Table``) to Parquet atomically, with ``provenance`` in the
    file's key-value metadata.

    Dictionary encoding, column statistics and zstd are kept for the metadata columns only: float
    feature columns barely compress (zstd saves ~10% on CNN and CellProfiler features) and those
    steps cost time (about 10x for wide embedding tables), so they are written with LZ4, which
    decodes about twice as fast as zstd (``benchmarks/profiles.py``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    if provenance is not None:
        meta = dict(table.schema.metadata or {})
        meta[PROVENANCE_KEY] = json.dumps(dict(provenance), default=str).encode()
        table = table.replace_schema_metadata(meta)
    keyed = [f.name for f in table.schema
             if f.name.startswith((METADATA_PREFIX, QC_PREFIX)) or not pa.types.is_floating(f.type)]
    with atomic_path(path) as tmp:
        zstd = set(keyed)
        codec = {f.name: "zstd" if f.name in zstd else "lz4" for f in table.schema}
        pq.write_table(table, tmp, compression=codec, use_dictionary=keyed, write_statistics=keyed)
    logger.debug("wrote %s (%d rows x %d columns)", path, table.num_rows, table.num_columns)
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (indented, NaN written as null)."""
    return write_text(json.dumps(_json_safe(obj), indent=2, default=str) + "\n", path)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def write_table(df: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write a table by extension: ``.parquet`` (with provenance), ``.csv``, ``.tsv``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return write_parquet(df, path, **kwargs)
    if suffix in (".csv", ".tsv", ".txt"):
        with atomic_path(path) as tmp:
            df.to_csv(tmp, sep="," if suffix == ".csv" else "\t", index=False)
        return Path(path)
    raise ConfigError(f"{path}: unknown table format {suffix!r}; use .parquet, .csv or .tsv")


# --- readers ------------------------------------------------------------------------------------
def read_table(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a Parquet, CSV or TSV table (gzip allowed) with one clear error if it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: file not found")
    name = path.name.lower()
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            return pd.read_parquet(path, columns=list(columns) if columns else None)
        sep = "\t" if (".tsv" in name or ".txt" in name) else ","
        df = pd.read_csv(path, sep=sep, usecols=list(columns) if columns else None)
        return df
    except (OSError, ValueError) as err:
        raise InputDataError(f"{path}: cannot read table ({err})") from err


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance record of a Parquet file written by :func:`write_parquet` (empty if none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def is_zarr_array(path: str | os.PathLike) -> bool:
    """True if ``path`` is a Zarr array folder (v3 ``zarr.json`` or v2 ``.zarray``)."""
    p = Path(path)
    if (p / ".zarray").exists():
        return True
    meta = p / "zarr.json"
    if meta.exists():
        try:
            return json.loads(meta.read_text()).get("node_type") == "array"
        except (OSError, ValueError):
            return False
    return False


def read_image(path: str | os.PathLike, frame: int = -1) -> np.ndarray:
    """Read one 2-D image plane.

    Parameters
    ----------
    path
        A TIFF or PNG file, or a Zarr array folder (e.g. ``images.zarr/images``).
    frame
        For a TIFF: the page (plane) index, ``-1`` for a single-plane file, and
        :func:`z_max_frame` ``(c)`` (``-2 - c``) for the maximum projection over z of channel ``c``
        of a z-stack (``ingest.z_projection: max``).  For a Zarr array of shape ``(..., y, x)``: the
        flat index over the leading dimensions (for ``(site, channel, y, x)`` it is
        ``site * n_channels + channel``).

    Raises
    ------
    InputDataError
        When the file is missing, unreadable, truncated, or the plane is not 2-D.
    """
    p = Path(path)
    try:
        if is_zarr_array(p):
            import zarr

            arr = zarr.open_array(str(p), mode="r")
            lead = arr.shape[:-2]
            idx = np.unravel_index(max(frame, 0), lead) if lead else ()
            img = np.asarray(arr[tuple(int(i) for i in idx)])
        elif p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                if frame <= Z_MAX_FRAME:
                    img = _z_max(tif, Z_MAX_FRAME - frame)
                elif frame >= 0 and len(tif.pages) > 1:
                    img = tif.pages[frame].asarray()
                elif frame >= 0:  # one page holding several samples (planar or interleaved)
                    img = _sample_plane(np.squeeze(tif.pages[0].asarray()), frame)
                else:
                    img = tif.asarray()
        elif p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            import matplotlib.image as mpimg

            img = mpimg.imread(p)
            if img.ndim == 3:
                img = img[..., :3].mean(axis=-1)
        else:
            raise InputDataError(f"{p}: unknown image format {p.suffix!r}")
    except InputDataError:
        raise
    except Exception as err:  # tifffile/zarr raise many types for corrupt files
        raise InputDataError(f"{p}: cannot read image ({type(err).__name__}: {err})") from err
    img = np.squeeze(img)
    if img.size == 0:
        raise InputDataError(f"{p}: cannot read image (no pixel data; the file is truncated or corrupt)")
    if img.ndim != 2:
        raise InputDataError(
            f"{p}: expected a 2-D image plane, got shape {img.shape}: a z-stack needs "
            f"`ingest.z_projection: max`, and multi-channel TIFFs need a layout without a channel "
            f"group so each page is read as one channel"
        )
    return img


#: ``frame`` of the maximum projection over z of channel 0 of a z-stack TIFF; channel ``c`` is
#: ``Z_MAX_FRAME - c`` (see :func:`z_max_frame`).
Z_MAX_FRAME = -2


def z_max_frame(channel: int = 0) -> int:
    """The ``frame`` that makes :func:`read_image` return the z maximum projection of ``channel``."""
    return Z_MAX_FRAME - int(channel)


def _z_max(tif: Any, channel: int) -> np.ndarray:
    """Maximum over z of channel ``channel`` of a TIFF's first series (pages are z unless the
    series has a C axis, as ImageJ hyperstacks do)."""
    series = tif.series[0]
    arr = series.asarray()
    axes = series.axes
    if "C" in axes:
        arr = np.take(arr, channel, axis=axes.index("C"))
        axes = axes.replace("C", "")
    elif channel:
        raise InputDataError(f"channel {channel} of a z-stack without a channel axis (axes {series.axes})")
    lead = tuple(i for i, a in enumerate(axes) if a not in "YXS")
    return arr.max(axis=lead) if lead else arr


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, without decoding pixels.

    ``planes`` counts the 2-D planes of the file (TIFF pages, or samples of one page);
    ``z`` and ``channels`` are the sizes of the Z and C axes that the file declares (ImageJ
    hyperstacks and OME-TIFF do; plain multi-page TIFFs do not, their pages are axis ``Q``).
    """

    dtype: str
    bit_depth: int
    shape: tuple[int, ...]
    axes: str
    planes: int
    z: int = 1
    channels: int = 1

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"


def read_image_header(path: str | os.PathLike) -> ImageHeader:
    """dtype, bits per sample and plane layout of a TIFF or PNG from its header.

    Raises
    ------
    InputDataError
        The file cannot be opened or its header cannot be read.
    """
    p = Path(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                series = tif.series[0]
                page = tif.pages[0]
                axes = series.axes
                shape = tuple(int(n) for n in series.shape)
                pages = len(tif.pages)
                samples = int(getattr(page, "samplesperpixel", 1) or 1)
                return ImageHeader(
                    dtype=np.dtype(series.dtype).name, bit_depth=int(page.bitspersample), shape=shape,
                    axes=axes, planes=pages if pages > 1 else samples,
                    z=shape[axes.index("Z")] if "Z" in axes else 1,
                    channels=shape[axes.index("C")] if "C" in axes else 1,
                )
        if p.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(p) as im:
                modes = {"1": ("bool", 1), "L": ("uint8", 8), "LA": ("uint8", 8), "P": ("uint8", 8),
                         "RGB": ("uint8", 8), "RGBA": ("uint8", 8), "I;16": ("uint16", 16),
                         "I;16B": ("uint16", 16), "I": ("int32", 32), "F": ("float32", 32)}
                dtype, bits = modes.get(im.mode, ("uint8", 8))
                return ImageHeader(dtype=dtype, bit_depth=bits, shape=(im.height, im.width), axes="YX",
                                   planes=1)
        raise InputDataError(f"{p}: unknown image format {p.suffix!r}")
    except InputDataError:
        raise
    except Exception as err:  # noqa: BLE001 - decoders raise many types for corrupt files
        raise InputDataError(f"{p}: cannot read image header ({type(err).__name__}: {err})") from err


def _sample_plane(arr: np.ndarray, index: int) -> np.ndarray:
    """Plane ``index`` of a (C, y, x) or (y, x, C) array from a single multi-sample TIFF page."""
    if arr.ndim == 2 and index == 0:
        return arr
    if arr.ndim != 3:
        raise InputDataError(f"cannot take channel {index} of an image of shape {arr.shape}")
    axis = 0 if arr.shape[0] <= arr.shape[-1] else arr.ndim - 1
    if index >= arr.shape[axis]:
        raise InputDataError(f"channel {index} requested but the image has {arr.shape[axis]} channels")
    return np.take(arr, index, axis=axis)


def tiff_channel_count(path: str | os.PathLike) -> int:
    """Number of channel planes of a TIFF: its pages, or the samples of a single page."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) > 1:
            return len(tif.pages)
        shape = np.squeeze(np.empty(tif.pages[0].shape, dtype=np.uint8)).shape
        return 1 if len(shape) == 2 else min(shape[0], shape[-1])


def image_dtype_max(img: np.ndarray) -> float:
    """Full-scale value of an image's dtype (255 for uint8, 65535 for uint16); for float images
    their actual range (:func:`image_full_scale`: 1.0 for a 0-1 image)."""
    if np.issubdtype(img.dtype, np.integer):
        return float(np.iinfo(img.dtype).max)
    return image_full_scale(img)


def image_full_scale(img: np.ndarray, bit_depth: int | None = None) -> float:
    """The value a saturated pixel of ``img`` has.

    Integer images: ``2**bit_depth - 1`` when the file declares fewer bits than its dtype holds
    (a 12-bit camera in a 16-bit TIFF), else the dtype's maximum.  Float images, by their actual
    range: 1.0 when every value is at most 1 (a 0-1 image), else the smallest ``2**k - 1`` at or
    above the maximum (raw counts stored as float: 4095 for a 12-bit camera, 65535 for 16-bit).
    """
    if np.issubdtype(img.dtype, np.integer):
        full = float(np.iinfo(img.dtype).max)
        if bit_depth and 0 < bit_depth < np.iinfo(img.dtype).bits:
            full = float(2 ** int(bit_depth) - 1)
        return full
    top = float(np.nanmax(img)) if img.size else 0.0
    if not np.isfinite(top) or top <= 1.0:
        return 1.0
    return float(2 ** int(np.ceil(np.log2(top + 1.0))) - 1)


# --- MoA stage (moa.parquet: one row per treatment, every column Metadata_*) ---------------------
TREATMENT = "Metadata_Treatment"
CLUSTER = "Metadata_Cluster"
UMAP_1 = "Metadata_UMAP_1"
UMAP_2 = "Metadata_UMAP_2"


def neighbor_column(rank: int) -> str:
    """Name of the ``rank``-th (1-based) nearest-neighbour treatment column of moa.parquet."""
    return f"Metadata_Neighbor_{rank}"


def neighbor_similarity_column(rank: int) -> str:
    """Name of the cosine similarity column of the ``rank``-th nearest neighbour in moa.parquet."""
    return f"Metadata_Neighbor_{rank}_Similarity"

# --- added by the novelty stage -----------------------------------------------------------------
#: Which control-well set a well was in when the novelty model was trained: train, val,
#: calibration, or none (not a control well of the split).
NOVELTY_SPLIT = "Metadata_Novelty_Split"

# --- added by the segment stage (segmentation.parquet, qc_segmented.parquet) ---------------------
#: Per-site nucleus and cell counts from Cellpose (nullable integers; Metadata_ so never features).
COUNT_NUCLEI = "Metadata_Count_Nuclei"
COUNT_CELLS = "Metadata_Count_Cells"
#: Site whose nucleus count is a robust low outlier against the plate's negcon sites.
QC_LOW_COUNT = "QC_low_count"
