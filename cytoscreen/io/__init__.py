"""Thin I/O layer: column names, well names, atomic writes with provenance, table and image readers.

Library functions elsewhere take and return DataFrames or arrays; this package is where files are
read and written. Stages use it as ``from cytoscreen import io`` and ``io.PLATE``,
``io.write_parquet(...)``: the names below are its public surface, each defined once in

- :mod:`cytoscreen.io.columns`: column and flag names, and which columns are features;
- :mod:`cytoscreen.io.wells`: well names and plate shapes;
- :mod:`cytoscreen.io.atomic`: atomic writes (text, JSON, any file) and provenance records;
- :mod:`cytoscreen.io.tables`: Parquet with provenance, CSV/TSV, read and written;
- :mod:`cytoscreen.io.images`: image planes and headers of TIFF, PNG and Zarr arrays.
"""

from __future__ import annotations

from cytoscreen.io.atomic import (
    atomic_path,
    config_hash,
    json_safe,
    provenance,
    sha256_file,
    write_json,
    write_text,
)
from cytoscreen.io.columns import (
    BATCH,
    BIT_DEPTH,
    CHANNEL,
    CLUSTER,
    COL,
    CONCENTRATION,
    COUNT_CELLS,
    COUNT_NUCLEI,
    DTYPE,
    FRAME,
    HEADER_COLUMNS,
    IMAGE_COLUMNS,
    INTENSITY_SCALE,
    METADATA_PREFIX,
    MOA,
    N_SITES,
    N_WELLS,
    NOVELTY_HIT,
    NOVELTY_PLATE_ZPRIME,
    NOVELTY_POSCON_Z,
    NOVELTY_POSCON_ZPRIME,
    NOVELTY_PVALUE,
    NOVELTY_QVALUE,
    NOVELTY_ROBUST_Z,
    NOVELTY_SCORE,
    NOVELTY_SPLIT,
    PATH,
    PERT_TYPE,
    PERT_TYPES,
    PERTURBATION,
    PLATE,
    QC_BLURRY,
    QC_CONSTANT,
    QC_EMPTY,
    QC_IMAGE_FLAGS,
    QC_LOW_COUNT,
    QC_PREFIX,
    QC_SATURATED,
    QC_UNREADABLE,
    ROW,
    SITE,
    SITE_KEYS,
    TREATMENT,
    UMAP_1,
    UMAP_2,
    WELL,
    WELL_KEYS,
    check_numeric_features,
    feature_columns,
    metadata_columns,
    neighbor_column,
    neighbor_similarity_column,
    qc_columns,
)
from cytoscreen.io.images import (
    Z_MAX_FRAME,
    ImageHeader,
    apply_intensity_scale,
    image_dtype_max,
    image_full_scale,
    is_zarr_array,
    read_image,
    read_image_header,
    tiff_channel_count,
    z_max_frame,
)
from cytoscreen.io.tables import (
    PROVENANCE_KEY,
    read_provenance,
    read_table,
    write_parquet,
    write_table,
)
from cytoscreen.io.wells import (
    PLATE_SHAPES,
    normalize_well,
    row_index_to_letters,
    row_letters_to_index,
    split_well,
    well_from_row_col,
)

__all__ = [
    "METADATA_PREFIX", "QC_PREFIX", "PLATE", "WELL", "ROW", "COL", "SITE", "CHANNEL", "BATCH", "PERTURBATION",
    "CONCENTRATION", "PERT_TYPE", "MOA", "N_SITES", "N_WELLS", "PATH", "FRAME", "DTYPE", "BIT_DEPTH",
    "INTENSITY_SCALE", "IMAGE_COLUMNS", "HEADER_COLUMNS", "NOVELTY_SCORE", "NOVELTY_PVALUE", "NOVELTY_QVALUE",
    "NOVELTY_HIT", "NOVELTY_ROBUST_Z", "NOVELTY_PLATE_ZPRIME", "NOVELTY_POSCON_Z", "NOVELTY_POSCON_ZPRIME",
    "PERT_TYPES", "QC_BLURRY", "QC_SATURATED", "QC_EMPTY", "QC_UNREADABLE", "QC_CONSTANT", "QC_IMAGE_FLAGS",
    "SITE_KEYS", "WELL_KEYS", "TREATMENT", "CLUSTER", "UMAP_1", "UMAP_2", "neighbor_column",
    "neighbor_similarity_column", "NOVELTY_SPLIT", "COUNT_NUCLEI", "COUNT_CELLS", "QC_LOW_COUNT",
    "metadata_columns", "qc_columns", "feature_columns", "check_numeric_features", "row_letters_to_index",
    "row_index_to_letters", "normalize_well", "well_from_row_col", "split_well", "PLATE_SHAPES",
    "config_hash", "sha256_file", "provenance", "atomic_path", "write_text", "write_json", "json_safe",
    "PROVENANCE_KEY", "write_parquet", "write_table", "read_table", "read_provenance",
    "apply_intensity_scale", "is_zarr_array", "read_image", "Z_MAX_FRAME", "z_max_frame", "ImageHeader",
    "read_image_header", "tiff_channel_count", "image_dtype_max", "image_full_scale",
]
