# Ingest (index files, join platemap) and image QC, one job per plate.


rule ingest:
    input:
        platemap=plate_platemap,
    output:
        OUT["images"],
    log:
        f"{LOGS}/ingest/{{plate}}.log",
    benchmark:
        f"{BENCHMARKS}/ingest/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
        settings=ingest_settings,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen ingest --config {params.cfg} --plate {wildcards.plate} --out {output} > {log} 2>&1"


rule qc:
    input:
        images=rules.ingest.output[0],
    output:
        OUT["qc"],
    log:
        f"{LOGS}/qc/{{plate}}.log",
    benchmark:
        f"{BENCHMARKS}/qc/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
        settings=settings("qc"),
    threads: 2
    resources:
        mem_mb=1500,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen qc {input.images} {output} --config {params.cfg} --threads {threads} > {log} 2>&1"


INGEST_OUTPUTS = expand(OUT["qc"], plate=PLATES)
