"""Ingest: index a plate's image files, parse names, join the platemap, check completeness."""

from cytoscreen.ingest.index import index_plate, ingest_plate
from cytoscreen.ingest.layouts import BUILTIN_LAYOUTS, resolve_layout
from cytoscreen.ingest.platemap import join_platemap, read_platemap
from cytoscreen.ingest.settings import IngestSettings

__all__ = ["BUILTIN_LAYOUTS", "IngestSettings", "index_plate", "ingest_plate", "join_platemap", "read_platemap",
           "resolve_layout"]
