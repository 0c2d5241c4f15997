# Export (optional): profile tables as AnnData .h5ad files beside their Parquet files, for scanpy and
# the scverse tools. `export.anndata` lists the tables: per plate sites, wells, normalized,
# feature_selected (<results>/<plate>/<table>.h5ad); for the screen screen_feature_selected and
# screen_consensus (<results>/screen/<table>.h5ad). With an empty list no .h5ad is asked for.
# With segmentation on and `segment.ome_zarr_labels` copy or input, the saved masks become OME-Zarr
# labels of each field (copy: <results>/<plate>/plate.ome.zarr; input: the plate's own store);
# <results>/<plate>/ome_zarr_labels.tsv lists them.

_EXPORT_PLATE_TABLES = ("sites", "wells", "normalized", "feature_selected")
_EXPORT_TABLES = list(config["export"]["anndata"])
_EXPORT_H5AD = [
    *[f"{RESULTS}/screen/{t.removeprefix('screen_')}.h5ad" for t in _EXPORT_TABLES if t.startswith("screen_")],
    *expand(
        f"{RESULTS}/{{plate}}/{{table}}.h5ad",
        plate=PLATES,
        table=[t for t in _EXPORT_TABLES if not t.startswith("screen_")],
    ),
]


rule export_anndata:
    input:
        f"{RESULTS}/{{where}}/{{table}}.parquet",
    output:
        f"{RESULTS}/{{where}}/{{table}}.h5ad",
    wildcard_constraints:
        where="|".join([*PLATES, "screen"]),
        table="|".join(_EXPORT_PLATE_TABLES + ("consensus",)),
    log:
        f"{RESULTS}/logs/export/anndata_{{where}}_{{table}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/export/anndata_{{where}}_{{table}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen export anndata {input} {output} > {log} 2>&1"


_LABELS_MODE = config["segment"]["ome_zarr_labels"] if config["segment"]["enabled"] else "none"
_LABELS_OUTPUT = {"summary": f"{RESULTS}/{{plate}}/ome_zarr_labels.tsv"}
if _LABELS_MODE == "copy":  # the store the command writes for this mode (export.command.LABELS_STORE)
    _LABELS_OUTPUT["store"] = directory(f"{RESULTS}/{{plate}}/plate.ome.zarr")


if _LABELS_MODE != "none":

    rule export_ome_zarr_labels:
        input:
            images=f"{RESULTS}/{{plate}}/images.parquet",
            masks=f"{RESULTS}/{{plate}}/masks",
        output:
            **_LABELS_OUTPUT,
        params:
            cfg=CONFIGFILE,
        log:
            f"{RESULTS}/logs/export/ome_zarr_labels_{{plate}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/export/ome_zarr_labels_{{plate}}.tsv"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            CONDA_ENV
        shell:
            "cytoscreen export ome-zarr {input.images} {input.masks} --config {params.cfg} "
            "--summary {output.summary} > {log} 2>&1"


EXPORT_OUTPUTS = _EXPORT_H5AD + (
    expand(f"{RESULTS}/{{plate}}/ome_zarr_labels.tsv", plate=PLATES) if _LABELS_MODE != "none" else []
)
