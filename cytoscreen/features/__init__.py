"""Segmentation-free CNN embeddings: every image site becomes one feature vector.

Modules
-------
preprocess
    Intensity scaling, illumination correction, resizing and tiling (pure functions).
dataset
    The site table built from ``images.parquet`` + ``qc.parquet`` and the ``Dataset`` that reads it.
embed
    The Lightning predict module, the shard writer and :func:`extract_features`, the stage itself.
command
    ``cytoscreen features``.

The networks come from :mod:`cytoscreen.backbones` (the registry the segment stage shares).

Heavy modules (torch, Lightning) are imported by the submodules only, so importing this package is
cheap.
"""
