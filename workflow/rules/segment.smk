# Segment (optional, `segment.enabled: true`): Cellpose nuclei/cell counts per site, joined into the
# QC table with QC_low_count; optionally label masks, single-cell crops and crop embeddings.
# Every rule is one `cytoscreen segment ...` call; with the stage off no rule is defined and
# SEGMENT_OUTPUTS is empty.

_SEGMENT = config["segment"]
SEGMENT_ENABLED = bool(_SEGMENT["enabled"])
_SEGMENT_CROPS = SEGMENT_ENABLED and bool(_SEGMENT["crops"]["enabled"])
_SEGMENT_EMBED = _SEGMENT_CROPS and bool(_SEGMENT["crops"]["embed"])
# crops are cut from the saved nucleus masks, so crops imply masks
_SEGMENT_MASKS = SEGMENT_ENABLED and (
    bool(_SEGMENT["save_masks"]) or _SEGMENT_CROPS or _SEGMENT["ome_zarr_labels"] != "none"
)
# a GPU is requested only when asked for; `auto` uses one when the node has it
_SEGMENT_GPU = {"gpu": 1} if _SEGMENT["accelerator"] == "gpu" else {}
_SEGMENT_THREADS = int(_SEGMENT["threads"])

#: The per-site QC table downstream stages should read: with segmentation on, qc.parquet plus
#: counts and QC_low_count; otherwise qc.parquet itself.
SEGMENT_QC = (
    f"{RESULTS}/{{plate}}/qc_segmented.parquet" if SEGMENT_ENABLED else f"{RESULTS}/{{plate}}/qc.parquet"
)

_SEGMENT_RUN_OUTPUT = {"table": f"{RESULTS}/{{plate}}/segmentation.parquet"}
_SEGMENT_RUN_MASKS = ""
if _SEGMENT_MASKS:
    _SEGMENT_RUN_OUTPUT["masks"] = directory(f"{RESULTS}/{{plate}}/masks")
    _SEGMENT_RUN_MASKS = " --masks {output.masks}"


if SEGMENT_ENABLED:

    rule segment_run:
        input:
            images=f"{RESULTS}/{{plate}}/images.parquet",
            qc=f"{RESULTS}/{{plate}}/qc.parquet",
        output:
            **_SEGMENT_RUN_OUTPUT,
        log:
            f"{RESULTS}/logs/segment/run_{{plate}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/segment/run_{{plate}}.tsv"
        params:
            cfg=CONFIGFILE,
        threads: _SEGMENT_THREADS
        resources:
            mem_mb=8000,
            runtime=240,
            **_SEGMENT_GPU,
        conda:
            CONDA_ENV
        shell:
            "cytoscreen segment run --config {params.cfg} --plate {wildcards.plate} "
            "--images {input.images} --qc {input.qc} --out {output.table}"
            + _SEGMENT_RUN_MASKS
            + " > {log} 2>&1"

    rule segment_qc:
        input:
            qc=f"{RESULTS}/{{plate}}/qc.parquet",
            segmentation=f"{RESULTS}/{{plate}}/segmentation.parquet",
        output:
            f"{RESULTS}/{{plate}}/qc_segmented.parquet",
        log:
            f"{RESULTS}/logs/segment/qc_{{plate}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/segment/qc_{{plate}}.tsv"
        params:
            cfg=CONFIGFILE,
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        conda:
            CONDA_ENV
        shell:
            "cytoscreen segment qc {input.qc} {input.segmentation} {output} --config {params.cfg} > {log} 2>&1"


if _SEGMENT_CROPS:

    rule segment_crops:
        input:
            images=f"{RESULTS}/{{plate}}/images.parquet",
            qc=f"{RESULTS}/{{plate}}/qc.parquet",
            masks=f"{RESULTS}/{{plate}}/masks",
        output:
            crops=directory(f"{RESULTS}/{{plate}}/crops.zarr"),
            index=f"{RESULTS}/{{plate}}/crops.parquet",
        log:
            f"{RESULTS}/logs/segment/crops_{{plate}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/segment/crops_{{plate}}.tsv"
        params:
            cfg=CONFIGFILE,
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            CONDA_ENV
        shell:
            "cytoscreen segment crops --config {params.cfg} --plate {wildcards.plate} "
            "--images {input.images} --masks {input.masks} --qc {input.qc} "
            "--out {output.crops} --index {output.index} > {log} 2>&1"


if _SEGMENT_EMBED:

    rule segment_embed:
        input:
            crops=f"{RESULTS}/{{plate}}/crops.zarr",
            index=f"{RESULTS}/{{plate}}/crops.parquet",
            qc=f"{RESULTS}/{{plate}}/qc_segmented.parquet",
        output:
            sites=f"{RESULTS}/{{plate}}/single_cell_sites.parquet",
            wells=f"{RESULTS}/{{plate}}/single_cell_wells.parquet",
        log:
            f"{RESULTS}/logs/segment/embed_{{plate}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/segment/embed_{{plate}}.tsv"
        params:
            cfg=CONFIGFILE,
        threads: _SEGMENT_THREADS
        resources:
            mem_mb=8000,
            runtime=240,
            **_SEGMENT_GPU,
        conda:
            CONDA_ENV
        shell:
            "cytoscreen segment embed --config {params.cfg} --plate {wildcards.plate} "
            "--crops {input.crops} --index {input.index} --qc {input.qc} "
            "--out {output.sites} --wells {output.wells} > {log} 2>&1"


SEGMENT_OUTPUTS = (
    expand(f"{RESULTS}/{{plate}}/qc_segmented.parquet", plate=PLATES)
    + (expand(f"{RESULTS}/{{plate}}/crops.parquet", plate=PLATES) if _SEGMENT_CROPS else [])
    + (expand(f"{RESULTS}/{{plate}}/single_cell_wells.parquet", plate=PLATES) if _SEGMENT_EMBED else [])
    if SEGMENT_ENABLED
    else []
)
