"""CNN backbones, timm-style: a registry of named factories, offline weights, one module per family.

The features stage (site embeddings) and the segment stage (crop embeddings) get their networks
here, through :func:`create_backbone`.

Modules
-------
registry
    :class:`BackboneSpec`, :class:`Backbone`, :func:`register_backbone`, :func:`create_backbone`,
    :func:`list_backbones`, :func:`backbone_spec`, :func:`backbone_table`.
weights
    Weights from an installed package or a user file; strict loading; SHA-256 once per file.
efficientnet_lite
    ``efficientnet_lite0`` (default), ``efficientnet_lite1``, ``efficientnet_lite2``.
tiny
    ``test_tiny``: random weights, seeded, for tests.
timm_
    ``timm:<arch>`` through the optional ``timm`` extra; imported only when such a name is used.
command
    ``cytoscreen backbones``.

Importing this package registers the built-in families (it imports torch, not timm).
"""

from __future__ import annotations

from cytoscreen.backbones import efficientnet_lite, tiny  # noqa: F401  (register the built-ins)
from cytoscreen.backbones.registry import (
    DEFAULT_BACKBONE,
    Backbone,
    backbone_spec,
    backbone_table,
    create_backbone,
    list_backbones,
    register_backbone,
)
from cytoscreen.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, BackboneSpec, backbone_token
from cytoscreen.backbones.weights import load_state_dict, load_weights, weights_sha256

__all__ = [
    "DEFAULT_BACKBONE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TIMM_PREFIX",
    "Backbone",
    "BackboneSpec",
    "backbone_spec",
    "backbone_table",
    "backbone_token",
    "create_backbone",
    "list_backbones",
    "load_state_dict",
    "load_weights",
    "register_backbone",
    "weights_sha256",
]
