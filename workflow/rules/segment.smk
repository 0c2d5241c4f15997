# Segment (optional, `segment.enabled: true`): Cellpose nuclei/cell counts per site, joined into the
# QC table with QC_low_count; optionally label masks, single-cell crops and crop embeddings.
# Every rule is one `cytoscreen segment ...` call; with the stage off no rule is defined and
# SEGMENT_OUTPUTS is empty. `segment run` writes the masks itself when the config keeps them.

_SEGMENT = config["segment"]
_SEGMENT_CROPS = SEGMENT_ENABLED and _SEGMENT["crops"]["enabled"]
_SEGMENT_EMBED = _SEGMENT_CROPS and _SEGMENT["crops"]["embed"]
# crops are cut from the saved nucleus masks, so crops imply masks
_SEGMENT_MASKS = SEGMENT_ENABLED and (_SEGMENT["save_masks"] or _SEGMENT_CROPS or _SEGMENT["ome_zarr_labels"] != "none")
# a GPU is requested only when asked for; `auto` uses one when the node has it
_SEGMENT_GPU = {"gpu": 1} if _SEGMENT["accelerator"] == "gpu" else {}
_SEGMENT_THREADS = _SEGMENT["threads"]
_SEGMENT_RUN_OUTPUT = {"table": OUT["segmentation"]}
if _SEGMENT_MASKS:
    _SEGMENT_RUN_OUTPUT["masks"] = directory(OUT["masks"])


if SEGMENT_ENABLED:

    rule segment_run:
        input:
            images=rules.ingest.output[0],
            qc=rules.qc.output[0],
        output:
            **_SEGMENT_RUN_OUTPUT,
        log:
            f"{LOGS}/segment/run_{{plate}}.log",
        benchmark:
            f"{BENCHMARKS}/segment/run_{{plate}}.tsv"
        params:
            cfg=CONFIGFILE,
            settings=settings("segment"),
        threads: _SEGMENT_THREADS
        resources:
            mem_mb=8000,
            runtime=240,
            **_SEGMENT_GPU,
        conda:
            CONDA_ENV
        shell:
            "cytoscreen segment run --config {params.cfg} --plate {wildcards.plate} "
            "--images {input.images} --qc {input.qc} --out {output.table} > {log} 2>&1"

    rule segment_qc:
        input:
            qc=rules.qc.output[0],
            segmentation=rules.segment_run.output.table,
        output:
            OUT["qc_segmented"],
        log:
            f"{LOGS}/segment/qc_{{plate}}.log",
        benchmark:
            f"{BENCHMARKS}/segment/qc_{{plate}}.tsv"
        params:
            cfg=CONFIGFILE,
            settings=settings("segment"),
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
            images=rules.ingest.output[0],
            qc=rules.qc.output[0],
            masks=rules.segment_run.output.masks,
        output:
            crops=directory(OUT["crops"]),
            index=OUT["crops_index"],
        log:
            f"{LOGS}/segment/crops_{{plate}}.log",
        benchmark:
            f"{BENCHMARKS}/segment/crops_{{plate}}.tsv"
        params:
            cfg=CONFIGFILE,
            settings=settings("segment"),
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
            crops=rules.segment_crops.output.crops,
            index=rules.segment_crops.output.index,
            qc=rules.segment_qc.output[0],
        output:
            sites=OUT["single_cell_sites"],
            wells=OUT["single_cell_wells"],
        log:
            f"{LOGS}/segment/embed_{{plate}}.log",
        benchmark:
            f"{BENCHMARKS}/segment/embed_{{plate}}.tsv"
        params:
            cfg=CONFIGFILE,
            # crops.backbone null falls back to features.backbone
            settings=settings("segment", "features"),
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
    expand(OUT["qc_segmented"], plate=PLATES)
    + (expand(OUT["crops_index"], plate=PLATES) if _SEGMENT_CROPS else [])
    + (expand(OUT["single_cell_wells"], plate=PLATES) if _SEGMENT_EMBED else [])
    if SEGMENT_ENABLED
    else []
)
