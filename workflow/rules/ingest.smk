# Ingest (index files, join platemap) and image QC, one job per plate.


rule ingest:
    input:
        platemap=plate_platemap,
    output:
        f"{RESULTS}/{{plate}}/images.parquet",
    log:
        f"{RESULTS}/logs/ingest/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
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
        f"{RESULTS}/{{plate}}/images.parquet",
    output:
        f"{RESULTS}/{{plate}}/qc.parquet",
    log:
        f"{RESULTS}/logs/qc/{{plate}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/qc/{{plate}}.tsv"
    params:
        cfg=CONFIGFILE,
    threads: 2
    resources:
        mem_mb=1500,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "cytoscreen qc {input} {output} --config {params.cfg} --threads {threads} > {log} 2>&1"


INGEST_OUTPUTS = expand(f"{RESULTS}/{{plate}}/qc.parquet", plate=PLATES)
