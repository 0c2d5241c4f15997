"""Column and flag names of every cytoscreen table, and the one rule for which columns are features.

``Metadata_*`` columns are bookkeeping, ``QC_*`` columns are bool flags, every other column is a
feature (DESIGN.md §3). Stages name columns through these constants, never by retyped strings.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cytoscreen.errors import InputDataError

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
#: The columns of images.parquet that the index gives every image plane (ingest).
IMAGE_COLUMNS = (PLATE, WELL, ROW, COL, SITE, CHANNEL, PATH, FRAME)
#: Added to every image row from its file header (:func:`cytoscreen.ingest.headers.annotate`).
HEADER_COLUMNS = (DTYPE, BIT_DEPTH, INTENSITY_SCALE)

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
