"""Export tables and masks to formats other tools read: cytoscreen export anndata|ome-zarr ...

anndata PROFILES OUT.h5ad writes a profiles table for scanpy and the scverse tools: X holds the
features (float32), obs the Metadata_* and QC_* columns (categoricals kept), var the feature names
with channel, backbone, layer and index for CNN features (<Channel>_<backbone>_<i>), and
uns["provenance"] the input's provenance.  PROFILES is any cytoscreen table (sites, wells,
normalized, feature_selected, consensus) as .parquet, .csv or .tsv.  Needs the `anndata` extra.

ome-zarr IMAGES MASKS writes the masks of `cytoscreen segment run --masks MASKS` as OME-Zarr labels
(<row>/<col>/<field>/labels/nuclei, cells) of each field: into a new plate store --out (a copy of an
ome-zarr plate's store, or the plate's TIFFs converted), or with --in-place into the ome-zarr
plate's own store.  With neither, --config decides by `segment.ome_zarr_labels`: copy writes
<results>/<plate>/plate.ome.zarr, input writes into the plate's own store (as the workflow runs it).
Open the store in napari (napari-ome-zarr) to see images and masks together.

  cytoscreen export anndata results/P1/normalized.parquet results/P1/normalized.h5ad
  cytoscreen export ome-zarr results/P1/images.parquet results/P1/masks --out results/P1/plate.ome.zarr
  cytoscreen export ome-zarr results/P1/images.parquet results/P1/masks --config config.yaml
"""

from __future__ import annotations

import argparse

from cytoscreen.argparse_ import HelpFormatter, add_command
from cytoscreen.errors import ConfigError

FORMATS = ("anndata", "ome-zarr")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "export", __doc__)
    sub = p.add_subparsers(dest="format", metavar="<format>", required=True)
    a = sub.add_parser("anndata", help="a profiles table as AnnData .h5ad", formatter_class=HelpFormatter)
    a.add_argument("profiles", metavar="PROFILES", help="input table (.parquet, .csv, .tsv)")
    a.add_argument("out", metavar="OUT", help="output file (.h5ad)")
    a.set_defaults(func=run_anndata)
    z = sub.add_parser("ome-zarr", help="segmentation masks as OME-Zarr labels of each field",
                       formatter_class=HelpFormatter)
    z.add_argument("images", metavar="IMAGES", help="the plate's images.parquet")
    z.add_argument("masks", metavar="MASKS", help="mask folder written by `cytoscreen segment run --masks`")
    where = z.add_mutually_exclusive_group()
    where.add_argument("--out", default=None, help="new plate store (copy of the input store, or the images "
                       "converted)")
    where.add_argument("--in-place", action="store_true", help="write the labels into the input ome-zarr store")
    z.add_argument("--config", default=None, help="workflow config: without --out or --in-place, "
                   "segment.ome_zarr_labels chooses (copy: <results>/<plate>/plate.ome.zarr; input: in place)")
    z.add_argument("--ngff-version", choices=("0.4", "0.5"), default="0.5",
                   help="NGFF version of a plate converted from TIFFs (a copied store keeps its own)")
    z.add_argument("--summary", default=None, help="TSV/Parquet of the labels written (site, label, field, "
                   "n_objects)")
    z.set_defaults(func=run_ome_zarr)
    return p


def run_anndata(args: argparse.Namespace) -> int:
    from cytoscreen.export.anndata import export_anndata

    export_anndata(args.profiles, args.out)
    return 0


#: The plate store that `segment.ome_zarr_labels: copy` writes, in <results>/<plate>/.
LABELS_STORE = "plate.ome.zarr"


def run_ome_zarr(args: argparse.Namespace) -> int:
    from cytoscreen import io
    from cytoscreen.segment.omezarr_labels import write_plate_labels

    images = io.read_table(args.images)
    mode, out = _labels_target(args, images)
    table = write_plate_labels(images, args.masks, mode=mode, out=out, version=args.ngff_version)
    if args.summary:
        io.write_table(table, args.summary)
    return 0


def _labels_target(args: argparse.Namespace, images) -> tuple[str, str | None]:
    """The labels mode and store: ``--out`` or ``--in-place`` when given, else ``--config``'s
    ``segment.ome_zarr_labels`` (``copy`` into ``<results>/<plate>/plate.ome.zarr``)."""
    from pathlib import Path

    from cytoscreen import io
    from cytoscreen.config import load_config

    if args.in_place:
        return "input", None
    if args.out:
        return "copy", args.out
    if args.config is None:
        raise ConfigError("export ome-zarr needs --out STORE (a new plate store), --in-place, or --config "
                          "(segment.ome_zarr_labels chooses)")
    config = load_config(args.config)
    mode = config["segment"]["ome_zarr_labels"]
    if mode == "none":
        raise ConfigError(f"{args.config}: segment.ome_zarr_labels is none, so no labels are asked for; set "
                          f"copy or input, or pass --out STORE or --in-place")
    if mode == "input":
        return "input", None
    plate = str(images[io.PLATE].iloc[0]) if len(images) else ""
    return "copy", str(Path(config["results"]) / plate / LABELS_STORE)
