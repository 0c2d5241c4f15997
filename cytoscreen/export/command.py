"""Export a profiles table to another format: cytoscreen export anndata PROFILES OUT.h5ad.

anndata writes an .h5ad file for scanpy and the scverse tools: X holds the features (float32), obs
the Metadata_* and QC_* columns (categoricals kept), var the feature names with channel, backbone,
layer and index for CNN features (<Channel>_<backbone>_<i>), and uns["provenance"] the input's
provenance.  PROFILES is any cytoscreen table (sites, wells, normalized, feature_selected,
consensus) as .parquet, .csv or .tsv.  Needs the optional extra: pip install 'cytoscreen[anndata]'.

  cytoscreen export anndata results/P1/normalized.parquet results/P1/normalized.h5ad
"""

from __future__ import annotations

import argparse

from cytoscreen.argparse_ import add_command

FORMATS = ("anndata",)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "export", __doc__)
    p.add_argument("format", choices=FORMATS, help="output format")
    p.add_argument("profiles", metavar="PROFILES", help="input table (.parquet, .csv, .tsv)")
    p.add_argument("out", metavar="OUT", help="output file (.h5ad)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cytoscreen.export.anndata import export_anndata

    export_anndata(args.profiles, args.out)
    return 0
