"""Segmentation-free CNN embeddings: every image site becomes one feature vector.

Modules
-------
backbones
    The backbone registry (:func:`create_backbone`, :func:`list_backbones`, :class:`BackboneSpec`).
preprocess
    Intensity scaling, illumination correction, resizing and tiling (pure functions).
dataset
    The site table built from ``images.parquet`` + ``qc.parquet`` and the ``Dataset`` that reads it.
embed
    The Lightning predict module, the shard writer and :func:`extract_features`, the stage itself.
command, backbones_command
    ``cytoscreen features`` and ``cytoscreen backbones``.

Heavy modules (torch, Lightning) are imported by the submodules only, so importing this package is
cheap.
"""
