"""Export cytoscreen tables to formats other tools read.

Modules
-------
anndata
    :func:`~cytoscreen.export.anndata.to_anndata` (a profiles table -> ``AnnData``) and
    :func:`~cytoscreen.export.anndata.write_h5ad` (atomic ``.h5ad``), for scanpy and the scverse tools.
command
    ``cytoscreen export anndata PROFILES.parquet OUT.h5ad``.
"""
