"""Optional Cellpose segmentation: per-site cell counts, ``QC_low_count`` and single-cell crops.

The main path of cytoscreen is segmentation-free; this stage adds what screening scientists still
ask for on every plate: how many cells survived (toxicity, seeding problems) and, where wanted,
per-cell crops and single-cell profiles to compare with the segmentation-free ones.

Modules
-------
model
    Resolving the Cellpose 3 model named in config (a file, or a name in Cellpose's local model
    folder), strictly offline, and loading it on the CPU or a GPU.
segment
    Running Cellpose per site (nuclei on DNA, cells on a cytoplasm channel plus DNA), per-site
    readouts (``segmentation.parquet``), mask files, and the QC join with ``QC_low_count``.
crops
    Fixed-size crops around nucleus centres (Zarr array + index table) and their CNN embeddings
    with the features stage's backbone, aggregated cell -> site -> well.
command
    ``cytoscreen segment run|qc|crops|embed``.

Cellpose and torch are imported by the functions that need them, so importing this package is cheap.
"""
